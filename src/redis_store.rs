//! The shared store: triplet and client-network records kept in Redis, so
//! that several MX hosts greylist as one.
//!
//! One check is one round trip: `src/redis_check.lua`, loaded once and
//! called by its SHA (EVALSHA), reads both records, applies the rules of
//! [`crate::rules::check`] and writes what changed, atomically. Keys are
//! the engine's keyed hashes in hex under a prefix
//! (`greylist:t:<32 hex>` for a triplet, `greylist:c:<32 hex>` for a
//! network), so every host with the same secret finds the same records,
//! and Redis never sees an address. Redis TTLs collect records the rules no
//! longer need.
//!
//! When Redis fails, is slow, or is known to be down, [`RedisStore::check`]
//! says so within the configured timeout and the engine answers from its
//! local table. Connections are pooled; a failed one is dropped (with the
//! whole pool, after an I/O error: a restarted server closed them all),
//! and after a failed connect no check tries again for
//! `redis_retry_interval`, so an outage costs each check nothing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{Config, FailMode};
use crate::rules::{Action, Reason, Verdict};
use crate::table::{hasher, Hashed, Sharded};

/// The check script, whose SHA-1 the store calls it by.
pub const SCRIPT: &str = include_str!("redis_check.lua");

/// Idle connections kept for reuse; more callers at once open more, and
/// the extra ones are closed when returned.
const MAX_IDLE: usize = 64;

/// Counters of the store, read by [`crate::Engine::stats`].
#[derive(Default)]
pub(crate) struct BackendCounters {
    pub(crate) round_trips: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
}

/// A connection, and whether its read timeout is shorter than the store's
/// (set so for the first call after a slow connect).
struct Conn {
    con: redis::Connection,
    shortened: bool,
}

/// The Redis store of one engine.
pub(crate) struct RedisStore {
    client: redis::Client,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    retry_interval: Duration,
    idle: Mutex<Vec<Conn>>,
    started: Instant,
    /// Milliseconds after `started` before which no connect is tried.
    retry_at: AtomicU64,
    pub(crate) counters: BackendCounters,
    cache: PassCache,
}

/// Why a check got no answer from Redis.
enum Failure {
    /// Within the retry interval after a failed connect: not tried.
    Down,
    /// Tried and failed; the error was counted.
    Failed,
}

impl RedisStore {
    /// The store of an engine with these settings (whose URL
    /// [`crate::ConfigBuilder::build`] has already checked). Nothing is
    /// connected yet: the first check connects.
    pub(crate) fn new(config: &Config) -> Option<RedisStore> {
        let url = config.redis.as_ref()?;
        let client = redis::Client::open(url.0.as_str())
            .expect("the Redis URL was checked when the configuration was built");
        Some(RedisStore {
            client,
            script: redis::Script::new(SCRIPT),
            prefix: config.redis_prefix.clone(),
            timeout: config.redis_timeout,
            retry_interval: config.redis_retry_interval,
            idle: Mutex::new(Vec::new()),
            started: Instant::now(),
            retry_at: AtomicU64::new(0),
            counters: BackendCounters::default(),
            cache: PassCache::new(config.pass_cache_entries, config.pass_cache_ttl),
        })
    }

    /// The Redis key of a record: prefix, kind (`t` triplet, `c` client
    /// network), the 128-bit keyed hash in hex.
    pub(crate) fn key(&self, kind: char, hash: u128) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 34);
        key.push_str(&self.prefix);
        key.push(kind);
        key.push(':');
        write!(key, "{hash:032x}").expect("writing to a String cannot fail");
        key
    }

    /// A pass known from the local cache, without a round trip.
    pub(crate) fn cached_pass(&self, triplet_key: u128, now: u32) -> Option<Verdict> {
        if !self.cache.contains(triplet_key, now) {
            return None;
        }
        self.counters.cache_hits.fetch_add(1, Relaxed);
        Some(Verdict::new(Reason::Passed, 0, 0))
    }

    /// Runs the check script for a triplet (or, with `trap`, blocks its
    /// network). `None`: Redis did not answer, in time or at all.
    pub(crate) fn check(
        &self,
        triplet_key: u128,
        net_key: u128,
        trap: bool,
        now: u32,
        config: &Config,
    ) -> Option<Verdict> {
        let started = Instant::now();
        let mut conn = self.connection(started).ok()?;
        let mut call = self.script.prepare_invoke();
        call.key(self.key('t', triplet_key))
            .key(self.key('c', net_key))
            .arg(if trap { "trap" } else { "check" })
            .arg(now)
            .arg(config.delay)
            .arg(config.retry_window)
            .arg(config.pass_ttl)
            .arg(config.awl_threshold)
            .arg(config.awl_ttl)
            .arg(config.blast_threshold)
            .arg(config.block_time);
        self.counters.round_trips.fetch_add(1, Relaxed);
        let reply: Result<(u32, u32, u32), _> = call.invoke(&mut conn.con);
        let verdict = match reply {
            Ok((reason, retry_after, delayed)) => {
                match Reason::ALL.into_iter().find(|r| *r as u32 == reason) {
                    Some(reason) => Verdict::new(reason, retry_after, delayed),
                    None => {
                        // A script from another version under our SHA can
                        // not happen; count it as an error all the same.
                        self.counters.errors.fetch_add(1, Relaxed);
                        return None;
                    }
                }
            }
            Err(e) => {
                self.failed(&e);
                return None;
            }
        };
        self.put_back(conn);
        if verdict.action == Action::Pass {
            self.cache.insert(triplet_key, now);
        }
        Some(verdict)
    }

    /// An idle connection, or a new one (unless Redis is known to be down).
    fn connection(&self, started: Instant) -> Result<Conn, Failure> {
        if let Some(conn) = self.idle.lock().pop() {
            return Ok(conn);
        }
        let since_start = |t: Instant| t.duration_since(self.started).as_millis() as u64;
        if since_start(started) < self.retry_at.load(Relaxed) {
            return Err(Failure::Down);
        }
        let connected = self
            .client
            .get_connection_with_timeout(self.timeout)
            .and_then(|con| {
                // What is left of this check's time is the first call's.
                let left = self
                    .timeout
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1));
                con.set_write_timeout(Some(self.timeout))?;
                con.set_read_timeout(Some(left))?;
                Ok(Conn {
                    con,
                    shortened: left < self.timeout,
                })
            });
        connected.map_err(|e| {
            self.failed(&e);
            let retry = Instant::now() + self.retry_interval;
            self.retry_at.store(since_start(retry), Relaxed);
            Failure::Failed
        })
    }

    /// Returns a connection that answered to the pool.
    fn put_back(&self, mut conn: Conn) {
        if conn.shortened {
            if conn.con.set_read_timeout(Some(self.timeout)).is_err() {
                return;
            }
            conn.shortened = false;
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Counts a failure; after an I/O error the idle connections are
    /// dropped too (a restarted or unreachable server broke them all).
    fn failed(&self, e: &redis::RedisError) {
        if e.is_timeout() {
            self.counters.timeouts.fetch_add(1, Relaxed);
        } else {
            self.counters.errors.fetch_add(1, Relaxed);
        }
        if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() {
            self.idle.lock().clear();
        }
    }
}

/// What a check answers when Redis did not: the local table's verdict,
/// marked [`Reason::BackendUnavailable`]; failing open turns a defer into
/// a pass. Blocks (a trap, or blasting this host saw) stay blocks.
pub(crate) fn fallback(local: Verdict, mode: FailMode) -> Verdict {
    let (action, retry_after) = match (local.action, mode) {
        (Action::Defer, FailMode::Open) => (Action::Pass, 0),
        (action, _) => (action, local.retry_after),
    };
    Verdict {
        action,
        reason: Reason::BackendUnavailable,
        retry_after,
        delayed: local.delayed,
    }
}

/// Triplets this host saw pass, and when; bounded in entries and in time.
struct PassCache {
    table: Sharded<CachedPass>,
    cap_per_shard: usize,
    ttl: u32,
}

#[derive(Clone, Copy)]
struct CachedPass {
    key: u128,
    at: u32,
}

impl Hashed for CachedPass {
    fn hash(&self) -> u64 {
        self.key as u64
    }
}

/// Shards of the pass cache: enough that callers rarely meet on a lock.
const CACHE_SHARDS: usize = 64;

impl PassCache {
    fn new(entries: usize, ttl: u32) -> PassCache {
        let shards = if entries == 0 || ttl == 0 {
            1
        } else {
            CACHE_SHARDS.min(entries.next_power_of_two())
        };
        PassCache {
            table: Sharded::new(shards),
            cap_per_shard: if ttl == 0 { 0 } else { entries / shards },
            ttl,
        }
    }

    fn fresh(&self, at: u32, now: u32) -> bool {
        (0..=i64::from(self.ttl)).contains(&(i64::from(now) - i64::from(at)))
    }

    fn contains(&self, key: u128, now: u32) -> bool {
        if self.cap_per_shard == 0 {
            return false;
        }
        let hash = key as u64;
        let table = self.table.lock(self.table.index(hash));
        table
            .find(hash, |e| e.key == key)
            .is_some_and(|e| self.fresh(e.at, now))
    }

    fn insert(&self, key: u128, now: u32) {
        if self.cap_per_shard == 0 {
            return;
        }
        let hash = key as u64;
        let mut table = self.table.lock(self.table.index(hash));
        if let Some(e) = table.find_mut(hash, |e| e.key == key) {
            e.at = now;
            return;
        }
        if table.len() >= self.cap_per_shard {
            table.retain(|e| self.fresh(e.at, now));
            if table.len() >= self.cap_per_shard {
                // Still full of fresh passes: start this shard over rather
                // than scan for the oldest on every insert.
                table.clear();
            }
        }
        table.insert_unique(hash, CachedPass { key, at: now }, hasher);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u32 = 1_700_000_000;

    #[test]
    fn cache_answers_within_its_lifetime_only() {
        let cache = PassCache::new(1000, 300);
        cache.insert(7, T0);
        assert!(cache.contains(7, T0));
        assert!(cache.contains(7, T0 + 300));
        assert!(!cache.contains(7, T0 + 301));
        assert!(!cache.contains(7, T0 - 1), "a clock that went back misses");
        assert!(!cache.contains(8, T0));
    }

    #[test]
    fn cache_stays_within_its_size() {
        let cache = PassCache::new(1000, 300);
        for key in 0..100_000u128 {
            cache.insert(
                key.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
                T0,
            );
            assert!(cache.len() <= 1000);
        }
        let off = PassCache::new(0, 300);
        off.insert(1, T0);
        assert!(!off.contains(1, T0));
        let off = PassCache::new(1000, 0);
        off.insert(1, T0);
        assert!(!off.contains(1, T0));
    }

    #[test]
    fn fallback_fails_open_or_defers() {
        let new = Verdict::new(Reason::New, 300, 0);
        let v = fallback(new, FailMode::Open);
        assert_eq!(
            (v.action, v.reason, v.retry_after),
            (Action::Pass, Reason::BackendUnavailable, 0)
        );
        let v = fallback(new, FailMode::Defer);
        assert_eq!(
            (v.action, v.reason, v.retry_after),
            (Action::Defer, Reason::BackendUnavailable, 300)
        );
        let retried = fallback(Verdict::new(Reason::Retried, 0, 301), FailMode::Defer);
        assert_eq!((retried.action, retried.delayed), (Action::Pass, 301));
        let trapped = fallback(Verdict::new(Reason::Trapped, 3600, 0), FailMode::Open);
        assert_eq!(trapped.action, Action::Block);
    }

    #[test]
    fn keys_are_prefixed_hex() {
        let config = Config::builder()
            .redis("redis://127.0.0.1:1/")
            .redis_prefix("mx:")
            .shared_secret(crate::Secret::from_bytes([1; 16]))
            .build()
            .unwrap();
        let store = RedisStore::new(&config).unwrap();
        assert_eq!(store.key('t', 0xab), format!("mx:t:{:0>32}", "ab"));
        assert_eq!(
            store.key('c', u128::MAX),
            format!("mx:c:{}", "f".repeat(32))
        );
    }
}
