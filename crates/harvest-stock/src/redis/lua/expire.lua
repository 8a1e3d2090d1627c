-- Expire a sale's due holds, at most ARGV[2] of them, each exactly once: the status
-- check and the stock return happen in this one atomic call, so concurrent sweepers
-- never expire a hold twice. KEYS: 1 meta, 2 usage, 3 holds, 4 expiry.
-- ARGV: 1 now (ms), 2 max. Returns {'lost'} or {'ok', held_left, {id, packed, ...}}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'lost'}
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[4], id)
  local hv = redis.call('HGET', KEYS[3], id)
  if hv and string.sub(hv, 1, 1) == 'H' then
    local _, q, _, _, _, user = parse_hold(hv)
    local nv = 'E' .. string.sub(hv, 2)
    redis.call('HSET', KEYS[3], id, nv)
    release_units(KEYS[1], KEYS[2], user, q)
    out[#out + 1] = id
    out[#out + 1] = nv
  end
end
return {'ok', redis.call('ZCARD', KEYS[4]), out}
