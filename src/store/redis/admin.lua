-- greylist: an operator's operations and the lost-mail sweep, against the
-- records src/store/redis/check.lua writes (its header describes the keys).
-- Each call is one mode, atomic; every key it touches shares the hash tag
-- of the network key (KEYS[1] for the network modes), so a cluster runs
-- each call on one node.
--
-- ARGV     mode, now, delay, retry_window, pass_ttl, awl_threshold, awl_ttl,
--          blast_threshold, block_time, blast_copies, lost_after, [extra]
--
-- release         KEYS triplet, network. The triplet passes from now on.
-- forget          KEYS triplet, network. The triplet is new again; returns
--                 1 if it was known.
-- release_client  KEYS network. Lifts the block and passes every pending
--                 triplet; returns how many.
-- network         KEYS network. Returns {record or false, pending, passed,
--                 lost}.
-- settle          KEYS network; extra = most suspects to judge. Judges the
--                 suspects that are due: returns {counted, net, last,
--                 next_due, (early, last, key)...}: lost triplets credited,
--                 the network's text and latest lost attempt, when its next
--                 suspect is due (-1: none left), and for each one its
--                 early retries, last attempt and key.
-- reindex         KEYS the fleet's suspects index; extra = network hex,
--                 next_due. Replaces the network's entry if it is due (a
--                 check may have indexed a later one meanwhile).
-- index           KEYS the fleet's suspects index; extra = network hex,
--                 due. On a Cluster, where the check script cannot reach
--                 the index: indexes the network under a new suspect's due
--                 time, as the check script does on one server.

local U32_MAX, GRACE, GRACE_BACK = 4294967295, 60, 3600
local max, min, tonumber = math.max, math.min, tonumber
local mode, now = ARGV[1], tonumber(ARGV[2])

if mode == 'reindex' then
  local current = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[12]) or '')
  if current and current <= now then
    local next_due = tonumber(ARGV[13])
    if next_due and next_due >= 0 then
      redis.call('ZADD', KEYS[1], next_due, ARGV[12])
    else
      redis.call('ZREM', KEYS[1], ARGV[12])
    end
  end
  return 1
end

if mode == 'index' then
  local due = tonumber(ARGV[13])
  local indexed = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[12]) or '')
  if due and (not indexed or indexed > due or indexed <= now) then
    redis.call('ZADD', KEYS[1], due, ARGV[12])
  end
  return 1
end

local delay, retry_window, pass_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local awl_ttl, block_time = tonumber(ARGV[7]), tonumber(ARGV[9])
local blast_copies, lost_after = tonumber(ARGV[10]), tonumber(ARGV[11])

local function field(text)
  local n = tonumber(text)
  if n and n <= U32_MAX then return n end
  return nil
end

-- A triplet record, or nil when absent or malformed.
local function triplet(key)
  local text = redis.call('GET', key)
  if not text then return nil end
  local a, b, c, d = string.match(text, '^(%d+) (%d+) (%d+) ([01])$')
  local first, last, early = field(a), field(b), field(c)
  if not (first and last and early and early <= 255) then return nil end
  return {first = first, last = last, early = early, passed = d == '1'}
end

-- Whether a record is alive at now (rules.rs: TripletState::is_expired,
-- is_corrupt).
local function alive(t)
  if t.passed then
    return now - t.last <= pass_ttl and t.last - now <= pass_ttl + GRACE_BACK
  end
  return now - t.first <= retry_window and t.first - now <= delay + GRACE_BACK
end

local network_key = mode == 'release' and KEYS[2] or mode == 'forget' and KEYS[2] or KEYS[1]
local base = string.sub(network_key, 1, -2)
local index_key, suspects_key, credited_key, lost_key = base .. 'n', base .. 's', base .. 'x', base .. 'l'

-- Writes a passed triplet and indexes it.
local function save_passed(key, first, last)
  redis.call('SET', key, string.format('%d %d 0 1', first, last), 'EX', last + pass_ttl - now + GRACE)
  redis.call('ZADD', index_key, last + pass_ttl, key)
  redis.call('EXPIRE', index_key, max(pass_ttl, retry_window) + GRACE)
  redis.call('ZREM', suspects_key, key)
  redis.call('SREM', credited_key, key)
end

if mode == 'release' then
  local t = triplet(KEYS[1])
  if t then
    save_passed(KEYS[1], min(t.first, now), max(t.last, now))
  else
    save_passed(KEYS[1], now, now)
  end
  return 1
end

if mode == 'forget' then
  local known = redis.call('DEL', KEYS[1])
  redis.call('ZREM', index_key, KEYS[1])
  redis.call('ZREM', suspects_key, KEYS[1])
  redis.call('SREM', credited_key, KEYS[1])
  return known
end

if mode == 'release_client' then
  local text = redis.call('GET', KEYS[1])
  if text then
    local a, b, c, d, e, f = string.match(text, '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
    local passes, c_last, round_start, last_round = field(a), field(b), field(d), field(f)
    if passes and c_last and round_start and last_round then
      local ttl = max(c_last + awl_ttl, round_start + delay) - now + GRACE
      if ttl > 0 then
        redis.call('SET', KEYS[1], string.format('%d %d 0 %d 0 %d', passes, c_last, round_start,
          last_round), 'EX', ttl)
      else
        redis.call('DEL', KEYS[1])
      end
    end
  end
  redis.call('HDEL', lost_key, 'blocked')
  local released = 0
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', index_key, now, '+inf')) do
    local t = triplet(key)
    if t and not t.passed and alive(t) then
      save_passed(key, t.first, max(t.last, now))
      released = released + 1
    end
  end
  return released
end

if mode == 'network' then
  local pending, passed = 0, 0
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', index_key, now, '+inf')) do
    local t = triplet(key)
    if t and alive(t) then
      if t.passed then passed = passed + 1 else pending = pending + 1 end
    end
  end
  local lost = tonumber(redis.call('HGET', lost_key, 'lost') or '0') or 0
  return {redis.call('GET', KEYS[1]), pending, passed, max(lost, 0)}
end

if mode == 'settle' then
  -- Blocked while its suspects waited, or blocked still on record (as
  -- rules.rs's ClientState::was_blocked): a spammer's, not lost mail.
  local blocked = redis.call('HGET', lost_key, 'blocked')
  local record = redis.call('GET', KEYS[1])
  if record then
    local until_text = string.match(record, '^%d+ %d+ (%d+) ')
    if until_text and until_text ~= '0' then blocked = true end
  end
  local span = min(delay + lost_after, retry_window + 1)
  local counted, last, earlies = 0, 0, {}
  local due = redis.call('ZRANGEBYSCORE', suspects_key, '-inf', now, 'WITHSCORES', 'LIMIT', 0,
    tonumber(ARGV[12]))
  for i = 1, #due, 2 do
    local key, first = due[i], tonumber(due[i + 1]) - span
    redis.call('ZREM', suspects_key, key)
    local t = triplet(key)
    -- The same cycle, still pending: lost (the pass would have removed it
    -- from the suspects). Gone, or a later cycle: its cycle ended without
    -- a pass, so lost too.
    local same = t and t.first == first
    if not (same and t.passed) and not blocked then
      counted = counted + 1
      last = max(last, same and t.last or first)
      earlies[#earlies + 1] = same and t.early or 0
      earlies[#earlies + 1] = same and t.last or first
      earlies[#earlies + 1] = key
      if same then redis.call('SADD', credited_key, key) end
    end
  end
  local net = redis.call('HGET', lost_key, 'net') or ''
  if counted > 0 then
    redis.call('HINCRBY', lost_key, 'lost', counted)
    local before = tonumber(redis.call('HGET', lost_key, 'last') or '0') or 0
    last = max(before, last)
    redis.call('HSET', lost_key, 'last', last)
    -- The row stays awl_ttl after its latest lost triplet.
    local ttl = awl_ttl + GRACE
    if redis.call('TTL', lost_key) < ttl then redis.call('EXPIRE', lost_key, ttl) end
    redis.call('EXPIRE', credited_key, max(retry_window, pass_ttl) + GRACE)
  end
  local next_due = redis.call('ZRANGE', suspects_key, 0, 0, 'WITHSCORES')
  local result = {counted, net, last, tonumber(next_due[2] or '-1')}
  for _, e in ipairs(earlies) do result[#result + 1] = e end
  return result
end

return redis.error_reply('unknown mode ' .. tostring(mode))
