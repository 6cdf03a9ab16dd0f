//! The model-based test's parts: random sequences of checks, sweeps and
//! clock jumps (forwards and backwards), compared verdict by verdict with a
//! plain reference implementation of the README's decision rules that keys on
//! hand-normalised labels instead of hashes. tests/model.rs runs it on the
//! in-memory table, tests/redis.rs on Redis.

#![allow(dead_code)]

use std::collections::HashMap;

use greylist::{Action, ConfigBuilder, Engine, Reason};
use proptest::prelude::*;

#[path = "rng.rs"]
mod rng;
use rng::Rng;

/// Client IPs with the network each belongs to (/24, /64).
const CLIENTS: &[(&str, &str)] = &[
    ("192.0.2.1", "192.0.2.0/24"),
    ("192.0.2.200", "192.0.2.0/24"),
    ("::ffff:192.0.2.9", "192.0.2.0/24"),
    ("198.51.100.7", "198.51.100.0/24"),
    ("2001:db8::1", "2001:db8::/64"),
    ("2001:db8::ffff:1", "2001:db8::/64"),
    ("2001:db8:1::1", "2001:db8:1::/64"),
];

/// Senders with their normalised identity.
const SENDERS: &[(&str, &str)] = &[
    ("alice@example.org", "alice@example.org"),
    ("Alice+news@Example.ORG", "alice@example.org"),
    ("prvs=1234abcd=alice@example.org", "alice@example.org"),
    (
        "SRS0=HHH=TT=example.org=alice@forwarder.net",
        "alice@example.org",
    ),
    ("", "<>"),
    ("<>", "<>"),
    ("bounce-123-u=example.net@lists.example.com", "bounce-#-u"),
    ("bounce-98765-u=example.net@lists.example.com", "bounce-#-u"),
    ("carol@example.com", "carol@example.com"),
];

/// Recipients with their normalised identity.
const RECIPIENTS: &[(&str, &str)] = &[
    ("bob@example.net", "bob@example.net"),
    ("Bob+tag@EXAMPLE.net", "bob@example.net"),
    ("<bob@example.net>", "bob@example.net"),
    ("dave@example.net", "dave@example.net"),
    ("erin@example.net", "erin@example.net"),
];

const T0: i64 = 1_700_000_000;

/// How far the clock may step back before a stored time counts as corrupt.
const GRACE: i64 = greylist::rules::CLOCK_GRACE as i64;

#[derive(Debug, Clone)]
pub enum Op {
    Check(usize, usize, usize),
    Forward(i64),
    Back(i64),
    Sweep,
}

/// An operation; with `sweeps` false, never a sweep (a shared store
/// expires records by its own TTLs, not by the engine's sweep).
pub fn op(sweeps: bool) -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..CLIENTS.len(), 0..SENDERS.len(), 0..RECIPIENTS.len())
            .prop_map(|(c, s, r)| Op::Check(c, s, r)),
        4 => (0i64..400).prop_map(Op::Forward),
        1 => prop_oneof![Just(3_000i64), Just(20_000), Just(100_000), 0i64..50_000].prop_map(Op::Forward),
        1 => (0i64..5_000).prop_map(Op::Back),
        u32::from(sweeps) => Just(Op::Sweep),
    ]
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub delay: i64,
    pub retry_window: i64,
    pub pass_ttl: i64,
    pub awl_threshold: u32,
    pub awl_ttl: i64,
    pub blast_threshold: u32,
    pub block_time: i64,
    pub blast_copies: u32,
    pub lost_after: i64,
}

pub fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![Just(300i64), 1i64..600],
        prop_oneof![Just(3_000i64), 601i64..30_000],
        1i64..40_000,
        0u32..4,
        1i64..40_000,
        0u32..4,
        1i64..2_000,
        0u32..8,
        prop_oneof![Just(3_600i64), 1i64..40_000],
    )
        .prop_map(
            |(
                delay,
                retry_window,
                pass_ttl,
                awl_threshold,
                awl_ttl,
                blast_threshold,
                block_time,
                blast_copies,
                lost_after,
            )| {
                Settings {
                    delay,
                    retry_window,
                    pass_ttl,
                    awl_threshold,
                    // Passes count an hour apart: with more than one
                    // needed, a shorter lifetime is refused.
                    awl_ttl: if awl_threshold > 1 {
                        awl_ttl.max(3_600)
                    } else {
                        awl_ttl
                    },
                    blast_threshold,
                    block_time,
                    blast_copies,
                    lost_after,
                }
            },
        )
}

#[derive(Debug, Clone)]
struct RefTriplet {
    first_seen: i64,
    last_seen: i64,
    early_retries: u32,
    passed: bool,
    /// Judged lost mail in this cycle.
    lost: bool,
    /// ... and credited to its network's row (only then recovered).
    credited: bool,
}

#[derive(Debug, Clone, Default)]
struct RefClient {
    passes: u32,
    last_pass: Option<i64>,
    blocked_until: i64,
    rounds: u32,
    round_start: i64,
    last_round: i64,
    last_lost: Option<i64>,
    lost_count: u64,
    last_early: Option<i64>,
}

/// The decision rules (README, "The decision"), written as plainly as possible.
struct Model {
    s: Settings,
    triplets: HashMap<(String, String, String), RefTriplet>,
    clients: HashMap<String, RefClient>,
    lost_mail: u64,
    lost_recovered: u64,
}

type Answer = (Action, Reason, u32, u32);

impl Model {
    /// Past its lifetime, or stored further ahead than the rules ever
    /// store it (a clock that jumped: treated as corrupt).
    fn triplet_expired(&self, t: &RefTriplet, now: i64) -> bool {
        if t.passed {
            now - t.last_seen > self.s.pass_ttl || t.last_seen - now > self.s.pass_ttl + GRACE
        } else {
            now - t.first_seen > self.s.retry_window || t.first_seen - now > self.s.delay + GRACE
        }
    }

    /// Lost mail: pending, early retries (at most blast_copies when that
    /// rule is on), its time not corrupt, and no attempt for lost_after
    /// after the delay, or its window ran out.
    fn is_lost(&self, t: &RefTriplet, now: i64) -> bool {
        let s = self.s;
        let copies = t.early_retries.min(255);
        !t.passed
            && copies > 0
            && (s.blast_copies == 0 || copies <= s.blast_copies)
            && t.first_seen - now <= s.delay + GRACE
            && (now - t.first_seen >= s.delay + s.lost_after || self.triplet_expired(t, now))
    }

    /// Credits a lost triplet to its network, unless the network is or was
    /// blocked (then its early retries were a spammer's); whether a report
    /// row got it.
    fn credit_lost(&mut self, net: &str, t: &RefTriplet, now: i64) -> bool {
        let seen = self.clients.get(net).map(|c| self.repaired(c, now));
        if seen.is_some_and(|c| c.blocked_until != 0) {
            return false;
        }
        self.lost_mail += 1;
        let Some(c) = self.clients.get_mut(net) else {
            return false;
        };
        c.lost_count += 1;
        c.last_lost = Some(c.last_lost.map_or(t.last_seen, |l| l.max(t.last_seen)));
        true
    }

    /// How long a network's record waits after its latest early retry.
    fn waiting(&self) -> i64 {
        (self.s.delay + self.s.lost_after).max(self.s.retry_window)
    }

    fn awl_alive(&self, c: &RefClient, now: i64) -> bool {
        c.last_pass.is_some_and(|t| now - t <= self.s.awl_ttl)
    }

    /// The network's record as the rules see it at `now`: times further
    /// ahead than the setting they serve are corrupt, and count as unset.
    /// Stored that way only when a check writes the record.
    fn repaired(&self, c: &RefClient, now: i64) -> RefClient {
        let s = self.s;
        let mut c = c.clone();
        if c.blocked_until - now > s.block_time.max(1) + GRACE {
            c.blocked_until = 0;
        }
        if c.last_pass.is_some_and(|t| t - now > s.awl_ttl + GRACE) {
            (c.passes, c.last_pass) = (0, None);
        }
        if c.round_start - now > s.delay + GRACE {
            (c.round_start, c.rounds, c.last_round) = (0, 0, 0);
        }
        c
    }

    /// The network's record, repaired, to be written.
    fn client_to_write(&mut self, net: &str, now: i64) -> &mut RefClient {
        let c = self.clients.entry(net.to_string()).or_default().clone();
        let repaired = self.repaired(&c, now);
        let stored = self.clients.get_mut(net).unwrap();
        *stored = repaired;
        stored
    }

    fn check(&mut self, net: &str, sender: &str, rcpt: &str, now: i64) -> Answer {
        let s = self.s;
        // Rules 1 and 2.
        if let Some(c) = self.clients.get(net).map(|c| self.repaired(c, now)) {
            if now < c.blocked_until {
                return (
                    Action::Block,
                    Reason::Blocked,
                    (c.blocked_until - now) as u32,
                    0,
                );
            }
            if s.awl_threshold > 0 && c.passes >= s.awl_threshold && self.awl_alive(&c, now) {
                let c = self.client_to_write(net, now);
                c.last_pass = Some(c.last_pass.unwrap().max(now));
                return (Action::Pass, Reason::AutoWhitelisted, 0, 0);
            }
        }
        let key = (net.to_string(), sender.to_string(), rcpt.to_string());
        let stored = self.triplets.get(&key).cloned();
        let known = stored.clone().filter(|t| !self.triplet_expired(t, now));
        let Some(mut t) = known else {
            // An expired cycle no sweep removed: judged before it goes.
            if let Some(old) = stored.filter(|t| !t.lost && self.is_lost(t, now)) {
                let _ = self.credit_lost(net, &old, now);
            }
            // Rules 3 and 6.
            let fresh = RefTriplet {
                first_seen: now,
                last_seen: now,
                early_retries: 0,
                passed: false,
                lost: false,
                credited: false,
            };
            self.triplets.insert(key, fresh);
            return (Action::Defer, Reason::New, s.delay as u32, 0);
        };
        t.last_seen = t.last_seen.max(now);
        if t.passed {
            // Rule 7.
            self.triplets.insert(key, t);
            return (Action::Pass, Reason::Passed, 0, 0);
        }
        let waited = now - t.first_seen;
        if waited < s.delay {
            // Rule 4, and blast counting.
            t.early_retries += 1;
            self.triplets.insert(key, t.clone());
            let answer = (
                Action::Defer,
                Reason::EarlyRetry,
                (t.first_seen + s.delay - now) as u32,
                0,
            );
            // The network's record is kept until the triplet is judged
            // (lost mail is credited to it).
            let waiting = self.waiting();
            let c = self.clients.entry(net.to_string()).or_default();
            c.last_early = Some(match c.last_early {
                // Stored from a clock far ahead: corrupt, replaced.
                Some(e) if e - now > waiting + GRACE => now,
                Some(e) => e.max(now),
                None => now,
            });
            if s.blast_threshold == 0 && s.blast_copies == 0 {
                return answer;
            }
            // Copies of one message (the engine counts up to 255), or
            // rounds: distinct seconds within one delay period.
            let copies = s.blast_copies > 0 && t.early_retries.min(255) > s.blast_copies;
            let c = self.client_to_write(net, now);
            let mut rounds = false;
            if s.blast_threshold > 0 {
                let period = now - c.round_start;
                if c.rounds == 0 || period < 0 || period >= s.delay {
                    c.round_start = now;
                    c.rounds = 0;
                }
                if c.rounds == 0 || c.last_round != now {
                    c.rounds += 1;
                    c.last_round = now;
                }
                rounds = c.rounds > s.blast_threshold;
            }
            if copies || rounds {
                c.blocked_until = now + s.block_time;
                c.rounds = 0;
                return (Action::Block, Reason::Blocked, s.block_time as u32, 0);
            }
            return answer;
        }
        // Rule 5; passes are counted only for the auto-whitelist. A lost
        // triplet that passes is recovered.
        t.passed = true;
        t.lost = false;
        if std::mem::take(&mut t.credited) {
            let seen = self.clients.get(net).map(|c| self.repaired(c, now));
            if seen.is_some_and(|c| c.blocked_until == 0 && c.lost_count > 0) {
                self.clients.get_mut(net).unwrap().lost_count -= 1;
                self.lost_recovered += 1;
            }
        }
        self.triplets.insert(key, t);
        if s.awl_threshold == 0 {
            return (Action::Pass, Reason::Retried, 0, waited as u32);
        }
        let awl_ttl = s.awl_ttl;
        let c = self.client_to_write(net, now);
        if c.last_pass.is_none_or(|p| now - p > awl_ttl) {
            c.passes = 0;
        }
        // At most one counted pass an hour (postgrey), from the last counted.
        if c.passes == 0 || c.last_pass.is_some_and(|p| now - p >= 3600) {
            c.passes += 1;
            c.last_pass = Some(c.last_pass.map_or(now, |p| p.max(now)));
        }
        (Action::Pass, Reason::Retried, 0, waited as u32)
    }

    fn sweep(&mut self, now: i64) -> u64 {
        let lost: Vec<_> = self
            .triplets
            .iter()
            .filter(|(_, t)| !t.lost && self.is_lost(t, now))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        for (k, t) in &lost {
            self.triplets.get_mut(k).unwrap().lost = true;
            if self.credit_lost(&k.0, t, now) {
                self.triplets.get_mut(k).unwrap().credited = true;
            }
        }
        let expired: Vec<_> = self
            .triplets
            .iter()
            .filter(|(_, t)| self.triplet_expired(t, now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.triplets.remove(k);
        }
        let s = self.s;
        let judged = self.waiting();
        let seen: HashMap<String, RefClient> = self
            .clients
            .iter()
            .map(|(net, c)| (net.clone(), self.repaired(c, now)))
            .collect();
        self.clients.retain(|net, c| {
            let lost_at = c.last_lost;
            let c = &seen[net];
            let blocked = now < c.blocked_until;
            let awl = c.last_pass.is_some_and(|t| now - t <= s.awl_ttl);
            let rounds = now - c.round_start <= s.delay;
            let lost =
                lost_at.is_some_and(|t| now - t <= s.awl_ttl && t - now <= s.awl_ttl + GRACE);
            let waiting = c
                .last_early
                .is_some_and(|t| now - t <= judged && t - now <= judged + GRACE);
            blocked || awl || rounds || lost || waiting
        });
        expired.len() as u64
    }
}

/// The in-memory engine against the model.
pub fn run(settings: Settings, ops: Vec<Op>) -> Result<(), TestCaseError> {
    run_with(settings, ops, |b| b, true)
}

/// An engine built with `extra` settings against the model; with
/// `local_table`, its sweeps and entry counts are compared too.
pub fn run_with(
    settings: Settings,
    ops: Vec<Op>,
    extra: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
    local_table: bool,
) -> Result<(), TestCaseError> {
    let config = ConfigBuilder::new()
        .delay(settings.delay as u32)
        .retry_window(settings.retry_window as u32)
        .pass_ttl(settings.pass_ttl as u32)
        .awl_threshold(settings.awl_threshold)
        .awl_ttl(settings.awl_ttl as u32)
        .blast_threshold(settings.blast_threshold)
        .blast_copies(settings.blast_copies)
        .block_time(settings.block_time as u32)
        .lost_after(settings.lost_after as u32)
        .shards(4);
    let config = extra(config).build().unwrap();
    let engine = Engine::new(config);
    let mut model = Model {
        s: settings,
        triplets: HashMap::new(),
        clients: HashMap::new(),
        lost_mail: 0,
        lost_recovered: 0,
    };
    let mut now = T0;
    let mut checks = 0;
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Check(c, s, r) => {
                let v = engine
                    .check(CLIENTS[c].0, SENDERS[s].0, RECIPIENTS[r].0, now)
                    .unwrap();
                let expected = model.check(CLIENTS[c].1, SENDERS[s].1, RECIPIENTS[r].1, now);
                prop_assert_eq!(
                    (v.action, v.reason, v.retry_after, v.delayed),
                    expected,
                    "step {} {:?} at now = T0 + {}",
                    i,
                    op,
                    now - T0
                );
                checks += 1;
            }
            Op::Forward(d) => now += d,
            Op::Back(d) => now -= d,
            Op::Sweep => {
                prop_assert_eq!(engine.sweep(now), model.sweep(now), "sweep at step {}", i);
            }
        }
        if local_table {
            prop_assert_eq!(engine.len(), model.triplets.len(), "len after step {}", i);
            let s = engine.stats();
            prop_assert_eq!(
                (s.lost_mail, s.lost_recovered),
                (model.lost_mail, model.lost_recovered),
                "lost mail after step {}",
                i
            );
            let mut report: Vec<(String, u64, i64)> = engine
                .lost_mail_report(usize::MAX)
                .unwrap()
                .into_iter()
                .map(|r| (r.network.to_string(), r.count, i64::from(r.last_seen)))
                .collect();
            report.sort();
            let mut expected: Vec<(String, u64, i64)> = model
                .clients
                .iter()
                .filter(|(_, c)| c.lost_count > 0)
                .map(|(net, c)| (net.clone(), c.lost_count, c.last_lost.unwrap()))
                .collect();
            expected.sort();
            prop_assert_eq!(report, expected, "lost-mail report after step {}", i);
        }
    }
    prop_assert_eq!(engine.stats().checks, checks);
    Ok(())
}

/// A fixed, long sequence with the default settings, to cover the
/// thresholds proptest's short runs rarely reach; with `sweeps` false, a
/// sweep's turn is a short step forward instead.
pub fn long_run(sweeps: bool) -> (Settings, Vec<Op>) {
    let settings = Settings {
        delay: 300,
        retry_window: 2 * 86_400,
        pass_ttl: 35 * 86_400,
        awl_threshold: 5,
        awl_ttl: 35 * 86_400,
        blast_threshold: 20,
        block_time: 3600,
        blast_copies: 5,
        lost_after: 3600,
    };
    let mut ops = Vec::new();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for _ in 0..20_000 {
        let x = rng.next();
        ops.push(match x % 20 {
            0..=13 => Op::Check(
                (x >> 8) as usize % CLIENTS.len(),
                (x >> 16) as usize % SENDERS.len(),
                (x >> 24) as usize % RECIPIENTS.len(),
            ),
            14..=17 => Op::Forward((x >> 32) as i64 % 120),
            18 => Op::Forward((x >> 32) as i64 % 200_000),
            _ if sweeps => Op::Sweep,
            _ => Op::Forward(1),
        });
    }
    (settings, ops)
}
