-- Read-only: what did earlier reservations with these idempotency keys answer?
-- Used to settle a reservation whose reply was lost (timeout after send).
-- KEYS: 1 holds, 2 idempotency records. ARGV: pairs of (record field, fingerprint).
-- Returns per request {'held', hold_id, packed_hold}, {'rej', code} or {'none'}.
local out = {}
for i = 1, #ARGV / 2 do
  local res
  local rec = redis.call('HGET', KEYS[2], ARGV[2 * i - 1])
  if rec then
    res = replay(rec, ARGV[2 * i], KEYS[1])
  end
  out[i] = res or {'none'}
end
return out
