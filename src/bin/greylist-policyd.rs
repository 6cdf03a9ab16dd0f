//! greylist-policyd: a Postfix policy server (and a drop-in for postgrey)
//! on the greylist engine. See `greylist-policyd --help`.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use greylist::policy::{self, BlockAction, PolicyOptions};
use greylist::{Config, Engine, ListKind, Maintenance, SnapshotOptions};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

const HELP: &str = "\
greylist-policyd: greylisting for Postfix (check_policy_service) and Exim (readsocket)

USAGE: greylist-policyd [OPTIONS]

With no options it listens on 127.0.0.1:10023 and keeps its snapshot in
./greylist-policyd.snap, saved every 300 s and at shutdown.

Listening:
  --inet [HOST:]PORT          TCP address (default 127.0.0.1:10023)
  --unix PATH                 a unix socket instead (with --inet: both)
  --max-connections N         concurrent connections (default 256)
  --idle-timeout SECS         close a silent connection after SECS (default 600)
Greylisting (postgrey's names):
  --delay SECS                wait before a retry passes (default 300)
  --max-age DAYS              lifetime of a passed triplet (default 35)
  --retry-window N[h]         days (or hours with h) a first retry may take (default 2)
  --auto-whitelist-clients N  passed triplets that whitelist a client; 0: off (default 5)
  --ipv4cidr N, --ipv6cidr N  client network prefixes (default 24, 64)
  --greylist-text TEXT        defer text; %s: seconds, %r: recipient domain
  --whitelist-clients FILE    client IPs, CIDRs, host names (repeatable)
  --whitelist-recipients FILE recipients that opt out (repeatable)
  --trap-recipients FILE      recipients that block their sender's network
  --max-entries N             triplet entries kept (default 4000000)
  --max-clients N             client-network records kept (default 1000000)
  --block-action reject|defer what a blocked network gets (default defer)
Several MX hosts (Redis):
  --redis URL                 keep triplets in Redis: redis://[user:password@]host:port/db,
                              rediss://... for TLS, redis+unix:///path/redis.sock
  --redis-secret FILE         the key secret every MX shares: 32 hex digits
                              (openssl rand -hex 16); required with --redis
  --redis-ca FILE             for rediss://: trust this CA (PEM), not the system's
  --redis-prefix TEXT         key prefix (default greylist:)
  --redis-timeout MS          answer from the local table after MS (default 50)
  --redis-fail open|defer     when Redis fails: pass what the local table would
                              defer (default open), or defer it
Persistence:
  --snapshot PATH             snapshot file (default ./greylist-policyd.snap)
  --snapshot-interval SECS    save every SECS; 0: only at shutdown (default 300)
Testing:
  --allow-test-time           honour policy_test_time / policy_test_advance attributes
  --help, --version

Signals: SIGTERM/SIGINT save a final snapshot and exit 0; SIGHUP reloads the list files.
";

/// Everything the command line sets.
struct Options {
    inet: Option<String>,
    unix: Option<PathBuf>,
    max_connections: usize,
    idle_timeout: Duration,
    config: greylist::ConfigBuilder,
    policy: PolicyOptions,
    lists: Vec<(ListKind, Vec<PathBuf>)>,
    snapshot: PathBuf,
    snapshot_interval: u64,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        inet: None,
        unix: None,
        max_connections: 256,
        idle_timeout: Duration::from_secs(600),
        config: Config::builder(),
        policy: PolicyOptions::default(),
        lists: ListKind::ALL.iter().map(|k| (*k, Vec::new())).collect(),
        snapshot: PathBuf::from("greylist-policyd.snap"),
        snapshot_interval: 300,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |v: String| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{name}: {v:?} is not a whole number"))
        };
        let to_u32 = |n: u64| u32::try_from(n).map_err(|_| format!("{name}: {n} is too large"));
        let mut list = |kind: ListKind, path: String| {
            o.lists
                .iter_mut()
                .find(|(k, _)| *k == kind)
                .expect("every kind")
                .1
                .push(path.into());
        };
        match name.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--version" | "-V" => {
                println!("greylist-policyd {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--inet" => o.inet = Some(value()?),
            "--unix" => o.unix = Some(value()?.into()),
            "--max-connections" => o.max_connections = number(value()?)?.max(1) as usize,
            "--idle-timeout" => o.idle_timeout = Duration::from_secs(number(value()?)?.max(1)),
            "--delay" => o.config = o.config.delay(to_u32(number(value()?)?)?),
            "--max-age" => {
                o.config = o
                    .config
                    .pass_ttl(to_u32(number(value()?)?.saturating_mul(86_400))?)
            }
            "--retry-window" => {
                let v = value()?;
                let secs = match v.strip_suffix('h') {
                    Some(hours) => number(hours.into())?.saturating_mul(3600),
                    None => number(v)?.saturating_mul(86_400),
                };
                o.config = o.config.retry_window(to_u32(secs)?);
            }
            "--auto-whitelist-clients" => {
                let n = match inline.clone() {
                    Some(v) => number(v)?,
                    None => match args.peek() {
                        Some(v) if v.parse::<u64>().is_ok() => {
                            number(args.next().unwrap_or_default())?
                        }
                        _ => 5,
                    },
                };
                o.config = o.config.awl_threshold(to_u32(n)?);
            }
            "--ipv4cidr" | "--ipv6cidr" => {
                let n =
                    u8::try_from(number(value()?)?).map_err(|_| format!("{name}: too large"))?;
                let c = o.config.clone().build().map_err(|e| e.to_string())?;
                o.config = if name == "--ipv4cidr" {
                    o.config.prefixes(n, c.ipv6_prefix())
                } else {
                    o.config.prefixes(c.ipv4_prefix(), n)
                };
            }
            "--greylist-text" => o.policy.greylist_text = value()?,
            "--whitelist-clients" => list(ListKind::Clients, value()?),
            "--whitelist-recipients" => list(ListKind::Recipients, value()?),
            "--trap-recipients" => list(ListKind::TrapRecipients, value()?),
            "--max-entries" => o.config = o.config.max_entries(number(value()?)?),
            "--max-clients" => o.config = o.config.max_clients(number(value()?)?),
            "--block-action" => {
                o.policy.block_action = match value()?.as_str() {
                    "reject" => BlockAction::Reject,
                    "defer" => BlockAction::Defer,
                    other => {
                        return Err(format!("--block-action: {other:?} is not reject or defer"))
                    }
                }
            }
            "--redis" => o.config = o.config.redis(&value()?),
            "--redis-secret" => o.config = o.config.shared_secret_file(value()?),
            "--redis-ca" => o.config = o.config.redis_ca_file(value()?),
            "--redis-prefix" => o.config = o.config.redis_prefix(&value()?),
            "--redis-timeout" => {
                let ms = number(value()?)?;
                o.config = o.config.redis_timeout(Duration::from_millis(ms));
            }
            "--redis-fail" => {
                o.config = o.config.fail_mode(match value()?.as_str() {
                    "open" => greylist::FailMode::Open,
                    "defer" => greylist::FailMode::Defer,
                    other => return Err(format!("--redis-fail: {other:?} is not open or defer")),
                })
            }
            "--snapshot" => o.snapshot = value()?.into(),
            "--snapshot-interval" => o.snapshot_interval = number(value()?)?,
            "--allow-test-time" => o.policy.allow_test_time = true,
            _ => return Err(format!("unknown option {arg:?} (see --help)")),
        }
    }
    if o.inet.is_none() && o.unix.is_none() {
        o.inet = Some("127.0.0.1:10023".into());
    }
    Ok(o)
}

/// Log lines go to a thread that writes whatever is waiting in one go, so
/// a busy server makes few write calls and no check waits on stderr.
enum LogMessage {
    Line(String),
    /// Answered once everything sent before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

static LOG: std::sync::OnceLock<std::sync::mpsc::Sender<LogMessage>> = std::sync::OnceLock::new();

fn start_logger() {
    let (tx, rx) = std::sync::mpsc::channel::<LogMessage>();
    std::thread::spawn(move || {
        // Polling every 10 ms, rather than blocking on the channel, means a
        // log line never costs the checking thread a wake-up call.
        let mut batch = String::new();
        loop {
            std::thread::sleep(Duration::from_millis(10));
            let mut flushed = Vec::new();
            loop {
                match rx.try_recv() {
                    Ok(LogMessage::Line(line)) => batch.push_str(&line),
                    Ok(LogMessage::Flush(done)) => flushed.push(done),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
                if batch.len() > 1 << 16 {
                    break;
                }
            }
            if !batch.is_empty() {
                let _ = std::io::stderr().lock().write_all(batch.as_bytes());
                batch.clear();
            }
            for done in flushed {
                let _ = done.send(());
            }
        }
    });
    let _ = LOG.set(tx);
}

/// Waits until every log line so far is written (before exiting).
fn flush_log() {
    if let Some(tx) = LOG.get() {
        let (done, written) = std::sync::mpsc::channel();
        if tx.send(LogMessage::Flush(done)).is_ok() {
            let _ = written.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// A log line on stderr with a UTC timestamp.
fn log(line: impl std::fmt::Display) {
    let now = greylist::unix_now();
    let (days, secs) = (now.div_euclid(86_400), now.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z greylist-policyd: {line}\n",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    match LOG.get() {
        Some(tx) => {
            if let Err(std::sync::mpsc::SendError(LogMessage::Line(text))) =
                tx.send(LogMessage::Line(text))
            {
                eprint!("{text}");
            }
        }
        None => eprint!("{text}"),
    }
}

/// What every connection shares.
struct Server {
    engine: Arc<Engine>,
    policy: PolicyOptions,
    idle_timeout: Duration,
    max_connections: usize,
    connections: AtomicUsize,
    /// Seconds added to the clock by `policy_test_advance` (tests only).
    clock_offset: AtomicI64,
}

impl Server {
    /// Serves one connection: many requests, each answered in turn.
    fn serve(&self, reader: impl Read, mut writer: impl Write, peer: &str) {
        let mut reader = BufReader::new(reader);
        loop {
            let request = match policy::read_request(&mut reader) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    log(format_args!("closing connection from {peer}: {e}"));
                    return;
                }
            };
            if self.policy.allow_test_time {
                if let Some(secs) = request
                    .get("policy_test_advance")
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    self.clock_offset.fetch_add(secs, Ordering::Relaxed);
                }
            }
            let now = greylist::unix_now() + self.clock_offset.load(Ordering::Relaxed);
            let answer = policy::answer(&self.engine, &request, &self.policy, now);
            log(&answer.log);
            if writer
                .write_all(answer.to_wire().as_bytes())
                .and_then(|_| writer.flush())
                .is_err()
            {
                return;
            }
        }
    }

    /// Runs `serve` on a thread of its own, within the connection limit.
    fn spawn(self: &Arc<Self>, peer: String, serve: impl FnOnce(&Server) + Send + 'static) {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            log(format_args!(
                "refusing {peer}: {} connections already",
                self.max_connections
            ));
            return;
        }
        let server = self.clone();
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .spawn(move || {
                serve(&server);
                server.connections.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            log(format_args!("refusing {peer}: cannot start a thread: {e}"));
        }
    }
}

/// A connected client, over TCP or a unix socket.
trait Connection: Read + Write + Send + Sized + 'static {
    /// A name for the log, and the connection set up for serving.
    fn prepare(&self, idle: Duration) -> String;
    fn duplicate(&self) -> std::io::Result<Self>;
}

impl Connection for TcpStream {
    fn prepare(&self, idle: Duration) -> String {
        let _ = (
            self.set_read_timeout(Some(idle)),
            self.set_write_timeout(Some(idle)),
        );
        let _ = self.set_nodelay(true);
        self.peer_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string())
    }
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
}

impl Connection for UnixStream {
    fn prepare(&self, idle: Duration) -> String {
        let _ = (
            self.set_read_timeout(Some(idle)),
            self.set_write_timeout(Some(idle)),
        );
        "unix socket".into()
    }
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
}

/// Accepts connections for ever, each served on a thread of its own.
fn accept<C: Connection>(server: Arc<Server>, incoming: impl Iterator<Item = std::io::Result<C>>) {
    for stream in incoming {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log(format_args!("accept failed: {e}"));
                continue;
            }
        };
        let peer = stream.prepare(server.idle_timeout);
        server.spawn(peer.clone(), move |s| match stream.duplicate() {
            Ok(reader) => s.serve(reader, stream, &peer),
            Err(e) => log(format_args!("{peer}: {e}")),
        });
    }
}

fn load_lists(engine: &Engine, lists: &[(ListKind, Vec<PathBuf>)]) -> Result<(), String> {
    for (kind, paths) in lists.iter().filter(|(_, p)| !p.is_empty()) {
        let n = engine.load_lists(*kind, paths).map_err(|e| e.to_string())?;
        log(format_args!("loaded {n} {kind:?} list entries"));
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let o = parse_args(std::env::args().skip(1))?;
    let config = o.config.clone().build().map_err(|e| e.to_string())?;
    let options = SnapshotOptions::new(
        &o.snapshot,
        (o.snapshot_interval > 0).then(|| Duration::from_secs(o.snapshot_interval)),
    );
    if let Some(url) = config.redis() {
        log(format_args!(
            "sharing triplets through {url} (prefix {}, timeout {} ms)",
            config.redis_prefix(),
            config.redis_timeout().as_millis()
        ));
    }
    let opened = Engine::open(config, &options).map_err(|e| e.to_string())?;
    let engine = Arc::new(opened.engine);
    load_lists(&engine, &o.lists)?;
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| format!("signals: {e}"))?;

    let server = Arc::new(Server {
        engine: engine.clone(),
        policy: o.policy.clone(),
        idle_timeout: o.idle_timeout,
        max_connections: o.max_connections,
        connections: AtomicUsize::new(0),
        clock_offset: AtomicI64::new(0),
    });
    let mut listening = Vec::new();
    if let Some(addr) = &o.inet {
        let addr = if addr.contains(':') {
            addr.clone()
        } else {
            format!("127.0.0.1:{addr}")
        };
        let listener = TcpListener::bind(&addr).map_err(|e| format!("--inet {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        listening.push(format!("tcp {local}"));
        let s = server.clone();
        std::thread::spawn(move || accept(s, listener.incoming()));
    }
    if let Some(path) = &o.unix {
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).map_err(|e| format!("--unix {}: {e}", path.display()))?;
        listening.push(format!("unix {}", path.display()));
        let s = server.clone();
        std::thread::spawn(move || accept(s, listener.incoming()));
    }
    log(format_args!(
        "listening on {}; snapshot {} ({}, every {} s); {} entries; delay {} s",
        listening.join(" and "),
        o.snapshot.display(),
        if engine.is_empty() {
            "new or empty"
        } else {
            "loaded"
        },
        o.snapshot_interval,
        engine.len(),
        engine.config().delay()
    ));
    if let Some((aside, why)) = &opened.set_aside {
        log(format_args!(
            "the old snapshot was unusable ({why}); kept it as {}",
            aside.display()
        ));
    }
    let maintenance = Maintenance::start(engine.clone(), &o.snapshot, options.interval);

    for signal in signals.forever() {
        match signal {
            SIGHUP => match load_lists(&engine, &o.lists) {
                Ok(()) => log("SIGHUP: list files reloaded"),
                Err(e) => log(format_args!("SIGHUP: lists kept as they were: {e}")),
            },
            _ => break,
        }
    }
    log("shutting down: writing the final snapshot");
    maintenance
        .stop()
        .map_err(|e| format!("final snapshot: {e}"))?;
    log(format_args!(
        "saved {} entries to {}",
        engine.len(),
        o.snapshot.display()
    ));
    Ok(())
}

fn main() {
    start_logger();
    let result = run();
    if let Err(e) = &result {
        log(format_args!("error: {e}"));
    }
    flush_log();
    std::process::exit(i32::from(result.is_err()));
}
