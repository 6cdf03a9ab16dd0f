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

/// One SMTP session from `ip` through `exim -bh`, with the daemon's clock
/// at `now`: the lines Exim answered.
fn session(exim: &Path, config: &Path, ip: &str, now: i64, data: bool) -> String {
    let mut smtp = String::from(
        "EHLO client.example\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n",
    );
    if data {
        smtp.push_str("DATA\r\nSubject: test\r\n\r\nhello\r\n.\r\n");
    }
    smtp.push_str("QUIT\r\n");
    let mut child = Command::new(exim)
        .arg("-C")
        .arg(config)
        .arg(format!("-DGREYLIST_TEST_TIME={now}"))
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

#[test]
fn exim_greylists_through_readsocket() {
    let exim = match find_exim() {
        Ok(path) => path,
        Err(why) => {
            real::skip("the Exim test", &why);
            return;
        }
    };
    let dir = daemon::scratch("exim");
    let d = Daemon::start_in(&dir, &["--allow-test-time"]);
    let addr = d.addr.clone().expect("the daemon listens on TCP");
    for sub in ["spool", "log"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    // The recipe's ACL, in a private configuration: its own spool and
    // log, the daemon's port, and the daemon's test clock in each request.
    let acl = recipe().replace("127.0.0.1:10023", &addr).replace(
        "recipient=$local_part@$domain\\n",
        "recipient=$local_part@$domain\\npolicy_test_time=GREYLIST_TEST_TIME\\n",
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

    let first = session(&exim, &config, "192.0.2.1", T0, false);
    assert!(
        first.contains("450 4.2.0 Greylisted, please try again in 300 seconds"),
        "{first}"
    );
    // Too early, from another address of the same /24.
    let early = session(&exim, &config, "192.0.2.7", T0 + 120, false);
    assert!(
        early.contains("450 4.2.0 Greylisted, please try again in 180 seconds"),
        "{early}"
    );
    // After the delay: accepted, with the X-Greylist header added.
    let retry = session(&exim, &config, "192.0.2.1", T0 + 301, true);
    assert!(retry.contains("250 Accepted"), "{retry}");
    assert!(
        retry.contains("X-Greylist: delayed 301 seconds by greylist-policyd"),
        "{retry}"
    );
    d.wait_for_log("action=pass reason=retried client=192.0.2.1 from=<alice@example.org>");
}
