//! The operator's surface of a running greylist-policyd (issue 19):
//! greylistctl over the control socket, lost mail named within seconds,
//! run-time whitelist entries across a restart, the socket's privacy, and
//! `/metrics` read by a real Prometheus text parser, and `/health`. Real
//! processes on loopback.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/real.rs"]
mod real;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use daemon::{ask, rcpt, Daemon};
use serde_json::Value;

const T0: i64 = 1_700_000_000;

/// greylistctl against the daemon in `dir`.
fn ctl_in(dir: &Path, args: &[&str]) -> Output {
    daemon::ctl_at(&dir.join("g.snap.ctl"), args)
}

/// greylistctl --json, which must succeed: its answer.
fn json(dir: &Path, args: &[&str]) -> Value {
    daemon::ctl_json_at(&dir.join("g.snap.ctl"), args)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exchange_2003_lost_mail_is_named_within_seconds() {
    let dir = daemon::scratch("ctl-lost");
    let d = Daemon::start_in(
        &dir,
        &["--delay", "2", "--lost-after", "3", "--sweep-interval", "1"],
    );
    let mut s = d.connect();
    // Exchange 2003 SP2: the first attempt and a retry within the delay,
    // then silence.
    let request = daemon::rcpt_on_clock("192.0.2.10", "alice@corp.example", "bob@example.net");
    assert!(ask(&mut s, &request).starts_with("DEFER_IF_PERMIT"));
    assert!(ask(&mut s, &request).starts_with("DEFER_IF_PERMIT"));
    // A sender whose retry passed is not lost.
    let good = daemon::rcpt_on_clock("198.51.100.5", "carol@ok.example", "bob@example.net");
    ask(&mut s, &good);
    std::thread::sleep(Duration::from_millis(2100));
    assert!(ask(&mut s, &good).starts_with("PREPEND X-Greylist"));
    let rows = d.wait_for_lost_mail();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["network"], "192.0.2.0/24");
    assert_eq!(rows[0]["count"], 1);
    let sample = &rows[0]["samples"][0];
    assert_eq!(
        (&sample["from"], &sample["to"], &sample["client"]),
        (
            &Value::from("alice@corp.example"),
            &Value::from("bob@example.net"),
            &Value::from("192.0.2.10")
        )
    );
    d.wait_for_log(
        "action=lost-mail client=192.0.2.0/24 from=<alice@corp.example> to=<bob@example.net> \
         early_retries=1",
    );
    // The table for people names them too.
    let (table, _) = text(&ctl_in(&dir, &["lost-mail"]));
    assert!(table.starts_with("NETWORK"), "{table}");
    assert!(
        table.contains("192.0.2.0/24  1")
            && table.contains("<alice@corp.example> -> <bob@example.net>"),
        "{table}"
    );
    let client = json(&dir, &["client", "192.0.2.77"]);
    assert_eq!(client["lost_mail"], 1);
}

#[test]
fn every_subcommand_acts_on_the_next_check() {
    let dir = daemon::scratch("ctl-commands");
    let files = dir.join("whitelist_clients");
    std::fs::write(&files, "# the operator's file\n203.0.113.0/24\n").unwrap();
    let traps = dir.join("traps");
    std::fs::write(&traps, "trap@example.net\n").unwrap();
    let args = [
        "--allow-test-time",
        "--whitelist-clients",
        files.to_str().unwrap(),
        "--trap-recipients",
        traps.to_str().unwrap(),
    ];
    let mut d = Daemon::start_in(&dir, &args);
    let mut s = d.connect();
    // Judged by the daemon's clock, which its commands read too.
    let check = |s: &mut TcpStream, ip: &str, from: &str, to: &str| {
        ask(s, &daemon::rcpt_on_clock(ip, from, to))
    };
    let t = ("192.0.2.1", "a@x.example", "b@y.example");

    // status
    assert!(check(&mut s, t.0, t.1, t.2).starts_with("DEFER_IF_PERMIT"));
    let st = json(&dir, &["status"]);
    assert_eq!(
        (st["entries"].as_u64(), st["max_entries"].as_u64()),
        (Some(1), Some(4_000_000))
    );
    assert_eq!(st["by_reason"]["new"], 1);
    assert_eq!(st["connections"]["open"], 1);
    assert_eq!(st["health"], "ok");
    assert!(st["store"].is_null());
    let (people, _) = text(&ctl_in(&dir, &["status"]));
    assert!(
        people.contains("entries:") && people.contains("1 of 4000000"),
        "{people}"
    );

    // client
    let c = json(&dir, &["client", "192.0.2.200"]);
    assert_eq!(
        (c["network"].as_str(), c["pending"].as_u64()),
        (Some("192.0.2.0/24"), Some(1))
    );

    // release: the next check passes at once.
    assert_eq!(json(&dir, &["release", t.0, t.1, t.2])["released"], 1);
    assert_eq!(check(&mut s, t.0, t.1, t.2), "DUNNO");
    // forget: the next check is new again.
    assert_eq!(json(&dir, &["forget", t.0, t.1, t.2])["forgotten"], true);
    assert!(check(&mut s, t.0, t.1, t.2).contains("try again in 300 seconds"));
    // release-client lifts a trap's block.
    let blocked = check(&mut s, "198.51.100.9", "s@spam.example", "trap@example.net");
    assert!(blocked.contains("blocked"), "{blocked}");
    let again = check(&mut s, "198.51.100.9", "ok@ham.example", "u@y.example");
    assert!(again.contains("blocked"), "{again}");
    json(&dir, &["release-client", "198.51.100.1"]);
    let after = check(&mut s, "198.51.100.9", "ok@ham.example", "u@y.example");
    assert!(after.contains("Greylisted"), "{after}");

    // Run-time whitelist entries: at once, listed with their origin.
    let w = ("192.0.2.150", "z@w.example", "u@y.example");
    assert!(check(&mut s, w.0, w.1, w.2).contains("Greylisted"));
    assert_eq!(
        json(&dir, &["whitelist", "add", "clients", "192.0.2.128/25"])["changed"],
        true
    );
    assert_eq!(
        json(
            &dir,
            &["whitelist", "add", "senders", "friend@partner.example"]
        )["changed"],
        true
    );
    assert_eq!(check(&mut s, w.0, w.1, w.2), "DUNNO");
    let rows = json(&dir, &["whitelist", "list"]);
    let listed: Vec<(String, String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["list"].as_str().unwrap().into(),
                r["entry"].as_str().unwrap().into(),
                r["origin"].as_str().unwrap().into(),
            )
        })
        .collect();
    let file = files.display().to_string();
    assert_eq!(
        listed,
        [
            ("clients".into(), "203.0.113.0/24".into(), file.clone()),
            ("clients".into(), "192.0.2.128/25".into(), "run time".into()),
            (
                "senders".into(),
                "friend@partner.example".into(),
                "run time".into()
            ),
        ]
    );
    // A bad entry is refused and changes nothing.
    let bad = ctl_in(&dir, &["whitelist", "add", "clients", "not/a/network"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).1.contains("greylistctl:"), "{:?}", text(&bad));
    // The operator's file is never rewritten.
    assert_eq!(
        std::fs::read_to_string(&files).unwrap(),
        "# the operator's file\n203.0.113.0/24\n"
    );

    // reload reads the files again.
    std::fs::write(&files, "203.0.113.0/24\n100.64.0.0/10\n").unwrap();
    assert!(check(&mut s, "100.64.1.1", "a@b.example", "c@d.example").contains("Greylisted"));
    let counts = json(&dir, &["reload"]);
    assert_eq!(counts["clients"], 3, "{counts}");
    assert_eq!(
        check(&mut s, "100.64.1.1", "a@b.example", "c@d.example"),
        "DUNNO"
    );

    // save writes the snapshot now.
    let saved = json(&dir, &["save"]);
    assert!(saved["entries"].as_u64().unwrap() >= 1);
    assert!(dir.join("g.snap").exists());
    assert_eq!(json(&dir, &["status"])["snapshot"]["saves"], 1);

    // Run-time entries survive a restart; a removed one is gone.
    drop(s);
    assert_eq!(d.terminate(), Some(0));
    let d = d.restart();
    let mut s = d.connect();
    assert_eq!(check(&mut s, w.0, w.1, w.2), "DUNNO");
    assert_eq!(
        json(&dir, &["whitelist", "remove", "clients", "192.0.2.128/25"])["changed"],
        true
    );
    assert_eq!(
        json(&dir, &["whitelist", "remove", "clients", "192.0.2.128/25"])["changed"],
        false
    );
    assert!(check(&mut s, w.0, w.1, w.2).contains("try again"));
    let kept = std::fs::read_to_string(dir.join("g.snap.whitelist")).unwrap();
    assert!(
        kept.contains("senders friend@partner.example") && !kept.contains("192.0.2.128"),
        "{kept}"
    );
    d.wait_for_log("control: whitelist remove clients 192.0.2.128/25");
}

/// Review of issue 19: a whitelist change reloaded every list, so a broken
/// file of another kind failed it half-way: the entry live but not kept.
/// (A file that cannot be read: a folder where it was. A bad line would
/// only be left out.)
#[test]
fn a_whitelist_change_touches_its_own_list_only() {
    let dir = daemon::scratch("ctl-one-list");
    let recipients = dir.join("whitelist_recipients");
    std::fs::write(&recipients, "postmaster@\n").unwrap();
    let d = Daemon::start_in(
        &dir,
        &["--whitelist-recipients", recipients.to_str().unwrap()],
    );
    std::fs::remove_file(&recipients).unwrap();
    std::fs::create_dir(&recipients).unwrap();
    assert_eq!(
        json(&dir, &["whitelist", "add", "clients", "192.0.2.0/24"])["changed"],
        true
    );
    let mut s = d.connect();
    let whitelisted = daemon::rcpt_on_clock("192.0.2.5", "a@x.example", "b@y.example");
    assert_eq!(ask(&mut s, &whitelisted), "DUNNO");
    let kept = std::fs::read_to_string(dir.join("g.snap.whitelist")).unwrap();
    assert!(kept.contains("clients 192.0.2.0/24"), "{kept}");
    // The recipients list the daemon runs with is still the good one.
    let postmaster = daemon::rcpt_on_clock("198.51.100.1", "a@x.example", "postmaster@y.example");
    assert_eq!(ask(&mut s, &postmaster), "DUNNO");
    // A reload says what is wrong, and keeps that kind's old list.
    let out = ctl_in(&dir, &["reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("recipients list"), "{:?}", text(&out));
    assert_eq!(ask(&mut s, &postmaster), "DUNNO");
}

#[test]
fn the_control_socket_is_the_daemons_users_alone() {
    let dir = daemon::scratch("ctl-private");
    let d = Daemon::start_in(&dir, &[]);
    let socket = dir.join("g.snap.ctl");
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    if !rustix::process::geteuid().is_root() {
        real::skip(
            "the_control_socket_is_the_daemons_users_alone",
            "refusing another user needs root to run greylistctl as nobody",
        );
        return;
    }
    // The folder must be reachable for nobody to reach the socket at all.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_greylistctl"))
            .arg("--control")
            .arg(&socket)
            .arg("status")
            .output()
            .unwrap()
    };
    let refused = |says: &str| {
        let out = as_nobody();
        assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
        assert!(text(&out).1.contains(says), "{:?}", text(&out));
    };
    // The file mode keeps another user out...
    refused("permission denied");
    // ...and so does the daemon, by the peer's credentials, if the mode
    // were opened.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    refused("refused: uid 65534");
    d.wait_for_log("control: refused a connection: uid 65534");
}

#[test]
fn greylistctl_says_when_the_daemon_is_not_running() {
    let dir = daemon::scratch("ctl-absent");
    let out = ctl_in(&dir, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = text(&out);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("greylist-policyd is not running"),
        "{stderr}"
    );
    // A stale socket (the daemon was killed): nobody listens.
    let mut d = Daemon::start_in(&dir, &[]);
    d.signal("KILL");
    let _ = d.terminate();
    let (_, stderr) = text(&ctl_in(&dir, &["status"]));
    assert!(stderr.contains("nobody listens"), "{stderr}");
    // A control path no unix socket can have is refused at start, before
    // the snapshot is touched.
    let long = dir.join("x".repeat(120));
    let (code, log) = daemon::run_to_exit(&dir, &["--control", long.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("longer than a unix socket path may be"),
        "{log}"
    );
    // Bad usage is clap's error (exit 2), not a request.
    let out = ctl_in(&dir, &["whitelist", "add", "nosuchlist", "x"]);
    assert_eq!(out.status.code(), Some(2));
}

fn get(addr: &str, path: &str) -> (u16, String) {
    daemon::http(addr, "GET", path)
}

fn metrics_addr(d: &Daemon) -> String {
    d.metrics_addr()
}

/// A sample: its name, its labels, its value.
type Sample = (String, Vec<(String, String)>, f64);

/// The samples of an OpenMetrics text, as the Python prometheus_client
/// parser reads them: `name{labels} value` lines, sorted; `None` (with the
/// reason recorded) when the parser is not installed outside CI.
fn parse_metrics(text: &str) -> Option<Vec<Sample>> {
    const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, sorted(s.labels.items()), s.value])
print(json.dumps(out))
"#;
    if !real::runs("python3", "--version")
        || Command::new("python3")
            .args(["-c", "import prometheus_client"])
            .status()
            .map_or(true, |s| !s.success())
    {
        real::skip(
            "metrics_are_read_by_a_real_prometheus_parser",
            "python3 with prometheus_client is needed (pip install prometheus_client)",
        );
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Sample> = serde_json::from_slice(&out.stdout).unwrap();
    Some(samples)
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.2)
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

#[test]
fn metrics_are_read_by_a_real_prometheus_parser() {
    let dir = daemon::scratch("ctl-metrics");
    let d = Daemon::start_in(&dir, &["--allow-test-time", "--metrics", "127.0.0.1:0"]);
    let addr = metrics_addr(&d);
    let mut s = d.connect();
    let mut at = |i: u32, now: i64| {
        ask(
            &mut s,
            &rcpt("192.0.2.1", "a@x.example", &format!("r{i}@y.example"), now),
        );
    };
    for i in 0..7 {
        at(i, T0);
    }
    for i in 0..3 {
        at(i, T0 + 10);
        at(i, T0 + 400);
    }
    // A request the engine cannot judge, and one at another stage.
    ask(
        &mut s,
        "request=smtpd_access_policy\nprotocol_state=RCPT\n\n",
    );
    ask(
        &mut s,
        "request=smtpd_access_policy\nprotocol_state=DATA\n\n",
    );
    let (code, body) = get(&addr, "/metrics");
    assert_eq!(code, 200);
    let Some(samples) = parse_metrics(&body) else {
        return;
    };
    let checks = |action, reason| {
        sample(
            &samples,
            "greylist_checks_total",
            &[("action", action), ("reason", reason)],
        )
    };
    assert_eq!(checks("defer", "new"), 7.0);
    assert_eq!(checks("defer", "early-retry"), 3.0);
    assert_eq!(checks("pass", "retried"), 3.0);
    assert_eq!(checks("defer", "cannot-judge"), 1.0);
    assert_eq!(checks("dunno", "not-rcpt"), 1.0);
    assert_eq!(
        sample(&samples, "greylist_request_duration_seconds_count", &[]),
        15.0
    );
    assert_eq!(sample(&samples, "greylist_entries", &[]), 7.0);
    assert_eq!(sample(&samples, "greylist_entries_max", &[]), 4_000_000.0);
    assert_eq!(sample(&samples, "greylist_connections_open", &[]), 1.0);
    assert_eq!(sample(&samples, "greylist_snapshot_saves_total", &[]), 0.0);
    assert_eq!(sample(&samples, "greylist_healthy", &[]), 1.0);
    let (code, body) = get(&addr, "/nothing");
    assert_eq!((code, body.as_str()), (404, "/metrics or /health\n"));
}

/// An HTTP client that trickles its request in is cut off when the whole
/// request has not arrived within 3 s, however often it sends a byte.
#[test]
fn a_slow_metrics_client_is_cut_off() {
    let dir = daemon::scratch("ctl-slow");
    let d = Daemon::start_in(&dir, &["--metrics", "127.0.0.1:0"]);
    let mut s = TcpStream::connect(metrics_addr(&d)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    for b in b"GET /metrics HTTP/1.1\r\nX-Slow: yes".iter().cycle() {
        if s.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(15) {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(500));
        let mut probe = [0u8; 1];
        s.set_nonblocking(true).unwrap();
        let closed = s.peek(&mut probe).is_ok();
        s.set_nonblocking(false).unwrap();
        if closed {
            break;
        }
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("did not arrive within 3 s"),
        "after {sent} bytes: {answer:?}"
    );
    // The daemon serves others meanwhile and after.
    assert_eq!(get(&metrics_addr(&d), "/health").0, 200);
}

#[test]
fn health_says_what_is_wrong() {
    let dir = daemon::scratch("ctl-health");
    let d = Daemon::start_in(&dir, &["--metrics", "127.0.0.1:0"]);
    let addr = metrics_addr(&d);
    assert_eq!(get(&addr, "/health"), (200, "ok\n".into()));
    // A load balancer's probe: HEAD, with a query.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"HEAD /health?probe=lb HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "no body: {answer:?}");
    // A snapshot save that fails: a folder where the file goes.
    std::fs::create_dir_all(dir.join("g.snap").join("in-the-way")).unwrap();
    let out = ctl_in(&dir, &["save"]);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let (code, body) = get(&addr, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("unhealthy: the latest snapshot save failed"),
        "{body}"
    );
    assert!(json(&dir, &["status"])["health"]
        .as_str()
        .unwrap()
        .contains("snapshot save failed"));
    std::fs::remove_dir_all(dir.join("g.snap")).unwrap();
    json(&dir, &["save"]);
    assert_eq!(get(&addr, "/health"), (200, "ok\n".into()));

    // Redis unreachable while --redis-fail defer holds mail back.
    let secret = dir.join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = real::free_port();
    let redis_dir = daemon::scratch("ctl-health-redis");
    let d = Daemon::start_in(
        &redis_dir,
        &[
            "--metrics",
            "127.0.0.1:0",
            "--redis",
            &format!("redis://127.0.0.1:{port}/0"),
            "--redis-secret",
            secret.to_str().unwrap(),
            "--redis-fail",
            "defer",
        ],
    );
    let addr = metrics_addr(&d);
    let mut s = d.connect();
    ask(
        &mut s,
        &daemon::rcpt_on_clock("192.0.2.1", "a@x.example", "b@y.example"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = get(&addr, "/health");
        if code == 503 {
            assert!(
                body.contains("Redis is unavailable") && body.contains("--redis-fail is defer"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "still {code} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
