-- End a sale early. KEYS: 1 meta.
-- Returns {'lost'} or {'ok', stock, remaining, held, sold, ended}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'lost'}
end
redis.call('HSET', KEYS[1], 'ended', '1')
local c = redis.call('HMGET', KEYS[1], 'stock', 'rem', 'held', 'sold', 'ended')
return {'ok', c[1], c[2], c[3], c[4], c[5]}
