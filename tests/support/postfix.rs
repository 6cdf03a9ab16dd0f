//! A private Postfix instance for tests (its own config, queue and data
//! folders, on 127.0.0.1), asking a policy service at RCPT time, and swaks
//! to play the sending MTA.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Where Debian installs what the test runs: found and run by these paths,
/// so a PATH without /usr/sbin (a user's) finds the same programs.
pub const POSTFIX: &str = "/usr/sbin/postfix";
pub const SWAKS: &str = "/usr/bin/swaks";
pub const SCRIPT: &str = "/usr/bin/script";

pub fn missing_tools() -> Option<String> {
    let missing: Vec<_> = [POSTFIX, SWAKS, SCRIPT]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        return Some(format!("not installed: {}", missing.join(", ")));
    }
    let postfix_user = Command::new("id")
        .arg("postfix")
        .output()
        .map(|o| o.status.success());
    (postfix_user.ok() != Some(true)).then(|| "no postfix user".to_string())
}

/// A private Postfix instance under `dir`, stopped when dropped.
pub struct Postfix {
    dir: std::path::PathBuf,
}

impl Postfix {
    /// Starts it with `check_policy_service {policy}` (`inet:HOST:PORT` or
    /// `unix:/absolute/path`); its smtpd runs as user postfix, unchrooted.
    pub fn start(dir: &Path, smtp_port: u16, policy: &str) -> Postfix {
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {dir}/queue\n\
             data_directory = {dir}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             myhostname = mx.greylist.test\n\
             mydomain = greylist.test\n\
             mydestination =\n\
             relay_domains = example.net\n\
             transport_maps = inline:{{ example.net=discard: }}\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_recipient_restrictions = check_policy_service {policy}, reject_unauth_destination\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             smtputf8_enable = no\n\
             biff = no\n\
             smtpd_banner = $myhostname ESMTP greylist test\n\
             header_checks = regexp:{dir}/header_checks\n\
             maillog_file_prefixes = {dir}\n\
             maillog_file = {dir}/maillog\n",
            dir = dir.display()
        );
        let master_cf = format!(
            "127.0.0.1:{smtp_port} inet n - n - - smtpd\n\
             pickup unix n - n 60 1 pickup\n\
             cleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\n\
             rewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\n\
             defer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\n\
             verify unix - - n - 1 verify\n\
             flush unix n - n 1000? 0 flush\n\
             proxymap unix - - n - - proxymap\n\
             smtp unix - - n - - smtp\n\
             relay unix - - n - - smtp\n\
             showq unix n - n - - showq\n\
             error unix - - n - - error\n\
             retry unix - - n - - error\n\
             discard unix - - n - - discard\n\
             local unix - n n - - local\n\
             anvil unix - - n - 1 anvil\n\
             scache unix - - n - 1 scache\n\
             postlog unix-dgram n - n - 1 postlogd\n"
        );
        std::fs::create_dir_all(dir.join("queue")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let chown = run("chown", &["postfix", &dir.join("data").to_string_lossy()]);
        assert!(chown.status.success(), "{}", text(&chown));
        // Logs the header greylist-policyd had Postfix prepend.
        std::fs::write(dir.join("header_checks"), "/^X-Greylist:/ WARN\n").unwrap();
        std::fs::write(dir.join("main.cf"), main_cf).unwrap();
        std::fs::write(dir.join("master.cf"), master_cf).unwrap();
        // `postfix start` reports errors only to a terminal: give it one.
        let out = run(
            SCRIPT,
            &[
                "-qec",
                &format!("{POSTFIX} -c {} start", dir.display()),
                "/dev/null",
            ],
        );
        assert!(
            out.status.success(),
            "postfix start failed:\n{}",
            text(&out)
        );
        let p = Postfix {
            dir: dir.to_path_buf(),
        };
        p.wait_for_port(smtp_port);
        p
    }

    fn wait_for_port(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postfix never listened:\n{}",
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(POSTFIX)
            .args(["-c", &self.dir.to_string_lossy(), "stop"])
            .output();
    }
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn swaks(port: u16) -> Output {
    swaks_as(port, "client.example", "alice@sender.example".as_ref())
}

/// One SMTP session with this HELO name and envelope sender (bytes, so a
/// Latin-1 sender goes out as it is).
pub fn swaks_as(port: u16, helo: &str, from: &std::ffi::OsStr) -> Output {
    use std::os::unix::ffi::OsStrExt;
    swaks_command(port, helo, from)
        .output()
        .unwrap_or_else(|e| panic!("swaks ({:?}): {e}", from.as_bytes()))
}

pub fn swaks_command(port: u16, helo: &str, from: &std::ffi::OsStr) -> Command {
    let mut command = Command::new(SWAKS);
    command
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--helo",
            helo,
        ])
        .arg("--from")
        .arg(from)
        .args([
            "--to",
            "bob@example.net",
            "--timeout",
            "30",
            "--header",
            "Subject: greylist test",
        ]);
    command
}
