//! greylist-policyd in postgrey's place (issue 20): side by side with
//! Debian's real postgrey on the same requests, started by Debian's own
//! init script for postgrey, and leaving root for `--user`/`--group`.
//!
//! These need postgrey's Debian package (`.ci/run` installs it and stops
//! its service) and root (postgrey and `--user` change users); elsewhere
//! they skip, saying why.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/real.rs"]
mod real;

use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daemon::Daemon;

const POSTGREY: &str = "/usr/sbin/postgrey";
const T0: i64 = 1_700_000_000;
const HOUR: i64 = 3600;

/// Why a test of this file cannot run here, if it cannot.
fn missing(needs_postgrey: bool) -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (postgrey and --user change users)");
    }
    if needs_postgrey && !Path::new(POSTGREY).exists() {
        return Some("Debian's postgrey package is not installed");
    }
    None
}

/// A user's or group's number, by `id`.
fn id(flag: &str, user: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().unwrap();
    assert!(out.status.success(), "id {flag} {user}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A folder under /tmp (every user can reach it, unlike a checkout in a
/// private home), removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("greylist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A folder inside, owned by `user`.
    fn owned_by(&self, name: &str, user: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(id("-u", user)), Some(id("-g", user))).unwrap();
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process known by its pid file, killed when dropped (a daemon in the
/// background is no child of the test).
struct PidFile(PathBuf);

impl PidFile {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.0).ok()?.trim().parse().ok()
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(pid) = self.pid().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The `Uid:` and `Gid:` lines of a process's status.
fn ids(pid: i32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = |key: &str| {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    (line("Uid:"), line("Gid:"))
}

/// Waits up to 10 s for `done`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection to a policy server on 127.0.0.1:`port`, retried while it
/// starts.
fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(e) if Instant::now() > deadline => panic!("127.0.0.1:{port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A policy request as Postfix sends it at RCPT (with `etrn_domain`, which
/// postgrey reads as "Postfix 2.3 or later"), judged at `now`.
fn request(
    client: &str,
    name: &str,
    sender: &str,
    recipient: &str,
    now: i64,
    instance: &str,
) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         client_address={client}\nclient_name={name}\nreverse_client_name={name}\n\
         helo_name=mail.example\nsender={sender}\nrecipient={recipient}\nrecipient_count=0\n\
         queue_id=\ninstance={instance}\nsize=0\netrn_domain=\nstress=\n\
         policy_test_time={now}\n\n"
    )
}

/// One step of the side-by-side run.
struct Step {
    what: String,
    request: String,
}

/// A request of the side-by-side run: what it tests, the client's address
/// and name, sender, recipient, seconds after T0, Postfix's `instance`
/// (one per message), and an attribute it leaves out ("" for none).
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    i64,
    &'a str,
    &'a str,
);

/// A [`Row`] with the texts the sequence makes.
type OwnedRow<'a> = (
    String,
    &'a str,
    &'a str,
    String,
    String,
    i64,
    String,
    &'a str,
);

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.net";
const CAROL_BATV1: &str = "prvs=0123456789=carol@example.org";
const CAROL_BATV2: &str = "prvs=9876543210=carol@example.org";
const SRS1: &str = "SRS0=HHH1=TT=orig.example=user@forwarder.example";
const SRS2: &str = "SRS0=KKK2=UU=orig.example=user@forwarder.example";
const U: &str = "unknown";

/// Every case the issue names but the two multi-recipient ones, in time
/// order.
#[rustfmt::skip]
const ROWS: &[Row] = &[
    ("new triplet", "192.0.2.1", U, ALICE, BOB, 0, "a1", ""),
    ("early retry", "192.0.2.1", U, ALICE, BOB, 100, "a2", ""),
    ("early retry again", "192.0.2.1", U, ALICE, BOB, 200, "a3", ""),
    ("retry after the delay", "192.0.2.1", U, ALICE, BOB, 301, "a4", ""),
    ("passed, next message", "192.0.2.1", U, ALICE, BOB, 400, "a5", ""),
    ("same /24, another host", "192.0.2.77", U, ALICE, BOB, 410, "a6", ""),
    ("another /24, same sender", "198.51.100.1", U, ALICE, BOB, 420, "a7", ""),
    ("upper case", "192.0.2.1", U, "Alice@Example.ORG", "BOB@EXAMPLE.NET", 430, "a8", ""),
    ("+ext of a passed sender", "192.0.2.1", U, "alice+news@example.org", BOB, 440, "a9", ""),
    ("null sender", "192.0.2.1", U, "", BOB, 500, "n1", ""),
    ("null sender, early", "192.0.2.1", U, "", BOB, 560, "n2", ""),
    ("null sender, retried", "192.0.2.1", U, "", BOB, 800, "n3", ""),
    ("BATV", "192.0.2.1", U, CAROL_BATV1, BOB, 900, "b1", ""),
    ("BATV, new tag, retried", "192.0.2.1", U, CAROL_BATV2, BOB, 1200, "b2", ""),
    ("BATV, plain address", "192.0.2.1", U, "carol@example.org", BOB, 1210, "b3", ""),
    ("VERP digits", "192.0.2.1", U, "bounce-12345@lists.example.com", BOB, 1300, "v1", ""),
    ("VERP digits, other number, retried", "192.0.2.1", U, "bounce-67890@lists.example.com", BOB, 1600, "v2", ""),
    ("SRS", "192.0.2.1", U, SRS1, BOB, 1700, "s1", ""),
    ("SRS, new hash and day, retried", "192.0.2.1", U, SRS2, BOB, 2000, "s2", ""),
    ("IPv6", "2001:db8:1::5", U, ALICE, BOB, 2100, "6a", ""),
    ("IPv6, same /64, retried", "2001:db8:1::99", U, ALICE, BOB, 2400, "6b", ""),
    ("IPv6, another /64", "2001:db8:2::5", U, ALICE, BOB, 2410, "6c", ""),
    ("IPv4-mapped IPv6 of a passed /24", "::ffff:192.0.2.1", U, ALICE, BOB, 2420, "m1", ""),
    ("postmaster@ (recipient whitelist)", "203.0.113.200", U, "x@spam.example", "postmaster@example.net", 2500, "p1", ""),
    ("abuse@ (recipient whitelist)", "203.0.113.200", U, "x@spam.example", "abuse@example.net", 2510, "p2", ""),
    ("whitelisted host name", "209.85.220.41", "mail-sor-f41.google.com", "x@gmail.com", BOB, 2600, "w1", ""),
    ("whitelisted domain, upper case name", "209.85.220.42", "MAIL.GNU.ORG", "x@gnu.org", BOB, 2610, "w2", ""),
    ("regex entry", "24.24.2.57", "ms-smtp-03.rr.com", "x@rr.com", BOB, 2620, "w3", ""),
    ("regex entry, no match", "24.24.2.58", "smtp-03.rr.com", "x@rr.com", BOB, 2630, "w4", ""),
    ("partial-IP entry", "195.235.39.7", U, "x@example.es", BOB, 2640, "w5", ""),
    ("IP entry", "66.216.126.174", U, "x@example.com", BOB, 2650, "w6", ""),
    ("unlisted client", "66.216.126.175", U, "x@example.com", BOB, 2660, "w7", ""),
    ("missing client_name", "192.0.2.1", U, "dave@example.org", BOB, 2700, "x1", "client_name"),
    ("missing sender", "192.0.2.1", U, "", "erin@example.net", 2710, "x2", "sender"),
    ("missing recipient", "192.0.2.1", U, ALICE, "", 2720, "x3", "recipient"),
];

/// The sequence both daemons get, in time order: [`ROWS`], one message to
/// three recipients and its retry (one X-Greylist), then the
/// auto-whitelist: five messages from one client an hour apart, each to two
/// recipients and retried after the delay (one pass counts each hour).
fn steps() -> Vec<Step> {
    let mut rows: Vec<OwnedRow> = ROWS
        .iter()
        .map(|&(what, ip, name, from, to, t, inst, drop)| {
            (
                what.into(),
                ip,
                name,
                from.into(),
                to.into(),
                t,
                inst.into(),
                drop,
            )
        })
        .collect();
    let news = "news@lists.example.com";
    for (when, t, inst) in [
        ("message to 3", 3000, "three-1"),
        ("its retry", 3400, "three-2"),
    ] {
        for i in 1..=3 {
            let (what, to) = (
                format!("{when}, recipient {i}"),
                format!("r{i}@example.net"),
            );
            rows.push((
                what,
                "198.51.100.20",
                U,
                news.into(),
                to,
                t,
                inst.into(),
                "",
            ));
        }
    }
    let client = "203.0.113.5";
    for hour in 0..5 {
        let (t, from) = (2 * HOUR + hour * HOUR, format!("sender{hour}@example.com"));
        for (retry, inst) in [
            ("", format!("awl-{hour}")),
            (" retried", format!("awl-{hour}b")),
        ] {
            for (second, to) in [
                ("", "u1@example.net"),
                (", second recipient", "u2@example.net"),
            ] {
                let what = format!("awl: message {}{retry}{second}", hour + 1);
                let at = t + if retry.is_empty() { 0 } else { 300 };
                rows.push((
                    what,
                    client,
                    U,
                    from.clone(),
                    to.into(),
                    at,
                    inst.clone(),
                    "",
                ));
            }
        }
        if hour == 3 {
            let what = "awl: not yet (4 passes)".to_string();
            let (from, to) = ("early@example.com".into(), "u1@example.net".into());
            rows.push((what, client, U, from, to, t + 310, "awl-x".into(), ""));
        }
    }
    let (after, from, to) = (7 * HOUR, "new@example.com", "u9@example.net");
    for (what, ip, t) in [
        ("awl: whitelisted client, new sender", client, after),
        ("awl: another host of the /24", "203.0.113.9", after + 10),
    ] {
        rows.push((
            what.into(),
            ip,
            U,
            from.into(),
            to.into(),
            t,
            format!("awl-{t}"),
            "",
        ));
    }
    rows.into_iter()
        .enumerate()
        .map(|(n, (what, ip, name, from, to, t, inst, drop))| {
            let full = request(ip, name, &from, &to, T0 + t, &format!("msg-{inst}"));
            let request = full
                .lines()
                .filter(|l| drop.is_empty() || !l.starts_with(&format!("{drop}=")))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                + "\n";
            Step {
                what: format!("{:02} {what}", n + 1),
                request,
            }
        })
        .collect()
}

/// Answers that differ on purpose (README, "postgrey side by side"): the
/// step, postgrey's answer and ours. Anything else must be equal.
const DIFFERENCES: &[(&str, &str, &str)] = &[
    // postgrey keys an SRS address by its hash and timestamp, which a
    // forwarder renews daily: a retry after midnight (or from another
    // forwarder host) is a new triplet. Here SRS0/SRS1 addresses are keyed
    // by the original sender they carry.
    (
        "SRS, new hash and day, retried",
        DEFER,
        "PREPEND X-Greylist: delayed 300 seconds at mx.example.net",
    ),
    // postgrey keys an IPv4-mapped IPv6 address (a dual-stack socket's view
    // of an IPv4 client) as IPv6; here it is the IPv4 address it stands
    // for, so its network's passed triplets count.
    ("IPv4-mapped IPv6 of a passed /24", DEFER, "DUNNO"),
    // postgrey lets a request with an attribute missing through (DUNNO,
    // fail open); here what can be judged without it is judged (a client
    // name is not needed; no sender is the null sender) and a request
    // without a recipient is greylisted (4.3.0: fail closed).
    ("missing client_name", "DUNNO", DEFER),
    ("missing sender", "DUNNO", DEFER),
    (
        "missing recipient",
        "DUNNO",
        "DEFER_IF_PERMIT 4.3.0 Greylisting cannot judge this request, please try again later",
    ),
    // postgrey's auto-whitelist is per client address; here it is per
    // client network (the /24 the triplets are keyed by), so the other
    // hosts of a network that earned it pass too.
    ("awl: another host of the /24", DEFER, "DUNNO"),
];

/// The greylisting answer both give (postgrey's default text).
const DEFER: &str =
    "DEFER_IF_PERMIT 4.2.0 Greylisted, see http://postgrey.schweikert.ch/help/example.net.html";

/// Runs the steps against a policy server; the answers.
fn run(port: u16, steps: &[Step]) -> Vec<String> {
    let mut s = connect(port);
    steps
        .iter()
        .map(|step| daemon::ask(&mut s, &step.request))
        .collect()
}

/// The same requests, from Debian's list files, to Debian's postgrey and to
/// this daemon: every answer equal, or a difference listed above (and in
/// the README) with the reason ours is better.
#[test]
fn answers_as_postgrey_does() {
    if let Some(why) = missing(true) {
        return real::skip("postgrey side by side", why);
    }
    let tmp = TempDir::new("side-by-side");
    let db = tmp.owned_by("postgrey-db", "postgrey");
    let port = real::free_port();
    let lists = [
        "--whitelist-clients=/etc/postgrey/whitelist_clients",
        "--whitelist-recipients=/etc/postgrey/whitelist_recipients",
    ];
    let common = [
        "--hostname=mx.example.net",
        "--x-greylist-header=X-Greylist: delayed %t seconds at %h",
    ];
    let mut postgrey = Command::new(POSTGREY)
        .arg(format!("--inet=127.0.0.1:{port}"))
        .arg(format!("--dbdir={}", db.display()))
        .args(lists)
        .args(common)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _postgrey = Kill(&mut postgrey);
    let ours = Daemon::start(
        "side-by-side",
        &[
            lists[0],
            lists[1],
            common[0],
            common[1],
            "--greylist-text=Greylisted, see http://postgrey.schweikert.ch/help/%r.html",
            "--allow-test-time",
        ],
    );
    let steps = steps();
    assert!(steps.len() >= 50, "{} steps", steps.len());
    let theirs = run(port, &steps);
    let our_port = ours.addr.as_deref().unwrap().rsplit(':').next().unwrap();
    let mine = run(our_port.parse().unwrap(), &steps);
    let mut report = String::new();
    let mut unexpected = 0;
    for ((step, theirs), ours) in steps.iter().zip(&theirs).zip(&mine) {
        let listed = DIFFERENCES.iter().find(|d| step.what.ends_with(d.0));
        let fine = match listed {
            Some((_, t, o)) => theirs == t && ours == o,
            None => theirs == ours,
        };
        unexpected += usize::from(!fine);
        report.push_str(&format!(
            "{} {}\n    postgrey: {theirs}\n    ours:     {ours}\n",
            if fine { "  " } else { "!!" },
            step.what
        ));
    }
    println!("{report}");
    assert_eq!(
        unexpected, 0,
        "answers that differ unexpectedly (!!):\n{report}"
    );
}

/// Debian's init script for postgrey, pointed at this daemon, with the
/// /etc/default/postgrey line the README gives (its port made free, its
/// folders this test's):
/// `start` runs `--pidfile=... --daemonize --inet=... ""` through
/// start-stop-daemon and returns once it serves, as user postgrey;
/// `status`, `reload` (SIGHUP) and `stop` work on it.
#[test]
fn debians_init_script_for_postgrey_runs_it() {
    let script = Path::new("/etc/init.d/postgrey");
    if let Some(why) = missing(true) {
        return real::skip("postgrey's init script", why);
    }
    if !script.exists() || !real::runs("start-stop-daemon", "--version") {
        return real::skip(
            "postgrey's init script",
            "no /etc/init.d/postgrey or start-stop-daemon",
        );
    }
    let tmp = TempDir::new("init-script");
    let db = tmp.owned_by("db", "postgrey");
    let pidfile = PidFile(tmp.0.join("postgrey.pid"));
    let log = UnixDatagram::bind(tmp.0.join("log")).unwrap();
    log.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::fs::set_permissions(
        tmp.0.join("log"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let port = real::free_port();
    // The README's /etc/default/postgrey, as written there, but for the
    // port, the folder and the log (a datagram socket of this test's).
    let readme = include_str!("../README.md");
    let start = readme
        .find("# /etc/default/postgrey, for greylist-policyd")
        .expect("the README's /etc/default/postgrey");
    let snippet = &readme[start..start + readme[start..].find("```").unwrap()];
    assert!(snippet.contains("--inet=10023 ") && snippet.contains("--dbdir=/var/lib/postgrey"));
    let defaults = tmp.0.join("default");
    let text = snippet
        .replace("--inet=10023 ", &format!("--inet=127.0.0.1:{port} "))
        .replace(
            "--dbdir=/var/lib/postgrey",
            &format!("--dbdir={}", db.display()),
        );
    let log_to = format!("--syslog --syslog-socket={}/log", tmp.0.display());
    std::fs::write(
        &defaults,
        format!("{text}POSTGREY_OPTS=\"$POSTGREY_OPTS {log_to}\"\n"),
    )
    .unwrap();
    let text = std::fs::read_to_string(script).unwrap();
    let bin = env!("CARGO_BIN_EXE_greylist-policyd");
    let mut ours = text.clone();
    for (from, to) in [
        ("DAEMON=/usr/sbin/postgrey", format!("DAEMON={bin}")),
        (
            "PIDFILE=/var/run/$DAEMON_NAME.pid",
            format!("PIDFILE={}", pidfile.0.display()),
        ),
        ("/etc/default/$DAEMON_NAME", defaults.display().to_string()),
    ] {
        assert!(
            ours.contains(from),
            "Debian's init script changed: no {from:?}"
        );
        ours = ours.replace(from, &to);
    }
    assert!(ours.contains("POSTGREY_OPTS=\"--pidfile=$PIDFILE --daemonize $POSTGREY_OPTS\""));
    let copy = tmp.0.join("postgrey.init");
    std::fs::write(&copy, ours).unwrap();
    let init = |action: &str| {
        let out = Command::new("sh")
            .arg(&copy)
            .arg(action)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), said)
    };
    let lines = || {
        let mut buf = [0u8; 8192];
        let n = log.recv(&mut buf).expect("a syslog line");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let wait_for_line = |text: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if lines().contains(text) {
                return;
            }
        }
        panic!("no syslog line with {text:?}");
    };

    let (code, said) = init("start");
    assert_eq!(code, Some(0), "start: {said}");
    // start returned once the daemon served: its pid file is there, it
    // answers, and it runs as postgrey.
    let pid = pidfile.pid().expect("a pid file");
    let (uid, gid) = ids(pid);
    let (pu, pg) = (id("-u", "postgrey"), id("-g", "postgrey"));
    assert_eq!(uid, format!("{pu} {pu} {pu} {pu}"));
    assert_eq!(gid, format!("{pg} {pg} {pg} {pg}"));
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, Path::new(bin).canonicalize().unwrap());
    let mut s = connect(port);
    let first = request(
        "192.0.2.1",
        "unknown",
        "a@example.org",
        "b@example.net",
        T0,
        "i1",
    );
    assert!(daemon::ask(&mut s, &first).starts_with("DEFER_IF_PERMIT 4.2.0 "));
    // Debian's list files, read as user postgrey.
    let abuse = request(
        "192.0.2.1",
        "unknown",
        "a@example.org",
        "abuse@example.net",
        T0,
        "i2",
    );
    assert_eq!(daemon::ask(&mut s, &abuse), "DUNNO");
    drop(s);
    wait_for_line("running as user postgrey");
    assert_eq!(init("status").0, Some(0), "status");
    // A second start finds it running and starts nothing (the script
    // then exits 1 under its `set -e`, as it does for postgrey).
    init("start");
    assert_eq!(pidfile.pid(), Some(pid));
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    assert_eq!(init("reload").0, Some(0), "reload");
    wait_for_line("SIGHUP: list files reloaded");

    let (code, said) = init("stop");
    assert_eq!(code, Some(0), "stop: {said}");
    wait_until("the daemon to exit", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    // It saved its snapshot in --dbdir, as the user it ran as.
    let snap = db.join("greylist-policyd.snap");
    assert_eq!(std::fs::metadata(&snap).unwrap().uid(), pu);
    assert_ne!(init("status").0, Some(0), "status after stop");
}

/// `--user`/`--group`: root is left for good once the socket is bound;
/// the snapshot is then opened as that user, so a folder only root may
/// write is an error at start that names the user.
#[test]
fn user_and_group_leave_root_after_binding() {
    if let Some(why) = missing(false) {
        return real::skip("--user", why);
    }
    let tmp = TempDir::new("user");
    let (code, log) = daemon::run_to_exit(&tmp.0, &["--user", "nobody", "--group", "nogroup"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("Permission denied") && log.contains("(running as user nobody (uid "),
        "{log}"
    );
    let (code, log) = daemon::run_to_exit(&tmp.0, &["--user", "no-such-user-here"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("--user no-such-user-here: no such user"),
        "{log}"
    );

    let dir = tmp.owned_by("state", "nobody");
    let d = Daemon::start_in(&dir, &["--user", "nobody", "--group", "nogroup"]);
    let (u, g) = (id("-u", "nobody"), id("-g", "nobody"));
    assert_eq!(
        ids(d.pid() as i32),
        (format!("{u} {u} {u} {u}"), format!("{g} {g} {g} {g}"))
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    assert!(status.contains(&format!("\nGroups:\t{g} \n")), "{status}");
    let mut s = d.connect();
    assert!(daemon::ask(
        &mut s,
        &daemon::rcpt_on_clock("192.0.2.1", "a@x.org", "b@y.net")
    )
    .starts_with("DEFER_IF_PERMIT"));
    // Root may still use the control socket, which is the user's.
    let control = d.control();
    assert_eq!(std::fs::metadata(&control).unwrap().uid(), u);
    assert_eq!(d.ctl(&["save"])["entries"], 1, "save");
    assert_eq!(std::fs::metadata(dir.join("g.snap")).unwrap().uid(), u);
}

/// `--daemonize` reports a start-up error on the terminal that ran it and
/// exits 1; it leaves nothing running.
#[test]
fn daemonize_reports_start_up_errors() {
    let dir = daemon::scratch("daemonize-error");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_greylist-policyd"))
        .args([
            "--daemonize",
            "--inet",
            &format!("127.0.0.1:{port}"),
            "--no-syslog",
        ])
        .arg("--pidfile")
        .arg(dir.join("p.pid"))
        .arg("--snapshot")
        .arg(dir.join("g.snap"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Address already in use"), "{err}");
    assert!(
        err.contains("--daemonize: the daemon did not start"),
        "{err}"
    );
    assert!(!dir.join("p.pid").exists() || std::fs::read_to_string(dir.join("p.pid")).is_err());
}
