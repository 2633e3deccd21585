#!lua flags=no-writes
-- snapshot([name]): the resync read, in one round trip and on the namespace's own node.
-- KEYS[1] paused, KEYS[2] rev, KEYS[3] epoch
-- ARGV[1] optional adapter name: only that adapter's state
-- Returns {rev or false, epoch or false, {name, state_json, ...}, {seconds, microseconds}}.
-- Guarantees: read-only (runs on replicas and under read-only ACL users); the time is the same
-- server clock that lease expiries are written in, so expired holds can be dropped by readers.
local rev = redis.call('GET', KEYS[2])
local epoch = redis.call('GET', KEYS[3])
local states
if ARGV[1] and ARGV[1] ~= '' then
  local raw = redis.call('HGET', KEYS[1], ARGV[1])
  states = {}
  if raw then states = {ARGV[1], raw} end
else
  states = redis.call('HGETALL', KEYS[1])
end
return {rev, epoch, states, redis.call('TIME')}
