//! DNS servers for the SPF tests and benchmark: a real one (Debian's
//! dnsmasq, authoritative for `.example` on a loopback port, with the
//! records a test gives), and one that never answers.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// dnsmasq in the foreground, killed when dropped (also when a test
/// fails).
pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

/// Where dnsmasq is, if installed (`/usr/sbin` is not on every PATH).
pub fn dnsmasq_path() -> Option<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Dnsmasq {
    /// Starts dnsmasq in `dir` on a free loopback port, answering only
    /// from `records` (dnsmasq options such as
    /// `txt-record=a.example,"v=spf1 -all"`), NXDOMAIN for any other
    /// `.example` name, with a TTL of 300 s.
    pub fn start(dir: &Path, records: &[String]) -> Dnsmasq {
        Dnsmasq::start_with_ttl(dir, records, 300)
    }

    /// [`Dnsmasq::start`] with answers that live `ttl` seconds.
    pub fn start_with_ttl(dir: &Path, records: &[String], ttl: u32) -> Dnsmasq {
        let bin = dnsmasq_path().expect("dnsmasq is installed");
        std::fs::create_dir_all(dir).unwrap();
        for _ in 0..20 {
            let port = free_udp_and_tcp_port();
            let conf = dir.join("dnsmasq.conf");
            let log = dir.join("dnsmasq.log");
            let _ = std::fs::remove_file(&log);
            let mut text = format!(
                "no-resolv\nno-hosts\nport={port}\nlisten-address=127.0.0.1\n\
                 bind-interfaces\nlocal-ttl={ttl}\nlocal=/example/\nlog-queries\nlog-facility={}\n",
                log.display()
            );
            for r in records {
                text.push_str(r);
                text.push('\n');
            }
            std::fs::write(&conf, text).unwrap();
            let mut child = Command::new(&bin)
                .arg("--keep-in-foreground")
                .arg(format!("--conf-file={}", conf.display()))
                .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            // Ready when it answers on TCP (it binds UDP and TCP together).
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(addr).is_ok() {
                    return Dnsmasq { child, addr, log };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Lost a race for the port, or failed: say why on the last try.
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            eprintln!(
                "dnsmasq did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!("dnsmasq did not start on any port");
    }

    /// How many queries of `qtype` for `name` it has logged.
    pub fn queries(&self, qtype: &str, name: &str) -> usize {
        let wanted = format!("query[{qtype}] {name} from");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&wanted))
            .count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 (at the moment).
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A DNS server that reads every query and never answers, on UDP and TCP
/// (a TCP connection is accepted and left hanging). It counts the queries
/// per name: distinct query ids, as a resolver's retransmissions of one
/// query keep its id. Stops when dropped.
pub struct Silent {
    pub addr: SocketAddr,
    queries: Arc<Mutex<HashMap<String, HashSet<u16>>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Silent {
    pub fn start() -> Silent {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let queries: Arc<Mutex<HashMap<String, HashSet<u16>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (q, s) = (queries.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, _)) = udp.recv_from(&mut buf) {
                    if let Some(name) = query_name(&buf[..n]) {
                        let id = u16::from_be_bytes([buf[0], buf[1]]);
                        q.lock().unwrap().entry(name).or_default().insert(id);
                    }
                }
            }
        });
        let s = stop.clone();
        let acceptor = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok((conn, _)) = tcp.accept() {
                    held.push(conn);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Silent {
            addr,
            queries,
            stop,
            threads: vec![reader, acceptor],
        }
    }

    /// Queries (distinct ids) for `name` seen so far over UDP.
    pub fn queries(&self, name: &str) -> usize {
        self.queries
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, HashSet::len)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The question's name of a DNS query (lower-cased, no final dot).
fn query_name(packet: &[u8]) -> Option<String> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            break;
        }
        let label = packet.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + len;
    }
    Some(labels.join("."))
}
