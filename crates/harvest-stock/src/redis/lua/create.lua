-- Create a sale, or accept the same spec again. KEYS: 1 meta.
-- ARGV: 1 stock, 2 per-user limit, 3 hold ttl (ms), 4 starts (ms), 5 ends (ms).
-- Returns {'conflict'} or {'ok', stock, remaining, held, sold, ended}.
local fields = {'stock', 'limit', 'ttl', 'start', 'end'}
local cur = redis.call('HMGET', KEYS[1], unpack(fields))
if cur[1] then
  for i = 1, 5 do
    if cur[i] ~= ARGV[i] then
      return {'conflict'}
    end
  end
else
  redis.call('HSET', KEYS[1], 'stock', ARGV[1], 'limit', ARGV[2], 'ttl', ARGV[3],
    'start', ARGV[4], 'end', ARGV[5], 'ended', '0', 'rem', ARGV[1], 'held', '0',
    'sold', '0', 'pos', '0')
end
local c = redis.call('HMGET', KEYS[1], 'stock', 'rem', 'held', 'sold', 'ended')
return {'ok', c[1], c[2], c[3], c[4], c[5]}
