"""The Lua scripts of the fleet ledger: every check and change of budget buckets, atomic in Redis.

Times to live are relative (PEXPIRE), computed from the caller's clock, so a bucket lives
until its period ends plus the late-settle window whatever Redis's own clock says.
Keys of the ledger share one hash tag (`{ledger}`), so every script touches one slot and runs on
Redis Cluster too. A bucket is a hash {s: spent, r: reserved} in micro-USD; a reservation is a
hash {amount, at, exp, state, buckets}; `open` is a sorted set of open reservations by expiry.

Scripts are registered once (redis-py calls them by SHA and loads them again after a restart).
"""

from __future__ import annotations

# KEYS: reservation, open set, scopes set, bucket 1..n.
# ARGV: id, amount, at, expires_at, reservation ttl ms, n, then per bucket: limit, ttl ms,
#       "nx" when the bucket's expiry is set only once (the per-task bucket) else "", and the
#       concrete scope to list in the scopes set ("" for none).
# Returns {"ok", spent_1, reserved_1, ..., spent_n, reserved_n} after the reservation,
# {"block", i, spent_i, reserved_i} for the first bucket the amount would break, or {"dup"} when
# the id is already reserved.
RESERVE = """
local res = KEYS[1]
if redis.call('EXISTS', res) == 1 then return {'dup'} end
local amount = tonumber(ARGV[2])
local n = tonumber(ARGV[6])
local spent, held = {}, {}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[3 + i], 's', 'r')
  spent[i], held[i] = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  local limit = tonumber(ARGV[6 + 4 * (i - 1) + 1])
  if amount > 0 and spent[i] + held[i] + amount > limit then
    return {'block', i, spent[i], held[i]}
  end
end
local names = {}
for i = 1, n do
  local k = KEYS[3 + i]
  local base = 6 + 4 * (i - 1)
  redis.call('HINCRBY', k, 'r', amount)
  if ARGV[base + 3] == 'nx' then
    redis.call('PEXPIRE', k, ARGV[base + 2], 'NX')
  else
    redis.call('PEXPIRE', k, ARGV[base + 2])
  end
  if ARGV[base + 4] ~= '' then redis.call('SADD', KEYS[3], ARGV[base + 4]) end
  names[i] = k
end
redis.call('HSET', res, 'amount', amount, 'at', ARGV[3], 'exp', ARGV[4], 'state', 'open',
           'buckets', table.concat(names, '\\n'))
redis.call('PEXPIRE', res, ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
local out = {'ok'}
for i = 1, n do
  out[2 * i] = spent[i]
  out[2 * i + 1] = held[i] + amount
end
return out
"""

# A guarded change: the reservation must be in the state the caller read, else nothing happens.
# KEYS: reservation, open set, bucket 1..n.
# ARGV: id, expected state ("" = absent), new state ("" deletes the reservation, "=" keeps its
#       state), reservation ttl ms, n, then per bucket: field ("s" spent or "r" reserved), delta,
#       ttl ms, "nx" or ""; last: the open set's operation, "add:<score>", "rem" or "".
# Returns {"ok", spent_1, reserved_1, ...} after the change, or {"conflict", state} when the
# state the caller read has moved on (another sidecar got there first): nothing was changed.
APPLY = """
local res = KEYS[1]
local state = redis.call('HGET', res, 'state') or ''
if state ~= ARGV[2] then return {'conflict', state} end
local n = tonumber(ARGV[5])
local out = {'ok'}
for i = 1, n do
  local k = KEYS[2 + i]
  local base = 5 + 4 * (i - 1)
  redis.call('HINCRBY', k, ARGV[base + 1], ARGV[base + 2])
  if ARGV[base + 4] == 'nx' then
    redis.call('PEXPIRE', k, ARGV[base + 3], 'NX')
  else
    redis.call('PEXPIRE', k, ARGV[base + 3])
  end
  local v = redis.call('HMGET', k, 's', 'r')
  out[2 * i] = tonumber(v[1]) or 0
  out[2 * i + 1] = tonumber(v[2]) or 0
end
local new = ARGV[3]
if new == '' then
  redis.call('DEL', res)
elseif new ~= '=' then
  redis.call('HSET', res, 'state', new)
  redis.call('PEXPIRE', res, ARGV[4])
end
local zop = ARGV[6 + 4 * n]
if zop == 'rem' then
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif string.sub(zop, 1, 4) == 'add:' then
  redis.call('ZADD', KEYS[2], string.sub(zop, 5), ARGV[1])
end
return out
"""
