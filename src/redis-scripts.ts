// The Redis store's server side: three Lua scripts, each atomic, so that offsets, retention
// and the shared feed never disagree whatever several monitors do at once. Keys (P is
// store.redis.key_prefix):
//
//   P m:<id>     hash   base (the life's first offset, its epoch), next, first (oldest kept),
//                       msgs, bytes (kept), fin (1 after FINISHED); expires with the channel
//   P s:<id>     stream the kept history, entry id "<offset>-1", field m = the JSON bytes
//   P feed       stream every append and eviction, read by every monitor for live delivery;
//                       capped near store.redis.feed_length; a message's fields start with
//                       n (the monitor that wrote it), so that the writer skips it cheaply,
//                       other events' with x (what happened)
//   P index      zset   channel -> when it expires (ms, Redis clock): retention.max_channels
//   P sizes      hash   channel -> "msgs bytes": the totals of /metrics
//   P totals     hash   msgs, bytes over all channels
//   P ceiling    string one above the highest offset ever given; a new life starts above it
//   P w:<node>   hash   the last batch a monitor wrote and its result, so that a batch sent
//                       again after a lost reply is not appended twice
//
// A channel's keys expire in Redis itself (idle_ttl after its last message, finished_ttl
// after FINISHED), so the channels are forgotten even when every monitor is gone. The
// scripts name their keys from the prefix: one Redis (or a primary with replicas), not a
// Redis Cluster.

// Shared by the scripts: purge what expired from the index and the totals (at most 100
// channels a call, so no call takes long), and drop one channel entirely.
const COMMON = `
local P = ARGV[1]
-- Offsets are near 2^50: Lua would print them as 1.8e+15, so they leave as integers in text.
local function s(n) return string.format('%d', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function forget(c)
  local size = redis.call('HGET', P .. 'sizes', c)
  if size then
    local msgs, bytes = string.match(size, '(%d+) (%d+)')
    redis.call('HINCRBY', P .. 'totals', 'msgs', -tonumber(msgs))
    redis.call('HINCRBY', P .. 'totals', 'bytes', -tonumber(bytes))
    redis.call('HDEL', P .. 'sizes', c)
  end
  redis.call('ZREM', P .. 'index', c)
end
local function purge(now)
  local gone = redis.call('ZRANGEBYSCORE', P .. 'index', '-inf', now, 'LIMIT', 0, 100)
  for _, c in ipairs(gone) do
    if redis.call('EXISTS', P .. 'm:' .. c) == 0 then forget(c) else
      redis.call('ZADD', P .. 'index', s(redis.call('PTTL', P .. 'm:' .. c) + now), c)
    end
  end
end
local function floor_for_new_life(now)
  local ceiling = tonumber(redis.call('GET', P .. 'ceiling') or '0')
  return math.max(now * 1000, ceiling + 1)
end
`;

/**
 * APPEND: ARGV = prefix, node, batch seq, finished_ttl ms, idle_ttl ms, max messages and max
 * bytes per channel, max channels, feed length, then per message: channel, 1 if FINISHED,
 * json (or a NUL byte and a count: that many messages were dropped), the offset and epoch
 * the node expects (-1 -1: no expectation). Returns JSON: per
 * message ["offset", "epoch", flags] (offsets as decimal text) with flags 1 = not what was expected, 2 = after FINISHED
 * (not stored), 4 = history truncated.
 */
export const APPEND = `${COMMON}
local node, seq = ARGV[2], tonumber(ARGV[3])
local wkey = P .. 'w:' .. node
local last = redis.call('HMGET', wkey, 'seq', 'res')
if last[1] and tonumber(last[1]) == seq then return last[2] end
local fttl, ittl = tonumber(ARGV[4]), tonumber(ARGV[5])
local max_msgs, max_bytes, max_channels, feed_len = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local now = now_ms()
purge(now)
-- Each channel's state is read once and written once per batch; per message only the two
-- stream appends (its history, the feed) go to Redis.
local ceiling = tonumber(redis.call('GET', P .. 'ceiling') or '0')
local out, st, order = {}, {}, {}
local function state(c)
  local t = st[c]
  if t then return t end
  local m = redis.call('HMGET', P .. 'm:' .. c, 'base', 'next', 'first', 'msgs', 'bytes', 'fin')
  if m[1] then
    t = {base = tonumber(m[1]), nxt = tonumber(m[2]), first = tonumber(m[3]), msgs = tonumber(m[4]), bytes = tonumber(m[5]), fin = m[6] == '1'}
  else
    local base = math.max(now * 1000, ceiling + 1)
    t = {base = base, nxt = base, first = base, msgs = 0, bytes = 0, fin = false}
  end
  t.msgs0, t.bytes0, t.touched = t.msgs, t.bytes, false
  st[c] = t
  order[#order + 1] = c
  return t
end
for i = 10, #ARGV, 5 do
  local c, fin, json, want_o, want_e = ARGV[i], ARGV[i + 1] == '1', ARGV[i + 2], tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local t = state(c)
  local flags = (want_e ~= -1 and (want_e ~= t.base or want_o ~= t.nxt)) and 1 or 0
  local lost = string.byte(json, 1) == 0 and tonumber(string.sub(json, 2)) or nil
  if t.fin then
    out[#out + 1] = {'-1', s(t.base), flags + 2}
  else
    local o = t.nxt
    t.touched = true
    if lost then
      -- Messages a monitor had to drop: their offsets are used up, so that every reader sees the hole.
      t.nxt = t.nxt + lost
      if t.msgs == 0 then t.first = t.nxt end
      redis.call('XADD', P .. 'feed', 'MAXLEN', '~', feed_len, '*', 'x', 'lost', 'n', node, 'c', c, 'o', s(o), 'e', s(t.base), 'l', lost)
    else
      local skey = P .. 's:' .. c
      redis.call('XADD', skey, s(o) .. '-1', 'm', json)
      t.nxt, t.msgs, t.bytes = t.nxt + 1, t.msgs + 1, t.bytes + #json
      local dropped = false
      while t.msgs > 1 and (t.msgs > max_msgs or t.bytes > max_bytes) do
        local oldest = redis.call('XRANGE', skey, '-', '+', 'COUNT', 1)[1]
        redis.call('XDEL', skey, oldest[1])
        t.msgs, t.bytes, t.first = t.msgs - 1, t.bytes - #oldest[2][2], t.first + 1
        dropped = true
      end
      if dropped then flags = flags + 4 end
      if fin then t.fin = true end
      redis.call('XADD', P .. 'feed', 'MAXLEN', '~', feed_len, '*', 'n', node, 'c', c, 'o', s(o), 'e', s(t.base), 'f', fin and '1' or '0', 'm', json)
    end
    if t.nxt > ceiling then ceiling = t.nxt end
    out[#out + 1] = {s(o), s(t.base), flags}
  end
end
local d_msgs, d_bytes = 0, 0
for _, c in ipairs(order) do
  local t = st[c]
  if t.touched then
    local mkey, skey, ttl = P .. 'm:' .. c, P .. 's:' .. c, t.fin and fttl or ittl
    redis.call('HSET', mkey, 'base', s(t.base), 'next', s(t.nxt), 'first', s(t.first), 'msgs', t.msgs, 'bytes', t.bytes, 'fin', t.fin and '1' or '0')
    redis.call('PEXPIRE', mkey, ttl)
    redis.call('PEXPIRE', skey, ttl)
    redis.call('ZADD', P .. 'index', s(now + ttl), c)
    redis.call('HSET', P .. 'sizes', c, t.msgs .. ' ' .. t.bytes)
    d_msgs, d_bytes = d_msgs + t.msgs - t.msgs0, d_bytes + t.bytes - t.bytes0
  end
end
if d_msgs ~= 0 or d_bytes ~= 0 then
  redis.call('HINCRBY', P .. 'totals', 'msgs', d_msgs)
  redis.call('HINCRBY', P .. 'totals', 'bytes', d_bytes)
end
redis.call('SET', P .. 'ceiling', s(ceiling))
-- At max_channels, the channel closest to expiring goes (a finished one, else the least
-- recently active), never one this batch wrote.
local over = redis.call('ZCARD', P .. 'index') - max_channels
local from = 0
while over > 0 do
  local c = redis.call('ZRANGE', P .. 'index', from, from)[1]
  if not c then break end
  if st[c] and st[c].touched then from = from + 1 else
    redis.call('DEL', P .. 'm:' .. c, P .. 's:' .. c)
    forget(c)
    redis.call('XADD', P .. 'feed', 'MAXLEN', '~', feed_len, '*', 'x', 'evicted', 'n', node, 'c', c)
    over = over - 1
  end
end
local res = cjson.encode(out)
redis.call('HSET', wkey, 'seq', seq, 'res', res)
redis.call('PEXPIRE', wkey, 86400000)
return res
`;

/**
 * READ: ARGV = prefix, channel, after (-1: from the oldest kept). Returns JSON
 * {base, next, first, fin, entries: [[offset, json], ...]} for a channel Redis has, or
 * {floor} (where its next life would start at the earliest) for one it has not; offsets
 * as decimal text.
 */
export const READ = `${COMMON}
local c, after = ARGV[2], tonumber(ARGV[3])
local m = redis.call('HMGET', P .. 'm:' .. c, 'base', 'next', 'first', 'fin')
if not m[1] then return cjson.encode({floor = s(floor_for_new_life(now_ms()))}) end
local first = tonumber(m[3])
local from = s(math.max(first, after + 1))
local entries = {}
for _, e in ipairs(redis.call('XRANGE', P .. 's:' .. c, from .. '-0', '+')) do
  entries[#entries + 1] = {string.match(e[1], '^(%d+)'), e[2][2]}
end
return cjson.encode({base = m[1], next = m[2], first = m[3], fin = m[4] == '1', entries = entries})
`;

/** STATS: ARGV = prefix. Purges what expired and returns JSON {channels, msgs, bytes}. */
export const STATS = `${COMMON}
purge(now_ms())
local t = redis.call('HMGET', P .. 'totals', 'msgs', 'bytes')
return cjson.encode({channels = redis.call('ZCARD', P .. 'index'), msgs = tonumber(t[1] or '0'), bytes = tonumber(t[2] or '0')})
`;
