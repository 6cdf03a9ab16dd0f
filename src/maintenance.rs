//! Opening an engine from its snapshot, and the maintenance thread that
//! sweeps and snapshots it at an interval and once more when it stops.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::config::Config;
use crate::engine::{unix_now, Engine};
use crate::snapshot::SnapshotError;

/// Where an engine keeps its snapshot, and what to do at start-up.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// The snapshot file.
    pub path: PathBuf,
    /// Sweep and save this often; `None`: no thread, only the final save.
    pub interval: Option<Duration>,
    /// On a corrupt snapshot, set the file aside (renamed, never
    /// overwritten) and start empty, instead of failing.
    pub start_empty_if_corrupt: bool,
}

impl SnapshotOptions {
    /// A snapshot at `path`, saved every `interval` (if any); a corrupt file
    /// is an error.
    pub fn new(path: impl Into<PathBuf>, interval: Option<Duration>) -> Self {
        SnapshotOptions {
            path: path.into(),
            interval,
            start_empty_if_corrupt: false,
        }
    }
}

/// The result of [`Engine::open`].
#[derive(Debug)]
pub struct Opened {
    /// The engine: loaded from the snapshot, or empty.
    pub engine: Engine,
    /// When the snapshot was corrupt and `start_empty_if_corrupt` was set:
    /// where the bad file was moved, and what was wrong with it.
    pub set_aside: Option<(PathBuf, SnapshotError)>,
}

/// A name beside `path` that no file has yet: `<path>.corrupt-<time>[-n]`.
fn aside_name(path: &Path) -> PathBuf {
    let base = format!("{}.corrupt-{}", path.display(), unix_now());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

impl Engine {
    /// Opens the engine kept at `options.path`: loads the snapshot if the
    /// file exists, starts empty (with a fresh secret) if it does not.
    /// The engine holds a lock on `<path>.lock` for as long as it lives, so
    /// a second process (or engine) opening the same snapshot is refused
    /// with an error naming the holder's process id, instead of the two
    /// overwriting each other's state.
    /// First checks that a snapshot can be saved there (the folder can be
    /// written), so that this fails now rather than at the first save; a
    /// link or a non-regular file at the path is refused.
    /// A snapshot that cannot be used is an error, except that with
    /// `start_empty_if_corrupt` a [`SnapshotError::Corrupt`] file is renamed
    /// aside and the engine starts empty. I/O errors, newer formats and
    /// key-setting changes are always errors: starting empty over them
    /// would lose good data.
    pub fn open(config: Config, options: &SnapshotOptions) -> Result<Opened, SnapshotError> {
        let path = &options.path;
        let io = |source| SnapshotError::Io {
            path: path.clone(),
            source,
        };
        // The lock first: a second process must not touch the first one's
        // files (check_writable makes the temporary file). Then what a save
        // will need, checked now rather than at the first save; a folder
        // that cannot be written gets that check's message.
        let lock = match crate::files::PathLock::take(path) {
            Ok(lock) => lock,
            Err(e) => {
                crate::snapshot::check_writable(path)?;
                return Err(io(e));
            }
        };
        crate::snapshot::check_writable(path)?;
        let mut opened = if !crate::files::exists(path).map_err(io)? {
            Opened {
                engine: Engine::new(config),
                set_aside: None,
            }
        } else {
            match Engine::load(path, config.clone()) {
                Ok(engine) => Opened {
                    engine,
                    set_aside: None,
                },
                Err(e @ SnapshotError::Corrupt { .. }) if options.start_empty_if_corrupt => {
                    let aside = aside_name(path);
                    fs::rename(path, &aside).map_err(io)?;
                    Opened {
                        engine: Engine::new(config),
                        set_aside: Some((aside, e)),
                    }
                }
                Err(e) => return Err(e),
            }
        };
        opened.engine.snapshot_lock = Some(lock);
        Ok(opened)
    }
}

/// An engine opened from its snapshot and maintained there: what
/// [`Maintenance::open`] gives a host at start-up.
#[derive(Debug)]
pub struct Started {
    /// The maintenance; its [`engine`](Maintenance::engine) is the engine.
    pub maintenance: Maintenance,
    /// When the snapshot was corrupt and `start_empty_if_corrupt` was set:
    /// where the bad file was moved, and what was wrong with it.
    pub set_aside: Option<(PathBuf, SnapshotError)>,
}

/// A clock for the maintenance thread's sweeps (Unix seconds).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What a save told the observer of [`Maintenance::start_observed`].
#[derive(Debug)]
pub enum SaveEvent<'a> {
    /// A save failed; `in_a_row` counts this one and the failures before it
    /// since the last good save.
    Failed {
        /// What went wrong, naming the file.
        error: &'a SnapshotError,
        /// Failed saves in a row, this one included.
        in_a_row: u64,
    },
    /// A save worked after `failed` saves in a row had not.
    Recovered {
        /// The failures it ends.
        failed: u64,
    },
}

/// Called on the maintenance thread after every failed save, and after the
/// first good save that follows failures (so a host can log each at once).
pub type SaveObserver = Arc<dyn Fn(&SaveEvent<'_>) + Send + Sync>;

struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    saves: AtomicU64,
    failures: AtomicU64,
    failures_in_a_row: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// When the latest save succeeded (Unix seconds, system clock); 0:
    /// none yet.
    last_success: AtomicU64,
    observer: Option<SaveObserver>,
}

/// Keeps an engine's snapshot: every `interval` it sweeps expired entries
/// and saves; [`Maintenance::stop`] (or dropping it) stops the thread and
/// writes a final snapshot.
pub struct Maintenance {
    engine: Arc<Engine>,
    path: PathBuf,
    clock: Clock,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintenance")
            .field("path", &self.path)
            .field("saves", &self.saves())
            .finish_non_exhaustive()
    }
}

impl Maintenance {
    /// What a host does at start-up, in one step: opens the engine kept at
    /// `options.path` (see [`Engine::open`]: the lock, the checks, the
    /// load) and starts maintaining it there at `options.interval`, its
    /// sweeps reading `clock`, failed saves told to `observer`. The policy
    /// daemon and the C ABI's `greylist_engine_new` (with
    /// `greylist_config_set_snapshot`) both start this way.
    pub fn open(
        config: Config,
        options: &SnapshotOptions,
        clock: Clock,
        observer: Option<SaveObserver>,
    ) -> Result<Started, SnapshotError> {
        let opened = Engine::open(config, options)?;
        let maintenance = Maintenance::start_observed(
            Arc::new(opened.engine),
            &options.path,
            options.interval,
            clock,
            observer,
        );
        Ok(Started {
            maintenance,
            set_aside: opened.set_aside,
        })
    }

    /// Starts maintaining `engine` at `path`: a thread when `interval` is
    /// given, with the system clock for sweeps.
    pub fn start(
        engine: Arc<Engine>,
        path: impl Into<PathBuf>,
        interval: Option<Duration>,
    ) -> Self {
        Self::start_with_clock(engine, path, interval, Arc::new(unix_now))
    }

    /// As [`Maintenance::start`], with the clock injected.
    pub fn start_with_clock(
        engine: Arc<Engine>,
        path: impl Into<PathBuf>,
        interval: Option<Duration>,
        clock: Clock,
    ) -> Self {
        Self::start_observed(engine, path, interval, clock, None)
    }

    /// As [`Maintenance::start_with_clock`], telling `observer` of every
    /// failed save at once and of the save that ends a run of failures
    /// (the final save's result is returned by [`Maintenance::stop`]).
    pub fn start_observed(
        engine: Arc<Engine>,
        path: impl Into<PathBuf>,
        interval: Option<Duration>,
        clock: Clock,
        observer: Option<SaveObserver>,
    ) -> Self {
        let path = path.into();
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            saves: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failures_in_a_row: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_success: AtomicU64::new(0),
            observer,
        });
        let thread = interval.map(|every| {
            let (engine, path, shared) = (engine.clone(), path.clone(), shared.clone());
            let clock = clock.clone();
            std::thread::Builder::new()
                .name("greylist-maintenance".into())
                .spawn(move || loop {
                    {
                        let mut stop = shared.stop.lock();
                        if !*stop {
                            shared.wake.wait_for(&mut stop, every);
                        }
                        if *stop {
                            return;
                        }
                    }
                    engine.sweep(clock());
                    let result = engine.save(&path);
                    record(&shared, result.as_ref().map(|_| ()));
                    shared.tell(&result);
                })
                .expect("spawning the maintenance thread")
        });
        Maintenance {
            engine,
            path,
            clock,
            shared,
            thread,
        }
    }

    /// Sweeps and saves now, on the calling thread (an operator's "save
    /// now"; saves are one at a time, so the thread's next one waits),
    /// telling the observer as the thread's saves do.
    pub fn save_now(&self) -> Result<(), SnapshotError> {
        self.engine.sweep((self.clock)());
        let result = self.engine.save(&self.path);
        record(&self.shared, result.as_ref().map(|_| ()));
        self.shared.tell(&result);
        result
    }

    /// The engine being maintained.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Snapshots written so far.
    pub fn saves(&self) -> u64 {
        self.shared.saves.load(Relaxed)
    }

    /// Saves that failed so far.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Relaxed)
    }

    /// When the latest successful save ended (Unix seconds, system clock),
    /// if any.
    pub fn last_success(&self) -> Option<i64> {
        match self.shared.last_success.load(Relaxed) {
            0 => None,
            t => i64::try_from(t).ok(),
        }
    }

    /// The message of the latest failed save, if the latest save failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().clone()
    }

    fn halt(&mut self) -> Result<(), SnapshotError> {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // A panic in the thread was a bug; the final save below still runs.
            let _ = thread.join();
        }
        let result = self.engine.save(&self.path);
        record(&self.shared, result.as_ref().map(|_| ()));
        result
    }

    /// Stops the thread and writes the final snapshot.
    pub fn stop(mut self) -> Result<(), SnapshotError> {
        self.halt()
    }
}

fn record<E: ToString>(shared: &Shared, result: Result<(), E>) {
    match result {
        Ok(()) => {
            shared.saves.fetch_add(1, Relaxed);
            let now = u64::try_from(unix_now()).unwrap_or(0);
            shared.last_success.store(now, Relaxed);
            *shared.last_error.lock() = None;
        }
        Err(e) => {
            shared.failures.fetch_add(1, Relaxed);
            *shared.last_error.lock() = Some(e.to_string());
        }
    }
}

impl Shared {
    /// Tells the observer, if any, of a failure or of a recovery.
    fn tell(&self, result: &Result<(), SnapshotError>) {
        let event = match result {
            Err(error) => SaveEvent::Failed {
                error,
                in_a_row: self.failures_in_a_row.fetch_add(1, Relaxed) + 1,
            },
            Ok(()) => match self.failures_in_a_row.swap(0, Relaxed) {
                0 => return,
                failed => SaveEvent::Recovered { failed },
            },
        };
        if let Some(observer) = &self.observer {
            observer(&event);
        }
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        if self.thread.is_some() || !*self.shared.stop.lock() {
            // Errors are kept in `last_error`; a drop cannot return them.
            let _ = self.halt();
        }
    }
}
