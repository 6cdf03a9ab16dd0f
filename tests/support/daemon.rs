//! Starts greylist-policyd for a test and watches its log.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         client_address={ip}\nclient_name=unknown\nreverse_client_name=unknown\n\
         helo_name=client.example\nsender={sender}\nrecipient={recipient}\n\
         recipient_count=0\nqueue_id=\ninstance=abc.123\nsize=0\npolicy_test_time={now}\n\n"
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
    pub addr: Option<String>,
    dir: PathBuf,
    args: Vec<String>,
}

impl Daemon {
    pub fn start(name: &str, args: &[&str]) -> Daemon {
        Daemon::start_in(&scratch(name), args)
    }

    pub fn start_in(dir: &Path, args: &[&str]) -> Daemon {
        let mut all: Vec<String> = vec!["--inet".into(), "127.0.0.1:0".into()];
        all.push("--snapshot".into());
        all.push(dir.join("g.snap").to_string_lossy().into_owned());
        all.extend(args.iter().map(|a| a.to_string()));
        Daemon::spawn(dir.to_path_buf(), all)
    }

    fn spawn(dir: PathBuf, args: Vec<String>) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_greylist-policyd"))
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut d = Daemon {
            child,
            log,
            addr: None,
            dir,
            args,
        };
        d.wait_for_log("listening on");
        d.addr = d.log_text().lines().find_map(|l| {
            let rest = l.split("listening on tcp ").nth(1)?;
            Some(rest.split([';', ' ']).next()?.to_string())
        });
        d
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log_text().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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
        let (dir, args) = (self.dir.clone(), self.args.clone());
        drop(self);
        Daemon::spawn(dir, args)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
