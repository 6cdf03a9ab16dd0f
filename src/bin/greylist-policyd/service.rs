//! Running as a classic Unix service, as postgrey does under Debian's init
//! script: in the background (`--daemonize`) and as an unprivileged user
//! (`--user`/`--group`).
//!
//! `--daemonize` starts the daemon again as a child process instead of
//! forking (a fork of a process that already runs threads may copy a lock
//! another thread held; a new process starts clean), in a session of its
//! own with no controlling terminal, and waits until the child says it
//! serves: the command's exit status is then the daemon's start-up result,
//! and a start-up error still reaches the terminal that ran it. The child
//! writes `ready` on the pipe that is its standard output when it listens,
//! then points its standard streams at `/dev/null` (standard error stays
//! when the log goes there).

use std::ffi::{CString, OsString};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use nix::unistd::{Gid, Group, Uid, User};

/// Set in the child's environment to the starting process's id: a child
/// finds it equal to its parent's id (an inherited or forged variable does
/// not match).
const CHILD: &str = "GREYLIST_POLICYD_DAEMONIZED";

/// What the child writes when it serves.
const READY: &str = "ready";

/// Whether this process is the background child `--daemonize` started.
pub fn is_child() -> bool {
    let parent = rustix::process::Pid::as_raw(rustix::process::getppid());
    std::env::var(CHILD).is_ok_and(|v| v == parent.to_string())
}

/// `--daemonize` in the process that was run: starts the daemon in the
/// background with the same arguments and returns its start-up result as
/// an exit status (0 once it serves; 1 if it failed or exited before).
pub fn start_in_background() -> i32 {
    let fail = |e: String| {
        eprintln!("greylist-policyd: error: --daemonize: {e}");
        1
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(format!("cannot find this program: {e}")),
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let child = Command::new(exe)
        .args(args)
        .env(CHILD, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return fail(format!("cannot start the daemon: {e}")),
    };
    let mut said = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut said);
    }
    if said.trim_end() == READY {
        // The child lives on, adopted by init.
        return 0;
    }
    match child.wait() {
        Ok(status) if status.success() => fail("the daemon exited during start-up".into()),
        Ok(status) => fail(format!("the daemon did not start ({status})")),
        Err(e) => fail(format!("waiting for the daemon: {e}")),
    }
}

/// In the background child, first thing: a session of its own (no
/// controlling terminal, out of the shell's job control).
pub fn leave_terminal() -> Result<(), String> {
    rustix::process::setsid()
        .map(drop)
        .map_err(|e| format!("--daemonize: setsid: {e}"))
}

/// In the background child once it serves: tells the waiting parent, and
/// points standard input and output (and standard error unless
/// `keep_stderr`) at `/dev/null`, so that a closed terminal or pipe can
/// never hold up or kill the daemon. Also leaves the working folder for
/// `/` (every path was made absolute at start), so that it does not hold a
/// file system busy. `quiet_log` (the log leaving stderr) runs once
/// nothing can fail any more, so that a failure still reaches the terminal.
pub fn detach(keep_stderr: bool, quiet_log: impl FnOnce()) -> Result<(), String> {
    use std::io::Write;
    let err = |what: &str, e: std::io::Error| format!("--daemonize: {what}: {e}");
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| err("/dev/null", e))?;
    rustix::process::chdir("/").map_err(|e| err("chdir /", e.into()))?;
    quiet_log();
    let mut out = std::io::stdout().lock();
    // The parent may be gone (killed): then nobody waits, and that is fine.
    let _ = writeln!(out, "{READY}").and_then(|()| out.flush());
    rustix::stdio::dup2_stdin(&null).map_err(|e| err("stdin", e.into()))?;
    rustix::stdio::dup2_stdout(&null).map_err(|e| err("stdout", e.into()))?;
    if !keep_stderr {
        rustix::stdio::dup2_stderr(&null).map_err(|e| err("stderr", e.into()))?;
    }
    Ok(())
}

/// Under systemd (`Type=notify`), once the daemon serves: `READY=1`; and
/// when the unit asks for a watchdog (`WatchdogSec=`), a thread that pings
/// it at half the interval, each time after `probe` returned (it takes
/// the engine's locks: a daemon stuck on one is restarted). Nothing
/// happens without systemd (no `NOTIFY_SOCKET`).
pub fn tell_systemd_ready(probe: impl Fn() + Send + 'static) {
    use sd_notify::NotifyState;
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        crate::log::log(format_args!("warning: telling systemd it is ready: {e}"));
    }
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) {
        let every = std::time::Duration::from_micros(usec / 2);
        let pinger = move || loop {
            std::thread::sleep(every);
            probe();
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(pinger)
        {
            crate::log::log(format_args!("warning: the systemd watchdog thread: {e}"));
        }
    }
}

/// Under systemd: `STOPPING=1` (the final snapshot is being written).
pub fn tell_systemd_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// A user by name, or by number when no user has that name.
fn user(name: &str) -> Result<User, String> {
    let found = User::from_name(name).map_err(|e| format!("--user {name}: {e}"))?;
    let found = match (found, name.parse::<u32>()) {
        (Some(u), _) => Some(u),
        (None, Ok(uid)) => {
            User::from_uid(Uid::from_raw(uid)).map_err(|e| format!("--user {name}: {e}"))?
        }
        (None, Err(_)) => None,
    };
    found.ok_or_else(|| format!("--user {name}: no such user"))
}

/// A group by name, or by number when no group has that name.
fn group(name: &str) -> Result<Gid, String> {
    let found = Group::from_name(name).map_err(|e| format!("--group {name}: {e}"))?;
    match (found, name.parse::<u32>()) {
        (Some(g), _) => Ok(g.gid),
        (None, Ok(gid)) => Ok(Gid::from_raw(gid)),
        (None, Err(_)) => Err(format!("--group {name}: no such group")),
    }
}

/// `--user`/`--group`: becomes that user (with its groups; `--group`
/// sets the primary group, the user's own by default) for good. Called
/// after the sockets are bound and the pid file written, before anything
/// else is opened: the snapshot, its lock and temporary files, the control
/// socket and the list files are the user's, as postgrey opens its
/// database after dropping root. Returns who the process is now, if that
/// changed.
pub fn drop_privileges(
    user_name: Option<&str>,
    group_name: Option<&str>,
) -> Result<Option<String>, String> {
    if user_name.is_none() && group_name.is_none() {
        return Ok(None);
    }
    let who = user_name.map(user).transpose()?;
    let gid = match (group_name, &who) {
        (Some(name), _) => group(name)?,
        (None, Some(u)) => u.gid,
        (None, None) => unreachable!("one of the two was given"),
    };
    let uid = who.as_ref().map(|u| u.uid);
    let current = (nix::unistd::getuid(), nix::unistd::getgid());
    if !current.0.is_root() {
        // Not root: only staying who we are is possible.
        if uid.is_none_or(|u| u == current.0) && gid == current.1 {
            return Ok(None);
        }
        return Err(format!(
            "--user/--group: only root can change them (running as uid {}, gid {})",
            current.0, current.1
        ));
    }
    let groups = match &who {
        Some(u) => {
            let name = CString::new(u.name.as_str()).map_err(|e| format!("--user: {e}"))?;
            nix::unistd::initgroups(&name, gid)
        }
        None => nix::unistd::setgroups(&[gid]),
    };
    groups.map_err(|e| format!("--user/--group: setting the supplementary groups: {e}"))?;
    nix::unistd::setgid(gid).map_err(|e| format!("--group: setgid {gid}: {e}"))?;
    if let Some(uid) = uid {
        nix::unistd::setuid(uid).map_err(|e| format!("--user: setuid {uid}: {e}"))?;
        // For good: a process that could become root again dropped nothing.
        if !uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err("--user: root could be regained after setuid; refusing to run".into());
        }
    }
    let name = who.map_or_else(|| "root".to_string(), |u| u.name);
    let group = Group::from_gid(gid)
        .ok()
        .flatten()
        .map_or(gid.to_string(), |g| g.name);
    Ok(Some(format!(
        "user {name} (uid {}), group {group} (gid {gid})",
        uid.unwrap_or(current.0)
    )))
}

/// `path` made absolute against the working folder, for a daemon that
/// leaves it (unchanged when that cannot be known).
pub fn absolute(path: &Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
