//! The control socket `greylistctl` talks to: a unix socket beside the
//! snapshot (`--control PATH`), mode 0600, whose peers must be the
//! daemon's own user or root (checked by their credentials, besides the
//! file mode). One JSON request and one JSON reply per connection (see
//! `protocol.rs`); every command that changes something is logged.
//!
//! Bounded like the policy server: at most [`MAX_CLIENTS`] connections
//! at once (more are told so and closed), a request must arrive within
//! [`TIMEOUT`] and fit in [`MAX_REQUEST`] bytes.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greylist::{Engine, Maintenance};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::log::log;
use crate::protocol::{Command, Reply, WhitelistAction, MAX_REQUEST, MAX_ROWS};
use crate::recall::Recall;
use crate::server::{DaemonClock, Server};
use crate::whitelist::Lists;

/// Control connections served at once.
pub const MAX_CLIENTS: usize = 8;
/// How long a control client has to send its request.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What the control socket and `/metrics` see of the running daemon.
pub struct Daemon {
    pub engine: Arc<Engine>,
    /// Taken out at shutdown for the final save; see [`Daemon::maintenance`].
    pub maintenance: Mutex<Option<Arc<Maintenance>>>,
    /// Set when the daemon starts to shut down: `/health` says so.
    pub shutting_down: AtomicBool,
    pub server: Arc<Server>,
    pub lists: Lists,
    pub recall: Arc<Recall>,
    pub clock: Arc<DaemonClock>,
    pub started: Instant,
    pub snapshot: PathBuf,
    pub snapshot_interval: u64,
    /// Checks are being answered from the local table (Redis unavailable).
    pub store_down: Arc<AtomicBool>,
}

fn number_or_null(v: Option<i64>) -> Value {
    v.map_or(Value::Null, Value::from)
}

impl Daemon {
    /// The maintenance, while the daemon runs (the lock is held only to
    /// clone it: a long save never holds up a status or `/health`).
    pub fn maintenance(&self) -> Option<Arc<Maintenance>> {
        self.maintenance.lock().clone()
    }

    /// Takes the maintenance out for the final save, once every save in
    /// progress (an operator's) has finished with it.
    pub fn take_maintenance(&self) -> Option<Maintenance> {
        self.shutting_down.store(true, Ordering::Relaxed);
        let mut m = self.maintenance.lock().take()?;
        loop {
            match Arc::try_unwrap(m) {
                Ok(m) => return Some(m),
                Err(shared) => {
                    m = shared;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Reads the list files and run-time entries again.
    pub fn reload(&self) -> Result<Value, String> {
        let loaded = self.lists.apply(&self.engine)?;
        let counts: serde_json::Map<String, Value> = loaded
            .iter()
            .map(|(kind, n)| (kind.as_str().to_string(), Value::from(*n)))
            .collect();
        Ok(Value::Object(counts))
    }

    /// Sweeps and saves now.
    pub fn save(&self) -> Result<Value, String> {
        let maintenance = self.maintenance().ok_or("the daemon is shutting down")?;
        maintenance.save_now().map_err(|e| e.to_string())?;
        Ok(json!({
            "path": self.snapshot.display().to_string(),
            "entries": self.engine.len(),
        }))
    }

    /// Why the daemon is not healthy, if it is not: the latest snapshot
    /// save failed, or Redis is unavailable while the engine defers
    /// rather than passes what it cannot judge.
    pub fn unhealthy(&self) -> Option<String> {
        if let Some(e) = self
            .maintenance
            .lock()
            .as_ref()
            .and_then(|m| m.last_error())
        {
            return Some(format!("the latest snapshot save failed: {e}"));
        }
        let defer = self.engine.config().fail_mode() == greylist::FailMode::Defer;
        if defer && self.store_down.load(Ordering::Relaxed) {
            return Some(format!(
                "Redis is unavailable ({}) and --redis-fail is defer",
                self.engine
                    .store_error()
                    .unwrap_or_else(|| "no answer".into())
            ));
        }
        None
    }

    fn status(&self) -> Value {
        let e = &self.engine;
        let c = e.config();
        let s = e.stats();
        let checks: serde_json::Map<String, Value> = greylist::Reason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), Value::from(s.reason(*r))))
            .collect();
        let (saves, failures, last_success, last_error) = match self.maintenance() {
            Some(m) => (m.saves(), m.failures(), m.last_success(), m.last_error()),
            None => (0, 0, None, None),
        };
        let store = c.redis().map(|url| {
            json!({
                "url": url,
                "prefix": c.redis_prefix(),
                "state": if self.store_down.load(Ordering::Relaxed) { "unavailable" } else { "up" },
                "fail_mode": match c.fail_mode() {
                    greylist::FailMode::Open => "open",
                    greylist::FailMode::Defer => "defer",
                },
                "round_trips": s.store_round_trips,
                "errors": s.store_errors,
                "timeouts": s.store_timeouts,
                "cache_hits": s.cache_hits,
                "malformed": s.store_malformed,
                "answered_locally": s.store_unavailable,
                "last_error": e.store_error(),
            })
        });
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "now": self.clock.now(),
            "entries": s.entries,
            "max_entries": c.max_entries(),
            "clients": s.clients,
            "max_clients": c.max_clients(),
            "checks": s.checks,
            "by_reason": checks,
            "lost_mail": s.lost_mail,
            "lost_recovered": s.lost_recovered,
            "expired": s.expired,
            "evicted": s.evicted,
            "clients_evicted": s.clients_evicted,
            "snapshot": {
                "path": self.snapshot.display().to_string(),
                "interval_seconds": self.snapshot_interval,
                "saves": saves,
                "failures": failures,
                "last_success": number_or_null(last_success),
                "last_error": last_error,
            },
            "store": store,
            "connections": {
                "open": self.server.open_connections(),
                "max": self.server.max_connections(),
            },
            "health": self.unhealthy().unwrap_or_else(|| "ok".into()),
        })
    }

    /// Carries out one command.
    pub fn run(&self, command: &Command) -> Result<Value, String> {
        let now = self.clock.now();
        let e = &self.engine;
        Ok(match command {
            Command::Status => self.status(),
            Command::LostMail { limit } => {
                let rows = e
                    .lost_mail_report((*limit).min(MAX_ROWS))
                    .map_err(|e| e.to_string())?;
                Value::Array(
                    rows.iter()
                        .map(|r| {
                            let network = r.network.to_string();
                            json!({
                                "network": network,
                                "count": r.count,
                                "last_seen": r.last_seen,
                                "samples": self.recall.samples(&network),
                            })
                        })
                        .collect(),
                )
            }
            Command::Client { ip, name } => {
                let r = e
                    .client_report(ip, name.as_deref(), now)
                    .map_err(|e| e.to_string())?;
                json!({
                    "network": r.network.to_string(),
                    "pending": r.pending,
                    "passed": r.passed,
                    "passes": r.passes,
                    "whitelisted": r.whitelisted,
                    "auto_whitelisted": r.auto_whitelisted,
                    "blocked_until": r.blocked_until,
                    "lost_mail": r.lost_mail,
                })
            }
            Command::Release {
                ip,
                sender,
                recipient,
            } => {
                e.release(ip, sender, recipient, now)
                    .map_err(|e| e.to_string())?;
                json!({ "released": 1 })
            }
            Command::ReleaseClient { ip } => {
                let n = e.release_client(ip, now).map_err(|e| e.to_string())?;
                json!({ "released": n })
            }
            Command::Forget {
                ip,
                sender,
                recipient,
            } => {
                let known = e.forget(ip, sender, recipient).map_err(|e| e.to_string())?;
                json!({ "forgotten": known })
            }
            Command::Whitelist { action } => match action {
                WhitelistAction::Add { list, entry } | WhitelistAction::Remove { list, entry } => {
                    let add = matches!(action, WhitelistAction::Add { .. });
                    let changed = self.lists.change(e, *list, entry, add)?;
                    json!({ "changed": changed })
                }
                WhitelistAction::List => {
                    serde_json::to_value(self.lists.rows()).map_err(|e| e.to_string())?
                }
            },
            Command::Reload => self.reload()?,
            Command::Save => self.save()?,
        })
    }
}

/// What the log says of a command (none for the ones that only read).
fn audit(command: &Command) -> Option<String> {
    let line = match command {
        Command::Status | Command::LostMail { .. } | Command::Client { .. } => return None,
        Command::Whitelist {
            action: WhitelistAction::List,
        } => return None,
        Command::Release {
            ip,
            sender,
            recipient,
        } => format!("release client={ip} from=<{sender}> to=<{recipient}>"),
        Command::ReleaseClient { ip } => format!("release-client client={ip}"),
        Command::Forget {
            ip,
            sender,
            recipient,
        } => format!("forget client={ip} from=<{sender}> to=<{recipient}>"),
        Command::Whitelist {
            action: WhitelistAction::Add { list, entry },
        } => format!("whitelist add {} {entry}", list.as_str()),
        Command::Whitelist {
            action: WhitelistAction::Remove { list, entry },
        } => format!("whitelist remove {} {entry}", list.as_str()),
        Command::Reload => "reload".into(),
        Command::Save => "save".into(),
    };
    // One log line, whatever the operator typed.
    Some(line.escape_debug().to_string())
}

/// Whether the peer is the daemon's own user or root.
fn allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = rustix::net::sockopt::socket_peercred(stream).map_err(|e| e.to_string())?;
    let (uid, ours) = (cred.uid.as_raw(), rustix::process::geteuid().as_raw());
    if uid == ours || uid == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {uid} may not use this socket (only uid {ours} and root)"
        ))
    }
}

/// Serves one control connection.
fn serve(daemon: &Daemon, stream: UnixStream) {
    let reply = |mut stream: &UnixStream, reply: Reply| {
        let mut line = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
        line.push('\n');
        let _ = stream.write_all(line.as_bytes());
    };
    if let Err(why) = allowed(&stream) {
        log(format_args!("control: refused a connection: {why}"));
        return reply(&stream, Reply::error(format!("refused: {why}")));
    }
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let read =
        crate::server::read_request_within(&stream, MAX_REQUEST, TIMEOUT, |b| b.contains(&b'\n'));
    let line = match read {
        Ok(bytes) => bytes
            .split(|&b| b == b'\n')
            .next()
            .unwrap_or_default()
            .to_vec(),
        Err(why) => return reply(&stream, Reply::error(why)),
    };
    let command: Command = match serde_json::from_slice(&line) {
        Ok(c) => c,
        Err(e) => return reply(&stream, Reply::error(format!("not a command: {e}"))),
    };
    let result = daemon.run(&command);
    if let Some(what) = audit(&command) {
        match &result {
            Ok(v) => log(format_args!("control: {what}: {v}")),
            Err(e) => log(format_args!("control: {what}: failed: {e}")),
        }
    }
    reply(
        &stream,
        match result {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::error(e),
        },
    );
}

/// What would make binding the control socket at `path` fail, checked
/// before the snapshot is loaded: a path too long for a unix socket. (Its
/// folder, beside the snapshot by default, is checked with the snapshot's.)
pub fn check_path(path: &Path) -> Result<(), String> {
    // sun_path holds 108 bytes with the final NUL.
    if path.as_os_str().len() > 107 {
        return Err(format!(
            "--control {}: {} bytes is longer than a unix socket path may be (107); give a \
             shorter --control PATH, or --no-control",
            path.display(),
            path.as_os_str().len()
        ));
    }
    Ok(())
}

/// Binds the control socket at `path`, private to the daemon's user from
/// the start (made under umask 0177: never a moment when others may
/// connect, and no chmod that a link swapped in could redirect), and
/// serves it on threads of its own.
pub fn start(daemon: Arc<Daemon>, path: &Path) -> Result<(), String> {
    let listener = crate::bind_unix("--control", path, 0o600)?;
    crate::server::serve_each(
        "control",
        move || listener.accept().map(|(s, _)| s),
        MAX_CLIENTS,
        |stream: UnixStream| {
            let busy = Reply::error(format!("busy: {MAX_CLIENTS} control connections"));
            let line = serde_json::to_string(&busy).unwrap_or_default() + "\n";
            let _ = (&stream).write_all(line.as_bytes());
        },
        move |stream| serve(&daemon, stream),
    )
}
