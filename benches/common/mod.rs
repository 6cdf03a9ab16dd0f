//! The workloads and baselines the engine benchmarks share: generated
//! triplets, and the two maps an embedder would otherwise write, applying
//! the same rules (`greylist::rules::triplet_step`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;

use dashmap::DashMap;

#[path = "../../tests/support/rng.rs"]
mod rng;
use greylist::rules::{triplet_step, TripletState};
use greylist::{Config, Engine, Verdict};
use rng::Rng;

pub const T0: i64 = 1_700_000_000;

/// A triplet as a mail server holds it.
#[derive(Clone)]
pub struct Triplet {
    pub ip: String,
    pub sender: String,
    pub recipient: String,
}

/// `n` distinct triplets, each on a /24 of its own, with realistic
/// addresses (some with tags and upper case, as real envelopes have).
pub fn triplets(n: usize, seed: u64) -> Vec<Triplet> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|i| {
            let x = rng.next();
            let net = i as u64;
            Triplet {
                ip: format!(
                    "{}.{}.{}.{}",
                    1 + (net >> 16) % 223,
                    (net >> 8) & 255,
                    net & 255,
                    1 + x % 254
                ),
                sender: format!(
                    "{}{}@Sender-{}.example.com",
                    name(x),
                    if x.is_multiple_of(3) { "+list" } else { "" },
                    name(x >> 20)
                ),
                recipient: format!("{}@example.net", name(i as u64)),
            }
        })
        .collect()
}

fn name(mut n: u64) -> String {
    let mut s = String::new();
    for _ in 0..6 {
        s.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
    }
    s
}

/// The engine, sized for `n` entries.
pub fn engine(n: usize) -> Engine {
    Engine::new(
        Config::builder()
            .max_entries((n as u64 * 2).max(1000))
            .awl_threshold(0)
            .build()
            .unwrap(),
    )
}

/// The engine at its defaults, as [`CAbiEngine`] makes it (a NULL config):
/// what the C ABI's cost is measured against, on the same table.
pub fn default_engine() -> Engine {
    Engine::new(Config::default())
}

/// What a naive embedder writes: one mutex around a map keyed by the
/// joined (lower-cased) triplet.
pub struct MutexMap {
    map: Mutex<HashMap<String, TripletState>>,
    config: Config,
}

/// A concurrent map keyed by the engine's 128-bit key (normalisation and
/// keyed hashing included in the cost).
pub struct DashMapBaseline {
    map: DashMap<u128, TripletState>,
    keys: Engine,
    config: Config,
}

pub trait Store: Sync {
    fn check(&self, t: &Triplet, now: i64) -> Verdict;
}

impl Store for Engine {
    fn check(&self, t: &Triplet, now: i64) -> Verdict {
        Engine::check(self, &t.ip, &t.sender, &t.recipient, now).unwrap()
    }
}

impl MutexMap {
    pub fn new() -> Self {
        MutexMap {
            map: Mutex::new(HashMap::new()),
            config: Config::default(),
        }
    }
}

impl Store for MutexMap {
    fn check(&self, t: &Triplet, now: i64) -> Verdict {
        let key = format!(
            "{}/{}/{}",
            t.ip,
            t.sender.to_lowercase(),
            t.recipient.to_lowercase()
        );
        let mut map = self.map.lock().unwrap();
        let state = map.get(&key).copied();
        let (next, verdict) = triplet_step(state, now as u32, &self.config);
        map.insert(key, next);
        verdict
    }
}

impl DashMapBaseline {
    pub fn new() -> Self {
        DashMapBaseline {
            map: DashMap::new(),
            keys: Engine::new(Config::default()),
            config: Config::default(),
        }
    }
}

impl Store for DashMapBaseline {
    fn check(&self, t: &Triplet, now: i64) -> Verdict {
        let key = self
            .keys
            .triplet_key(&t.ip, &t.sender, &t.recipient)
            .unwrap();
        let mut entry = self.map.entry(key).or_insert(TripletState {
            first_seen: 0,
            last_seen: 0,
            early_retries: 0,
            passed: false,
        });
        let known = (entry.first_seen != 0).then_some(*entry);
        let (next, verdict) = triplet_step(known, now as u32, &self.config);
        *entry = next;
        verdict
    }
}

/// Makes every triplet known and passed.
pub fn fill(store: &dyn Store, triplets: &[Triplet]) {
    for t in triplets {
        store.check(t, T0);
        store.check(t, T0 + 300);
    }
}

/// Runs `per_thread` checks on each of `threads` threads over `triplets`
/// (each thread from its own offset, a large odd stride so consecutive
/// checks miss the cache as real traffic does); returns the seconds taken.
pub fn run_threads(
    store: &dyn Store,
    triplets: &[Triplet],
    threads: usize,
    per_thread: usize,
    now: i64,
) -> f64 {
    let start = std::time::Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let n = triplets.len();
                let mut i = (t * 7919) % n;
                for _ in 0..per_thread {
                    std::hint::black_box(store.check(&triplets[i], now));
                    i = (i + 40_503) % n;
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

/// Resident memory of this process, in bytes.
pub fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .unwrap_or(0)
        * 1024
}

/// The engine through its C ABI, on triplets prepared as C strings once
/// (as a C mail server holds them), to measure the call's own cost.
pub struct CAbiEngine {
    handle: *mut greylist_c::greylist_engine,
    strings: Vec<[std::ffi::CString; 3]>,
}

// SAFETY: the C engine is documented thread-safe; the strings are only read.
unsafe impl Sync for CAbiEngine {}

impl CAbiEngine {
    /// A default engine, and `set` as C strings, every triplet made passed.
    pub fn new(set: &[Triplet]) -> Self {
        let mut handle = std::ptr::null_mut();
        // SAFETY: NULL config (defaults) and a writable out pointer.
        let status = unsafe { greylist_c::greylist_engine_new(std::ptr::null(), &mut handle) };
        assert_eq!(status, 0);
        let strings = set
            .iter()
            .map(|t| {
                [t.ip.clone(), t.sender.clone(), t.recipient.clone()]
                    .map(|s| std::ffi::CString::new(s).unwrap())
            })
            .collect();
        let e = CAbiEngine { handle, strings };
        for i in 0..set.len() {
            e.check_index(i, T0);
            e.check_index(i, T0 + 300);
        }
        e
    }

    /// Checks prepared triplet `i`.
    pub fn check_index(&self, i: usize, now: i64) -> greylist_c::greylist_verdict {
        let s = &self.strings[i % self.strings.len()];
        let mut v = greylist_c::greylist_verdict {
            action: 0,
            reason: 0,
            retry_after: 0,
            delayed: 0,
        };
        // SAFETY: a live engine, NUL-terminated strings, a writable verdict.
        let status = unsafe {
            greylist_c::greylist_engine_check(
                self.handle,
                s[0].as_ptr(),
                s[1].as_ptr(),
                s[2].as_ptr(),
                now,
                &mut v,
            )
        };
        assert_eq!(status, 0);
        v
    }
}

impl Drop for CAbiEngine {
    fn drop(&mut self) {
        // SAFETY: the engine came from greylist_engine_new and is freed once.
        unsafe { greylist_c::greylist_engine_free(self.handle) };
    }
}
