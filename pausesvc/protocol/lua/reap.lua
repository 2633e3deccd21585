-- reap(): remove every expired hold of the namespace (see reap() in the prelude).
-- Returns {holds_reaped, next_expiry_ms or -1}.
-- Guarantees: idempotent and safe to run from any number of processes at once; each expired
-- hold produces exactly one 'expire' change. Lease entries without a live hold are dropped.
local due = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', NOW)
local reaped = 0
local seen = {}
for _, member in ipairs(due) do
  local sp = string.find(member, ' ', 1, true)
  local name = string.sub(member, 1, sp - 1)
  local holder = string.sub(member, sp + 1)
  if not seen[name] then
    seen[name] = true
    local st = load(name)
    if st then
      local before = 0
      for _ in pairs(st.holders) do before = before + 1 end
      local after_st = reap(name, st)
      local after = 0
      if after_st then for _ in pairs(after_st.holders) do after = after + 1 end end
      reaped = reaped + (before - after)
    end
  end
  -- a lease entry whose hold is gone or no longer expired at this score
  local st2 = load(name)
  if not st2 or not st2.holders[holder] or not st2.holders[holder].expires then
    redis.call('ZREM', K_LEASES, member)
  end
end
local nxt = redis.call('ZRANGE', K_LEASES, 0, 0, 'WITHSCORES')
local next_expiry = -1
if nxt[2] then next_expiry = tonumber(nxt[2]) end
return {reaped, next_expiry}
