-- The buyer cancels a hold. KEYS: 1 meta, 2 usage, 3 holds, 4 expiry.
-- ARGV: 1 hold id, 2 user id, 3 now (ms).
-- Returns {'lost'}, {'not_found'}, {'hold_paid'}, {'hold_released'},
-- {'hold_expired'} or {'ok', packed_hold}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'lost'}
end
local hv = redis.call('HGET', KEYS[3], ARGV[1])
if not hv then
  return {'not_found'}
end
local s, q, _, _, e, user = parse_hold(hv)
if user ~= ARGV[2] then
  return {'not_found'}
end
if s == 'P' then
  return {'hold_paid'}
elseif s == 'R' then
  return {'hold_released'}
elseif s == 'E' or tonumber(ARGV[3]) >= e then
  return {'hold_expired'}
end
local nv = 'R' .. string.sub(hv, 2)
redis.call('HSET', KEYS[3], ARGV[1], nv)
redis.call('ZREM', KEYS[4], ARGV[1])
release_units(KEYS[1], KEYS[2], user, q)
return {'ok', nv}
