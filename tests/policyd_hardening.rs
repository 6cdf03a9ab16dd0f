//! greylist-policyd against a hostile client or host (issue 15): connection
//! slots held by idle or slow clients, the descriptor limit, a log that
//! cannot keep up with a flood, files planted where the daemon starts, and
//! saves that fail while it runs. Each test failed on the daemon before
//! the fix it names.

#[path = "support/daemon.rs"]
mod daemon;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use daemon::{answers, rcpt, run_to_exit, scratch, Daemon};

const T0: i64 = 1_700_000_000;

fn defer_first(d: &Daemon, ip: &str) {
    let mut s = d.connect();
    s.write_all(rcpt(ip, "a@x.org", "b@y.net", T0).as_bytes())
        .unwrap();
    let answer = answers(&mut s, 1).remove(0);
    assert!(answer.starts_with("DEFER_IF_PERMIT 4.2.0"), "{answer}");
}

/// Item 9: 256 silent connections locked Postfix out (it got EOF and
/// tempfailed all mail). The idlest is closed to admit a new client.
#[test]
fn three_hundred_silent_connections_do_not_lock_out_a_client() {
    let d = Daemon::start("silent-flood", &["--allow-test-time"]);
    let silent: Vec<_> = (0..300).map(|_| d.connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..5 {
        defer_first(&d, &format!("192.0.{i}.1"));
    }
    // The first silent ones made room; the newest are still open.
    let mut buf = [0u8; 1];
    let mut first = &silent[0];
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        first.read(&mut buf).unwrap_or(1),
        0,
        "the idlest was closed"
    );
    d.wait_for_log("(idle for ");
    drop(silent);
}

/// Item 9: the idle timeout was per read, so a client sending one byte a
/// second never timed out and 260 of them held every slot. A request must
/// now arrive whole within --request-timeout.
#[test]
fn a_slow_client_is_dropped_at_its_request_deadline() {
    let d = Daemon::start(
        "slow",
        &[
            "--allow-test-time",
            "--request-timeout",
            "1",
            "--max-connections",
            "4",
        ],
    );
    let started = Instant::now();
    let slow: Vec<_> = (0..4).map(|_| d.connect()).collect();
    let trickle: Vec<_> = slow
        .iter()
        .map(|s| {
            let mut s = s.try_clone().unwrap();
            std::thread::spawn(move || {
                // A byte every 100 ms: the whole request would take 20 s.
                for byte in rcpt("192.0.2.1", "a@x.org", "b@y.net", T0).bytes() {
                    if s.write_all(&[byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    // All four are mid-request: a fifth cannot take one of their slots.
    let mut extra = d.connect();
    let mut buf = [0u8; 8];
    assert_eq!(extra.read(&mut buf).unwrap_or(0), 0, "refused");
    d.wait_for_log("all 4 connections are in the middle of a request");
    // Each slow one is closed at its deadline, about 1 s after its first byte.
    for s in &slow {
        let mut s = s;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    }
    let dropped_after = started.elapsed();
    eprintln!("4 slow clients (a byte per 100 ms) dropped after {dropped_after:?}");
    assert!(dropped_after < Duration::from_secs(3), "{dropped_after:?}");
    d.wait_for_log("a request took longer than 1 s");
    // Their slots are free again.
    defer_first(&d, "198.51.100.1");
    d.wait_for_log("refusing connections: over after");
    for t in trickle {
        t.join().unwrap();
    }
}

/// Item 8: the bound must sit below the descriptor limit, or accept fails
/// with EMFILE (which used to spin and log each failure).
#[test]
fn the_connection_bound_is_clamped_to_the_descriptor_limit() {
    let dir = scratch("nofile");
    let d = Daemon::start_with_shell(&dir, "ulimit -n 64;", &["--allow-test-time"]);
    d.wait_for_log("--max-connections 256 is more than RLIMIT_NOFILE (64) allows: using 32");
    d.wait_for_log("at most 32 connections");
    let open: Vec<_> = (0..100).map(|_| d.connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    defer_first(&d, "192.0.2.1");
    drop(open);
    let log = d.log_text();
    assert!(!log.contains("accept"), "no accept failures:\n{log}");
}

/// Item 7: the log queue was unbounded: a flood while stderr was slow took
/// the daemon from 3 MB to 570 MB, and a SIGTERM after it lost the queued
/// lines, "shutting down" and "saved" among them.
#[test]
fn a_flood_with_a_stuck_log_stays_small_and_shutdown_lines_survive() {
    let mut d = Daemon::start(
        "log-flood",
        &[
            "--allow-test-time",
            "--max-entries",
            "100000",
            "--snapshot-interval",
            "0",
        ],
    );
    d.pause_log(true);
    let base = d.rss_bytes();
    let addr = d.addr.clone().unwrap();
    let flooders: Vec<_> = (0..4u32)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
                let mut batch = String::new();
                let mut line = String::new();
                for i in 0..50_000u32 {
                    let sender = format!(
                        "{}{}@flood.example",
                        "x".repeat(100),
                        daemon::names::letters(u64::from(i))
                    );
                    batch.push_str(&rcpt(&format!("10.{t}.0.1"), &sender, "b@y.net", T0));
                    if i % 100 == 99 {
                        s.write_all(batch.as_bytes()).unwrap();
                        batch.clear();
                        for _ in 0..200 {
                            line.clear();
                            std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    let mut peak = 0;
    while flooders.iter().any(|f| !f.is_finished()) {
        peak = peak.max(d.rss_bytes());
        std::thread::sleep(Duration::from_millis(50));
    }
    for f in flooders {
        f.join().unwrap();
    }
    peak = peak.max(d.rss_bytes());
    eprintln!(
        "200,000 requests with the log stuck: RSS {} MB before, {} MB at peak",
        base >> 20,
        peak >> 20
    );
    assert!(
        peak < base + (40 << 20),
        "RSS grew from {} MB to {} MB",
        base >> 20,
        peak >> 20
    );
    d.pause_log(false);
    d.wait_for_log("decision lines: the log could not keep up");
    assert_eq!(d.terminate(), Some(0));
    let log = d.log_text();
    assert!(
        log.contains("shutting down: writing the final snapshot"),
        "{log}"
    );
    assert!(
        log.contains("saved "),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
}

/// Item 5: `--unix PATH` deleted whatever was at PATH; a folder that
/// cannot be written was found at shutdown; a FIFO hung start-up.
#[test]
fn start_up_refuses_what_would_fail_later() {
    let dir = scratch("start-up");
    let precious = dir.join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let (code, log) = run_to_exit(&dir, &["--unix", precious.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("not a socket is there; refusing to remove it"),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");

    let missing = dir.join("gone").join("g.snap");
    let (code, log) = run_to_exit(&dir, &["--snapshot", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("gone/g.snap.tmp"), "{log}");

    let fifo = dir.join("fifo.snap");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (code, log) = run_to_exit(&dir, &["--snapshot", fifo.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("is not a regular file (a FIFO)"), "{log}");

    // A stale socket is replaced; a live one (another daemon) is not.
    let socket = dir.join("policy.sock");
    let first = Daemon::start_in(&dir, &["--unix", socket.to_str().unwrap()]);
    let (code, log) = run_to_exit(
        &dir,
        &["--unix", socket.to_str().unwrap(), "--snapshot", "h.snap"],
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("another server is listening on it"), "{log}");
    drop(first); // killed: its socket stays behind, stale
    let again = Daemon::start_in(&dir, &["--unix", socket.to_str().unwrap()]);
    drop(again);
}

/// Items 4 and 6: the snapshot was created 0644 (it holds the key secret);
/// a failing save was silent until shutdown.
#[test]
fn snapshots_are_private_and_failed_saves_are_logged_at_once() {
    let dir = scratch("saves");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let snap = state.join("g.snap");
    let secret = dir.join("secret");
    std::fs::write(&secret, "000102030405060708090a0b0c0d0e0f\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut d = Daemon::start_with_shell(
        &dir,
        "umask 000;",
        &[
            "--snapshot",
            snap.to_str().unwrap(),
            "--snapshot-interval",
            "1",
            "--redis",
            "redis://127.0.0.1:1/",
            "--redis-secret",
            secret.to_str().unwrap(),
            "--redis-fail",
            "defer",
        ],
    );
    d.wait_for_log("can be read by group or others (mode 644)");
    defer_first(&d, "192.0.2.1");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !snap.exists() {
        assert!(Instant::now() < deadline, "no snapshot saved");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mode(&snap), 0o600, "with umask 000");
    std::fs::remove_dir_all(&state).unwrap();
    d.wait_for_log("state/g.snap failed (1 in a row)");
    d.wait_for_log("state/g.snap failed (2 in a row)");
    std::fs::create_dir_all(&state).unwrap();
    d.wait_for_log("snapshot saved to");
    d.wait_for_log("again, after ");
    assert_eq!(mode(&snap), 0o600);
    // A final save that fails: exit status 1, and the log says which save.
    std::fs::remove_dir_all(&state).unwrap();
    assert_eq!(d.terminate(), Some(1));
    d.wait_for_log("error: the final snapshot save failed: ");
}
