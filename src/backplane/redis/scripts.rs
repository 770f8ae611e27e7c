//! The Lua scripts the engine runs in Redis: each is one round trip, and atomic.

/// Appends a batch of operations to the hub's stream, in order and atomically: numbers them
/// in the current epoch (made by the first append after Redis lost its data), then trims by
/// length and age, once per batch. One script call for the whole batch: the script's own
/// cost (and the clock read and the trim) is paid once, not per operation.
///
/// A new epoch is the server's time in microseconds (hex) followed by the first four
/// characters of the appending instance's candidate: never the same twice, also when the same
/// instance makes the epoch again after a restart (a reused tag would make the numbers that
/// start over at 1 look like entries already read, and they would be skipped in silence).
///
/// KEYS: stream, meta hash. ARGV: epoch candidate, max length, max age in ms (0: none),
/// origin, then kind, target, data and completion of each operation. Returns
/// `{epoch, last}`: the operations are numbered `last - count + 1` to `last`.
pub(super) const APPEND: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  local t = redis.call('TIME')
  epoch = string.format('%x%05x', tonumber(t[1]), tonumber(t[2])) .. string.sub(ARGV[1], 1, 4)
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local count = (#ARGV - 4) / 4
local last = redis.call('HINCRBY', KEYS[2], 'n', count)
local n = last - count
for i = 5, #ARGV, 4 do
  n = n + 1
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
    'e', epoch, 'n', n, 'k', ARGV[i], 't', ARGV[i + 1], 'd', ARGV[i + 2], 'c', ARGV[i + 3],
    'o', ARGV[4])
end
local age = tonumber(ARGV[3])
if age > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', now - age))
end
return {epoch, last}
"#;

/// Records that an instance is alive, with its open connections and the keys it holds, and
/// forgets instances not seen for `ttl`. Times are the server's, so clocks of instances
/// need not agree.
///
/// KEYS: alive zset, open hash, this instance's keys hash. ARGV: instance, open, ttl in ms,
/// then key and count pairs (count 0 removes the key). Returns nothing.
pub(super) const PRESENCE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - ttl))
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
for i = 4, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > 0 then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  else
    redis.call('HDEL', KEYS[3], ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[3], ttl)
return 0
"#;

/// The instances seen within `ttl`, with their open connections; and, if a key is given,
/// whether any of them holds it.
///
/// KEYS: alive zset, open hash. ARGV: ttl in ms, keys-hash prefix, key (or empty). Returns
/// `{ids, opens, found}`.
pub(super) const CLUSTER: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%d', now - tonumber(ARGV[1])), '+inf')
local opens = {}
local found = 0
for i, id in ipairs(ids) do
  opens[i] = redis.call('HGET', KEYS[2], id) or '0'
  if ARGV[3] ~= '' and redis.call('HEXISTS', ARGV[2] .. id, ARGV[3]) == 1 then
    found = 1
  end
end
return {ids, opens, found}
"#;

/// Retires the hub's epoch if it is still `epoch` (its numbers went back after a failover):
/// the next append makes a new one.
///
/// KEYS: meta hash. ARGV: epoch. Returns 1 if retired.
pub(super) const RETIRE: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'epoch')
  return 1
end
return 0
"#;
