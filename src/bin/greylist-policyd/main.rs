//! greylist-policyd: a Postfix policy server (and a drop-in for postgrey)
//! on the greylist engine. See `greylist-policyd --help`.
//!
//! Modules: `cli` (the command line), `log` (the bounded log), `report`
//! (lost mail and blocks in the log, and SIGUSR1's status), `server`
//! (accepting and serving connections under deadlines), `watch` (Redis
//! outages in the log); this file starts it all, checking at start what
//! would fail later.

mod cli;
mod log;
mod report;
mod server;
mod watch;

use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use greylist::{Engine, ListKind, Maintenance, SaveEvent, SnapshotOptions};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::log::log;
use crate::server::{accept_loop, DaemonClock, Limits, Server};

/// How long the final log lines may take to be written at exit.
const FINAL_FLUSH: Duration = Duration::from_secs(30);

fn load_lists(engine: &Engine, lists: &[(ListKind, Vec<PathBuf>)]) -> Result<(), String> {
    for (kind, paths) in lists.iter().filter(|(_, p)| !p.is_empty()) {
        let n = engine.load_lists(*kind, paths).map_err(|e| e.to_string())?;
        log(format_args!("{kind} list: {n} entries loaded"));
    }
    Ok(())
}

/// Makes way for a unix socket at `path`: removes a stale socket (one
/// nobody listens on), and refuses anything else there.
fn clear_socket_path(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("--unix {shown}: {e}")),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "--unix {shown}: something that is not a socket is there; refusing to remove it"
        ));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(format!("--unix {shown}: another server is listening on it"));
    }
    std::fs::remove_file(path)
        .map_err(|e| format!("--unix {shown}: removing the stale socket: {e}"))
}

/// The connection bound, clamped to what the descriptor limit allows.
fn connection_bound(asked: usize) -> Result<usize, String> {
    let Some((limit, budget)) = server::descriptor_budget() else {
        return Ok(asked);
    };
    if budget == 0 {
        return Err(format!(
            "RLIMIT_NOFILE is {limit}: at least {} descriptors are needed",
            server::RESERVED_DESCRIPTORS + 1
        ));
    }
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    if asked > budget {
        log(format_args!(
            "--max-connections {asked} is more than RLIMIT_NOFILE ({limit}) allows: using {budget}"
        ));
        return Ok(budget);
    }
    Ok(asked)
}

/// Tells the log of each failed snapshot save at once, and of recovery.
fn save_observer(path: PathBuf) -> greylist::SaveObserver {
    Arc::new(move |event: &SaveEvent<'_>| match event {
        SaveEvent::Failed { error, in_a_row } => log(format_args!(
            "snapshot save to {} failed ({in_a_row} in a row): {error}",
            path.display()
        )),
        SaveEvent::Recovered { failed } => log(format_args!(
            "snapshot saved to {} again, after {failed} failed saves",
            path.display()
        )),
    })
}

fn run() -> Result<(), String> {
    let o = cli::parse_args(std::env::args().skip(1))?;
    let config = o.config.clone().build().map_err(|e| e.to_string())?;
    if let Some(secret) = &o.redis_secret {
        let mode = std::fs::metadata(secret).map_or(0, |m| m.permissions().mode());
        if mode & 0o044 != 0 {
            log(format_args!(
                "warning: --redis-secret {} can be read by group or others (mode {:o}); \
                 whoever reads it can forge keys: chmod 600 it",
                secret.display(),
                mode & 0o7777
            ));
        }
    }
    let options = SnapshotOptions::new(
        &o.snapshot,
        (o.snapshot_interval > 0).then(|| Duration::from_secs(o.snapshot_interval)),
    );
    if let Some(url) = config.redis() {
        log(format_args!(
            "sharing triplets through {url} (prefix {}, timeout {} ms)",
            config.redis_prefix(),
            config.redis_timeout().as_millis()
        ));
    }
    let limits = Limits {
        max_connections: connection_bound(o.max_connections)?,
        idle_timeout: o.idle_timeout,
        request_timeout: o.request_timeout,
    };
    if let Some(path) = &o.unix {
        clear_socket_path(path)?;
    }
    let shared = config.redis().is_some();
    // Before the (perhaps long) snapshot load: a signal then waits for the
    // loop below instead of killing the daemon.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])
        .map_err(|e| format!("signals: {e}"))?;
    let clock = Arc::new(DaemonClock::default());
    let sweeps = clock.clone();
    let started = Maintenance::open(
        config,
        &options,
        Arc::new(move || sweeps.now()),
        Some(save_observer(o.snapshot.clone())),
    )
    .map_err(|e| e.to_string())?;
    let engine = started.maintenance.engine().clone();
    if shared {
        watch::start(engine.clone());
    }
    load_lists(&engine, &o.lists)?;
    engine
        .on_event(Some(report::event_sink(engine.config())))
        .map_err(|e| e.to_string())?;

    let server = Arc::new(Server::new(engine.clone(), o.policy.clone(), limits, clock));
    let mut listening = Vec::new();
    let pause = |d| std::thread::sleep(d);
    if let Some(addr) = &o.inet {
        let addr = if addr.contains(':') {
            addr.clone()
        } else {
            format!("127.0.0.1:{addr}")
        };
        let listener = TcpListener::bind(&addr).map_err(|e| format!("--inet {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        listening.push(format!("tcp {local}"));
        let s = server.clone();
        std::thread::spawn(move || {
            let next = || Some(listener.accept().map(|(c, _)| c));
            let admit = |c: std::net::TcpStream| {
                // Answers are small and awaited: never hold them back.
                let _ = c.set_nodelay(true);
                s.admit(c)
            };
            accept_loop(next, admit, pause, log);
        });
    }
    if let Some(path) = &o.unix {
        let listener =
            UnixListener::bind(path).map_err(|e| format!("--unix {}: {e}", path.display()))?;
        listening.push(format!("unix {}", path.display()));
        let s = server.clone();
        std::thread::spawn(move || {
            let next = || Some(listener.accept().map(|(c, _)| c));
            accept_loop(next, |c| s.admit(c), pause, log);
        });
    }
    log(format_args!(
        "listening on {}; snapshot {} ({}, every {} s); {} entries; delay {} s; \
         at most {} connections",
        listening.join(" and "),
        o.snapshot.display(),
        if engine.is_empty() {
            "new or empty"
        } else {
            "loaded"
        },
        o.snapshot_interval,
        engine.len(),
        engine.config().delay(),
        limits.max_connections
    ));
    if let Some((aside, why)) = &started.set_aside {
        log(format_args!(
            "the old snapshot was unusable ({why}); kept it as {}",
            aside.display()
        ));
    }
    let maintenance = started.maintenance;

    for signal in signals.forever() {
        match signal {
            SIGHUP => match load_lists(&engine, &o.lists) {
                Ok(()) => log("SIGHUP: list files reloaded"),
                Err(e) => log(format_args!("SIGHUP: lists kept as they were: {e}")),
            },
            SIGUSR1 => report::status(&engine),
            // A failure is logged by the save observer.
            SIGUSR2 => {
                if maintenance.save_now().is_ok() {
                    log(format_args!(
                        "SIGUSR2: saved {} entries to {}",
                        engine.len(),
                        o.snapshot.display()
                    ));
                }
            }
            _ => break,
        }
    }
    log("shutting down: writing the final snapshot");
    maintenance
        .stop()
        .map_err(|e| format!("the final snapshot save failed: {e}"))?;
    log(format_args!(
        "saved {} entries to {}",
        engine.len(),
        o.snapshot.display()
    ));
    Ok(())
}

fn main() {
    log::start();
    let result = run();
    if let Err(e) = &result {
        log(format_args!("error: {e}"));
    }
    log::flush(FINAL_FLUSH);
    std::process::exit(i32::from(result.is_err()));
}
