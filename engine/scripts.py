"""Lua scripts of the single writer (EVAL/EVALSHA: runs on Redis 6.2 and later)."""

from __future__ import annotations

__all__ = ["ACQUIRE", "RECLAIM", "RELEASE", "RENEW", "TRIM_OUTBOX", "WRITE"]

# WRITE: apply one batch of decided commands atomically, or nothing at all.
# KEYS[1] events      KEYS[2] containers   KEYS[3] versions   KEYS[4] world
# KEYS[5] done        KEYS[6] epoch        KEYS[7] quarantine KEYS[8] outbox
# KEYS[9] names (name -> holder id: the routing index clients read, engine.shards)
# KEYS[10..] the inbox streams the batch read from, in the order of the acks sections
# ARGV[1] fencing epoch the writer holds   ARGV[2] consumer group   ARGV[3] reply TTL (s)
# ARGV[4] msgpack of the engine-wide parts (images+networks) to store, or ""
# ARGV[5] the number m of inbox streams (KEYS[10..9+m])
# ARGV[6..] sections, each a count of ARGV items followed by that many items:
#   acks x m   per inbox stream: every entry id read from it (decided, duplicate or
#              quarantined)
#   checked    ids of the containers the batch touches, each once
#   expected   aligned with `checked`: the version each must have now ("-1": none yet)
#   versions   cid new-version pairs to store
#   snapshots  cid msgpack-Container pairs to store (each container's state at batch end)
#   deleted    cids whose snapshot goes (destroyed; their version stays as a tombstone)
#   jobs       msgpack jobs for the outbox, in decision order
#   commands   per decided command, in order: mark result n_events e1..en (the mark is
#              the command's `done` field: its id, prefixed for a namespaced principal)
#   replies    mark reply-list pairs: push that command's stored result (decided in this
#              batch or earlier: a duplicate) to a list a client blocks on
#   quarantine entry stream reason raw quadruples: entries not decided
#   named      name holder pairs the names index gains (or whose holder changes)
#   unnamed    names the names index loses
# Returns {"OK", last_event_id} or {"FENCED"} or {"VERSION", cid, stored}.
#
# Why this shape: the cost of a write is dominated by the number of ARGV items (redis-py
# packs each one, Redis parses each into an object, Lua interns each as a string), not by
# their bytes. So every per-container fact is sent once per batch (the reducer folds a
# container's commands into its first expected and last version and its final snapshot),
# and every write that is not an event or a reply is one command over an ARGV slice.
# Dedupe is decided by the writer before the batch (HMGET done); the epoch makes it the
# only writer, so the script checks versions, not command ids.
WRITE = r"""
if redis.call('GET', KEYS[6]) ~= ARGV[1] then return {'FENCED'} end
local ttl = tonumber(ARGV[3])
-- the section starting at ARGV[i]: first item, last item, start of the next section
local function section(i)
  local n = tonumber(ARGV[i])
  return i + 1, i + n, i + n + 1
end
-- cmd key [extra] list[s..e], chunked: unpack is limited to ~8000 values (even: pairs)
local function bulk(cmd, key, extra, list, s, e)
  local out = {}
  for a = s, e, 7000 do
    local b = math.min(a + 6999, e)
    local r
    if extra then r = redis.call(cmd, key, extra, unpack(list, a, b))
    else r = redis.call(cmd, key, unpack(list, a, b)) end
    if type(r) == 'table' then for _, v in ipairs(r) do out[#out+1] = v end end
  end
  return out
end
local inboxes = tonumber(ARGV[5])
local acks, i = {}, 6
for j = 1, inboxes do
  local s, e
  s, e, i = section(i)
  acks[j] = {s, e}
end
local cids_s, cids_e, exp_s, exp_e
cids_s, cids_e, i = section(i)
exp_s, exp_e, i = section(i)
-- check every container's expected version before writing anything
if cids_e >= cids_s then
  local stored = bulk('HMGET', KEYS[3], nil, ARGV, cids_s, cids_e)
  for k = 0, cids_e - cids_s do
    local have = stored[k+1] or '-1'
    if have ~= ARGV[exp_s + k] then return {'VERSION', ARGV[cids_s + k], have} end
  end
end
local vers_s, vers_e, snaps_s, snaps_e, dels_s, dels_e, jobs_s, jobs_e
vers_s, vers_e, i = section(i)
snaps_s, snaps_e, i = section(i)
dels_s, dels_e, i = section(i)
jobs_s, jobs_e, i = section(i)
-- events, in command order; a command's stored result names its last event
local last = ''
local done, answered = {}, {}
local ncmd = tonumber(ARGV[i])
i = i + 1
for _ = 1, ncmd do
  local cmd, n = ARGV[i], tonumber(ARGV[i+2])
  for k = 1, n do last = redis.call('XADD', KEYS[1], '*', 'd', ARGV[i+2+k]) end
  local value = last .. ' ' .. ARGV[i+1]
  done[#done+1] = cmd
  done[#done+1] = value
  answered[cmd] = value
  i = i + 3 + n
end
local s, e
s, e, i = section(i)
for k = s, e, 2 do
  local value = answered[ARGV[k]] or redis.call('HGET', KEYS[5], ARGV[k])
  if value then
    redis.call('RPUSH', ARGV[k+1], value)
    redis.call('EXPIRE', ARGV[k+1], ttl)
  end
end
s, e, i = section(i)
for k = s, e, 4 do
  redis.call('XADD', KEYS[7], '*', 'entry', ARGV[k], 'stream', ARGV[k+1], 'reason', ARGV[k+2],
             'raw', ARGV[k+3])
end
s, e, i = section(i)
bulk('HSET', KEYS[9], nil, ARGV, s, e)
s, e, i = section(i)
bulk('HDEL', KEYS[9], nil, ARGV, s, e)
bulk('HSET', KEYS[2], nil, ARGV, snaps_s, snaps_e)
bulk('HDEL', KEYS[2], nil, ARGV, dels_s, dels_e)
bulk('HSET', KEYS[3], nil, ARGV, vers_s, vers_e)
bulk('RPUSH', KEYS[8], nil, ARGV, jobs_s, jobs_e)
bulk('HSET', KEYS[5], nil, done, 1, #done)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], 'parts', ARGV[4]) end
if last ~= '' then
  -- the container count lets a reader notice a lost containers hash
  redis.call('HSET', KEYS[4], 'checkpoint', last, 'count', redis.call('HLEN', KEYS[2]))
end
for j = 1, inboxes do
  bulk('XACK', KEYS[9 + j], ARGV[2], ARGV, acks[j][1], acks[j][2])
end
return {'OK', last}
"""

# TRIM_OUTBOX: drop the first N outbox entries (handed to rq) only while the epoch is ours.
# KEYS[1] outbox  KEYS[2] epoch   ARGV[1] N  ARGV[2] epoch   Returns 1 trimmed, 0 fenced.
TRIM_OUTBOX = r"""
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('LTRIM', KEYS[1], tonumber(ARGV[1]), -1)
return 1
"""

# RECLAIM: move every pending entry of each inbox's group to the leader's consumer, then
# delete the consumers left with nothing pending; only while the epoch is the caller's.
# KEYS[1] epoch  KEYS[2] the registered principals (set)  KEYS[3..] the inbox streams
# ARGV[1] consumer group  ARGV[2] the leader's consumer (this term)  ARGV[3] its epoch
# Returns {claimed, retired, principals}, or -1 when fenced (a deposed reducer claims
# nothing); `claimed` counts the entries other consumers held. The principals let the
# leader start reading a principal's stream as soon as it is registered, without a round
# trip of its own.
#
# Why every other consumer's entries, at once (min-idle 0): a consumer name is one term of
# one reducer (engine.keys.consumer_name) and only the current epoch's writes land, so an
# entry pending under another name will never be written by its reader; waiting only puts
# it further behind the entries read after it. XAUTOCLAIM takes the leader's own entries
# too: the reducer claims between batches, when it holds none it has not written.
# Why one script: a deposed reducer's XREADGROUP cannot refill a consumer between the check
# that nothing is pending for it and its deletion (XGROUP DELCONSUMER drops the consumer's
# pending entries from the group: they would be stranded for good).
# XAUTOCLAIM needs Redis 6.2; from 7.0 its reply has a third element (ignored here).
RECLAIM = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[3] then return -1 end
local claimed, retired = 0, 0
for k = 3, #KEYS do
  local others = 0
  for _, c in ipairs(redis.call('XPENDING', KEYS[k], ARGV[1])[4] or {}) do
    if c[1] ~= ARGV[2] then others = others + tonumber(c[2]) end
  end
  local start = '0-0'
  while others > 0 do
    local r = redis.call('XAUTOCLAIM', KEYS[k], ARGV[1], ARGV[2], 0, start,
                         'COUNT', 1000, 'JUSTID')
    start = r[1]
    if start == '0-0' then break end
  end
  claimed = claimed + others
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[k], ARGV[1])) do
    local f = {}
    for n = 1, #c, 2 do f[c[n]] = c[n+1] end
    if f['name'] ~= ARGV[2] and tonumber(f['pending']) == 0 then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[k], ARGV[1], f['name'])
      retired = retired + 1
    end
  end
end
return {claimed, retired, redis.call('SMEMBERS', KEYS[2])}
"""

# ACQUIRE: take the lease if free, or if it still names the caller, and bump the epoch.
# KEYS[1] lease  KEYS[2] epoch   ARGV[1] owner token  ARGV[2] ttl ms
# Returns the new epoch, or false when another owner holds the lease.
# Taking back one's own lease matters after a failover: the promoted replica holds the
# lease the reducer had, which it gave up on the connection error; waiting for it to
# lapse would add up to a lease to the outage. The owner token is unique per reducer
# process, and the new epoch fences every write of its earlier term.
ACQUIRE = r"""
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
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
