//! The shared store: triplet and client-network records kept in Redis, so
//! that several MX hosts greylist as one.
//!
//! One check is one script call: `src/store/redis/check.lua`, loaded once
//! and called by its SHA (EVALSHA), reads both records, applies the rules
//! of [`crate::rules::check`] and writes what changed, atomically. Keys are
//! the engine's keyed hashes in hex under a prefix, the network's hash as
//! a hash tag (`greylist:{<32 hex>}:c` for a network,
//! `greylist:{<32 hex>}:t:<32 hex>` for one of its triplets), so every host
//! with the same secret finds the same records, a network and its triplets
//! share a cluster slot, and Redis never sees an address. Redis TTLs
//! collect records the rules no longer need.
//!
//! An operator's operations (release, forget, a network's report) are one
//! call each of `src/store/redis/admin.lua`, on a connection of their own.
//! Lost mail is judged in Redis, so every MX reports the whole fleet's: the
//! check script keeps each network's *suspects* (triplets with early
//! retries only) and an index of networks by when their first suspect is
//! due; a sweep at any MX settles what is due, atomically per network, so
//! each lost triplet is counted once. The report rows hold the network
//! (`192.0.2.0/24`), never an address.
//!
//! Where Redis is (`target.rs`): one server, the master Sentinel names
//! (`redis+sentinel://`), or a Redis Cluster (`redis+cluster://`). On one
//! server or a Sentinel master, checks share one pipelined connection
//! (`pipeline.rs`); on a Cluster, each check is one script call on the node
//! that holds its network's slot (`cluster.rs`), and the fleet's suspects
//! index, which has a slot of its own, is updated by a second call.
//!
//! When Redis fails, is slow, or is known to be down, a check gets no
//! answer within the timeout and the engine answers from its local table.
//! A failed connection is dropped, failing the calls in flight on it, and
//! made anew for the next calls; after a failed connect no call is tried
//! for `redis_retry_interval`, so an outage costs each check nothing. A
//! Redis that lost the script (restarted, `SCRIPT FLUSH`) is sent it again
//! on the first NOSCRIPT answer, and those calls are sent again.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::{ConnectionLike, Value};

use crate::config::{Config, FailMode};
use crate::events::{Event, EventKind, Events};
use crate::key::{KeyKind, Keys};
use crate::normalize::ClientNet;
use crate::rules::{Action, ClientState, Reason, TripletState, Verdict};
use crate::stats::{Counters, Stats};
use crate::store::{LostMail, NetworkRecord, StoreError};

mod cache;
mod cluster;
pub(crate) mod pipeline;
pub(crate) mod target;

use cache::PassCache;
use cluster::ClusterCalls;
use pipeline::{Failure, Link, Pipelined};
use target::Target;

/// The check script, whose SHA-1 the store calls it by.
pub const SCRIPT: &str = include_str!("check.lua");

/// The operators' and the sweep's script.
pub const ADMIN_SCRIPT: &str = include_str!("admin.lua");

/// Most suspects one settle call judges, and most networks one sweep
/// settles (the rest wait for the next sweep).
const SETTLE_BATCH: u32 = 1000;
const SETTLE_NETWORKS: usize = 10_000;

/// Most networks the lost-mail report reads.
const REPORT_NETWORKS: isize = 10_000;

/// Counters of the store, read by [`crate::Engine::stats`].
#[derive(Default)]
pub(crate) struct StoreCounters {
    pub(crate) round_trips: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) malformed: AtomicU64,
}

/// The script's answer: reason number, retry_after, delayed, how many of
/// the two records were malformed (and treated as absent), flags (1 a lost
/// triplet recovered, 2 a block started), when a new suspect is due, and
/// the triplet's early retries.
type Answer = (u32, u32, u32, u32, u32, u32, u32);

/// How checks reach Redis.
enum Calls {
    /// One pipelined connection (one server, or the Sentinel master).
    Pipelined(Pipelined),
    /// Pooled cluster connections.
    Cluster(ClusterCalls),
}

/// The Redis store of one engine.
pub(crate) struct RedisStore {
    link: Link,
    calls: Calls,
    sha: String,
    prefix: String,
    cache: PassCache,
    config: Config,
    /// Operators' calls and sweeps, on a connection of their own.
    admin: Mutex<Option<Box<dyn ConnectionLike + Send>>>,
    admin_script: redis::Script,
    counters: Counters,
    events: Arc<Events>,
}

/// The settings the scripts take after `now`, in their ARGV order
/// (`src/store/redis/check.lua`): delay, retry window, pass lifetime,
/// auto-whitelist threshold and lifetime, blast threshold, block time,
/// blast copies, lost after.
pub fn script_settings(config: &Config) -> [u32; 9] {
    [
        config.delay,
        config.retry_window,
        config.pass_ttl,
        config.awl_threshold,
        config.awl_ttl,
        config.blast_threshold,
        config.block_time,
        config.blast_copies,
        config.lost_after,
    ]
}

impl RedisStore {
    /// The store of an engine with these settings (whose URL
    /// [`crate::ConfigBuilder::build`] has already checked). Nothing is
    /// connected until the first check.
    pub(crate) fn new(config: &Config, events: Arc<Events>) -> Option<RedisStore> {
        let url = config.redis.as_ref()?;
        let target = Target::new(url, config.redis_ca.as_ref())
            .expect("the Redis URL was checked when the configuration was built");
        let calls = match target {
            Target::Cluster(_) => Calls::Cluster(ClusterCalls::default()),
            _ => Calls::Pipelined(Pipelined::default()),
        };
        Some(RedisStore {
            link: Link::new(target, config.redis_timeout, config.redis_retry_interval),
            calls,
            sha: redis::Script::new(SCRIPT).get_hash().to_string(),
            prefix: config.redis_prefix.clone(),
            cache: PassCache::new(config.pass_cache_entries, config.pass_cache_ttl),
            config: config.clone(),
            admin: Mutex::new(None),
            admin_script: redis::Script::new(ADMIN_SCRIPT),
            counters: Counters::default(),
            events,
        })
    }

    pub(crate) fn counters(&self) -> &StoreCounters {
        &self.link.counters
    }

    /// Adds the store's counters.
    pub(crate) fn add_stats(&self, s: &mut Stats) {
        let c = self.counters();
        s.store_round_trips += c.round_trips.load(Relaxed);
        s.store_errors += c.errors.load(Relaxed);
        s.store_timeouts += c.timeouts.load(Relaxed);
        s.cache_hits += c.cache_hits.load(Relaxed);
        s.store_malformed += c.malformed.load(Relaxed);
        self.counters.add_to(s);
    }

    /// The latest failure talking to Redis, if any.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.link.last_error()
    }

    /// Whether Redis failed lately and is not asked until its retry time.
    pub(crate) fn is_down(&self) -> bool {
        self.link.is_down()
    }

    /// Connects on a connection of its own (within `timeout`) and reads
    /// what would make the store lose records: warnings for the host's
    /// log, or why Redis cannot be reached.
    pub(crate) fn probe(&self, timeout: Duration) -> Result<Vec<String>, String> {
        let mut con = self
            .link
            .target
            .connect_any(timeout)
            .map_err(|e| e.to_string())?;
        let con = &mut *con;
        redis::cmd("PING")
            .query::<Value>(con)
            .map_err(|e| e.to_string())?;
        let mut config = |name: &str| -> Result<String, String> {
            let pair: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query(con)
                .map_err(|e| e.to_string())?;
            pair.get(1)
                .cloned()
                .ok_or_else(|| format!("{name} not reported"))
        };
        let policy = config("maxmemory-policy");
        let maxmemory = config("maxmemory");
        Ok(eviction_warning(policy, maxmemory).into_iter().collect())
    }

    /// What every key of a network begins with: the prefix and the
    /// network's keyed hash in hex as a hash tag, `greylist:{<32 hex>}:`.
    pub(crate) fn base(&self, net_key: u128) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 40);
        key.push_str(&self.prefix);
        write!(key, "{{{net_key:032x}}}:").expect("writing to a String cannot fail");
        key
    }

    /// The network's record.
    pub(crate) fn network_key(&self, net_key: u128) -> String {
        self.base(net_key) + "c"
    }

    /// A triplet's record (under its network's tag).
    pub(crate) fn triplet_key(&self, net_key: u128, triplet_key: u128) -> String {
        let mut key = self.base(net_key);
        write!(key, "t:{triplet_key:032x}").expect("writing to a String cannot fail");
        key
    }

    /// The fleet's index of networks with suspects.
    fn suspects_index(&self) -> String {
        self.prefix.clone() + "suspects"
    }

    /// The fleet's index of networks with lost mail, for the report.
    fn lost_index(&self) -> String {
        self.prefix.clone() + "lost"
    }

    /// A pass known from the local cache, without a round trip.
    pub(crate) fn cached_pass(&self, triplet_key: u128, now: u32) -> Option<Verdict> {
        if !self.cache.contains(triplet_key, now) {
            return None;
        }
        self.counters().cache_hits.fetch_add(1, Relaxed);
        Some(Verdict::new(Reason::Passed, 0, 0))
    }

    /// Runs the check script for a triplet (or, with `trap`, blocks its
    /// network). `None`: Redis did not answer, in time or at all.
    pub(crate) fn check(&self, k: &Keys, trap: bool, now: u32) -> Option<Verdict> {
        let cluster = matches!(self.calls, Calls::Cluster(_));
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(&self.sha)
            .arg(if cluster { 2 } else { 3 })
            .arg(self.triplet_key(k.net_key, k.triplet_key))
            .arg(self.network_key(k.net_key));
        if !cluster {
            command.arg(self.suspects_index());
        }
        command
            .arg(match (trap, k.kind) {
                (true, _) => "trap",
                (false, KeyKind::Network) => "check",
                // A domain key never blocks (see memory.rs).
                (false, _) => "check-domain",
            })
            .arg(now)
            .arg(&script_settings(&self.config)[..])
            .arg(k.net.to_string());
        let outcome = match (&self.calls, &self.link.target) {
            (Calls::Cluster(pool), Target::Cluster(client)) => {
                pool.with(&self.link, client, |con, stale| {
                    let key = self.triplet_key(k.net_key, k.triplet_key);
                    let answer = cluster::eval(con, &key, &command, SCRIPT, stale)?;
                    self.counters().round_trips.fetch_add(1, Relaxed);
                    let answer: Answer = redis::from_redis_value(answer)?;
                    if answer.5 > 0 {
                        self.index_suspect(con, k.net_key, answer.5, now, stale);
                    }
                    Ok(answer)
                })
            }
            (Calls::Pipelined(lane), _) => lane.call(&self.link, command.get_packed_command()),
            (Calls::Cluster(_), _) => Err(Failure::Error),
        };
        let (reason, retry_after, delayed, malformed, flags, _due, early) = match outcome {
            Ok(answer) => answer,
            Err(failure) => {
                let counter = match failure {
                    Failure::Error => &self.counters().errors,
                    Failure::Timeout => &self.counters().timeouts,
                    Failure::Down => return None,
                };
                counter.fetch_add(1, Relaxed);
                return None;
            }
        };
        if malformed > 0 {
            self.counters()
                .malformed
                .fetch_add(u64::from(malformed), Relaxed);
        }
        let Some(reason) = Reason::from_number(reason) else {
            // Another script under our SHA cannot happen; count it anyway.
            self.counters().errors.fetch_add(1, Relaxed);
            return None;
        };
        let verdict = Verdict::new(reason, retry_after, delayed);
        if verdict.action == Action::Pass {
            self.cache.insert(k.triplet_key, now);
        }
        if flags & 1 != 0 {
            self.counters.mine().lost_recovered.fetch_add(1, Relaxed);
            self.events
                .emit(|| Event::recovered(k.net.clone(), now, k.triplet_id().public()));
        }
        if flags & 2 != 0 {
            self.events.emit(|| Event {
                kind: EventKind::BlockStarted,
                network: k.net.clone(),
                reason: if trap {
                    Reason::Trapped
                } else {
                    Reason::Blocked
                },
                at: now,
                count: if trap { 0 } else { early },
                triplet: None,
            });
        }
        Some(verdict)
    }

    /// On a Cluster: indexes a network whose check made a suspect due at
    /// `due` (the check script cannot reach the index's slot). A failure
    /// is counted and noted; the suspect then waits for the network's next
    /// suspect to index it.
    fn index_suspect(
        &self,
        con: &mut redis::cluster::ClusterConnection,
        net_key: u128,
        due: u32,
        now: u32,
        stale: &mut bool,
    ) {
        let index = self.suspects_index();
        let mut call = redis::cmd("EVALSHA");
        call.arg(self.admin_script.get_hash())
            .arg(1)
            .arg(&index)
            .arg("index")
            .arg(now)
            .arg(&script_settings(&self.config)[..])
            .arg(self.base(net_key))
            .arg(due);
        if let Err(e) = cluster::eval(con, &index, &call, ADMIN_SCRIPT, stale) {
            self.counters().errors.fetch_add(1, Relaxed);
            self.link.note(format_args!("indexing a suspect: {e}"));
        }
    }
}

/// A record field the scripts write: a whole number within `u32`.
fn field(text: &str) -> Option<u32> {
    text.parse().ok()
}

/// A triplet record, `first_seen last_seen early_retries passed`; `None`
/// when it is not in the script's format.
pub(crate) fn parse_triplet(text: &str) -> Option<TripletState> {
    let mut it = text.split(' ');
    let (first, last, early, passed) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some(TripletState {
        first_seen: field(first)?,
        last_seen: field(last)?,
        early_retries: u8::try_from(field(early)?).ok()?,
        passed: match passed {
            "0" => false,
            "1" => true,
            _ => return None,
        },
    })
}

/// A network record, `passes last_seen blocked_until round_start rounds
/// last_round`; `None` when it is not in the script's format.
pub(crate) fn parse_client(text: &str) -> Option<ClientState> {
    let f: Vec<u32> = text.split(' ').map(field).collect::<Option<_>>()?;
    let [passes, last_seen, blocked_until, round_start, rounds, last_round] = f[..] else {
        return None;
    };
    Some(ClientState {
        passes,
        last_seen,
        blocked_until,
        round_start,
        rounds,
        last_round,
    })
}

/// The triplet hash at the end of a triplet's key (`...:t:<32 hex>`).
/// The identifier events carry ([`crate::Engine::request_key`]) of a
/// triplet record's name, `<prefix>{<network key>}:t:<triplet key>`.
fn triplet_of_key(key: &str) -> Option<u128> {
    let hex = |h: &str| {
        (h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u128::from_str_radix(h, 16).ok())
            .flatten()
    };
    let (base, triplet) = key.rsplit_once(":t:")?;
    let (_, net) = base.strip_suffix('}')?.rsplit_once('{')?;
    Some(crate::key::TripletId::of(hex(triplet)?, hex(net)?).public())
}

/// An integer in a script's answer.
fn int(v: &Value) -> Option<i64> {
    redis::from_redis_value(v.clone()).ok()
}

impl RedisStore {
    /// Runs `f` on the operators' connection, connected anew when there is
    /// none, within the longer of `redis_timeout` and 2 seconds (an
    /// operator can wait; a check cannot).
    fn admin<T>(
        &self,
        f: impl FnOnce(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let timeout = self.link.timeout.max(Duration::from_secs(2));
        let unavailable = |e: redis::RedisError| {
            self.link.note(&e);
            StoreError::Unavailable(e.to_string())
        };
        let mut guard = self.admin.lock();
        let con = match &mut *guard {
            Some(con) => con,
            none => none.insert(self.link.target.connect_any(timeout).map_err(unavailable)?),
        };
        f(&mut **con).map_err(|e| {
            // A demoted master (Sentinel) is asked again at the next call,
            // and a cluster connection whose slot map is stale is made anew.
            let stale = pipeline::is_readonly(e.kind(), e.detail())
                || matches!(
                    e.kind(),
                    redis::ErrorKind::Server(
                        redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask
                    )
                );
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || stale {
                *guard = None;
            }
            unavailable(e)
        })
    }

    /// One call of the admin script: `mode` on `keys`, with the settings
    /// and `extra` arguments.
    fn admin_call<T: redis::FromRedisValue>(
        &self,
        mode: &str,
        keys: &[&str],
        now: u32,
        extra: &[&str],
    ) -> Result<T, StoreError> {
        self.admin(|con| {
            let mut call = self.admin_script.prepare_invoke();
            for key in keys {
                call.key(*key);
            }
            call.arg(mode)
                .arg(now)
                .arg(&script_settings(&self.config)[..]);
            for arg in extra {
                call.arg(*arg);
            }
            call.invoke(con)
        })
    }

    /// Lets a triplet pass from now on, in Redis.
    pub(crate) fn release(&self, k: &Keys, now: u32) -> Result<(), StoreError> {
        let (t, c) = (
            self.triplet_key(k.net_key, k.triplet_key),
            self.network_key(k.net_key),
        );
        self.admin_call::<i64>("release", &[&t, &c], now, &[])?;
        Ok(())
    }

    /// Forgets a triplet in Redis (and in this host's pass cache); whether
    /// it was known.
    pub(crate) fn forget(&self, k: &Keys) -> Result<bool, StoreError> {
        self.cache.remove(k.triplet_key);
        let (t, c) = (
            self.triplet_key(k.net_key, k.triplet_key),
            self.network_key(k.net_key),
        );
        // `now` plays no part in forgetting.
        Ok(self.admin_call::<i64>("forget", &[&t, &c], 0, &[])? > 0)
    }

    /// Lifts a network's block and passes its pending triplets; how many.
    pub(crate) fn release_client(&self, k: &Keys, now: u32) -> Result<u64, StoreError> {
        let c = self.network_key(k.net_key);
        let n: i64 = self.admin_call("release_client", &[&c], now, &[])?;
        Ok(n.max(0) as u64)
    }

    /// A triplet's record in Redis (a malformed one counts as absent).
    pub(crate) fn triplet_state(&self, k: &Keys) -> Result<Option<TripletState>, StoreError> {
        let t = self.triplet_key(k.net_key, k.triplet_key);
        let text: Option<String> = self.admin(|con| redis::cmd("GET").arg(&t).query(con))?;
        Ok(text.as_deref().and_then(parse_triplet))
    }

    /// A network's record in Redis (a malformed one counts as absent).
    pub(crate) fn client_state(&self, k: &Keys) -> Result<Option<ClientState>, StoreError> {
        let c = self.network_key(k.net_key);
        let text: Option<String> = self.admin(|con| redis::cmd("GET").arg(&c).query(con))?;
        Ok(text.as_deref().and_then(parse_client))
    }

    /// A network's record and its triplets' count in Redis.
    pub(crate) fn network(&self, k: &Keys, now: u32) -> Result<NetworkRecord, StoreError> {
        let c = self.network_key(k.net_key);
        let (record, pending, passed, lost): (Option<String>, u64, u64, u64) =
            self.admin_call("network", &[&c], now, &[])?;
        Ok(NetworkRecord {
            state: record.as_deref().and_then(parse_client),
            pending,
            passed,
            lost_mail: lost,
        })
    }

    /// Judges the fleet's suspects that are due at `now` (see the module
    /// docs): each lost triplet is counted once, by the MX whose sweep
    /// settled it, which emits its event.
    pub(crate) fn settle(&self, now: u32) -> Result<(), StoreError> {
        // Rows live `awl_ttl` after their latest lost triplet (the score):
        // older index entries name rows Redis has expired. The report
        // prunes only what it reads, so without this the index would grow
        // with every network that ever lost mail.
        let expired = i64::from(now) - i64::from(self.config.awl_ttl) - 3600;
        self.admin(|con| {
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(self.lost_index())
                .arg("-inf")
                .arg(format!("({expired}"))
                .query::<i64>(con)
        })?;
        let index = self.suspects_index();
        let mut settled = 0;
        while settled < SETTLE_NETWORKS {
            let bases: Vec<String> = self.admin(|con| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&index)
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(100)
                    .query(con)
            })?;
            if bases.is_empty() {
                break;
            }
            settled += bases.len();
            for base in &bases {
                if let Err(e) = self.settle_one(base, &index, now) {
                    // One network that cannot be settled (a damaged key)
                    // must not hold up the others: it waits an hour.
                    self.link.note(format_args!("settling {base}: {e}"));
                    self.admin(|con| {
                        redis::cmd("ZADD")
                            .arg(&index)
                            .arg(now.saturating_add(3600))
                            .arg(base)
                            .query::<i64>(con)
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Settles one network's due suspects.
    fn settle_one(&self, base: &str, index: &str, now: u32) -> Result<(), StoreError> {
        let reply: Vec<Value> = self.admin_call(
            "settle",
            &[&format!("{base}c")],
            now,
            &[&SETTLE_BATCH.to_string()],
        )?;
        let malformed = || StoreError::Unavailable(format!("malformed settle answer for {base}"));
        let (counted, last, next_due) = match reply.as_slice() {
            [counted, _, last, next, ..] => (
                int(counted).ok_or_else(malformed)?,
                int(last).ok_or_else(malformed)?,
                int(next).ok_or_else(malformed)?,
            ),
            _ => return Err(malformed()),
        };
        self.admin_call::<i64>("reindex", &[index], now, &[base, &next_due.to_string()])?;
        if counted <= 0 {
            return Ok(());
        }
        let last = u32::try_from(last).unwrap_or(0);
        self.admin(|con| {
            redis::cmd("ZADD")
                .arg(self.lost_index())
                .arg(last)
                .arg(base)
                .query::<i64>(con)
        })?;
        self.counters
            .mine()
            .lost_mail
            .fetch_add(counted as u64, Relaxed);
        let net: Option<String> = redis::from_redis_value(reply[1].clone()).ok();
        let Some(network) = net.as_deref().and_then(ClientNet::from_text) else {
            self.counters().malformed.fetch_add(1, Relaxed);
            return Ok(());
        };
        for lost in reply[4..].chunks(3) {
            let [early, at, key] = lost else {
                self.counters().malformed.fetch_add(1, Relaxed);
                continue;
            };
            let key: Option<String> = redis::from_redis_value(key.clone()).ok();
            self.events.emit(|| Event {
                kind: EventKind::LostMail,
                network: network.clone(),
                reason: Reason::EarlyRetry,
                at: int(at).and_then(|t| u32::try_from(t).ok()).unwrap_or(last),
                count: int(early).and_then(|e| u32::try_from(e).ok()).unwrap_or(0),
                triplet: key.as_deref().and_then(triplet_of_key),
            });
        }
        Ok(())
    }

    /// The fleet's lost-mail rows, from every network indexed as having
    /// lost mail (rows that expired leave the index).
    pub(crate) fn lost_rows(&self) -> Result<Vec<LostMail>, StoreError> {
        let index = self.lost_index();
        let bases: Vec<String> = self.admin(|con| {
            redis::cmd("ZREVRANGE")
                .arg(&index)
                .arg(0)
                .arg(REPORT_NETWORKS - 1)
                .query(con)
        })?;
        if bases.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> = self.admin(|con| {
            let row = |base: &String| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(format!("{base}l"))
                    .arg("net")
                    .arg("lost")
                    .arg("last");
                cmd
            };
            if !con.supports_pipelining() {
                // A Cluster: the rows are on many nodes.
                return bases.iter().map(|b| row(b).query(con)).collect();
            }
            let mut pipe = redis::pipe();
            for base in &bases {
                pipe.add_command(row(base));
            }
            pipe.query(con)
        })?;
        let mut report = Vec::new();
        let mut gone = Vec::new();
        for (base, (net, lost, last)) in bases.iter().zip(rows) {
            let count = lost.as_deref().and_then(|l| l.parse::<i64>().ok());
            let network = net.as_deref().and_then(ClientNet::from_text);
            match (network, count) {
                (Some(network), Some(count)) if count > 0 => report.push(LostMail {
                    network,
                    count: count as u64,
                    last_seen: last.as_deref().and_then(field).unwrap_or(0),
                }),
                (_, None) => gone.push(base),
                _ => {}
            }
        }
        if !gone.is_empty() {
            self.admin(|con| redis::cmd("ZREM").arg(&index).arg(&gone).query::<i64>(con))?;
        }
        Ok(report)
    }
}

/// A warning when Redis may evict the engine's records: every record has a
/// TTL, so every policy but `noeviction` can drop passed triplets and
/// blocks once `maxmemory` is reached.
fn eviction_warning(
    policy: Result<String, String>,
    maxmemory: Result<String, String>,
) -> Option<String> {
    let advice = "set maxmemory-policy noeviction (when Redis is full the engine then answers \
                  from its local table), or give the greylist a Redis of its own with room";
    match (policy, maxmemory) {
        (Ok(policy), Ok(max)) if policy == "noeviction" || max == "0" => None,
        (Ok(policy), Ok(max)) => Some(format!(
            "Redis has maxmemory {max} with maxmemory-policy {policy}: when it is full it evicts \
             greylist records (passed triplets, blocks, auto-whitelists); {advice}"
        )),
        (Err(e), _) | (_, Err(e)) => Some(format!(
            "cannot read Redis's maxmemory-policy ({e}); if it can evict keys, greylist records \
             go when it is full: {advice}"
        )),
    }
}

/// What a check answers when Redis did not: the local table's verdict,
/// marked [`Reason::StoreUnavailable`]; failing open turns a defer into
/// a pass. Blocks (a trap, or blasting this host saw) stay blocks.
pub(crate) fn fallback(local: Verdict, mode: FailMode) -> Verdict {
    let (action, retry_after) = match (local.action, mode) {
        (Action::Defer, FailMode::Open) => (Action::Pass, 0),
        (action, _) => (action, local.retry_after),
    };
    Verdict {
        action,
        reason: Reason::StoreUnavailable,
        retry_after,
        ..local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_fails_open_or_defers() {
        let new = Verdict::new(Reason::New, 300, 0);
        let v = fallback(new, FailMode::Open);
        assert_eq!(
            (v.action, v.reason, v.retry_after),
            (Action::Pass, Reason::StoreUnavailable, 0)
        );
        let v = fallback(new, FailMode::Defer);
        assert_eq!(
            (v.action, v.reason, v.retry_after),
            (Action::Defer, Reason::StoreUnavailable, 300)
        );
        let retried = fallback(Verdict::new(Reason::Retried, 0, 301), FailMode::Defer);
        assert_eq!((retried.action, retried.delayed), (Action::Pass, 301));
        let trapped = fallback(Verdict::new(Reason::Trapped, 3600, 0), FailMode::Open);
        assert_eq!(trapped.action, Action::Block);
    }

    #[test]
    fn eviction_policies_that_drop_records_are_warned_of() {
        let ok = |s: &str| Ok(s.to_string());
        assert_eq!(eviction_warning(ok("noeviction"), ok("100mb")), None);
        assert_eq!(eviction_warning(ok("allkeys-lru"), ok("0")), None);
        for policy in [
            "allkeys-lru",
            "allkeys-random",
            "volatile-ttl",
            "volatile-lfu",
        ] {
            let w = eviction_warning(ok(policy), ok("1048576")).unwrap();
            assert!(w.contains(policy) && w.contains("noeviction"), "{w}");
        }
        let w = eviction_warning(Err("unknown command 'CONFIG'".into()), ok("0")).unwrap();
        assert!(w.contains("cannot read"), "{w}");
    }

    #[test]
    fn keys_are_prefixed_hex() {
        let config = Config::builder()
            .redis("redis://127.0.0.1:1/")
            .redis_prefix("mx:")
            .shared_secret(crate::Secret::from_bytes([1; 16]))
            .build()
            .unwrap();
        let store = RedisStore::new(&config, Arc::new(Events::new(1))).unwrap();
        assert_eq!(
            store.triplet_key(1, 0xab),
            format!("mx:{{{:0>32}}}:t:{:0>32}", "1", "ab")
        );
        assert_eq!(
            store.network_key(u128::MAX),
            format!("mx:{{{}}}:c", "f".repeat(32))
        );
    }
}
