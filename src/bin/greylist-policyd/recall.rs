//! Who lost mail: the daemon remembers the sender and recipient of each
//! early retry (only a triplet with early retries can become lost mail)
//! by its triplet key, so that when the engine reports the triplet lost
//! (an event carrying the key) the log line and the lost-mail report can
//! name them. Only in memory, never in the snapshot or Redis (where the
//! engine keeps keyed hashes only), and bounded: the oldest triplets are
//! forgotten first, one client network cannot take more than
//! [`PER_NETWORK`] places (a sender cannot flush the others out), and each
//! network keeps a few samples of its lost mail, dropped when that mail
//! is recovered.
//!
//! The triplets are kept in [`SHARDS`] parts by key, each with its own
//! lock, its share of the places and its own order of age: every
//! connection's early retries come here, and under one lock a blast of
//! them kept the connections waiting for each other.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;

/// Triplets with early retries remembered (the oldest of their shard go
/// first): at most about 20,000 x 3 fields of [`FIELD`] bytes, some 10 MB.
pub const PENDING: usize = 20_000;
/// Places one client network may take of [`PENDING`].
pub const PER_NETWORK: usize = 256;
/// Parts the triplets are kept in, each with [`PENDING`] / `SHARDS` places,
/// [`PER_NETWORK`] / `SHARDS` of them for one network.
pub const SHARDS: usize = 16;
/// Networks with samples of lost mail, and samples each.
pub const NETWORKS: usize = 10_000;
pub const SAMPLES: usize = 3;
/// Longest field kept, in bytes (longer ones are cut at a character).
pub const FIELD: usize = 128;

/// One early retry's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addresses {
    pub client: String,
    pub from: String,
    pub to: String,
}

/// A lost triplet this daemon can name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    #[serde(flatten)]
    pub addresses: Addresses,
    /// Its last attempt (Unix seconds).
    pub last_seen: u32,
    #[serde(skip)]
    key: u128,
}

struct Entry {
    addresses: Addresses,
    network: Box<str>,
    /// Its place in `order` (a key that left and came back has a new one).
    seq: u64,
}

/// One shard of the triplets with early retries.
#[derive(Default)]
struct Pending {
    pending: HashMap<u128, Entry>,
    /// Keys with the place they took, oldest first; a place whose entry
    /// left (or came back with another) is skipped.
    order: VecDeque<(u128, u64)>,
    next_seq: u64,
    per_network: HashMap<Box<str>, usize>,
}

/// The samples of lost mail, by network.
#[derive(Default)]
struct Samples {
    samples: HashMap<String, VecDeque<Sample>>,
    networks: VecDeque<String>,
}

/// The locks are the standard library's, which put a waiter to sleep at
/// once. parking_lot's spin with `sched_yield` first, and on 2 cores with a
/// thread per connection a holder preempted amid the spinners left early
/// retries waiting 1.7 ms at the 99th percentile (8 connections of early
/// retries, `benches/policy_load.rs` with the same seed twice).
pub struct Recall {
    shards: Box<[Mutex<Pending>]>,
    samples: Mutex<Samples>,
}

impl Default for Recall {
    fn default() -> Self {
        Recall {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            samples: Mutex::default(),
        }
    }
}

/// A lock (a panic while it was held left nothing half-done that matters:
/// at worst an entry's place or count is off by one).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An address as the log shows it: lossy UTF-8, cut to [`FIELD`] bytes.
fn text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut end = s.len().min(FIELD);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl Pending {
    /// Takes a key out, giving back its network's place.
    fn take(&mut self, key: u128) -> Option<Entry> {
        let entry = self.pending.remove(&key)?;
        if let Some(n) = self.per_network.get_mut(&entry.network) {
            *n -= 1;
            if *n == 0 {
                self.per_network.remove(&entry.network);
            }
        }
        Some(entry)
    }
}

impl Recall {
    /// The shard of `key` (a keyed hash: its low bits are as good as any).
    fn shard(&self, key: u128) -> MutexGuard<'_, Pending> {
        lock(&self.shards[key as usize % SHARDS])
    }

    /// A request from `client`, of client network `network`, was deferred
    /// as an early retry.
    pub fn deferred(&self, key: u128, network: &str, client: &str, from: &[u8], to: &[u8]) {
        let mut g = self.shard(key);
        let inner = &mut *g;
        if inner.pending.contains_key(&key)
            || inner
                .per_network
                .get(network)
                .is_some_and(|n| *n >= PER_NETWORK / SHARDS)
        {
            return;
        }
        while inner.pending.len() >= PENDING / SHARDS {
            let Some((old, seq)) = inner.order.pop_front() else {
                break;
            };
            if inner.pending.get(&old).is_some_and(|e| e.seq == seq) {
                inner.take(old);
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.pending.insert(
            key,
            Entry {
                addresses: Addresses {
                    client: text(client.as_bytes()),
                    from: text(from),
                    to: text(to),
                },
                network: network.into(),
                seq,
            },
        );
        // The network's name is copied only for its first place.
        match inner.per_network.get_mut(network) {
            Some(n) => *n += 1,
            None => {
                inner.per_network.insert(network.into(), 1);
            }
        }
        inner.order.push_back((key, seq));
        // Places whose entries left stay in the order until they reach its
        // front: drop them when they outnumber the rest.
        if inner.order.len() > 2 * (PENDING / SHARDS) {
            let pending = &inner.pending;
            inner
                .order
                .retain(|(k, seq)| pending.get(k).is_some_and(|e| e.seq == *seq));
        }
    }

    /// A triplet passed: it is not lost mail.
    pub fn passed(&self, key: u128) {
        self.shard(key).take(key);
    }

    /// A triplet was judged lost at `last_seen` (its last attempt): its
    /// addresses, if remembered, which become one of its network's samples.
    pub fn lost(&self, key: u128, network: &str, last_seen: u32) -> Option<Addresses> {
        let found = self.shard(key).take(key)?.addresses;
        let mut g = lock(&self.samples);
        let inner = &mut *g;
        if !inner.samples.contains_key(network) {
            while inner.samples.len() >= NETWORKS {
                match inner.networks.pop_front() {
                    Some(old) => {
                        inner.samples.remove(&old);
                    }
                    None => break,
                }
            }
            inner.networks.push_back(network.to_string());
        }
        let samples = inner.samples.entry(network.to_string()).or_default();
        if samples.len() >= SAMPLES {
            samples.pop_front();
        }
        samples.push_back(Sample {
            addresses: found.clone(),
            last_seen,
            key,
        });
        Some(found)
    }

    /// A lost triplet's late retry passed: it is no sample of lost mail.
    pub fn recovered(&self, key: u128, network: &str) {
        if let Some(samples) = lock(&self.samples).samples.get_mut(network) {
            samples.retain(|s| s.key != key);
        }
    }

    /// The latest lost mail of a network this daemon can name.
    pub fn samples(&self, network: &str) -> Vec<Sample> {
        lock(&self.samples)
            .samples
            .get(network)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize, usize) {
        let (mut pending, mut order) = (0, 0);
        for shard in self.shards.iter() {
            let g = lock(shard);
            (pending, order) = (pending + g.pending.len(), order + g.order.len());
        }
        (pending, order, lock(&self.samples).samples.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "192.0.2.0/24";

    #[test]
    fn lost_mail_is_named_sampled_and_unsampled_when_recovered() {
        let r = Recall::default();
        r.deferred(1, NET, "192.0.2.10", b"a@corp.example", b"u@y.net");
        r.deferred(1, NET, "192.0.2.10", b"a@corp.example", b"u@y.net");
        r.deferred(2, NET, "192.0.2.11", b"b@corp.example", b"v@y.net");
        r.passed(2);
        assert_eq!(r.lost(2, NET, 5), None, "it passed");
        let a = r.lost(1, NET, 7).unwrap();
        assert_eq!(
            (a.from.as_str(), a.to.as_str()),
            ("a@corp.example", "u@y.net")
        );
        assert_eq!(r.lost(1, NET, 7), None, "judged once");
        assert_eq!(r.samples(NET).len(), 1);
        assert_eq!(
            (r.samples(NET)[0].last_seen, &r.samples(NET)[0].addresses),
            (7, &a)
        );
        assert!(r.samples("198.51.100.0/24").is_empty());
        r.recovered(1, NET);
        assert!(r.samples(NET).is_empty(), "recovered mail is no sample");
    }

    /// Review of issue 19: one sender could flush every other network's
    /// early retries out of the memory.
    #[test]
    fn one_network_cannot_flush_the_others() {
        let r = Recall::default();
        r.deferred(1, NET, "192.0.2.10", b"a@corp.example", b"u@y.net");
        for key in 2..(2 * PENDING as u128) {
            r.deferred(
                key,
                "203.0.113.0/24",
                "203.0.113.9",
                b"s@spam.example",
                b"u@y.net",
            );
        }
        assert!(r.lost(1, NET, 9).is_some(), "still remembered");
        assert_eq!(r.len().0, PER_NETWORK);
    }

    /// Review of issue 19: a key that left and came back had two places in
    /// the eviction order, and was evicted by its stale one. (Keys that
    /// are multiples of [`SHARDS`] share a shard and its order.)
    #[test]
    fn a_key_that_comes_back_keeps_its_new_place() {
        let r = Recall::default();
        let k = |i: usize| (i * SHARDS) as u128;
        let places = PENDING / SHARDS;
        r.deferred(k(0), NET, "192.0.2.1", b"a@x", b"b@y");
        r.passed(k(0));
        for i in 1..places {
            r.deferred(k(i), &format!("net{}", i / 10), "192.0.2.1", b"a@x", b"b@y");
        }
        r.deferred(k(0), NET, "192.0.2.1", b"a@x", b"b@y");
        // Full: the next one evicts the oldest place, the stale one of
        // key 0 (skipped), then key 1.
        r.deferred(k(places), "last", "192.0.2.1", b"a@x", b"b@y");
        assert!(r.lost(k(0), NET, 1).is_some(), "key 0 kept its new place");
        assert!(r.lost(k(1), "net0", 1).is_none(), "key 1 was the oldest");
        assert!(r.lost(k(2), "net0", 1).is_some(), "key 2 was not evicted");
    }

    /// Each shard has its own places: a flood of early retries into one
    /// shard evicts none of another's.
    #[test]
    fn a_shard_full_of_early_retries_leaves_the_others_alone() {
        let r = Recall::default();
        r.deferred(1, NET, "192.0.2.1", b"a@x", b"b@y");
        for i in 0..(2 * PENDING) {
            let net = format!("net{i}");
            r.deferred((i * SHARDS) as u128, &net, "192.0.2.1", b"a@x", b"b@y");
        }
        assert_eq!(r.len().0, PENDING / SHARDS + 1);
        assert!(r.lost(1, NET, 1).is_some());
    }

    #[test]
    fn memory_stays_bounded() {
        let r = Recall::default();
        let long = vec![b'x'; 10_000];
        for key in 0..(3 * PENDING as u128) {
            let net = format!("net{}", key / 100);
            r.deferred(key, &net, "192.0.2.1", &long, b"\xff\xfe@y.net");
            if key % 2 == 0 {
                r.passed(key);
            }
        }
        let (pending, order, _) = r.len();
        assert!(
            pending <= PENDING && order <= 2 * PENDING + 1,
            "{pending} {order}"
        );
        for key in (0..(3 * PENDING as u128)).rev().take(2 * NETWORKS) {
            let network = format!("lost{key}");
            for _ in 0..5 {
                r.lost(key, &network, 1);
            }
        }
        let (_, _, networks) = r.len();
        assert!(networks <= NETWORKS);
        let last = format!("lost{}", 3 * PENDING - 1);
        let samples = r.samples(&last);
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].addresses.from.len(), FIELD);
        assert_eq!(samples[0].addresses.to, "\u{fffd}\u{fffd}@y.net");
    }
}
