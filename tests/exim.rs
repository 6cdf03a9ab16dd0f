//! Real Exim against greylist-policyd: Exim's RCPT ACL asks the daemon
//! through `${readsocket}` (the README's Exim recipe, word for word), in
//! Exim's host-checking mode (`exim -bh`: a whole SMTP session on stdin,
//! ACLs run for real, nothing delivered). The daemon's test clock makes
//! the retry 301 seconds later without sleeping.
//!
//! Exim comes from `GREYLIST_EXIM`, `target/exim/usr/sbin/exim4` (where
//! `.ci/run` unpacks Debian's package: Exim and Postfix cannot both be
//! installed), or the PATH. Without it this test says why it skipped,
//! except under CI=true, where it fails.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/real.rs"]
mod real;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use daemon::Daemon;

const T0: i64 = 1_700_000_000;

/// The README's Exim recipe, between its markers.
fn recipe() -> String {
    let readme = include_str!("../README.md");
    let start = readme
        .find("# greylist-policyd for Exim: begin")
        .expect("the README's Exim recipe");
    let end = readme[start..]
        .find("# greylist-policyd for Exim: end")
        .expect("the end of the README's Exim recipe")
        + start;
    readme[start..end].to_string()
}

fn find_exim() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("GREYLIST_EXIM") {
        return Ok(path.into());
    }
    let unpacked = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/exim/usr/sbin/exim4");
    if unpacked.exists() {
        return Ok(unpacked);
    }
    for name in ["exim4", "exim"] {
        if real::runs(name, "-bV") {
            return Ok(name.into());
        }
    }
    Err("no Exim (set GREYLIST_EXIM, or let .ci/run unpack Debian's exim4-daemon-light)".into())
}

/// One SMTP session from `ip` through `exim -bh` to `rcpt`, with the
/// daemon's clock at `now` and `extra` Exim arguments: the lines Exim
/// answered.
fn session(exim: &Exim, ip: &str, rcpt: &str, now: i64, data: bool, extra: &[&str]) -> String {
    let mut smtp =
        format!("EHLO client.example\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<{rcpt}>\r\n");
    if data {
        smtp.push_str("DATA\r\nSubject: test\r\n\r\nhello\r\n.\r\n");
    }
    smtp.push_str("QUIT\r\n");
    let mut child = Command::new(&exim.binary)
        .arg("-C")
        .arg(&exim.config)
        .arg(format!("-DGREYLIST_TEST_TIME={now}"))
        .args(extra)
        .args(["-bh", ip])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run exim");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(smtp.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("failed to find uid"),
        "Exim needs the user it was built for (useradd --system Debian-exim): {text}"
    );
    text
}

/// Exim with the README's recipe in a private configuration (its own
/// spool and log, the daemon's port, the daemon's test clock in each
/// request), and the daemon it asks.
struct Exim {
    binary: PathBuf,
    config: PathBuf,
    daemon: Daemon,
}

/// `None` (with the reason printed) when Exim is missing outside CI.
fn exim_with_daemon(name: &str, args: &[&str]) -> Option<Exim> {
    let binary = match find_exim() {
        Ok(path) => path,
        Err(why) => {
            real::skip("the Exim tests", &why);
            return None;
        }
    };
    let dir = daemon::scratch(name);
    let mut daemon_args = vec!["--allow-test-time"];
    daemon_args.extend_from_slice(args);
    let daemon = Daemon::start_in(&dir, &daemon_args);
    let addr = daemon.addr.clone().expect("the daemon listens on TCP");
    for sub in ["spool", "log"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let acl = recipe().replace("127.0.0.1:10023", &addr).replace(
        "recipient=$local_part@$domain\\n",
        "recipient=$local_part@$domain\\npolicy_test_time=GREYLIST_TEST_TIME\\n",
    );
    assert!(
        acl.contains("policy_test_time"),
        "the recipe's request changed:\n{acl}"
    );
    let config = dir.join("exim.conf");
    std::fs::write(
        &config,
        format!(
            "primary_hostname = mx.example.net\n\
             spool_directory = {spool}\n\
             log_file_path = {log}/%slog\n\
             acl_smtp_rcpt = acl_check_rcpt\n\
             begin acl\n\
             acl_check_rcpt:\n{acl}\n  accept\n",
            spool = dir.join("spool").display(),
            log = dir.join("log").display(),
        ),
    )
    .unwrap();
    Some(Exim {
        binary,
        config,
        daemon,
    })
}

#[test]
fn exim_greylists_through_readsocket() {
    let Some(exim) = exim_with_daemon("exim", &[]) else {
        return;
    };
    let bob = "bob@example.net";
    let first = session(&exim, "192.0.2.1", bob, T0, false, &[]);
    assert!(
        first.contains("450 4.2.0 Greylisted, please try again in 300 seconds"),
        "{first}"
    );
    // Too early, from another address of the same /24.
    let early = session(&exim, "192.0.2.7", bob, T0 + 120, false, &[]);
    assert!(
        early.contains("450 4.2.0 Greylisted, please try again in 180 seconds"),
        "{early}"
    );
    // After the delay: accepted, with the X-Greylist header added.
    let retry = session(&exim, "192.0.2.1", bob, T0 + 301, true, &[]);
    assert!(retry.contains("250 Accepted"), "{retry}");
    assert!(
        retry.contains("X-Greylist: delayed 301 seconds by greylist-policyd"),
        "{retry}"
    );
    exim.daemon
        .wait_for_log("action=pass reason=retried client=192.0.2.1 from=<alice@example.org>");
}

/// Issue 17: the recipe ignored `action=REJECT` (with `--block-action
/// reject` a blocked network's mail was accepted) and sent no
/// `client_name`, so host-name whitelist entries never matched under Exim.
#[test]
fn exim_honours_reject_and_host_name_whitelists() {
    let dir = daemon::scratch("exim-lists");
    let (clients, traps) = (dir.join("clients"), dir.join("traps"));
    std::fs::write(&clients, ".trusted.example\n").unwrap();
    std::fs::write(&traps, "trap@example.net\n").unwrap();
    let args = [
        "--block-action",
        "reject",
        "--whitelist-clients",
        clients.to_str().unwrap(),
        "--trap-recipients",
        traps.to_str().unwrap(),
    ];
    let Some(exim) = exim_with_daemon("exim-reject", &args) else {
        return;
    };
    // A trap recipient blocks the network: REJECT, a 5xx from Exim.
    let trapped = session(&exim, "198.51.100.9", "trap@example.net", T0, false, &[]);
    assert!(
        trapped.contains("550 5.7.1 Client network blocked for abuse"),
        "{trapped}"
    );
    let blocked = session(
        &exim,
        "198.51.100.10",
        "bob@example.net",
        T0 + 1,
        false,
        &[],
    );
    assert!(
        blocked.contains("550 5.7.1 Client network blocked for abuse"),
        "{blocked}"
    );
    // A client whose verified host name is whitelisted passes at once
    // (`-oMs` gives Exim the name, as a reverse lookup would).
    let named = session(
        &exim,
        "203.0.113.5",
        "bob@example.net",
        T0,
        true,
        &["-oMs", "mx1.trusted.example"],
    );
    assert!(named.contains("250 Accepted"), "{named}");
    exim.daemon
        .wait_for_log("reason=whitelisted client=203.0.113.5");
    // Without the name, the same address is greylisted.
    let unnamed = session(&exim, "203.0.113.6", "carol@example.net", T0, false, &[]);
    assert!(unnamed.contains("450 4.2.0 Greylisted"), "{unnamed}");
}
