-- Reserve a batch of requests for one sale, in order. Everything the batch needs is
-- read in a few multi-key calls and written back in a few more, so the Redis work per
-- reservation is a handful of hash and zset elements, not a handful of commands.
-- KEYS: 1 meta, 2 per-user usage, 3 holds, 4 expiry zset, 5 allocation zset,
--       6 idempotency records (hash: "<len(user)>:<user>:<key>" -> record).
-- ARGV: 1 n, 2 idempotency ttl (s), then for request i, at 2+6(i-1):
--       +1 user, +2 quantity, +3 idempotency key, +4 fingerprint, +5 proposed hold id,
--       +6 now (ms).
-- Returns 'lost' when the sale's marker (its meta hash) is missing, else one reply
-- per request: {'held', hold_id, packed_hold}, {'rej', code} or {'taken', hold_id}.
local m, u, h, x, a, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local meta = redis.call('HMGET', m, 'limit', 'ttl', 'start', 'end', 'ended', 'rem', 'held', 'pos')
if not meta[1] then
  return 'lost'
end
local limit, ttl = tonumber(meta[1]), tonumber(meta[2])
local starts, ends, ended = tonumber(meta[3]), tonumber(meta[4]), meta[5] == '1'
local rem, held, pos = tonumber(meta[6]), tonumber(meta[7]), tonumber(meta[8])
local n, idem_ttl = tonumber(ARGV[1]), ARGV[2]

local fields, users, hids = {}, {}, {}
for i = 1, n do
  local b = 2 + (i - 1) * 6
  users[i] = ARGV[b + 1]
  fields[i] = #users[i] .. ':' .. users[i] .. ':' .. ARGV[b + 3]
  hids[i] = ARGV[b + 5]
end
local recs = redis.call('HMGET', idem, unpack(fields))
local used_now = redis.call('HMGET', u, unpack(users))
local taken_now = redis.call('HMGET', h, unpack(hids))
local used, taken = {}, {}
for i = 1, n do
  if used[users[i]] == nil then
    used[users[i]] = tonumber(used_now[i] or '0')
  end
  if taken_now[i] then
    taken[hids[i]] = true
  end
end

local new_recs, new_holds, exp_pairs, pos_pairs = {}, {}, {}, {}
local fresh = {}   -- holds made by this batch: id -> packed
local written = {} -- records written by this batch: field -> record
local touched = {} -- users whose usage changed
local out = {}
for i = 1, n do
  local b = 2 + (i - 1) * 6
  local user, qty, fp, hid, now_s = users[i], tonumber(ARGV[b + 2]), ARGV[b + 4], hids[i], ARGV[b + 6]
  local now = tonumber(now_s)
  local field = fields[i]
  local res
  local rec = written[field] or recs[i]
  if rec then
    local len, rest = string.match(rec, '^(%d+):(.*)$')
    len = tonumber(len)
    if string.sub(rest, 1, len) ~= fp then
      res = {'rej', 'idempotency_key_reused'}
    else
      local kind, val = string.sub(rest, len + 1, len + 1), string.sub(rest, len + 3)
      if kind == 'h' then
        local hv = fresh[val] or redis.call('HGET', h, val)
        -- A record whose hold is gone (state rebuilt without it) settles nothing.
        if hv then
          res = {'held', val, hv}
        end
      else
        res = {'rej', val}
      end
    end
  end
  if not res then
    local code
    if now < starts then
      code = 'not_started'
    elseif ended or now >= ends then
      code = 'sale_ended'
    elseif rem == 0 then
      res = {'rej', 'sold_out'}
    elseif used[user] + qty > limit then
      code = 'limit_exceeded'
    elseif rem < qty then
      code = 'insufficient_stock'
    elseif taken[hid] then
      -- Never overwrite another hold: the caller must propose a fresh id.
      res = {'taken', hid}
    else
      rem = rem - qty
      held = held + qty
      pos = pos + 1
      used[user] = used[user] + qty
      touched[user] = true
      taken[hid] = true
      local exp = fmt(now + ttl)
      local hv = 'H\t' .. fmt(qty) .. '\t' .. fmt(pos) .. '\t' .. now_s .. '\t' .. exp .. '\t' .. user
      fresh[hid] = hv
      new_holds[#new_holds + 1] = hid
      new_holds[#new_holds + 1] = hv
      exp_pairs[#exp_pairs + 1] = exp
      exp_pairs[#exp_pairs + 1] = hid
      pos_pairs[#pos_pairs + 1] = fmt(pos)
      pos_pairs[#pos_pairs + 1] = hid
      local r = #fp .. ':' .. fp .. 'h:' .. hid
      written[field] = r
      new_recs[#new_recs + 1] = field
      new_recs[#new_recs + 1] = r
      res = {'held', hid, hv}
    end
    if code then
      local r = #fp .. ':' .. fp .. 'r:' .. code
      written[field] = r
      new_recs[#new_recs + 1] = field
      new_recs[#new_recs + 1] = r
      res = {'rej', code}
    end
  end
  out[i] = res
end

if #new_holds > 0 then
  redis.call('HSET', h, unpack(new_holds))
  redis.call('ZADD', x, unpack(exp_pairs))
  redis.call('ZADD', a, unpack(pos_pairs))
  local usage = {}
  for user in pairs(touched) do
    usage[#usage + 1] = user
    usage[#usage + 1] = fmt(used[user])
  end
  redis.call('HSET', u, unpack(usage))
  redis.call('HSET', m, 'rem', fmt(rem), 'held', fmt(held), 'pos', fmt(pos))
end
if #new_recs > 0 then
  -- Records live at least the idempotency TTL after the last one was written.
  redis.call('HSET', idem, unpack(new_recs))
  redis.call('EXPIRE', idem, idem_ttl)
end
return out
