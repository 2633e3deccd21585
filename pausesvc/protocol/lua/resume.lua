-- resume(name, holder, token, force): release one hold (or, forced, all of them).
-- ARGV[2] name, ARGV[3] holder, ARGV[4] token ('' for none), ARGV[5] '1' to force
-- Returns {status, revision, state_json, current_token, epoch}; status is one of
--   'released'          the last hold went: the adapter is not paused any more
--   'released_partial'  this hold went, others keep the adapter paused
--   'not_paused'        nothing held it (still announced, see below)
--   'not_holder'        paused, but not by this holder: nothing changed
--   'stale'             the token is not this holder's current one: nothing changed
-- Guarantees: a stale token never releases anything (fencing). A resume of an adapter that is
-- not paused still bumps the revision and publishes a 'resume' event marked "not_paused": the
-- signal that tells watchers holding the adapter after a data loss (an orphan) that a
-- controller re-asserted it. With no token it is unfenced, as any tokenless resume: it writes
-- the tombstone too, so a watcher that missed the event releases the orphan at its next
-- re-read. With a token, Redis cannot check it (it lost the hold), so the event carries the
-- token, and the tombstone it writes is a fenced one - member "<name>\n<holder>\n<token>" -
-- that no plain ZMSCORE of the name finds: a watcher releases the orphan only if the token is
-- the one of the holder's hold it keeps, whether it sees the event or, having missed it, looks
-- that member up at its next re-read. Forced, it releases everything.
local name, holder, token, force = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local st = reap(name, load(name))
if force == '1' then
  local status = 'not_paused'
  if st then
    for h, _ in pairs(st.holders) do redis.call('ZREM', K_LEASES, lease_member(name, h)) end
    redis.call('HDEL', K_PAUSED, name)
    status = 'released'
  end
  local rev = bump()
  tombstone(name, rev)
  publish(name, 'force', holder, nil, rev)
  return {status, rev, '', '', epoch()}
end
if not st then
  local rev = bump()
  local extra = {not_paused = true}
  if token == '' then
    tombstone(name, rev)
  else
    -- a FENCED tombstone: "<name>\n<holder>\n<token>" (names, holders and tokens hold no
    -- whitespace); a watcher that missed the event checks it against the hold it keeps
    extra.token = token
    tombstone(name .. '\n' .. holder .. '\n' .. token, rev)
  end
  publish(name, 'resume', holder, nil, rev, extra)
  return {'not_paused', rev, '', '', epoch()}
end
local hold = st.holders[holder]
if not hold then
  return {'not_holder', st.rev, cjson.encode(st), '', epoch()}
end
if token ~= '' and not same_token(token, hold.token) then
  return {'stale', st.rev, cjson.encode(st), tostring(hold.token), epoch()}
end
st.holders[holder] = nil
redis.call('ZREM', K_LEASES, lease_member(name, holder))
local rev = bump()
if next(st.holders) == nil then
  redis.call('HDEL', K_PAUSED, name)
  tombstone(name, rev)
  publish(name, 'resume', holder, nil, rev)
  return {'released', rev, '', tostring(hold.token), epoch()}
end
st.rev = rev
local encoded = save(name, st)
publish(name, 'release', holder, st, rev, nil, encoded)
return {'released_partial', rev, encoded, tostring(hold.token), epoch()}
