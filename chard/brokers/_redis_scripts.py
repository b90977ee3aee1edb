"""The Redis broker's Lua scripts: every state change that must be atomic, on Redis time.

The keys they touch are described in :mod:`chard.brokers.redis`, which runs them. Each
script starts with the shared library ``_LIB`` (key names from the prefix argument, the
lease and landing-list helpers); ``ARGV[1]`` is always the key prefix. They run on the
server's clock (``TIME``), so consumers' clock skew never shortens a lease.

Kept apart from the Python side because it is a language of its own and reads best whole.
"""

from __future__ import annotations

_LIB = r"""
local prefix = ARGV[1]
local leases, inflight = prefix .. 'chard.held.expiry', prefix .. 'chard.held'
local redeliveries, delayed = prefix .. 'chard.redeliveries', prefix .. 'chard.delayed'
local delayed_counts = prefix .. 'chard.delayed.counts'
local consumers, landing_src = prefix .. 'chard.consumers', prefix .. 'chard.landing.src'

-- Server time as seconds, and as the same decimal in a string ('<s>.<6 digits>'): for
-- tags (unique to the microsecond), replies and scores, without formatting a number.
local function now()
  local t = redis.call('TIME')
  local stamp = t[1] .. '.' .. string.sub('00000' .. t[2], -6)
  return tonumber(stamp), stamp
end
local function ready_key(queue, step)
  if step == '0' then return prefix .. queue end
  return prefix .. queue .. '\6\22' .. step
end
-- A lease's tag: '<consumer>.<unique>|<step><count>|<queue>' (the queue last: any
-- character may be in it); its queue, priority step and delivery count read back.
-- The unique part ends in the lease's index in its batch: '1'..'9', 'a'..'z', 'A'..'Z',
-- then the number itself (two digits or more, so never one of those).
local LEASE_IDS = '123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'
local function tag_for(base, queue, step, count)
  return base .. '|' .. step .. count .. '|' .. queue
end
local function parse(tag)
  local a = string.find(tag, '|', 1, true)
  if not a then return nil end
  local b = string.find(tag, '|', a + 1, true)
  local count = tonumber(string.sub(tag, a + 2, b - 1))
  return string.sub(tag, b + 1), string.sub(tag, a + 1, a + 1), count
end
-- Back to the front of its queue, remembering how often it was delivered.
local function restore(queue, step, body, count)
  redis.call('RPUSH', ready_key(queue, step), body)
  if count > 0 then redis.call('HSET', redeliveries, redis.sha1hex(body), count) end
end
local function drop(tag)
  redis.call('ZREM', leases, tag)
  redis.call('HDEL', inflight, tag)
end
-- What consumer cid's blocking wait moved but no fetch leased goes back, uncounted.
local function return_landing(cid)
  local spec, landing = redis.call('HGET', landing_src, cid), prefix .. 'chard.landing.' .. cid
  if spec then
    local src = ready_key(string.sub(spec, 2), string.sub(spec, 1, 1))
    while redis.call('LMOVE', landing, src, 'LEFT', 'RIGHT') do end
  end
end
-- Forget a lapsed consumer cid, returning its landing list first.
local function release_landing(cid)
  return_landing(cid)
  redis.call('DEL', prefix .. 'chard.landing.' .. cid)
  redis.call('HDEL', landing_src, cid)
  redis.call('ZREM', consumers, cid)
end
local function recover(t)
  for _, tag in ipairs(redis.call('ZRANGE', leases, '-inf', t, 'BYSCORE', 'LIMIT', 0, 100)) do
    local body = redis.call('HGET', inflight, tag)
    local queue, step, count = parse(tag)
    if body and queue then restore(queue, step, body, count) end
    drop(tag)
  end
  for _, cid in ipairs(redis.call('ZRANGE', consumers, '-inf', t, 'BYSCORE', 'LIMIT', 0, 10)) do
    release_landing(cid)
  end
end
-- Move due delayed messages to the back of their ready list; return the next due time.
local function move_due(t)
  for _, member in ipairs(redis.call('ZRANGE', delayed, '-inf', t, 'BYSCORE', 'LIMIT', 0, 100)) do
    local a = string.find(member, '\0', 1, true)
    local b = string.find(member, '\0', a + 1, true)
    local queue = string.sub(member, 2, a - 1)
    redis.call('LPUSH', ready_key(queue, string.sub(member, 1, 1)), string.sub(member, b + 1))
    redis.call('ZREM', delayed, member)
    redis.call('HINCRBY', delayed_counts, queue, -1)
  end
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  return first[2] or ''
end
"""

# ARGV: prefix, consumer, lease_timeout, limit, tag_base, landed_spec, next_spec ('' to
# leave the landing source as it is), sweep ('1': recover lapsed leases, move due delayed
# messages and renew the registration; 'w': do so if nothing landed, i.e. the blocking
# wait this call follows timed out; '': leave those to a later call), the number of
# tags to ack first, those tags, queues...
# Returns server time, the next due time ('' none, '-' not looked at), then tag and body
# of each message leased (the tag says its queue and delivery count). A batch costs a
# fixed handful of commands: ready lists are popped with RPOP's count and the leases
# written with one variadic command per key, so nothing but the Lua loop grows with it.
_FETCH = r"""
local consumer, limit, sweep = ARGV[2], tonumber(ARGV[4]), ARGV[8] == '1'
if ARGV[8] == 'w' then
  sweep = redis.call('LLEN', prefix .. 'chard.landing.' .. consumer) == 0
end
local acks = tonumber(ARGV[9])
for i = 10, 9 + acks, 2000 do  -- acks first, as RedisBroker.ack_many sends them
  local last = math.min(i + 1999, 9 + acks)
  redis.call('HDEL', inflight, unpack(ARGV, i, last))
  redis.call('ZREM', leases, unpack(ARGV, i, last))
end
local t, stamp = now()
-- Server time in the tag: a call redis-py repeats after a lost reply gets new tags
-- instead of overwriting the leases the first run took.
local tag_base = ARGV[5] .. '.' .. stamp .. '.'
local out = {stamp, '-'}
if sweep then
  recover(stamp)
  out[2] = move_due(stamp)
end
-- Lease strings built once per call, not per lease: Lua formats a number with sprintf
-- (and redis.call formats a number argument with '%.17g'), which costs more than the
-- rest of a lease. The index in the batch is one character up to LEASE_IDS' length.
local expiry = t + tonumber(ARGV[3])
local expiry_arg = string.format('%.6f', expiry)
local has_redeliveries = redis.call('EXISTS', redeliveries) == 1
local taken, nz, nout, zargs = 0, 0, 2, {}
local function lease(queue, step, body)
  taken = taken + 1
  local count = '1'
  if has_redeliveries then
    local digest = redis.sha1hex(body)
    local before = redis.call('HGET', redeliveries, digest)
    if before then
      count = tostring(tonumber(before) + 1)
      redis.call('HDEL', redeliveries, digest)
    end
  end
  local id = taken <= #LEASE_IDS and string.sub(LEASE_IDS, taken, taken) or taken
  local tag = tag_base .. id .. '|' .. step .. count .. '|' .. queue
  zargs[nz + 1], zargs[nz + 2] = expiry_arg, tag
  out[nout + 1], out[nout + 2] = tag, body
  nz, nout = nz + 2, nout + 2
end
if ARGV[6] ~= '' then  -- what the last blocking wait moved into our landing list
  local landing = prefix .. 'chard.landing.' .. consumer
  local moved = redis.call('RPOP', landing, 1000)
  while moved do
    for _, body in ipairs(moved) do
      lease(string.sub(ARGV[6], 2), string.sub(ARGV[6], 1, 1), body)
    end
    moved = #moved == 1000 and redis.call('RPOP', landing, 1000)
  end
end
local queues = {}
for i = 10 + acks, #ARGV do queues[#queues + 1] = ARGV[i] end
-- Round-robin in even shares: one busy queue cannot fill a batch.
local function take(step)
  local active = queues
  while taken < limit and #active > 0 do
    local still = {}
    local share = math.max(1, math.floor((limit - taken) / #active))
    for _, queue in ipairs(active) do
      local want = math.min(share, limit - taken)
      if want < 1 then break end
      local popped = redis.call('RPOP', ready_key(queue, step), want)
      if popped then
        for _, body in ipairs(popped) do lease(queue, step, body) end
        if #popped == want then still[#still + 1] = queue end
      end
    end
    active = still
  end
end
take('0')
if taken < limit then  -- lower priorities: one EXISTS says whether any list has messages
  local lower = {}
  for _, step in ipairs({'3', '6', '9'}) do
    for _, queue in ipairs(queues) do lower[#lower + 1] = ready_key(queue, step) end
  end
  if #lower > 0 and redis.call('EXISTS', unpack(lower)) > 0 then
    for _, step in ipairs({'3', '6', '9'}) do take(step) end
  end
end
-- One command per key for the whole batch (in chunks: Lua's unpack has a limit); the
-- hash's field/value pairs are the reply's tag/body pairs after its first two items.
for i = 1, nz, 2000 do
  redis.call('ZADD', leases, unpack(zargs, i, math.min(i + 1999, nz)))
end
for i = 3, nout, 2000 do
  redis.call('HSET', inflight, unpack(out, i, math.min(i + 1999, nout)))
end
if sweep then redis.call('ZADD', consumers, expiry_arg, consumer) end
if ARGV[7] ~= '' then redis.call('HSET', landing_src, consumer, ARGV[7]) end
return out
"""

# ARGV: prefix, consumer ('' if it never fetched), lease_timeout, tags... Returns lost tags.
_HEARTBEAT = r"""
-- Leases taken before chard kept a lease's queue, priority and count in its tag lived
-- in 'chard.leases', 'chard.inflight' and 'chard.inflight.meta' (JSON {q, p, n, c}):
-- lapsed ones there are still returned to their queues, by heartbeats only (they are
-- rare, and fetches need not pay the look).
local function recover_legacy(t)
  local old_leases = prefix .. 'chard.leases'
  local tags = redis.call('ZRANGE', old_leases, '-inf', t, 'BYSCORE', 'LIMIT', 0, 100)
  if #tags == 0 then return end
  local old_inflight, old_meta = prefix .. 'chard.inflight', prefix .. 'chard.inflight.meta'
  for _, tag in ipairs(tags) do
    local body, info = redis.call('HGET', old_inflight, tag), redis.call('HGET', old_meta, tag)
    if body and info then
      info = cjson.decode(info)
      restore(info.q, info.p, body, info.n)
    end
    redis.call('ZREM', old_leases, tag)
    redis.call('HDEL', old_inflight, tag)
    redis.call('HDEL', old_meta, tag)
  end
end
local t, stamp = now()
local expiry, lost = string.format('%.6f', t + tonumber(ARGV[3])), {}
if ARGV[2] ~= '' then redis.call('ZADD', consumers, expiry, ARGV[2]) end
-- Two commands per chunk of tags, not two per tag: which still have a lease, then one
-- ZADD that extends those.
for i = 4, #ARGV, 2000 do
  local last = math.min(i + 1999, #ARGV)
  local scores, extend, n = redis.call('ZMSCORE', leases, unpack(ARGV, i, last)), {}, 0
  for j = i, last do
    if scores[j - i + 1] then
      extend[n + 1], extend[n + 2] = expiry, ARGV[j]
      n = n + 2
    else
      lost[#lost + 1] = ARGV[j]
    end
  end
  if n > 0 then redis.call('ZADD', leases, unpack(extend, 1, n)) end
end
recover(stamp)
recover_legacy(stamp)
move_due(stamp)
return lost
"""

# ARGV: prefix, dead consumer, this consumer, lease_timeout, tag_base. Returns tag and
# body of each message taken.
_TAKE_OVER = r"""
local dead, consumer = ARGV[2], ARGV[3]
local t, stamp = now()
local tag_base = ARGV[5] .. '.' .. stamp .. '.'
local expiry, out, taken, mark = t + tonumber(ARGV[4]), {}, 0, dead .. '.'
for _, old in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
  -- Tags start with their consumer's id (RedisBroker._tag_base): decode only the dead one's.
  if string.sub(old, 1, #mark) == mark then
    local body = redis.call('HGET', inflight, old)
    local queue, step, count = parse(old)
    drop(old)  -- the old tag goes: settling through it is a no-op from now on
    if body and queue then
      taken = taken + 1
      local tag = tag_for(tag_base .. taken, queue, step, count)
      redis.call('ZADD', leases, expiry, tag)
      redis.call('HSET', inflight, tag, body)
      out[#out + 1], out[#out + 2] = tag, body
    end
  end
end
-- Its registration stays until it lapses: should Redis only now serve a blocking wait
-- the dead process left, what lands is returned by recover() then, not stranded.
return_landing(dead)
return out
"""

# ARGV: prefix, tag, mode (ack | requeue | dead), reason. Returns 1 if the lease was ours.
# A dead letter's id is the tag's lease part (before the first '|').
_SETTLE = r"""
local tag, mode = ARGV[2], ARGV[3]
local body = redis.call('HGET', inflight, tag)
local queue, step, count = parse(tag)
if not (body and queue) then return 0 end
drop(tag)
if mode == 'requeue' then
  restore(queue, step, body, count - 1)
elseif mode == 'dead' then
  local t = now()
  local id = string.sub(tag, 1, string.find(tag, '|', 1, true) - 1)
  redis.call('HSET', prefix .. 'chard.dead.' .. id, 'queue', queue, 'priority', step,
    'body', body, 'reason', ARGV[4], 'failed_at', tostring(t), 'delivery_count', count)
  redis.call('ZADD', prefix .. 'chard.dead', t, id)
end
return 1
"""

# ARGV: prefix, dead letter id, replacement body ('' keeps the stored one). Returns 1
# if it existed.
_REDRIVE = r"""
local key = prefix .. 'chard.dead.' .. ARGV[2]
local f = redis.call('HMGET', key, 'queue', 'priority', 'body')
redis.call('ZREM', prefix .. 'chard.dead', ARGV[2])
redis.call('DEL', key)
if not f[3] then return 0 end
local body = f[3]
if ARGV[3] ~= '' then body = ARGV[3] end
redis.call('HDEL', redeliveries, redis.sha1hex(body))
redis.call('LPUSH', ready_key(f[1], f[2]), body)
return 1
"""

#: The scripts as registered: each with the library in front.
FETCH = _LIB + _FETCH
HEARTBEAT = _LIB + _HEARTBEAT
TAKE_OVER = _LIB + _TAKE_OVER
SETTLE = _LIB + _SETTLE
REDRIVE = _LIB + _REDRIVE
