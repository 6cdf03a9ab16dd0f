//! One pipelined connection to a server (one Redis, or the master
//! Sentinel names), shared by every checking thread, with no thread of its
//! own: a checking thread queues its call, and if nobody is using the
//! connection it becomes the leader. The leader writes every queued call in
//! one go, reads answers in order and hands them out, writing calls that
//! arrive meanwhile behind the ones in flight, until its own answer is in;
//! then it hands the connection, with the calls still in flight, to a
//! waiting caller. Under load Redis reads many calls per system call, which
//! is where most of its time goes with small scripts (at 8 callers one
//! pipelined connection gave 85,000 checks/s here, one connection per
//! caller 54,000); a lone check costs one round trip, as on a plain
//! connection.
//!
//! [`Link`] is what every way of talking to Redis shares: the target,
//! timeouts, the retry interval after a failed connect, counters and the
//! latest error.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use redis::Value;

use super::target::Target;
use super::{Answer, StoreCounters, SCRIPT};

/// Why a call got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Refused, dropped, or an error answer: counted as an error.
    Error,
    /// No answer in time: counted as a timeout.
    Timeout,
    /// Not tried: a connect failed less than the retry interval ago.
    Down,
}

pub(crate) type Outcome = Result<Answer, Failure>;

/// How a packed `SCRIPT LOAD` begins.
const LOAD_PREFIX: &[u8] = b"*3\r\n$6\r\nSCRIPT\r\n";

/// Where a call stands.
enum Slot {
    Waiting,
    /// Its caller is to lead the connection next.
    Lead,
    /// Answered, or failed.
    Done(Outcome),
}

/// One call on a connection.
struct Call {
    command: Vec<u8>,
    /// When its caller stops waiting.
    deadline: Instant,
    /// Its caller stopped waiting: never handed the lead.
    abandoned: AtomicBool,
    slot: Mutex<Slot>,
    ready: Condvar,
}

impl Call {
    fn new(command: Vec<u8>, deadline: Instant) -> Arc<Call> {
        Arc::new(Call {
            command,
            deadline,
            abandoned: AtomicBool::new(false),
            slot: Mutex::new(Slot::Waiting),
            ready: Condvar::new(),
        })
    }

    /// `SCRIPT LOAD`, as a call nobody waits for (its answer, the SHA, is
    /// not a verdict and goes nowhere).
    fn load_script() -> Arc<Call> {
        let call = Call::new(
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(SCRIPT)
                .get_packed_command(),
            Instant::now(),
        );
        call.abandoned.store(true, Relaxed);
        call
    }

    fn set(&self, slot: Slot) {
        *self.slot.lock() = slot;
        self.ready.notify_one();
    }
}

/// The connection and its calls. Lock order: the lane, then a call's slot.
#[derive(Default)]
struct Lane {
    /// Calls not written yet.
    queue: Vec<Arc<Call>>,
    /// Calls written, in order, whose answers are still to be read.
    in_flight: VecDeque<Arc<Call>>,
    /// A leader has the connection (it is out of `con`).
    busy: bool,
    con: Option<redis::Connection>,
}

impl Lane {
    /// Hands the connection to the first caller still waiting (for an
    /// answer in flight, then for a queued call), or frees it.
    fn pass_lead(&mut self) {
        let next = self
            .in_flight
            .iter()
            .chain(&self.queue)
            .find(|c| !c.abandoned.load(Relaxed));
        match next {
            Some(next) => next.set(Slot::Lead),
            None => self.busy = false,
        }
    }

    /// Fails every call in flight (the connection is gone).
    fn fail_in_flight(&mut self, failure: Failure) {
        for call in self.in_flight.drain(..) {
            call.set(Slot::Done(Err(failure)));
        }
    }
}

/// What one read from the connection gave.
enum Read {
    Answer(Outcome),
    /// Redis does not have the script: the call must be sent again.
    NoScript,
}

/// Talking to Redis: where it is, timeouts and counters.
pub(crate) struct Link {
    pub(crate) target: Target,
    pub(crate) timeout: Duration,
    retry_interval: Duration,
    started: Instant,
    /// Milliseconds after `started` before which no connect is tried.
    retry_at: AtomicU64,
    pub(crate) counters: StoreCounters,
    /// The latest failure, for the host's log.
    last_error: Mutex<Option<String>>,
}

impl Link {
    pub(crate) fn new(target: Target, timeout: Duration, retry_interval: Duration) -> Link {
        Link {
            target,
            timeout,
            retry_interval,
            started: Instant::now(),
            retry_at: AtomicU64::new(0),
            counters: StoreCounters::default(),
            last_error: Mutex::new(None),
        }
    }

    /// The latest failure, if any.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// Whether a connect failed less than the retry interval ago (no new
    /// one is tried then).
    pub(crate) fn is_down(&self) -> bool {
        let since_start = Instant::now().duration_since(self.started).as_millis() as u64;
        since_start < self.retry_at.load(Relaxed)
    }

    /// The open connection, or a new one connected before `deadline`,
    /// unless Redis is known to be down.
    fn connection<'c>(
        &self,
        con: &'c mut Option<redis::Connection>,
        deadline: Instant,
    ) -> Result<&'c mut redis::Connection, Failure> {
        if con.is_none() {
            if self.is_down() {
                return Err(Failure::Down);
            }
            let left = self.left(deadline)?;
            match self.target.connect(left) {
                Ok(c) => *con = Some(c),
                Err(e) => {
                    self.down_for_a_while();
                    return Err(self.failure(&e));
                }
            }
        }
        let c = con.as_mut().ok_or(Failure::Error)?;
        self.set_deadline(c, deadline)?;
        Ok(c)
    }

    /// No connect is tried for `retry_interval`: checks are answered
    /// locally at once.
    pub(crate) fn down_for_a_while(&self) {
        let retry = Instant::now() + self.retry_interval;
        let since_start = retry.duration_since(self.started).as_millis() as u64;
        self.retry_at.store(since_start, Relaxed);
    }

    /// What is left until `deadline`; a timeout when nothing is.
    fn left(&self, deadline: Instant) -> Result<Duration, Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.note(format_args!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ));
            Err(Failure::Timeout)
        } else {
            Ok(left)
        }
    }

    /// Makes the connection's reads and writes give up at `deadline`.
    fn set_deadline(&self, c: &mut redis::Connection, deadline: Instant) -> Result<(), Failure> {
        let left = self.left(deadline)?;
        c.set_read_timeout(Some(left))
            .and_then(|()| c.set_write_timeout(Some(left)))
            .map_err(|e| self.failure(&e))
    }

    /// Reads one answer.
    fn read(&self, con: &mut redis::Connection) -> Result<Read, Failure> {
        Ok(match con.recv_response().map_err(|e| self.failure(&e))? {
            Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript) => {
                Read::NoScript
            }
            // A master Sentinel named was demoted: this connection is
            // stale, and the next connect asks Sentinel again.
            Value::ServerError(e)
                if self.target.follows_master()
                    && is_readonly(
                        e.kind()
                            .map_or(redis::ErrorKind::Client, redis::ErrorKind::Server),
                        e.details(),
                    ) =>
            {
                self.note(format_args!("the master was demoted: {e}"));
                return Err(Failure::Error);
            }
            // An error answer (out of memory, a read-only replica) fails
            // this call only.
            Value::ServerError(e) => {
                self.note(format_args!("error answer: {e}"));
                Read::Answer(Err(Failure::Error))
            }
            value => Read::Answer(redis::from_redis_value(value).map_err(|e| {
                self.note(format_args!("unexpected answer: {e}"));
                Failure::Error
            })),
        })
    }

    /// The failure a client error stands for, noted as the latest.
    pub(crate) fn failure(&self, e: &redis::RedisError) -> Failure {
        if e.is_timeout() {
            self.note(format_args!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ));
            Failure::Timeout
        } else {
            self.note(e);
            Failure::Error
        }
    }

    /// Keeps `what` as the latest failure, for the host's log.
    pub(crate) fn note(&self, what: impl std::fmt::Display) {
        *self.last_error.lock() = Some(what.to_string());
    }
}

/// Whether an error answer says the server is a replica: `READONLY`, or
/// (Redis before 7, from inside a script) an `ERR` that carries it.
pub(crate) fn is_readonly(kind: redis::ErrorKind, detail: Option<&str>) -> bool {
    kind == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || detail.is_some_and(|d| d.contains("READONLY"))
}

/// The pipelined connection and its calls.
#[derive(Default)]
pub(crate) struct Pipelined {
    lane: Mutex<Lane>,
}

impl Pipelined {
    /// Sends `command` (packed) and waits for its answer, within the
    /// link's timeout.
    pub(crate) fn call(&self, link: &Link, command: Vec<u8>) -> Outcome {
        let call = Call::new(command, Instant::now() + link.timeout);
        let lead = {
            let mut lane = self.lane.lock();
            lane.queue.push(call.clone());
            !std::mem::replace(&mut lane.busy, true)
        };
        if lead {
            self.lead(link, &call);
        }
        self.wait(link, &call)
    }

    /// Waits for a call's answer, leading the connection when asked to,
    /// until the call's deadline.
    fn wait(&self, link: &Link, call: &Arc<Call>) -> Outcome {
        let mut slot = call.slot.lock();
        loop {
            match std::mem::replace(&mut *slot, Slot::Waiting) {
                Slot::Done(outcome) => return outcome,
                Slot::Lead => {
                    drop(slot);
                    self.lead(link, call);
                    slot = call.slot.lock();
                    continue;
                }
                Slot::Waiting => {}
            }
            if call.ready.wait_until(&mut slot, call.deadline).timed_out()
                && matches!(*slot, Slot::Waiting)
            {
                drop(slot);
                return self.give_up(call);
            }
        }
    }

    /// The caller stops waiting: its call leaves the queue if it was not
    /// written yet, and a lead it was just handed goes to the next caller.
    fn give_up(&self, call: &Arc<Call>) -> Outcome {
        let mut lane = self.lane.lock();
        let promoted = match std::mem::replace(&mut *call.slot.lock(), Slot::Waiting) {
            Slot::Done(outcome) => return outcome,
            Slot::Lead => true,
            Slot::Waiting => false,
        };
        call.abandoned.store(true, Relaxed);
        lane.queue.retain(|c| !Arc::ptr_eq(c, call));
        if promoted {
            lane.pass_lead();
        }
        Err(Failure::Timeout)
    }

    /// Leads the connection until `own` is answered: writes what is
    /// queued, reads answers in order and hands them out.
    fn lead(&self, link: &Link, own: &Arc<Call>) {
        let mut con = self.lane.lock().con.take();
        loop {
            let mut wire = Vec::new();
            {
                let mut guard = self.lane.lock();
                let lane = &mut *guard;
                for call in lane.queue.drain(..) {
                    wire.extend_from_slice(&call.command);
                    lane.in_flight.push_back(call);
                }
                if lane.in_flight.is_empty() {
                    break;
                }
            }
            // Every step (connect, write, read) gets what is left of the
            // leader's own time, so its whole check stays within the
            // timeout.
            let fresh = con.is_none();
            let step = link.connection(&mut con, own.deadline).and_then(|c| {
                if !wire.is_empty() {
                    c.send_packed_command(&wire).map_err(|e| link.failure(&e))?;
                }
                link.set_deadline(c, own.deadline)?;
                link.read(c)
            });
            let mut lane = self.lane.lock();
            match step {
                Ok(read) => {
                    let call = lane.in_flight.pop_front().expect("a call was in flight");
                    match read {
                        Read::Answer(outcome) => {
                            link.counters.round_trips.fetch_add(1, Relaxed);
                            call.set(Slot::Done(outcome));
                        }
                        Read::NoScript => {
                            // The script goes first (unless a load is already
                            // on its way), then this call again.
                            let is_load = |c: &Arc<Call>| c.command.starts_with(LOAD_PREFIX);
                            if !lane.in_flight.iter().chain(&lane.queue).any(is_load) {
                                lane.queue.insert(0, Call::load_script());
                            }
                            lane.queue.push(call.clone());
                        }
                    }
                    if Arc::ptr_eq(&call, own) && !matches!(read, Read::NoScript) {
                        break;
                    }
                }
                Err(failure) => {
                    con = None;
                    lane.fail_in_flight(failure);
                    if fresh && failure == Failure::Timeout {
                        // A server that accepts but never answers (hung,
                        // stopped): down like one that refuses, so the
                        // next checks do not each wait the timeout.
                        link.down_for_a_while();
                    }
                    break;
                }
            }
        }
        let mut lane = self.lane.lock();
        lane.con = con;
        lane.pass_lead();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_load_is_recognised() {
        assert!(Call::load_script().command.starts_with(LOAD_PREFIX));
    }
}
