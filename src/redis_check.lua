-- greylist: one check against Redis, atomically (EVALSHA).
--
-- The same decision as `rules::check` in src/rules.rs, step by step: the
-- client network's gate (rules 1 and 2), the triplet (rules 3 to 7), then
-- what the verdict does to the network (auto-whitelist passes, blast
-- rounds). tests/redis.rs runs both on the same vectors and the model test.
--
-- KEYS[1]  triplet record   "first_seen last_seen early_retries passed"
-- KEYS[2]  network record   "passes last_seen blocked_until round_start rounds last_round"
-- ARGV     mode ("check" or "trap"), now, delay, retry_window, pass_ttl,
--          awl_threshold, awl_ttl, blast_threshold, block_time
-- Returns  {reason, retry_after, delayed}, reason numbers as in rules.rs.
--
-- Times are Unix seconds from the caller (the engine's injected clock), so
-- a record's expiry is decided here by the rules, as in memory. Redis TTLs
-- only collect records the rules no longer need, GRACE seconds after that.

local NEW, EARLY_RETRY, RETRIED, PASSED = 1, 2, 3, 4
local AUTO_WHITELISTED, BLOCKED, TRAPPED = 6, 7, 8
local U32_MAX, GRACE = 4294967295, 60

local mode = ARGV[1]
local now = tonumber(ARGV[2])
local delay, retry_window, pass_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local awl_threshold, awl_ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local blast_threshold, block_time = tonumber(ARGV[8]), tonumber(ARGV[9])

local function numbers(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local out = {}
  for n in string.gmatch(raw, '%d+') do out[#out + 1] = tonumber(n) end
  return out
end

local function remaining(untl)
  return math.min(math.max(untl - now, 0), U32_MAX)
end

-- Stores a record until GRACE seconds after the rules stop needing it.
local function store(key, expires_at, ...)
  local ttl = expires_at - now + GRACE
  if ttl <= 0 then return redis.call('DEL', key) end
  local parts = {}
  for i, v in ipairs({...}) do parts[i] = string.format('%d', v) end
  redis.call('SET', key, table.concat(parts, ' '), 'EX', ttl)
end

local c = numbers(KEYS[2])
local client = {
  passes = c and c[1] or 0, last_seen = c and c[2] or 0, blocked_until = c and c[3] or 0,
  round_start = c and c[4] or 0, rounds = c and c[5] or 0, last_round = c and c[6] or 0,
}

local function awl_alive()
  return now - client.last_seen <= awl_ttl
end

local function save_client()
  store(KEYS[2],
    math.max(client.blocked_until, client.last_seen + awl_ttl, client.round_start + delay),
    client.passes, client.last_seen, client.blocked_until,
    client.round_start, client.rounds, client.last_round)
end

if mode == 'trap' then
  local untl = math.min(now + math.max(block_time, 1), U32_MAX)
  client.blocked_until = math.max(client.blocked_until, untl)
  save_client()
  return {TRAPPED, untl - now, 0}
end

-- Rules 1 and 2: a blocked or auto-whitelisted network decides alone.
if now < client.blocked_until then
  return {BLOCKED, remaining(client.blocked_until), 0}
end
if awl_threshold > 0 and client.passes >= awl_threshold and awl_alive() then
  client.last_seen = math.max(client.last_seen, now)
  save_client()
  return {AUTO_WHITELISTED, 0, 0}
end

-- Rules 3 to 7 for the triplet; an expired record counts as unknown.
local t = numbers(KEYS[1])
if t then
  local expired
  if t[4] == 1 then expired = now - t[2] > pass_ttl else expired = now - t[1] > retry_window end
  if expired then t = nil end
end

local reason, retry_after, delayed
if not t then
  t = {now, now, 0, 0}
  reason, retry_after, delayed = NEW, delay, 0
elseif t[4] == 1 then
  t[2] = math.max(t[2], now)
  reason, retry_after, delayed = PASSED, 0, 0
else
  local waited = now - t[1]
  t[2] = math.max(t[2], now)
  if waited < delay then
    t[3] = math.min(t[3] + 1, 255)
    reason, retry_after, delayed = EARLY_RETRY, remaining(t[1] + delay), 0
  else
    t[4] = 1
    reason, retry_after, delayed = RETRIED, 0, waited
  end
end
if t[4] == 1 then
  store(KEYS[1], t[2] + pass_ttl, t[1], t[2], t[3], t[4])
else
  store(KEYS[1], t[1] + retry_window, t[1], t[2], t[3], t[4])
end

-- What the verdict does to the network.
if reason == RETRIED and awl_threshold > 0 then
  if not awl_alive() then client.passes = 0 end
  client.passes = math.min(client.passes + 1, U32_MAX)
  client.last_seen = math.max(client.last_seen, now)
  save_client()
elseif reason == EARLY_RETRY and blast_threshold > 0 then
  local period = now - client.round_start
  if client.rounds == 0 or period < 0 or period >= delay then
    client.round_start = now
    client.rounds = 0
  end
  if client.rounds == 0 or client.last_round ~= now then
    client.rounds = client.rounds + 1
    client.last_round = now
  end
  if client.rounds > blast_threshold then
    client.blocked_until = math.min(now + block_time, U32_MAX)
    client.rounds = 0
    reason, retry_after = BLOCKED, block_time
  end
  save_client()
end
return {reason, retry_after, delayed}
