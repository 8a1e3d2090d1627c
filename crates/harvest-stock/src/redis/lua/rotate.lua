-- Rotate one bucket of the hold index once its current generation is old enough: the
-- previous generation goes (unlinked, freed in the background) and the current one
-- takes its place, so an entry lives at least one TTL and less than two.
-- KEYS: 1 current generation, 2 previous generation, 3 when the bucket last rotated.
-- ARGV: 1 now (ms), 2 TTL (ms).
-- Returns 1 when it rotated, else 0.
local at = tonumber(redis.call('GET', KEYS[3]))
local now = tonumber(ARGV[1])
if at and now - at < tonumber(ARGV[2]) then
  return 0
end
if at then
  redis.call('UNLINK', KEYS[2])
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('RENAME', KEYS[1], KEYS[2])
  end
end
redis.call('SET', KEYS[3], ARGV[1])
return at and 1 or 0
