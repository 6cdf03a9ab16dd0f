//! The engine: the sharded triplet table, the client-network table and the
//! counters, applying the rules of [`crate::rules`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hashbrown::HashTable;

use crate::config::Config;
use crate::events::{CallbackError, Event, EventKind, EventSink, Events};
use crate::key::{net_id, push_part_or_hash, Secret, NET_TAG, TRIPLET_TAG};
use crate::lists::{Listed, Lists};
use crate::normalize::{self, ClientNet, InputError};
use crate::rules::{
    client_gate, client_update, touches_client, trap, triplet_step, ClientState, Reason,
    TripletState, Verdict,
};
use crate::table::{hasher, CachePadded, Hashed, Sharded};

/// Counter stripes: more than the threads that usually check at once.
const COUNTER_STRIPES: usize = 64;

static NEXT_STRIPE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// This thread's counter stripe, handed out round robin.
    static THREAD_STRIPE: usize = NEXT_STRIPE.fetch_add(1, Relaxed);

    /// Scratch space for key material, reused by every check on a thread.
    static KEY_MATERIAL: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
}

/// The system clock in Unix seconds, for callers that do not inject time.
pub fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Stored times are `u32` Unix seconds; earlier or later instants are
/// pinned to the ends of that range.
pub(crate) fn clamp_time(now: i64) -> u32 {
    now.clamp(0, i64::from(u32::MAX)) as u32
}

pub(crate) const PASSED: u8 = 1;
/// A pending triplet a sweep judged lost mail: judged once per cycle.
pub(crate) const LOST: u8 = 2;
/// ... and credited to its network's report row (not when the network was
/// blocked, or had no record): only then does a late pass recover it.
pub(crate) const CREDITED: u8 = 4;

/// One triplet: its keyed hash, its state and 48 bits of its client
/// network's key. 32 bytes, so two fit a cache line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct TripletEntry {
    pub(crate) key: u128,
    pub(crate) first_seen: u32,
    pub(crate) last_seen: u32,
    pub(crate) net_lo: u32,
    pub(crate) net_hi: u16,
    pub(crate) early_retries: u8,
    pub(crate) flags: u8,
}

const _: () = assert!(std::mem::size_of::<TripletEntry>() == 32);

impl TripletEntry {
    pub(crate) fn new(key: u128, net_key: u128, s: TripletState) -> Self {
        let id = net_id(net_key);
        let mut e = TripletEntry {
            key,
            first_seen: 0,
            last_seen: 0,
            net_lo: id as u32,
            net_hi: (id >> 32) as u16,
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

    /// What a sweep credits to the network when this triplet is lost.
    /// What a sweep credits to the network when this triplet is lost;
    /// `mark`: the entry stays and is marked credited if it is.
    fn lost(&self, mark: bool) -> Lost {
        Lost {
            key: self.key,
            net_id: self.net_id(),
            last_seen: self.last_seen,
            early_retries: self.early_retries,
            mark,
        }
    }
}

impl Hashed for TripletEntry {
    fn hash(&self) -> u64 {
        self.key as u64
    }
}

/// Mail that a client network most likely lost (see [`Engine::lost_mail_report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostMail {
    /// The client network.
    pub network: ClientNet,
    /// Its triplets that became lost mail (see [`Engine::lost_mail_report`]),
    /// less those recovered by a late retry.
    pub count: u64,
    /// The last attempt of the latest such triplet (Unix seconds).
    pub last_seen: u32,
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
    key: u128,
    net_id: u64,
    last_seen: u32,
    early_retries: u8,
    mark: bool,
}

/// Counters of one stripe; a check adds to the stripe of the shard it
/// locked, so threads rarely share a counter's cache line.
#[derive(Default)]
struct Counters {
    reasons: [AtomicU64; Reason::ALL.len()],
    expired: AtomicU64,
    evicted: AtomicU64,
    clients_evicted: AtomicU64,
    lost_mail: AtomicU64,
    lost_recovered: AtomicU64,
}

/// A snapshot of the engine's counters, read without stopping checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Checks answered (the sum of the per-reason counts below).
    pub checks: u64,
    /// Verdicts with [`Reason::New`].
    pub new: u64,
    /// Verdicts with [`Reason::EarlyRetry`].
    pub early_retry: u64,
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
    /// Verdicts with [`Reason::BackendUnavailable`]: the shared store did
    /// not answer and the local table decided.
    pub backend_unavailable: u64,
    /// Calls the shared store answered (script loads after a restart
    /// included); pipelined, many calls may share one round trip.
    pub backend_round_trips: u64,
    /// Checks whose call failed (refused, dropped, an error answer).
    pub backend_errors: u64,
    /// Checks whose call got no answer within `redis_timeout`.
    pub backend_timeouts: u64,
    /// Passes answered from the local pass cache without a round trip.
    pub cache_hits: u64,
    /// Records in the shared store that were not in the script's format
    /// (damaged, or written by another program) and were treated as absent.
    pub backend_malformed: u64,
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
    pub lost_mail: u64,
    /// Lost triplets whose late retry passed after all (counted in
    /// `lost_mail` too, and taken off their network's report row).
    pub lost_recovered: u64,
    /// Triplet entries now in the table.
    pub entries: u64,
    /// Client-network records now kept.
    pub clients: u64,
}

impl Stats {
    /// The count for one reason.
    pub fn reason(&self, reason: Reason) -> u64 {
        match reason {
            Reason::New => self.new,
            Reason::EarlyRetry => self.early_retry,
            Reason::Retried => self.retried,
            Reason::Passed => self.passed,
            Reason::Whitelisted => self.whitelisted,
            Reason::AutoWhitelisted => self.auto_whitelisted,
            Reason::Blocked => self.blocked,
            Reason::Trapped => self.trapped,
            Reason::BackendUnavailable => self.backend_unavailable,
        }
    }
}

/// One request, parsed and keyed once.
pub(crate) struct Keys {
    pub(crate) net: ClientNet,
    pub(crate) net_key: u128,
    pub(crate) triplet_key: u128,
    listed: Listed,
}

impl Keys {
    /// Whether a static whitelist matched the request.
    pub(crate) fn whitelisted(&self) -> bool {
        self.listed == Listed::Whitelisted
    }
}

/// A check request: the triplet, plus what the MTA knows of the client.
///
/// Addresses and names are bytes, as SMTP carries them: an address that is
/// not UTF-8 (Latin-1 from an old client, or Postfix with
/// `smtputf8_enable=no`) or longer than [`MAX_ADDRESS_LEN`](crate::MAX_ADDRESS_LEN)
/// is keyed and greylisted like any other (see [`Engine::check_request`]).
///
/// ```
/// let req = greylist::Request::new("209.85.220.41", "alice@gmail.com", "bob@example.net")
///     .client_name("mail-a1.google.com")
///     .verified_domain("gmail.com");
/// # let _ = req;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request<'a> {
    /// The connecting client's IP address.
    pub client_ip: &'a str,
    /// The envelope sender; empty or `<>` for the null sender.
    pub sender: &'a [u8],
    /// The envelope recipient.
    pub recipient: &'a [u8],
    /// The client's host name, as the MTA verified it (forward-confirmed
    /// reverse DNS); matched against host-name whitelist entries. Ignored
    /// when it is not UTF-8 or longer than 1 KiB.
    pub client_name: Option<&'a [u8]>,
    /// The HELO/EHLO name. It is unverified, so it never decides anything,
    /// and any value is accepted.
    pub helo: Option<&'a [u8]>,
    /// A sender domain the MTA verified (SPF pass or DKIM signature); with
    /// `key_by_verified_domain` on, it replaces the client network. Ignored
    /// (the network keys the request) when it is not a domain name.
    pub verified_domain: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// A request with just the triplet.
    pub fn new(
        client_ip: &'a str,
        sender: &'a (impl AsRef<[u8]> + ?Sized),
        recipient: &'a (impl AsRef<[u8]> + ?Sized),
    ) -> Self {
        Request {
            client_ip,
            sender: sender.as_ref(),
            recipient: recipient.as_ref(),
            ..Request::default()
        }
    }

    /// With the client's verified host name.
    pub fn client_name(self, name: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        Request {
            client_name: Some(name.as_ref()),
            ..self
        }
    }

    /// With the HELO/EHLO name.
    pub fn helo(self, helo: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        Request {
            helo: Some(helo.as_ref()),
            ..self
        }
    }

    /// With a sender domain the MTA verified.
    pub fn verified_domain(self, domain: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        Request {
            verified_domain: Some(domain.as_ref()),
            ..self
        }
    }
}

/// Lost triplets found while a shard was locked, credited to their
/// networks after it is unlocked.
type LostList = Vec<Lost>;

/// The greylisting engine. Cheap to share: put it in an `Arc` and call it
/// from any number of threads; every method takes `&self`.
///
/// Locking: a check locks at most one client-network shard, then one
/// triplet shard, then (after a pass or an early retry) the client shard
/// again, never two at once. Maintenance (`sweep`, `len`, `stats`) locks one
/// shard at a time.
pub struct Engine {
    config: Config,
    secret: Secret,
    pub(crate) triplets: Sharded<TripletEntry>,
    pub(crate) clients: Sharded<ClientEntry>,
    counters: Box<[CachePadded<Counters>]>,
    shard_cap: usize,
    /// Most client-network records per client shard.
    client_cap: usize,
    /// Held for a whole save: one save at a time per engine.
    pub(crate) save_lock: parking_lot::Mutex<()>,
    /// The static lists, replaced whole; read without a lock.
    pub(crate) lists: ArcSwap<Lists>,
    events: Events,
    /// One bit per (hashed) client network that may be blocked or
    /// auto-whitelisted; see [`Engine::may_gate`].
    pub(crate) gates: Box<[AtomicU64]>,
    /// The shared store, when the configuration names one.
    #[cfg(feature = "redis")]
    store: Option<crate::redis_store::RedisStore>,
    /// For an engine opened from its snapshot file: the lock that keeps a
    /// second process (or engine) off that file while this one lives.
    pub(crate) snapshot_lock: Option<crate::files::PathLock>,
}

/// Gate words per client shard: 128 bits, 16 KiB for 1,024 shards, small
/// enough to stay in cache; a bit shared by two networks only costs a lock.
const GATE_WORDS_PER_SHARD: usize = 2;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("shards", &self.triplets.shard_count())
            .finish_non_exhaustive()
    }
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(Config::default())
    }
}

impl Engine {
    /// An empty engine keyed by the configuration's shared secret, or by a
    /// fresh random one.
    pub fn new(config: Config) -> Engine {
        let secret = config.shared_secret.clone().unwrap_or_else(Secret::random);
        Engine::with_secret(config, secret)
    }

    /// An empty engine keyed by `secret` (from a snapshot, or shared by
    /// several MX hosts).
    pub fn with_secret(config: Config, secret: Secret) -> Engine {
        // Each shard holds at most max_entries / shards, so with fewer
        // entries than shards there are fewer shards.
        let max = usize::try_from(config.max_entries).unwrap_or(usize::MAX);
        let largest_fitting = 1usize << (usize::BITS - 1 - max.leading_zeros());
        let shards = config.shards.min(largest_fitting);
        Engine {
            triplets: Sharded::new(shards),
            clients: Sharded::new(shards),
            counters: (0..COUNTER_STRIPES)
                .map(|_| CachePadded(Counters::default()))
                .collect(),
            shard_cap: max / shards,
            client_cap: (usize::try_from(config.max_clients).unwrap_or(usize::MAX) / shards).max(1),
            save_lock: parking_lot::Mutex::new(()),
            lists: ArcSwap::from_pointee(Lists::default()),
            events: Events::new(COUNTER_STRIPES),
            gates: (0..shards * GATE_WORDS_PER_SHARD)
                .map(|_| AtomicU64::new(0))
                .collect(),
            #[cfg(feature = "redis")]
            store: crate::redis_store::RedisStore::new(&config),
            snapshot_lock: None,
            config,
            secret,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The key secret, for persistence.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Parses and keys a request, and looks it up in the static lists.
    ///
    /// Only a client IP that is not one, and an empty recipient, are
    /// errors. Sender and recipient are normalised as bytes; one over
    /// [`MAX_ADDRESS_LEN`](crate::MAX_ADDRESS_LEN) is keyed by a hash of its
    /// exact bytes (and matches no list). An unusable optional attribute
    /// (client name, verified domain) is ignored.
    pub(crate) fn keys(&self, req: &Request<'_>) -> Result<Keys, InputError> {
        let c = &self.config;
        let ip = normalize::parse_ip(req.client_ip)?;
        fn text(v: Option<&[u8]>) -> Option<&str> {
            v.filter(|v| v.len() <= normalize::MAX_ADDRESS_LEN)
                .and_then(|v| std::str::from_utf8(v).ok())
        }
        let client_name = text(req.client_name);
        let domain = text(req.verified_domain.filter(|_| c.key_by_verified_domain))
            .and_then(|d| ClientNet::domain(d).ok());
        let net = domain.unwrap_or_else(|| ClientNet::from_ip(ip, c.ipv4_prefix, c.ipv6_prefix));
        let delimiters = c.extension_delimiters.as_bytes();
        let lists = self.lists.load();
        let secret = &self.secret;
        // Key material is built in a per-thread buffer: no allocation and
        // one hasher call per key.
        KEY_MATERIAL.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf.clear();
            buf.push(NET_TAG);
            net.encode_into(&mut buf);
            let net_key = secret.hash(&buf);
            buf[0] = TRIPLET_TAG;
            let sender = push_part_or_hash(&mut buf, secret, req.sender, |b| {
                normalize::sender_into(req.sender, delimiters, b);
                Ok(())
            })?;
            let rcpt = push_part_or_hash(&mut buf, secret, req.recipient, |b| {
                normalize::recipient_into(req.recipient, delimiters, b)
            })?;
            let listed = if lists.is_empty() {
                Listed::No
            } else {
                // An over-long address matches no list entry.
                let sender =
                    sender.map_or_else(String::new, |_| normalize::lower_address(req.sender));
                let recipient = rcpt.map_or_else(String::new, |r| {
                    String::from_utf8_lossy(&buf[r]).into_owned()
                });
                lists.lookup(ip, client_name, &sender, &recipient)
            };
            Ok(Keys {
                triplet_key: secret.hash(&buf),
                net_key,
                net,
                listed,
            })
        })
    }

    /// The keyed 128-bit hash a triplet is stored under (after
    /// normalisation), for stores outside the engine and for benchmarks.
    /// Only meaningful with this engine's secret.
    pub fn triplet_key(
        &self,
        client_ip: &str,
        sender: &(impl AsRef<[u8]> + ?Sized),
        recipient: &(impl AsRef<[u8]> + ?Sized),
    ) -> Result<u128, InputError> {
        Ok(self
            .keys(&Request::new(client_ip, sender, recipient))?
            .triplet_key)
    }

    /// Decides one triplet at `now` (Unix seconds; pass [`unix_now()`] for
    /// the system clock) and records the attempt.
    ///
    /// Errors name the argument that could not be parsed (an IP that is not
    /// one, an empty recipient, an address over 1 KiB); nothing is recorded
    /// then.
    pub fn check(
        &self,
        client_ip: &str,
        sender: &(impl AsRef<[u8]> + ?Sized),
        recipient: &(impl AsRef<[u8]> + ?Sized),
        now: i64,
    ) -> Result<Verdict, InputError> {
        self.check_request(&Request::new(client_ip, sender, recipient), now)
    }

    /// Decides one request at `now`, with what the MTA knows of the client:
    /// a whitelisted client (by address or verified host name), sender or
    /// recipient passes; a trap recipient blocks the client network; with
    /// `key_by_verified_domain`, a verified sender domain replaces the
    /// client network in the key.
    pub fn check_request(&self, req: &Request<'_>, now: i64) -> Result<Verdict, InputError> {
        let keys = self.keys(req)?;
        let now = clamp_time(now);
        let verdict = self.decide(&keys, now);
        self.emit(|| Event {
            kind: match verdict.action {
                crate::Action::Pass => EventKind::Passed,
                crate::Action::Defer => EventKind::Deferred,
                crate::Action::Block => EventKind::Blocked,
            },
            network: keys.net.clone(),
            reason: verdict.reason,
            at: now,
            count: 0,
        });
        Ok(verdict)
    }

    /// Calls the event callback, if any, with an event made only then.
    fn emit(&self, event: impl FnOnce() -> Event) {
        self.events.emit(THREAD_STRIPE.with(|s| *s), event);
    }

    /// Sets (or with `None` removes) the event callback. It receives every
    /// verdict, every lost and recovered triplet, and every block's start
    /// and end (see [`EventKind`]), on the calling thread, with no lock
    /// held.
    ///
    /// When this returns, the previous callback has returned from every
    /// call and is never called again (it is dropped then), so whatever it
    /// points to may be freed. It waits for calls in flight on other
    /// threads to end, which is why a callback must not call it: from
    /// inside a callback of this engine it returns
    /// [`CallbackError::InsideCallback`] and changes nothing.
    pub fn on_event(&self, sink: Option<EventSink>) -> Result<(), CallbackError> {
        self.events.replace(sink)
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
        self.stripe().clients_evicted.fetch_add(removed, Relaxed);
        self.rebuild_gates(c_idx, table);
    }

    /// Whether a client record could ever decide a check on its own
    /// (blocked, or auto-whitelisted) at some `now`: only then is its gate
    /// bit set, and only then does a check lock its shard.
    pub(crate) fn may_gate(&self, state: &ClientState) -> bool {
        state.blocked_until != 0
            || (self.config.awl_threshold > 0 && state.passes >= self.config.awl_threshold)
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

    fn decide(&self, k: &Keys, now: u32) -> Verdict {
        let v = self
            .decide_shared(k, now)
            .unwrap_or_else(|| self.decide_local(k, now));
        self.count(v);
        v
    }

    /// Decides through the shared store, if there is one (whitelisted
    /// requests need no state, so they stay local). When the store does
    /// not answer, the local table decides, marked as such.
    #[cfg(feature = "redis")]
    fn decide_shared(&self, k: &Keys, now: u32) -> Option<Verdict> {
        let store = self.store.as_ref()?;
        let trap = match k.listed {
            Listed::Whitelisted => return None,
            Listed::Trap => true,
            Listed::No => false,
        };
        if !trap {
            if let Some(v) = store.cached_pass(k.triplet_key, now) {
                return Some(v);
            }
        }
        Some(
            match store.check(k.triplet_key, k.net_key, trap, now, &self.config) {
                Some(v) => v,
                None => {
                    crate::redis_store::fallback(self.decide_local(k, now), self.config.fail_mode)
                }
            },
        )
    }

    #[cfg(not(feature = "redis"))]
    fn decide_shared(&self, _: &Keys, _: u32) -> Option<Verdict> {
        None
    }

    /// Decides with the in-memory tables (not counted: the caller counts).
    fn decide_local(&self, k: &Keys, now: u32) -> Verdict {
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
        let (word, bit) = self.gate_bit(c_idx, c_hash);
        let gate = if self.gates[word].load(Relaxed) & bit == 0 {
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

        let t_hash = k.triplet_key as u64;
        let t_idx = self.triplets.index(t_hash);
        let mut lost = LostList::new();
        let (verdict, copies, recovered) = {
            let mut table = self.triplets.lock(t_idx);
            match table.find_mut(t_hash, |e| e.key == k.triplet_key) {
                Some(e) => {
                    let judged = e.flags & (LOST | CREDITED);
                    let old = e.lost(false);
                    let (s, v) = triplet_step(Some(e.state()), now, config);
                    // An expired record no sweep removed yet: its lost mail
                    // is judged now, before the new cycle replaces it.
                    if v.reason == Reason::New && judged == 0 && e.state().is_lost(now, config) {
                        lost.push(old);
                    }
                    e.set_state(s);
                    // Judged once per cycle: a new cycle starts unjudged, a
                    // pass recovers a credited one, anything else (an early
                    // retry after the clock stepped back) keeps the marks.
                    if !matches!(v.reason, Reason::New | Reason::Retried) {
                        e.flags |= judged;
                    }
                    let recovered = judged & CREDITED != 0 && v.reason == Reason::Retried;
                    (v, s.early_retries, recovered)
                }
                None => {
                    let (s, v) = triplet_step(None, now, config);
                    if table.len() >= self.shard_cap {
                        self.make_room(&mut table, now, &mut lost);
                    }
                    let entry = TripletEntry::new(k.triplet_key, k.net_key, s);
                    table.insert_unique(t_hash, entry, hasher);
                    (v, s.early_retries, false)
                }
            }
        };
        self.credit_lost(&lost, now);
        if recovered {
            self.credit_recovered(k, now);
        }

        if touches_client(&verdict, config) {
            let early = verdict.reason == Reason::EarlyRetry;
            let v = self.with_client(k, now, early, |c| {
                client_update(c, verdict, copies, now, config)
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
        self.emit(|| Event {
            kind: EventKind::BlockStarted,
            network: k.net.clone(),
            reason,
            at: now,
            count,
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
            self.stripe().lost_recovered.fetch_add(1, Relaxed);
            self.emit(|| Event {
                kind: EventKind::Recovered,
                network: k.net.clone(),
                reason: Reason::Retried,
                at: now,
                count: 0,
            });
        }
    }

    fn count(&self, v: Verdict) {
        self.stripe().reasons[v.reason.index()].fetch_add(1, Relaxed);
    }

    /// This thread's counters: each thread keeps to one stripe, so its
    /// counter line stays in its core's cache.
    fn stripe(&self) -> &Counters {
        &self.counters[THREAD_STRIPE.with(|s| *s) % self.counters.len()].0
    }

    /// Removes expired entries from a locked shard, and marks and collects
    /// the triplets that became lost mail (each once: a lost triplet stays
    /// until its window ends, so a late retry can still pass).
    fn remove_expired(
        &self,
        table: &mut HashTable<TripletEntry>,
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
    fn make_room(&self, table: &mut HashTable<TripletEntry>, now: u32, lost: &mut LostList) {
        let counters = self.stripe();
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
        let hash = entry.key as u64;
        let idx = self.triplets.index(hash);
        let mut lost = LostList::new();
        {
            let mut table = self.triplets.lock(idx);
            if table.find(hash, |e| e.key == entry.key).is_some() {
                return false;
            }
            if table.len() >= self.shard_cap {
                self.make_room(&mut table, now, &mut lost);
            }
            table.insert_unique(hash, entry, hasher);
        }
        self.credit_lost(&lost, now);
        true
    }

    /// Makes room for `entries` triplets up front, spread over the shards.
    pub(crate) fn reserve(&mut self, entries: usize) {
        let shards = self.triplets.shard_count();
        let per_shard = (entries / shards + entries / shards / 8).min(self.shard_cap);
        for i in 0..shards {
            self.triplets.get_mut(i).reserve(per_shard, hasher);
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
                let hash = l.key as u64;
                let mut table = self.triplets.lock(self.triplets.index(hash));
                if let Some(e) = table.find_mut(hash, |e| e.key == l.key) {
                    if e.flags & LOST != 0 {
                        e.flags |= CREDITED;
                    }
                }
            }
        }
    }

    /// Credits one lost triplet; whether its network's row got it.
    fn credit_one(&self, l: &Lost, now: u32) -> bool {
        let hash = client_hash(l.net_id);
        let idx = self.clients.index(hash);
        let network = {
            let mut clients = self.clients.lock(idx);
            match clients.find_mut(hash, |e| net_id(e.key) == l.net_id) {
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
        self.stripe().lost_mail.fetch_add(1, Relaxed);
        let Some(network) = network else {
            return false;
        };
        self.emit(|| Event {
            kind: EventKind::LostMail,
            network,
            reason: Reason::EarlyRetry,
            at: l.last_seen,
            count: u32::from(l.early_retries),
        });
        true
    }

    /// Removes every expired entry, one shard at a time (checks go on in the
    /// other shards), and returns the number of triplet entries removed.
    /// Expired client-network records are removed too, but not counted.
    pub fn sweep(&self, now: i64) -> u64 {
        let now = clamp_time(now);
        let mut total = 0;
        let mut lost = LostList::new();
        for i in 0..self.triplets.shard_count() {
            let removed = self.remove_expired(&mut self.triplets.lock(i), now, &mut lost);
            self.stripe().expired.fetch_add(removed, Relaxed);
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
                self.emit(|| Event {
                    kind: EventKind::BlockEnded,
                    network,
                    reason: Reason::Blocked,
                    at,
                    count: 0,
                });
            }
        }
        total
    }

    /// The most memory, in bytes, the triplet table can take when full at
    /// `max_entries`: each shard's hash table holds a power-of-two number of
    /// 32-byte buckets plus one control byte each, at most 7/8 full, so
    /// this is between 38 and 76 bytes per entry allowed.
    pub fn table_memory_limit(&self) -> usize {
        let buckets = (self.shard_cap * 8 / 7 + 1).next_power_of_two();
        let per_shard = buckets * (std::mem::size_of::<TripletEntry>() + 1) + 64;
        per_shard * self.triplets.shard_count()
    }

    /// Triplet entries (pending and passed) in the table.
    pub fn len(&self) -> usize {
        self.triplets.len()
    }

    /// Whether the triplet table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters, summed over all stripes while checks go on.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        let mut reasons = [0u64; Reason::ALL.len()];
        for stripe in self.counters.iter() {
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
        [
            s.new,
            s.early_retry,
            s.retried,
            s.passed,
            s.whitelisted,
            s.auto_whitelisted,
            s.blocked,
            s.trapped,
            s.backend_unavailable,
        ] = reasons;
        #[cfg(feature = "redis")]
        if let Some(store) = &self.store {
            let c = store.counters();
            s.backend_round_trips = c.round_trips.load(Relaxed);
            s.backend_errors = c.errors.load(Relaxed);
            s.backend_timeouts = c.timeouts.load(Relaxed);
            s.cache_hits = c.cache_hits.load(Relaxed);
            s.backend_malformed = c.malformed.load(Relaxed);
        }
        s.checks = reasons.iter().sum();
        s.entries = self.triplets.len() as u64;
        s.clients = self.clients.len() as u64;
        s
    }

    /// For a host's start-up log: connects to the shared store, if there
    /// is one, on a connection of its own within `timeout`. `Ok` carries
    /// warnings (a `maxmemory-policy` that can evict the engine's
    /// records); `Err` says why the store cannot be reached. `None`
    /// without a shared store.
    pub fn probe_backend(
        &self,
        timeout: std::time::Duration,
    ) -> Option<Result<Vec<String>, String>> {
        #[cfg(feature = "redis")]
        if let Some(store) = &self.store {
            return Some(store.probe(timeout));
        }
        let _ = timeout;
        None
    }

    /// The latest failure talking to the shared store (for a host's log
    /// when checks start to be answered locally), if any.
    pub fn backend_error(&self) -> Option<String> {
        #[cfg(feature = "redis")]
        if let Some(store) = &self.store {
            return store.last_error();
        }
        None
    }

    /// The stored state of one triplet, if any (expired entries included
    /// until a sweep removes them). Changes nothing.
    pub fn triplet_state(
        &self,
        client_ip: &str,
        sender: &(impl AsRef<[u8]> + ?Sized),
        recipient: &(impl AsRef<[u8]> + ?Sized),
    ) -> Result<Option<TripletState>, InputError> {
        let k = self.keys(&Request::new(client_ip, sender, recipient))?;
        let hash = k.triplet_key as u64;
        let table = self.triplets.lock(self.triplets.index(hash));
        Ok(table
            .find(hash, |e| e.key == k.triplet_key)
            .map(TripletEntry::state))
    }

    /// The stored state of a client's network, if any. Changes nothing.
    pub fn client_state(&self, client_ip: &str) -> Result<Option<ClientState>, InputError> {
        let net = ClientNet::parse(client_ip, self.config.ipv4_prefix, self.config.ipv6_prefix)?;
        let key = self.secret.net_key(&net);
        let hash = client_hash(net_id(key));
        let clients = self.clients.lock(self.clients.index(hash));
        Ok(clients.find(hash, |e| e.key == key).map(|e| e.state))
    }

    /// The client networks whose mail was most likely lost, worst first
    /// (most lost triplets, then the latest): a triplet is lost when it saw
    /// early retries (at most `blast_copies`), its network was never
    /// blocked, and no attempt came for `lost_after` after its delay (the
    /// pattern of a sender that retries within seconds and then gives up,
    /// as Exchange 2003 SP2 did). Lost triplets are found by
    /// [`sweep`](Self::sweep) (the maintenance thread sweeps at its
    /// interval); one whose late retry passes leaves the count. A row stays
    /// for `awl_ttl` (35 days) after its latest lost triplet, unless a full
    /// client table evicts it. At most `limit` rows.
    pub fn lost_mail_report(&self, limit: usize) -> Vec<LostMail> {
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
        rows.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_seen.cmp(&a.last_seen)));
        rows.truncate(limit);
        rows
    }

    /// The suggested SMTP reply for a defer or block, `None` for a pass:
    /// e.g. `450 4.2.0 Greylisted, please try again in 300 seconds`.
    pub fn reply(&self, verdict: &Verdict) -> Option<String> {
        let c = &self.config;
        let text = match verdict.action {
            crate::Action::Pass => return None,
            crate::Action::Defer => &c.greylist_text,
            crate::Action::Block => &c.block_text,
        };
        let text = text.replace("%s", &verdict.retry_after.to_string());
        Some(format!("{} {} {}", c.reply_code, c.reply_enhanced, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;

    const T0: i64 = 1_700_000_000;

    fn engine() -> Engine {
        Engine::new(Config::builder().shards(4).build().unwrap())
    }

    #[test]
    fn the_greylisting_cycle() {
        let e = engine();
        let check = |now| {
            e.check("192.0.2.1", "alice@example.org", "bob@example.net", now)
                .unwrap()
        };
        let v = check(T0);
        assert_eq!(
            (v.action, v.reason, v.retry_after),
            (Action::Defer, Reason::New, 300)
        );
        let v = check(T0 + 100);
        assert_eq!(
            (v.action, v.reason, v.retry_after),
            (Action::Defer, Reason::EarlyRetry, 200)
        );
        let v = check(T0 + 301);
        assert_eq!(
            (v.action, v.reason, v.delayed),
            (Action::Pass, Reason::Retried, 301)
        );
        let v = check(T0 + 86_400);
        assert_eq!((v.action, v.reason), (Action::Pass, Reason::Passed));
        assert_eq!(e.len(), 1);
        let s = e.stats();
        assert_eq!(
            (s.checks, s.new, s.early_retry, s.retried, s.passed),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(s.entries, 1);
    }

    #[test]
    fn normalised_variants_are_one_triplet() {
        let e = engine();
        e.check(
            "192.0.2.1",
            "prvs=1234abcd=Alice+x@Example.org",
            "Bob+tag@example.NET",
            T0,
        )
        .unwrap();
        let v = e
            .check(
                "192.0.2.77",
                "<alice@example.org>",
                "<bob@example.net>",
                T0 + 300,
            )
            .unwrap();
        assert_eq!(v.reason, Reason::Retried);
        assert_eq!(e.len(), 1);
        // ::ffff:192.0.2.9 is the same /24.
        let v = e
            .check(
                "::ffff:192.0.2.9",
                "alice@example.org",
                "bob@example.net",
                T0 + 400,
            )
            .unwrap();
        assert_eq!(v.reason, Reason::Passed);
        // Another /24 is another triplet.
        let v = e
            .check(
                "192.0.3.1",
                "alice@example.org",
                "bob@example.net",
                T0 + 400,
            )
            .unwrap();
        assert_eq!(v.reason, Reason::New);
    }

    #[test]
    fn null_sender_forms_are_one_sender() {
        let e = engine();
        e.check("2001:db8::1", "", "bob@example.net", T0).unwrap();
        let v = e
            .check("2001:db8::2", "<>", "bob@example.net", T0 + 300)
            .unwrap();
        assert_eq!(v.reason, Reason::Retried);
    }

    #[test]
    fn bad_input_records_nothing() {
        let e = engine();
        let err = e.check("999.0.0.1", "a@b", "c@d", T0).unwrap_err();
        assert_eq!(err.argument(), "client_ip");
        let err = e.check("192.0.2.1", "a@b", "", T0).unwrap_err();
        assert_eq!(err.argument(), "recipient");
        let err = e.check("192.0.2.1", "a@b", "<>", T0).unwrap_err();
        assert_eq!(err.argument(), "recipient");
        assert_eq!(e.len(), 0);
        assert_eq!(e.stats().checks, 0);
    }

    /// Issue 15, item 1: an address too long to normalise, or not UTF-8,
    /// used to be refused, and the daemon waved refused requests through.
    /// Such a request is keyed by its bytes and greylisted like any other.
    #[test]
    fn over_long_and_non_utf8_addresses_are_greylisted() {
        let e = engine();
        let long = format!("{}@spam.example", "x".repeat(70_000));
        let other = format!("{}@spam.example", "y".repeat(70_000));
        for (sender, recipient) in [
            (long.as_bytes(), &b"bob@example.net"[..]),
            (b"alice@example.org", long.as_bytes()),
            (b"J\xfcrgen@b\xfccher.example", b"bob@example.net"),
            (b"alice@example.org", b"b\xf6b@example.net"),
        ] {
            let at = |now| {
                e.check_request(&Request::new("192.0.2.1", sender, recipient), now)
                    .unwrap()
            };
            let v = at(T0);
            assert_eq!(
                (v.action, v.reason, v.retry_after),
                (Action::Defer, Reason::New, 300)
            );
            assert_eq!(at(T0 + 100).reason, Reason::EarlyRetry);
            assert_eq!(at(T0 + 300).reason, Reason::Retried);
        }
        // Distinct over-long senders are distinct triplets.
        let v = e
            .check("192.0.2.1", &other, "bob@example.net", T0 + 300)
            .unwrap();
        assert_eq!(v.reason, Reason::New);
        // Bytes that are not UTF-8 are normalised as the ASCII around them.
        let v = e
            .check_request(
                &Request::new(
                    "192.0.2.9",
                    b"J\xfcrgen+tag@B\xfcCHER.example",
                    "bob@example.net",
                ),
                T0 + 300,
            )
            .unwrap();
        assert_eq!(v.reason, Reason::Passed, "the sender passed above");
    }

    /// Issue 15, item 1: an over-long or non-UTF-8 HELO or client name
    /// made the whole request an error; now it is ignored.
    #[test]
    fn unusable_optional_attributes_are_ignored() {
        let e = engine();
        let long = "h".repeat(5000);
        let base = Request::new("192.0.2.1", "a@example.org", "b@example.net");
        for req in [
            base.helo(&long),
            base.helo(b"\xff\xfe"),
            base.client_name(&long),
            base.client_name(b"mail.\xff.example"),
            base.verified_domain(b"not a domain"),
            base.verified_domain(&long),
        ] {
            assert_eq!(e.check_request(&req, T0).unwrap().action, Action::Defer);
        }
        assert_eq!(
            e.len(),
            1,
            "one triplet: the optional attributes changed nothing"
        );
        assert_eq!(
            e.check_request(&base, T0 + 300).unwrap().reason,
            Reason::Retried
        );
    }

    #[test]
    fn auto_whitelist_after_five_passes() {
        let e = engine();
        for i in 0..5 {
            let rcpt = format!("user{i}@example.net");
            e.check("192.0.2.1", "a@example.org", &rcpt, T0).unwrap();
            let v = e
                .check("192.0.2.1", "a@example.org", &rcpt, T0 + 300)
                .unwrap();
            assert_eq!(v.reason, Reason::Retried);
        }
        let v = e
            .check("192.0.2.200", "new@example.com", "x@example.net", T0 + 301)
            .unwrap();
        assert_eq!(
            (v.action, v.reason),
            (Action::Pass, Reason::AutoWhitelisted)
        );
        // The auto-whitelist does not grow the triplet table.
        assert_eq!(e.len(), 5);
        let c = e.client_state("192.0.2.5").unwrap().unwrap();
        assert_eq!(c.passes, 5);
        // Another network is not whitelisted.
        let v = e
            .check("192.0.3.1", "new@example.com", "x@example.net", T0 + 301)
            .unwrap();
        assert_eq!(v.reason, Reason::New);
    }

    #[test]
    fn blasting_client_is_blocked_and_others_are_not() {
        let e = engine();
        let mut last = None;
        // One copy a second for 25 seconds: 25 rounds of early retries.
        for i in 0..=25 {
            last = Some(
                e.check(
                    "203.0.113.9",
                    "spam@example.com",
                    "victim@example.net",
                    T0 + i,
                )
                .unwrap(),
            );
        }
        let v = last.unwrap();
        assert_eq!((v.action, v.reason), (Action::Block, Reason::Blocked));
        // The block covers every triplet of the network.
        let v = e
            .check(
                "203.0.113.10",
                "other@example.com",
                "x@example.net",
                T0 + 30,
            )
            .unwrap();
        assert_eq!(v.reason, Reason::Blocked);
        // A well-behaved sender on another /24 passes after the delay.
        e.check("198.51.100.1", "good@example.org", "x@example.net", T0)
            .unwrap();
        let v = e
            .check(
                "198.51.100.1",
                "good@example.org",
                "x@example.net",
                T0 + 300,
            )
            .unwrap();
        assert_eq!(v.reason, Reason::Retried);
        assert_eq!(e.reply(&v), None);
    }

    #[test]
    fn sweep_removes_only_expired_entries() {
        let e = engine();
        e.check("192.0.2.1", "a@x.org", "pending@y.net", T0)
            .unwrap();
        e.check("192.0.2.1", "a@x.org", "passed@y.net", T0).unwrap();
        e.check("192.0.2.1", "a@x.org", "passed@y.net", T0 + 300)
            .unwrap();
        assert_eq!(e.sweep(T0 + 2 * 86_400), 0);
        assert_eq!(e.sweep(T0 + 2 * 86_400 + 1), 1);
        assert_eq!(e.len(), 1);
        assert_eq!(e.sweep(T0 + 300 + 35 * 86_400 + 1), 1);
        assert!(e.is_empty());
        assert_eq!(e.stats().expired, 2);
    }

    #[test]
    fn lost_mail_is_reported_for_early_retries_only() {
        let e = engine();
        // Exchange 2003 SP2: two quick retries, then silence.
        e.check("192.0.2.10", "a@corp.example", "u@y.net", T0)
            .unwrap();
        e.check("192.0.2.10", "a@corp.example", "u@y.net", T0 + 4)
            .unwrap();
        e.check("192.0.2.10", "a@corp.example", "u@y.net", T0 + 9)
            .unwrap();
        // A spammer that never retried.
        e.check("198.51.100.3", "s@spam.example", "u@y.net", T0)
            .unwrap();
        assert_eq!(e.sweep(T0 + 3 * 86_400), 2);
        let report = e.lost_mail_report(10);
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].network.to_string(), "192.0.2.0/24");
        assert_eq!((report[0].count, report[0].last_seen), (1, (T0 + 9) as u32));
        assert_eq!(e.stats().lost_mail, 1);
    }

    #[test]
    fn max_entries_is_never_exceeded_and_passed_survive() {
        let cap = 4096;
        // Auto-whitelisting off, so the passed triplets themselves must survive.
        let config = Config::builder()
            .shards(4)
            .max_entries(cap)
            .awl_threshold(0);
        let e = Engine::new(config.build().unwrap());
        for i in 0..100 {
            let r = format!("good{i}@y.net");
            e.check("192.0.2.1", "a@x.org", &r, T0).unwrap();
            e.check("192.0.2.1", "a@x.org", &r, T0 + 300).unwrap();
        }
        for i in 0..50_000 {
            e.check(
                "198.51.100.1",
                &format!("s{i}x@spam.example"),
                &format!("r{i}@y.net"),
                T0 + 400,
            )
            .unwrap();
            assert!(e.len() as u64 <= cap);
        }
        assert!(e.stats().evicted > 40_000);
        for i in 0..100 {
            let v = e
                .check("192.0.2.1", "a@x.org", &format!("good{i}@y.net"), T0 + 500)
                .unwrap();
            assert_eq!(v.reason, Reason::Passed, "good{i}");
        }
    }

    #[test]
    fn fewer_entries_than_shards() {
        let e = Engine::new(Config::builder().shards(64).max_entries(3).build().unwrap());
        for i in 0..10 {
            e.check("192.0.2.1", "a@x.org", &format!("r{i}@y.net"), T0 + i)
                .unwrap();
        }
        assert!(e.len() <= 3);
    }

    #[test]
    fn replies() {
        let e = engine();
        let v = e.check("192.0.2.1", "a@x.org", "b@y.net", T0).unwrap();
        assert_eq!(
            e.reply(&v).unwrap(),
            "450 4.2.0 Greylisted, please try again in 300 seconds"
        );
        let custom = Engine::new(
            Config::builder()
                .reply_code(451)
                .reply_enhanced("4.7.1")
                .greylist_text("Come back in %s s")
                .build()
                .unwrap(),
        );
        let v = custom.check("192.0.2.1", "a@x.org", "b@y.net", T0).unwrap();
        assert_eq!(custom.reply(&v).unwrap(), "451 4.7.1 Come back in 300 s");
    }

    #[test]
    fn time_outside_u32_is_pinned() {
        let e = engine();
        let v = e
            .check("192.0.2.1", "a@x.org", "b@y.net", i64::MIN)
            .unwrap();
        assert_eq!(v.reason, Reason::New);
        let v = e
            .check("192.0.2.1", "a@x.org", "b@y.net", i64::MAX)
            .unwrap();
        assert_eq!(
            v.reason,
            Reason::New,
            "u32::MAX is past the retry window of 0"
        );
        assert!(unix_now() > 1_600_000_000);
    }
}
