//! The command line: postgrey's option names where they mean the same.

use std::path::PathBuf;
use std::time::Duration;

use greylist::policy::{BlockAction, PolicyOptions};
use greylist::{Config, ListKind};

pub const HELP: &str = "\
greylist-policyd: greylisting for Postfix (check_policy_service) and Exim (readsocket)

USAGE: greylist-policyd [OPTIONS]

With no options it listens on 127.0.0.1:10023 and keeps its snapshot in
./greylist-policyd.snap, saved every 300 s and at shutdown.

Listening:
  --inet [HOST:]PORT          TCP address (default 127.0.0.1:10023)
  --unix PATH                 a unix socket instead (with --inet: both)
  --max-connections N         concurrent connections (default 256; at most what
                              RLIMIT_NOFILE allows). When all are taken, the one
                              idle longest is closed for a new one
  --idle-timeout SECS         close a connection idle between requests (default 600)
  --request-timeout SECS      a whole request must arrive within SECS (default 10)
Greylisting (postgrey's names):
  --delay SECS                wait before a retry passes (default 300)
  --max-age DAYS              lifetime of a passed triplet (default 35)
  --retry-window N[s|m|h|d]   how long a first retry may take; a bare number is days,
                              as in postgrey (default 2d)
  --auto-whitelist-clients N  passed triplets that whitelist a client; 0: off (default 5)
  --ipv4cidr N, --ipv6cidr N  client network prefixes (default 24, 64)
  --greylist-text TEXT        defer text; %s: seconds, %r: recipient domain
  --whitelist-clients FILE    client IPs, CIDRs, host names (repeatable)
  --whitelist-recipients FILE recipients that opt out (repeatable)
  --trap-recipients FILE      recipients that block their sender's network
  --max-entries N             triplet entries kept (default 4000000)
  --max-clients N             client-network records kept (default 1000000)
  --block-action reject|defer what a blocked network gets (default defer)
  --blast-copies N            early retries of one message that block its network
                              (more than N, however fast; 0: off; default 5)
  --blast-threshold N         early-retry rounds (distinct seconds) in one delay that
                              block a network (more than N; 0: off; default 20)
  --block-time SECS           how long a blocked network stays blocked (default 3600)
  --lost-after N[s|m|h|d]     a sender that made only early retries and then no attempt
                              for this long after the delay lost its mail: logged as
                              action=lost-mail (with its sender and recipient) and
                              listed by greylistctl lost-mail (default 1h; a bare
                              number is seconds)
  --sweep-interval SECS       look for lost mail and expired entries this often
                              (default 60)
Several MX hosts (Redis):
  --redis URL                 keep triplets in Redis: redis://[user:password@]host:port/db,
                              rediss://... for TLS, redis+unix:///path/redis.sock,
                              redis+sentinel://host:port[,host:port...]/MASTER[/db],
                              redis+cluster://host:port[,host:port...]
  --redis-secret FILE         the key secret every MX shares: 32 hex digits
                              (openssl rand -hex 16); required with --redis
  --redis-ca FILE             for rediss://: trust this CA (PEM), not the system's
  --redis-prefix TEXT         key prefix (default greylist:)
  --redis-timeout MS          answer from the local table after MS (default 50)
  --redis-fail open|defer     when Redis fails: pass what the local table would
                              defer (default open), or defer it
Persistence:
  --snapshot PATH             snapshot file (default ./greylist-policyd.snap); run-time
                              whitelist entries are kept beside it in PATH.whitelist
  --snapshot-interval SECS    save every SECS; 0: only at shutdown (default 300)
Operating it:
  --control PATH              greylistctl's socket (default: the snapshot's path with
                              .ctl added; mode 0600, the daemon's user and root only)
  --no-control                no control socket
  --metrics [HOST:]PORT       serve GET /metrics (Prometheus) and GET /health there
                              (default: off; a bare port is on 127.0.0.1)
Testing:
  --allow-test-time           honour policy_test_time / policy_test_advance attributes
  --help, --version

Signals:
  SIGTERM, SIGINT  save a final snapshot and exit 0
  SIGHUP           reload the list files (a bad file keeps the old lists)
  SIGUSR1          write the status and the lost-mail report to the log
  SIGUSR2          sweep and save the snapshot now
";

/// Everything the command line sets.
pub struct Options {
    pub inet: Option<String>,
    pub unix: Option<PathBuf>,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub config: greylist::ConfigBuilder,
    pub policy: PolicyOptions,
    pub lists: Vec<(ListKind, Vec<PathBuf>)>,
    pub snapshot: PathBuf,
    pub snapshot_interval: u64,
    /// The `--redis-secret` file, to warn when others can read it.
    pub redis_secret: Option<PathBuf>,
    /// `--control`: `None` for the default beside the snapshot.
    pub control: Option<PathBuf>,
    pub no_control: bool,
    pub metrics: Option<String>,
    pub sweep_interval: u64,
}

/// A duration in seconds: a whole number with a unit (`90s`, `30m`, `1h`,
/// `2d`), or bare, in `bare` seconds each.
fn duration(name: &str, v: &str, bare: u64) -> Result<u64, String> {
    let (digits, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, ""),
    };
    let unit = match unit {
        "" => bare,
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{name}: {v:?} is not a duration like 90s, 30m, 1h or 2d"
            ))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{name}: {v:?} is not a duration like 90s, 30m, 1h or 2d"))?;
    Ok(n.saturating_mul(unit))
}

pub fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        inet: None,
        unix: None,
        max_connections: 256,
        idle_timeout: Duration::from_secs(600),
        request_timeout: Duration::from_secs(10),
        redis_secret: None,
        config: Config::builder(),
        policy: PolicyOptions::default(),
        lists: ListKind::ALL.iter().map(|k| (*k, Vec::new())).collect(),
        snapshot: PathBuf::from(crate::protocol::DEFAULT_SNAPSHOT),
        snapshot_interval: 300,
        control: None,
        no_control: false,
        metrics: None,
        sweep_interval: 60,
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
            "--request-timeout" => {
                o.request_timeout = Duration::from_secs(number(value()?)?.max(1))
            }
            "--delay" => o.config = o.config.delay(to_u32(number(value()?)?)?),
            "--max-age" => {
                o.config = o
                    .config
                    .pass_ttl(to_u32(number(value()?)?.saturating_mul(86_400))?)
            }
            "--retry-window" => {
                let secs = duration(&name, &value()?, 86_400)?;
                o.config = o.config.retry_window(to_u32(secs)?);
            }
            "--lost-after" => {
                let secs = duration(&name, &value()?, 1)?;
                o.config = o.config.lost_after(to_u32(secs)?);
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
            "--blast-copies" => o.config = o.config.blast_copies(to_u32(number(value()?)?)?),
            "--blast-threshold" => o.config = o.config.blast_threshold(to_u32(number(value()?)?)?),
            "--block-time" => o.config = o.config.block_time(to_u32(number(value()?)?)?),
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
            "--redis-secret" => {
                let path = PathBuf::from(value()?);
                o.config = o.config.shared_secret_file(&path);
                o.redis_secret = Some(path);
            }
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
            "--sweep-interval" => o.sweep_interval = number(value()?)?.max(1),
            "--control" => o.control = Some(value()?.into()),
            "--no-control" => o.no_control = true,
            "--metrics" => o.metrics = Some(value()?),
            "--allow-test-time" => o.policy.allow_test_time = true,
            _ => return Err(format!("unknown option {arg:?} (see --help)")),
        }
    }
    if o.inet.is_none() && o.unix.is_none() {
        o.inet = Some("127.0.0.1:10023".into());
    }
    Ok(o)
}
