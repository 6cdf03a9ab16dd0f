//! The shared store as the engine sees it: Redis first, and a local
//! in-memory table that decides when Redis does not answer, with the
//! fail-open or fail-defer choice ([`FailMode`]).
//!
//! Checks: whitelisted requests never reach a store (the front answers
//! them); a pass this host saw recently is answered from the pass cache;
//! everything else is one script call, and without an answer the local
//! table decides, marked [`Reason::StoreUnavailable`](crate::Reason).
//!
//! Operators' operations act on Redis (the fleet's state) and on the local
//! table (so a check answered locally during an outage agrees); when Redis
//! does not answer they fail with [`StoreError::Unavailable`] rather than
//! pretend. A sweep sweeps the local table and settles the fleet's lost
//! mail in Redis; the lost-mail report is the fleet's, plus what the local
//! table judged during outages.

use crate::config::FailMode;
use crate::key::Keys;
use crate::lists::Listed;
use crate::rules::{ClientState, TripletState, Verdict};
use crate::stats::Stats;
use crate::store::redis::{fallback, RedisStore};
use crate::store::{LostMail, MemoryStore, NetworkRecord, Store, StoreError};

/// Redis, with the local table behind it.
pub(crate) struct Fallback {
    remote: RedisStore,
    local: MemoryStore,
    mode: FailMode,
}

impl Fallback {
    pub(crate) fn new(remote: RedisStore, local: MemoryStore, mode: FailMode) -> Fallback {
        Fallback {
            remote,
            local,
            mode,
        }
    }
}

impl Store for Fallback {
    fn check(&self, k: &Keys, now: u32) -> Verdict {
        let trap = k.listed == Listed::Trap;
        if !trap {
            if let Some(v) = self.remote.cached_pass(k.triplet_key, now) {
                return v;
            }
        }
        match self.remote.check(k, trap, now) {
            Some(v) => v,
            None => fallback(self.local.check(k, now), self.mode),
        }
    }

    fn release(&self, k: &Keys, now: u32) -> Result<(), StoreError> {
        self.local.release(k, now);
        self.remote.release(k, now)
    }

    fn release_client(&self, k: &Keys, now: u32) -> Result<u64, StoreError> {
        let local = self.local.release_client(k, now);
        Ok(self.remote.release_client(k, now)?.max(local))
    }

    fn forget(&self, k: &Keys) -> Result<bool, StoreError> {
        let local = self.local.forget(k);
        self.remote.forget(k).map(|known| known || local)
    }

    fn triplet_state(&self, k: &Keys) -> Result<Option<TripletState>, StoreError> {
        self.remote.triplet_state(k)
    }

    fn client_state(&self, k: &Keys) -> Result<Option<ClientState>, StoreError> {
        self.remote.client_state(k)
    }

    fn peek_triplet(&self, k: &Keys) -> Option<TripletState> {
        (!self.remote.is_down()).then(|| self.remote.triplet_state(k).ok().flatten())?
    }

    fn peek_gating_client(&self, k: &Keys) -> Option<ClientState> {
        (!self.remote.is_down()).then(|| self.remote.client_state(k).ok().flatten())?
    }

    fn network(&self, k: &Keys, now: u32) -> Result<NetworkRecord, StoreError> {
        let mut record = self.remote.network(k, now)?;
        record.lost_mail += self.local.network(k, now).lost_mail;
        Ok(record)
    }

    fn sweep(&self, now: u32) -> u64 {
        let removed = self.local.sweep(now);
        // A failure is the latest error (the host's log shows it); the
        // suspects wait in Redis for the next sweep.
        let _ = self.remote.settle(now);
        removed
    }

    fn lost_rows(&self) -> Result<Vec<LostMail>, StoreError> {
        let mut rows = self.remote.lost_rows()?;
        for row in self.local.lost_rows() {
            match rows.iter_mut().find(|r| r.network == row.network) {
                Some(r) => {
                    r.count += row.count;
                    r.last_seen = r.last_seen.max(row.last_seen);
                }
                None => rows.push(row),
            }
        }
        Ok(rows)
    }

    fn add_stats(&self, s: &mut Stats) {
        self.local.add_stats(s);
        self.remote.add_stats(s);
    }

    fn local(&self) -> &MemoryStore {
        &self.local
    }

    fn probe(&self, timeout: std::time::Duration) -> Option<Result<Vec<String>, String>> {
        Some(self.remote.probe(timeout))
    }

    fn last_error(&self) -> Option<String> {
        self.remote.last_error()
    }
}
