-- greylist: one check against Redis, atomically (EVALSHA).
--
-- The same decision as `rules::check` in src/rules.rs, step by step: the
-- client network's gate (rules 1 and 2), the triplet (rules 3 to 7), then
-- what the verdict does to the network (auto-whitelist passes, at most
-- one an hour; blast rounds). tests/redis.rs runs both on the same vectors and the model test.
--
-- KEYS[1]  triplet record   "first_seen last_seen early_retries passed"
-- KEYS[2]  network record   "passes last_seen blocked_until round_start rounds last_round"
--          The network's other keys are KEYS[2] with its last letter
--          changed (all share the hash tag of KEYS[2], so one cluster slot):
--          n  sorted set of its triplet keys by expiry (client report, release)
--          s  sorted set of its suspects: triplet keys with early retries
--             only, by when they are lost mail unless retried (settled by a
--             sweep, src/store/redis/admin.lua)
--          x  set of its triplet keys judged lost and credited (a late
--             pass recovers them)
--          l  hash of its lost mail: net (the network, for the report),
--             lost (count), last (latest last attempt), blocked (ever
--             blocked while it had suspects)
-- KEYS[3]  (optional) the fleet's index of networks with suspects: a sorted
--          set of network key bases (KEYS[2] without its letter) by when
--          their first suspect is due, which a sweep at any MX settles.
--          It has its own slot, so on a Redis Cluster the caller leaves it
--          out and indexes the network itself (admin.lua's `index` mode)
--          under the `due` this script returns.
-- ARGV     mode ("check", "check-domain": a domain key, never blocked nor
--          auto-whitelisted, or "trap"), now, delay, retry_window, pass_ttl,
--          awl_threshold, awl_ttl, blast_threshold, block_time, blast_copies,
--          lost_after, the network as text
-- Returns  {reason, retry_after, delayed, malformed, flags, due, early}:
--          reason numbers as in rules.rs; how many records were malformed
--          (treated as absent); flags 1 = a lost triplet recovered, 2 = a
--          block started; due = when the triplet becomes lost mail if it
--          became a suspect (else 0; the caller indexes the network under
--          it); early = the triplet's early retries.
--
-- Times are Unix seconds from the caller (the engine's injected clock), so
-- a record's expiry is decided here by the rules, as in memory. Redis TTLs
-- only collect records the rules no longer need, GRACE seconds after that.
-- Written for speed: one MGET, plain locals, fixed formats.

local NEW, EARLY_RETRY, RETRIED, PASSED = 1, 2, 3, 4
local AUTO_WHITELISTED, BLOCKED, TRAPPED = 6, 7, 8
local U32_MAX, GRACE = 4294967295, 60
-- rules::CLOCK_GRACE: how far the clock may step back before a time is corrupt.
local GRACE_BACK = 3600
local AWL_COUNT_INTERVAL = 3600
local max, min, tonumber = math.max, math.min, tonumber

local now = tonumber(ARGV[2])
local delay, retry_window, pass_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local awl_threshold, awl_ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local blast_threshold, block_time = tonumber(ARGV[8]), tonumber(ARGV[9])
local blast_copies, lost_after = tonumber(ARGV[10]), tonumber(ARGV[11])
local base = string.sub(KEYS[2], 1, -2)
local index_key, suspects_key, credited_key, lost_key = base .. 'n', base .. 's', base .. 'x', base .. 'l'
-- How long the network's lost-mail keys wait after its latest suspect.
local waiting = max(delay + lost_after, retry_window) + GRACE

local records = redis.call('MGET', KEYS[1], KEYS[2])
-- Records that are not in the script's format (damaged, or written by
-- another program) count as absent; the answer says how many there were.
local malformed = 0

-- A field of a record: a whole number within u32, else nil.
local function field(text)
  local n = tonumber(text)
  if n and n <= U32_MAX then return n end
  return nil
end

-- The network's record; all zeros when there is none.
local passes, c_last, blocked_until, round_start, rounds, last_round = 0, 0, 0, 0, 0, 0
if records[2] then
  local a, b, c, d, e, f = string.match(records[2], '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
  a, b, c, d, e, f = field(a), field(b), field(c), field(d), field(e), field(f)
  if a and b and c and d and e and f then
    passes, c_last, blocked_until, round_start, rounds, last_round = a, b, c, d, e, f
  else
    malformed = malformed + 1
  end
end
-- Corrupt times (further ahead than the setting they serve and GRACE_BACK,
-- as after a clock that jumped ahead) count as unset, as rules.rs's
-- repaired() does.
local repaired = false
if blocked_until - now > max(block_time, 1) + GRACE_BACK then blocked_until, repaired = 0, true end
if c_last - now > awl_ttl + GRACE_BACK then passes, c_last, repaired = 0, 0, true end
if round_start - now > delay + GRACE_BACK then
  round_start, rounds, last_round, repaired = 0, 0, 0, true
end

-- Stores the network's record until GRACE seconds after the rules stop
-- needing it (blocked, auto-whitelist alive, or blast period running).
local function save_client()
  local ttl = max(blocked_until, c_last + awl_ttl, round_start + delay) - now + GRACE
  if ttl <= 0 then return redis.call('DEL', KEYS[2]) end
  redis.call('SET', KEYS[2], string.format('%d %d %d %d %d %d',
    passes, c_last, blocked_until, round_start, rounds, last_round), 'EX', ttl)
end

-- Makes a key live at least `ttl` more seconds.
local function keep(key, ttl)
  if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
end

-- A block started: the network's suspects are a spammer's, not lost mail.
local function mark_blocked()
  redis.call('HSET', lost_key, 'blocked', 1)
  keep(lost_key, waiting + max(block_time, 1))
end

if ARGV[1] == 'trap' then
  local untl = min(now + max(block_time, 1), U32_MAX)
  local started = now >= blocked_until
  blocked_until = max(blocked_until, untl)
  save_client()
  mark_blocked()
  return {TRAPPED, untl - now, 0, malformed, started and 2 or 0, 0, 0}
end

-- Rules 1 and 2: a blocked or auto-whitelisted network decides alone.
if now < blocked_until then
  return {BLOCKED, min(blocked_until - now, U32_MAX), 0, malformed, 0, 0, 0}
end
local awl_alive = now - c_last <= awl_ttl
if awl_threshold > 0 and passes >= awl_threshold and awl_alive then
  c_last = max(c_last, now)
  save_client()
  return {AUTO_WHITELISTED, 0, 0, malformed, 0, 0, 0}
end

-- Rules 3 to 7 for the triplet; an expired record counts as unknown.
local first, last, early, passed
if records[1] then
  local a, b, c, d = string.match(records[1], '^(%d+) (%d+) (%d+) ([01])$')
  first, last, early, passed = field(a), field(b), field(c), d == '1'
  if not (first and last and early and early <= 255) then
    first = nil
    malformed = malformed + 1
  elseif passed then
    if now - last > pass_ttl or last - now > pass_ttl + GRACE_BACK then first = nil end
  elseif now - first > retry_window or first - now > delay + GRACE_BACK then
    first = nil
  end
end

local reason, retry_after, delayed = NEW, delay, 0
if not first then
  first, last, early, passed = now, now, 0, false
elseif passed then
  last = max(last, now)
  reason, retry_after = PASSED, 0
else
  local waited = now - first
  last = max(last, now)
  if waited < delay then
    early = min(early + 1, 255)
    reason, retry_after = EARLY_RETRY, min(max(first + delay - now, 0), U32_MAX)
  else
    passed = true
    reason, retry_after, delayed = RETRIED, 0, waited
  end
end
local expires = passed and last + pass_ttl or first + retry_window
redis.call('SET', KEYS[1], string.format('%d %d %d %d', first, last, early, passed and 1 or 0),
  'EX', expires - now + GRACE)
-- The network's index of its triplets, for its report and its release.
if reason == NEW then
  redis.call('ZREMRANGEBYSCORE', index_key, '-inf', now - 1)
  -- A new cycle: a mark of the last one must not recover this one.
  redis.call('SREM', credited_key, KEYS[1])
end
redis.call('ZADD', index_key, expires, KEYS[1])
redis.call('EXPIRE', index_key, max(pass_ttl, retry_window) + GRACE)

local flags, due = 0, 0
if reason == RETRIED then
  -- No longer a suspect; one already judged lost is recovered.
  redis.call('ZREM', suspects_key, KEYS[1])
  if redis.call('SREM', credited_key, KEYS[1]) == 1 then
    local lost = tonumber(redis.call('HGET', lost_key, 'lost') or '0') or 0
    if lost > 0 and not redis.call('HGET', lost_key, 'blocked') then
      redis.call('HINCRBY', lost_key, 'lost', -1)
      flags = 1
    end
  end
elseif reason == EARLY_RETRY and (blast_copies == 0 or early <= blast_copies) then
  -- rules.rs's lost pattern: lost mail unless retried by `due`
  -- (TripletState::is_lost: delay + lost_after, or the window ending).
  due = min(first + delay + lost_after, first + retry_window + 1)
  redis.call('ZADD', suspects_key, due, KEYS[1])
  keep(suspects_key, waiting)
  if KEYS[3] then
    -- The network is indexed under its earliest due suspect; an entry
    -- already due (a sweep may be settling it right now) is replaced, so
    -- the sweep's reindex, which only touches a due entry, keeps this one.
    local indexed = tonumber(redis.call('ZSCORE', KEYS[3], base) or '')
    if not indexed or indexed > due or indexed <= now then
      redis.call('ZADD', KEYS[3], due, base)
    end
  end
  redis.call('HSET', lost_key, 'net', ARGV[12])
  keep(lost_key, waiting)
end

-- What the verdict does to the network.
-- A domain key ('check-domain') is never auto-whitelisted nor blocked: one
-- pool's domain, or any host that can name itself under a provider's
-- domain; its hosts' networks keep their own records.
if reason == RETRIED and ARGV[1] == 'check' and awl_threshold > 0 then
  if not awl_alive then passes = 0 end
  -- At most one pass counted an hour (rules::AWL_COUNT_INTERVAL, postgrey's).
  if passes == 0 or now - c_last >= AWL_COUNT_INTERVAL then
    passes = min(passes + 1, U32_MAX)
    c_last = max(c_last, now)
    save_client()
  elseif repaired then
    save_client()
  end
elseif reason == EARLY_RETRY and ARGV[1] == 'check' and (blast_threshold > 0 or blast_copies > 0) then
  -- Copies of one message (this triplet's early retries), or rounds of
  -- the network (distinct seconds) within one delay period.
  local blasted = blast_copies > 0 and early > blast_copies
  if blast_threshold > 0 then
    local period = now - round_start
    if rounds == 0 or period < 0 or period >= delay then
      round_start, rounds = now, 0
    end
    if rounds == 0 or last_round ~= now then
      rounds, last_round = rounds + 1, now
    end
    blasted = blasted or rounds > blast_threshold
  end
  if blasted then
    blocked_until, rounds = min(now + block_time, U32_MAX), 0
    reason, retry_after = BLOCKED, block_time
    flags = 2
    mark_blocked()
  end
  -- With copies alone, the record changes when they block, or when it
  -- was repaired (a corrupt block cleared): rules.rs writes it then.
  if blast_threshold > 0 or blasted or repaired then save_client() end
end
return {reason, retry_after, delayed, malformed, flags, due, early}
