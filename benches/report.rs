//! One command that shows where the engine stands: a short run of every
//! comparison of `benches/engine.rs`, printed as a table with ratios
//! (engine / baseline) and the targets, and resident memory per entry at
//! six table sizes (a hash table's memory per entry swings as its load
//! goes from full to half full at each doubling, so one size says little).
//!
//!     cargo bench --bench report
//!     GREYLIST_REPORT_ENTRIES=1000000 cargo bench --bench report   # smaller
//!
//! Each store is measured in a process of its own (this binary, started
//! again), so resident memory per entry is that store's alone. The rates
//! are measured in interleaved rounds (engine, mutex, dashmap, engine, ...)
//! and each store's median is reported, so that the machine's drift
//! (10-20% from one second to the next on a shared VM) hits the three
//! alike instead of deciding the ratios. The three stores of the large
//! table stay filled together for that (about 2.5 GB at 10 million
//! entries, most of it the mutex map's strings).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

use common::*;

/// Checks per second over `seconds` on `threads` threads.
fn rate(store: &dyn Store, input: Input<'_>, threads: usize, seconds: f64) -> f64 {
    // Calibrate with a short run, then run for about `seconds`.
    let probe = 20_000;
    let t = run_threads(store, input, threads, probe, T0 + 400);
    let per_thread = ((seconds / t) * probe as f64) as usize;
    let t = run_threads(store, input, threads, per_thread.max(probe), T0 + 400);
    (per_thread.max(probe) * threads) as f64 / t
}

fn make(name: &str, entries: usize) -> Box<dyn Store> {
    match name {
        "engine" => Box::new(engine(entries)),
        "mutex" => Box::new(MutexMap::new()),
        "dashmap" => Box::new(DashMapBaseline::new()),
        _ => panic!("unknown store {name}"),
    }
}

/// Rounds of each measurement, and seconds of one store's turn in a round.
const ROUNDS: usize = 5;
const TURN: f64 = 0.6;

/// Each of `stores` (by index) measured by `measure(store, threads)` on 1
/// and on 2 threads, in [`ROUNDS`] interleaved rounds: the medians.
fn interleaved(stores: usize, mut measure: impl FnMut(usize, usize) -> f64) -> Vec<(f64, f64)> {
    let mut runs = vec![(Vec::new(), Vec::new()); stores];
    for _ in 0..ROUNDS {
        for threads in [1, 2] {
            for (s, (one, two)) in runs.iter_mut().enumerate() {
                let r = measure(s, threads);
                if threads == 1 { one } else { two }.push(r);
            }
        }
    }
    runs.into_iter()
        .map(|(one, two)| (median(one), median(two)))
        .collect()
}

/// Child mode: fill one store with `entries` triplets and print its
/// resident bytes per entry; with `rates`, then answer each line
/// `THREADS SECONDS` on stdin with that many threads' checks per second
/// over about that long, until stdin ends.
fn child(name: &str, entries: usize, rates: bool) {
    // Generated as they are checked (see `Input::Generated`).
    let input = Input::Generated {
        n: entries,
        seed: 42,
    };
    let before = rss_bytes();
    let store = make(name, entries);
    fill(store.as_ref(), input);
    let bytes = rss_bytes().saturating_sub(before) as f64 / entries as f64;
    println!("{bytes:.1}");
    if rates {
        for line in std::io::stdin().lock().lines() {
            let line = line.unwrap();
            let (threads, seconds) = line.trim().split_once(' ').unwrap();
            let (threads, seconds) = (threads.parse().unwrap(), seconds.parse().unwrap());
            println!("{:.0}", rate(store.as_ref(), input, threads, seconds));
        }
    }
}

/// A store filled in a child process of its own, answering rate requests.
struct InChild {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl InChild {
    /// Starts the child and waits until it has filled its store: its
    /// resident bytes per entry.
    fn start(name: &str, entries: usize, rates: bool) -> (InChild, f64) {
        let mode = if rates { "--child" } else { "--memory" };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([mode, name, &entries.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut c = InChild { child, out };
        let bytes = c
            .line()
            .unwrap_or_else(|| panic!("{name}: no memory figure"));
        (c, bytes)
    }

    fn line(&mut self) -> Option<f64> {
        let mut line = String::new();
        self.out.read_line(&mut line).ok()?;
        line.trim().parse().ok()
    }

    /// Checks per second on `threads` threads over about `seconds`.
    fn rate(&mut self, threads: usize, seconds: f64) -> f64 {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{threads} {seconds}").unwrap();
        self.line().expect("the child answers a rate")
    }
}

impl Drop for InChild {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Resident bytes per entry of `name` with `entries` triplets.
fn memory_of(name: &str, entries: usize) -> f64 {
    InChild::start(name, entries, false).1
}

fn ns_per(iterations: u64, f: impl FnMut(u64)) -> f64 {
    let mut f = f;
    let start = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [flag, name, n] = &args[..] {
        if flag == "--child" || flag == "--memory" {
            return child(name, n.parse().unwrap(), flag == "--child");
        }
    }
    // `cargo test --benches` runs this with no --bench: a quick self-check.
    let quick = !std::env::args().any(|a| a == "--bench");
    let big: usize = std::env::var("GREYLIST_REPORT_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 10_000_000 });
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    println!(
        "greylist {} on {} cores ({cpu}); {} entries for the large table",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        big
    );

    let names = ["engine", "mutex", "dashmap"];
    let turn = if quick { 0.05 } else { TURN };

    // Hot set: 1,000 known triplets over and over.
    let hot = triplets(1000, 9);
    let hot_stores: Vec<_> = names.iter().map(|n| make(n, 1000)).collect();
    for store in &hot_stores {
        fill(store.as_ref(), Input::Prepared(&hot));
    }
    let hot_rates = interleaved(names.len(), |s, threads| {
        rate(hot_stores[s].as_ref(), Input::Prepared(&hot), threads, turn)
    });
    drop(hot_stores);

    // Large table, each store in its own process, filled one after another
    // (a store's fill does not share the CPU with another's), then measured
    // in interleaved rounds.
    let mut children = Vec::new();
    let mut large_bytes = Vec::new();
    for name in names {
        let (child, bytes) = InChild::start(name, big, true);
        children.push(child);
        large_bytes.push(bytes);
    }
    let large_rates = interleaved(names.len(), |s, threads| children[s].rate(threads, turn));
    drop(children);
    let large: Vec<(f64, f64, f64)> = large_bytes
        .iter()
        .zip(&large_rates)
        .map(|(&b, &(one, two))| (b, one, two))
        .collect();

    // Memory at six sizes, tenths of the large table's (1, 2, 4, 6, 8 and
    // 10 million by default; the largest is the large table's own figure).
    let sizes: Vec<usize> = [1, 2, 4, 6, 8, 10].map(|m| m * big / 10).to_vec();
    let memory: Vec<(usize, f64, f64)> = sizes
        .iter()
        .map(|&n| {
            if n == big {
                (n, large[0].0, large[2].0)
            } else {
                (n, memory_of("engine", n), memory_of("dashmap", n))
            }
        })
        .collect();

    // New triplets, key derivation, and the C ABI's cost over the Rust API.
    let fresh = triplets(if quick { 10_000 } else { 1_000_000 }, 77);
    let e = engine(fresh.len());
    let insert_ns = ns_per(fresh.len() as u64, |i| {
        std::hint::black_box(Store::check(&e, &fresh[i as usize], T0));
    });
    let key_ns = ns_per(fresh.len() as u64, |i| {
        let t = &fresh[i as usize];
        std::hint::black_box(e.triplet_key(&t.ip, &t.sender, &t.recipient).unwrap());
    });
    let (rust_ns, c_ns) = c_abi_overhead(&hot, if quick { 10_000 } else { 3_000_000 });
    if quick {
        // A smoke run checks that every part runs; a short debug-build run's
        // figures would only mislead, so none are printed.
        println!("report: every measurement ran (smoke run; figures: cargo bench --bench report)");
        return;
    }

    let m = |x: f64| format!("{:.2} M/s", x / 1e6);
    println!("rates: each store's median of {ROUNDS} interleaved rounds of {TURN} s");
    println!();
    println!("| measurement | engine | Mutex<HashMap<String>> | DashMap<u128> | engine / mutex | engine / dashmap | target |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let row = |what: &str, e: f64, mx: f64, d: f64, target: &str| {
        println!(
            "| {what} | {} | {} | {} | {:.2}x | {:.2}x | {target} |",
            m(e),
            m(mx),
            m(d),
            e / mx,
            e / d
        );
    };
    row(
        &format!(
            "hot set (1,000), 1 thread ({:.0} ns a check)",
            1e9 / hot_rates[0].0
        ),
        hot_rates[0].0,
        hot_rates[1].0,
        hot_rates[2].0,
        "<= 110 ns a check",
    );
    row(
        "hot set (1,000), 2 threads",
        hot_rates[0].1,
        hot_rates[1].1,
        hot_rates[2].1,
        ">= 15 M/s total, >= 1.0x dashmap",
    );
    row(
        &format!("{big} entries, 1 thread"),
        large[0].1,
        large[1].1,
        large[2].1,
        "",
    );
    row(
        &format!("{big} entries, 2 threads"),
        large[0].2,
        large[1].2,
        large[2].2,
        ">= 4x mutex, >= 1.3x dashmap",
    );
    println!(
        "| resident bytes per entry at {big} | {:.1} | {:.1} | {:.1} | | | <= 48 (engine) |",
        large[0].0, large[1].0, large[2].0
    );
    println!();
    println!(
        "| entries | engine bytes per entry | DashMap<u128> bytes per entry | target (engine) |"
    );
    println!("| --- | --- | --- | --- |");
    for (n, engine, dashmap) in &memory {
        let target = if *n == big { "<= 48, <= 64" } else { "<= 64" };
        println!("| {n} | {engine:.1} | {dashmap:.1} | {target} |");
    }
    println!();
    println!("new triplet (insert), 1 thread: {insert_ns:.0} ns");
    println!("key derivation (normalise + keyed hash): {key_ns:.0} ns");
    println!(
        "one check, hot set: Rust API {rust_ns:.0} ns, C ABI {c_ns:.0} ns: +{:.1}% (target <= 15%)",
        100.0 * (c_ns - rust_ns) / rust_ns
    );
}

/// ns per check through the Rust API and through `greylist_engine_check`,
/// on the same hot set, interleaved in rounds so drift hits both alike.
fn c_abi_overhead(set: &[Triplet], iterations: u64) -> (f64, f64) {
    let rust = default_engine();
    fill(&rust, Input::Prepared(set));
    let through_c = CAbiEngine::new(set);
    let (mut rust_ns, mut c_ns) = (0.0, 0.0);
    for _ in 0..5 {
        rust_ns += ns_per(iterations / 5, |i| {
            std::hint::black_box(Store::check(
                &rust,
                &set[(i as usize * 7) % set.len()],
                T0 + 400,
            ));
        });
        c_ns += ns_per(iterations / 5, |i| {
            std::hint::black_box(through_c.check_index(i as usize * 7, T0 + 400));
        });
    }
    (rust_ns / 5.0, c_ns / 5.0)
}
