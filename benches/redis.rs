//! Checks per second through one engine on Redis at 8 concurrent callers,
//! side by side with `redis-benchmark` calling a trivial EVALSHA (`return
//! 1`) at the same concurrency against the same private redis-server, in
//! one run: the limit of this machine's Redis for one script call per
//! request. Rounds alternate between the two, and the medians are compared.
//!
//!     cargo bench --bench redis [-- SECONDS_PER_ROUND [ROUNDS]]   (default 5, 3)
//!
//! Every engine check is a round trip (the pass cache is off) running the
//! real script on random triplets, most of them new: two GETs and one or
//! two SETs with TTLs inside the script. Run with no arguments (as
//! `cargo test --benches` does), it checks itself briefly; without
//! redis-server and redis-benchmark it says so (and fails under CI=true).

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greylist::{Config, Engine, Reason, Secret};

mod common;
#[path = "../tests/support/redis.rs"]
mod redis_server;
#[path = "../tests/support/rng.rs"]
mod rng;

use common::median;
use redis_server::{real, RedisServer};
use rng::Rng;

const CALLERS: usize = 8;

/// redis-benchmark's requests per second for `EVALSHA` of `script` with
/// `args` (`__rand_int__` in them is replaced by random numbers).
fn redis_benchmark(port: u16, requests: u64, script: &str, args: &[&str]) -> f64 {
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query(&mut con)
        .unwrap();
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &CALLERS.to_string(), "-n", &requests.to_string()])
        .args(["-r", "1000000", "-q", "EVALSHA", &sha])
        .args(args)
        .output()
        .expect("run redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    // "EVALSHA ...: 81234.57 requests per second, p50=0.071 msec"
    let line = text
        .split(['\r', '\n'])
        .rfind(|l| l.contains("requests per second"))
        .unwrap_or_else(|| panic!("redis-benchmark printed: {text}"));
    line.split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line:?}"))
}

/// The engine's checks per second at `CALLERS` threads for `secs`.
fn engine_rate(engine: &Arc<Engine>, secs: f64, round: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..CALLERS as u64)
        .map(|t| {
            let (engine, done) = (engine.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15u64 ^ (round << 32) ^ (t + 1));
                let mut n = 0u64;
                while Instant::now() < until {
                    let x = rng.next();
                    let ip = format!("10.{}.{}.{}", (x >> 8) & 255, (x >> 16) & 255, 1 + x % 254);
                    let sender = format!("user{}@sender{}.example", (x >> 24) % 100_000, x % 997);
                    let rcpt = format!("rcpt{}@example.net", (x >> 40) % 10_000);
                    let v = engine
                        .check(&ip, &sender, &rcpt, 1_700_000_000 + (x >> 60) as i64)
                        .unwrap();
                    assert_ne!(v.reason, Reason::StoreUnavailable, "Redis failed");
                    n += 1;
                }
                done.fetch_add(n, Relaxed);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    done.load(Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let numbers: Vec<f64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let secs = if full {
        numbers.first().copied().unwrap_or(5.0)
    } else {
        0.2
    };
    let rounds = if full {
        numbers.get(1).copied().unwrap_or(3.0) as usize
    } else {
        1
    };
    if !real::runs("redis-benchmark", "--version") {
        real::skip(
            "the Redis bench",
            "redis-benchmark is not installed (apt-get install redis-server)",
        );
        return;
    }
    let Some(server) = RedisServer::start("bench") else {
        return;
    };
    let port = server.port;
    let config = Config::builder()
        .redis(&server.url())
        .shared_secret(Secret::from_bytes(*b"bench-secret-16b"))
        .pass_cache_entries(0)
        .redis_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let engine = Arc::new(Engine::new(config));
    // Warm up: connections opened, script loaded.
    engine_rate(&engine, 0.2, 99);

    // The check script as redis-benchmark can call it: random keys, the
    // default settings, one call per request on each of its connections.
    let settings =
        greylist::store::redis::script_settings(&Config::default()).map(|v| v.to_string());
    let mut check_args = vec![
        "2",
        "t:__rand_int__",
        "c:__rand_int__",
        "check",
        "1700000000",
    ];
    check_args.extend(settings.iter().map(String::as_str));
    check_args.push("192.0.2.0/24");
    let (mut bench, mut ours, mut script) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // As many requests as the engine managed in a round, so all run
        // about as long.
        let rate = engine_rate(&engine, secs, round as u64);
        ours.push(rate);
        let n = ((rate * secs) as u64).max(1000);
        bench.push(redis_benchmark(port, n, "return 1", &["0"]));
        script.push(redis_benchmark(
            port,
            n,
            greylist::store::redis::SCRIPT,
            &check_args,
        ));
    }
    let (b, o) = (median(bench.clone()), median(ours.clone()));
    let stats = engine.stats();
    assert_eq!(stats.store_errors + stats.store_timeouts, 0);
    if !full {
        // A smoke run checks that every part runs; its figures would only
        // mislead, so none are printed.
        println!(
            "redis bench: every measurement ran (smoke run; figures: cargo bench --bench redis)"
        );
        return;
    }
    println!("Redis at {CALLERS} concurrent callers, {rounds} round(s) of {secs} s, medians:");
    println!("| client | calls/s | rounds |");
    println!("|---|---:|---|");
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| redis-benchmark, EVALSHA of `return 1` | {b:.0} | {} |",
        show(&bench)
    );
    println!(
        "| redis-benchmark, EVALSHA of the check script (random keys) | {:.0} | {} |",
        median(script.clone()),
        show(&script)
    );
    println!(
        "| greylist engine, one check (EVALSHA of the check script, pipelined) | {o:.0} | {} |",
        show(&ours)
    );
    println!(
        "engine / redis-benchmark: {:.0}% (target >= 70%); {} round trips, {} errors, {} timeouts",
        100.0 * o / b,
        stats.store_round_trips,
        stats.store_errors,
        stats.store_timeouts
    );
}
