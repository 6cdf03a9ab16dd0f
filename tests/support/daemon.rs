//! Starts greylist-policyd for a test and watches its log.

#![allow(dead_code)]

#[path = "names.rs"]
pub mod names;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SIGHUP: &str = "HUP";

/// A fresh folder under target/ for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("policyd-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A policy request at the RCPT stage, judged at `now` (the daemon must run
/// with --allow-test-time).
pub fn rcpt(ip: &str, sender: &str, recipient: &str, now: i64) -> String {
    format!(
        "{}policy_test_time={now}\n\n",
        attributes(ip, sender, recipient)
    )
}

/// [`rcpt`] from a client whose host name Postfix verified (`client_name`).
pub fn rcpt_named(ip: &str, name: &str, sender: &str, recipient: &str, now: i64) -> String {
    rcpt(ip, sender, recipient, now)
        .replace("client_name=unknown\n", &format!("client_name={name}\n"))
}

/// A policy request at the RCPT stage, judged by the daemon's clock (moved
/// on by `policy_test_advance`, which its sweeps follow too).
pub fn rcpt_on_clock(ip: &str, sender: &str, recipient: &str) -> String {
    format!("{}\n", attributes(ip, sender, recipient))
}

/// Moves the daemon's clock on by `secs` (it must run with --allow-test-time).
pub fn advance(stream: &mut TcpStream, secs: i64) {
    assert_eq!(
        ask(stream, &format!("policy_test_advance={secs}\n\n")),
        "DUNNO"
    );
}

fn attributes(ip: &str, sender: &str, recipient: &str) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         client_address={ip}\nclient_name=unknown\nreverse_client_name=unknown\n\
         helo_name=client.example\nsender={sender}\nrecipient={recipient}\n\
         recipient_count=0\nqueue_id=\ninstance=abc.123\nsize=0\n"
    )
}

/// Reads `n` answers (`action=...` lines) from the daemon.
pub fn answers(stream: &mut TcpStream, n: usize) -> Vec<String> {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = Vec::new();
    while out.len() < n {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "connection closed after {out:?}"
        );
        let line = line.trim_end();
        if let Some(action) = line.strip_prefix("action=") {
            out.push(action.to_string());
        } else {
            assert_eq!(line, "", "unexpected line");
        }
    }
    out
}

/// Sends one request and returns its answer.
pub fn ask(stream: &mut TcpStream, request: &str) -> String {
    use std::io::Write;
    stream.write_all(request.as_bytes()).unwrap();
    answers(stream, 1).remove(0)
}

pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    /// While set, the daemon's stderr is not read (a log that cannot keep up).
    log_paused: Arc<AtomicBool>,
    pub addr: Option<String>,
    dir: PathBuf,
    args: Vec<String>,
    shell: String,
}

/// The arguments every test daemon gets: a free TCP port and a snapshot in
/// its folder, then the test's own.
fn default_args(dir: &Path, args: &[&str]) -> Vec<String> {
    // Its log on stderr, which the test reads (a test that wants syslog
    // says --syslog after these).
    let mut all: Vec<String> = vec!["--inet".into(), "127.0.0.1:0".into(), "--no-syslog".into()];
    all.push("--snapshot".into());
    all.push(dir.join("g.snap").to_string_lossy().into_owned());
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

/// The daemon's command, run through `sh -c` when `shell` sets something
/// up first (`ulimit -n 64;`, `umask 000;`).
fn command(shell: &str, args: &[String]) -> Command {
    let bin = env!("CARGO_BIN_EXE_greylist-policyd");
    if shell.is_empty() {
        let mut c = Command::new(bin);
        c.args(args);
        c
    } else {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("{shell} exec \"$0\" \"$@\""))
            .arg(bin)
            .args(args);
        c
    }
}

/// Runs the daemon in `dir` until it exits by itself (within 20 s): its
/// exit code and its log. For start-up errors.
pub fn run_to_exit(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = command("", &default_args(dir, args))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut log = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
            return (status.code(), log);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// greylistctl on the control socket at `socket`.
pub fn ctl_at(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_greylistctl"))
        .arg("--control")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

/// `greylistctl --json ARGS`, which must succeed: its answer.
pub fn ctl_json_at(socket: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl_at(socket, &all);
    assert!(
        out.status.success(),
        "greylistctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// GET (or HEAD) `path` from `addr`: the status code and the body.
pub fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

impl Daemon {
    /// Where it serves `--metrics`, from its log.
    pub fn metrics_addr(&self) -> String {
        self.log_text()
            .lines()
            .find_map(|l| {
                let rest = l.split("metrics http://").nth(1)?;
                Some(rest.split('/').next()?.to_string())
            })
            .expect("the metrics address in the log")
    }

    /// Its control socket (beside its snapshot).
    pub fn control(&self) -> PathBuf {
        self.dir.join("g.snap.ctl")
    }

    /// Polls `greylistctl lost-mail` until it lists a network (within
    /// 30 s): the rows.
    pub fn wait_for_lost_mail(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = self.ctl(&["lost-mail"]);
            if rows.as_array().is_some_and(|r| !r.is_empty()) {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "no lost mail reported:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `greylistctl --json ARGS` against it.
    pub fn ctl(&self, args: &[&str]) -> serde_json::Value {
        ctl_json_at(&self.control(), args)
    }

    pub fn start(name: &str, args: &[&str]) -> Daemon {
        Daemon::start_in(&scratch(name), args)
    }

    pub fn start_in(dir: &Path, args: &[&str]) -> Daemon {
        Daemon::spawn(dir.to_path_buf(), default_args(dir, args), String::new())
    }

    /// Starts it through `sh -c "<shell> exec greylist-policyd ..."`.
    pub fn start_with_shell(dir: &Path, shell: &str, args: &[&str]) -> Daemon {
        Daemon::spawn(dir.to_path_buf(), default_args(dir, args), shell.into())
    }

    fn spawn(dir: PathBuf, args: Vec<String>, shell: String) -> Daemon {
        let mut child = command(&shell, &args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let log_paused = Arc::new(AtomicBool::new(false));
        let stderr = child.stderr.take().unwrap();
        let (sink, paused) = (log.clone(), log_paused.clone());
        std::thread::spawn(move || {
            let mut lines = BufReader::with_capacity(256, stderr);
            loop {
                while paused.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let mut line = String::new();
                match lines.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => sink.lock().unwrap().push_str(&line),
                }
            }
        });
        let mut d = Daemon {
            child,
            log,
            log_paused,
            addr: None,
            dir,
            args,
            shell,
        };
        d.wait_for_log("listening on");
        d.addr = d.log_text().lines().find_map(|l| {
            let rest = l.split("listening on tcp ").nth(1)?;
            Some(rest.split([';', ' ']).next()?.to_string())
        });
        d
    }

    /// Stops (or resumes) reading the daemon's stderr.
    pub fn pause_log(&self, paused: bool) {
        self.log_paused.store(paused, Ordering::Relaxed);
    }

    /// The daemon's resident memory, from /proc.
    pub fn rss_bytes(&self) -> usize {
        names::rss_bytes(&self.child.id().to_string())
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_for_log(&self, text: &str) {
        self.wait_for_lines(text, 1);
    }

    /// Waits until `n` lines of the log contain `text`.
    pub fn wait_for_lines(&self, text: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.lines_with(text) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} lines with {text:?} in the log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many lines of the log contain `text`.
    pub fn lines_with(&self, text: &str) -> usize {
        self.log_text().lines().filter(|l| l.contains(text)).count()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr.as_deref().expect("listening on TCP")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        // Let the log reader drain.
        std::thread::sleep(Duration::from_millis(100));
        status.code()
    }

    /// Starts again with the same folder and arguments.
    pub fn restart(self) -> Daemon {
        let (dir, args, shell) = (self.dir.clone(), self.args.clone(), self.shell.clone());
        drop(self);
        Daemon::spawn(dir, args, shell)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
