//! Saves and loads a snapshot of N entries (default 10 million) and prints
//! seconds and MB/s, then the check throughput of one thread while another
//! saves, as a ratio of its throughput alone.
//!
//!     cargo bench --bench snapshot                 # 10 million entries
//!     GREYLIST_BENCH_ENTRIES=1000000 cargo bench --bench snapshot
//!
//! Targets on a 2-core machine: save <= 1 s and load <= 1.5 s for 10
//! million entries; checks during a save keep >= 80% of their throughput.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greylist::{Config, Engine};

const T0: i64 = 1_700_000_000;

/// Triplet `i`: eight triplets per /24 client network, distinct senders
/// and recipients, written into reusable buffers.
fn triplet(i: u64, ip: &mut String, rcpt: &mut String) {
    ip.clear();
    rcpt.clear();
    let net = i / 8;
    write!(
        ip,
        "{}.{}.{}.{}",
        1 + (net >> 16) % 220,
        (net >> 8) & 255,
        net & 255,
        i % 8
    )
    .unwrap();
    let mut n = i;
    rcpt.push('r');
    loop {
        rcpt.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            break;
        }
    }
    rcpt.push_str("@example.net");
}

fn fill(engine: &Engine, n: u64) {
    let (mut ip, mut rcpt) = (String::new(), String::new());
    for i in 0..n {
        triplet(i, &mut ip, &mut rcpt);
        engine.check(&ip, "sender@example.org", &rcpt, T0).unwrap();
        if i % 3 == 0 {
            engine
                .check(&ip, "sender@example.org", &rcpt, T0 + 300)
                .unwrap();
        }
    }
}

/// Checks per second of one thread over `for_at_least`, on known triplets.
fn checks_per_second(engine: &Engine, n: u64, stop: &AtomicBool, for_at_least: Duration) -> f64 {
    let (mut ip, mut rcpt) = (String::new(), String::new());
    let start = Instant::now();
    let mut done = 0u64;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) || start.elapsed() < for_at_least {
        for _ in 0..1000 {
            i = (i + 7_919) % n;
            triplet(i, &mut ip, &mut rcpt);
            engine
                .check(&ip, "sender@example.org", &rcpt, T0 + 400)
                .unwrap();
        }
        done += 1000;
        if stop.load(Ordering::Relaxed) && start.elapsed() >= for_at_least {
            break;
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("GREYLIST_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 10_000_000 });
    let dir = std::env::temp_dir().join(format!("greylist-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.snap");
    // Auto-whitelisting off, so every triplet stays an entry of its own.
    let config = Config::builder()
        .max_entries(n.max(1) * 2)
        .awl_threshold(0)
        .build()
        .unwrap();

    // A smoke run (`cargo test --benches`) checks that every part runs;
    // its figures would only mislead, so only a release run prints them.
    macro_rules! report {
        ($($arg:tt)*) => {
            if !quick {
                println!($($arg)*);
            }
        };
    }
    let t = Instant::now();
    let engine = Arc::new(Engine::new(config.clone()));
    fill(&engine, n);
    let entries = engine.len();
    report!(
        "snapshot bench: {entries} entries (filled in {:.1} s)",
        t.elapsed().as_secs_f64()
    );

    // The first save writes a new file; later ones rewrite the previous
    // generation's file in place (what the maintenance thread does).
    let (mut save, mut mb) = (0.0, 0.0);
    for what in ["new file", "rewriting the previous generation", "again"] {
        let t = Instant::now();
        engine.save(&path).unwrap();
        save = t.elapsed().as_secs_f64();
        mb = std::fs::metadata(&path).unwrap().len() as f64 / 1e6;
        report!(
            "save ({what}): {save:.3} s  {mb:.0} MB  {:.0} MB/s  (includes fsync)",
            mb / save
        );
    }

    let t = Instant::now();
    let loaded = Engine::load(&path, config).unwrap();
    let load = t.elapsed().as_secs_f64();
    assert_eq!(loaded.len(), entries);
    report!("load: {load:.3} s  {:.0} MB/s", mb / load);
    drop(loaded);

    // One thread checks alone, then while another thread saves in a loop.
    let min = Duration::from_millis(if quick { 50 } else { 2000 });
    let alone = checks_per_second(&engine, n, &AtomicBool::new(true), min);
    let stop = Arc::new(AtomicBool::new(false));
    let saves = Arc::new(AtomicU64::new(0));
    let saver = {
        let (engine, stop, saves, path) =
            (engine.clone(), stop.clone(), saves.clone(), path.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                engine.save(&path).unwrap();
                saves.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Measure for at least one whole save.
    while saves.load(Ordering::Relaxed) == 0 && !quick {
        let during = checks_per_second(&engine, n, &AtomicBool::new(true), min);
        report!("  (checks during a save, warm-up: {during:.0}/s)");
    }
    let during = checks_per_second(
        &engine,
        n,
        &AtomicBool::new(true),
        min.max(Duration::from_secs_f64(save * 2.0)),
    );
    stop.store(true, Ordering::Relaxed);
    saver.join().unwrap();
    report!(
        "checks, 1 thread: alone {alone:.0}/s, while another thread saves {during:.0}/s: {:.0}% ({} saves)",
        100.0 * during / alone,
        saves.load(Ordering::Relaxed)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    if quick {
        println!("snapshot bench: every measurement ran (smoke run; figures: cargo bench --bench snapshot)");
    }
}
