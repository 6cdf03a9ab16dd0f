//! A private redis-server for a test: loopback, a free port, its own
//! folder, no persistence. Without redis-server the test says why it
//! skipped, except under CI=true, where it fails.

#![allow(dead_code)]

#[path = "real.rs"]
pub mod real;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use real::free_port;

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

/// Whether redis-server can be run here; if not, the reason (a panic under
/// CI=true, where every integration test must run).
pub fn available(test: &str) -> bool {
    let found = real::runs("redis-server", "--version");
    if !found {
        real::skip(
            test,
            "redis-server is not installed (apt-get install redis-server)",
        );
    }
    found
}

impl RedisServer {
    /// Starts a server for the test `name` (None, with the reason printed,
    /// when redis-server is missing outside CI).
    pub fn start(name: &str) -> Option<RedisServer> {
        RedisServer::start_with(name, &[])
    }

    /// Starts a server with extra redis-server arguments
    /// (`--requirepass`, ...).
    pub fn start_with(name: &str, extra: &[&str]) -> Option<RedisServer> {
        if !available(name) {
            return None;
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("redis-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.run(false);
        Some(server)
    }

    /// Starts the server and waits until it says it is ready. Another
    /// test may have taken the free port in the meantime: then the server
    /// exits, and a fresh start gets another port (or, for a restart,
    /// which must keep its port, the same one a moment later).
    fn run(&mut self, keep_port: bool) {
        let log = self.dir.join("redis.log");
        for _ in 0..20 {
            let _ = std::fs::remove_file(&log);
            let mut child = self.spawn(&log);
            let deadline = Instant::now() + Duration::from_secs(20);
            let ready = loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("Ready to accept connections") {
                    break true;
                }
                if child.try_wait().expect("redis-server status").is_some() {
                    break false;
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not start:\n{text}"
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            if ready {
                self.child = Some(child);
                return;
            }
            if keep_port {
                std::thread::sleep(Duration::from_millis(100));
            } else {
                self.port = free_port();
            }
        }
        panic!(
            "redis-server would not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn spawn(&self, log: &Path) -> Child {
        // With a certificate, the port is the TLS port and plain TCP is off.
        let tls = self.extra.iter().any(|a| a == "--tls-cert-file");
        let port = self.port.to_string();
        let ports = if tls {
            ["--port", "0", "--tls-port", &port]
        } else {
            ["--port", &port, "--tls-port", "0"]
        };
        Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(log)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    /// The server's URL, with the password it was started with, if any.
    pub fn url(&self) -> String {
        let password = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .map_or(String::new(), |i| format!(":{}@", self.extra[i + 1]));
        format!("redis://{password}127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: a hung Redis, whose
    /// connections stay open but never answer.
    pub fn pause(&self, stopped: bool) {
        let child = self.child.as_ref().expect("running");
        let signal = if stopped { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} failed");
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.run(true);
    }

    /// A plain connection for the test's own commands.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// A secret file for `greylist-policyd --redis-secret`, in the
    /// server's folder, private as it should be.
    pub fn secret_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join("secret");
        std::fs::write(&path, "00112233445566778899aabbccddeeff\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
