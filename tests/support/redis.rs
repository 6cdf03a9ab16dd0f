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
    /// For a sentinel: the port of the master it watches.
    watches: Option<u16>,
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
        RedisServer::launch(name, extra, None)
    }

    fn launch(name: &str, extra: &[&str], watches: Option<u16>) -> Option<RedisServer> {
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
            watches,
        };
        server.run(false);
        Some(server)
    }

    /// Starts a Redis Sentinel (`redis-server --sentinel`) that watches
    /// `master` under the name `mymaster`, judges it down after 1 s
    /// without an answer, and fails over alone (quorum 1).
    pub fn sentinel(name: &str, master: &RedisServer) -> Option<RedisServer> {
        RedisServer::launch(name, &[], Some(master.port))
    }

    /// The master's port as this sentinel names it now.
    pub fn master_port(&self) -> Option<u16> {
        let mut con = self.connection();
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query(&mut con)
            .ok()?;
        addr.map(|(_, port)| port)
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
                let ready = match self.watches {
                    None => "Ready to accept connections",
                    Some(_) => "+monitor master mymaster",
                };
                if text.contains(ready) {
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
        if let Some(master) = self.watches {
            let conf = self.dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor mymaster 127.0.0.1 {master} 1\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 10000\n"
                ),
            )
            .unwrap();
            return Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&self.dir)
                .arg("--logfile")
                .arg(log)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server --sentinel");
        }
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

/// Waits until `done` says so, polling every 50 ms; fails the test naming
/// `what` at `deadline`.
pub fn wait_until(what: &str, deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis Cluster of three masters on loopback, made with `redis-cli
/// --cluster create` (None, with the reason printed, when redis-server or
/// redis-cli is missing outside CI).
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
}

impl Cluster {
    pub fn start(name: &str) -> Option<Cluster> {
        if !available(name) {
            return None;
        }
        if !real::runs("redis-cli", "--version") {
            real::skip(
                name,
                "redis-cli is not installed (apt-get install redis-tools)",
            );
            return None;
        }
        let mut nodes = Vec::new();
        for i in 0..3 {
            // The cluster bus port is set: the default, port + 10000, can be
            // past 65535 for a free port.
            let bus = free_port().to_string();
            let node = RedisServer::start_with(
                &format!("{name}-{i}"),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    &bus,
                ],
            )?;
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.connection())
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never got ready:\n{info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(Cluster { nodes })
    }

    /// The cluster's URL, naming two of its three nodes (the client finds
    /// the third).
    pub fn url(&self) -> String {
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    /// The node that holds `key`'s slot.
    pub fn node_for(&self, key: &str) -> &RedisServer {
        let mut con = self.nodes[0].connection();
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut con)
            .unwrap();
        let ranges: Vec<(i64, i64, (String, u16))> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<Vec<Vec<redis::Value>>>(&mut con)
            .unwrap()
            .into_iter()
            .map(|r| {
                let (start, end) = (r[0].clone(), r[1].clone());
                let primary: Vec<redis::Value> = redis::from_redis_value(r[2].clone()).unwrap();
                (
                    redis::from_redis_value(start).unwrap(),
                    redis::from_redis_value(end).unwrap(),
                    (
                        redis::from_redis_value(primary[0].clone()).unwrap(),
                        redis::from_redis_value(primary[1].clone()).unwrap(),
                    ),
                )
            })
            .collect();
        let (_, _, (_, port)) = ranges
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .expect("every slot is served");
        self.nodes.iter().find(|n| n.port == *port).unwrap()
    }

    /// How many keys each node holds.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| redis::cmd("DBSIZE").query(&mut n.connection()).unwrap())
            .collect()
    }
}
