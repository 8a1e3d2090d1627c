-- Reserve a batch of requests for one sale, in order. Everything the batch needs is
-- read in a few multi-key calls and written back in a few more, so the Redis work per
-- reservation is a handful of hash and zset elements, not a handful of commands. The
-- client sends what it can compute (record fields, fingerprint prefixes) and reads
-- back only what it cannot (positions), so the loop does little string work.
-- KEYS: 1 meta, 2 per-user usage, 3 holds, 4 expiry zset, 5 allocation hash
--       (position -> hold id), 6 idempotency records (hash:
--       "<len(user)>:<user>:<key>" -> record).
-- ARGV: 1 n, 2 idempotency ttl (s), then six runs of n values, request i being the
--       i-th value of each run: record fields ("<len(user)>:<user>:<key>"), users,
--       quantities, fingerprint prefixes ("<len(fp)>:<fp>", how records start),
--       proposed hold ids, nows (ms).
-- Returns 'lost' when the sale's marker (its meta hash) is missing, else
-- {hold ttl (ms), reply 1, ..., reply n} where a reply is the position of a new hold
-- (a number), {hold_id, packed_hold} for a replayed hold, a rejection code, or 'taken'
-- (the proposed hold id belongs to another hold).
local m, u, h, x, a, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local meta = redis.call('HMGET', m, 'limit', 'ttl', 'start', 'end', 'ended', 'rem', 'held', 'pos')
if not meta[1] then
  return 'lost'
end
local limit, ttl = tonumber(meta[1]), tonumber(meta[2])
local starts, ends, ended = tonumber(meta[3]), tonumber(meta[4]), meta[5] == '1'
local rem, held, pos = tonumber(meta[6]), tonumber(meta[7]), tonumber(meta[8])
local n, idem_ttl = tonumber(ARGV[1]), ARGV[2]
-- Offsets of the runs: request i's field is ARGV[F + i], its user ARGV[U + i], ...
local F = 2
local U, Q, P, H, T = F + n, F + 2 * n, F + 3 * n, F + 4 * n, F + 5 * n

local recs = redis.call('HMGET', idem, unpack(ARGV, F + 1, F + n))
local used_now = redis.call('HMGET', u, unpack(ARGV, U + 1, U + n))
local taken_now = redis.call('HMGET', h, unpack(ARGV, H + 1, H + n))

local used = {}    -- usage of users this batch changed
local touched, nt = {}, 0
local taken = {}   -- hold ids this batch used
local written = {} -- records written by this batch: field -> record
local hold_pairs, exp_pairs, pos_pairs, rec_pairs, nh, nr = {}, {}, {}, {}, 0, 0
local out = {ttl}
local now_s, now, exp_s, qty_s, qty
for i = 1, n do
  local field = ARGV[F + i]
  local rec = written[field] or recs[i]
  local res
  if rec then
    local fpp = ARGV[P + i]
    if string.sub(rec, 1, #fpp) ~= fpp then
      res = 'idempotency_key_reused'
    else
      local kind, val = string.sub(rec, #fpp + 1, #fpp + 1), string.sub(rec, #fpp + 3)
      if kind == 'h' then
        local hv = redis.call('HGET', h, val)
        if not hv and written[field] then
          -- Made earlier in this batch, not written yet.
          for j = 1, nh, 2 do
            if hold_pairs[j] == val then
              hv = hold_pairs[j + 1]
              break
            end
          end
        end
        -- A record whose hold is gone (state rebuilt without it) settles nothing.
        if hv then
          res = {val, hv}
        end
      else
        res = val
      end
    end
  end
  if not res then
    local user, hid = ARGV[U + i], ARGV[H + i]
    if ARGV[Q + i] ~= qty_s then
      qty_s = ARGV[Q + i]
      qty = tonumber(qty_s)
    end
    if ARGV[T + i] ~= now_s then
      now_s = ARGV[T + i]
      now = tonumber(now_s)
      exp_s = fmt(now + ttl)
    end
    local user_units = used[user] or tonumber(used_now[i] or '0')
    local code
    if now < starts then
      code = 'not_started'
    elseif ended or now >= ends then
      code = 'sale_ended'
    elseif rem == 0 then
      res = 'sold_out'
    elseif user_units + qty > limit then
      code = 'limit_exceeded'
    elseif rem < qty then
      code = 'insufficient_stock'
    elseif taken_now[i] or taken[hid] then
      -- Never overwrite another hold: the caller must propose a fresh id.
      res = 'taken'
    else
      rem = rem - qty
      held = held + qty
      pos = pos + 1
      if not used[user] then
        nt = nt + 1
        touched[nt] = user
      end
      used[user] = user_units + qty
      taken[hid] = true
      local pos_s = fmt(pos)
      local hv = 'H\t' .. qty_s .. '\t' .. pos_s .. '\t' .. now_s .. '\t' .. exp_s .. '\t' .. user
      nh = nh + 2
      hold_pairs[nh - 1], hold_pairs[nh] = hid, hv
      exp_pairs[nh - 1], exp_pairs[nh] = exp_s, hid
      pos_pairs[nh - 1], pos_pairs[nh] = pos_s, hid
      local r = ARGV[P + i] .. 'h:' .. hid
      written[field] = r
      nr = nr + 2
      rec_pairs[nr - 1], rec_pairs[nr] = field, r
      res = pos
    end
    if code then
      local r = ARGV[P + i] .. 'r:' .. code
      written[field] = r
      nr = nr + 2
      rec_pairs[nr - 1], rec_pairs[nr] = field, r
      res = code
    end
  end
  out[i + 1] = res
end

if nh > 0 then
  redis.call('HSET', h, unpack(hold_pairs))
  redis.call('ZADD', x, unpack(exp_pairs))
  redis.call('HSET', a, unpack(pos_pairs))
  local usage = {}
  for j = 1, nt do
    usage[2 * j - 1], usage[2 * j] = touched[j], fmt(used[touched[j]])
  end
  redis.call('HSET', u, unpack(usage))
  redis.call('HSET', m, 'rem', fmt(rem), 'held', fmt(held), 'pos', fmt(pos))
end
if nr > 0 then
  -- Records live at least the idempotency TTL after the last one was written.
  redis.call('HSET', idem, unpack(rec_pairs))
  redis.call('EXPIRE', idem, idem_ttl)
end
return out
