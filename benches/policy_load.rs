//! A load generator for policy servers, as Postfix drives them: N
//! persistent connections, one request in flight on each, random triplets;
//! it prints requests per second and p50/p99 latency. Also a do-nothing
//! server that answers `action=DUNNO` at once (the limit of loopback here).
//!
//!     cargo bench --bench policy_load -- load ADDR CONNECTIONS SECONDS [MAX_REQUESTS]
//!     cargo bench --bench policy_load -- dunno ADDR
//!
//! `GREYLIST_LOAD_SEED=N` sends another set of triplets; a run with the
//! same seed and MAX_REQUESTS sends the same ones again.
//!
//! `benches/policyd-vs-postgrey.sh` runs it against greylist-policyd,
//! postgrey and the do-nothing server and prints the ratios. Run with no
//! arguments (as `cargo test --benches` does), it checks itself briefly.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[path = "../tests/support/rng.rs"]
mod rng;
use rng::Rng;

fn request(rng: &mut Rng) -> String {
    let r = rng.next();
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         client_address={}.{}.{}.{}\nclient_name=unknown\nreverse_client_name=unknown\n\
         helo_name=mx{}.example.com\nsender=user{}@sender{}.example\n\
         recipient=rcpt{}@example.net\nrecipient_count=0\nqueue_id=\ninstance={:x}\nsize=0\n\n",
        1 + r % 223,
        (r >> 8) & 255,
        (r >> 16) & 255,
        1 + (r >> 24) % 254,
        r % 1000,
        (r >> 32) % 100_000,
        (r >> 20) % 1000,
        (r >> 40) % 10_000,
        r
    )
}

/// One connection's run: latencies in microseconds.
fn drive(addr: &str, seed: u64, until: Instant, max: u64) -> Result<Vec<u32>, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut rng = Rng(seed | 1);
    let mut latencies = Vec::new();
    let mut line = String::new();
    while Instant::now() < until && (latencies.len() as u64) < max {
        let req = request(&mut rng);
        let started = Instant::now();
        writer
            .write_all(req.as_bytes())
            .map_err(|e| e.to_string())?;
        // The answer: action=... then a blank line.
        let mut got_action = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("the server closed the connection".into());
            }
            if line.trim_end().is_empty() {
                break;
            }
            got_action |= line.starts_with("action=");
        }
        if !got_action {
            return Err("an answer without action=".into());
        }
        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    Ok(latencies)
}

/// `GREYLIST_LOAD_SEED`: another set of triplets (0, the default, is the
/// set every run sends; the same seed and request count send the same
/// triplets again, as retries).
fn seed_offset() -> u64 {
    std::env::var("GREYLIST_LOAD_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0, |s| s.wrapping_mul(0x2545_F491_4F6C_DD1D))
}

/// Runs `connections` clients for `seconds` (or `max` requests each) and
/// prints one line: requests/s, p50, p99.
fn load(addr: &str, connections: usize, seconds: f64, max: u64) -> Result<(f64, u32, u32), String> {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            let addr = addr.to_string();
            let seed = 0x9E37_79B9 * (c as u64 + 1) + seed_offset();
            std::thread::spawn(move || drive(&addr, seed, until, max))
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| "a client thread panicked")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let rate = all.len() as f64 / elapsed;
    println!(
        "{addr} connections={connections} requests={} req/s={rate:.0} p50_us={} p99_us={}",
        all.len(),
        pct(0.50),
        pct(0.99)
    );
    Ok((rate, pct(0.50), pct(0.99)))
}

/// A server that answers every request `action=DUNNO` at once.
fn dunno(listener: TcpListener) {
    for stream in listener.incoming().map_while(Result::ok) {
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let Ok(mut writer) = stream.try_clone() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line.trim_end().is_empty() => {
                        if writer.write_all(b"action=DUNNO\n\n").is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                }
            }
        });
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` (with whatever
    // test-harness arguments) does not, and then this only checks itself.
    let benching = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let args: Vec<&str> = if benching {
        args.iter().map(String::as_str).collect()
    } else {
        Vec::new()
    };
    let result = match args[..] {
        ["dunno", addr] => match TcpListener::bind(addr) {
            Ok(l) => {
                println!("dunno server on {}", l.local_addr().unwrap());
                dunno(l);
                Ok(())
            }
            Err(e) => Err(format!("{addr}: {e}")),
        },
        ["load", addr, conns, secs] | ["load", addr, conns, secs, _] => {
            let max = args.get(4).and_then(|m| m.parse().ok()).unwrap_or(u64::MAX);
            match (conns.parse(), secs.parse()) {
                (Ok(c), Ok(s)) => load(addr, c, s, max).map(|_| ()),
                _ => Err("CONNECTIONS and SECONDS must be numbers".into()),
            }
        }
        [] => {
            // Self-check: the generator against the do-nothing server.
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap().to_string();
            std::thread::spawn(move || dunno(l));
            load(&addr, 2, 0.2, 500).map(|(rate, _, _)| assert!(rate > 0.0))
        }
        _ => Err("usage: load ADDR CONNECTIONS SECONDS [MAX_REQUESTS] | dunno ADDR".into()),
    };
    if let Err(e) = result {
        eprintln!("policy_load: {e}");
        std::process::exit(1);
    }
}
