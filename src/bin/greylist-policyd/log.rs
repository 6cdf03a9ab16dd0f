//! The daemon's log: to syslog (`--syslog`, the `mail` facility by
//! default, as `greylist-policyd[PID]`: what lands in /var/log/mail.log)
//! and/or to stderr as lines with a UTC timestamp, written by a thread of
//! their own so that no check waits on a slow log.
//!
//! The queue is bounded. Decision lines (one per request, and other lines
//! a client can cause) are dropped once [`MAX_QUEUED_BYTES`] are waiting,
//! and the log then says how many went; lifecycle lines (start, signals,
//! saves, faults) are never dropped, and [`flush`] writes everything before
//! the daemon exits. A flood of requests therefore costs at most a few MiB
//! of memory however slow stderr is.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Most bytes of decision lines waiting to be written.
pub const MAX_QUEUED_BYTES: usize = 4 << 20;

/// How often the writer looks for new lines: waiting for them costs the
/// checking threads nothing (no wake-up call per line).
const POLL: Duration = Duration::from_millis(10);

/// The longest syslog message sent (longer lines are cut; a datagram of
/// /dev/log takes some 200 KiB, but receivers truncate long before).
const MAX_SYSLOG: usize = 8 << 10;

/// Where the log goes.
pub struct Sink {
    pub stderr: bool,
    pub syslog: Option<Syslog>,
}

/// A syslog socket (`/dev/log`), written datagrams in the form the C
/// library's `syslog()` uses, without a timestamp: the receiver stamps
/// each line in the system's time zone.
pub struct Syslog {
    socket: UnixDatagram,
    path: PathBuf,
    facility: u8,
    tag: String,
}

/// A syslog facility by name (`mail`, `daemon`, `local0` ... `local7`).
pub fn facility(name: &str) -> Option<u8> {
    const NAMES: [&str; 12] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
        "authpriv", "ftp",
    ];
    if let Some(n) = name.strip_prefix("local") {
        return n.parse::<u8>().ok().filter(|n| *n <= 7).map(|n| 16 + n);
    }
    NAMES.iter().position(|n| *n == name).map(|i| i as u8)
}

impl Syslog {
    /// Connects to the syslog socket at `path`.
    pub fn open(path: &Path, facility: u8) -> Result<Syslog, String> {
        let socket = UnixDatagram::unbound().map_err(|e| e.to_string())?;
        socket
            .connect(path)
            .and_then(|()| socket.set_write_timeout(Some(Duration::from_secs(1))))
            .map_err(|e| format!("syslog socket {}: {e}", path.display()))?;
        Ok(Syslog {
            socket,
            path: path.to_path_buf(),
            facility,
            tag: format!("greylist-policyd[{}]", std::process::id()),
        })
    }

    /// Sends one line at the severity its text says (`error:` err,
    /// `warning:` warning, else info), formatted in `message` (a buffer
    /// reused from line to line); reconnects once if the receiver was
    /// restarted.
    fn send(&self, message: &mut String, text: &str) {
        use std::fmt::Write as _;
        let severity = if text.starts_with("error:") {
            3
        } else if text.starts_with("warning:") {
            4
        } else {
            6
        };
        message.clear();
        let _ = write!(
            message,
            "<{}>{}: {text}",
            u32::from(self.facility) * 8 + severity,
            self.tag
        );
        if message.len() > MAX_SYSLOG {
            let mut end = MAX_SYSLOG;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        if self.socket.send(message.as_bytes()).is_err() {
            let _ = self.socket.connect(&self.path);
            let _ = self.socket.send(message.as_bytes());
        }
    }
}

#[derive(Default)]
struct Queue {
    /// Each line's time (Unix seconds) and text.
    lines: VecDeque<(i64, String)>,
    /// Memory held by the decision lines in `lines`: each one's buffer as
    /// allocated (an answer's line is moved in with the room it was written
    /// into, up to twice its length) and its place in the queue.
    decision_bytes: usize,
    /// Decision lines dropped since the writer last said so.
    dropped: u64,
    /// Lines taken by the writer and not yet written.
    writing: bool,
}

struct Logger {
    queue: Mutex<Queue>,
    /// Signalled when the writer has written everything it took.
    written: Condvar,
    sink: Sink,
    /// Whether lines still go to stderr ([`Sink::stderr`] until
    /// [`stop_stderr`]).
    stderr: AtomicBool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Starts the writer thread. Lines logged before it starts go straight to
/// stderr.
pub fn start(sink: Sink) {
    let logger = LOGGER.get_or_init(|| Logger {
        queue: Mutex::new(Queue::default()),
        written: Condvar::new(),
        stderr: AtomicBool::new(sink.stderr),
        sink,
    });
    std::thread::Builder::new()
        .name("log".into())
        .spawn(move || loop {
            std::thread::sleep(POLL);
            logger.write_waiting();
        })
        .expect("starting the log thread");
}

impl Logger {
    fn push(&self, text: String, decision: bool) {
        let now = greylist::unix_now();
        let mut q = self.queue.lock();
        if decision {
            let bytes = std::mem::size_of::<(i64, String)>() + text.capacity();
            if q.decision_bytes + bytes > MAX_QUEUED_BYTES {
                q.dropped += 1;
                return;
            }
            q.decision_bytes += bytes;
        }
        q.lines.push_back((now, text));
    }

    /// Writes every waiting line in one go (only the writer thread calls
    /// this, so lines keep their order).
    fn write_waiting(&self) {
        let (lines, dropped) = {
            let mut q = self.queue.lock();
            if q.lines.is_empty() && q.dropped == 0 {
                return;
            }
            q.decision_bytes = 0;
            q.writing = true;
            (std::mem::take(&mut q.lines), std::mem::take(&mut q.dropped))
        };
        let mut lines = lines;
        if dropped > 0 {
            lines.push_back((
                greylist::unix_now(),
                format!(
                    "log: dropped {dropped} decision lines: the log could not keep up (at most {} MiB wait)",
                    MAX_QUEUED_BYTES >> 20
                ),
            ));
        }
        if let Some(syslog) = &self.sink.syslog {
            let mut message = String::new();
            for (_, text) in &lines {
                syslog.send(&mut message, text);
            }
        }
        if self.stderr.load(Ordering::Relaxed) {
            let mut batch = String::with_capacity(lines.iter().map(|(_, l)| l.len() + 40).sum());
            let mut clock = Clock::default();
            for (at, text) in &lines {
                stamp_into(&mut batch, &mut clock, *at, text);
            }
            let _ = std::io::stderr().lock().write_all(batch.as_bytes());
        }
        self.queue.lock().writing = false;
        self.written.notify_all();
    }
}

/// A lifecycle line: never dropped.
pub fn log(line: impl std::fmt::Display) {
    send(line.to_string(), false);
}

/// A decision line (or another line a client can cause): dropped, and
/// counted, when the queue is full.
pub fn decision(line: impl std::fmt::Display) {
    send(line.to_string(), true);
}

/// [`decision`] for a line already written out (an answer's): queued as
/// it is, not copied.
pub fn decision_line(line: String) {
    send(line, true);
}

fn send(text: String, decision: bool) {
    match LOGGER.get() {
        Some(logger) => logger.push(text, decision),
        None => {
            let mut line = String::new();
            stamp_into(
                &mut line,
                &mut Clock::default(),
                greylist::unix_now(),
                &text,
            );
            eprint!("{line}");
        }
    }
}

/// Waits until the writer has written every line logged so far, for at
/// most `limit` (a stderr nobody reads must not keep the daemon from
/// exiting).
pub fn flush(limit: Duration) {
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let deadline = Instant::now() + limit;
    let mut q = logger.queue.lock();
    while !q.lines.is_empty() || q.dropped > 0 || q.writing {
        let wake = deadline.min(Instant::now() + POLL);
        logger.written.wait_until(&mut q, wake);
        if Instant::now() >= deadline {
            return;
        }
    }
}

/// Writes what waits, then stops writing to stderr (a daemon that left its
/// terminal; the log goes on to syslog).
pub fn stop_stderr() {
    flush(Duration::from_secs(5));
    if let Some(logger) = LOGGER.get() {
        logger.stderr.store(false, Ordering::Relaxed);
    }
}

/// The text of the second last stamped: the lines of a batch share a few
/// seconds, and formatting a date costs more than the rest of a line.
#[derive(Default)]
struct Clock {
    second: Option<i64>,
    text: String,
}

/// Appends `line` with a UTC timestamp and the program's name, ended by a
/// newline.
fn stamp_into(out: &mut String, clock: &mut Clock, at: i64, line: &str) {
    if clock.second != Some(at) {
        clock.text = utc(at);
        clock.second = Some(at);
    }
    out.push_str(&clock.text);
    out.push_str(" greylist-policyd: ");
    out.push_str(line);
    out.push('\n');
}

pub use crate::protocol::utc;

/// A fault that can happen many times a second (descriptors exhausted,
/// connections refused): one line when it starts, then at most one a
/// minute with a count, and one when it ends. The caller logs the lines.
pub struct Episode {
    what: &'static str,
    since: Option<Instant>,
    count: u64,
    reported: u64,
    last_report: Instant,
}

/// How often an ongoing episode is summarised.
const EPISODE_SUMMARY: Duration = Duration::from_secs(60);

impl Episode {
    pub fn new(what: &'static str) -> Episode {
        Episode {
            what,
            since: None,
            count: 0,
            reported: 0,
            last_report: Instant::now(),
        }
    }

    /// One more occurrence at `now`; `detail` says what happened. Returns
    /// the line to log, if one is due.
    pub fn happened(&mut self, now: Instant, detail: impl std::fmt::Display) -> Option<String> {
        self.count += 1;
        if self.since.is_none() {
            self.since = Some(now);
        } else if now.saturating_duration_since(self.last_report) < EPISODE_SUMMARY {
            return None;
        }
        let line = if self.reported == 0 {
            format!("{}: {detail}", self.what)
        } else {
            format!(
                "{}: {} more times ({detail})",
                self.what,
                self.count - self.reported
            )
        };
        self.reported = self.count;
        self.last_report = now;
        Some(line)
    }

    /// The fault is over, if it was happening: the line to log.
    pub fn ended(&mut self, now: Instant) -> Option<String> {
        let since = self.since.take()?;
        let line = format!(
            "{}: over after {:.1} s, {} times in all",
            self.what,
            now.saturating_duration_since(since).as_secs_f64(),
            self.count
        );
        (self.count, self.reported) = (0, 0);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review of the per-request work: the bound counted a line's length,
    /// but an answer's line comes with the room it was written into, so
    /// the queue could hold twice its bound (and a line with much room,
    /// far more).
    #[test]
    fn the_queue_bound_counts_the_memory_lines_hold() {
        let logger = Logger {
            queue: Mutex::new(Queue::default()),
            written: Condvar::new(),
            sink: Sink {
                stderr: false,
                syslog: None,
            },
            stderr: AtomicBool::new(false),
        };
        let line = || {
            let mut text = String::with_capacity(4096);
            text.push_str("action=DEFER_IF_PERMIT greylisted");
            text
        };
        for _ in 0..2 * MAX_QUEUED_BYTES / 4096 {
            logger.push(line(), true);
        }
        let q = logger.queue.lock();
        let held: usize = q.lines.iter().map(|(_, l)| l.capacity()).sum();
        assert!(held <= MAX_QUEUED_BYTES, "{held} bytes queued");
        assert!(q.dropped > 0);
        assert!(q.lines.len() > MAX_QUEUED_BYTES / 4096 * 9 / 10);
    }

    #[test]
    fn each_line_is_stamped_with_its_own_second() {
        let (mut out, mut clock) = (String::new(), Clock::default());
        for (at, line) in [(0, "a"), (0, "b"), (1, "c"), (0, "d"), (86_400, "e")] {
            stamp_into(&mut out, &mut clock, at, line);
        }
        assert_eq!(
            out,
            "1970-01-01T00:00:00Z greylist-policyd: a\n\
             1970-01-01T00:00:00Z greylist-policyd: b\n\
             1970-01-01T00:00:01Z greylist-policyd: c\n\
             1970-01-01T00:00:00Z greylist-policyd: d\n\
             1970-01-02T00:00:00Z greylist-policyd: e\n"
        );
    }

    #[test]
    fn an_episode_is_logged_when_it_starts_each_minute_and_when_it_ends() {
        let t0 = Instant::now();
        let mut e = Episode::new("accept");
        let lines: Vec<String> = (0..10_000u64)
            .filter_map(|i| e.happened(t0 + Duration::from_millis(i * 10), "EMFILE"))
            .collect();
        assert_eq!(
            lines,
            ["accept: EMFILE", "accept: 6000 more times (EMFILE)"]
        );
        let end = e.ended(t0 + Duration::from_secs(100)).unwrap();
        assert_eq!(end, "accept: over after 100.0 s, 10000 times in all");
        assert_eq!(e.ended(t0 + Duration::from_secs(101)), None);
        assert_eq!(e.happened(t0, "again").as_deref(), Some("accept: again"));
    }
}
