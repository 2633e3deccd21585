-- version_report(id, name, record_json): a replica process reports which weight version of
-- adapter `name` it has loaded (or is loading, or failed to load). Stores the record in the
-- replica's hash (field "version:<name>") and publishes it on the acks channel, atomically, like
-- ack.lua: a controller that reads the hash after subscribing never misses a report.
-- record_json: {"replica", "name", "version", "status": loaded|loading|failed, "reason",
--               "attempts", "rev": the desired version's revision}; the script adds
--               "at" (Redis clock, ms) and "type": "version".
local name = ARGV[3]
local rec = cjson.decode(ARGV[4])
rec.at = NOW
rec.type = 'version'
local record = cjson.encode(rec)
redis.call('HSET', K_REPLICA, 'version:' .. name, record)
redis.call(PUBCMD, K_ACKS, record)
return NOW
