//! The command line, with `clap`: postgrey 1.37's options with postgrey's
//! meaning (so its init scripts and `/etc/default/postgrey` lines work),
//! plus this daemon's own. Options may come in any order: the engine's
//! settings are built once, after every option is read.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use greylist::policy::{BlockAction, PolicyOptions};
use greylist::{Config, FailMode, ListKind};

use crate::protocol;

/// A duration in seconds: a whole number with a unit (`90s`, `30m`, `1h`,
/// `2d`), or bare, in `bare` seconds each.
fn duration(v: &str, bare: u64) -> Result<u64, String> {
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
        _ => return Err(format!("{v:?} is not a duration like 90s, 30m, 1h or 2d")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{v:?} is not a duration like 90s, 30m, 1h or 2d"))?;
    u32::try_from(n.saturating_mul(unit))
        .map(u64::from)
        .map_err(|_| format!("{v:?} is too long"))
}

/// postgrey's `--retry-window`: days, or hours with `h` (and here `s`, `m`).
fn days_or_unit(v: &str) -> Result<u64, String> {
    duration(v, 86_400)
}

/// `--lost-after`: seconds, or with a unit.
fn seconds_or_unit(v: &str) -> Result<u64, String> {
    duration(v, 1)
}

/// A file mode in octal (`0666`, `660`).
fn octal(v: &str) -> Result<u32, String> {
    u32::from_str_radix(v.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{v:?} is not a file mode like 0666"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BlockActionArg {
    Defer,
    Reject,
}

/// A syslog facility by name.
fn syslog_facility(v: &str) -> Result<u8, String> {
    crate::log::facility(v).ok_or_else(|| {
        format!("{v:?} is not a syslog facility (mail, daemon, user, local0 to local7, ...)")
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Native,
    Postgrey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisFail {
    Open,
    Defer,
}

// The headings of `--help`.
const H_LISTENING: &str = "Listening";
const H_GREYLISTING: &str = "Greylisting (postgrey's options)";
const H_LISTS: &str = "Lists";
const H_DEFENCES: &str = "Defences";
const H_SEVERAL: &str = "Several MX hosts (Redis)";
const H_PERSISTENCE: &str = "Persistence";
const H_OPERATING: &str = "Operating it";
const H_TESTING: &str = "Testing";

/// Greylisting for Postfix (check_policy_service) and Exim (readsocket), a
/// drop-in for postgrey.
///
/// With no options it listens on 127.0.0.1:10023 and keeps its snapshot in
/// ./greylist-policyd.snap, saved every 300 s and at shutdown.
#[derive(Debug, Parser)]
#[command(
    name = "greylist-policyd",
    args_override_self = true,
    version,
    after_help = "Signals:\n  SIGTERM, SIGINT  save a final snapshot and exit 0\n  \
                  SIGHUP           reload the list files (a file that cannot be read keeps the old lists)\n  \
                  SIGUSR1          write the status and the lost-mail report to the log\n  \
                  SIGUSR2          sweep and save the snapshot now"
)]
pub struct Args {
    /// TCP address (default 127.0.0.1:10023; a bare port is on 127.0.0.1)
    #[arg(short = 'i', long, value_name = "[HOST:]PORT", help_heading = H_LISTENING)]
    pub inet: Option<String>,
    /// A unix socket instead (with --inet: both)
    #[arg(short = 'u', long, value_name = "PATH", help_heading = H_LISTENING)]
    pub unix: Option<PathBuf>,
    /// The --unix socket's mode (Postfix's user must be able to connect)
    #[arg(long, value_name = "MODE", default_value = "0666", value_parser = octal, help_heading = H_LISTENING)]
    pub socketmode: u32,
    /// Concurrent connections (at most what RLIMIT_NOFILE allows); when all
    /// are taken, the one idle longest is closed for a new one
    #[arg(long, value_name = "N", default_value_t = 256, help_heading = H_LISTENING)]
    pub max_connections: usize,
    /// Close a connection idle between requests after SECS
    #[arg(long, value_name = "SECS", default_value_t = 600, help_heading = H_LISTENING)]
    pub idle_timeout: u64,
    /// A whole request must arrive within SECS
    #[arg(long, value_name = "SECS", default_value_t = 10, help_heading = H_LISTENING)]
    pub request_timeout: u64,
    /// postgrey's listen queue; accepted (the system's default is used)
    #[arg(long, value_name = "N", help_heading = H_LISTENING)]
    pub listen_queue_size: Option<u32>,
    /// postgrey's one-query-a-connection mode for Exim; accepted (every
    /// connection may carry one or many queries here)
    #[arg(long, help_heading = H_LISTENING)]
    pub exim: bool,

    /// Wait before a retry passes, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 300, help_heading = H_GREYLISTING)]
    pub delay: u32,
    /// Lifetime of a passed triplet and of an auto-whitelisted client's
    /// record (as postgrey), in days, refreshed on each use
    #[arg(long, value_name = "DAYS", default_value_t = 35, help_heading = H_GREYLISTING)]
    pub max_age: u32,
    /// How long a first retry may take: days, or N[s|m|h|d] (default 2)
    #[arg(long, value_name = "N[dh]", default_value = "2", value_parser = days_or_unit, help_heading = H_GREYLISTING)]
    pub retry_window: u64,
    /// Passed triplets that whitelist a client network; 0: off; without N: 5
    #[arg(long, value_name = "N", num_args = 0..=1, default_value_t = 5, default_missing_value = "5", help_heading = H_GREYLISTING)]
    pub auto_whitelist_clients: u32,
    /// IPv4 client network prefix
    #[arg(long, value_name = "N", default_value_t = 24, help_heading = H_GREYLISTING)]
    pub ipv4cidr: u8,
    /// IPv6 client network prefix
    #[arg(long, value_name = "N", default_value_t = 64, help_heading = H_GREYLISTING)]
    pub ipv6cidr: u8,
    /// Key clients by their network (--ipv4cidr, --ipv6cidr): the default
    #[arg(long, overrides_with = "lookup_by_host", help_heading = H_GREYLISTING)]
    pub lookup_by_subnet: bool,
    /// Key clients by their own address (/32, /128)
    #[arg(long, overrides_with = "lookup_by_subnet", help_heading = H_GREYLISTING)]
    pub lookup_by_host: bool,
    /// Key clients by their network even when Postfix verified their host
    /// name (client_name). By default a verified, non-generic name keys by
    /// its registrable domain (mail-sor-f41.google.com: google.com), so a
    /// pool retrying from another host passes on its first retry
    #[arg(long, help_heading = H_GREYLISTING)]
    pub no_key_by_host_name: bool,
    /// Check the envelope sender's SPF for the client's address when its
    /// triplet has not passed: a pass keys the request by the sender's
    /// domain (never a penalty otherwise)
    #[arg(long, help_heading = H_GREYLISTING)]
    pub spf: bool,
    /// Deadline of one SPF check, DNS included, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=30_000), help_heading = H_GREYLISTING)]
    pub spf_timeout: u64,
    /// The DNS server SPF asks: an address, with a port or not (53); default:
    /// /etc/resolv.conf's
    #[arg(long, value_name = "ADDR", value_parser = crate::spf::parse_server, help_heading = H_GREYLISTING)]
    pub dns_server: Option<std::net::SocketAddr>,
    /// postgrey's one-way hashes; accepted (keys are always keyed hashes here)
    #[arg(long, help_heading = H_GREYLISTING)]
    pub privacy: bool,
    /// What Postfix is told of a greylisted triplet
    #[arg(long, value_name = "ACTION", default_value = "DEFER_IF_PERMIT", help_heading = H_GREYLISTING)]
    pub greylist_action: String,
    /// Defer text; %s: seconds left, %r: the recipient's domain
    #[arg(long, value_name = "TEXT", help_heading = H_GREYLISTING)]
    pub greylist_text: Option<String>,
    /// Header of a message that passed after its delay; %t: the delay,
    /// %v: the version, %h: the host name, %d: the date (default
    /// "X-Greylist: delayed %t seconds by greylist-policyd")
    #[arg(long, value_name = "TEXT", help_heading = H_GREYLISTING)]
    pub x_greylist_header: Option<String>,
    /// The host name for %h (default: the system's)
    #[arg(long, value_name = "NAME", help_heading = H_GREYLISTING)]
    pub hostname: Option<String>,
    /// Client IPs, CIDRs, host names (repeatable); without it, the list
    /// built in is used (see --show-default-whitelist)
    #[arg(long, value_name = "FILE", help_heading = H_LISTS)]
    pub whitelist_clients: Vec<PathBuf>,
    /// No built-in client whitelist when no --whitelist-clients is given
    #[arg(long, help_heading = H_LISTS)]
    pub no_default_whitelist: bool,
    /// Print the built-in client whitelist (senders known to retry badly)
    /// and exit
    #[arg(long, help_heading = H_LISTS)]
    pub show_default_whitelist: bool,
    /// Recipients that opt out (repeatable)
    #[arg(long, value_name = "FILE", help_heading = H_LISTS)]
    pub whitelist_recipients: Vec<PathBuf>,
    /// Senders never greylisted (repeatable)
    #[arg(long, value_name = "FILE", help_heading = H_LISTS)]
    pub whitelist_senders: Vec<PathBuf>,
    /// Recipients that block their sender's network at once
    #[arg(long, value_name = "FILE", help_heading = H_LISTS)]
    pub trap_recipients: Vec<PathBuf>,

    /// Triplet entries kept
    #[arg(long, value_name = "N", default_value_t = 4_000_000, help_heading = H_DEFENCES)]
    pub max_entries: u64,
    /// Client-network records kept
    #[arg(long, value_name = "N", default_value_t = 1_000_000, help_heading = H_DEFENCES)]
    pub max_clients: u64,
    /// What a blocked network gets
    #[arg(long, value_enum, default_value_t = BlockActionArg::Defer, help_heading = H_DEFENCES)]
    pub block_action: BlockActionArg,
    /// Early retries of one message that block its network (more than N,
    /// however fast; 0: off)
    #[arg(long, value_name = "N", default_value_t = 5, help_heading = H_DEFENCES)]
    pub blast_copies: u32,
    /// Early-retry rounds (distinct seconds) in one delay that block a
    /// network (more than N; 0: off)
    #[arg(long, value_name = "N", default_value_t = 20, help_heading = H_DEFENCES)]
    pub blast_threshold: u32,
    /// How long a blocked network stays blocked, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 3600, help_heading = H_DEFENCES)]
    pub block_time: u32,
    /// A sender that made only early retries and then no attempt for this
    /// long after the delay lost its mail: logged as action=lost-mail and
    /// listed by greylistctl lost-mail (a bare number is seconds)
    #[arg(long, value_name = "N[s|m|h|d]", default_value = "1h", value_parser = seconds_or_unit, help_heading = H_DEFENCES)]
    pub lost_after: u64,
    /// Look for lost mail and expired entries this often
    #[arg(long, value_name = "SECS", default_value_t = 60, help_heading = H_DEFENCES)]
    pub sweep_interval: u64,

    // (The help is given as text: rustdoc would read its brackets as links.)
    #[arg(
        help = "Keep triplets in Redis: redis://[user:password@]host:port/db, rediss://... for \
                TLS, redis+unix:///path, redis+sentinel://host:port[,host:port...]/MASTER[/db], \
                redis+cluster://host:port[,host:port...]"
    )]
    #[arg(long, value_name = "URL", help_heading = H_SEVERAL)]
    pub redis: Option<String>,
    /// The key secret every MX shares: 32 hex digits (openssl rand -hex 16);
    /// required with --redis
    #[arg(long, value_name = "FILE", help_heading = H_SEVERAL)]
    pub redis_secret: Option<PathBuf>,
    /// For rediss://: trust this CA (PEM), not the system's
    #[arg(long, value_name = "FILE", help_heading = H_SEVERAL)]
    pub redis_ca: Option<PathBuf>,
    /// Key prefix
    #[arg(long, value_name = "TEXT", default_value = "greylist:", help_heading = H_SEVERAL)]
    pub redis_prefix: String,
    /// Answer from the local table after MS
    #[arg(long, value_name = "MS", default_value_t = 50, help_heading = H_SEVERAL)]
    pub redis_timeout: u64,
    /// When Redis fails: pass what the local table would defer, or defer it
    #[arg(long, value_enum, default_value_t = RedisFail::Open, help_heading = H_SEVERAL)]
    pub redis_fail: RedisFail,

    /// Snapshot file (default ./greylist-policyd.snap); run-time whitelist
    /// entries are kept beside it in PATH.whitelist
    #[arg(long, value_name = "PATH", help_heading = H_PERSISTENCE)]
    pub snapshot: Option<PathBuf>,
    /// postgrey's database folder: the snapshot goes there, as
    /// DIR/greylist-policyd.snap (unless --snapshot names it)
    #[arg(long, value_name = "DIR", help_heading = H_PERSISTENCE)]
    pub dbdir: Option<PathBuf>,
    /// Save every SECS; 0: only at shutdown
    #[arg(long, value_name = "SECS", default_value_t = 300, help_heading = H_PERSISTENCE)]
    pub snapshot_interval: u64,

    /// greylistctl's socket (default: the snapshot's path with .ctl added;
    /// mode 0600, the daemon's user and root only)
    #[arg(long, value_name = "PATH", help_heading = H_OPERATING)]
    pub control: Option<PathBuf>,
    /// No control socket
    #[arg(long, help_heading = H_OPERATING)]
    pub no_control: bool,
    /// Serve GET /metrics (Prometheus) and GET /health there (a bare port
    /// is on 127.0.0.1)
    #[arg(long, value_name = "[HOST:]PORT", help_heading = H_OPERATING)]
    pub metrics: Option<String>,
    /// Write the daemon's process id to PATH (removed at exit)
    #[arg(long, value_name = "PATH", help_heading = H_OPERATING)]
    pub pidfile: Option<PathBuf>,
    /// Run in the background (for init scripts): the command returns once
    /// the daemon serves (exit 0) or failed to start (exit 1, the error on
    /// stderr); the log then goes to syslog
    #[arg(short = 'd', long, help_heading = H_OPERATING)]
    pub daemonize: bool,
    /// Run as USER (and its groups) once the sockets are bound and the pid
    /// file is written, as postgrey: the snapshot, the control socket and
    /// the list files are then opened as USER
    #[arg(long, value_name = "USER", help_heading = H_OPERATING)]
    pub user: Option<String>,
    /// Run with GROUP as the primary group (default: USER's)
    #[arg(long, value_name = "GROUP", help_heading = H_OPERATING)]
    pub group: Option<String>,
    /// Log to syslog (the default when stderr is not a terminal and
    /// /dev/log exists)
    #[arg(long, overrides_with = "no_syslog", help_heading = H_OPERATING)]
    pub syslog: bool,
    /// Log to stderr only
    #[arg(long, overrides_with = "syslog", help_heading = H_OPERATING)]
    pub no_syslog: bool,
    /// The syslog facility (postgrey's option)
    #[arg(long, aliases = ["syslogfacility", "facility"], value_name = "FACILITY", default_value = "mail", value_parser = syslog_facility, help_heading = H_OPERATING)]
    pub syslog_facility: u8,
    /// The syslog socket (tests)
    #[arg(long, value_name = "PATH", default_value = "/dev/log", hide = true)]
    pub syslog_socket: PathBuf,
    /// Also write the log to stderr when it goes to syslog (it does when
    /// stderr is a terminal)
    #[arg(long, help_heading = H_OPERATING)]
    pub log_stderr: bool,
    /// Decision lines as this daemon writes them (key=value), or as
    /// postgrey does (for log watchers written for postgrey: mailgraph,
    /// logcheck, postgreyreport)
    #[arg(long, value_enum, default_value_t = LogFormat::Native, help_heading = H_OPERATING)]
    pub log_format: LogFormat,
    /// More log lines (postgrey's -v); accepted: every decision is logged
    #[arg(short = 'v', long, action = ArgAction::Count, help_heading = H_OPERATING)]
    pub verbose: u8,
    /// Fewer log lines (postgrey's -q); accepted: every decision is logged
    #[arg(short = 'q', long, action = ArgAction::Count, help_heading = H_OPERATING)]
    pub quiet: u8,

    /// Honour policy_test_time / policy_test_advance attributes (tests)
    #[arg(long, help_heading = H_TESTING)]
    pub allow_test_time: bool,
    /// postgrey's --man: prints this help (the manual page is
    /// greylist-policyd(8))
    #[arg(long, hide = true, action = ArgAction::HelpLong)]
    pub man: Option<bool>,
    /// postgrey's -n: refused, as postgrey refuses it
    #[arg(short = 'n', long, aliases = ["noaction"], hide = true)]
    pub no_action: bool,
}

/// Everything the command line sets, checked.
pub struct Options {
    pub inet: Option<String>,
    pub unix: Option<PathBuf>,
    pub socketmode: u32,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub config: greylist::ConfigBuilder,
    pub policy: PolicyOptions,
    /// `--spf`: the deadline of one check and the DNS server, if given.
    pub spf: Option<(Duration, Option<std::net::SocketAddr>)>,
    pub lists: Vec<(ListKind, Vec<PathBuf>)>,
    /// Whether the built-in client whitelist is used.
    pub default_clients: bool,
    pub show_default_whitelist: bool,
    pub snapshot: PathBuf,
    pub snapshot_interval: u64,
    /// The `--redis-secret` file, to warn when others can read it.
    pub redis_secret: Option<PathBuf>,
    /// `--control`: `None` for the default beside the snapshot.
    pub control: Option<PathBuf>,
    pub no_control: bool,
    pub metrics: Option<String>,
    pub sweep_interval: u64,
    pub pidfile: Option<PathBuf>,
    pub daemonize: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    /// `Some(true)` / `Some(false)`: `--syslog` / `--no-syslog`; `None`:
    /// syslog when stderr is not a terminal and the socket exists.
    pub syslog: Option<bool>,
    pub syslog_facility: u8,
    pub syslog_socket: PathBuf,
    pub log_stderr: bool,
    /// Lines for the log at start: postgrey options accepted without
    /// effect here, and why.
    pub notes: Vec<String>,
}

/// The command line's definitions (for the manual page).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Args::command()
}

/// greylist-policyd(8)'s sections that --help has no place for.
pub const MAN_SECTIONS: &str = r#".SH "EXIT STATUS"
0 after SIGTERM or SIGINT once the final snapshot is written; 1 when the daemon could not
start (the reason is logged) or its final snapshot failed. With \fB\-\-daemonize\fR the
command's status is the start's: 0 once the daemon serves, 1 with the error on stderr.
.SH FILES
.TP
\fI/etc/default/greylist\-policyd\fR
The options the systemd unit, \fIgreylist\-policyd.service\fR, starts the daemon with.
.TP
\fI/etc/greylist/whitelist_clients\fR, \fI/etc/greylist/whitelist_clients.local\fR
The shipped client whitelist (senders known to retry badly) and the site's own entries, in
postgrey's format. Without \fB\-\-whitelist\-clients\fR the same list, built in, is used.
.TP
\fI/var/lib/greylist/greylist.snap\fR
The snapshot, with the run\-time whitelist entries beside it (\fIgreylist.snap.whitelist\fR).
.TP
\fI/run/greylist/policy.sock\fR, \fI/run/greylist/greylist\-policyd.ctl\fR
The policy socket and greylistctl's control socket.
.SH "SEE ALSO"
\fBgreylistctl\fR(8), \fBpostconf\fR(5) (check_policy_service), \fBpostgrey\fR(8),
\fBsystemd.exec\fR(5)
"#;

/// The system's host name, for `%h`.
fn system_hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

impl Args {
    /// The settings, built after every option was read.
    pub fn options(self) -> Options {
        let mut config = Config::builder()
            .delay(self.delay)
            .pass_ttl(self.max_age.saturating_mul(86_400))
            .awl_ttl(self.max_age.saturating_mul(86_400))
            .retry_window(u32::try_from(self.retry_window).unwrap_or(u32::MAX))
            .lost_after(u32::try_from(self.lost_after).unwrap_or(u32::MAX))
            .awl_threshold(self.auto_whitelist_clients)
            .max_entries(self.max_entries)
            .max_clients(self.max_clients)
            .blast_copies(self.blast_copies)
            .blast_threshold(self.blast_threshold)
            .block_time(self.block_time)
            .key_by_host_name(!self.no_key_by_host_name)
            .key_by_verified_domain(self.spf)
            .redis_prefix(&self.redis_prefix)
            .redis_timeout(Duration::from_millis(self.redis_timeout))
            .fail_mode(match self.redis_fail {
                RedisFail::Open => FailMode::Open,
                RedisFail::Defer => FailMode::Defer,
            });
        config = if self.lookup_by_host {
            config.prefixes(32, 128)
        } else {
            config.prefixes(self.ipv4cidr, self.ipv6cidr)
        };
        if let Some(url) = &self.redis {
            config = config.redis(url);
        }
        if let Some(secret) = &self.redis_secret {
            config = config.shared_secret_file(secret);
        }
        if let Some(ca) = &self.redis_ca {
            config = config.redis_ca_file(ca);
        }
        let mut policy = PolicyOptions {
            block_action: match self.block_action {
                BlockActionArg::Defer => BlockAction::Defer,
                BlockActionArg::Reject => BlockAction::Reject,
            },
            allow_test_time: self.allow_test_time,
            postgrey_log: self.log_format == LogFormat::Postgrey,
            greylist_action: self.greylist_action,
            hostname: self.hostname.unwrap_or_else(system_hostname),
            ..PolicyOptions::default()
        };
        if let Some(text) = self.greylist_text {
            policy.greylist_text = text;
        }
        if let Some(header) = self.x_greylist_header {
            policy.x_greylist_header = header;
        }
        let mut notes = Vec::new();
        let mut note = |on: bool, what: &str| {
            if on {
                notes.push(what.to_string());
            }
        };
        note(
            self.privacy,
            "--privacy: accepted; keys are always keyed hashes here, no address is stored",
        );
        note(
            self.lookup_by_subnet,
            "--lookup-by-subnet: accepted; clients are keyed by their network by default",
        );
        note(
            self.exim,
            "--exim: accepted; a connection may carry one query or many here",
        );
        note(
            self.listen_queue_size.is_some(),
            "--listen-queue-size: accepted; the system's listen queue is used",
        );
        note(
            self.verbose + self.quiet > 0,
            "-v/-q: accepted; every decision is logged, one line each",
        );
        let snapshot = self.snapshot.unwrap_or_else(|| {
            let name = PathBuf::from(protocol::DEFAULT_SNAPSHOT);
            match &self.dbdir {
                Some(dir) => dir.join(name),
                None => name,
            }
        });
        Options {
            inet: match (self.inet, &self.unix) {
                (None, None) => Some("127.0.0.1:10023".into()),
                (inet, _) => inet,
            },
            unix: self.unix,
            socketmode: self.socketmode,
            max_connections: self.max_connections.max(1),
            idle_timeout: Duration::from_secs(self.idle_timeout.max(1)),
            request_timeout: Duration::from_secs(self.request_timeout.max(1)),
            config,
            policy,
            spf: self
                .spf
                .then(|| (Duration::from_millis(self.spf_timeout), self.dns_server)),
            default_clients: self.whitelist_clients.is_empty() && !self.no_default_whitelist,
            show_default_whitelist: self.show_default_whitelist,
            lists: vec![
                (ListKind::Clients, self.whitelist_clients),
                (ListKind::Senders, self.whitelist_senders),
                (ListKind::Recipients, self.whitelist_recipients),
                (ListKind::TrapRecipients, self.trap_recipients),
            ],
            snapshot,
            snapshot_interval: self.snapshot_interval,
            redis_secret: self.redis_secret,
            control: self.control,
            no_control: self.no_control,
            metrics: self.metrics,
            sweep_interval: self.sweep_interval.max(1),
            pidfile: self.pidfile,
            daemonize: self.daemonize,
            user: self.user,
            group: self.group,
            syslog: match (self.syslog, self.no_syslog) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            syslog_facility: self.syslog_facility,
            syslog_socket: self.syslog_socket,
            log_stderr: self.log_stderr,
            notes,
        }
    }
}

impl Options {
    /// Every path made absolute, for a daemon that leaves its working
    /// folder (`--daemonize`).
    pub fn make_paths_absolute(&mut self) {
        use crate::service::absolute;
        for path in [&mut self.snapshot, &mut self.syslog_socket]
            .into_iter()
            .chain(&mut self.unix)
            .chain(&mut self.control)
            .chain(&mut self.pidfile)
            .chain(&mut self.redis_secret)
            .chain(
                self.lists
                    .iter_mut()
                    .flat_map(|(_, files)| files.iter_mut()),
            )
        {
            *path = absolute(path);
        }
    }

    /// Where the log goes: syslog when asked (an error if its socket cannot
    /// be reached), or by default when stderr is not a terminal and the
    /// socket is there; stderr when syslog is off, stderr is a terminal,
    /// or `--log-stderr`. A warning for the log, when the default could
    /// not reach syslog.
    pub fn log_sink(&self) -> Result<(crate::log::Sink, Option<String>), String> {
        use std::io::IsTerminal;
        let terminal = std::io::stderr().is_terminal();
        let (syslog, warning) = match self.syslog {
            Some(false) => (None, None),
            Some(true) => (
                Some(crate::log::Syslog::open(
                    &self.syslog_socket,
                    self.syslog_facility,
                )?),
                None,
            ),
            // In the background the terminal is left: syslog all the same.
            None if (terminal && !self.daemonize) || !self.syslog_socket.exists() => (None, None),
            None => match crate::log::Syslog::open(&self.syslog_socket, self.syslog_facility) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(format!("warning: {e}; logging to stderr"))),
            },
        };
        // In the background, stderr until the daemon serves (start-up
        // errors reach the terminal that ran it).
        let stderr = syslog.is_none() || terminal || self.log_stderr || self.daemonize;
        Ok((crate::log::Sink { stderr, syslog }, warning))
    }
}

/// Reads the command line: `--help` and `--version` print and exit 0; a
/// bad option prints clap's error, naming it, and exits 1.
pub fn parse() -> Options {
    match parse_from(std::env::args_os()) {
        Ok(options) => options,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// The options of a command line (its first item the program's name).
/// Empty arguments are left out: Debian's init script for postgrey passes
/// "$POSTGREY_TEXT_OPT", an empty one when no text is set.
fn parse_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Options, clap::Error> {
    use clap::{error::ErrorKind, CommandFactory};
    let args = Args::try_parse_from(args.into_iter().filter(|a| !a.is_empty()))?;
    if args.no_action {
        return Err(Args::command().error(
            ErrorKind::ArgumentConflict,
            "--no-action: postgrey refuses it too (\"don't know how to no-action\")",
        ));
    }
    Ok(args.options())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        let all = std::iter::once("greylist-policyd").chain(args.iter().copied());
        parse_from(all.map(Into::into)).map_err(|e| e.to_string())
    }

    /// Issue 20: `--ipv4cidr` built the whole configuration in the middle
    /// of the command line, so `--redis URL --ipv4cidr 24 --redis-secret F`
    /// failed for want of a secret that came later.
    #[test]
    fn options_are_order_independent() {
        let o = parse(&[
            "--redis",
            "redis://127.0.0.1:6379/0",
            "--ipv4cidr",
            "24",
            "--redis-prefix",
            "mx:",
        ])
        .unwrap();
        let config = o
            .config
            .shared_secret(greylist::Secret::from_bytes([1; 16]))
            .build()
            .unwrap();
        assert_eq!((config.ipv4_prefix(), config.redis_prefix()), (24, "mx:"));
    }

    /// Debian's init script and /etc/default/postgrey lines.
    #[test]
    fn postgreys_options_are_accepted() {
        let o = parse(&[
            "--pidfile=/run/postgrey.pid",
            "--daemonize",
            "--user=postgrey",
            "--group=nogroup",
            "",
            "--inet=10023",
            "--delay=60",
            "--max-age=30",
            "--retry-window=36h",
            "--auto-whitelist-clients",
            "--privacy",
            "--lookup-by-host",
            "--greylist-action=451",
            "--greylist-text=Come back later",
            "--x-greylist-header=X-Greylist: %t s",
            "--hostname=mx.example.net",
            "--exim",
            "--listen-queue-size=100",
            "--socketmode=0660",
            "--dbdir=/var/lib/postgrey",
            "-v",
            "-q",
        ])
        .unwrap();
        let c = o.config.build().unwrap();
        assert_eq!((c.delay(), c.retry_window()), (60, 36 * 3600));
        // postgrey's --max-age expires auto-whitelisted clients too.
        assert_eq!((c.pass_ttl(), c.awl_ttl()), (30 * 86_400, 30 * 86_400));
        assert_eq!((c.ipv4_prefix(), c.ipv6_prefix()), (32, 128));
        assert_eq!(o.inet.as_deref(), Some("10023"));
        assert_eq!(o.socketmode, 0o660);
        assert_eq!(
            o.snapshot,
            PathBuf::from("/var/lib/postgrey/greylist-policyd.snap")
        );
        assert_eq!(o.policy.greylist_action, "451");
        assert_eq!(o.policy.hostname, "mx.example.net");
        assert_eq!(o.notes.len(), 4, "{:?}", o.notes);
        assert!(o.daemonize);
        assert_eq!(
            (o.user.as_deref(), o.group.as_deref()),
            (Some("postgrey"), Some("nogroup"))
        );
        let o = parse(&[
            "-i",
            "127.0.0.1:10030",
            "-u",
            "/run/p.sock",
            "--retry-window",
            "2",
        ])
        .unwrap();
        assert_eq!(o.unix, Some(PathBuf::from("/run/p.sock")));
        assert_eq!(o.config.build().unwrap().retry_window(), 2 * 86_400);
    }

    /// postgrey's remaining spellings: --facility, --syslogfacility; -n is
    /// refused as postgrey refuses it.
    #[test]
    fn postgreys_other_spellings() {
        for spelling in ["--facility=local3", "--syslogfacility=local3"] {
            assert_eq!(parse(&[spelling]).unwrap().syslog_facility, 19);
        }
        for refused in ["-n", "--no-action", "--noaction"] {
            let e = parse(&[refused]).err().unwrap();
            assert!(e.contains("--no-action: postgrey refuses it too"), "{e}");
        }
    }

    /// As with postgrey's Getopt::Long, an option given again replaces the
    /// first (an init script's default, then the operator's); list files
    /// add up.
    #[test]
    fn the_last_value_wins_and_lists_add_up() {
        let o = parse(&[
            "--snapshot",
            "a.snap",
            "--snapshot",
            "b.snap",
            "--delay",
            "1",
            "--delay",
            "2",
            "--whitelist-clients",
            "one",
            "--whitelist-clients",
            "two",
        ])
        .unwrap();
        assert_eq!(o.snapshot, PathBuf::from("b.snap"));
        assert_eq!(o.config.build().unwrap().delay(), 2);
        assert_eq!(o.lists[0].1, [PathBuf::from("one"), PathBuf::from("two")]);
    }

    #[test]
    fn errors_name_the_option() {
        for (args, says) in [
            (&["--delay", "soon"][..], "--delay"),
            (&["--retry-window", "2w"], "--retry-window"),
            (&["--socketmode", "0999"], "--socketmode"),
            (&["--bogus"], "--bogus"),
        ] {
            let e = parse(args).err().unwrap();
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }
}
