-- heartbeat(id, record_ttl_ms, prune_ms, field, value, ...): mark a replica process alive.
-- Guarantees: the heartbeat time is the Redis clock; the record expires record_ttl_ms after the
-- last heartbeat; registry entries silent for longer than prune_ms are removed with their record.
local ttl, prune = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', K_REPLICAS, NOW, ID)
for i = 5, #ARGV, 2 do
  redis.call('HSET', K_REPLICA, ARGV[i], ARGV[i + 1])
end
redis.call('HSET', K_REPLICA, 'heartbeat', NOW)
redis.call('PEXPIRE', K_REPLICA, ttl)
redis.call('ZREMRANGEBYSCORE', K_REPLICAS, '-inf', NOW - prune)
return NOW
