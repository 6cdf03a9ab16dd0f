//! The greylisting decision as pure functions of (stored state, `now`,
//! settings) → (new state, verdict), apart from any table, so that every
//! store (the in-memory table, a shared store) applies the same rules.
//!
//! Times are Unix seconds as `u32` (good until 2106); the engine clamps the
//! caller's `i64` into that range. All differences are taken in `i64`, so a
//! clock that goes backwards gives negative ages and never an overflow.

use crate::config::Config;

/// What the MTA should do with the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Action {
    /// Accept.
    Pass = 0,
    /// Answer with a temporary failure (the suggested reply).
    Defer = 1,
    /// The client network is blocked: refuse (temporarily or for good, the
    /// host's choice).
    Block = 2,
}

impl Action {
    /// The action with this number (as it crosses the C ABI), if any.
    pub fn from_number(n: u32) -> Option<Action> {
        [Action::Pass, Action::Defer, Action::Block]
            .into_iter()
            .find(|a| *a as u32 == n)
    }
}

/// Why the engine decided what it did. Numbers are stable (they cross the C
/// ABI) and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Reason {
    /// First attempt of a triplet (or the first after its retry window ran
    /// out): deferred.
    New = 1,
    /// A retry before the delay was over: deferred, timer not reset.
    EarlyRetry = 2,
    /// A retry after the delay: passes now, and the triplet is passed from
    /// now on. `Verdict::delayed` says how long the mail waited.
    Retried = 3,
    /// A triplet that passed before, within its lifetime.
    Passed = 4,
    /// The client, sender or recipient is on a static whitelist.
    Whitelisted = 5,
    /// The client network passed enough triplets to be trusted.
    AutoWhitelisted = 6,
    /// The client network is blocked for blasting early retries.
    Blocked = 7,
    /// The recipient is a trap address: the client network is blocked now.
    Trapped = 8,
    /// The shared store (Redis) did not answer in time or failed: the local
    /// table decided, and the verdict's action is what the engine's
    /// failure mode made of that (a defer becomes a pass when failing
    /// open, the default).
    StoreUnavailable = 9,
}

impl Reason {
    /// Every reason, in number order.
    pub const ALL: [Reason; 9] = [
        Reason::New,
        Reason::EarlyRetry,
        Reason::Retried,
        Reason::Passed,
        Reason::Whitelisted,
        Reason::AutoWhitelisted,
        Reason::Blocked,
        Reason::Trapped,
        Reason::StoreUnavailable,
    ];

    /// The reason with this number (as it crosses the C ABI and comes back
    /// from the Redis script), if any.
    pub fn from_number(n: u32) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| *r as u32 == n)
    }

    /// A short lower-case name for logs (`new`, `early-retry`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::EarlyRetry => "early-retry",
            Reason::Retried => "retried",
            Reason::Passed => "passed",
            Reason::Whitelisted => "whitelisted",
            Reason::AutoWhitelisted => "auto-whitelisted",
            Reason::Blocked => "blocked",
            Reason::Trapped => "trapped",
            Reason::StoreUnavailable => "store-unavailable",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize - 1
    }

    /// The action that goes with this reason; for
    /// [`Reason::StoreUnavailable`], which may go with any action, the
    /// fail-open one (pass).
    pub fn action(self) -> Action {
        match self {
            Reason::New | Reason::EarlyRetry => Action::Defer,
            Reason::Blocked | Reason::Trapped => Action::Block,
            _ => Action::Pass,
        }
    }
}

/// The engine's answer for one triplet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Pass, defer or block.
    pub action: Action,
    /// Why.
    pub reason: Reason,
    /// For a defer, seconds until a retry would pass; for a block, seconds
    /// until the block ends; 0 for a pass.
    pub retry_after: u32,
    /// For [`Reason::Retried`], seconds between the first attempt and this
    /// one (what an `X-Greylist: delayed N seconds` header states); else 0.
    pub delayed: u32,
    /// What the client part of the triplet's key was: the network, the
    /// verified host name's domain or a verified sender domain.
    pub key: crate::KeyKind,
}

impl Verdict {
    pub(crate) fn new(reason: Reason, retry_after: u32, delayed: u32) -> Verdict {
        Verdict {
            action: reason.action(),
            reason,
            retry_after,
            delayed,
            key: crate::KeyKind::Network,
        }
    }
}

/// What the engine remembers of one triplet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TripletState {
    /// When the current greylisting cycle began.
    pub first_seen: u32,
    /// The latest attempt (pending) or use (passed); never moves back.
    pub last_seen: u32,
    /// Retries seen inside the delay (saturates at 255).
    pub early_retries: u8,
    /// Whether a retry after the delay was seen.
    pub passed: bool,
}

/// What the engine remembers of one client network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientState {
    /// Triplets of this network that passed (towards the auto-whitelist).
    pub passes: u32,
    /// Last pass or auto-whitelist use; the record lives `awl_ttl` from it.
    pub last_seen: u32,
    /// Blocked while `now < blocked_until`.
    pub blocked_until: u32,
    /// Start of the current blast-counting period (one delay long).
    pub round_start: u32,
    /// Early-retry rounds (distinct seconds) in that period.
    pub rounds: u32,
    /// The second of the latest round.
    pub last_round: u32,
}

fn age(now: u32, then: u32) -> i64 {
    i64::from(now) - i64::from(then)
}

fn remaining(until: i64, now: u32) -> u32 {
    (until - i64::from(now)).clamp(0, i64::from(u32::MAX)) as u32
}

/// How far a clock may step back, beyond the setting a stored time
/// serves, before that time counts as corrupt. Checks on several threads
/// read the clock a moment apart, and an NTP correction can step it back:
/// a block set one second "ahead" of another thread's `now` is a block.
pub const CLOCK_GRACE: u32 = 3600;

/// The auto-whitelist counts at most one pass of a client network per this
/// many seconds (postgrey's rule): the passes of one message's recipients,
/// which all retry together, count once, and a network earns the
/// auto-whitelist only over several hours of mail. A pass inside the
/// interval neither counts nor moves the record's last counted pass.
pub const AWL_COUNT_INTERVAL: u32 = 3600;

/// Whether a stored time lies further ahead of `now` than the setting it
/// serves (plus [`CLOCK_GRACE`]): no rule ever stores such a time, so it is
/// corrupt (a clock that jumped ahead for a moment, or milliseconds given
/// as seconds), and the rules treat it as never set. Without this, a
/// triplet first seen ten years ahead would stay deferred, and a network
/// blocked then stay blocked, for ten years after the clock was right.
pub fn too_far_ahead(then: u32, now: u32, setting: u32) -> bool {
    -age(now, then) > i64::from(setting) + i64::from(CLOCK_GRACE)
}

impl TripletState {
    /// Whether the entry is past its lifetime at `now`: a pending triplet
    /// after its retry window, a passed one after its pass lifetime. An
    /// entry whose time is corrupt ([`TripletState::is_corrupt`]) is past
    /// it too, so the triplet starts over and sweeps remove it.
    pub fn is_expired(&self, now: u32, config: &Config) -> bool {
        let past = if self.passed {
            age(now, self.last_seen) > i64::from(config.pass_ttl)
        } else {
            age(now, self.first_seen) > i64::from(config.retry_window)
        };
        past || self.is_corrupt(now, config)
    }

    /// Whether the entry's time lies further ahead of `now` than the rules
    /// ever store it: a pending triplet first seen more than the delay
    /// ahead, a passed one used more than its lifetime ahead.
    pub fn is_corrupt(&self, now: u32, config: &Config) -> bool {
        if self.passed {
            too_far_ahead(self.last_seen, now, config.pass_ttl)
        } else {
            too_far_ahead(self.first_seen, now, config.delay)
        }
    }

    /// Whether the attempts so far are those of a sender that lost its
    /// mail: pending, with early retries (the Exchange 2003 SP2 pattern),
    /// but no more than `blast_copies` of them (more is a blaster's, when
    /// that rule is on). A sender that never retried is a spammer's.
    pub fn lost_pattern(&self, config: &Config) -> bool {
        !self.passed
            && self.early_retries > 0
            && (config.blast_copies == 0 || u32::from(self.early_retries) <= config.blast_copies)
    }

    /// Whether at `now` the triplet is lost mail: the
    /// [`lost pattern`](Self::lost_pattern), and no attempt for
    /// `lost_after` since its delay ended (a retry then would have passed),
    /// or its retry window ran out first.
    pub fn is_lost(&self, now: u32, config: &Config) -> bool {
        let lost_at = i64::from(config.delay) + i64::from(config.lost_after);
        self.lost_pattern(config)
            && !self.is_corrupt(now, config)
            && (age(now, self.first_seen) >= lost_at || self.is_expired(now, config))
    }
}

impl ClientState {
    /// The record with its corrupt times cleared (see [`too_far_ahead`]):
    /// a block ending more than `block_time` (and the grace) ahead is
    /// lifted; an auto-whitelist last used more than `awl_ttl` ahead starts
    /// over; a blast period starting more than a delay ahead is dropped.
    pub fn repaired(mut self, now: u32, config: &Config) -> ClientState {
        if too_far_ahead(self.blocked_until, now, config.block_time.max(1)) {
            self.blocked_until = 0;
        }
        if too_far_ahead(self.last_seen, now, config.awl_ttl) {
            (self.passes, self.last_seen) = (0, 0);
        }
        if too_far_ahead(self.round_start, now, config.delay) {
            (self.round_start, self.rounds, self.last_round) = (0, 0, 0);
        }
        self
    }

    fn is_blocked(&self, now: u32) -> bool {
        now < self.blocked_until
    }

    /// Whether the network was blocked (for blasting or a trap) at some
    /// time in this record's life: its early retries are then no sign of
    /// lost mail.
    pub fn was_blocked(&self) -> bool {
        self.blocked_until != 0
    }

    fn awl_alive(&self, now: u32, config: &Config) -> bool {
        age(now, self.last_seen) <= i64::from(config.awl_ttl)
    }

    /// Whether the record holds nothing worth keeping at `now` (corrupt
    /// times count as unset).
    pub fn is_expired(&self, now: u32, config: &Config) -> bool {
        let s = self.repaired(now, config);
        !s.is_blocked(now)
            && !s.awl_alive(now, config)
            && age(now, s.round_start) > i64::from(config.delay)
    }

    /// Whether the network is blocked at `now`.
    pub fn blocks(&self, now: u32, config: &Config) -> bool {
        self.repaired(now, config).is_blocked(now)
    }

    /// Whether the network is auto-whitelisted at `now`.
    pub fn is_auto_whitelisted(&self, now: u32, config: &Config) -> bool {
        let s = self.repaired(now, config);
        config.awl_threshold > 0 && s.passes >= config.awl_threshold && s.awl_alive(now, config)
    }
}

/// Rules 1 and 2 for the client network: a verdict when the network alone
/// decides (blocked, or auto-whitelisted, whose lifetime is then refreshed),
/// else `None` and the triplet decides.
pub fn client_gate(client: &mut ClientState, now: u32, config: &Config) -> Option<Verdict> {
    // Corrupt times count as unset; the record is rewritten (repaired)
    // only when this writes it.
    let seen = client.repaired(now, config);
    if seen.is_blocked(now) {
        let left = remaining(i64::from(seen.blocked_until), now);
        return Some(Verdict::new(Reason::Blocked, left, 0));
    }
    if seen.is_auto_whitelisted(now, config) {
        *client = seen;
        client.last_seen = client.last_seen.max(now);
        return Some(Verdict::new(Reason::AutoWhitelisted, 0, 0));
    }
    None
}

/// Rules 3 to 7 for one triplet: its new state and the verdict.
pub fn triplet_step(
    state: Option<TripletState>,
    now: u32,
    config: &Config,
) -> (TripletState, Verdict) {
    let delay = i64::from(config.delay);
    match state.filter(|s| !s.is_expired(now, config)) {
        // Rules 3 and 6: unknown, or its window ran out (or its time is
        // corrupt): start a cycle.
        None => (
            TripletState {
                first_seen: now,
                last_seen: now,
                early_retries: 0,
                passed: false,
            },
            Verdict::new(Reason::New, config.delay, 0),
        ),
        // Rule 7: passed, within its lifetime; refreshed.
        Some(mut s) if s.passed => {
            s.last_seen = s.last_seen.max(now);
            (s, Verdict::new(Reason::Passed, 0, 0))
        }
        Some(mut s) => {
            let waited = age(now, s.first_seen);
            s.last_seen = s.last_seen.max(now);
            if waited < delay {
                // Rule 4: too early; the timer is not reset.
                s.early_retries = s.early_retries.saturating_add(1);
                let left = remaining(i64::from(s.first_seen) + delay, now);
                (s, Verdict::new(Reason::EarlyRetry, left, 0))
            } else {
                // Rule 5: delay ≤ waited ≤ retry window (not expired).
                s.passed = true;
                (s, Verdict::new(Reason::Retried, 0, waited as u32))
            }
        }
    }
}

/// What a triplet's verdict does to its client network: a pass counts
/// towards the auto-whitelist (at most one an [`AWL_COUNT_INTERVAL`]); an
/// early retry counts as a blast round. The
/// network is blocked when this retry makes the triplet's early retries
/// (`copies`, this one included) more than `blast_copies` (copies of one
/// message blasted at once, however many fall in one second), or the
/// network's rounds (distinct seconds with early retries) within one delay
/// period more than `blast_threshold`. Returns the verdict to give, which
/// is [`Reason::Blocked`] when this retry set off the block.
pub fn client_update(
    client: &mut ClientState,
    verdict: Verdict,
    copies: u8,
    now: u32,
    config: &Config,
) -> Verdict {
    match verdict.reason {
        Reason::Retried => {
            *client = client.repaired(now, config);
            if !client.awl_alive(now, config) {
                client.passes = 0;
            }
            // postgrey's count: at most one pass an hour, so one message to
            // many recipients (its triplets all pass within seconds) is one
            // pass, not a whitelisted network.
            if client.passes == 0 || age(now, client.last_seen) >= i64::from(AWL_COUNT_INTERVAL) {
                client.passes = client.passes.saturating_add(1);
                client.last_seen = client.last_seen.max(now);
            }
            verdict
        }
        Reason::EarlyRetry if config.blast_threshold > 0 || config.blast_copies > 0 => {
            *client = client.repaired(now, config);
            let mut blasted = config.blast_copies > 0 && u32::from(copies) > config.blast_copies;
            if config.blast_threshold > 0 {
                let period = age(now, client.round_start);
                if client.rounds == 0 || !(0..i64::from(config.delay)).contains(&period) {
                    client.round_start = now;
                    client.rounds = 0;
                }
                if client.rounds == 0 || client.last_round != now {
                    client.rounds += 1;
                    client.last_round = now;
                }
                blasted |= client.rounds > config.blast_threshold;
            }
            if blasted {
                client.blocked_until = now.saturating_add(config.block_time);
                client.rounds = 0;
                Verdict::new(Reason::Blocked, config.block_time, 0)
            } else {
                verdict
            }
        }
        _ => verdict,
    }
}

/// What one check does to a store that holds both records at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The answer.
    pub verdict: Verdict,
    /// The triplet's new record, if the check wrote one (a network that
    /// decided alone leaves the triplet untouched).
    pub triplet: Option<TripletState>,
    /// The network's new record, if the check changed it.
    pub client: Option<ClientState>,
}

/// The whole decision for one triplet, from its record and its network's
/// (`None`: none stored, or past its lifetime), as a store that sees both
/// at once applies it: rules 1 and 2 ([`client_gate`]), rules 3 to 7
/// ([`triplet_step`]), then [`client_update`]. The in-memory engine takes
/// the same steps under its shard locks; the Redis script
/// (`src/store/redis/check.lua`) mirrors this function, and the test vectors in
/// `tests/redis.rs` hold both to the same results.
pub fn check(
    triplet: Option<TripletState>,
    client: Option<ClientState>,
    now: u32,
    config: &Config,
) -> Outcome {
    let mut c = client.unwrap_or_default();
    if let Some(verdict) = client_gate(&mut c, now, config) {
        let client = (verdict.reason == Reason::AutoWhitelisted).then_some(c);
        return Outcome {
            verdict,
            triplet: None,
            client,
        };
    }
    let (t, verdict) = triplet_step(triplet, now, config);
    let before = c;
    let verdict = if touches_client(&verdict, config) {
        client_update(&mut c, verdict, t.early_retries, now, config)
    } else {
        verdict
    };
    Outcome {
        verdict,
        triplet: Some(t),
        client: (c != before).then_some(c),
    }
}

/// A trap recipient: the network is blocked from `now` for `block_time`
/// (at least a second), or longer if it already was.
pub fn trap(client: &mut ClientState, now: u32, config: &Config) -> Verdict {
    *client = client.repaired(now, config);
    let until = now.saturating_add(config.block_time.max(1));
    client.blocked_until = client.blocked_until.max(until);
    Verdict::new(Reason::Trapped, until - now, 0)
}

/// Whether a verdict changes the client network's record.
pub fn touches_client(verdict: &Verdict, config: &Config) -> bool {
    match verdict.reason {
        // Passes only matter to the auto-whitelist.
        Reason::Retried => config.awl_threshold > 0,
        // Early retries count as blast rounds, and the record they make is
        // where lost mail is credited when the triplet expires.
        Reason::EarlyRetry => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u32 = 1_700_000_000;

    fn cfg() -> Config {
        Config::default()
    }

    fn run(state: Option<TripletState>, now: u32) -> (TripletState, Verdict) {
        triplet_step(state, now, &cfg())
    }

    #[test]
    fn rule3_new_is_deferred_for_the_delay() {
        let (s, v) = run(None, T0);
        assert_eq!(
            (v.action, v.reason, v.retry_after),
            (Action::Defer, Reason::New, 300)
        );
        assert_eq!((s.first_seen, s.passed, s.early_retries), (T0, false, 0));
    }

    #[test]
    fn rule4_early_retry_keeps_the_timer() {
        let (s, _) = run(None, T0);
        let (s, v) = run(Some(s), T0 + 100);
        assert_eq!((v.reason, v.retry_after), (Reason::EarlyRetry, 200));
        assert_eq!((s.first_seen, s.early_retries), (T0, 1));
        let (s, v) = run(Some(s), T0 + 299);
        assert_eq!((v.reason, v.retry_after), (Reason::EarlyRetry, 1));
        assert_eq!(s.early_retries, 2);
    }

    #[test]
    fn rule5_retry_after_the_delay_passes() {
        let (s, _) = run(None, T0);
        let (s, v) = run(Some(s), T0 + 300);
        assert_eq!(
            (v.action, v.reason, v.delayed),
            (Action::Pass, Reason::Retried, 300)
        );
        assert!(s.passed);
        // Exactly at the end of the retry window still passes.
        let (s, _) = run(None, T0);
        let (_, v) = run(Some(s), T0 + 2 * 86_400);
        assert_eq!(v.reason, Reason::Retried);
    }

    #[test]
    fn rule6_window_exceeded_starts_over() {
        let (s, _) = run(None, T0);
        let (s, v) = run(Some(s), T0 + 2 * 86_400 + 1);
        assert_eq!((v.reason, v.retry_after), (Reason::New, 300));
        assert_eq!(s.first_seen, T0 + 2 * 86_400 + 1);
    }

    #[test]
    fn rule7_passed_stays_passed_and_is_refreshed() {
        let (s, _) = run(None, T0);
        let (s, _) = run(Some(s), T0 + 400);
        let later = T0 + 400 + 35 * 86_400;
        let (s, v) = run(Some(s), later);
        assert_eq!(v.reason, Reason::Passed);
        assert_eq!(s.last_seen, later);
        // Refreshed: another full lifetime from the last use.
        let (_, v) = run(Some(s), later + 35 * 86_400);
        assert_eq!(v.reason, Reason::Passed);
        // Past its lifetime it is unknown again.
        let (_, v) = run(Some(s), later + 35 * 86_400 + 1);
        assert_eq!(v.reason, Reason::New);
    }

    #[test]
    fn clock_going_back_never_passes_early() {
        let (s, _) = run(None, T0);
        let (s, v) = run(Some(s), T0 - 100);
        assert_eq!((v.reason, v.retry_after), (Reason::EarlyRetry, 400));
        assert_eq!(s.last_seen, T0, "last_seen never moves back");
        let (s, v) = run(Some(s), T0 + 300);
        assert_eq!(v.reason, Reason::Retried);
        // A passed triplet stays passed when the clock steps back within
        // its lifetime.
        let (_, v) = run(Some(s), T0 - 5);
        assert_eq!(v.reason, Reason::Passed);
    }

    /// Issue 15, item 11: a time stored further ahead than the setting it
    /// serves is corrupt, and the triplet starts over (never passing
    /// early: a full delay from the restart).
    #[test]
    fn times_too_far_ahead_start_over() {
        let g = CLOCK_GRACE;
        let (s, _) = run(None, T0);
        // Back by the delay and the grace: still this triplet's cycle.
        let (s, v) = run(Some(s), T0 - 300 - g);
        assert_eq!(
            (v.reason, v.retry_after),
            (Reason::EarlyRetry, 300 + g + 300)
        );
        // One second more: corrupt, a new cycle.
        let (s, v) = run(Some(s), T0 - 301 - g);
        assert_eq!((v.reason, v.retry_after), (Reason::New, 300));
        assert_eq!(s.first_seen, T0 - 301 - g);
        let (s, v) = run(Some(s), T0 - 2 - g);
        assert_eq!(v.reason, Reason::EarlyRetry);
        let (s, v) = run(Some(s), T0 - 1 - g);
        assert_eq!(v.reason, Reason::Retried);
        // Passed, used a lifetime and the grace and more ahead: starts over.
        let (_, v) = run(Some(s), T0 - 1 - g - 35 * 86_400 - g - 1);
        assert_eq!(v.reason, Reason::New);
        // A network blocked further ahead than block_time is not blocked;
        // one auto-whitelisted from the future is not auto-whitelisted.
        let c = cfg();
        let mut blocked = ClientState {
            blocked_until: T0 + 3601 + g,
            ..ClientState::default()
        };
        assert!(client_gate(&mut blocked, T0, &c).is_none());
        assert!(!blocked.blocks(T0, &c));
        assert!(
            blocked.blocks(T0 + 1, &c),
            "within block_time and the grace it is a block"
        );
        let mut awl = ClientState {
            passes: 9,
            last_seen: T0 + 35 * 86_400 + g + 1,
            ..ClientState::default()
        };
        assert!(client_gate(&mut awl, T0, &c).is_none());
        assert!(awl.is_expired(T0, &c), "swept");
    }

    #[test]
    fn extremes_do_not_overflow() {
        let (s, v) = run(None, u32::MAX);
        assert_eq!(v.reason, Reason::New);
        // The far future seen from 0 is corrupt: a new cycle.
        let (_, v) = run(Some(s), 0);
        assert_eq!((v.reason, v.retry_after), (Reason::New, 300));
        let (s, _) = run(None, 0);
        let (_, v) = run(Some(s), u32::MAX);
        assert_eq!(v.reason, Reason::New);
    }

    #[test]
    fn auto_whitelist_after_threshold_passes() {
        let c = cfg();
        let mut client = ClientState::default();
        let retried = Verdict::new(Reason::Retried, 0, 300);
        let hour = AWL_COUNT_INTERVAL;
        for i in 0..5 {
            assert_eq!(client_gate(&mut client, T0 + i * hour, &c), None);
            client_update(&mut client, retried, 0, T0 + i * hour, &c);
        }
        let v = client_gate(&mut client, T0 + 4 * hour + 10, &c).unwrap();
        assert_eq!(
            (v.action, v.reason),
            (Action::Pass, Reason::AutoWhitelisted)
        );
        // Refreshed on use; expires awl_ttl after the last use.
        let used = T0 + 30 * 86_400;
        assert!(client_gate(&mut client, used, &c).is_some());
        assert!(client_gate(&mut client, used + 35 * 86_400, &c).is_some());
        assert_eq!(client_gate(&mut client, used + 70 * 86_400 + 1, &c), None);
        // A pass after expiry starts the count again.
        client_update(&mut client, retried, 0, used + 70 * 86_400 + 1, &c);
        assert_eq!(client.passes, 1);
    }

    #[test]
    fn auto_whitelist_counts_one_pass_an_hour() {
        let c = cfg();
        let mut client = ClientState::default();
        let retried = Verdict::new(Reason::Retried, 0, 300);
        // One message to 50 recipients: 50 triplets pass in a few seconds.
        for i in 0..50 {
            client_update(&mut client, retried, 0, T0 + i / 10, &c);
        }
        assert_eq!((client.passes, client.last_seen), (1, T0));
        // Passes inside the hour neither count nor move the hour on.
        client_update(&mut client, retried, 0, T0 + 3599, &c);
        assert_eq!((client.passes, client.last_seen), (1, T0));
        client_update(&mut client, retried, 0, T0 + 3600, &c);
        assert_eq!((client.passes, client.last_seen), (2, T0 + 3600));
        // A clock stepped back counts nothing until the hour is over.
        client_update(&mut client, retried, 0, T0 + 100, &c);
        assert_eq!((client.passes, client.last_seen), (2, T0 + 3600));
        for h in 2..5 {
            assert_eq!(client_gate(&mut client, T0 + h * 3600, &c), None);
            client_update(&mut client, retried, 0, T0 + h * 3600, &c);
        }
        assert!(client.is_auto_whitelisted(T0 + 4 * 3600, &c));
    }

    #[test]
    fn awl_off() {
        let c = Config::builder().awl_threshold(0).build().unwrap();
        let mut client = ClientState {
            passes: 1000,
            last_seen: T0,
            ..Default::default()
        };
        assert_eq!(client_gate(&mut client, T0, &c), None);
    }

    #[test]
    fn blasting_counts_rounds_not_recipients() {
        let c = cfg();
        let early = Verdict::new(Reason::EarlyRetry, 200, 0);
        let mut client = ClientState::default();
        // 100 early retries in one second (one transaction, many
        // recipients) are one round.
        for _ in 0..100 {
            assert_eq!(client_update(&mut client, early, 1, T0, &c), early);
        }
        assert_eq!(client.rounds, 1);
        // Rounds 2..=20 stay below the threshold; the 21st blocks.
        for i in 1..20 {
            assert_eq!(client_update(&mut client, early, 1, T0 + i, &c), early);
        }
        let v = client_update(&mut client, early, 1, T0 + 20, &c);
        assert_eq!(
            (v.action, v.reason, v.retry_after),
            (Action::Block, Reason::Blocked, 3600)
        );
        let v = client_gate(&mut client, T0 + 21, &c).unwrap();
        assert_eq!((v.reason, v.retry_after), (Reason::Blocked, 3599));
        assert_eq!(client_gate(&mut client, T0 + 20 + 3600, &c), None);
    }

    #[test]
    fn blast_rounds_reset_after_a_delay_period() {
        let c = cfg();
        let early = Verdict::new(Reason::EarlyRetry, 200, 0);
        let mut client = ClientState::default();
        // 20 rounds every 20 s: 400 s > one 300 s period, so never 21 in one.
        for i in 0..40 {
            let v = client_update(&mut client, early, 1, T0 + i * 20, &c);
            assert_eq!(v.reason, Reason::EarlyRetry, "round {i}");
        }
        // Exchange 2003's three glitch retries stay far below.
        let mut exchange = ClientState::default();
        for (copies, t) in [(1, T0), (2, T0 + 2), (3, T0 + 5)] {
            assert_eq!(client_update(&mut exchange, early, copies, t, &c), early);
        }
    }

    /// Issue 16: 30 copies within 2 s were never blocked (rounds count
    /// distinct seconds only). More than `blast_copies` early retries of
    /// one triplet block its network, whatever the seconds.
    #[test]
    fn blasted_copies_of_one_message_block_at_once() {
        let c = cfg();
        let early = Verdict::new(Reason::EarlyRetry, 299, 0);
        let mut client = ClientState::default();
        for copies in 1..=5u8 {
            assert_eq!(client_update(&mut client, early, copies, T0, &c), early);
        }
        let v = client_update(&mut client, early, 6, T0 + 1, &c);
        assert_eq!((v.reason, v.retry_after), (Reason::Blocked, 3600));
        // Copies alone, with rounds off; and off entirely with 0.
        let rounds_off = Config::builder().blast_threshold(0).build().unwrap();
        let mut client = ClientState::default();
        let v = client_update(&mut client, early, 6, T0, &rounds_off);
        assert_eq!(v.reason, Reason::Blocked);
        assert_eq!(client.rounds, 0, "rounds are not counted when off");
        let off = Config::builder()
            .blast_copies(0)
            .blast_threshold(0)
            .build()
            .unwrap();
        let mut client = ClientState::default();
        assert_eq!(client_update(&mut client, early, 200, T0, &off), early);
        assert_eq!(client, ClientState::default());
    }
}
