//! The counters every part of the engine adds to, and the [`Stats`] they
//! sum to.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::rules::Reason;
use crate::table::{thread_stripe, CachePadded, STRIPES};

/// One stripe of counters; a thread adds to its own stripe, so threads
/// rarely share a counter's cache line. The front counts verdicts, each
/// store what it removed and judged.
#[derive(Default)]
pub(crate) struct Counter {
    pub(crate) reasons: [AtomicU64; Reason::ALL.len()],
    pub(crate) expired: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) clients_evicted: AtomicU64,
    pub(crate) lost_mail: AtomicU64,
    pub(crate) lost_recovered: AtomicU64,
}

/// Striped counters.
pub(crate) struct Counters(Box<[CachePadded<Counter>]>);

impl Default for Counters {
    fn default() -> Self {
        Counters(
            (0..STRIPES)
                .map(|_| CachePadded(Counter::default()))
                .collect(),
        )
    }
}

impl Counters {
    /// This thread's stripe.
    pub(crate) fn mine(&self) -> &Counter {
        &self.0[thread_stripe()].0
    }

    /// Adds every stripe into `s` (the reasons, and the store counters).
    pub(crate) fn add_to(&self, s: &mut Stats) {
        let mut reasons = [0u64; Reason::ALL.len()];
        for stripe in self.0.iter() {
            let c = &stripe.0;
            for (sum, counter) in reasons.iter_mut().zip(&c.reasons) {
                *sum += counter.load(Relaxed);
            }
            s.expired += c.expired.load(Relaxed);
            s.evicted += c.evicted.load(Relaxed);
            s.clients_evicted += c.clients_evicted.load(Relaxed);
            s.lost_mail += c.lost_mail.load(Relaxed);
            s.lost_recovered += c.lost_recovered.load(Relaxed);
        }
        for (reason, n) in Reason::ALL.iter().zip(reasons) {
            *s.reason_mut(*reason) += n;
            s.checks += n;
        }
    }
}

/// A snapshot of the engine's counters, read without stopping checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Checks answered (the sum of the per-reason counts below).
    pub checks: u64,
    /// Verdicts with [`Reason::New`].
    pub new_triplets: u64,
    /// Verdicts with [`Reason::EarlyRetry`].
    pub early_retries: u64,
    /// Verdicts with [`Reason::Retried`].
    pub retried: u64,
    /// Verdicts with [`Reason::Passed`].
    pub passed: u64,
    /// Verdicts with [`Reason::Whitelisted`].
    pub whitelisted: u64,
    /// Verdicts with [`Reason::AutoWhitelisted`].
    pub auto_whitelisted: u64,
    /// Verdicts with [`Reason::Blocked`].
    pub blocked: u64,
    /// Verdicts with [`Reason::Trapped`].
    pub trapped: u64,
    /// Verdicts with [`Reason::StoreUnavailable`]: the shared store did
    /// not answer and the local table decided.
    pub store_unavailable: u64,
    /// Calls the shared store answered (script loads after a restart
    /// included); pipelined, many calls may share one round trip.
    pub store_round_trips: u64,
    /// Checks whose call failed (refused, dropped, an error answer).
    pub store_errors: u64,
    /// Checks whose call got no answer within `redis_timeout`.
    pub store_timeouts: u64,
    /// Passes answered from the local pass cache without a round trip.
    pub cache_hits: u64,
    /// Records in the shared store that were not in the script's format
    /// (damaged, or written by another program) and were treated as absent.
    pub store_malformed: u64,
    /// Triplet entries removed because they were past their lifetime.
    pub expired: u64,
    /// Triplet entries removed to stay within `max_entries`.
    pub evicted: u64,
    /// Client-network records removed to stay within `max_clients`
    /// (expired ones included when a full shard made room).
    pub clients_evicted: u64,
    /// Pending triplets judged lost mail: early retries (at most
    /// `blast_copies`) from a network never blocked, then no attempt for
    /// `lost_after` after the delay (or until the retry window ended).
    /// With a shared store, those this host's sweeps judged (each is judged
    /// by one host).
    pub lost_mail: u64,
    /// Lost triplets whose late retry passed after all (counted in
    /// `lost_mail` too, and taken off their network's report row).
    pub lost_recovered: u64,
    /// Triplet entries now in the (local) table.
    pub entries: u64,
    /// Client-network records now kept (locally).
    pub clients: u64,
}

impl Stats {
    /// The count for one reason.
    pub fn reason(&self, reason: Reason) -> u64 {
        let mut s = *self;
        *s.reason_mut(reason)
    }

    fn reason_mut(&mut self, reason: Reason) -> &mut u64 {
        match reason {
            Reason::New => &mut self.new_triplets,
            Reason::EarlyRetry => &mut self.early_retries,
            Reason::Retried => &mut self.retried,
            Reason::Passed => &mut self.passed,
            Reason::Whitelisted => &mut self.whitelisted,
            Reason::AutoWhitelisted => &mut self.auto_whitelisted,
            Reason::Blocked => &mut self.blocked,
            Reason::Trapped => &mut self.trapped,
            Reason::StoreUnavailable => &mut self.store_unavailable,
        }
    }
}
