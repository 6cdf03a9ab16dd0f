//! Serving the policy protocol: accepting connections, one thread each,
//! within a connection bound and deadlines that no client can stretch.
//!
//! - **A bound below the descriptor limit.** Each connection holds one
//!   descriptor; at start the bound is clamped to what `RLIMIT_NOFILE`
//!   leaves after [`RESERVED_DESCRIPTORS`] (see [`descriptor_budget`]).
//! - **Deadlines for a whole request.** Between requests a connection may
//!   be silent for the idle timeout; once a request's first byte arrives,
//!   all of it must arrive within the request timeout, however slowly it
//!   trickles in (the timeout of each read is what is left of that).
//! - **Room for a new client.** When the bound is reached, the connection
//!   idle the longest (between requests, never one in the middle of one) is
//!   closed to admit the new one (the new one waits until the closed one's
//!   thread has let go of its descriptor); Postfix reconnects when it next
//!   needs the service. Only when every connection is mid-request is the
//!   new one refused.
//! - **Accept faults back off.** Descriptors or memory running out
//!   (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) make the accept loop wait,
//!   from 10 ms doubling to 1 s, and are logged once per episode.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greylist::policy::{self, PolicyOptions};
use greylist::Engine;
use parking_lot::{Condvar, Mutex};

use crate::log::{decision, decision_line, log, Episode};
use crate::metrics::{Counters, Live};
use crate::recall::Recall;

/// Descriptors kept for everything but connections: stdio, listeners, the
/// snapshot and its folder, list files, Redis, signal handling.
pub const RESERVED_DESCRIPTORS: u64 = 32;

/// How many connections the descriptor limit allows, after raising the
/// soft limit to the hard one; `None` when there is no limit.
pub fn descriptor_budget() -> Option<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        // Raising the soft limit can fail (a hard limit above the kernel's
        // nr_open); then the soft one stands.
        let _ = setrlimit(Resource::Nofile, limit);
        limit = getrlimit(Resource::Nofile);
    }
    let soft = limit.current?;
    Some((soft, soft.saturating_sub(RESERVED_DESCRIPTORS)))
}

/// Reads a request of at most `max` bytes from a control or HTTP client,
/// until `complete` says it is whole, all within `timeout` however slowly
/// the bytes trickle in (each read waits only for what is left).
pub fn read_request_within<S>(
    stream: &S,
    max: usize,
    timeout: Duration,
    complete: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, String>
where
    S: ?Sized,
    for<'a> &'a S: Read,
    S: TimeoutRead,
{
    let deadline = Instant::now() + timeout;
    let late = || format!("the request did not arrive within {} s", timeout.as_secs());
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !complete(&request) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        stream.read_timeout(left).map_err(|e| e.to_string())?;
        let mut reader: &S = stream;
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
            // The read waited for what was left: the time is up.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(late())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
        if request.len() > max {
            return Err(format!("a request is at most {max} bytes"));
        }
    }
    Ok(request)
}

/// A socket whose reads can be given a timeout.
pub trait TimeoutRead {
    fn read_timeout(&self, timeout: Duration) -> io::Result<()>;
}

impl TimeoutRead for TcpStream {
    fn read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

impl TimeoutRead for UnixStream {
    fn read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

/// Serves each connection `accept` gives on a thread of its own, at most
/// `max` at once (the control socket's and `/metrics`' few clients): one
/// more is handed to `busy` and closed. The loop runs on a thread named
/// `name`.
pub fn serve_each<S: Send + 'static>(
    name: &str,
    mut accept: impl FnMut() -> io::Result<S> + Send + 'static,
    max: usize,
    busy: impl Fn(S) + Send + 'static,
    handle: impl Fn(S) + Send + Sync + 'static,
) -> Result<(), String> {
    let handle = Arc::new(handle);
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let what = name.to_string();
    std::thread::Builder::new()
        .name(what.clone())
        .spawn(move || loop {
            let Ok(stream) = accept() else {
                // Descriptors running out: wait rather than spin.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            if active.fetch_add(1, Ordering::AcqRel) >= max {
                active.fetch_sub(1, Ordering::AcqRel);
                busy(stream);
                continue;
            }
            let (handle, done) = (handle.clone(), active.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("{what}-client"))
                .spawn(move || {
                    // The slot is given back however the handler ends (a
                    // panic too), or slots would run out for good.
                    struct Release(Arc<std::sync::atomic::AtomicUsize>);
                    impl Drop for Release {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    let _release = Release(done);
                    handle(stream);
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::AcqRel);
                log(format_args!(
                    "{what}: cannot start a thread for a connection"
                ));
            }
        })
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(())
}

/// The deadlines and bound every connection is served under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// Longest silence between requests.
    pub idle_timeout: Duration,
    /// Longest time from a request's first byte to its last.
    pub request_timeout: Duration,
}

/// A connected client, over TCP or a unix socket: read and written through
/// a shared reference, so the accept thread can close it while its own
/// thread is blocked reading.
pub trait Stream: Send + Sync + 'static {
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_all_bytes(&self, buf: &[u8]) -> io::Result<()>;
    fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()>;
    /// Ends the connection: a read blocked on another thread returns.
    fn close(&self);
    /// A name for the log.
    fn peer(&self) -> String;
}

macro_rules! stream {
    ($type:ty, $peer:expr) => {
        impl Stream for $type {
            fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
                (&*self).read(buf)
            }
            fn write_all_bytes(&self, buf: &[u8]) -> io::Result<()> {
                (&*self).write_all(buf)
            }
            fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
                self.set_read_timeout(Some(read))?;
                self.set_write_timeout(Some(write))
            }
            fn close(&self) {
                let _ = self.shutdown(std::net::Shutdown::Both);
            }
            fn peer(&self) -> String {
                $peer(self)
            }
        }
    };
}

stream!(TcpStream, |s: &TcpStream| s
    .peer_addr()
    .map_or_else(|_| "?".into(), |a| a.to_string()));
stream!(UnixStream, |_: &UnixStream| "unix socket".to_string());

/// What the accept thread knows of a connection.
struct Slot {
    stream: Arc<dyn Stream>,
    peer: String,
    /// Milliseconds since the server started at which the connection went
    /// idle; [`BUSY`] while a request is being read or answered.
    idle_since: AtomicU64,
    /// Closed to make room; its thread is on its way out.
    closing: AtomicBool,
}

const BUSY: u64 = u64::MAX;

/// How long a new connection waits for a closed one's thread to end.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What every connection shares.
pub struct Server {
    engine: Arc<Engine>,
    policy: PolicyOptions,
    /// `--spf`'s checker.
    spf: Option<Arc<crate::spf::Spf>>,
    limits: Limits,
    started: Instant,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    /// Signalled when a connection's thread ends.
    exited: Condvar,
    next_id: AtomicU64,
    refused: Mutex<Episode>,
    clock: Arc<DaemonClock>,
    /// Answers by action and reason, and their latency (`/metrics`).
    live: Live,
    /// Deferred requests' addresses, to name lost mail.
    recall: Arc<Recall>,
}

/// The daemon's clock: the system's, moved on by `policy_test_advance` in
/// tests. Checks and the maintenance thread's sweeps both read it.
#[derive(Default)]
pub struct DaemonClock {
    /// Seconds added by `policy_test_advance` (tests only).
    offset: AtomicI64,
}

impl DaemonClock {
    pub fn now(&self) -> i64 {
        greylist::unix_now() + self.offset.load(Ordering::Relaxed)
    }
}

impl Server {
    pub fn new(
        engine: Arc<Engine>,
        policy: PolicyOptions,
        spf: Option<Arc<crate::spf::Spf>>,
        limits: Limits,
        clock: Arc<DaemonClock>,
        live: Live,
        recall: Arc<Recall>,
    ) -> Server {
        Server {
            engine,
            policy,
            spf,
            limits,
            started: Instant::now(),
            slots: Mutex::new(HashMap::new()),
            exited: Condvar::new(),
            next_id: AtomicU64::new(0),
            refused: Mutex::new(Episode::new("refusing connections")),
            clock,
            live,
            recall,
        }
    }

    /// Connections open now (closed ones until their thread has ended).
    pub fn open_connections(&self) -> usize {
        self.slots.lock().len()
    }

    /// The connection bound.
    pub fn max_connections(&self) -> usize {
        self.limits.max_connections
    }

    /// Remembers an early retry's addresses under its triplet key: only a
    /// triplet with early retries can become lost mail, and a flood of
    /// first attempts (spam that never retries) costs this nothing.
    fn remember(&self, request: &policy::PolicyRequest, answer: &policy::Answer) {
        use greylist::{Action, Reason};
        let Some(v) = answer.verdict else { return };
        if v.action != Action::Defer || v.reason != Reason::EarlyRetry {
            return;
        }
        let Some(req) = policy::engine_request(request) else {
            return;
        };
        // Under the key and client (network or domain) it was judged by.
        if let Some((key, client)) = answer.client_key(&self.engine, request) {
            self.recall
                .deferred(key, &client, req.client_ip, req.sender, req.recipient);
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Admits a new connection, closing the one idle the longest if the
    /// bound is reached, and serves it on a thread of its own.
    pub fn admit<S: Stream>(self: &Arc<Self>, stream: S) {
        let now = Instant::now();
        let l = &self.limits;
        let _ = stream.set_timeouts(l.idle_timeout, l.request_timeout);
        let stream: Arc<dyn Stream> = Arc::new(stream);
        let peer = stream.peer();
        let slot = Arc::new(Slot {
            stream: stream.clone(),
            peer: peer.clone(),
            idle_since: AtomicU64::new(self.millis(now)),
            closing: AtomicBool::new(false),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut slots = self.slots.lock();
            // Closed connections count until their thread has let go of
            // the descriptor: the bound is on descriptors, not on slots.
            while slots.len() >= l.max_connections {
                let closing = slots.values().any(|s| s.closing.load(Ordering::Acquire));
                if !closing && !self.close_idlest(&mut slots, now, &peer) {
                    drop(slots);
                    let busy = format!(
                        "{peer}: all {} connections are in the middle of a request",
                        l.max_connections
                    );
                    if let Some(line) = self.refused.lock().happened(now, busy) {
                        log(line);
                    }
                    return;
                }
                if self.exited.wait_for(&mut slots, CLOSE_WAIT).timed_out()
                    && slots.len() >= l.max_connections
                {
                    drop(slots);
                    decision(format_args!(
                        "refusing {peer}: a closed connection's thread did not end within {CLOSE_WAIT:?}"
                    ));
                    return;
                }
            }
            slots.insert(id, slot.clone());
        }
        if let Some(line) = self.refused.lock().ended(now) {
            log(line);
        }
        let server = self.clone();
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .spawn(move || {
                server.serve(&*slot.stream, &slot, &slot.peer);
                server.release(id);
            });
        if let Err(e) = spawned {
            self.release(id);
            decision(format_args!("refusing {peer}: cannot start a thread: {e}"));
        }
    }

    /// Closes the connection idle the longest (never one mid-request, nor
    /// one already closing) to make room for `peer`; false if there is none.
    fn close_idlest(&self, slots: &mut HashMap<u64, Arc<Slot>>, now: Instant, peer: &str) -> bool {
        // Idle since the same millisecond (a burst of connections): the
        // one admitted first goes, not whichever the map yields first.
        let idlest = slots
            .iter()
            .filter(|(_, s)| !s.closing.load(Ordering::Acquire))
            .filter(|(_, s)| s.idle_since.load(Ordering::Acquire) != BUSY)
            .min_by_key(|(id, s)| (s.idle_since.load(Ordering::Acquire), **id))
            .map(|(_, s)| s);
        let Some(victim) = idlest else {
            return false;
        };
        victim.closing.store(true, Ordering::Release);
        victim.stream.close();
        let idle_ms = self
            .millis(now)
            .saturating_sub(victim.idle_since.load(Ordering::Acquire));
        decision(format_args!(
            "closed the connection from {} (idle for {:.1} s, the longest of {}) to admit {peer}",
            victim.peer,
            idle_ms as f64 / 1000.0,
            self.limits.max_connections
        ));
        true
    }

    /// A connection's thread has ended: its slot (and descriptor) is free.
    fn release(&self, id: u64) {
        self.slots.lock().remove(&id);
        self.exited.notify_all();
    }

    /// Serves one connection: many requests, each answered in turn.
    fn serve(&self, stream: &dyn Stream, slot: &Slot, peer: &str) {
        let mut reader = BufReader::new(DeadlineReader {
            stream,
            slot,
            server: self,
            deadline: None,
            timeouts: Timeouts::default(),
        });
        // The message (Postfix's `instance`) whose X-Greylist header this
        // connection prepended last: one header per message, not one per
        // retried recipient.
        let mut last_prepended = None;
        // Buffers and counter handles kept from one request to the next.
        let (mut request, mut wire) = (policy::PolicyRequest::default(), Vec::new());
        let mut counters = Counters::default();
        loop {
            // Bytes of the next request already read: its deadline runs.
            if reader.buffer().is_empty() {
                reader.get_mut().idle();
            } else {
                reader.get_mut().begin();
            }
            match policy::read_request_into(&mut reader, &mut request) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    decision(format_args!("closing connection from {peer}: {e}"));
                    return;
                }
            };
            if self.policy.allow_test_time {
                if let Some(secs) = request
                    .get("policy_test_advance")
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    self.clock.offset.fetch_add(secs, Ordering::Relaxed);
                }
            }
            let started = Instant::now();
            let now = self.clock.now();
            let spf = self.spf.as_deref().map(|s| s as &dyn policy::SenderCheck);
            let mut answer = policy::answer_with(&self.engine, &request, &self.policy, now, spf);
            policy::prepend_once(&mut answer, &request, &mut last_prepended);
            self.remember(&request, &answer);
            decision_line(std::mem::take(&mut answer.log));
            answer.wire_into(&mut wire);
            if stream.write_all_bytes(&wire).is_err() {
                return;
            }
            self.live
                .answered(&mut counters, answer.outcome, started.elapsed());
        }
    }
}

/// Reads a connection under its deadlines: the idle timeout between
/// requests, and what is left of the request timeout within one.
struct DeadlineReader<'a> {
    stream: &'a dyn Stream,
    slot: &'a Slot,
    server: &'a Server,
    /// When the request being read must be complete; `None` between
    /// requests.
    deadline: Option<Instant>,
    timeouts: Timeouts,
}

/// The socket timeouts last set on a connection, so that a read sets them
/// only when they change: a client that sends each request in one piece
/// is read with the idle timeout every time, and two `setsockopt` calls
/// per request (a quarter of the system calls of an answer) are saved.
#[derive(Debug, Default)]
struct Timeouts {
    set: Option<(Duration, Duration)>,
}

impl Timeouts {
    fn apply(&mut self, stream: &dyn Stream, read: Duration, write: Duration) -> io::Result<()> {
        if self.set != Some((read, write)) {
            // Forgotten first: after a failure, the next read tries again.
            self.set = None;
            stream.set_timeouts(read, write)?;
            self.set = Some((read, write));
        }
        Ok(())
    }
}

impl DeadlineReader<'_> {
    /// Between requests: the connection may be closed for a new one.
    fn idle(&mut self) {
        self.deadline = None;
        let now = self.server.millis(Instant::now());
        // Idle since its last answer; a new connection since it was
        // admitted (not since its thread first ran, which can be later
        // than newer connections' threads under load).
        let _ =
            self.slot
                .idle_since
                .compare_exchange(BUSY, now, Ordering::AcqRel, Ordering::Acquire);
    }

    /// A request has begun: its deadline runs, and the connection is not
    /// closed for another.
    fn begin(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.server.limits.request_timeout);
            self.slot.idle_since.store(BUSY, Ordering::Release);
        }
    }
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limits = &self.server.limits;
        let timeout = match self.deadline {
            None => limits.idle_timeout,
            Some(deadline) => deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
                .ok_or_else(|| too_slow(limits.request_timeout))?,
        };
        self.timeouts
            .apply(self.stream, timeout, limits.request_timeout)?;
        let n = match self.stream.read_some(buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(match self.deadline {
                    None => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("idle for {} s", limits.idle_timeout.as_secs()),
                    ),
                    Some(_) => too_slow(limits.request_timeout),
                });
            }
            Err(e) => return Err(e),
        };
        if n > 0 {
            self.begin();
        }
        Ok(n)
    }
}

fn too_slow(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("a request took longer than {} s", limit.as_secs()),
    )
}

/// Whether an accept error means a resource ran out (so retrying at once
/// would spin).
fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts connections while `next` gives them, handing each to `admit`.
/// When descriptors or memory run out, waits (`sleep`) from 10 ms doubling
/// to 1 s before trying again, and logs the episode once, not each failure.
pub fn accept_loop<C>(
    mut next: impl FnMut() -> Option<io::Result<C>>,
    mut admit: impl FnMut(C),
    mut sleep: impl FnMut(Duration),
    mut log: impl FnMut(String),
) {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_secs(1);
    let mut backoff = FIRST;
    let mut exhaustion = Episode::new("accept: out of descriptors or memory, backing off");
    let mut other = Episode::new("accept failed");
    while let Some(result) = next() {
        let now = Instant::now();
        match result {
            Ok(connection) => {
                exhaustion.ended(now).into_iter().for_each(&mut log);
                other.ended(now).into_iter().for_each(&mut log);
                backoff = FIRST;
                admit(connection);
            }
            Err(e) if exhausted(&e) => {
                exhaustion.happened(now, &e).into_iter().for_each(&mut log);
                sleep(backoff);
                backoff = (backoff * 2).min(MOST);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // A connection reset before it was accepted, and the like.
                other.happened(now, &e).into_iter().for_each(&mut log);
                sleep(FIRST);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that counts the timeouts set on it.
    #[derive(Default)]
    struct Counting(Mutex<Vec<(Duration, Duration)>>);

    impl Stream for Counting {
        fn read_some(&self, _: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn write_all_bytes(&self, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
        fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
            self.0.lock().push((read, write));
            Ok(())
        }
        fn close(&self) {}
        fn peer(&self) -> String {
            "test".into()
        }
    }

    /// Issue 24: every read set both socket timeouts (two system calls
    /// per request) though between requests they never change.
    #[test]
    fn timeouts_are_set_only_when_they_change() {
        let stream = Counting::default();
        let mut t = Timeouts::default();
        let (idle, request) = (Duration::from_secs(300), Duration::from_secs(10));
        for _ in 0..100 {
            t.apply(&stream, idle, request).unwrap();
        }
        t.apply(&stream, Duration::from_secs(7), request).unwrap();
        t.apply(&stream, Duration::from_secs(7), request).unwrap();
        t.apply(&stream, idle, request).unwrap();
        assert_eq!(
            *stream.0.lock(),
            [
                (idle, request),
                (Duration::from_secs(7), request),
                (idle, request)
            ]
        );
    }

    /// Issue 15, item 8: on EMFILE the loop retried at once and logged
    /// every failure (950,620 lines in one run).
    #[test]
    fn exhaustion_backs_off_and_is_one_episode() {
        let mut script: Vec<io::Result<u32>> = Vec::new();
        for _ in 0..1000 {
            script.push(Err(io::Error::from_raw_os_error(libc::EMFILE)));
        }
        script.push(Ok(7));
        script.push(Err(io::Error::from_raw_os_error(libc::ENFILE)));
        script.push(Ok(8));
        script.reverse();
        let (mut admitted, mut slept, mut logged) = (Vec::new(), Vec::new(), Vec::new());
        accept_loop(
            || script.pop(),
            |c| admitted.push(c),
            |d| slept.push(d),
            |l| logged.push(l),
        );
        assert_eq!(admitted, [7, 8]);
        // One line when it starts and one when it ends, per episode (the
        // test's sleeps take no time, so no minute summary is due).
        assert_eq!(logged.len(), 4, "{logged:?}");
        assert!(logged[0].contains("Too many open files"), "{logged:?}");
        assert!(logged[1].contains("1000 times in all"), "{logged:?}");
        assert_eq!(slept.len(), 1001, "every failure waits");
        assert_eq!(slept[0], Duration::from_millis(10));
        assert_eq!(slept[1], Duration::from_millis(20));
        assert_eq!(slept[999], Duration::from_secs(1), "doubling up to 1 s");
        assert_eq!(slept[1000], Duration::from_millis(10), "reset by a success");
        let total: Duration = slept.iter().sum();
        assert!(total > Duration::from_secs(990), "no spinning: {total:?}");
    }
}
