//! Where greylisting state lives: the seam between the engine's front and
//! its stores.
//!
//! ```text
//!            Engine (engine.rs): key the request (key.rs, normalize.rs),
//!            consult the lists (lists.rs), count, emit events
//!                               |
//!                      dyn Store (this module)
//!                 /                               \
//!   MemoryStore (memory.rs)             Fallback (fallback.rs)
//!   sharded triplet table,              RedisStore (redis.rs): check script,
//!   client table, gate bits,            pipelined connection, pass cache;
//!   eviction, lost mail,                a MemoryStore for when Redis does not
//!   snapshots (snapshot.rs)             answer, and the fail-open/defer choice
//!                 \                               /
//!                  the rules (rules.rs), once per check;
//!                  the Lua script mirrors them (tests/vectors/rules.txt)
//! ```
//!
//! The seam is a trait object, not an enum: the engine holds one
//! `Box<dyn Store>` chosen in one constructor (`store::open`, the only place the
//! `redis` feature appears), and a store is free to be anything that can
//! answer every operation below. One indirect call per check costs about a
//! nanosecond, against the 60 ns of a check; an enum would spread the
//! feature over every match. Each store calls the pure rules itself, since
//! Redis must apply them inside its script to stay atomic.
//!
//! Every store answers every operation: a check, release, release of a
//! network, forget, a triplet's and a network's state, a sweep (which also
//! judges lost mail), the lost-mail rows and its own counters. An operator's
//! operation that the store cannot carry out (Redis down) is an error
//! ([`StoreError::Unavailable`]), never a silent no-op.

use std::fmt;
use std::sync::Arc;

use crate::config::Config;
use crate::events::Events;
use crate::key::Keys;
use crate::normalize::{ClientNet, InputError};
use crate::rules::{ClientState, TripletState, Verdict};
use crate::stats::Stats;

#[cfg(feature = "redis")]
mod fallback;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub mod redis;

pub(crate) use memory::MemoryStore;

/// Mail that a client network most likely lost (see
/// [`Engine::lost_mail_report`](crate::Engine::lost_mail_report)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostMail {
    /// The client network.
    pub network: ClientNet,
    /// Its triplets that became lost mail, less those recovered by a late
    /// retry.
    pub count: u64,
    /// The last attempt of the latest such triplet (Unix seconds).
    pub last_seen: u32,
}

/// A network's record and its triplets, as a store keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NetworkRecord {
    pub(crate) state: Option<ClientState>,
    /// Triplets waiting for a retry, and passed ones (neither expired).
    pub(crate) pending: u64,
    pub(crate) passed: u64,
    /// Its lost-mail count (the report row's).
    pub(crate) lost_mail: u64,
}

/// Why an operation on the engine's state failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// An argument could not be parsed (nothing was done).
    Input(InputError),
    /// The shared store did not answer, or answered with an error; nothing
    /// is known to have been done there (the local table was changed).
    Unavailable(String),
}

impl From<InputError> for StoreError {
    fn from(e: InputError) -> Self {
        StoreError::Input(e)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Input(e) => e.fmt(f),
            StoreError::Unavailable(e) => write!(f, "the shared store did not answer: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Input(e) => Some(e),
            StoreError::Unavailable(_) => None,
        }
    }
}

/// What every store answers. Times are stored `u32` Unix seconds.
pub(crate) trait Store: Send + Sync {
    /// Decides a request that is not whitelisted (a trap recipient blocks
    /// the network) at `now`, and records it.
    fn check(&self, k: &Keys, now: u32) -> Verdict;
    /// Lets a triplet pass from now on.
    fn release(&self, k: &Keys, now: u32) -> Result<(), StoreError>;
    /// Lifts a network's block and releases its pending triplets; how many.
    fn release_client(&self, k: &Keys, now: u32) -> Result<u64, StoreError>;
    /// Forgets a triplet; whether it was known.
    fn forget(&self, k: &Keys) -> Result<bool, StoreError>;
    /// A triplet's stored state.
    fn triplet_state(&self, k: &Keys) -> Result<Option<TripletState>, StoreError>;
    /// A network's record.
    fn client_state(&self, k: &Keys) -> Result<Option<ClientState>, StoreError>;
    /// A triplet's stored state when the store can say at once: `None`
    /// also when the shared store is down (asked for requests keyed by a
    /// domain, which must not wait for it).
    fn peek_triplet(&self, k: &Keys) -> Option<TripletState> {
        self.triplet_state(k).ok().flatten()
    }
    /// A network's record when it may decide alone (blocked, or
    /// auto-whitelisted) and the store can say at once; `None` otherwise.
    fn peek_gating_client(&self, k: &Keys) -> Option<ClientState> {
        self.client_state(k).ok().flatten()
    }
    /// A network's record and the count of its triplets at `now`.
    fn network(&self, k: &Keys, now: u32) -> Result<NetworkRecord, StoreError>;
    /// Removes what expired and judges lost mail; triplet entries removed
    /// (locally).
    fn sweep(&self, now: u32) -> u64;
    /// The lost-mail rows, unsorted.
    fn lost_rows(&self) -> Result<Vec<LostMail>, StoreError>;
    /// Adds the store's counters and sizes.
    fn add_stats(&self, s: &mut Stats);
    /// The in-memory table (the whole store, or the fallback's), which
    /// snapshots save and restore.
    fn local(&self) -> &MemoryStore;
    /// For a host's start-up log: whether the shared store can be reached
    /// (see [`crate::Engine::probe_store`]); `None` without one.
    fn probe(&self, _timeout: std::time::Duration) -> Option<Result<Vec<String>, String>> {
        None
    }
    /// The latest failure talking to the shared store.
    fn last_error(&self) -> Option<String> {
        None
    }
}

/// The store a configuration asks for: Redis (with its local fallback)
/// when it names a URL, else the in-memory store.
pub(crate) fn open(config: &Config, events: Arc<Events>) -> Box<dyn Store> {
    let local = MemoryStore::new(config, events.clone());
    #[cfg(feature = "redis")]
    if let Some(remote) = redis::RedisStore::new(config, events) {
        return Box::new(fallback::Fallback::new(remote, local, config.fail_mode));
    }
    Box::new(local)
}
