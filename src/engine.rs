//! The engine's front: key a request, consult the lists, ask the store
//! ([`crate::store`]), count the verdict, emit its event.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::events::{CallbackError, Event, EventKind, EventSink, Events};
pub use crate::key::Request;
use crate::key::{KeyKind, Keys, Secret};
use crate::lists::Lists;
use crate::normalize::InputError;
use crate::rules::{ClientState, Reason, TripletState, Verdict};
use crate::stats::{Counters, Stats};
use crate::store::{LostMail, MemoryStore, Store, StoreError};

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

/// The greylisting engine. Cheap to share: put it in an `Arc` and call it
/// from any number of threads; every method takes `&self`.
pub struct Engine {
    config: Config,
    secret: Secret,
    /// Where the state lives (see [`crate::store`]).
    store: Box<dyn Store>,
    /// Verdicts, by reason.
    counters: Counters,
    /// Held for a whole save: one save at a time per engine.
    pub(crate) save_lock: parking_lot::Mutex<()>,
    /// The static lists, replaced whole; read without a lock.
    pub(crate) lists: ArcSwap<Lists>,
    events: Arc<Events>,
    /// For an engine opened from its snapshot file: the lock that keeps a
    /// second process (or engine) off that file while this one lives.
    pub(crate) snapshot_lock: Option<crate::files::PathLock>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("shards", &self.local().shard_count())
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
        let events = Arc::new(Events::new(crate::table::STRIPES));
        Engine {
            store: crate::store::open(&config, events.clone()),
            counters: Counters::default(),
            save_lock: parking_lot::Mutex::new(()),
            lists: ArcSwap::from_pointee(Lists::default()),
            events,
            snapshot_lock: None,
            config,
            secret,
        }
    }

    /// The in-memory table: the whole state, or with a shared store what
    /// was decided while it did not answer. Snapshots save and restore it.
    pub(crate) fn local(&self) -> &MemoryStore {
        self.store.local()
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The key secret, for persistence.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Parses and keys a request, and looks it up in the static lists
    /// (see [`crate::key::keys`]).
    pub(crate) fn keys(&self, req: &Request<'_>) -> Result<Keys, InputError> {
        crate::key::keys(&self.config, &self.secret, &self.lists.load(), req)
    }

    /// The keyed 128-bit hash of a triplet (after normalisation), as a
    /// shared store names its record (`<prefix>{<network key>}:t:<this>`),
    /// for stores outside the engine and for benchmarks. Only meaningful
    /// with this engine's secret.
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

    /// The 128-bit identifier of a whole request's triplet, as
    /// [`check_request`](Self::check_request) keys it (with a verified
    /// domain or host name where they change the key): what a host keeps a
    /// deferred request's addresses under, to name them when an event
    /// ([`Event::triplet`](crate::Event::triplet)) says its mail was lost.
    /// Opaque: 48 bits of the client's network key above 64 bits of the
    /// triplet's keyed hash, what the table keeps of both (so a sweep can
    /// name a triplet it finds), and the same from the local table and from
    /// a shared store.
    pub fn request_key(&self, req: &Request<'_>) -> Result<u128, InputError> {
        Ok(self.keys(req)?.triplet_id().public())
    }

    /// The keyed 128-bit hash a client's network is stored under (its
    /// hash tag in Redis, `<prefix>{<32 hex>}:`). Only meaningful with this
    /// engine's secret.
    pub fn network_key(&self, client_ip: &str) -> Result<u128, InputError> {
        Ok(self.client_keys(client_ip, None)?.net_key)
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
        self.check_request_keyed(req, now)
            .map(|(verdict, _)| verdict)
    }

    /// [`check_request`](Self::check_request), also giving the key of the
    /// triplet as it was judged: the key its entry is stored under and its
    /// events carry ([`request_key`](Self::request_key) of the request, or
    /// of its network when the network decided a request keyed by a
    /// domain). A host keeps what it knows of a triplet under it without
    /// deriving the key a second time.
    pub fn check_request_keyed(
        &self,
        req: &Request<'_>,
        now: i64,
    ) -> Result<(Verdict, u128), InputError> {
        let mut keys = self.keys(req)?;
        let now = clamp_time(now);
        let mut verdict = if keys.whitelisted() {
            Verdict::new(Reason::Whitelisted, 0, 0)
        } else if keys.kind == KeyKind::Network {
            self.store.check(&keys, now)
        } else {
            let (k, v) = self.check_by_domain(req, keys, now);
            keys = k;
            v
        };
        verdict.key = keys.kind;
        let triplet = keys.triplet_id().public();
        self.counters.mine().reasons[verdict.reason.index()].fetch_add(1, Relaxed);
        self.events.emit(|| Event {
            kind: match verdict.action {
                crate::Action::Pass => EventKind::Passed,
                crate::Action::Defer => EventKind::Deferred,
                crate::Action::Block => EventKind::Blocked,
            },
            network: keys.net.clone(),
            reason: verdict.reason,
            at: now,
            count: 0,
            triplet: Some(triplet),
        });
        Ok((verdict, triplet))
    }

    /// Decides a request keyed by a domain (a verified host name's or
    /// sender's). The client's network still counts where it decides
    /// alone: a blocked network (a trap hit, blasting) stays blocked under
    /// any name, and an auto-whitelisted one passes. A domain triplet that
    /// would be deferred (new, or retried early) passes when the network
    /// passed that triplet, and the domain's entry is dropped: a triplet
    /// known by network before host names or verified domains were used
    /// (turning `key_by_host_name` on, or upgrading to a version where it
    /// is on, greylists no known correspondent again), or one an operator
    /// released by its client address. A store that does not answer about
    /// the network leaves the domain to decide.
    fn check_by_domain(&self, req: &Request<'_>, keys: Keys, now: u32) -> (Keys, Verdict) {
        let Ok(net_keys) = self.network_keys(req) else {
            let v = self.store.check(&keys, now);
            return (keys, v);
        };
        let network = self.store.peek_gating_client(&net_keys);
        if network.is_some_and(|c| {
            c.blocks(now, &self.config) || c.is_auto_whitelisted(now, &self.config)
        }) {
            let v = self.store.check(&net_keys, now);
            return (net_keys, v);
        }
        let v = self.store.check(&keys, now);
        if !matches!(v.reason, Reason::New | Reason::EarlyRetry) {
            return (keys, v);
        }
        if !self.passed(&net_keys, now) {
            return (keys, v);
        }
        // Best effort: a domain entry left behind only expires.
        let _ = self.store.forget(&keys);
        let v = self.store.check(&net_keys, now);
        (net_keys, v)
    }

    /// Whether [`check_request`](Self::check_request) would pass `req` at
    /// `now` as it is: a static whitelist matches it, its triplet passed
    /// and has not expired (under its own key, or for a request keyed by a
    /// domain under its network's), or its client network is
    /// auto-whitelisted. Changes nothing; `false` when the shared store
    /// cannot say at once (it is down). A host that verifies senders itself
    /// (SPF, as the daemon's `--spf`) asks this first and verifies only what
    /// would not pass; and asks it with the domain it could not verify
    /// (a DNS failure) to keep passing what passed under that domain.
    pub fn would_pass(&self, req: &Request<'_>, now: i64) -> Result<bool, InputError> {
        let keys = self.keys(req)?;
        let now = clamp_time(now);
        if keys.whitelisted() || self.passed(&keys, now) {
            return Ok(true);
        }
        let by_domain = keys.kind != KeyKind::Network;
        let net_keys = if by_domain {
            self.network_keys(req)?
        } else {
            keys
        };
        let awl = self
            .store
            .peek_gating_client(&net_keys)
            .is_some_and(|c| c.is_auto_whitelisted(now, &self.config));
        Ok(awl || (by_domain && self.passed(&net_keys, now)))
    }

    /// A request's keys by its client network alone (no host name, no
    /// verified domain).
    fn network_keys(&self, req: &Request<'_>) -> Result<Keys, InputError> {
        self.keys(&Request {
            client_name: None,
            verified_domain: None,
            ..*req
        })
    }

    /// Whether the store says at once that `k`'s triplet passed and has
    /// not expired at `now`.
    fn passed(&self, k: &Keys, now: u32) -> bool {
        self.store
            .peek_triplet(k)
            .is_some_and(|t| t.passed && !t.is_expired(now, &self.config))
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

    /// Removes every expired entry, one shard at a time (checks go on in the
    /// other shards), judges lost mail, and returns the number of triplet
    /// entries removed from the local table. With a shared store, it also
    /// settles the fleet's lost mail that is due (see
    /// [`lost_mail_report`](Self::lost_mail_report)).
    pub fn sweep(&self, now: i64) -> u64 {
        self.store.sweep(clamp_time(now))
    }

    /// The most memory, in bytes, the triplet table can take when full at
    /// `max_entries`: each shard's table holds a power-of-two number of
    /// 24-byte slots, at most 4/5 full, so this is between 30 and 60 bytes
    /// per entry allowed (`usize::MAX` when `max_entries` is more than any
    /// table could hold).
    pub fn table_memory_limit(&self) -> usize {
        self.local().table_memory_limit()
    }

    /// Triplet entries (pending and passed) in the local table (with a
    /// shared store, only what was decided while it did not answer).
    pub fn len(&self) -> usize {
        self.local().len()
    }

    /// Whether the local triplet table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters, summed over all stripes while checks go on.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        self.counters.add_to(&mut s);
        self.store.add_stats(&mut s);
        s
    }

    /// For a host's start-up log: connects to the shared store, if there
    /// is one, on a connection of its own within `timeout`. `Ok` carries
    /// warnings (a `maxmemory-policy` that can evict the engine's
    /// records); `Err` says why the store cannot be reached. `None`
    /// without a shared store.
    pub fn probe_store(&self, timeout: std::time::Duration) -> Option<Result<Vec<String>, String>> {
        self.store.probe(timeout)
    }

    /// The latest failure talking to the shared store (for a host's log
    /// when checks start to be answered locally), if any.
    pub fn store_error(&self) -> Option<String> {
        self.store.last_error()
    }

    /// The stored state of one triplet, if any (expired entries included
    /// until they are removed). Changes nothing.
    pub fn triplet_state(
        &self,
        client_ip: &str,
        sender: &(impl AsRef<[u8]> + ?Sized),
        recipient: &(impl AsRef<[u8]> + ?Sized),
    ) -> Result<Option<TripletState>, StoreError> {
        let k = self.keys(&Request::new(client_ip, sender, recipient))?;
        self.store.triplet_state(&k)
    }

    /// The stored state of a client's network, if any. Changes nothing.
    pub fn client_state(&self, client_ip: &str) -> Result<Option<ClientState>, StoreError> {
        let k = self.client_keys(client_ip, None)?;
        self.store.client_state(&k)
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
    ///
    /// With a shared store the rows are the fleet's: lost mail is judged in
    /// Redis, by whichever host sweeps first, so every host reports the
    /// same networks. An error when the shared store does not answer.
    pub fn lost_mail_report(&self, limit: usize) -> Result<Vec<LostMail>, StoreError> {
        let mut rows = self.store.lost_rows()?;
        rows.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_seen.cmp(&a.last_seen)));
        rows.truncate(limit);
        Ok(rows)
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

    /// The store, for the operators' calls (`admin.rs`).
    pub(crate) fn store(&self) -> &dyn Store {
        &*self.store
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
            (
                s.checks,
                s.new_triplets,
                s.early_retries,
                s.retried,
                s.passed
            ),
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
        // One message an hour: postgrey counts at most one pass an hour.
        let hour = i64::from(crate::rules::AWL_COUNT_INTERVAL);
        for i in 0..5 {
            let (rcpt, t) = (format!("user{i}@example.net"), T0 + i * hour);
            e.check("192.0.2.1", "a@example.org", &rcpt, t).unwrap();
            let v = e
                .check("192.0.2.1", "a@example.org", &rcpt, t + 300)
                .unwrap();
            assert_eq!(v.reason, Reason::Retried);
            let passes = e.client_state("192.0.2.1").unwrap().unwrap().passes;
            assert_eq!(passes, i as u32 + 1, "one pass an hour");
        }
        let t = T0 + 4 * hour + 301;
        let v = e
            .check("192.0.2.200", "new@example.com", "x@example.net", t)
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
            .check("192.0.3.1", "new@example.com", "x@example.net", t)
            .unwrap();
        assert_eq!(v.reason, Reason::New);
    }

    #[test]
    fn one_message_to_many_recipients_is_one_pass() {
        let e = engine();
        let rcpts: Vec<String> = (0..20).map(|i| format!("user{i}@example.net")).collect();
        for r in &rcpts {
            e.check("192.0.2.1", "a@example.org", r, T0).unwrap();
        }
        for r in &rcpts {
            let v = e.check("192.0.2.1", "a@example.org", r, T0 + 300).unwrap();
            assert_eq!(v.reason, Reason::Retried);
        }
        assert_eq!(e.client_state("192.0.2.1").unwrap().unwrap().passes, 1);
        let v = e.check("192.0.2.7", "b@example.com", "x@example.net", T0 + 301);
        assert_eq!(v.unwrap().reason, Reason::New);
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
        let report = e.lost_mail_report(10).unwrap();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].network.to_string(), "192.0.2.0/24");
        assert_eq!((report[0].count, report[0].last_seen), (1, (T0 + 9) as u32));
        assert_eq!(e.stats().lost_mail, 1);
    }

    /// Issue 19: a host names the sender and recipient of lost mail by the
    /// triplet key its events carry.
    #[test]
    fn events_carry_the_triplet_key() {
        let e = engine();
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink = seen.clone();
        e.on_event(Some(Box::new(move |ev: &Event| {
            sink.lock().push((ev.kind, ev.triplet));
        })))
        .unwrap();
        let req = Request::new("192.0.2.10", "a@corp.example", "u@y.net");
        let key = e.request_key(&req).unwrap();
        let other = Request::new("192.0.2.10", "b@corp.example", "u@y.net");
        assert_ne!(key, e.request_key(&other).unwrap());
        for dt in [0, 4] {
            e.check_request(&req, T0 + dt).unwrap();
        }
        e.sweep(T0 + 300 + 3600);
        assert_eq!(
            *seen.lock(),
            [
                (EventKind::Deferred, Some(key)),
                (EventKind::Deferred, Some(key)),
                (EventKind::LostMail, Some(key))
            ]
        );
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
    fn the_memory_limit_of_an_unbounded_table_saturates() {
        // `max_entries` has no upper bound: the limit it implies is the
        // largest size, not an overflow (a panic in a debug build).
        let e = Engine::new(Config::builder().max_entries(u64::MAX).build().unwrap());
        assert_eq!(e.table_memory_limit(), usize::MAX);
        let small = Engine::new(Config::builder().max_entries(1000).build().unwrap());
        // 1,000 entries: 4 shards of 250, each at most 512 slots of 24 bytes.
        assert_eq!(small.table_memory_limit(), 4 * (512 * 24 + 64));
    }

    #[test]
    fn a_small_table_keeps_what_fits() {
        // Half of max_entries, on the default shards: a table split into
        // shards of one or two entries each evicted long before it was
        // full (1,000 triplets in 1,024 shards of 1).
        let e = Engine::new(
            Config::builder()
                .max_entries(2000)
                .awl_threshold(0)
                .build()
                .unwrap(),
        );
        let rcpt = |i: u32| format!("r{i}@example.net");
        for i in 0..1000 {
            let ip = format!("10.{}.{}.1", i / 250, i % 250);
            e.check(&ip, "a@x.org", &rcpt(i), T0).unwrap();
            e.check(&ip, "a@x.org", &rcpt(i), T0 + 300).unwrap();
        }
        assert_eq!(e.len(), 1000);
        assert_eq!(e.stats().evicted, 0);
        for i in 0..1000 {
            let ip = format!("10.{}.{}.1", i / 250, i % 250);
            let v = e.check(&ip, "a@x.org", &rcpt(i), T0 + 600).unwrap();
            assert_eq!(v.reason, Reason::Passed, "{ip}");
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
