-- Shared prelude of every state-changing script (pause, resume, renew, reap, set_version).
--
-- KEYS[1] paused  HASH   adapter name -> JSON state
-- KEYS[2] rev     STRING namespace revision
-- KEYS[3] leases  ZSET   "<name> <holder>" -> lease expiry (ms, Redis clock)
-- KEYS[4] events  CHANNEL
-- KEYS[5] epoch   STRING id of this incarnation of the namespace
-- KEYS[6] tombstones ZSET adapter name -> revision of its last resume (a tombstone: it tells a
--                        watcher that held the adapter across a data loss or a failover that a
--                        controller has resumed it since, even if the watcher missed that event).
--                        Bounded: only the newest MAX_TOMBSTONES names are kept; a pruned
--                        tombstone can only keep an orphan held longer (the safe direction).
-- KEYS[7] versions HASH adapter name -> JSON desired version (set_version only)
-- KEYS[8] cleared_versions ZSET adapter name -> revision its desired version was cleared at
--                        (set_version only; newest MAX_TOMBSTONES kept)
-- ARGV[1] the publish command: PUBLISH, or SPUBLISH on Redis Cluster
--
-- Guarantees (the script runs atomically): every change INCRs the revision exactly once and
-- publishes exactly one event carrying that revision, so a subscriber that sees revision n+2
-- after n knows it missed one. Time comes from the Redis server (TIME), never from a client.
local K_PAUSED, K_REV, K_LEASES, K_CHANNEL, K_EPOCH = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_RESUMED = KEYS[6]
local PUBCMD = ARGV[1]
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)

local EPOCH = false  -- read (or made) once per call: nothing else changes it meanwhile
local function epoch()
  if not EPOCH then
    EPOCH = redis.call('GET', K_EPOCH)
    if not EPOCH then
      EPOCH = T[1] .. '.' .. T[2]
      redis.call('SET', K_EPOCH, EPOCH)
    end
  end
  return EPOCH
end

local function bump()
  epoch()
  return redis.call('INCR', K_REV)
end

local function load(name)
  local raw = redis.call('HGET', K_PAUSED, name)
  if not raw then return nil end
  return cjson.decode(raw)
end

-- Store the state; returns its JSON (the event and the reply reuse it: encoded once).
local function save(name, st)
  local encoded = cjson.encode(st)
  redis.call('HSET', K_PAUSED, name, encoded)
  return encoded
end

local MAX_TOMBSTONES = 10000

-- Record that `name` was resumed (released by every holder) at revision `rev`.
local function tombstone(name, rev)
  redis.call('ZADD', K_RESUMED, rev, name)
  if redis.call('ZCARD', K_RESUMED) > MAX_TOMBSTONES then
    redis.call('ZREMRANGEBYRANK', K_RESUMED, 0, -(MAX_TOMBSTONES + 1))
  end
end

-- Tokens are compared as strings: "<rev>-<nonce>" (holds made before nonces were added
-- stored a bare number, which compares equal to its decimal string).
local function same_token(a, b)
  return tostring(a) == tostring(b)
end

local function lease_member(name, holder)
  return name .. ' ' .. holder
end

-- `extra`: more fields of the event (set_version adds `version`); a pause event otherwise.
-- `encoded`: the JSON of `st` if the caller has it (what save returned), spliced in as the
-- event's "state" instead of encoding the state a second time.
local function publish(name, op, holder, st, rev, extra, encoded)
  local ev = {v = 1, rev = rev, epoch = epoch(), name = name, op = op,
              paused = (st ~= nil), holder = holder, ts = NOW}
  if extra then
    for k, v in pairs(extra) do ev[k] = v end
  end
  local msg = cjson.encode(ev)  -- an object with fields: it ends with '}'
  if st then
    msg = string.sub(msg, 1, -2) .. ',"state":' .. (encoded or cjson.encode(st)) .. '}'
  end
  redis.call(PUBCMD, K_CHANNEL, msg)
end

-- Remove the expired holds of one adapter, one change (revision, event) per hold, exactly as if
-- each holder had resumed. Returns the remaining state, or nil when nothing holds it any more.
local function reap(name, st)
  if not st then return nil end
  local expired = {}
  for h, hold in pairs(st.holders) do
    if hold.expires and tonumber(hold.expires) <= NOW then table.insert(expired, h) end
  end
  table.sort(expired)
  for _, h in ipairs(expired) do
    st.holders[h] = nil
    redis.call('ZREM', K_LEASES, lease_member(name, h))
    local rev = bump()
    if next(st.holders) == nil then
      redis.call('HDEL', K_PAUSED, name)
      tombstone(name, rev)
      publish(name, 'expire', h, nil, rev)
      return nil
    end
    st.rev = rev
    publish(name, 'expire', h, st, rev, nil, save(name, st))
  end
  return st
end
