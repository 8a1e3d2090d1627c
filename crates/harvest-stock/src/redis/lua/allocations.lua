-- Successful holds in position order. KEYS: 1 meta, 2 allocation hash (position ->
-- hold id, dense after the restored positions), 3 restored holds (zset by position),
-- 4 holds. ARGV: 1 after position, 2 limit. Returns {'lost'} or {'ok', {id, packed, ...}}.
local meta = redis.call('HMGET', KEYS[1], 'pos', 'rpos')
if not meta[1] then
  return {'lost'}
end
local last, restored = tonumber(meta[1]), tonumber(meta[2] or '0')
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local ids = {}
if after < restored then
  ids = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], fmt(restored), 'LIMIT', 0, ARGV[2])
end
-- Positions after the restored ones are all in the hash, read in chunks.
local p = math.max(after, restored) + 1
while #ids < limit and p <= last do
  local fields = {}
  for q = p, math.min(last, p + math.min(limit - #ids, 1000) - 1) do
    fields[#fields + 1] = fmt(q)
  end
  p = p + #fields
  local found = redis.call('HMGET', KEYS[2], unpack(fields))
  for i = 1, #fields do
    if found[i] then
      ids[#ids + 1] = found[i]
    end
  end
end
local out = {}
for _, id in ipairs(ids) do
  local hv = redis.call('HGET', KEYS[4], id)
  if hv then
    out[#out + 1] = id
    out[#out + 1] = hv
  end
end
return {'ok', out}
