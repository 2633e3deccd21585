-- set_version(name, op, version, path, load_json): set or clear the desired weight version of
-- an adapter (what every replica must load before it serves the adapter again).
-- ARGV[2] name, ARGV[3] 'set' or 'clear', ARGV[4] version label, ARGV[5] path,
-- ARGV[6] load: a JSON object of extra load_lora_adapter fields ('{}' for none)
-- Returns {status, revision, record_json or '', '', epoch}; status 'created' / 'existing' (set)
-- or 'cleared' / 'absent' (clear).
-- Record (HSET versions name): {"name", "version", "path", "load", "rev", "at" (ms, Redis clock)}.
-- Guarantees: a change bumps the namespace revision once and publishes ONE event shaped like a
-- pause event of `name` - `paused` and `state` are the adapter's current pause state, unchanged -
-- plus op 'version' and `version` (the record, or null when cleared): a watcher that knows only
-- pauses applies it as a no-op. Setting the same version, path and load again changes nothing
-- (no revision) and returns the stored record. A clear always bumps and publishes, even when
-- nothing was set (it re-asserts "no desired version" to processes that kept one across a data
-- loss) and leaves a tombstone in KEYS[8]; a set removes that tombstone.
local K_VERSIONS, K_CLEARED = KEYS[7], KEYS[8]
local name, op = ARGV[2], ARGV[3]
local st = reap(name, load(name))

local function same_load(a, b)
  for k, v in pairs(a) do
    if b[k] ~= v then return false end
  end
  for k, _ in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local function announce(rev, rec)
  local extra = {version = rec}
  if not st then extra.state = cjson.null end
  publish(name, 'version', cjson.null, st, rev, extra)
end

local raw = redis.call('HGET', K_VERSIONS, name)
if op == 'clear' then
  local status = 'absent'
  if raw then
    redis.call('HDEL', K_VERSIONS, name)
    status = 'cleared'
  end
  local rev = bump()
  redis.call('ZADD', K_CLEARED, rev, name)
  if redis.call('ZCARD', K_CLEARED) > MAX_TOMBSTONES then
    redis.call('ZREMRANGEBYRANK', K_CLEARED, 0, -(MAX_TOMBSTONES + 1))
  end
  announce(rev, cjson.null)
  return {status, rev, '', '', epoch()}
end

local version, path, ld = ARGV[4], ARGV[5], cjson.decode(ARGV[6])
if raw then
  local cur = cjson.decode(raw)
  if cur.version == version and cur.path == path and type(cur.load) == 'table'
      and same_load(cur.load, ld) then
    return {'existing', tonumber(cur.rev), raw, '', epoch()}
  end
end
local rev = bump()
local rec = {name = name, version = version, path = path, load = ld, rev = rev, at = NOW}
local encoded = cjson.encode(rec)
redis.call('HSET', K_VERSIONS, name, encoded)
redis.call('ZREM', K_CLEARED, name)
announce(rev, rec)
return {'created', rev, encoded, '', epoch()}
