//! The workloads and baselines the engine benchmarks share: generated
//! triplets, and the two maps an embedder would otherwise write, applying
//! the same rules (`greylist::rules::triplet_step`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;

use dashmap::DashMap;

use greylist::rules::{triplet_step, TripletState};
use greylist::{Config, Engine, Verdict};

pub const T0: i64 = 1_700_000_000;

/// A triplet as a mail server holds it.
#[derive(Clone)]
pub struct Triplet {
    pub ip: String,
    pub sender: String,
    pub recipient: String,
}

/// `n` distinct triplets, each on a /24 of its own, with realistic
/// addresses (some with tags and upper case, as real envelopes have):
/// [`triplet`] `0..n`.
pub fn triplets(n: usize, seed: u64) -> Vec<Triplet> {
    (0..n)
        .map(|i| {
            let mut t = Triplet::empty();
            triplet(seed, i, &mut t);
            t
        })
        .collect()
}

impl Triplet {
    fn empty() -> Triplet {
        Triplet {
            ip: String::with_capacity(16),
            sender: String::with_capacity(48),
            recipient: String::with_capacity(32),
        }
    }
}

/// Writes triplet `i` of the set `seed` into `t` (its buffers reused): the
/// client on the `i`-th /24, the sender from a hash of `(seed, i)`.
pub fn triplet(seed: u64, i: usize, t: &mut Triplet) {
    let x = mix(seed ^ mix(i as u64));
    let net = i as u64;
    t.ip.clear();
    for (k, octet) in [
        1 + (net >> 16) % 223,
        (net >> 8) & 255,
        net & 255,
        1 + x % 254,
    ]
    .into_iter()
    .enumerate()
    {
        if k > 0 {
            t.ip.push('.');
        }
        push_decimal(&mut t.ip, octet);
    }
    t.sender.clear();
    push_name(&mut t.sender, x);
    if x.is_multiple_of(3) {
        t.sender.push_str("+list");
    }
    t.sender.push_str("@Sender-");
    push_name(&mut t.sender, x >> 20);
    t.sender.push_str(".example.com");
    t.recipient.clear();
    push_name(&mut t.recipient, i as u64);
    t.recipient.push_str("@example.net");
}

/// splitmix64's finaliser: a well-mixed 64-bit value of `z`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn push_decimal(s: &mut String, v: u64) {
    if v >= 100 {
        s.push(char::from(b'0' + (v / 100) as u8));
    }
    if v >= 10 {
        s.push(char::from(b'0' + (v / 10 % 10) as u8));
    }
    s.push(char::from(b'0' + (v % 10) as u8));
}

/// Six letters from `n`.
fn push_name(s: &mut String, mut n: u64) {
    for _ in 0..6 {
        s.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
    }
}

/// The triplets a run checks.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// Triplets prepared once: a hot set, which stays in the cache.
    Prepared(&'a [Triplet]),
    /// [`triplet`] `0..n` of the set `seed`, each written when it is
    /// checked into a buffer of the checking thread. A server checks the
    /// request it has just read, in its cache; ten million prepared
    /// triplets (three heap strings each, about 1.7 GB) would add about
    /// four cache misses a check of the benchmark's own, more than the
    /// store's own work, and unlike for each store (how they overlap with
    /// the store's misses depends on its code).
    Generated { n: usize, seed: u64 },
}

impl Input<'_> {
    pub fn len(&self) -> usize {
        match self {
            Input::Prepared(set) => set.len(),
            Input::Generated { n, .. } => *n,
        }
    }

    /// Triplet `i`, written into `scratch` if it is generated.
    pub fn get<'s>(&'s self, i: usize, scratch: &'s mut Triplet) -> &'s Triplet {
        match self {
            Input::Prepared(set) => &set[i],
            Input::Generated { seed, .. } => {
                triplet(*seed, i, scratch);
                scratch
            }
        }
    }
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
pub fn fill(store: &dyn Store, input: Input<'_>) {
    let mut scratch = Triplet::empty();
    for i in 0..input.len() {
        let t = input.get(i, &mut scratch);
        store.check(t, T0);
        store.check(t, T0 + 300);
    }
}

/// Runs `per_thread` checks on each of `threads` threads over `input`
/// (each thread from its own offset, a large odd stride so consecutive
/// checks land far apart in the store, as real traffic does); returns the seconds taken.
pub fn run_threads(
    store: &dyn Store,
    input: Input<'_>,
    threads: usize,
    per_thread: usize,
    now: i64,
) -> f64 {
    let start = std::time::Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let n = input.len();
                let mut scratch = Triplet::empty();
                let mut i = (t * 7919) % n;
                for _ in 0..per_thread {
                    std::hint::black_box(store.check(input.get(i, &mut scratch), now));
                    i = (i + 40_503) % n;
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
