-- renew(name, holder, ttl_ms, token): push a hold's lease expiry to now + ttl.
-- ARGV[2] name, ARGV[3] holder, ARGV[4] ttl in ms (> 0), ARGV[5] token ('' for none)
-- Returns {status, revision, state_json, current_token, epoch}; status 'renewed', 'not_holder' or 'stale'.
-- Guarantees: an expired hold cannot be renewed (it is reaped first, as if released).
local name, holder, ttl, token = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local st = reap(name, load(name))
if not st or not st.holders[holder] then
  local cur = ''
  if st then cur = cjson.encode(st) end
  return {'not_holder', tonumber(redis.call('GET', K_REV) or '0'), cur, '', epoch()}
end
local hold = st.holders[holder]
if token ~= '' and not same_token(token, hold.token) then
  return {'stale', st.rev, cjson.encode(st), tostring(hold.token), epoch()}
end
hold.expires = NOW + ttl
redis.call('ZADD', K_LEASES, hold.expires, lease_member(name, holder))
local rev = bump()
st.rev = rev
local encoded = save(name, st)
publish(name, 'renew', holder, st, rev, nil, encoded)
return {'renewed', rev, encoded, tostring(hold.token), epoch()}
