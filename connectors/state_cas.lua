-- Compare-and-set of one entity's state hash (RedisStateStore.save).
-- KEYS[1]: the entity's hash. ARGV[1]: the version the state was loaded with (0 = did not exist).
-- ARGV[2]: TTL in seconds (0 = keep forever). ARGV[3..]: field, value pairs (without "version").
-- Returns 1 when written (stored version becomes ARGV[1] + 1), 0 when the version moved on.
local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local expected = tonumber(ARGV[1])
if stored ~= expected then
  return 0
end
redis.call('HSET', KEYS[1], 'version', expected + 1, unpack(ARGV, 3))
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[1])
end
return 1
