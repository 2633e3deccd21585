-- pause(name, holder, reason, ttl_ms): add a hold; the adapter is paused while any hold remains.
-- ARGV[2] name, ARGV[3] holder, ARGV[4] reason ('' for none), ARGV[5] ttl in ms ('0' for none),
-- ARGV[6] '1' when the caller will wait for replicas to acknowledge a drain (the hold records
-- "drain": true; replica processes acknowledge only pauses that ask for it)
-- ARGV[7] a nonce from the caller (random; '' lets the script derive one from the server clock)
-- Returns {status, token, revision, state_json, epoch}; status 'created' or 'existing'.
-- Guarantees: the token is "<revision the hold was created at>-<nonce>", a fencing token that
-- never repeats across incarnations of the namespace (a restart that lost the data, or a
-- failover to a replica that lags, starts revisions again, but not nonces); pausing
-- again with the same holder is idempotent (same token); a ttl or reason given again refreshes
-- the lease / reason as one 'renew' change.
local name, holder, reason, ttl = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local drain = ARGV[6] == '1'
local st = reap(name, load(name))
if st and st.holders[holder] then
  local hold = st.holders[holder]
  local changed = false
  if ttl > 0 then
    hold.expires = NOW + ttl
    redis.call('ZADD', K_LEASES, hold.expires, lease_member(name, holder))
    changed = true
  end
  if reason ~= '' and reason ~= hold.reason then
    hold.reason = reason
    changed = true
  end
  if drain then
    -- a new drain request: announce it (a new revision) so every replica acknowledges again
    hold.drain = true
    changed = true
  end
  if changed then
    local rev = bump()
    st.rev = rev
    local encoded = save(name, st)
    publish(name, 'renew', holder, st, rev, nil, encoded)
    return {'existing', tostring(hold.token), st.rev, encoded, epoch()}
  end
  return {'existing', tostring(hold.token), st.rev, cjson.encode(st), epoch()}
end
local rev = bump()
if not st then
  st = {name = name, since = NOW, pause_rev = rev, holders = {}}
  redis.call('ZREM', K_RESUMED, name)
end
local nonce = ARGV[7]
if not nonce or nonce == '' then nonce = T[1] .. T[2] end
local token = rev .. '-' .. nonce
local hold = {token = token, since = NOW}
if drain then hold.drain = true end
if reason ~= '' then hold.reason = reason end
if ttl > 0 then
  hold.expires = NOW + ttl
  redis.call('ZADD', K_LEASES, hold.expires, lease_member(name, holder))
end
st.holders[holder] = hold
st.rev = rev
local encoded = save(name, st)
publish(name, 'pause', holder, st, rev, nil, encoded)
return {'created', token, rev, encoded, epoch()}
