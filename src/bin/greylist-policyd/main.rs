//! greylist-policyd: a Postfix policy server (and a drop-in for postgrey)
//! on the greylist engine. See `greylist-policyd --help`.
//!
//! Modules: `cli` (the command line), `log` (the bounded log), `report`
//! (lost mail and blocks in the log, and SIGUSR1's status), `server`
//! (accepting and serving connections under deadlines), `watch` (Redis
//! outages in the log); this file starts it all, checking at start what
//! would fail later.

mod cli;
mod control;
mod log;
mod manual;
mod metrics;
mod protocol;
mod recall;
mod report;
mod server;
mod service;
mod spf;
mod watch;
mod whitelist;

use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use greylist::{ListKind, Maintenance, SaveEvent, SnapshotOptions};
use parking_lot::Mutex;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::log::log;
use crate::recall::Recall;
use crate::server::{accept_loop, DaemonClock, Limits, Server};

/// How long the final log lines may take to be written at exit.
const FINAL_FLUSH: Duration = Duration::from_secs(30);

/// Makes way for a unix socket at `path` (given by `option`): removes a
/// stale socket (one nobody listens on), and refuses anything else there.
fn clear_socket_path(option: &str, path: &Path) -> Result<(), String> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{option} {shown}: {e}")),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{option} {shown}: something that is not a socket is there; refusing to remove it"
        ));
    }
    // Only a socket nobody listens on is stale; any other failure (no
    // permission, say) leaves it alone.
    match UnixStream::connect(path) {
        Ok(_) => {
            return Err(format!(
                "{option} {shown}: another server is listening on it"
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => return Err(format!("{option} {shown}: {e}; leaving it alone")),
    }
    std::fs::remove_file(path)
        .map_err(|e| format!("{option} {shown}: removing the stale socket: {e}"))
}

/// Binds a unix socket for `option` at `path` with `mode` from the start:
/// made under the umask that gives that mode (never a moment with more,
/// and no chmod after, which a link swapped in could redirect to another
/// file), then checked. A stale socket there is removed first.
fn bind_unix(option: &str, path: &Path, mode: u32) -> Result<UnixListener, String> {
    use rustix::fs::Mode;
    clear_socket_path(option, path)?;
    // The files other threads make are made with explicit modes (0600),
    // whatever the umask for this moment.
    let old = rustix::process::umask(Mode::from_raw_mode(!mode & 0o777));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(|e| format!("{option} {}: {e}", path.display()))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{option}: {e}"))?;
    let made = meta.permissions().mode() & 0o777;
    if !meta.file_type().is_socket() || made != mode & 0o777 {
        return Err(format!(
            "{option} {}: the socket was made with mode {made:o}, not {mode:o}; refusing to serve it",
            path.display()
        ));
    }
    Ok(listener)
}

/// `--pidfile`: the process id, written anew (a link or anything but a
/// regular file there is refused, never followed).
fn write_pidfile(path: &Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {
            std::fs::remove_file(path).map_err(|e| format!("--pidfile {shown}: {e}"))?
        }
        Ok(_) => {
            return Err(format!(
                "--pidfile {shown}: not a regular file; refusing it"
            ))
        }
        Err(_) => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| writeln!(f, "{}", std::process::id()))
        .map_err(|e| format!("--pidfile {shown}: {e}"))
}

/// The list counts, for the log: a kind that has files or entries.
fn log_lists(loaded: &[(ListKind, usize)], o: &cli::Options) {
    for (kind, n) in loaded {
        let has_files = o.lists.iter().any(|(k, p)| k == kind && !p.is_empty());
        let built_in = *kind == ListKind::Clients && o.default_clients;
        if has_files || built_in || *n > 0 {
            let origin = if built_in { " (the built-in list)" } else { "" };
            log(format_args!("{kind} list: {n} entries loaded{origin}"));
        }
    }
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

/// Binds a TCP listener for `option`; a bare port is on 127.0.0.1.
fn bind_tcp(option: &str, addr: &str) -> Result<TcpListener, String> {
    let addr = if addr.contains(':') {
        addr.to_string()
    } else {
        format!("127.0.0.1:{addr}")
    };
    TcpListener::bind(&addr).map_err(|e| format!("{option} {addr}: {e}"))
}

/// The daemon, from its options to its exit; `keep_stderr`: whether the
/// log still goes to stderr once a `--daemonize`d daemon serves.
fn run(o: cli::Options, keep_stderr: bool) -> Result<(), String> {
    for note in &o.notes {
        log(note);
    }
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
    // Every socket is bound first (a port below 1024 or a root-only folder
    // needs root), then the pid file written; then root is left, and all
    // the rest (the snapshot, the control socket, the list files) is
    // opened as the user the daemon runs as.
    let mut listening = Vec::new();
    let metrics_listener = o
        .metrics
        .as_deref()
        .map(|addr| bind_tcp("--metrics", addr))
        .transpose()?;
    let inet_listener = match &o.inet {
        Some(addr) => {
            let listener = bind_tcp("--inet", addr)?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            listening.push(format!("tcp {local}"));
            Some(listener)
        }
        None => None,
    };
    let unix_listener = match &o.unix {
        Some(path) => {
            // Postfix's user must be able to connect (postgrey's default 0666).
            let listener = bind_unix("--unix", path, o.socketmode)?;
            listening.push(format!("unix {}", path.display()));
            Some(listener)
        }
        None => None,
    };
    if let Some(path) = &o.pidfile {
        write_pidfile(path)?;
    }
    let user = service::drop_privileges(o.user.as_deref(), o.group.as_deref())?;
    if let Some(who) = &user {
        log(format_args!("running as {who}"));
    }
    if rustix::process::geteuid().is_root() {
        log("warning: running as root: --user (a user of its own) is safer");
    }
    // What fails from here on may be the user's rights: the error says who.
    let as_user = |e: String| match &user {
        Some(who) => format!("{e} (running as {who})"),
        None => e,
    };
    let control = (!o.no_control).then(|| {
        o.control
            .clone()
            .unwrap_or_else(|| protocol::control_path(&o.snapshot))
    });
    if let Some(path) = &control {
        control::check_path(path).map_err(as_user)?;
    }
    let mut whitelist_path = o.snapshot.as_os_str().to_owned();
    whitelist_path.push(".whitelist");
    let lists = whitelist::Lists::open(o.lists.clone(), o.default_clients, whitelist_path.into())
        .map_err(as_user)?;
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
    .map_err(|e| as_user(e.to_string()))?;
    let engine = started.maintenance.engine().clone();
    let store_down = Arc::new(AtomicBool::new(false));
    if shared {
        watch::start(engine.clone(), store_down.clone());
    }
    log_lists(&lists.apply(&engine).map_err(as_user)?, &o);
    let recall = Arc::new(Recall::default());
    engine
        .on_event(Some(report::event_sink(engine.config(), recall.clone())))
        .map_err(|e| e.to_string())?;

    let spf = match o.spf {
        Some((deadline, server)) => {
            let spf = spf::Spf::new(server, deadline, &o.policy.hostname).map_err(as_user)?;
            log(format_args!(
                "SPF: sender domains that pass key their requests (DNS {}, deadline {} ms)",
                server.map_or_else(|| "from /etc/resolv.conf".to_string(), |s| s.to_string()),
                deadline.as_millis()
            ));
            Some(Arc::new(spf))
        }
        None => None,
    };
    let live = metrics::Live::default();
    let server = Arc::new(Server::new(
        engine.clone(),
        o.policy.clone(),
        spf,
        limits,
        clock.clone(),
        live.clone(),
        recall.clone(),
    ));
    let (set_aside, maintenance) = (started.set_aside, started.maintenance);
    let daemon = Arc::new(control::Daemon {
        engine: engine.clone(),
        maintenance: Mutex::new(Some(Arc::new(maintenance))),
        shutting_down: AtomicBool::new(false),
        server: server.clone(),
        lists,
        recall,
        clock: clock.clone(),
        started: Instant::now(),
        snapshot: o.snapshot.clone(),
        snapshot_interval: o.snapshot_interval,
        store_down,
    });
    let mut operating = Vec::new();
    if let Some(path) = &control {
        control::start(daemon.clone(), path).map_err(as_user)?;
        operating.push(format!("control {}", path.display()));
    }
    if let Some(listener) = metrics_listener {
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        metrics::start(daemon.clone(), live, listener)?;
        operating.push(format!("metrics http://{local}/metrics"));
    }
    let pause = |d| std::thread::sleep(d);
    if let Some(listener) = inet_listener {
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
    if let Some(listener) = unix_listener {
        let s = server.clone();
        std::thread::spawn(move || {
            let next = || Some(listener.accept().map(|(c, _)| c));
            accept_loop(next, |c| s.admit(c), pause, log);
        });
    }
    // Lost mail is looked for every sweep interval, not only at saves.
    let (swept, sweep_clock) = (engine.clone(), clock.clone());
    let every = Duration::from_secs(o.sweep_interval);
    std::thread::Builder::new()
        .name("sweeper".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            swept.sweep(sweep_clock.now());
        })
        .map_err(|e| format!("sweeper: {e}"))?;
    log(format_args!(
        "listening on {}; snapshot {} ({}, every {} s); {} entries; delay {} s; \
         lost mail looked for every {} s; at most {} connections",
        listening
            .into_iter()
            .chain(operating)
            .collect::<Vec<_>>()
            .join(" and "),
        o.snapshot.display(),
        if engine.is_empty() {
            "new or empty"
        } else {
            "loaded"
        },
        o.snapshot_interval,
        engine.len(),
        engine.config().delay(),
        o.sweep_interval,
        limits.max_connections
    ));
    if let Some((aside, why)) = &set_aside {
        log(format_args!(
            "the old snapshot was unusable ({why}); kept it as {}",
            aside.display()
        ));
    }
    if o.daemonize {
        service::detach(keep_stderr, || {
            if !keep_stderr {
                log::stop_stderr();
            }
        })?;
    }
    let probed = engine.clone();
    service::tell_systemd_ready(move || {
        probed.len();
    });

    for signal in signals.forever() {
        match signal {
            SIGHUP => match daemon.lists.apply(&engine) {
                Ok(loaded) => {
                    log_lists(&loaded, &o);
                    log("SIGHUP: list files reloaded");
                }
                Err(e) => log(format_args!("SIGHUP: lists kept as they were: {e}")),
            },
            SIGUSR1 => report::status(&engine),
            // A failure is logged by the save observer.
            SIGUSR2 => {
                if daemon.save().is_ok() {
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
    service::tell_systemd_stopping();
    log("shutting down: writing the final snapshot");
    for path in control.iter().chain(&o.pidfile) {
        match std::fs::remove_file(path) {
            // A pid file written as root, in a folder of root's, stays
            // after root was left: init scripts remove it themselves.
            Err(e)
                if e.kind() == std::io::ErrorKind::PermissionDenied
                    && user.is_some()
                    && Some(path) == o.pidfile.as_ref() =>
            {
                log(format_args!(
                    "{} stays: written as root, it cannot be removed as {}",
                    path.display(),
                    user.as_deref().unwrap_or_default()
                ))
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => log(format_args!(
                "warning: could not remove {}: {}",
                path.display(),
                as_user(e.to_string())
            )),
            _ => {}
        }
    }
    if let Some(maintenance) = daemon.take_maintenance() {
        maintenance
            .stop()
            .map_err(|e| format!("the final snapshot save failed: {e}"))?;
    }
    log(format_args!(
        "saved {} entries to {}",
        engine.len(),
        o.snapshot.display()
    ));
    Ok(())
}

fn main() {
    if manual::requested() {
        manual::print(cli::command(), cli::MAN_SECTIONS);
    }
    let mut o = cli::parse();
    if o.show_default_whitelist {
        print!("{}", whitelist::DEFAULT_CLIENTS);
        std::process::exit(0);
    }
    let fail = |e: String| -> ! {
        eprintln!("greylist-policyd: error: {e}");
        std::process::exit(1);
    };
    if o.daemonize {
        if !service::is_child() {
            if std::env::var_os("NOTIFY_SOCKET").is_some() {
                fail(
                    "--daemonize: systemd runs this daemon in the foreground (its unit is \
                      Type=notify): leave --daemonize out"
                        .into(),
                );
            }
            std::process::exit(service::start_in_background());
        }
        service::leave_terminal().unwrap_or_else(|e| fail(e));
        o.make_paths_absolute();
    }
    let (sink, warning) = o.log_sink().unwrap_or_else(|e| fail(e));
    let keep_stderr = sink.syslog.is_none() || o.log_stderr;
    log::start(sink);
    if let Some(w) = warning {
        log(w);
    }
    let pidfile = o.pidfile.clone();
    let result = run(o, keep_stderr);
    if let Err(e) = &result {
        log(format_args!("error: {e}"));
        // A pid file this process wrote names no running daemon now.
        if let Some(path) = pidfile {
            let ours = std::fs::read_to_string(&path)
                .is_ok_and(|text| text.trim() == std::process::id().to_string());
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    log::flush(FINAL_FLUSH);
    std::process::exit(i32::from(result.is_err()));
}
