-- Successful holds in position order. KEYS: 1 meta, 2 allocation zset, 3 holds.
-- ARGV: 1 after position, 2 limit. Returns {'lost'} or {'ok', {id, packed, ...}}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'lost'}
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local hv = redis.call('HGET', KEYS[3], id)
  if hv then
    out[#out + 1] = id
    out[#out + 1] = hv
  end
end
return {'ok', out}
