//! The control socket's protocol, shared by greylist-policyd and
//! greylistctl: a client connects to the unix socket, writes one request
//! as a line of JSON, and reads one reply line of JSON; then the daemon
//! closes the connection.
//!
//! ```text
//! {"command":"release","ip":"192.0.2.1","sender":"a@example.org","recipient":"b@example.net"}
//! {"ok":true,"result":{"released":1}}
//! {"ok":false,"error":"client_ip: not an IP address: \"x\""}
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest request or reply line, in bytes (a reply is larger: a status
/// or a lost-mail report of at most [`MAX_ROWS`] rows).
pub const MAX_REQUEST: usize = 64 << 10;
#[allow(dead_code)] // what greylistctl reads at most
pub const MAX_REPLY: usize = 16 << 20;

/// Most rows a report returns.
pub const MAX_ROWS: usize = 10_000;

/// What an operator asks of the daemon: greylistctl's subcommands (their
/// help is these comments) and the requests on the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Uptime, entries and client records with their caps, counters per
    /// reason, lost mail, evictions, snapshot, Redis, connections, health
    Status,
    /// Networks that most likely lost mail (early retries, then silence),
    /// worst first, with the senders and recipients the daemon saw
    LostMail {
        /// Most networks to list
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// A client's record: pending, passed, passes, whitelisted,
    /// auto-whitelisted, blocked until, lost mail; of its network, or with
    /// --name of its verified host name's domain when that keys it
    Client {
        ip: String,
        /// The client's verified host name (Postfix's client_name)
        #[arg(long)]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Let one triplet pass from now on
    Release {
        ip: String,
        sender: String,
        recipient: String,
    },
    /// Lift a network's block and let its waiting triplets pass
    ReleaseClient { ip: String },
    /// Forget a triplet: its next attempt is greylisted as new
    Forget {
        ip: String,
        sender: String,
        recipient: String,
    },
    /// Run-time whitelist entries (kept by the daemon across restarts; the
    /// list files are never rewritten)
    Whitelist {
        #[command(subcommand)]
        action: WhitelistAction,
    },
    /// Read the list files again (as SIGHUP)
    Reload,
    /// Sweep and write the snapshot now, and say how it went
    Save,
}

/// What `whitelist` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum WhitelistAction {
    /// Add an entry: a client IP, CIDR or .host.suffix; a sender or
    /// recipient address or domain
    Add { list: Whitelist, entry: String },
    /// Remove a run-time entry
    Remove { list: Whitelist, entry: String },
    /// Every entry, with its origin (a list file, or run time)
    List,
}

/// The whitelists an operator can add to at run time.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Whitelist {
    Clients,
    Senders,
    Recipients,
}

impl Whitelist {
    pub const ALL: [Whitelist; 3] = [
        Whitelist::Clients,
        Whitelist::Senders,
        Whitelist::Recipients,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Whitelist::Clients => "clients",
            Whitelist::Senders => "senders",
            Whitelist::Recipients => "recipients",
        }
    }

    pub fn from_name(name: &str) -> Option<Whitelist> {
        Whitelist::ALL.into_iter().find(|w| w.as_str() == name)
    }
}

/// The daemon's answer: a result, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn ok(result: serde_json::Value) -> Reply {
        Reply {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn error(why: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            result: None,
            error: Some(why.into()),
        }
    }
}

/// The daemon's default snapshot, as `--snapshot` says.
pub const DEFAULT_SNAPSHOT: &str = "greylist-policyd.snap";

/// The control socket that goes with a snapshot: beside it, `<snapshot>.ctl`.
pub fn control_path(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.as_os_str().to_owned();
    name.push(".ctl");
    PathBuf::from(name)
}

/// Unix seconds as `2026-12-02T04:19:36Z`.
pub fn utc(now: i64) -> String {
    let (year, month, day, h, m, s) = greylist::policy::civil_time(now);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}
