-- Replace a sale's state with one rebuilt from the system of record, atomically.
-- KEYS: 1 meta, 2 usage, 3 holds, 4 expiry, 5 allocation hash, 6 restored holds.
-- Restored holds are listed by position in their own zset (their positions may have
-- gaps); positions after the last of them are handed out densely by reservations.
-- ARGV: 1 stock, 2 limit, 3 ttl, 4 starts, 5 ends, 6 ended, 7 remaining, 8 held,
--       9 sold, 10 last position, 11 number of holds, then per hold: id, packed;
--       then the number of buyers, then per buyer: user, units held plus bought;
--       last, 1 to leave an existing sale alone (answers {'exists'}), else 0.
if ARGV[#ARGV] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists'}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
local i = 12
for _ = 1, tonumber(ARGV[11]) do
  local id, hv = ARGV[i], ARGV[i + 1]
  i = i + 2
  local s, _, p, _, e = parse_hold(hv)
  redis.call('HSET', KEYS[3], id, hv)
  redis.call('ZADD', KEYS[6], fmt(p), id)
  if s == 'H' then
    redis.call('ZADD', KEYS[4], fmt(e), id)
  end
end
local nu = tonumber(ARGV[i])
i = i + 1
for _ = 1, nu do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('HSET', KEYS[1], 'stock', ARGV[1], 'limit', ARGV[2], 'ttl', ARGV[3],
  'start', ARGV[4], 'end', ARGV[5], 'ended', ARGV[6], 'rem', ARGV[7], 'held', ARGV[8],
  'sold', ARGV[9], 'pos', ARGV[10], 'rpos', ARGV[10])
return {'ok'}
