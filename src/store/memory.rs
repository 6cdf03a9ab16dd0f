//! The in-memory store: the sharded triplet table, the client-network
//! table with its gate bits, eviction, the lost-mail judgement, and what a
//! snapshot saves and restores (through the methods at the end, never the
//! tables themselves).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use hashbrown::HashTable;

use crate::config::Config;
use crate::events::{Event, EventKind, Events};
use crate::key::{net_id, KeyKind, Keys, TripletId};
use crate::lists::Listed;
use crate::normalize::ClientNet;
use crate::rules::{
    client_gate, client_update, touches_client, trap, triplet_step, ClientState, Reason,
    TripletState, Verdict,
};
use crate::stats::{Counters, Stats};
use crate::store::{LostMail, NetworkRecord, Store, StoreError};
use crate::table::{hasher, Hashed, ProbeTable, Probed, Sharded};

pub(crate) const PASSED: u8 = 1;
/// A pending triplet a sweep judged lost mail: judged once per cycle.
pub(crate) const LOST: u8 = 2;
/// ... and credited to its network's report row (not when the network was
/// blocked, or had no record): only then does a late pass recover it.
pub(crate) const CREDITED: u8 = 4;

/// One triplet: 64 bits of its keyed hash, its state and 48 bits of its
/// client network's key (together its [`TripletId`]). 24 bytes a slot of
/// the [`ProbeTable`], so between 30 and 60 bytes per entry as the table's
/// load goes from 4/5 down to 2/5 between doublings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct TripletEntry {
    pub(crate) key: u64,
    pub(crate) first_seen: u32,
    pub(crate) last_seen: u32,
    pub(crate) net_lo: u32,
    pub(crate) net_hi: u16,
    pub(crate) early_retries: u8,
    pub(crate) flags: u8,
}

const _: () = assert!(std::mem::size_of::<TripletEntry>() == 24);

impl TripletEntry {
    pub(crate) fn new(id: TripletId, s: TripletState) -> Self {
        let mut e = TripletEntry {
            key: id.key,
            first_seen: 0,
            last_seen: 0,
            net_lo: id.net_id as u32,
            net_hi: (id.net_id >> 32) as u16,
            early_retries: 0,
            flags: 0,
        };
        e.set_state(s);
        e
    }

    pub(crate) fn state(&self) -> TripletState {
        TripletState {
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            early_retries: self.early_retries,
            passed: self.flags & PASSED != 0,
        }
    }

    pub(crate) fn set_state(&mut self, s: TripletState) {
        self.first_seen = s.first_seen;
        self.last_seen = s.last_seen;
        self.early_retries = s.early_retries;
        self.flags = if s.passed { PASSED } else { 0 };
    }

    pub(crate) fn net_id(&self) -> u64 {
        u64::from(self.net_lo) | (u64::from(self.net_hi) << 32)
    }

    pub(crate) fn id(&self) -> TripletId {
        TripletId {
            key: self.key,
            net_id: self.net_id(),
        }
    }

    /// Whether this is the entry of triplet `id`.
    pub(crate) fn is(&self, id: TripletId) -> bool {
        self.key == id.key && self.net_id() == id.net_id
    }

    /// What a sweep credits to the network when this triplet is lost;
    /// `mark`: the entry stays and is marked credited if it is.
    fn lost(&self, mark: bool) -> Lost {
        Lost {
            id: self.id(),
            last_seen: self.last_seen,
            early_retries: self.early_retries,
            mark,
        }
    }
}

impl Hashed for TripletEntry {
    fn hash(&self) -> u64 {
        self.key
    }
}

impl Probed for TripletEntry {
    const VACANT: TripletEntry = TripletEntry {
        key: 0,
        first_seen: 0,
        last_seen: 0,
        net_lo: 0,
        net_hi: 0,
        early_retries: 0,
        flags: 0,
    };
}

/// One client network: its identity (for reports) and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientEntry {
    pub(crate) key: u128,
    pub(crate) net: ClientNet,
    pub(crate) state: ClientState,
    pub(crate) lost_count: u64,
    pub(crate) lost_last_seen: u32,
    /// The network's latest early retry: its record is kept until each of
    /// its triplets with early retries has been judged lost or not.
    pub(crate) last_early: u32,
    /// A block began and no sweep has seen it end yet (not in snapshots:
    /// a loaded record sets it when its block is still on).
    pub(crate) block_open: bool,
}

/// Client entries are found both by their full key and by the 48 bits a
/// triplet keeps, so the hash depends on those 48 bits only.
pub(crate) fn client_hash(id: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Hashed for ClientEntry {
    fn hash(&self) -> u64 {
        client_hash(net_id(self.key))
    }
}

impl ClientEntry {
    pub(crate) fn new(key: u128, net: ClientNet) -> Self {
        ClientEntry {
            key,
            net,
            state: ClientState::default(),
            lost_count: 0,
            lost_last_seen: 0,
            last_early: 0,
            block_open: false,
        }
    }

    /// Whether the record holds nothing worth keeping at `now`: no block,
    /// auto-whitelist or blast period ([`ClientState::is_expired`]), no
    /// lost mail for the report within `awl_ttl`, and no triplet with early
    /// retries that may still be judged: one is lost `delay + lost_after`
    /// after its first attempt or when its retry window ends, found by the
    /// first sweep after that, and its first attempt was before the
    /// latest early retry; so the record stays the longer of the two
    /// after that retry (two days by default), whatever the sweep interval
    /// short of that.
    fn is_expired(&self, now: u32, config: &Config) -> bool {
        let judged = waiting_time(config);
        let within = |then: u32, span: u32| {
            i64::from(now) - i64::from(then) <= i64::from(span)
                && !crate::rules::too_far_ahead(then, now, span)
        };
        self.state.is_expired(now, config)
            && !within(self.lost_last_seen, config.awl_ttl)
            && !within(self.last_early, judged)
    }
}

/// How long a network's record is kept after its latest early retry (see
/// [`ClientEntry::is_expired`]).
pub(crate) fn waiting_time(config: &Config) -> u32 {
    config
        .delay
        .saturating_add(config.lost_after)
        .max(config.retry_window)
}

/// A pending triplet judged lost, found while its shard was locked and
/// credited to its network after the lock is released.
#[derive(Debug, Clone, Copy)]
struct Lost {
    id: TripletId,
    last_seen: u32,
    early_retries: u8,
    mark: bool,
}

/// Lost triplets found while a shard was locked, credited to their
/// networks after it is unlocked.
type LostList = Vec<Lost>;

/// Gate words per client shard: 128 bits, 16 KiB for 1,024 shards, small
/// enough to stay in cache; a bit shared by two networks only costs a lock.
const GATE_WORDS_PER_SHARD: usize = 2;

/// Fewest triplet entries a shard is sized for (see [`MemoryStore::new`]).
const MIN_SHARD_ENTRIES: usize = 128;

/// The in-memory store.
///
/// Locking: a check locks at most one client-network shard, then one
/// triplet shard, then (after a pass or an early retry) the client shard
/// again, never two at once. Maintenance (`sweep`, `len`, `stats`) locks one
/// shard at a time.
pub(crate) struct MemoryStore {
    config: Config,
    triplets: Sharded<ProbeTable<TripletEntry>>,
    clients: Sharded<HashTable<ClientEntry>>,
    /// Most triplet entries per triplet shard.
    shard_cap: usize,
    /// Most client-network records per client shard.
    client_cap: usize,
    /// One bit per (hashed) client network that may be blocked or
    /// auto-whitelisted; see [`MemoryStore::may_gate`].
    gates: Box<[AtomicU64]>,
    counters: Counters,
    events: Arc<Events>,
}

impl MemoryStore {
    /// An empty store with room for the configuration's `max_entries`
    /// triplets and `max_clients` networks.
    pub(crate) fn new(config: &Config, events: Arc<Events>) -> MemoryStore {
        // Each shard holds at most max_entries / shards, and hashing fills
        // shards unevenly: a shard of c entries fills up when the table
        // holds about c - 3 sqrt(c) per shard. So a shard is kept to at
        // least MIN_SHARD_ENTRIES (its first eviction then comes after
        // three quarters of max_entries, and later the larger the table),
        // and a small table has fewer shards.
        let max = usize::try_from(config.max_entries).unwrap_or(usize::MAX);
        let per_shard_floor = (max / MIN_SHARD_ENTRIES).max(1);
        let largest_fitting = 1usize << (usize::BITS - 1 - per_shard_floor.leading_zeros());
        let shards = config.shards.min(largest_fitting);
        MemoryStore {
            triplets: Sharded::new(shards),
            clients: Sharded::new(shards),
            shard_cap: max / shards,
            client_cap: (usize::try_from(config.max_clients).unwrap_or(usize::MAX) / shards).max(1),
            gates: (0..shards * GATE_WORDS_PER_SHARD)
                .map(|_| AtomicU64::new(0))
                .collect(),
            counters: Counters::default(),
            events,
            config: config.clone(),
        }
    }

    /// Shards of each table.
    pub(crate) fn shard_count(&self) -> usize {
        self.triplets.shard_count()
    }

    /// The client network's record, created empty if missing (making room
    /// in a full shard), updated by `update` under its shard lock. When the
    /// shard is full of networks that are blocked or auto-whitelisted, a
    /// new network's record is updated but not kept.
    /// `early`: the check was an early retry (the record then lives until
    /// the triplet is judged lost or not).
    fn with_client<R>(
        &self,
        k: &Keys,
        now: u32,
        early: bool,
        update: impl FnOnce(&mut ClientState) -> R,
    ) -> R {
        let c_hash = client_hash(net_id(k.net_key));
        let c_idx = self.clients.index(c_hash);
        let mut clients = self.clients.lock(c_idx);
        let entry = match clients.find_mut(c_hash, |e| e.key == k.net_key) {
            Some(e) => e,
            None => {
                if !self.client_room(&mut clients, c_idx, now) {
                    return update(&mut ClientState::default());
                }
                clients
                    .insert_unique(c_hash, ClientEntry::new(k.net_key, k.net.clone()), hasher)
                    .into_mut()
            }
        };
        if early {
            // A time stored from a clock far ahead is corrupt: replaced.
            let last = entry.last_early;
            let corrupt = crate::rules::too_far_ahead(last, now, waiting_time(&self.config));
            entry.last_early = if corrupt { now } else { last.max(now) };
        }
        let result = update(&mut entry.state);
        if self.may_gate(&entry.state) {
            let (word, bit) = self.gate_bit(c_idx, c_hash);
            self.gates[word].fetch_or(bit, Relaxed);
        }
        result
    }

    /// Whether a client shard has room for one more record, after making
    /// room if it is full.
    pub(crate) fn client_room(
        &self,
        table: &mut HashTable<ClientEntry>,
        c_idx: usize,
        now: u32,
    ) -> bool {
        if table.len() >= self.client_cap {
            self.make_client_room(table, c_idx, now);
        }
        table.len() < self.client_cap
    }

    /// Makes room in a full client shard: expired records first, then
    /// records that neither block nor auto-whitelist (those without lost
    /// mail first, least recently active first). Blocked and
    /// auto-whitelisted networks are kept. Frees a sixteenth of the shard
    /// at once, so the scan is paid once per many inserts.
    fn make_client_room(&self, table: &mut HashTable<ClientEntry>, c_idx: usize, now: u32) {
        let config = &self.config;
        let before = table.len();
        table.retain(|e| !e.is_expired(now, config));
        let target = self.client_cap - (self.client_cap / 16).max(1);
        let keep = |e: &ClientEntry| {
            e.state.blocks(now, config) || e.state.is_auto_whitelisted(now, config)
        };
        // Least valuable first: no lost mail before lost mail, then the
        // oldest activity.
        let rank = |e: &ClientEntry| {
            let s = &e.state;
            let active = s
                .last_seen
                .max(s.last_round)
                .max(e.lost_last_seen)
                .max(e.last_early);
            (u64::from(e.lost_count > 0) << 32) | u64::from(active)
        };
        if table.len() > target {
            let mut ranks: Vec<u64> = table.iter().filter(|e| !keep(e)).map(rank).collect();
            let n = (table.len() - target).min(ranks.len());
            if n > 0 {
                let cutoff = *ranks.select_nth_unstable(n - 1).1;
                let mut budget = n;
                table.retain(|e| {
                    let evict = budget > 0 && !keep(e) && rank(e) <= cutoff;
                    budget -= usize::from(evict);
                    !evict
                });
            }
        }
        let removed = (before - table.len()) as u64;
        self.counters
            .mine()
            .clients_evicted
            .fetch_add(removed, Relaxed);
        self.rebuild_gates(c_idx, table);
    }

    /// Whether a client record could ever decide a check on its own
    /// (blocked, or auto-whitelisted) at some `now`: only then is its gate
    /// bit set, and only then does a check lock its shard.
    pub(crate) fn may_gate(&self, state: &ClientState) -> bool {
        state.blocked_until != 0
            || (self.config.awl_threshold > 0 && state.passes >= self.config.awl_threshold)
    }

    /// Whether the network's gate bit is set: it may be blocked or
    /// auto-whitelisted (a clear bit says it is neither).
    fn gate_is_set(&self, c_idx: usize, c_hash: u64) -> bool {
        let (word, bit) = self.gate_bit(c_idx, c_hash);
        self.gates[word].load(Relaxed) & bit != 0
    }

    /// The gate bit of a client hash: each client shard owns a run of
    /// words, changed only under that shard's lock.
    pub(crate) fn gate_bit(&self, c_idx: usize, c_hash: u64) -> (usize, u64) {
        let bit = (c_hash as usize) % (GATE_WORDS_PER_SHARD * 64);
        (c_idx * GATE_WORDS_PER_SHARD + bit / 64, 1 << (bit % 64))
    }

    /// Recomputes one client shard's gate bits from its records; the caller
    /// holds that shard's lock.
    pub(crate) fn rebuild_gates(&self, c_idx: usize, table: &HashTable<ClientEntry>) {
        let mut words = [0u64; GATE_WORDS_PER_SHARD];
        for e in table.iter().filter(|e| self.may_gate(&e.state)) {
            let (word, bit) = self.gate_bit(c_idx, client_hash(net_id(e.key)));
            words[word - c_idx * GATE_WORDS_PER_SHARD] |= bit;
        }
        for (i, w) in words.into_iter().enumerate() {
            self.gates[c_idx * GATE_WORDS_PER_SHARD + i].store(w, Relaxed);
        }
    }

    /// Decides a request with the tables and records it (not counted: the
    /// front counts verdicts).
    pub(crate) fn check(&self, k: &Keys, now: u32) -> Verdict {
        let config = &self.config;
        let c_hash = client_hash(net_id(k.net_key));
        let c_idx = self.clients.index(c_hash);
        match k.listed {
            Listed::Whitelisted => return Verdict::new(Reason::Whitelisted, 0, 0),
            Listed::Trap => {
                let (v, fresh) = self.with_client(k, now, false, |c| {
                    let fresh = !c.blocks(now, config);
                    (trap(c, now, config), fresh)
                });
                if fresh {
                    self.block_started(k, Reason::Trapped, now, 0);
                }
                return v;
            }
            Listed::No => {}
        }
        // Most networks are neither blocked nor auto-whitelisted: their
        // gate bit is clear and the check skips the client table.
        let gate = if !self.gate_is_set(c_idx, c_hash) {
            None
        } else {
            let mut clients = self.clients.lock(c_idx);
            clients
                .find_mut(c_hash, |e| e.key == k.net_key)
                .and_then(|e| client_gate(&mut e.state, now, config))
        };
        if let Some(v) = gate {
            return v;
        }

        let id = k.triplet_id();
        let t_idx = self.triplets.index(id.key);
        let mut lost = LostList::new();
        let (verdict, copies, recovered) = {
            let mut table = self.triplets.lock(t_idx);
            match table.find_mut(id.key, |e| e.is(id)) {
                Some(e) => {
                    let judged = e.flags & (LOST | CREDITED);
                    let old = e.lost(false);
                    let (s, v) = triplet_step(Some(e.state()), now, config);
                    // An expired record no sweep removed yet: its lost mail
                    // is judged now, before the new cycle replaces it.
                    if v.reason == Reason::New && judged == 0 && e.state().is_lost(now, config) {
                        lost.push(old);
                    }
                    let mut next = *e;
                    next.set_state(s);
                    // Judged once per cycle: a new cycle starts unjudged, a
                    // pass recovers a credited one, anything else (an early
                    // retry after the clock stepped back) keeps the marks.
                    if !matches!(v.reason, Reason::New | Reason::Retried) {
                        next.flags |= judged;
                    }
                    // A triplet checked again within the second changes
                    // nothing: not writing it keeps its cache line shared
                    // by the cores that check it.
                    if next != *e {
                        *e = next;
                    }
                    let recovered = judged & CREDITED != 0 && v.reason == Reason::Retried;
                    (v, s.early_retries, recovered)
                }
                None => {
                    let (s, v) = triplet_step(None, now, config);
                    if table.len() >= self.shard_cap {
                        self.make_room(&mut table, now, &mut lost);
                    }
                    table.insert_unique(TripletEntry::new(id, s));
                    (v, s.early_retries, false)
                }
            }
        };
        self.credit_lost(&lost, now);
        if recovered {
            self.credit_recovered(k, now);
        }

        // A domain key (a pool's many hosts, or any host that can name
        // itself under a provider's domain) is never blocked nor
        // auto-whitelisted: one sender blasting would block the pool, and a
        // few good ones would whitelist the provider's every customer. Its
        // record only credits lost mail (early retries); the hosts'
        // networks keep their own blocks and auto-whitelists, which
        // `Engine::check_request` consults.
        let domain = k.kind != KeyKind::Network;
        if touches_client(&verdict, config) && !(domain && verdict.reason == Reason::Retried) {
            let early = verdict.reason == Reason::EarlyRetry;
            let v = self.with_client(k, now, early, |c| {
                if domain {
                    verdict
                } else {
                    client_update(c, verdict, copies, now, config)
                }
            });
            if early && v.reason == Reason::Blocked {
                self.block_started(k, Reason::Blocked, now, u32::from(copies));
            }
            v
        } else {
            verdict
        }
    }

    /// A network became blocked: its record remembers it, so a sweep can
    /// tell when the block ends, and the event says why.
    fn block_started(&self, k: &Keys, reason: Reason, now: u32, count: u32) {
        let c_hash = client_hash(net_id(k.net_key));
        if let Some(e) = self
            .clients
            .lock(self.clients.index(c_hash))
            .find_mut(c_hash, |e| e.key == k.net_key)
        {
            e.block_open = true;
        }
        self.events.emit(|| Event {
            kind: EventKind::BlockStarted,
            network: k.net.clone(),
            reason,
            at: now,
            count,
            triplet: None,
        });
    }

    /// A triplet counted as lost passed after all: it leaves its network's
    /// report row (unless the network was blocked, when it was never on it).
    fn credit_recovered(&self, k: &Keys, now: u32) {
        let c_hash = client_hash(net_id(k.net_key));
        let credited = {
            let mut clients = self.clients.lock(self.clients.index(c_hash));
            clients
                .find_mut(c_hash, |e| e.key == k.net_key)
                .filter(|e| !e.state.repaired(now, &self.config).was_blocked() && e.lost_count > 0)
                .map(|e| e.lost_count -= 1)
                .is_some()
        };
        if credited {
            self.counters.mine().lost_recovered.fetch_add(1, Relaxed);
            self.events
                .emit(|| Event::recovered(k.net.clone(), now, k.triplet_id().public()));
        }
    }

    /// Removes expired entries from a locked shard, and marks and collects
    /// the triplets that became lost mail (each once: a lost triplet stays
    /// until its window ends, so a late retry can still pass).
    fn remove_expired(
        &self,
        table: &mut ProbeTable<TripletEntry>,
        now: u32,
        lost: &mut LostList,
    ) -> u64 {
        let mut removed = 0;
        table.retain(|e| {
            let s = e.state();
            if e.flags & LOST == 0 && s.is_lost(now, &self.config) {
                e.flags |= LOST;
                // An expired one goes now: nothing to mark.
                lost.push(e.lost(!s.is_expired(now, &self.config)));
            }
            let expired = s.is_expired(now, &self.config);
            removed += u64::from(expired);
            !expired
        });
        removed
    }

    /// Makes room in a full shard: expired entries first, then the oldest
    /// pending ones, and passed ones only when nothing else is left. Frees
    /// a sixteenth of the shard at once, so the scan is paid once per many
    /// inserts.
    fn make_room(&self, table: &mut ProbeTable<TripletEntry>, now: u32, lost: &mut LostList) {
        let counters = self.counters.mine();
        let target = self.shard_cap - (self.shard_cap / 16).max(1);
        counters
            .expired
            .fetch_add(self.remove_expired(table, now, lost), Relaxed);
        for passed in [false, true] {
            if table.len() <= target {
                return;
            }
            let age_of = |e: &TripletEntry| if passed { e.last_seen } else { e.first_seen };
            let mut ages: Vec<u32> = table
                .iter()
                .filter(|e| (e.flags & PASSED != 0) == passed)
                .map(age_of)
                .collect();
            let n = (table.len() - target).min(ages.len());
            if n == 0 {
                continue;
            }
            let cutoff = *ages.select_nth_unstable(n - 1).1;
            let mut budget = n;
            table.retain(|e| {
                let evict = budget > 0 && (e.flags & PASSED != 0) == passed && age_of(e) <= cutoff;
                budget -= usize::from(evict);
                !evict
            });
            counters.evicted.fetch_add(n as u64, Relaxed);
        }
    }

    /// Adds a triplet entry read from a snapshot, making room as a check
    /// would when a shard is full. False if the key is already there.
    pub(crate) fn restore_triplet(&self, entry: TripletEntry, now: u32) -> bool {
        let hash = entry.key;
        let idx = self.triplets.index(hash);
        let mut lost = LostList::new();
        {
            let mut table = self.triplets.lock(idx);
            if table.find(hash, |e| e.is(entry.id())).is_some() {
                return false;
            }
            if table.len() >= self.shard_cap {
                self.make_room(&mut table, now, &mut lost);
            }
            table.insert_unique(entry);
        }
        self.credit_lost(&lost, now);
        true
    }

    /// Makes room for `entries` triplets up front, spread over the shards.
    pub(crate) fn reserve(&self, entries: usize) {
        let shards = self.triplets.shard_count();
        let per_shard = (entries / shards + entries / shards / 8).min(self.shard_cap);
        for i in 0..shards {
            self.triplets.lock(i).reserve(per_shard);
        }
    }

    /// Credits lost mail to client networks (no triplet lock held). A
    /// network that is or was blocked (blasting, a trap) lost nothing: its
    /// early retries were a spammer's. A credited triplet still in the
    /// table is marked so (its shard locked again, alone), so that only a
    /// credited one is recovered by a late pass.
    fn credit_lost(&self, lost: &LostList, now: u32) {
        for l in lost {
            if self.credit_one(l, now) && l.mark {
                let mut table = self.triplets.lock(self.triplets.index(l.id.key));
                if let Some(e) = table.find_mut(l.id.key, |e| e.is(l.id)) {
                    if e.flags & LOST != 0 {
                        e.flags |= CREDITED;
                    }
                }
            }
        }
    }

    /// Credits one lost triplet; whether its network's row got it.
    fn credit_one(&self, l: &Lost, now: u32) -> bool {
        let hash = client_hash(l.id.net_id);
        let idx = self.clients.index(hash);
        let network = {
            let mut clients = self.clients.lock(idx);
            match clients.find_mut(hash, |e| net_id(e.key) == l.id.net_id) {
                Some(e) if e.state.repaired(now, &self.config).was_blocked() => return false,
                Some(e) => {
                    e.lost_count += 1;
                    e.lost_last_seen = e.lost_last_seen.max(l.last_seen);
                    Some(e.net.clone())
                }
                // Its record was evicted (a full client table): counted,
                // but on no report row.
                None => None,
            }
        };
        self.counters.mine().lost_mail.fetch_add(1, Relaxed);
        let Some(network) = network else {
            return false;
        };
        self.events.emit(|| Event {
            kind: EventKind::LostMail,
            network,
            reason: Reason::EarlyRetry,
            at: l.last_seen,
            count: u32::from(l.early_retries),
            triplet: Some(l.id.public()),
        });
        true
    }

    /// Removes every expired entry, one shard at a time (checks go on in the
    /// other shards), and returns the number of triplet entries removed.
    /// Expired client-network records are removed too, but not counted.
    pub(crate) fn sweep(&self, now: u32) -> u64 {
        let mut total = 0;
        let mut lost = LostList::new();
        for i in 0..self.triplets.shard_count() {
            let removed = self.remove_expired(&mut self.triplets.lock(i), now, &mut lost);
            self.counters.mine().expired.fetch_add(removed, Relaxed);
            self.credit_lost(&lost, now);
            lost.clear();
            total += removed;
        }
        let mut ended = Vec::new();
        for i in 0..self.clients.shard_count() {
            let mut clients = self.clients.lock(i);
            clients.retain(|e| {
                if e.block_open && !e.state.blocks(now, &self.config) {
                    e.block_open = false;
                    ended.push((e.net.clone(), e.state.blocked_until.min(now)));
                }
                !e.is_expired(now, &self.config)
            });
            self.rebuild_gates(i, &clients);
            drop(clients);
            for (network, at) in ended.drain(..) {
                self.events.emit(|| Event {
                    kind: EventKind::BlockEnded,
                    network,
                    reason: Reason::Blocked,
                    at,
                    count: 0,
                    triplet: None,
                });
            }
        }
        total
    }

    /// The most memory, in bytes, the triplet table can take when full at
    /// `max_entries`: each shard's table holds a power-of-two number of
    /// 24-byte slots, at most 4/5 full, so this is between 30 and 60 bytes
    /// per entry allowed.
    pub(crate) fn table_memory_limit(&self) -> usize {
        let slots = ProbeTable::<TripletEntry>::slots_for(self.shard_cap);
        let per_shard = slots
            .saturating_mul(std::mem::size_of::<TripletEntry>())
            .saturating_add(64);
        per_shard.saturating_mul(self.triplets.shard_count())
    }

    /// Triplet entries (pending and passed) in the table.
    pub(crate) fn len(&self) -> usize {
        self.triplets.len()
    }

    /// The stored state of one triplet, if any (expired entries included
    /// until a sweep removes them).
    pub(crate) fn triplet_state(&self, k: &Keys) -> Option<TripletState> {
        let id = k.triplet_id();
        let table = self.triplets.lock(self.triplets.index(id.key));
        table.find(id.key, |e| e.is(id)).map(TripletEntry::state)
    }

    /// The network's record and its triplets at `now` (counting them scans
    /// the whole table, one shard at a time).
    pub(crate) fn network(&self, k: &Keys, now: u32) -> NetworkRecord {
        let id = net_id(k.net_key);
        let (mut pending, mut passed) = (0, 0);
        for i in 0..self.triplets.shard_count() {
            for e in self.triplets.lock(i).iter() {
                if e.net_id() == id && !e.state().is_expired(now, &self.config) {
                    *(if e.flags & PASSED != 0 {
                        &mut passed
                    } else {
                        &mut pending
                    }) += 1;
                }
            }
        }
        let hash = client_hash(id);
        let record = {
            let clients = self.clients.lock(self.clients.index(hash));
            clients.find(hash, |e| e.key == k.net_key).cloned()
        };
        NetworkRecord {
            state: record.as_ref().map(|r| r.state),
            pending,
            passed,
            lost_mail: record.map_or(0, |r| r.lost_count),
        }
    }

    /// Lets a triplet pass from now on, as if it had been retried after
    /// the delay.
    pub(crate) fn release(&self, k: &Keys, now: u32) {
        let passed = TripletState {
            first_seen: now,
            last_seen: now,
            early_retries: 0,
            passed: true,
        };
        let id = k.triplet_id();
        let mut table = self.triplets.lock(self.triplets.index(id.key));
        match table.find_mut(id.key, |e| e.is(id)) {
            Some(e) => {
                let s = e.state();
                e.set_state(TripletState {
                    first_seen: s.first_seen.min(now),
                    last_seen: s.last_seen.max(now),
                    ..passed
                });
            }
            None => {
                let mut lost = LostList::new();
                if table.len() >= self.shard_cap {
                    self.make_room(&mut table, now, &mut lost);
                }
                table.insert_unique(TripletEntry::new(id, passed));
                drop(table);
                self.credit_lost(&lost, now);
            }
        }
    }

    /// Lifts the network's block and lets each of its triplets waiting for
    /// a retry pass from now on; how many were released.
    pub(crate) fn release_client(&self, k: &Keys, now: u32) -> u64 {
        let hash = client_hash(net_id(k.net_key));
        let idx = self.clients.index(hash);
        {
            let mut clients = self.clients.lock(idx);
            if let Some(e) = clients.find_mut(hash, |e| e.key == k.net_key) {
                e.state.blocked_until = 0;
                e.state.rounds = 0;
            }
            self.rebuild_gates(idx, &clients);
        }
        let id = net_id(k.net_key);
        let mut released = 0;
        for i in 0..self.triplets.shard_count() {
            for e in self.triplets.lock(i).iter_mut() {
                let s = e.state();
                if e.net_id() == id && !s.passed && !s.is_expired(now, &self.config) {
                    e.set_state(TripletState {
                        passed: true,
                        last_seen: s.last_seen.max(now),
                        ..s
                    });
                    released += 1;
                }
            }
        }
        released
    }

    /// Forgets a triplet; whether it was known.
    pub(crate) fn forget(&self, k: &Keys) -> bool {
        let id = k.triplet_id();
        let mut table = self.triplets.lock(self.triplets.index(id.key));
        table.remove(id.key, |e| e.is(id)).is_some()
    }

    /// The report rows (see [`crate::Engine::lost_mail_report`]), unsorted.
    pub(crate) fn lost_rows(&self) -> Vec<LostMail> {
        let mut rows = Vec::new();
        for i in 0..self.clients.shard_count() {
            let clients = self.clients.lock(i);
            rows.extend(
                clients
                    .iter()
                    .filter(|e| e.lost_count > 0)
                    .map(|e| LostMail {
                        network: e.net.clone(),
                        count: e.lost_count,
                        last_seen: e.lost_last_seen,
                    }),
            );
        }
        rows
    }

    /// Adds the store's counters and sizes to `s`.
    pub(crate) fn add_stats(&self, s: &mut Stats) {
        self.counters.add_to(s);
        s.entries += self.triplets.len() as u64;
        s.clients += self.clients.len() as u64;
    }

    // What a snapshot reads and restores.

    /// Calls `f` with each triplet shard in turn, locked.
    pub(crate) fn each_triplet_shard(&self, mut f: impl FnMut(&ProbeTable<TripletEntry>)) {
        for i in 0..self.triplets.shard_count() {
            f(&self.triplets.lock(i));
        }
    }

    /// Calls `f` with each client shard in turn, locked.
    pub(crate) fn each_client_shard(&self, mut f: impl FnMut(&HashTable<ClientEntry>)) {
        for i in 0..self.clients.shard_count() {
            f(&self.clients.lock(i));
        }
    }

    /// The shard a triplet entry lives in.
    pub(crate) fn triplet_shard(&self, key: u64) -> usize {
        self.triplets.index(key)
    }

    /// The shard a network key lives in.
    pub(crate) fn client_shard(&self, key: u128) -> usize {
        self.clients.index(client_hash(net_id(key)))
    }

    /// Adds a client record read from a snapshot, keeping what a full
    /// shard keeps; an error if the network is already there.
    pub(crate) fn restore_client(&self, e: ClientEntry, now: u32) -> Result<(), String> {
        let hash = client_hash(net_id(e.key));
        let shard = self.clients.index(hash);
        let mut table = self.clients.lock(shard);
        if table.find(hash, |c| c.key == e.key).is_some() {
            return Err(format!("duplicate client record for {}", e.net));
        }
        // A snapshot from an engine allowed more networks: keep what a
        // full shard keeps.
        if !self.client_room(&mut table, shard, now) {
            return Ok(());
        }
        if self.may_gate(&e.state) {
            let (word, bit) = self.gate_bit(shard, hash);
            self.gates[word].fetch_or(bit, Relaxed);
        }
        table.insert_unique(hash, e, hasher);
        Ok(())
    }
}

impl Store for MemoryStore {
    fn check(&self, k: &Keys, now: u32) -> Verdict {
        MemoryStore::check(self, k, now)
    }

    fn release(&self, k: &Keys, now: u32) -> Result<(), StoreError> {
        MemoryStore::release(self, k, now);
        Ok(())
    }

    fn release_client(&self, k: &Keys, now: u32) -> Result<u64, StoreError> {
        Ok(MemoryStore::release_client(self, k, now))
    }

    fn forget(&self, k: &Keys) -> Result<bool, StoreError> {
        Ok(MemoryStore::forget(self, k))
    }

    fn triplet_state(&self, k: &Keys) -> Result<Option<TripletState>, StoreError> {
        Ok(MemoryStore::triplet_state(self, k))
    }

    fn client_state(&self, k: &Keys) -> Result<Option<ClientState>, StoreError> {
        let hash = client_hash(net_id(k.net_key));
        let clients = self.clients.lock(self.clients.index(hash));
        Ok(clients.find(hash, |e| e.key == k.net_key).map(|e| e.state))
    }

    fn peek_gating_client(&self, k: &Keys) -> Option<ClientState> {
        // Most networks neither block nor are auto-whitelisted: their gate
        // bit is clear, and no lock is taken.
        let hash = client_hash(net_id(k.net_key));
        self.gate_is_set(self.clients.index(hash), hash)
            .then(|| Store::client_state(self, k).ok().flatten())?
    }

    fn network(&self, k: &Keys, now: u32) -> Result<NetworkRecord, StoreError> {
        Ok(MemoryStore::network(self, k, now))
    }

    fn sweep(&self, now: u32) -> u64 {
        MemoryStore::sweep(self, now)
    }

    fn lost_rows(&self) -> Result<Vec<LostMail>, StoreError> {
        Ok(MemoryStore::lost_rows(self))
    }

    fn add_stats(&self, s: &mut Stats) {
        MemoryStore::add_stats(self, s);
    }

    fn local(&self) -> &MemoryStore {
        self
    }
}
