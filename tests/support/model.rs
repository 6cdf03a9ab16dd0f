//! The model-based test's parts: random sequences of checks, sweeps and
//! clock jumps (forwards and backwards), compared verdict by verdict with a
//! plain reference implementation of DESIGN.md's rules that keys on
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
            )| {
                Settings {
                    delay,
                    retry_window,
                    pass_ttl,
                    awl_threshold,
                    awl_ttl,
                    blast_threshold,
                    block_time,
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
}

/// DESIGN.md's rules, written as plainly as possible.
struct Model {
    s: Settings,
    triplets: HashMap<(String, String, String), RefTriplet>,
    clients: HashMap<String, RefClient>,
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
        let known = self
            .triplets
            .get(&key)
            .cloned()
            .filter(|t| !self.triplet_expired(t, now));
        let Some(mut t) = known else {
            // Rules 3 and 6.
            let fresh = RefTriplet {
                first_seen: now,
                last_seen: now,
                early_retries: 0,
                passed: false,
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
            // The network's record is kept (lost mail is credited to it).
            if s.blast_threshold == 0 {
                self.clients.entry(net.to_string()).or_default();
                return answer;
            }
            let c = self.client_to_write(net, now);
            let period = now - c.round_start;
            if c.rounds == 0 || period < 0 || period >= s.delay {
                c.round_start = now;
                c.rounds = 0;
            }
            if c.rounds == 0 || c.last_round != now {
                c.rounds += 1;
                c.last_round = now;
            }
            if c.rounds > s.blast_threshold {
                c.blocked_until = now + s.block_time;
                c.rounds = 0;
                return (Action::Block, Reason::Blocked, s.block_time as u32, 0);
            }
            return answer;
        }
        // Rule 5; passes are counted only for the auto-whitelist.
        t.passed = true;
        self.triplets.insert(key, t);
        if s.awl_threshold == 0 {
            return (Action::Pass, Reason::Retried, 0, waited as u32);
        }
        let awl_ttl = s.awl_ttl;
        let c = self.client_to_write(net, now);
        if c.last_pass.is_none_or(|p| now - p > awl_ttl) {
            c.passes = 0;
        }
        c.passes += 1;
        c.last_pass = Some(c.last_pass.map_or(now, |p| p.max(now)));
        (Action::Pass, Reason::Retried, 0, waited as u32)
    }

    fn sweep(&mut self, now: i64) -> u64 {
        let expired: Vec<_> = self
            .triplets
            .iter()
            .filter(|(_, t)| self.triplet_expired(t, now))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        for (k, t) in &expired {
            self.triplets.remove(k);
            if !t.passed && t.early_retries > 0 {
                if let Some(c) = self.clients.get_mut(&k.0) {
                    c.last_lost = Some(c.last_lost.map_or(t.last_seen, |l| l.max(t.last_seen)));
                }
            }
        }
        let s = self.s;
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
            blocked || awl || rounds || lost
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
        .block_time(settings.block_time as u32)
        .shards(4);
    let config = extra(config).build().unwrap();
    let engine = Engine::new(config);
    let mut model = Model {
        s: settings,
        triplets: HashMap::new(),
        clients: HashMap::new(),
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
