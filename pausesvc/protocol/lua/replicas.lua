#!lua flags=no-writes
-- replicas(): the registry's members with their last heartbeat, and the server time.
-- KEYS[1] replicas ZSET
-- Returns {{id, heartbeat_ms, ...}, {seconds, microseconds}}. Read-only.
return {redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'), redis.call('TIME')}
