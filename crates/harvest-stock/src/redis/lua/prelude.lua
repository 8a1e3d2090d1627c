-- Shared helpers, prepended to every script.
--
-- A hold is stored as one field of the sale's hold hash:
--   "<status>\t<quantity>\t<position>\t<created_ms>\t<expires_ms>\t<user_id>"
-- with status H (held), P (paid), R (released) or E (expired). The user id comes
-- last so it may contain any byte.
--
-- Numbers are written with string.format('%d') because Lua's default number
-- formatting switches to exponent notation for large values.
local function fmt(n)
  return string.format('%d', n)
end

local function parse_hold(v)
  local s, q, p, c, e, u = string.match(v, '^(%u)\t(%d+)\t(%d+)\t(%-?%d+)\t(%-?%d+)\t(.*)$')
  return s, tonumber(q), tonumber(p), tonumber(c), tonumber(e), u
end

-- An idempotency record is "<len(fingerprint)>:<fingerprint><outcome>" where the
-- outcome is "h:<hold_id>" or "r:<code>". Returns the reply for a replay, or nil
-- when the record does not settle the request (no record, or its hold is gone).
local function replay(rec, fp, holds)
  local len, rest = string.match(rec, '^(%d+):(.*)$')
  len = tonumber(len)
  if string.sub(rest, 1, len) ~= fp then
    return {'rej', 'idempotency_key_reused'}
  end
  local kind = string.sub(rest, len + 1, len + 1)
  local val = string.sub(rest, len + 3)
  if kind == 'h' then
    local hv = redis.call('HGET', holds, val)
    if hv then
      return {'held', val, hv}
    end
    return nil
  end
  return {'rej', val}
end

local function release_units(meta, users, user, q)
  if redis.call('HINCRBY', users, user, -q) <= 0 then
    redis.call('HDEL', users, user)
  end
  redis.call('HINCRBY', meta, 'rem', q)
  redis.call('HINCRBY', meta, 'held', -q)
end
