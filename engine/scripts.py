"""Lua scripts of the single writer (EVAL/EVALSHA: runs on Redis 6.2 and later)."""

from __future__ import annotations

__all__ = ["ACQUIRE", "RELEASE", "RENEW", "WRITE"]

# WRITE: apply one batch of decided commands atomically, or nothing at all.
# KEYS[1] events      KEYS[2] containers   KEYS[3] versions   KEYS[4] world
# KEYS[5] done        KEYS[6] commands     KEYS[7] epoch      KEYS[8] quarantine
# KEYS[9] outbox
# ARGV[1] fencing epoch the writer holds   ARGV[2] consumer group   ARGV[3] reply TTL (s)
# ARGV[4..] ops, each a kind then its fields:
#   "C" entry_id cmd_id cid expected new snapshot result reply n_events e1..en world n_jobs j1..jn
#       expected: the container's version before (-1: must not exist yet, "" = no container)
#       snapshot: msgpack Container, "-" deletes it (destroyed), "" leaves it
#       world: msgpack of the engine-wide parts (images+networks) or ""
#   "Q" entry_id reason raw      -- quarantine an undecodable entry
#   "D" entry_id cmd_id reply    -- a duplicate: answer with the stored result again
# Returns {"OK", last_event_id} or {"FENCED"} or {"VERSION", cid, stored} or {"DONE", cmd_id}.
WRITE = r"""
if redis.call('GET', KEYS[7]) ~= ARGV[1] then return {'FENCED'} end
local ttl = tonumber(ARGV[3])
-- pass 1: check every precondition before writing anything
local seen = {}
local i = 4
while i <= #ARGV do
  local kind = ARGV[i]
  if kind == 'C' then
    local cmd, cid, expected, new = ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
    if redis.call('HEXISTS', KEYS[5], cmd) == 1 then return {'DONE', cmd} end
    if cid ~= '' and expected ~= '' then
      local stored = seen[cid]
      if stored == nil then stored = redis.call('HGET', KEYS[3], cid) or '-1' end
      if stored ~= expected then return {'VERSION', cid, stored} end
      seen[cid] = new
    end
    local n = tonumber(ARGV[i+9])
    local nj = tonumber(ARGV[i+11+n])
    i = i + 12 + n + nj
  elseif kind == 'Q' then i = i + 4
  else i = i + 4 end
end
-- pass 2: write
local last = ''
local world_parts = nil
i = 4
while i <= #ARGV do
  local kind, entry = ARGV[i], ARGV[i+1]
  if kind == 'C' then
    local cmd, cid, new, snap, result, reply = ARGV[i+2], ARGV[i+3], ARGV[i+5], ARGV[i+6], ARGV[i+7], ARGV[i+8]
    local n = tonumber(ARGV[i+9])
    local mine = last
    for k = 1, n do
      mine = redis.call('XADD', KEYS[1], '*', 'd', ARGV[i+9+k])
    end
    if n > 0 then last = mine end
    if cid ~= '' and n > 0 then
      if snap == '-' then redis.call('HDEL', KEYS[2], cid)
      elseif snap ~= '' then redis.call('HSET', KEYS[2], cid, snap) end
      if new ~= '' and ARGV[i+4] ~= '' then redis.call('HSET', KEYS[3], cid, new) end
    end
    if ARGV[i+10+n] ~= '' then world_parts = ARGV[i+10+n] end
    local nj = tonumber(ARGV[i+11+n])
    for k = 1, nj do redis.call('RPUSH', KEYS[9], ARGV[i+11+n+k]) end
    local value = mine .. ' ' .. result
    redis.call('HSET', KEYS[5], cmd, value)
    redis.call('RPUSH', reply, value)
    redis.call('EXPIRE', reply, ttl)
    redis.call('XACK', KEYS[6], ARGV[2], entry)
    i = i + 12 + n + nj
  elseif kind == 'Q' then
    redis.call('XADD', KEYS[8], '*', 'entry', entry, 'reason', ARGV[i+2], 'raw', ARGV[i+3])
    redis.call('XACK', KEYS[6], ARGV[2], entry)
    i = i + 4
  else
    local value = redis.call('HGET', KEYS[5], ARGV[i+2])
    if value then
      redis.call('RPUSH', ARGV[i+3], value)
      redis.call('EXPIRE', ARGV[i+3], ttl)
    end
    redis.call('XACK', KEYS[6], ARGV[2], entry)
    i = i + 4
  end
end
if world_parts then redis.call('HSET', KEYS[4], 'parts', world_parts) end
if last ~= '' then redis.call('HSET', KEYS[4], 'checkpoint', last) end
return {'OK', last}
"""

# ACQUIRE: take the lease if free and bump the fencing epoch.
# KEYS[1] lease  KEYS[2] epoch   ARGV[1] owner token  ARGV[2] ttl ms
# Returns the new epoch, or false when another owner holds the lease.
ACQUIRE = r"""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
"""

# RENEW: extend the lease only if we still own it and the epoch is still ours.
# KEYS[1] lease  KEYS[2] epoch   ARGV[1] owner token  ARGV[2] ttl ms  ARGV[3] epoch
# Returns 1 when renewed, 0 when lost.
RENEW = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# RELEASE: give the lease up (clean shutdown) if we own it.
# KEYS[1] lease   ARGV[1] owner token
RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
