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
#   (reply "" = nobody waits: no wake-up list is pushed)
# Returns {"OK", last_event_id} or {"FENCED"} or {"VERSION", cid, stored}.
# Dedupe is decided by the writer before the batch (HMGET done); the epoch makes it the
# only writer, so the script checks versions, not command ids. Hash writes are gathered
# and issued once per batch: a third of the calls of one write per command.
WRITE = r"""
if redis.call('GET', KEYS[7]) ~= ARGV[1] then return {'FENCED'} end
local ttl = tonumber(ARGV[3])
local function flush(cmd, key, extra, list)
  local n = #list
  for s = 1, n, 7000 do
    local e = math.min(s + 6999, n)
    if extra then redis.call(cmd, key, extra, unpack(list, s, e))
    else redis.call(cmd, key, unpack(list, s, e)) end
  end
end
-- pass 1: check every container's expected version before writing anything
local seen = {}
local order = {}
local i = 4
while i <= #ARGV do
  local kind = ARGV[i]
  if kind == 'C' then
    local cid, expected, new = ARGV[i+3], ARGV[i+4], ARGV[i+5]
    if cid ~= '' and expected ~= '' then
      if seen[cid] == nil then order[#order+1] = cid end
      seen[cid] = {expected, new}
    end
    local n = tonumber(ARGV[i+9])
    i = i + 12 + n + tonumber(ARGV[i+11+n])
  else i = i + 4 end
end
if #order > 0 then
  local stored = redis.call('HMGET', KEYS[3], unpack(order))
  local chain = {}
  for k, cid in ipairs(order) do chain[cid] = stored[k] or '-1' end
  i = 4
  while i <= #ARGV do
    if ARGV[i] == 'C' then
      local cid, expected, new = ARGV[i+3], ARGV[i+4], ARGV[i+5]
      if cid ~= '' and expected ~= '' then
        if chain[cid] ~= expected then return {'VERSION', cid, chain[cid]} end
        chain[cid] = new
      end
      local n = tonumber(ARGV[i+9])
      i = i + 12 + n + tonumber(ARGV[i+11+n])
    else i = i + 4 end
  end
end
-- pass 2: write
local last = ''
local world_parts = nil
local snaps, dels, vers, done, acks, answered = {}, {}, {}, {}, {}, {}
i = 4
while i <= #ARGV do
  local kind, entry = ARGV[i], ARGV[i+1]
  acks[#acks+1] = entry
  if kind == 'C' then
    local cmd, cid, expected, new, snap = ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6]
    local result, reply = ARGV[i+7], ARGV[i+8]
    local n = tonumber(ARGV[i+9])
    local mine = last
    for k = 1, n do
      mine = redis.call('XADD', KEYS[1], '*', 'd', ARGV[i+9+k])
    end
    if n > 0 then last = mine end
    if cid ~= '' and n > 0 and expected ~= '' then
      if snap == '-' then dels[#dels+1] = cid
      elseif snap ~= '' then snaps[#snaps+1] = cid; snaps[#snaps+1] = snap end
      vers[#vers+1] = cid; vers[#vers+1] = new
    end
    if ARGV[i+10+n] ~= '' then world_parts = ARGV[i+10+n] end
    local nj = tonumber(ARGV[i+11+n])
    for k = 1, nj do redis.call('RPUSH', KEYS[9], ARGV[i+11+n+k]) end
    local value = mine .. ' ' .. result
    done[#done+1] = cmd; done[#done+1] = value
    answered[cmd] = value
    if reply ~= '' then
      redis.call('RPUSH', reply, value)
      redis.call('EXPIRE', reply, ttl)
    end
    i = i + 12 + n + nj
  elseif kind == 'Q' then
    redis.call('XADD', KEYS[8], '*', 'entry', entry, 'reason', ARGV[i+2], 'raw', ARGV[i+3])
    i = i + 4
  else
    local value = answered[ARGV[i+2]] or redis.call('HGET', KEYS[5], ARGV[i+2])
    if value and ARGV[i+3] ~= '' then
      redis.call('RPUSH', ARGV[i+3], value)
      redis.call('EXPIRE', ARGV[i+3], ttl)
    end
    i = i + 4
  end
end
-- a container written twice in a batch: HSET keeps the last value, as folding would
if #snaps > 0 then flush('HSET', KEYS[2], nil, snaps) end
if #dels > 0 then flush('HDEL', KEYS[2], nil, dels) end
if #vers > 0 then flush('HSET', KEYS[3], nil, vers) end
if #done > 0 then flush('HSET', KEYS[5], nil, done) end
if world_parts then redis.call('HSET', KEYS[4], 'parts', world_parts) end
if last ~= '' then
  -- the container count lets a reader notice a lost containers hash
  redis.call('HSET', KEYS[4], 'checkpoint', last, 'count', redis.call('HLEN', KEYS[2]))
end
flush('XACK', KEYS[6], ARGV[2], acks)
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
