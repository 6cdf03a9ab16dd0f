//! Watching the shared store (Redis): when checks start to be answered
//! from the local table, and when Redis answers again, the log says so,
//! once per episode, with the count of checks answered locally. Without
//! this an outage turned greylisting off (failing open) in silence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use greylist::{Engine, FailMode, Stats};

use crate::log::log;

/// How often the counters are looked at.
const EVERY: Duration = Duration::from_secs(1);

/// The state of the shared store as the counters tell it.
pub struct StoreWatch {
    mode: FailMode,
    /// Since when checks have been answered locally, and the count of such
    /// answers when the episode began.
    down: Option<(Instant, u64)>,
    last_local: u64,
    last_trips: u64,
}

impl StoreWatch {
    pub fn new(stats: &Stats, mode: FailMode) -> StoreWatch {
        StoreWatch {
            mode,
            down: None,
            last_local: stats.store_unavailable,
            last_trips: stats.store_round_trips,
        }
    }

    /// Looks at the counters at `now`: the line to log when an outage
    /// begins or ends. `error` is the store's latest failure.
    pub fn observe(
        &mut self,
        stats: &Stats,
        error: Option<String>,
        now: Instant,
    ) -> Option<String> {
        let local = stats.store_unavailable;
        let answered = stats.store_round_trips > self.last_trips;
        let fell_back = local > self.last_local;
        let line = match self.down {
            None if fell_back => {
                self.down = Some((now, self.last_local));
                Some(format!(
                    "Redis is unreachable ({}): answering from the local table, {}",
                    error.as_deref().unwrap_or("no answer"),
                    match self.mode {
                        FailMode::Open => "passing what it would defer (--redis-fail open)",
                        FailMode::Defer => "greylisting with it (--redis-fail defer)",
                    }
                ))
            }
            Some((since, at_start)) if answered && !fell_back => {
                self.down = None;
                Some(format!(
                    "Redis answers again after {:.0} s; {} checks were answered from the local table",
                    now.saturating_duration_since(since).as_secs_f64(),
                    local - at_start
                ))
            }
            _ => None,
        };
        (self.last_local, self.last_trips) = (local, stats.store_round_trips);
        line
    }
}

impl StoreWatch {
    /// Redis answered a probe while checks were answered locally: with no
    /// mail flowing no check would have said so, and `/health` would stay
    /// unhealthy. The line to log, if an outage ends.
    pub fn probed_up(&mut self, stats: &Stats, now: Instant) -> Option<String> {
        let (since, at_start) = self.down.take()?;
        (self.last_local, self.last_trips) = (stats.store_unavailable, stats.store_round_trips);
        Some(format!(
            "Redis answers again after {:.0} s (a probe); {} checks were answered from the local \
             table",
            now.saturating_duration_since(since).as_secs_f64(),
            stats.store_unavailable - at_start
        ))
    }
}

/// How often Redis is probed while checks are answered locally.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Logs why the store cannot be reached, or what could make it lose
/// records.
fn probe(engine: &Engine, when: &str) {
    match engine.probe_store(Duration::from_secs(2)) {
        Some(Err(e)) => log(format_args!(
            "warning: Redis cannot be reached {when} ({e}); checks are answered from the local \
             table until it can"
        )),
        Some(Ok(warnings)) => warnings
            .iter()
            .for_each(|w| log(format_args!("warning: {w}"))),
        None => {}
    }
}

/// Probes the store at start, then watches it for ever on a thread;
/// `down` tells whether checks are being answered locally.
pub fn start(engine: Arc<Engine>, down: Arc<AtomicBool>) {
    probe(&engine, "at start");
    let mut watch = StoreWatch::new(&engine.stats(), engine.config().fail_mode());
    std::thread::Builder::new()
        .name("store-watch".into())
        .spawn(move || {
            let mut last_probe = Instant::now();
            loop {
                std::thread::sleep(EVERY);
                let mut line = watch.observe(&engine.stats(), engine.store_error(), Instant::now());
                if line.is_none() && watch.down.is_some() && last_probe.elapsed() >= PROBE_EVERY {
                    last_probe = Instant::now();
                    if let Some(Ok(_)) = engine.probe_store(Duration::from_secs(1)) {
                        line = watch.probed_up(&engine.stats(), Instant::now());
                    }
                }
                down.store(watch.down.is_some(), Ordering::Relaxed);
                if let Some(line) = line {
                    let recovered = watch.down.is_none();
                    log(line);
                    if recovered {
                        probe(&engine, "again");
                    }
                }
            }
        })
        .expect("starting the store watch");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(local: u64, trips: u64) -> Stats {
        Stats {
            store_unavailable: local,
            store_round_trips: trips,
            ..Stats::default()
        }
    }

    #[test]
    fn an_outage_is_one_line_when_it_begins_and_one_when_it_ends() {
        let t0 = Instant::now();
        let mut w = StoreWatch::new(&stats(0, 10), FailMode::Open);
        assert_eq!(w.observe(&stats(0, 20), None, t0), None);
        let down = w
            .observe(&stats(5, 20), Some("Connection refused".into()), t0)
            .unwrap();
        assert!(down.contains("unreachable (Connection refused)"), "{down}");
        assert!(down.contains("--redis-fail open"), "{down}");
        for i in 1..5 {
            let at = t0 + Duration::from_secs(i);
            assert_eq!(w.observe(&stats(5 + 30 * i, 20), None, at), None);
        }
        // Answers again, but some checks were still local in that second.
        let t = t0 + Duration::from_secs(5);
        assert_eq!(w.observe(&stats(160, 25), None, t), None);
        let up = w.observe(&stats(160, 30), None, t + EVERY).unwrap();
        assert_eq!(
            up,
            "Redis answers again after 6 s; 160 checks were answered from the local table"
        );
        assert_eq!(w.observe(&stats(160, 40), None, t + EVERY * 2), None);
    }
}
