//! greylist-policyd as a process: the policy protocol over TCP and a unix
//! socket, bad input, timeouts, signals, and restarts with its snapshot.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/real.rs"]
mod real;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use daemon::{answers, ask, rcpt, rcpt_named, Daemon};

const T0: i64 = 1_700_000_000;

#[test]
fn several_requests_on_one_connection_split_and_crlf() {
    let d = Daemon::start("protocol", &["--allow-test-time"]);
    let mut s = d.connect();
    // Three requests written in 5-byte pieces, the last with CRLF ends.
    let wire = format!(
        "{}{}{}",
        rcpt("192.0.2.1", "a@x.org", "b@y.net", T0),
        rcpt("192.0.2.1", "a@x.org", "b@y.net", T0 + 100),
        rcpt("192.0.2.1", "a@x.org", "b@y.net", T0 + 300).replace('\n', "\r\n")
    );
    for piece in wire.as_bytes().chunks(5) {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
    }
    assert_eq!(
        answers(&mut s, 3),
        [
            "DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 300 seconds",
            "DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 200 seconds",
            "PREPEND X-Greylist: delayed 300 seconds by greylist-policyd",
        ]
    );
    // Later passes are DUNNO; so are other stages, missing attributes and junk.
    let wire = format!(
        "{}{}request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@x.org\n\n\
         this is not a policy request\n\n{}",
        rcpt("192.0.2.1", "a@x.org", "b@y.net", T0 + 400),
        rcpt("192.0.2.1", "a@x.org", "b@y.net", T0).replace("RCPT", "DATA"),
        rcpt("999.0.0.1", "a@x.org", "b@y.net", T0),
    );
    s.write_all(wire.as_bytes()).unwrap();
    // At RCPT, what cannot be judged is greylisted (fail closed); the junk
    // request is not a policy request.
    let cannot =
        "DEFER_IF_PERMIT 4.3.0 Greylisting cannot judge this request, please try again later";
    assert_eq!(
        answers(&mut s, 5),
        ["DUNNO", "DUNNO", cannot, "DUNNO", cannot]
    );
    // Log lines are written in batches: wait for them.
    d.wait_for_log("action=dunno why=\"protocol_state=DATA is not RCPT\"");
    d.wait_for_log("action=defer reason=cannot-judge client=\"\" from=<a@x.org> to=<>");
    d.wait_for_log("why=\"not a smtpd_access_policy request\"");
    d.wait_for_log(r#"why="client_ip: not an IP address: \"999.0.0.1\"""#);
}

#[test]
fn an_over_long_line_or_request_closes_only_that_connection() {
    let d = Daemon::start("limits", &["--allow-test-time"]);
    let mut s = d.connect();
    s.write_all(format!("request=smtpd_access_policy\nsender={}\n", "a".repeat(5000)).as_bytes())
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed without an answer"
    );
    let mut s = d.connect();
    let big = "x_attribute=yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\n".repeat(1400);
    let _ = s.write_all(big.as_bytes());
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
    // The daemon is still up for everyone else.
    let mut s = d.connect();
    s.write_all(rcpt("192.0.2.9", "a@x.org", "b@y.net", T0).as_bytes())
        .unwrap();
    assert_eq!(
        answers(&mut s, 1)[0],
        "DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 300 seconds"
    );
    d.wait_for_log("a line longer than 4096 bytes");
    d.wait_for_log("a request longer than 65536 bytes");
}

#[test]
fn silent_clients_time_out_and_connections_are_bounded() {
    let d = Daemon::start(
        "timeouts",
        &["--idle-timeout", "1", "--max-connections", "2"],
    );
    let mut silent = d.connect();
    std::thread::sleep(Duration::from_millis(100));
    let mut second = d.connect();
    std::thread::sleep(Duration::from_millis(100));
    // A third is admitted: the one idle the longest (the first) makes room.
    let mut third = d.connect();
    third
        .write_all(daemon::rcpt("192.0.2.1", "a@x.org", "b@y.net", T0).as_bytes())
        .unwrap();
    assert!(answers(&mut third, 1)[0].starts_with("DEFER_IF_PERMIT"));
    let mut buf = [0u8; 16];
    assert_eq!(
        silent.read(&mut buf).unwrap_or(0),
        0,
        "the idlest was closed"
    );
    d.wait_for_log("closed the connection from 127.0.0.1:");
    // The second times out by itself after 1 s of silence.
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(second.read(&mut buf).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(5));
    d.wait_for_log("idle for 1 s");
}

#[test]
fn restart_keeps_passed_and_pending_triplets() {
    let mut d = Daemon::start("restart", &["--allow-test-time"]);
    let mut s = d.connect();
    let wire = format!(
        "{}{}{}",
        rcpt("192.0.2.1", "passed@x.org", "b@y.net", T0),
        rcpt("192.0.2.1", "passed@x.org", "b@y.net", T0 + 300),
        rcpt("198.51.100.1", "pending@x.org", "b@y.net", T0 + 100),
    );
    s.write_all(wire.as_bytes()).unwrap();
    assert_eq!(
        answers(&mut s, 3)[1],
        "PREPEND X-Greylist: delayed 300 seconds by greylist-policyd"
    );
    drop(s);
    assert_eq!(d.terminate(), Some(0), "SIGTERM exits 0");
    d.wait_for_log("saved 2 entries");

    let d = d.restart();
    d.wait_for_log("(loaded, every 300 s); 2 entries");
    let mut s = d.connect();
    let wire = format!(
        "{}{}",
        rcpt("192.0.2.1", "passed@x.org", "b@y.net", T0 + 1000),
        // First seen at T0 + 100 before the restart: 250 s later is early.
        rcpt("198.51.100.1", "pending@x.org", "b@y.net", T0 + 350),
    );
    s.write_all(wire.as_bytes()).unwrap();
    assert_eq!(
        answers(&mut s, 2),
        [
            "DUNNO",
            "DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 50 seconds"
        ]
    );
}

#[test]
fn sighup_reloads_lists_and_a_unix_socket_works() {
    let dir = daemon::scratch("sighup");
    let clients = dir.join("clients.txt");
    std::fs::write(&clients, "# none yet\n").unwrap();
    let socket = dir.join("policy.sock");
    let args = [
        "--whitelist-clients",
        clients.to_str().unwrap(),
        "--unix",
        socket.to_str().unwrap(),
        "--allow-test-time",
    ];
    let d = Daemon::start_in(&dir, &args);
    let ask = |ip: &str| {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(rcpt(ip, "a@x.org", "b@y.net", T0).as_bytes())
            .unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line.trim_end().to_string()
    };
    assert!(ask("192.0.2.1").starts_with("action=DEFER_IF_PERMIT"));
    std::fs::write(&clients, "192.0.2.0/24\n").unwrap();
    d.signal(daemon::SIGHUP);
    d.wait_for_log("SIGHUP: list files reloaded");
    // List kinds are named as on the command line, not as Rust types.
    d.wait_for_log("clients list: 1 entries loaded");
    assert_eq!(ask("192.0.2.2"), "action=DUNNO");
    // A bad line is left out, named with its line; the rest applies
    // (issue 20: as postgrey, a list is never refused for one line).
    std::fs::write(&clients, "192.0.2.0/24\nnot a client\n198.51.100.0/24\n").unwrap();
    d.signal(daemon::SIGHUP);
    d.wait_for_log(
        "clients.txt: line 2: \"not a client\" is not an IP address, CIDR or host name: left out",
    );
    d.wait_for_log("clients list: 2 entries loaded");
    assert_eq!(ask("192.0.2.3"), "action=DUNNO");
    assert_eq!(ask("198.51.100.3"), "action=DUNNO");
    // A file that cannot be read keeps the old list and says so.
    std::fs::remove_file(&clients).unwrap();
    std::fs::create_dir(&clients).unwrap();
    d.signal(daemon::SIGHUP);
    d.wait_for_log("lists kept as they were");
    assert_eq!(ask("198.51.100.4"), "action=DUNNO");
}

/// Issue 20: Debian's own /etc/postgrey lists (regular expressions,
/// partial addresses) stopped the daemon from starting. They load as they
/// are, with their `.local` companions.
#[test]
fn debians_own_postgrey_lists_load() {
    let debian = std::path::Path::new("/etc/postgrey");
    if !debian.join("whitelist_clients").exists() {
        real::skip(
            "debians_own_postgrey_lists_load",
            "Debian's postgrey is not installed (apt-get install postgrey)",
        );
        return;
    }
    let dir = daemon::scratch("debian-lists");
    let (clients, recipients) = (
        dir.join("whitelist_clients"),
        dir.join("whitelist_recipients"),
    );
    std::fs::copy(debian.join("whitelist_clients"), &clients).unwrap();
    std::fs::copy(debian.join("whitelist_recipients"), &recipients).unwrap();
    std::fs::write(dir.join("whitelist_clients.local"), "192.0.2.0/24\n").unwrap();
    let d = Daemon::start_in(
        &dir,
        &[
            "--allow-test-time",
            "--whitelist-clients",
            clients.to_str().unwrap(),
            "--whitelist-recipients",
            recipients.to_str().unwrap(),
        ],
    );
    assert_eq!(d.lines_with("left out"), 0, "{}", d.log_text());
    let mut c = d.connect();
    let ask_as = |c: &mut std::net::TcpStream, ip: &str, name: &str, to: &str| {
        daemon::ask(
            c,
            &format!(
                "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={ip}\n\
                 client_name={name}\nsender=a@example.org\nrecipient={to}\n\
                 policy_test_time={T0}\n\n"
            ),
        )
    };
    let to = "bob@example.net";
    // A regular expression of the file, against the verified host name.
    assert_eq!(
        ask_as(&mut c, "198.51.100.7", "ms-smtp-03.texas.rr.com", to),
        "DUNNO"
    );
    // A partial address (195.235.39: a /24), a plain name with its hosts.
    assert_eq!(ask_as(&mut c, "195.235.39.7", "unknown", to), "DUNNO");
    assert_eq!(
        ask_as(&mut c, "198.51.100.8", "mx.lists.debian.org", to),
        "DUNNO"
    );
    // The .local file beside it, and the recipients file (postmaster@).
    assert_eq!(ask_as(&mut c, "192.0.2.5", "unknown", to), "DUNNO");
    assert_eq!(
        ask_as(&mut c, "203.0.113.5", "unknown", "postmaster@example.net"),
        "DUNNO"
    );
    // Anyone else is greylisted.
    let other = ask_as(&mut c, "203.0.113.5", "mail.example.com", to);
    assert!(other.starts_with("DEFER_IF_PERMIT 4.2.0"), "{other}");
}

/// Issue 20: the client whitelist built in (senders known to retry badly)
/// is used when no --whitelist-clients is given: every entry loads, it
/// lets a Google or Outlook pool host through, `greylistctl whitelist
/// list` says where the entries come from, `--show-default-whitelist`
/// prints it, and --no-default-whitelist or a list file of one's own
/// replaces it.
#[test]
fn the_built_in_client_whitelist() {
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_greylist-policyd"))
        .arg("--show-default-whitelist")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let text = String::from_utf8(printed.stdout).unwrap();
    let entries = greylist::list_entries(&text);
    assert!(entries.len() >= 100, "{} entries", entries.len());
    // Each entry says why it is there: a comment on its line or on the
    // lines just above it.
    let mut explained = false;
    for line in text.lines() {
        let entry = line.split('#').next().unwrap().trim();
        if entry.is_empty() {
            explained = line.trim_start().starts_with('#') || (explained && line.is_empty());
            continue;
        }
        assert!(
            explained || line.contains('#'),
            "no reason given for {line:?}"
        );
    }
    let ask_as = |c: &mut std::net::TcpStream, ip: &str, name: &str| {
        daemon::ask(
            c,
            &format!(
                "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={ip}\n\
                 client_name={name}\nsender=a@example.org\nrecipient=b@example.net\n\
                 policy_test_time={T0}\n\n"
            ),
        )
    };
    let d = Daemon::start("built-in-whitelist", &["--allow-test-time"]);
    d.wait_for_log(&format!(
        "clients list: {} entries loaded (the built-in list)",
        entries.len()
    ));
    assert_eq!(d.lines_with("left out"), 0, "{}", d.log_text());
    let mut c = d.connect();
    assert_eq!(
        ask_as(&mut c, "209.85.220.41", "mail-sor-f41.google.com"),
        "DUNNO"
    );
    assert_eq!(
        ask_as(
            &mut c,
            "40.107.22.51",
            "mail-db8eur05on2051.outbound.protection.outlook.com"
        ),
        "DUNNO"
    );
    let other = ask_as(&mut c, "203.0.113.5", "mail.example.com");
    assert!(other.starts_with("DEFER_IF_PERMIT 4.2.0"), "{other}");
    let rows = d.ctl(&["whitelist", "list"]);
    let built_in = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["origin"] == "built in")
        .count();
    assert_eq!(built_in, entries.len(), "{rows}");
    drop(d);

    for args in [
        &["--allow-test-time", "--no-default-whitelist"][..],
        &["--allow-test-time", "--whitelist-clients", "/dev/null/none"][..],
    ] {
        let dir = daemon::scratch("no-built-in-whitelist");
        let own = dir.join("mine");
        std::fs::write(&own, "192.0.2.0/24\n").unwrap();
        let args: Vec<&str> = args
            .iter()
            .map(|a| {
                if *a == "/dev/null/none" {
                    own.to_str().unwrap()
                } else {
                    a
                }
            })
            .collect();
        let d = Daemon::start_in(&dir, &args);
        let mut c = d.connect();
        let google = ask_as(&mut c, "209.85.220.41", "mail-sor-f41.google.com");
        assert!(
            google.starts_with("DEFER_IF_PERMIT 4.2.0"),
            "{args:?}: {google}"
        );
        assert_eq!(d.lines_with("(the built-in list)"), 0);
    }
}

/// Issue 20: a list line this daemon cannot honour is left out with a
/// warning naming its file and line, never a refusal to start.
#[test]
fn a_list_line_that_cannot_be_honoured_is_left_out() {
    let dir = daemon::scratch("list-left-out");
    let clients = dir.join("clients");
    std::fs::write(&clients, "192.0.2.0/24\n/(?<=mail)x/\nexample.org\n").unwrap();
    let d = Daemon::start_in(
        &dir,
        &[
            "--allow-test-time",
            "--whitelist-clients",
            clients.to_str().unwrap(),
        ],
    );
    d.wait_for_log(&format!(
        "warning: clients list: {}: line 2: \"/(?<=mail)x/\" is not a regular expression",
        clients.display()
    ));
    d.wait_for_log("clients list: 2 entries loaded");
    let mut c = d.connect();
    assert_eq!(
        daemon::ask(&mut c, &rcpt("192.0.2.9", "a@b.example", "c@d.example", T0)),
        "DUNNO"
    );
}

/// Issue 20: logs went to stderr only, so nothing landed in mail.log.
/// Lines go to a syslog socket (here a datagram socket standing in for
/// /dev/log) with the facility asked for, the daemon's name and pid, and
/// the severity of each line; `--log-format postgrey` writes postgrey's
/// decision lines.
#[test]
fn logs_go_to_syslog_in_postgreys_format() {
    use std::os::unix::net::UnixDatagram;
    let dir = daemon::scratch("syslog");
    let socket = dir.join("log.sock");
    let syslog = UnixDatagram::bind(&socket).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let clients = dir.join("clients");
    std::fs::write(&clients, "not a client\n").unwrap();
    let d = Daemon::start_in(
        &dir,
        &[
            "--allow-test-time",
            "--syslog",
            "--log-stderr",
            "--syslog-socket",
            socket.to_str().unwrap(),
            "--syslogfacility",
            "local3",
            "--log-format",
            "postgrey",
            "--whitelist-clients",
            clients.to_str().unwrap(),
        ],
    );
    let mut c = d.connect();
    daemon::ask(
        &mut c,
        &rcpt("192.0.2.1", "a@example.org", "b@example.net", T0),
    );
    let tag = format!("greylist-policyd[{}]: ", d.pid());
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !seen.iter().any(|l: &String| l.contains("action=greylist")) {
        let n = syslog.recv(&mut buf).expect("a syslog line within 10 s");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // local3 is facility 19: info 158, warning 156.
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("<156>{tag}warning: clients list: "))),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("<158>{tag}listening on tcp"))),
        "{seen:#?}"
    );
    assert_eq!(
        seen.last().unwrap(),
        &format!(
            "<158>{tag}action=greylist, reason=new, client_name=unknown, \
             client_address=192.0.2.1, sender=a@example.org, recipient=b@example.net"
        )
    );
}

/// Issue 20: postgrey's options, with postgrey's meaning, through the
/// daemon.
#[test]
fn postgreys_options_work_as_in_postgrey() {
    use std::os::unix::fs::PermissionsExt;
    let dir = daemon::scratch("postgrey-options");
    let (pidfile, socket) = (dir.join("p.pid"), dir.join("policy.sock"));
    let mut d = Daemon::start_in(
        &dir,
        &[
            "--allow-test-time",
            "--pidfile",
            pidfile.to_str().unwrap(),
            "--unix",
            socket.to_str().unwrap(),
            "--socketmode=0660",
            "--greylist-action=451",
            "--x-greylist-header=X-Greylist: delayed %t seconds by %h at %d (v%v)",
            "--hostname=mx.example.net",
            "--privacy",
            "--lookup-by-host",
        ],
    );
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(pid.trim(), d.pid().to_string());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    d.wait_for_log("--privacy: accepted; keys are always keyed hashes here");
    let mut c = d.connect();
    let at = |c: &mut std::net::TcpStream, ip: &str, now: i64| {
        daemon::ask(c, &rcpt(ip, "a@example.org", "b@example.net", now))
    };
    let first = at(&mut c, "192.0.2.1", T0);
    assert!(first.starts_with("451 4.2.0 Greylisted"), "{first}");
    // --lookup-by-host: another host of the /24 is another triplet.
    assert!(at(&mut c, "192.0.2.2", T0 + 300).starts_with("451 "));
    assert_eq!(
        at(&mut c, "192.0.2.1", T0 + 300),
        format!(
            "PREPEND X-Greylist: delayed 300 seconds by mx.example.net at \
             Tue, 14 Nov 2023 22:18:20 +0000 (v{})",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(d.terminate(), Some(0));
    assert!(!pidfile.exists(), "the pid file goes at exit");
}

#[test]
fn help_version_and_bad_options() {
    let bin = env!("CARGO_BIN_EXE_greylist-policyd");
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--whitelist-clients <FILE>"));
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("greylist-policyd {}", env!("CARGO_PKG_VERSION"))
    );
    for bad in [
        &["--delay", "soon"][..],
        &["--bogus"],
        &["--delay", "999999", "--retry-window", "1h"],
    ] {
        let out = std::process::Command::new(bin).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("error: "),
            "{bad:?}"
        );
    }
}

/// Issue 16, as an operator meets it: the daemon sweeps at its snapshot
/// interval (here each 300 s of test clock, by SIGUSR2), and the Exchange
/// 2003 pattern is logged as lost mail once `delay + lost_after` has
/// passed; a spammer that never retried and a blaster are not; blocks are
/// logged when they start (with the reason) and end; SIGUSR1 writes the
/// report; a late retry is logged as recovered. SIGUSR1 and SIGUSR2 used
/// to kill the daemon without a final snapshot.
#[test]
fn lost_mail_blocks_and_the_usr_signals_through_the_daemon() {
    use daemon::{advance, ask, rcpt_on_clock};
    let dir = daemon::scratch("lost-mail");
    let mut d = Daemon::start_in(&dir, &["--allow-test-time", "--snapshot-interval", "300"]);
    let mut c = d.connect();
    let check = |c: &mut std::net::TcpStream, ip: &str, from: &str, to: &str| {
        ask(c, &rcpt_on_clock(ip, from, to))
    };
    // Exchange 2003 SP2: two recipients, the first attempt and two retries
    // within 9 s, then silence.
    for dt in [0, 4, 5] {
        advance(&mut c, dt);
        for to in ["a@example.net", "b@example.net"] {
            let answer = check(&mut c, "192.0.2.25", "ceo@corp.example", to);
            assert!(answer.starts_with("DEFER_IF_PERMIT 4.2.0 "), "{answer}");
        }
    }
    // A spammer that never retried, and a blaster: 30 copies at once.
    check(&mut c, "203.0.113.66", "s@spam.example", "a@example.net");
    let blasted: Vec<String> = (0..30)
        .map(|_| check(&mut c, "198.18.0.5", "promo@blast.example", "a@example.net"))
        .collect();
    assert!(
        blasted[6].starts_with("DEFER_IF_PERMIT 4.7.1 Client network blocked"),
        "{blasted:?}"
    );
    d.wait_for_log(
        "action=block-start client=198.18.0.0/24 reason=blast-copies early_retries=6 until=",
    );

    for sweep in 1..=13 {
        advance(&mut c, 300);
        d.signal("USR2");
        d.wait_for_lines("SIGUSR2: saved ", sweep);
        if sweep < 12 {
            assert_eq!(d.lines_with("action=lost-mail"), 0, "sweep {sweep}");
        }
    }
    // Each line names the sender and recipient whose mail was lost
    // (issue 19).
    for to in ["a@example.net", "b@example.net"] {
        d.wait_for_log(&format!(
            "action=lost-mail client=192.0.2.0/24 from=<ceo@corp.example> to=<{to}> \
             early_retries=2 last_seen="
        ));
    }
    d.wait_for_log("action=block-end client=198.18.0.0/24 ended=");
    assert_eq!(d.lines_with("action=lost-mail"), 2, "{}", d.log_text());

    d.signal("USR1");
    d.wait_for_log("lost-mail report: client=192.0.2.0/24 lost=2 last_seen=");
    d.wait_for_log("lost mail 2 (0 recovered)");
    assert_eq!(d.lines_with("lost-mail report: client="), 1);

    // The queue was flushed by hand: the late retry passes.
    let answer = check(&mut c, "192.0.2.25", "ceo@corp.example", "a@example.net");
    assert!(
        answer.starts_with("PREPEND X-Greylist: delayed "),
        "{answer}"
    );
    d.wait_for_log("action=recovered client=192.0.2.0/24");
    d.signal("USR1");
    d.wait_for_log("lost-mail report: client=192.0.2.0/24 lost=1 last_seen=");
    d.wait_for_log("lost mail 2 (1 recovered)");

    assert_eq!(d.terminate(), Some(0), "{}", d.log_text());
    assert!(d.log_text().contains("saved "), "{}", d.log_text());
}

/// Issue 17: two daemons on one snapshot file both ran, and the last to
/// exit overwrote the other's state. The second is refused at start,
/// naming the file and the process that holds it.
#[test]
fn a_second_daemon_on_one_snapshot_is_refused() {
    let dir = daemon::scratch("two-on-one");
    let first = Daemon::start_in(&dir, &[]);
    let (code, log) = daemon::run_to_exit(&dir, &[]);
    assert_eq!(code, Some(1), "{log}");
    let pid = first.pid();
    assert!(
        log.contains(&format!(
            "g.snap: in use by another process (pid {pid}, which holds "
        )),
        "{log}"
    );
    assert!(log.contains("g.snap.lock"), "{log}");
    // Once the first is gone (even killed), the file is free again.
    drop(first);
    let again = Daemon::start_in(&dir, &[]);
    again.wait_for_log("listening on");
}

/// Issue 23: Gmail's pool retries from other hosts in other networks.
/// Keyed by the verified host names' domain, the first retry after the
/// delay passes, from any host of the pool; with `client_name=unknown`
/// each new network is greylisted again (as before); a generic name keeps
/// its /24; `--no-key-by-host-name` keys by network. The built-in list
/// (which has google.com) is off, so the keys decide.
#[test]
fn a_pool_passes_on_its_first_retry_by_its_verified_host_names() {
    let d = Daemon::start(
        "host-names",
        &["--allow-test-time", "--no-default-whitelist"],
    );
    let mut s = d.connect();
    let gmail = [
        ("209.85.220.41", "mail-sor-f41.google.com", T0),
        ("74.125.0.5", "mail-yw1-f5.google.com", T0 + 300),
        ("172.217.0.9", "mail-qk1-f9.google.com", T0 + 400),
    ];
    let got: Vec<String> = gmail
        .iter()
        .map(|(ip, name, t)| {
            ask(
                &mut s,
                &rcpt_named(ip, name, "alice@gmail.com", "bob@example.net", *t),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 300 seconds",
            "PREPEND X-Greylist: delayed 300 seconds by greylist-policyd",
            "DUNNO",
        ]
    );
    d.wait_for_lines("key=host-domain domain=google.com", 3);
    // Unverified: every network is new.
    for (ip, _, t) in gmail {
        assert_eq!(
            ask(&mut s, &rcpt(ip, "carol@gmail.com", "bob@example.net", t)),
            "DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 300 seconds",
            "{ip}"
        );
    }
    // A generic (dynamic) name keeps its /24.
    let dsl = |ip: &str, t| {
        let name = format!("host-{}.dsl.example.net", ip.replace('.', "-"));
        rcpt_named(ip, &name, "dave@example.org", "bob@example.net", t)
    };
    assert!(ask(&mut s, &dsl("203.0.113.7", T0)).starts_with("DEFER_IF_PERMIT"));
    // (One X-Greylist header per message instance: this pass says DUNNO.)
    assert_eq!(ask(&mut s, &dsl("203.0.113.8", T0 + 300)), "DUNNO");
    assert!(ask(&mut s, &dsl("198.51.100.8", T0 + 300)).starts_with("DEFER_IF_PERMIT"));
    d.wait_for_log("client=198.51.100.8");
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("client=203.0.113.7"))
        .unwrap();
    assert!(line.ends_with(" key=network"), "{line}");

    let off = Daemon::start(
        "host-names-off",
        &[
            "--allow-test-time",
            "--no-default-whitelist",
            "--no-key-by-host-name",
        ],
    );
    let mut s = off.connect();
    for (ip, name, t) in gmail {
        let a = ask(
            &mut s,
            &rcpt_named(ip, name, "alice@gmail.com", "bob@example.net", t),
        );
        assert!(a.starts_with("DEFER_IF_PERMIT"), "{ip}: {a}");
    }
    off.wait_for_lines("key=network", 3);
}

/// Issue 23: a pool keyed by its host names' domain has its lost mail
/// reported under the domain, with the addresses; `greylistctl client
/// --name` shows the domain's record; `greylistctl release` by a client
/// address lets the pool's waiting triplet pass from that network.
#[test]
fn a_pools_lost_mail_and_release_work_by_its_domain() {
    use daemon::{advance, rcpt_on_clock};
    let d = Daemon::start(
        "host-names-lost",
        &["--allow-test-time", "--no-default-whitelist"],
    );
    let mut c = d.connect();
    let named = |ip: &str, name: &str, to: &str| {
        rcpt_on_clock(ip, "ceo@corp.example", to)
            .replace("client_name=unknown\n", &format!("client_name={name}\n"))
    };
    // Early retries from two hosts of the pool, then silence.
    for (dt, ip, name) in [
        (0, "192.0.2.25", "out-a.mail.example.com"),
        (4, "198.51.100.9", "out-b.mail.example.com"),
    ] {
        advance(&mut c, dt);
        let answer = ask(&mut c, &named(ip, name, "lost@example.net"));
        assert!(answer.starts_with("DEFER_IF_PERMIT 4.2.0 "), "{answer}");
        let answer = ask(&mut c, &named(ip, name, "held@example.net"));
        assert!(answer.starts_with("DEFER_IF_PERMIT 4.2.0 "), "{answer}");
    }
    // The operator releases one of them by the client's address.
    let released = d.ctl(&[
        "release",
        "198.51.100.9",
        "ceo@corp.example",
        "held@example.net",
    ]);
    assert_eq!(released["released"], 1);
    let answer = ask(
        &mut c,
        &named(
            "198.51.100.10",
            "out-c.mail.example.com",
            "held@example.net",
        ),
    );
    assert_eq!(
        answer, "DUNNO",
        "released: passes from the released network"
    );
    let record = d.ctl(&["client", "192.0.2.25", "--name", "out-a.mail.example.com"]);
    assert_eq!(record["network"], "example.com", "{record}");
    assert_eq!(record["pending"], 1, "{record}");
    assert_eq!(d.ctl(&["client", "192.0.2.25"])["network"], "192.0.2.0/24");

    advance(&mut c, 3 * 3600);
    d.signal("USR2");
    let rows = d.wait_for_lost_mail();
    assert_eq!(rows[0]["network"], "example.com", "{rows}");
    assert_eq!(rows[0]["count"], 1, "{rows}");
    let samples = rows[0]["samples"].to_string();
    assert!(samples.contains("lost@example.net"), "{samples}");
}
