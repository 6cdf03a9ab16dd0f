//! Several threads hammer overlapping triplets; afterwards the counters add
//! up exactly and every triplet is in a state the sequential rules allow.

use std::sync::{Arc, Barrier};
use std::thread;

use greylist::{Config, Engine, Reason};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

const T0: i64 = 1_700_000_000;
const THREADS: usize = 4;
const TRIPLETS: usize = 500;

/// A sender name without digits (digit runs are folded by normalisation).
fn name(i: usize) -> String {
    format!(
        "{}{}",
        char::from(b'a' + (i % 26) as u8),
        char::from(b'a' + (i / 26 % 26) as u8)
    )
}

fn triplet(i: usize) -> (String, String, String) {
    // Each triplet on its own /24, so auto-whitelisting stays out of the way.
    (
        format!("10.{}.{}.1", i / 256, i % 256),
        format!("sender{}@example.org", char::from(b'a' + (i % 26) as u8)),
        format!("rcpt{}@example.net", char::from(b'a' + (i / 26 % 26) as u8)),
    )
}

#[test]
fn phases_give_exactly_one_new_and_one_retried_per_triplet() {
    // 80 attempts of each triplet in one second would be blasting: this
    // test is about counts under contention, so copies do not block here.
    let config = Config::builder().shards(8).blast_copies(0).build();
    let engine = Arc::new(Engine::new(config.unwrap()));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (engine, barrier) = (engine.clone(), barrier.clone());
            thread::spawn(move || {
                let mut counts = [[0u64; 16]; 3];
                for (phase, now) in [T0, T0 + 300, T0 + 1000].into_iter().enumerate() {
                    barrier.wait();
                    for round in 0..20 {
                        for j in 0..TRIPLETS {
                            // Each thread walks the triplets in its own order.
                            let i = (j * 7 + t * 131 + round * 17) % TRIPLETS;
                            let (c, s, r) = triplet(i);
                            let v = engine.check(&c, &s, &r, now).unwrap();
                            counts[phase][v.reason as usize] += 1;
                        }
                    }
                }
                counts
            })
        })
        .collect();
    let mut totals = [[0u64; 16]; 3];
    for h in handles {
        for (total, counts) in totals.iter_mut().zip(h.join().unwrap()) {
            for (a, b) in total.iter_mut().zip(counts) {
                *a += b;
            }
        }
    }
    let per_phase = (THREADS * 20 * TRIPLETS) as u64;
    // Phase 0: the first attempt of each triplet is new, every other one early.
    assert_eq!(totals[0][Reason::New as usize], TRIPLETS as u64);
    assert_eq!(
        totals[0][Reason::EarlyRetry as usize],
        per_phase - TRIPLETS as u64
    );
    // Phase 1: exactly one retry per triplet made it pass; the rest see it passed.
    assert_eq!(totals[1][Reason::Retried as usize], TRIPLETS as u64);
    assert_eq!(
        totals[1][Reason::Passed as usize],
        per_phase - TRIPLETS as u64
    );
    // Phase 2: all passed.
    assert_eq!(totals[2][Reason::Passed as usize], per_phase);

    let stats = engine.stats();
    assert_eq!(stats.checks, 3 * per_phase);
    assert_eq!(stats.new_triplets, TRIPLETS as u64);
    assert_eq!(stats.retried, TRIPLETS as u64);
    assert_eq!(
        stats.early_retries + stats.passed + stats.new_triplets + stats.retried,
        stats.checks
    );
    assert_eq!(stats.entries, TRIPLETS as u64);
    for i in 0..TRIPLETS {
        let (c, s, r) = triplet(i);
        let st = engine.triplet_state(&c, &s, &r).unwrap().unwrap();
        assert!(st.passed);
        assert_eq!(
            (st.first_seen, st.last_seen),
            (T0 as u32, (T0 + 1000) as u32)
        );
    }
}

#[test]
fn chaotic_times_keep_states_valid_and_counts_exact() {
    // Low thresholds, so blocks and auto-whitelisting both happen.
    let config = Config::builder()
        .shards(4)
        .blast_threshold(5)
        .block_time(60)
        .awl_threshold(2);
    let engine = Arc::new(Engine::new(config.build().unwrap()));
    const POOL: usize = 400;
    const CHECKS: usize = 50_000;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let engine = engine.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1));
                let mut reasons = [0u64; 16];
                for k in 0..CHECKS {
                    let x = rng.next();
                    // Clients on three /24s; time moves forward (10,000 s,
                    // so the auto-whitelist's one pass an hour is earned
                    // twice) with jitter of up to 20 s back and forth
                    // between threads.
                    let i = (x % POOL as u64) as usize;
                    let ip = format!("192.0.{}.{}", i % 3, x >> 60);
                    let now = T0 + (k / 5) as i64 + ((x >> 20) % 20) as i64;
                    // New senders every 2,000 s: passes keep coming.
                    let epoch = k / 10_000;
                    let v = engine
                        .check(
                            &ip,
                            &format!("{}{epoch}@example.org", name(i)),
                            "r@example.net",
                            now,
                        )
                        .unwrap();
                    reasons[v.reason as usize] += 1;
                }
                reasons
            })
        })
        .collect();
    let mut reasons = [0u64; 16];
    for h in handles {
        for (a, b) in reasons.iter_mut().zip(h.join().unwrap()) {
            *a += b;
        }
    }
    let stats = engine.stats();
    assert_eq!(stats.checks, (THREADS * CHECKS) as u64);
    for reason in Reason::ALL {
        assert_eq!(stats.reason(reason), reasons[reason as usize], "{reason:?}");
    }
    assert!(
        stats.blocked > 0 && stats.early_retries > 0 && stats.auto_whitelisted > 0,
        "{stats:?}"
    );
    for (i, epoch) in (0..POOL).flat_map(|i| (0..CHECKS / 10_000).map(move |e| (i, e))) {
        let ip = format!("192.0.{}.1", i % 3);
        let sender = format!("{}{epoch}@example.org", name(i));
        if let Some(st) = engine.triplet_state(&ip, &sender, "r@example.net").unwrap() {
            let (first, last) = (i64::from(st.first_seen), i64::from(st.last_seen));
            assert!((T0..T0 + 10_020).contains(&first), "{st:?}");
            assert!(last >= first, "{st:?}");
            // Passed only if some attempt came at least a delay later.
            assert!(!st.passed || last - first >= 300, "{st:?}");
            assert!(st.passed || st.early_retries > 0 || last == first, "{st:?}");
        }
    }
}

/// Issue 15, item 10: after the callback was replaced, checks in flight on
/// other threads still called the old one (a use-after-free of a C host's
/// `user_data`). Each callback here owns a flag its replacer sets as soon
/// as `on_event` returns; a call that finds its flag set is counted.
#[test]
fn a_replaced_callback_is_never_called_after_on_event_returns() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let e = Arc::new(Engine::new(Config::default()));
    let late_calls = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let checkers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (e, stop) = (e.clone(), stop.clone());
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (c, s, r) = triplet((t * 100_000 + i as usize) % 50_000);
                    e.check(&c, &s, &r, T0 + i as i64).unwrap();
                    i += 1;
                }
            })
        })
        .collect();
    for _ in 0..2_000 {
        let retired = Arc::new(AtomicBool::new(false));
        let before = calls.load(Ordering::Relaxed);
        let (flag, late, n) = (retired.clone(), late_calls.clone(), calls.clone());
        e.on_event(Some(Box::new(move |_| {
            n.fetch_add(1, Ordering::Relaxed);
            // Stay a moment, so replacements meet calls in flight.
            std::hint::black_box((0..200).sum::<u64>());
            if flag.load(Ordering::SeqCst) {
                late.fetch_add(1, Ordering::Relaxed);
            }
        })))
        .unwrap();
        // Until this callback is being called (or 2 s): a bare yield let
        // whole rounds pass with every checker descheduled (under Wine).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while calls.load(Ordering::Relaxed) == before && std::time::Instant::now() < until {
            std::thread::yield_now();
        }
        e.on_event(None).unwrap();
        // From here on, that callback must never run again.
        retired.store(true, Ordering::SeqCst);
    }
    stop.store(true, Ordering::Relaxed);
    for c in checkers {
        c.join().unwrap();
    }
    assert!(calls.load(Ordering::Relaxed) > 1000, "the callbacks ran");
    assert_eq!(
        late_calls.load(Ordering::Relaxed),
        0,
        "calls after replacement"
    );
}

#[test]
fn a_callback_cannot_replace_itself() {
    use std::sync::Mutex;
    let e = Arc::new(Engine::new(Config::default()));
    let seen = Arc::new(Mutex::new(None));
    let (inner, out) = (Arc::downgrade(&e), seen.clone());
    e.on_event(Some(Box::new(move |_| {
        if let Some(e) = inner.upgrade() {
            *out.lock().unwrap() = Some(e.on_event(None));
        }
    })))
    .unwrap();
    e.check("192.0.2.1", "a@x.org", "b@y.net", T0).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        Some(Err(greylist::CallbackError::InsideCallback))
    );
    // It may check again from inside (events nest), and is still set.
    e.check("192.0.2.1", "a@x.org", "b@y.net", T0 + 1).unwrap();
    e.on_event(None).unwrap();
}
