//! `--metrics [HOST:]PORT`: `GET /metrics` in the OpenMetrics text format
//! (which Prometheus reads), written by the `prometheus-client` crate, and
//! `GET /health`: 200 while the daemon serves and all is well, 503 with
//! the reason when the latest snapshot save failed or Redis is unavailable
//! while `--redis-fail defer` holds mail back.
//!
//! Answers counted by action and reason, and the time each took, are
//! recorded by the policy server as it answers; everything else is read
//! from the engine, the maintenance and the server at each scrape.
//!
//! The HTTP side is a few lines on purpose (two paths, GET only, one
//! request a connection): at most [`MAX_CLIENTS`] connections at once, a
//! request head of at most [`MAX_HEAD`] bytes within [`TIMEOUT`].

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::control::Daemon;

/// HTTP connections served at once, and what one may send, how fast.
/// The port is for the monitoring system: keep it on loopback or behind a
/// firewall (anyone who can hold every connection makes probes see 503).
pub const MAX_CLIENTS: usize = 16;
pub const MAX_HEAD: usize = 8 << 10;
pub const TIMEOUT: Duration = Duration::from_secs(3);

type AnswerLabels = [(&'static str, &'static str); 2];

/// What the policy server records as it answers.
#[derive(Clone)]
pub struct Live {
    answers: Family<AnswerLabels, Counter>,
    latency: Histogram,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            answers: Family::default(),
            // 50 µs to about 1.6 s.
            latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

/// A connection's handles on the answer counters it has counted: counting
/// an answer is then one add, not a look-up in the family's locked map. A
/// connection sees a few of the dozen actions and reasons.
#[derive(Default)]
pub struct Counters {
    held: Vec<((&'static str, &'static str), Counter)>,
}

impl Live {
    /// One answer: its action and reason as the log line says them, and
    /// the time from the request read to the answer written.
    pub fn answered(
        &self,
        counters: &mut Counters,
        outcome: (&'static str, &'static str),
        took: Duration,
    ) {
        let held = match counters.held.iter().position(|(o, _)| *o == outcome) {
            Some(i) => &counters.held[i].1,
            None => {
                let (action, reason) = outcome;
                let counter = self
                    .answers
                    .get_or_create(&[("action", action), ("reason", reason)])
                    .clone();
                counters.held.push((outcome, counter));
                &counters.held[counters.held.len() - 1].1
            }
        };
        held.inc();
        self.latency.observe(took.as_secs_f64());
    }
}

/// The daemon's state, read at each scrape.
struct State(Arc<Daemon>);

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("State")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for State {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let d = &self.0;
        let s = d.engine.stats();
        let c = d.engine.config();
        gauge(
            &mut e,
            "entries",
            "Triplet entries in the (local) table",
            int(s.entries),
        )?;
        gauge(
            &mut e,
            "entries_max",
            "The triplet table's cap (--max-entries)",
            int(c.max_entries()),
        )?;
        gauge(
            &mut e,
            "client_records",
            "Client-network records kept",
            int(s.clients),
        )?;
        gauge(
            &mut e,
            "client_records_max",
            "The client-network cap (--max-clients)",
            int(c.max_clients()),
        )?;
        counter(
            &mut e,
            "expired",
            "Triplet entries removed past their lifetime",
            s.expired,
        )?;
        counter(
            &mut e,
            "evicted",
            "Triplet entries removed to stay within the cap",
            s.evicted,
        )?;
        counter(
            &mut e,
            "clients_evicted",
            "Client-network records removed to stay within the cap",
            s.clients_evicted,
        )?;
        counter(
            &mut e,
            "lost_mail",
            "Triplets judged lost mail (early retries, then silence)",
            s.lost_mail,
        )?;
        counter(
            &mut e,
            "lost_recovered",
            "Lost triplets whose late retry passed",
            s.lost_recovered,
        )?;
        let (saves, failures, last) = match d.maintenance() {
            Some(m) => (m.saves(), m.failures(), m.last_success().unwrap_or(0)),
            None => (0, 0, 0),
        };
        counter(&mut e, "snapshot_saves", "Snapshots written", saves)?;
        counter(
            &mut e,
            "snapshot_failures",
            "Snapshot saves that failed",
            failures,
        )?;
        gauge(
            &mut e,
            "snapshot_last_success_timestamp_seconds",
            "When the latest save succeeded (0: none yet)",
            last,
        )?;
        if c.redis().is_some() {
            counter(
                &mut e,
                "store_round_trips",
                "Calls Redis answered",
                s.store_round_trips,
            )?;
            counter(
                &mut e,
                "store_errors",
                "Checks whose Redis call failed",
                s.store_errors,
            )?;
            counter(
                &mut e,
                "store_timeouts",
                "Checks whose Redis call got no answer in time",
                s.store_timeouts,
            )?;
            counter(
                &mut e,
                "store_cache_hits",
                "Passes answered from the local pass cache",
                s.cache_hits,
            )?;
            counter(
                &mut e,
                "store_malformed",
                "Malformed Redis records treated as absent",
                s.store_malformed,
            )?;
            counter(
                &mut e,
                "store_answered_locally",
                "Checks answered from the local table",
                s.store_unavailable,
            )?;
            let down = d.store_down.load(Ordering::Relaxed);
            gauge(
                &mut e,
                "store_unavailable",
                "1 while checks are answered locally",
                i64::from(down),
            )?;
        }
        gauge(
            &mut e,
            "connections_open",
            "Policy connections open",
            int(d.server.open_connections() as u64),
        )?;
        gauge(
            &mut e,
            "connections_max",
            "The connection bound",
            int(d.server.max_connections() as u64),
        )?;
        gauge(
            &mut e,
            "healthy",
            "1 when /health answers 200",
            i64::from(d.unhealthy().is_none()),
        )?;
        Ok(())
    }
}

/// The `/metrics` text.
pub fn render(daemon: &Arc<Daemon>, live: &Live) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("greylist");
    registry.register(
        "checks",
        "Policy requests answered, by action and reason",
        live.answers.clone(),
    );
    registry.register(
        "request_duration_seconds",
        "Time from a request read to its answer written",
        live.latency.clone(),
    );
    registry.register_collector(Box::new(State(daemon.clone())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

const TEXT: &str = "text/plain";

/// The answer to a request head: status, content type, body.
fn answer(
    daemon: &Arc<Daemon>,
    live: &Live,
    method: &[u8],
    path: &[u8],
) -> (&'static str, &'static str, String) {
    if method != b"GET" && method != b"HEAD" {
        return ("405 Method Not Allowed", TEXT, "GET or HEAD only\n".into());
    }
    match path {
        b"/metrics" => match render(daemon, live) {
            Ok(text) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => (
                "500 Internal Server Error",
                TEXT,
                "encoding failed\n".into(),
            ),
        },
        b"/health" => match daemon.unhealthy() {
            None => ("200 OK", TEXT, "ok\n".into()),
            Some(why) => (
                "503 Service Unavailable",
                TEXT,
                format!("unhealthy: {why}\n"),
            ),
        },
        _ => ("404 Not Found", TEXT, "/metrics or /health\n".into()),
    }
}

/// Answers one HTTP request.
fn serve(daemon: &Arc<Daemon>, live: &Live, mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let ended =
        |h: &[u8]| h.windows(4).any(|w| w == b"\r\n\r\n") || h.windows(2).any(|w| w == b"\n\n");
    let request = match crate::server::read_request_within(&stream, MAX_HEAD, TIMEOUT, ended) {
        Ok(request) => request,
        Err(why) => return respond(&mut stream, "400 Bad Request", TEXT, &format!("{why}\n")),
    };
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    // A query string changes nothing (`/health?probe=lb`).
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, kind, body) = answer(daemon, live, method, path);
    let reply_head = head(status, kind, body.len());
    let body = if method == b"HEAD" { "" } else { &body };
    let _ = stream
        .write_all(reply_head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()));
}

/// A response's head.
fn head(status: &str, kind: &str, length: usize) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n\
         Connection: close\r\n\r\n"
    )
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) {
    let _ = stream
        .write_all(head(status, kind, body.len()).as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()));
}

/// Serves `/metrics` and `/health` on `listener`, on threads of its own.
pub fn start(daemon: Arc<Daemon>, live: Live, listener: TcpListener) -> Result<(), String> {
    crate::server::serve_each(
        "metrics",
        move || listener.accept().map(|(s, _)| s),
        MAX_CLIENTS,
        |mut stream: TcpStream| {
            respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                "busy\n",
            )
        },
        move |stream| serve(&daemon, &live, stream),
    )
}
