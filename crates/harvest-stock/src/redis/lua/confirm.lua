-- A payment succeeded. KEYS: 1 meta, 2 holds, 3 expiry. ARGV: 1 hold id, 2 now (ms).
-- Returns {'lost'}, {'not_found'}, {'ok', packed_hold} (now or already paid) or
-- {'late', packed_hold} (released, expired, or its time ran out: no stock taken).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'lost'}
end
local hv = redis.call('HGET', KEYS[2], ARGV[1])
if not hv then
  return {'not_found'}
end
local s, q, _, _, e = parse_hold(hv)
if s == 'P' then
  return {'ok', hv}
elseif s == 'R' or s == 'E' then
  return {'late', hv}
elseif tonumber(ARGV[2]) >= e then
  return {'late', 'E' .. string.sub(hv, 2)}
end
local nv = 'P' .. string.sub(hv, 2)
redis.call('HSET', KEYS[2], ARGV[1], nv)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'held', -q)
redis.call('HINCRBY', KEYS[1], 'sold', q)
return {'ok', nv}
