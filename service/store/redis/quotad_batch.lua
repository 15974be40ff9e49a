-- quotad's function library, the batches (the embedded library is quotad.lua, ...,
-- quotad_functions.lua, then this file, as one source: see embed_lua.cmake): several
-- quotad_acquire calls in one FCALL, independent (quotad_acquire_many) or all-or-nothing
-- (quotad_acquire_all).

-- The items of quotad_acquire_many and quotad_acquire_all: {keys, args} per item, from
-- K <every item's keys> and args n <per item: its key count, its argument count, its arguments>.
local function split_items(keys, args)
  local items, ki, ai = {}, 1, 2
  for i = 1, tonumber(args[1]) do
    local nk, na = tonumber(args[ai]), tonumber(args[ai + 1])
    local ik, ia = {}, {}
    for j = 1, nk do ik[j] = keys[ki + j - 1] end
    for j = 1, na do ia[j] = args[ai + 1 + j] end
    ki, ai = ki + nk, ai + 2 + na
    items[i] = {ik, ia}
  end
  return items
end

-- FCALL quotad_acquire_many K <each item's quotad_acquire keys, in order>
--       n <per item: its key count, its argument count, its quotad_acquire arguments>
-- Independent Acquires in one call (an AcquireBatch): each item decided by quotad_acquire, in
-- order, at one time of Redis's. Answers {1, now, item_1's quotad_acquire answer, ...}. From the
-- first item answered -1 (its calendar windows miss Redis's time) on, no item is decided: each
-- answers -1 too, and the caller sends them again together, in order (an item after it must not
-- take what it would have been granted, nor a request_id it would have recorded).
local function acquire_many(keys, args)
  local now = now_us()
  local out, miss = {1, now}, false
  for _, it in ipairs(split_items(keys, args)) do
    if miss then
      out[#out + 1] = {-1, now, 0}
    else
      local a = acquire(it[1], it[2], nil, now)
      miss = a[1] == -1
      out[#out + 1] = a
    end
  end
  return out
end

-- FCALL quotad_acquire_all K <each item's quotad_acquire keys, in order>
--       n <per item: its key count, its argument count, its quotad_acquire arguments>
-- An all-or-nothing batch (Ledger::AcquireAll): every item granted, or none charged. A first
-- pass checks each item as quotad_acquire would decide it after the items before it (nothing
-- written); the first that would not be granted is the blocker. Then each item is charged by
-- quotad_acquire, all at the first pass's time, so none can be denied (an error if one is:
-- what was charged before it stands, each charge checked on its own, never over). An item
-- whose request_id names an earlier grant answers that grant and charges nothing; two items
-- with one request_id are one grant when they ask the same (the later answers as a retry), and
-- the later is the blocker (-2) when they do not.
-- Answers {1, now, item_1's quotad_acquire answer, ..., item_n's}, or
-- {0, now, blocker (1-based), the blocker's answer, [item, its answer]...}: nothing charged;
-- the items before the blocker that answered an earlier grant follow (those grants stand).
local function acquire_all(keys, args)
  local items = split_items(keys, args)
  local now = now_us()
  local need, dups = {scopes = {}, rids = {}}, {}
  for i, it in ipairs(items) do
    local out = acquire(it[1], it[2], nil, now, need)
    if out ~= nil and out[1] == 2 then
      dups[#dups + 1], dups[#dups + 2] = i, out
    elseif out ~= nil then
      local r = {0, now, i, out}
      for _, v in ipairs(dups) do r[#r + 1] = v end
      return r
    end
  end
  local res = {1, now}
  for i, it in ipairs(items) do
    local out = acquire(it[1], it[2], nil, now)
    if out[1] ~= 1 and out[1] ~= 2 then
      error('quotad_acquire_all: items[' .. (i - 1) .. '] was denied after its check')
    end
    res[#res + 1] = out
  end
  return res
end

redis.register_function('quotad_acquire_many', acquire_many)
redis.register_function('quotad_acquire_all', acquire_all)
