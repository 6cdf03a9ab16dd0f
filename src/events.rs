//! Events for a host to log, and the callback slot that delivers them.
//!
//! A check calls the callback on its own thread, with no lock held. The
//! slot's promise to embedders is that once [`Events::replace`] returns,
//! the previous callback is never called again: a C host may then free
//! its `user_data`, a Python host its ctypes trampoline. A replacement
//! therefore waits for calls already in flight, by counting them.
//!
//! Each caller counts itself in a per-stripe counter (threads keep to
//! their stripe, so the counters' cache lines stay with their cores) of
//! the *parity* it read, loads the callback, and then reads the parity
//! again: when it changed, it counts itself out and starts over. A
//! replacement stores the new callback, flips the parity, and waits until
//! no call counted under the old parity is left. A call that goes on saw
//! the same parity before and after its load, so the flip that retires
//! the callback it loaded comes after its second read (sequentially
//! consistent order), and the replacement's wait, which reads the counters
//! after that flip, covers it. (Without the second read, a call that read
//! the parity before one flip and counted itself after the next landed in
//! the counter nobody waited for: a callback was called after its
//! replacement had returned, seen under Wine.) Calls are never blocked;
//! only a replacement waits (one at a time).

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::normalize::ClientNet;
use crate::rules::Reason;
use crate::table::CachePadded;

/// What happened, for an event callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum EventKind {
    /// A check was deferred.
    Deferred = 1,
    /// A check passed.
    Passed = 2,
    /// A check was blocked (blasting, a trap, or a blocked network).
    Blocked = 3,
    /// A sweep judged a pending triplet lost mail: early retries, then no
    /// attempt for `lost_after` after its delay (see
    /// [`Engine::lost_mail_report`](crate::Engine::lost_mail_report)).
    /// `count` is its early retries; `at` its last attempt.
    LostMail = 4,
    /// A triplet judged lost passed on a late retry after all: it leaves
    /// its network's lost-mail count.
    Recovered = 5,
    /// A network became blocked: `reason` is [`Reason::Blocked`]
    /// (blasting; `count` is the early retries of the triplet that set it
    /// off) or [`Reason::Trapped`] (a trap recipient).
    BlockStarted = 6,
    /// A sweep found that a network's block ended (at `at`).
    BlockEnded = 7,
}

/// One event: what happened, to which client network, why, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The client network (or verified domain).
    pub network: ClientNet,
    /// The verdict's reason; for `LostMail`, `EarlyRetry`; for
    /// `Recovered`, `Retried`; for the block events, what blocked it.
    pub reason: Reason,
    /// When (Unix seconds): the check's `now`, the lost triplet's last
    /// attempt, or the end of a block.
    pub at: u32,
    /// For `LostMail` and a blasting `BlockStarted`: the triplet's early
    /// retries; else 0.
    pub count: u32,
    /// The triplet's identifier (see [`Engine::request_key`](crate::Engine::request_key))
    /// for the events of one triplet: a verdict, `LostMail` and
    /// `Recovered` (with a shared store, where the store still knows it).
    /// A host that kept a deferred request's addresses under this key can
    /// name the sender and recipient whose mail was lost. `None` for the
    /// events of a network.
    pub triplet: Option<u128>,
}

impl Event {
    /// A lost triplet of `network`, with this key, passed on a late retry
    /// at `at`.
    pub(crate) fn recovered(network: ClientNet, at: u32, triplet: u128) -> Event {
        Event {
            kind: EventKind::Recovered,
            network,
            reason: Reason::Retried,
            at,
            count: 0,
            triplet: Some(triplet),
        }
    }
}

/// An event callback. It runs on the thread that made the check or sweep,
/// with no lock held, so it may call back into the engine.
pub type EventSink = Box<dyn Fn(&Event) + Send + Sync>;

/// Why a callback could not be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackError {
    /// Called from inside a callback of the same engine: waiting for the
    /// calls in flight would wait for itself.
    InsideCallback,
}

impl fmt::Display for CallbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the event callback cannot be replaced from inside an event callback")
    }
}

impl std::error::Error for CallbackError {}

static NEXT_SLOT: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The calls this thread is making, per slot and parity (a callback
    /// may check, and so emit, again).
    static OWN_CALLS: RefCell<Vec<(u64, [usize; 2])>> = const { RefCell::new(Vec::new()) };
}

/// The callback slot of one engine.
pub(crate) struct Events {
    id: u64,
    sink: ArcSwapOption<EventSink>,
    /// Whether a callback is set: a plain flag, so that engines without
    /// one pay nothing per check.
    on: AtomicBool,
    parity: AtomicUsize,
    /// Calls in flight, per stripe and parity.
    in_flight: Box<[CachePadded<[AtomicUsize; 2]>]>,
    /// One replacement at a time.
    replacing: parking_lot::Mutex<()>,
}

/// Counts a call out again, also when the callback panics.
struct InFlight<'a> {
    counter: &'a AtomicUsize,
    slot: u64,
    parity: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        own_calls(self.slot, self.parity, false);
        self.counter.fetch_sub(1, SeqCst);
    }
}

/// Adds (or removes) one of this thread's calls; returns the count after.
fn own_calls(slot: u64, parity: usize, add: bool) -> usize {
    OWN_CALLS.with(|own| {
        let mut own = own.borrow_mut();
        let at = match own.iter().position(|(s, _)| *s == slot) {
            Some(at) => at,
            None => {
                own.push((slot, [0, 0]));
                own.len() - 1
            }
        };
        let count = &mut own[at].1[parity];
        if add {
            *count += 1;
        } else {
            *count -= 1;
        }
        let after = *count;
        if own[at].1 == [0, 0] {
            own.swap_remove(at);
        }
        after
    })
}

fn own_count(slot: u64, parity: usize) -> usize {
    OWN_CALLS.with(|own| {
        own.borrow()
            .iter()
            .find(|(s, _)| *s == slot)
            .map_or(0, |(_, c)| c[parity])
    })
}

impl Events {
    pub(crate) fn new(stripes: usize) -> Events {
        Events {
            id: NEXT_SLOT.fetch_add(1, Relaxed),
            sink: ArcSwapOption::empty(),
            on: AtomicBool::new(false),
            parity: AtomicUsize::new(0),
            in_flight: (0..stripes.max(1))
                .map(|_| CachePadded([AtomicUsize::new(0), AtomicUsize::new(0)]))
                .collect(),
            replacing: parking_lot::Mutex::new(()),
        }
    }

    /// Calls the callback, if one is set, with the event `make` builds.
    pub(crate) fn emit(&self, make: impl FnOnce() -> Event) {
        if !self.on.load(Relaxed) {
            return;
        }
        let stripe = crate::table::thread_stripe();
        let counters = &self.in_flight[stripe % self.in_flight.len()].0;
        loop {
            let seen = self.parity.load(SeqCst);
            let parity = seen & 1;
            counters[parity].fetch_add(1, SeqCst);
            own_calls(self.id, parity, true);
            let _counted = InFlight {
                counter: &counters[parity],
                slot: self.id,
                parity,
            };
            let sink = self.sink.load_full();
            if self.parity.load(SeqCst) != seen {
                // A replacement flipped the parity meanwhile: the count may
                // be under the parity nobody waits for. Again.
                continue;
            }
            if let Some(sink) = sink {
                sink(&make());
            }
            return;
        }
    }

    /// Replaces the callback and waits until no call of the previous one
    /// is left (see the module docs).
    pub(crate) fn replace(&self, sink: Option<EventSink>) -> Result<(), CallbackError> {
        if (0..2).any(|p| own_count(self.id, p) > 0) {
            return Err(CallbackError::InsideCallback);
        }
        let _one_at_a_time = self.replacing.lock();
        let on = sink.is_some();
        if on {
            self.sink.store(sink.map(Arc::new));
            self.on.store(true, SeqCst);
        } else {
            self.on.store(false, SeqCst);
            self.sink.store(None);
        }
        let old = self.parity.fetch_add(1, SeqCst) & 1;
        let mut pause = Duration::from_micros(1);
        while self.in_flight.iter().any(|c| c.0[old].load(SeqCst) > 0) {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        Ok(())
    }
}
