//! Criterion benchmarks of one check (normalise + key + table update), the
//! engine against the maps an embedder would otherwise write, at 1 and 2
//! threads: a hot set of known triplets, large tables (1 and 10 million
//! entries, random known triplets), new triplets arriving, the key
//! derivation alone, and one call through the C ABI.
//!
//!     cargo bench --bench engine                  # everything
//!     cargo bench --bench engine -- hot_set       # one group
//!
//! `cargo bench --bench report` prints the same comparisons as one table.

mod common;

use std::time::Duration;

use common::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn stores() -> Vec<(&'static str, Box<dyn Store>)> {
    vec![
        (
            "engine",
            Box::new(engine(if quick() { 10_000 } else { 10_000_000 })) as Box<dyn Store>,
        ),
        ("mutex_hashmap_string", Box::new(MutexMap::new())),
        ("dashmap_u128", Box::new(DashMapBaseline::new())),
    ]
}

fn table_group(c: &mut Criterion, group_name: &str, entries: usize) {
    // A hot set is prepared; a large table's triplets are generated as
    // they are checked (see `Input::Generated`).
    let hot;
    let input = if entries <= 1000 {
        hot = triplets(entries, 42);
        Input::Prepared(&hot)
    } else {
        Input::Generated {
            n: entries,
            seed: 42,
        }
    };
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for (name, store) in stores() {
        fill(store.as_ref(), input);
        for threads in [1, 2] {
            group.bench_function(BenchmarkId::new(name, format!("{threads}_threads")), |b| {
                b.iter_custom(|iters| {
                    let per = (iters as usize).div_ceil(threads);
                    Duration::from_secs_f64(run_threads(
                        store.as_ref(),
                        input,
                        threads,
                        per,
                        T0 + 400,
                    ))
                })
            });
        }
    }
    group.finish();
}

/// `cargo test --benches` runs each benchmark once, without `--bench`:
/// then the tables are small, so the suite stays quick.
fn quick() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

fn hot_set(c: &mut Criterion) {
    table_group(c, "hot_set_1000", 1000);
}

fn large_tables(c: &mut Criterion) {
    if quick() {
        return table_group(c, "known_10k", 10_000);
    }
    table_group(c, "known_1m", 1_000_000);
    if std::env::var_os("GREYLIST_BENCH_SKIP_10M").is_none() {
        table_group(c, "known_10m", 10_000_000);
    }
}

fn inserts(c: &mut Criterion) {
    let fresh = triplets(if quick() { 10_000 } else { 2_000_000 }, 7);
    let mut group = c.benchmark_group("new_triplets");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("engine", |b| {
        b.iter_custom(|iters| {
            let e = engine(fresh.len());
            let n = (iters as usize).min(fresh.len());
            let start = std::time::Instant::now();
            for t in &fresh[..n] {
                std::hint::black_box(Store::check(&e, t, T0));
            }
            start.elapsed().mul_f64(iters as f64 / n as f64)
        })
    });
    group.finish();
}

fn key_derivation(c: &mut Criterion) {
    let e = engine(1000);
    let t = &triplets(1, 3)[0];
    c.bench_function("key_derivation", |b| {
        b.iter(|| {
            e.triplet_key(std::hint::black_box(&t.ip), &t.sender, &t.recipient)
                .unwrap()
        })
    });
}

fn c_abi(c: &mut Criterion) {
    let set = triplets(1000, 11);
    let through_c = CAbiEngine::new(&set);
    let engine = default_engine();
    fill(&engine, Input::Prepared(&set));
    let mut group = c.benchmark_group("one_check_hot_set");
    let mut i = 0;
    group.bench_function("rust_api", |b| {
        b.iter(|| {
            i = (i + 7) % set.len();
            Store::check(&engine, &set[i], T0 + 400)
        })
    });
    group.bench_function("c_abi", |b| {
        b.iter(|| {
            i = (i + 7) % set.len();
            through_c.check_index(i, T0 + 400)
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    hot_set,
    key_derivation,
    c_abi,
    inserts,
    large_tables
);
criterion_main!(benches);
