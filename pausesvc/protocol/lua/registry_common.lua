-- Shared prelude of the replica-registry scripts (heartbeat, ack).
-- KEYS[1] replicas ZSET  id -> last heartbeat (ms, Redis clock)
-- KEYS[2] replica:<id> HASH  that process's record
-- KEYS[3] acks CHANNEL
-- ARGV[1] publish command (PUBLISH / SPUBLISH), ARGV[2] replica id
local K_REPLICAS, K_REPLICA, K_ACKS = KEYS[1], KEYS[2], KEYS[3]
local PUBCMD, ID = ARGV[1], ARGV[2]
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
