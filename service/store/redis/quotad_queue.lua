-- quotad's function library, the wait queues' helpers (the embedded library is quotad.lua,
-- this file, then quotad_functions.lua, as one source: see embed_lua.cmake). quotad_wait (in
-- quotad_functions.lua) queues and serves waiters with them; quotad_acquire holds a request
-- back behind a waiter; quotad_release, quotad_reset and quotad_wait wake the queues' heads.

---------------------------------------------------------------------------------------------
-- Wait queues (quotad_wait; see README "Waiting"). Per counter a sorted set q:{cred}:w:<counter>
-- of waiter ids scored (1000 - priority) * 2^40 + arrival (HINCRBY of field ~seq): higher
-- priority first, then first come. q:{cred}:wx holds each waiter's heartbeat expiry and last
-- retry time (packed 'dd'); a waiter whose expiry passed (its replica died) is dropped when met.
-- Events go to channel q:{cred}:freed, naming the waiters now at the head of a queue.

local WAIT_SPAN = 1099511627776 -- 2^40 arrivals per priority level
local WAIT_SCAN = 64            -- dead entries dropped per queue and call, at most

local function qpre(keys) return string.sub(keys[2], 1, -2) end -- 'q:{cred}:'
local function qscore(prio, seq) return (1000 - prio) * WAIT_SPAN + seq end

-- The live head of queue `q`, dropping dead entries; nil when empty. `stop`: ids scored at or
-- above it are not looked at (answers nil).
local function qhead(pre, q, now, stop)
  for _ = 1, WAIT_SCAN do
    local h = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
    if #h == 0 or tonumber(h[2]) >= stop then return nil end
    local v = redis.call('HGET', pre .. 'wx', h[1])
    if v then
      local exp, retry = struct.unpack('dd', v)
      if exp > now then return h[1], retry end
      redis.call('HDEL', pre .. 'wx', h[1])
    end
    redis.call('ZREM', q, h[1])
  end
  return '?', -1 -- too many dead entries at once: held back this time (never let through)
end

-- The first counter (index) of `cs` whose queue holds a live waiter other than `me` scored
-- below `score`, and that waiter's last retry time; nil when nobody is ahead.
local function queue_block(pre, cs, score, me, now)
  for k, c in ipairs(cs) do
    local id, retry = qhead(pre, pre .. 'w:' .. c.name, now, score)
    if id and id ~= me then return k, retry end
  end
  return nil
end

-- Tells the replicas which waiters head the queues of `cs` now (all of them: `cs` nil).
local function wake_heads(pre, cs, now)
  if redis.call('EXISTS', pre .. 'wx') == 0 then return end
  local heads = {}
  if cs == nil then
    heads[1] = '*'
  else
    for _, c in ipairs(cs) do
      local id = qhead(pre, pre .. 'w:' .. c.name, now, INF)
      if id and id ~= '?' then heads[#heads + 1] = id end
    end
    if #heads == 0 then return end
  end
  redis.call('PUBLISH', pre .. 'freed', table.concat(heads, ','))
end

-- The queue keys are not among the call's declared keys: on a Cluster master whose slot is
-- migrating, touching one that has moved is an error, raised after the call's writes (a
-- release, a reset) were made. Those stand; the waiters then go unwoken until their beat.
local function wake(pre, cs, now)
  pcall(wake_heads, pre, cs, now)
end
