#!lua flags=no-writes
-- snapshot([name]): the resync read, in one round trip and on the namespace's own node.
-- KEYS[1] paused, KEYS[2] rev, KEYS[3] epoch, KEYS[4] (optional) versions
-- ARGV[1] optional adapter name: only that adapter's state (and desired version)
-- Returns {rev or false, epoch or false, {name, state_json, ...}, {seconds, microseconds},
--          {name, version_json, ...}} (the last only with KEYS[4]).
-- Guarantees: read-only (runs on replicas and under read-only ACL users); the time is the same
-- server clock that lease expiries are written in, so expired holds can be dropped by readers.
local rev = redis.call('GET', KEYS[2])
local epoch = redis.call('GET', KEYS[3])
local one = ARGV[1] and ARGV[1] ~= ''
local function read(key)
  if one then
    local raw = redis.call('HGET', key, ARGV[1])
    if raw then return {ARGV[1], raw} end
    return {}
  end
  return redis.call('HGETALL', key)
end
local states = read(KEYS[1])
local reply = {rev, epoch, states, redis.call('TIME')}
if KEYS[4] then reply[5] = read(KEYS[4]) end
return reply
