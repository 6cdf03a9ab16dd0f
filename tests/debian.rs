//! The Debian package (issue 21), as an admin meets it: `cargo deb --strip`
//! builds it (tests/run.sh's part "Debian package" passes its path in
//! GREYLIST_DEB); lintian checks it; apt installs it; the unit's own
//! ExecStart line, read from the installed unit, runs as its User= with its
//! EnvironmentFile and serves real Postfix through the runtime folder's
//! socket; then it is removed, installed again (the state is still there)
//! and purged.
//!
//! It installs into the system it runs on: it needs root, Debian's dpkg and
//! apt, lintian, systemd-analyze, man, setpriv, Postfix and swaks (.ci/run
//! installs them). Elsewhere it says why it skipped; under CI=true that
//! fails.

#[path = "support/postfix.rs"]
mod postfix;
#[path = "support/real.rs"]
mod real;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use postfix::{missing_tools, swaks, text, Postfix};

const PACKAGE: &str = "greylist";
const UNIT: &str = "/usr/lib/systemd/system/greylist-policyd.service";

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(out.status.success(), "{cmd} {args:?}:\n{}", text(&out));
    text(&out)
}

/// Why the test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if std::env::var_os("GREYLIST_DEB").is_none() {
        return Some(
            "GREYLIST_DEB is not set (tests/run.sh builds the package with cargo deb and sets it)"
                .into(),
        );
    }
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (it installs the package)".into());
    }
    let tools = [
        "dpkg",
        "apt-get",
        "lintian",
        "systemd-analyze",
        "man",
        "setpriv",
    ];
    let absent: Vec<_> = tools
        .iter()
        .filter(|t| !real::runs(t, "--version"))
        .collect();
    if !absent.is_empty() {
        return Some(format!("not installed: {absent:?}"));
    }
    missing_tools()
}

/// The `Key=` values of a systemd unit (the last one of each key).
fn unit_fields(unit: &str) -> HashMap<String, String> {
    unit.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The variables of an EnvironmentFile (`KEY="value"` lines).
fn environment(path: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// The installed unit's service, started as systemd would start it: its
/// folders made, its EnvironmentFile read, its ExecStart line with the
/// variables split at spaces, as its User= and Group=, with a clean
/// environment and NOTIFY_SOCKET; returns once it said READY=1.
struct Service {
    child: Child,
    user: String,
    notify: UnixDatagram,
}

impl Service {
    fn start(dir: &Path) -> Service {
        let fields = unit_fields(&std::fs::read_to_string(UNIT).unwrap());
        let user = fields["User"].clone();
        let group = fields["Group"].clone();
        assert_eq!(fields["Type"], "notify");
        let runtime = Path::new("/run").join(&fields["RuntimeDirectory"]);
        let state = Path::new("/var/lib").join(&fields["StateDirectory"]);
        for (folder, mode) in [
            (&runtime, &fields["RuntimeDirectoryMode"]),
            (&state, &fields["StateDirectoryMode"]),
        ] {
            std::fs::create_dir_all(folder).unwrap();
            ok(
                "chown",
                &[&format!("{user}:{group}"), &folder.to_string_lossy()],
            );
            let mode = u32::from_str_radix(mode, 8).unwrap();
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let env_file = fields["EnvironmentFile"]
            .trim_start_matches('-')
            .to_string();
        let env = environment(Path::new(&env_file));
        let mut argv: Vec<String> = Vec::new();
        for word in fields["ExecStart"].split_whitespace() {
            match word.strip_prefix('$') {
                Some(name) => argv.extend(env[name].split_whitespace().map(String::from)),
                None => argv.push(word.to_string()),
            }
        }
        let notify_path = dir.join("notify");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o666)).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // systemd names the process the watchdog is for: this one, whose
        // pid the shell keeps through both execs.
        let child = Command::new("sh")
            .args([
                "-c",
                "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$@\"",
                "sh",
            ])
            .arg("setpriv")
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={group}"),
                "--init-groups",
                "--",
            ])
            .args(&argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("NOTIFY_SOCKET", &notify_path)
            // As WatchdogSec=1s would: a ping every half second.
            .env("WATCHDOG_USEC", "1000000")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut service = Service {
            child,
            user,
            notify,
        };
        let said = service.next_notification().unwrap_or_else(|e| {
            let status = service.child.try_wait();
            panic!("no READY=1 from {argv:?}: {e} (process: {status:?})")
        });
        assert_eq!(said, "READY=1");
        assert_eq!(service.next_notification().unwrap(), "WATCHDOG=1");
        assert_eq!(service.next_notification().unwrap(), "WATCHDOG=1");
        service
    }

    /// The next message to systemd's notification socket.
    fn next_notification(&self) -> std::io::Result<String> {
        let mut buf = [0u8; 512];
        let n = self.notify.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    }

    /// SIGTERM, then its exit code.
    fn stop(mut self) -> Option<i32> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let stopping =
            std::iter::from_fn(|| self.next_notification().ok()).find(|said| said != "WATCHDOG=1");
        assert_eq!(stopping.as_deref(), Some("STOPPING=1"));
        let code = self.child.wait().unwrap().code();
        std::mem::forget(self);
        code
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Purges the package when the test ends, however it ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", PACKAGE]);
    }
}

fn uid_of(user: &str) -> u32 {
    let out = ok("id", &["-u", user]);
    out.trim().parse().unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn debian_package_installs_serves_postfix_and_purges() {
    if let Some(why) = missing() {
        return real::skip("the Debian package", &why);
    }
    let deb = PathBuf::from(std::env::var_os("GREYLIST_DEB").unwrap());
    let deb = deb.canonicalize().unwrap();
    let deb = deb.to_str().unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-package");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A machine running systemd would have started the service on install.
    let systemd = Path::new("/run/systemd/system").exists();
    let _ = run("dpkg", &["--purge", PACKAGE]);
    let _purge = Purge;

    // lintian finds no error, and no warning but the one the README names.
    let lint = run("lintian", &["--fail-on", "error", deb]);
    assert!(lint.status.success(), "lintian:\n{}", text(&lint));
    let readme = include_str!("../README.md");
    let said = text(&lint);
    let tags: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .map(|l| l.split_whitespace().nth(2).unwrap_or(l))
        .collect();
    assert_eq!(tags, ["initial-upload-closes-no-bugs"], "{said}");
    assert!(readme.contains("lintian's one warning, `initial-upload-closes-no-bugs`"));

    // apt installs it: the user, its folder, the files where they belong.
    ok("apt-get", &["install", "-y", "-q", deb]);
    if systemd {
        let _ = run("systemctl", &["stop", "greylist-policyd"]);
    }
    let uid = uid_of("greylist");
    let state = std::fs::metadata("/var/lib/greylist").unwrap();
    assert!(state.is_dir() && state.uid() == uid, "{state:?}");
    assert_eq!(state.mode() & 0o7777, 0o750);
    let listed = ok("dpkg", &["-L", PACKAGE]);
    for file in [
        "/usr/sbin/greylist-policyd",
        "/usr/bin/greylistctl",
        "/etc/greylist/whitelist_clients",
        "/etc/greylist/whitelist_clients.local",
        "/etc/default/greylist-policyd",
        UNIT,
        "/usr/share/man/man8/greylist-policyd.8.gz",
        "/usr/share/man/man8/greylistctl.8.gz",
        "/usr/share/doc/greylist/copyright",
        "/usr/share/doc/greylist/changelog.Debian.gz",
    ] {
        assert!(
            listed.lines().any(|l| l == file),
            "{file} not in the package"
        );
        assert!(Path::new(file).exists(), "{file} not installed");
    }
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    for file in [
        "/etc/greylist/whitelist_clients ",
        "/etc/greylist/whitelist_clients.local ",
        "/etc/default/greylist-policyd ",
    ] {
        assert!(
            conffiles.contains(file),
            "{file} is no conffile:\n{conffiles}"
        );
    }
    // The shipped whitelist is the daemon's built-in one.
    let built_in = ok("/usr/sbin/greylist-policyd", &["--show-default-whitelist"]);
    assert_eq!(
        std::fs::read_to_string("/etc/greylist/whitelist_clients").unwrap(),
        built_in
    );
    ok("systemd-analyze", &["verify", UNIT]);
    // The sandbox's score is the README's.
    let security = ok("systemd-analyze", &["security", "--offline=true", UNIT]);
    let score = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for greylist-policyd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no exposure level:\n{security}"));
    assert!(
        readme.contains(&format!("rates it **{score} OK**")),
        "the README does not quote the score {score}"
    );
    for page in ["greylist-policyd", "greylistctl"] {
        let path = format!("/usr/share/man/man8/{page}.8.gz");
        let shown = Command::new("man")
            .args(["-l", &path])
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&shown.stdout);
        assert!(
            shown.contains("SYNOPSIS") && shown.contains(page),
            "{path}:\n{shown}"
        );
    }

    // The unit's own command, as its user: it serves real Postfix through
    // the runtime folder's socket, Postfix running as its own user.
    let service = Service::start(&dir);
    let status = std::fs::read_to_string(format!("/proc/{}/status", service.child.id())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uid_text = uid.to_string();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        [uid_text.as_str(); 4],
        "not running as {}",
        service.user
    );
    let smtp = real::free_port();
    let mx = Postfix::start(&dir, smtp, "unix:/run/greylist/policy.sock");
    let first = text(&swaks(smtp));
    assert!(
        first.contains("450 4.2.0") && first.contains("Greylisted"),
        "{first}\n{}",
        mx.maillog()
    );
    // greylistctl finds the installed daemon's control socket by itself.
    let status = ok("greylistctl", &["--json", "status"]);
    assert!(status.contains("\"entries\": 1"), "{status}");
    // The unit's ExecReload, as its user: the lists are read again, and a
    // list file that cannot be read makes the reload fail (the old lists
    // stay).
    let fields = unit_fields(&std::fs::read_to_string(UNIT).unwrap());
    let reload: Vec<&str> = fields["ExecReload"].split_whitespace().collect();
    let as_user = |argv: &[&str]| {
        let mut args = vec![
            "--reuid=greylist",
            "--regid=greylist",
            "--init-groups",
            "--",
        ];
        args.extend_from_slice(argv);
        run("setpriv", &args)
    };
    let reloaded = as_user(&reload);
    assert!(reloaded.status.success(), "{}", text(&reloaded));
    let list = Path::new("/etc/greylist/whitelist_clients");
    let aside = dir.join("whitelist_clients");
    std::fs::copy(list, &aside).unwrap();
    std::fs::remove_file(list).unwrap();
    std::fs::create_dir(list).unwrap();
    let refused = as_user(&reload);
    std::fs::remove_dir(list).unwrap();
    std::fs::copy(&aside, list).unwrap();
    assert!(
        !refused.status.success(),
        "a reload with an unreadable list file succeeded"
    );
    drop(mx);
    assert_eq!(service.stop(), Some(0));
    let snapshot = Path::new("/var/lib/greylist/greylist.snap");
    assert_eq!(std::fs::metadata(snapshot).unwrap().uid(), uid);

    // Removed: the programs go; the configuration and the state stay.
    ok("dpkg", &["--remove", PACKAGE]);
    assert!(!Path::new("/usr/sbin/greylist-policyd").exists());
    assert!(Path::new("/etc/greylist/whitelist_clients").exists());
    assert!(snapshot.exists());

    // Installed again, it finds the greylist where it was.
    ok("apt-get", &["install", "-y", "-q", deb]);
    if systemd {
        let _ = run("systemctl", &["stop", "greylist-policyd"]);
    }
    let service = Service::start(&dir);
    let status = ok("greylistctl", &["--json", "status"]);
    assert!(
        status.contains("\"entries\": 1"),
        "after reinstalling: {status}"
    );
    assert_eq!(service.stop(), Some(0));

    // Purged: everything but the system user is gone (Debian leaves users).
    ok("dpkg", &["--purge", PACKAGE]);
    for gone in [
        "/etc/greylist",
        "/etc/default/greylist-policyd",
        "/var/lib/greylist",
        UNIT,
    ] {
        wait_for(gone, || !Path::new(gone).exists());
    }
    assert_eq!(uid_of("greylist"), uid);
}
