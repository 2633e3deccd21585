-- ack(id, name, record_json): a replica process has no request of `name` in flight for the pause
-- at the revision the record names. Stores the record in the replica's hash (field
-- "drain:<name>") and publishes it on the acks channel, atomically: a controller that reads the
-- hash after subscribing never misses an acknowledgement.
-- record_json: {"replica": id, "name": name, "rev": n, "epoch": e, "tokens": [hold tokens],
--               "aborted": [ids], "ts": unix_seconds}; the script adds "at": the Redis clock (ms)
local name = ARGV[3]
local rec = cjson.decode(ARGV[4])
rec.at = NOW
local record = cjson.encode(rec)
redis.call('HSET', K_REPLICA, 'drain:' .. name, record)
redis.call(PUBCMD, K_ACKS, record)
return NOW
