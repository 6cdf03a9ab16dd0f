//! greylistctl: what an operator asks of a running greylist-policyd, over
//! its control socket (see `greylist-policyd --help`, `--control`). Tables
//! for people by default, `--json` for scripts; exit status 1, with the
//! reason, when the daemon is not running or refuses.

#![deny(unsafe_code)]

#[path = "../greylist-policyd/manual.rs"]
mod manual;
#[path = "../greylist-policyd/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

use protocol::{control_path, utc, Command, Reply, WhitelistAction, DEFAULT_SNAPSHOT, MAX_REPLY};

/// How long the daemon may take to answer (a save of a large table, or a
/// report read from Redis).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser)]
#[command(
    name = "greylistctl",
    version,
    about = "Ask a running greylist-policyd: status, lost mail, a client's record, release, \
             forget, run-time whitelist entries, reload, save",
    after_help = "Exit status: 0 when the daemon did it, 1 when it is not running, refused, \
                  or the command failed (the reason is on stderr)."
)]
struct Cli {
    /// The daemon's control socket (its --control). Default: the Debian
    /// package's, /run/greylist/greylist-policyd.ctl, when it is there;
    /// else the one a daemon started in this folder with no options makes,
    /// ./greylist-policyd.snap.ctl
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Print the daemon's answer as JSON, for scripts
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Sends one command and reads the reply.
fn ask(socket: &Path, command: &Command) -> Result<Value, String> {
    let shown = socket.display();
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("greylist-policyd is not running: no control socket at {shown} (see --control)")
        }
        std::io::ErrorKind::ConnectionRefused => {
            format!("greylist-policyd is not running: nobody listens on {shown}")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("{shown}: permission denied (run greylistctl as the daemon's user or root)")
        }
        _ => format!("{shown}: {e}"),
    })?;
    let io = |e: std::io::Error| format!("{shown}: {e}");
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_string(command).map_err(|e| e.to_string())?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    BufReader::new((&stream).take(MAX_REPLY as u64))
        .read_until(b'\n', &mut answer)
        .map_err(io)?;
    if answer.is_empty() {
        return Err(format!(
            "{shown}: the daemon closed the connection without an answer"
        ));
    }
    let reply: Reply = serde_json::from_slice(&answer)
        .map_err(|e| format!("{shown}: not an answer of greylist-policyd: {e}"))?;
    match (reply.ok, reply.result) {
        (true, Some(result)) => Ok(result),
        _ => Err(reply.error.unwrap_or_else(|| "the daemon refused".into())),
    }
}

/// A JSON value as a table cell. Addresses come from remote senders: a
/// control or format character (an escape sequence, a bidirectional
/// override) is shown as `\u{..}`, never sent to the terminal.
fn cell(v: &Value) -> String {
    let text = match v {
        Value::Null => return "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let hostile = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    if !text.contains(hostile) {
        return text;
    }
    text.chars()
        .map(|c| {
            if hostile(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn time(v: &Value) -> String {
    match v.as_i64() {
        Some(t) if t > 0 => utc(t),
        _ => "-".into(),
    }
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out += &line(row);
    }
    out
}

/// `key: value` lines.
fn pairs(items: &[(&str, String)]) -> String {
    let width = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    items
        .iter()
        .map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:")))
        .collect()
}

fn status(v: &Value) -> String {
    let snap = &v["snapshot"];
    let mut items = vec![
        ("version", cell(&v["version"])),
        ("uptime", format!("{} s", cell(&v["uptime_seconds"]))),
        ("health", cell(&v["health"])),
        (
            "entries",
            format!("{} of {}", cell(&v["entries"]), cell(&v["max_entries"])),
        ),
        (
            "client records",
            format!("{} of {}", cell(&v["clients"]), cell(&v["max_clients"])),
        ),
        ("checks", cell(&v["checks"])),
    ];
    let reasons: Vec<String> = v["by_reason"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect())
        .unwrap_or_default();
    items.push(("by reason", reasons.join(", ")));
    items.push((
        "lost mail",
        format!(
            "{} ({} recovered)",
            cell(&v["lost_mail"]),
            cell(&v["lost_recovered"])
        ),
    ));
    items.push((
        "removed",
        format!(
            "{} expired, {} evicted, {} client records evicted",
            cell(&v["expired"]),
            cell(&v["evicted"]),
            cell(&v["clients_evicted"])
        ),
    ));
    items.push((
        "snapshot",
        format!(
            "{} (every {} s; {} saves, {} failed; last saved {})",
            cell(&snap["path"]),
            cell(&snap["interval_seconds"]),
            cell(&snap["saves"]),
            cell(&snap["failures"]),
            time(&snap["last_success"])
        ),
    ));
    if !snap["last_error"].is_null() {
        items.push(("snapshot error", cell(&snap["last_error"])));
    }
    let store = &v["store"];
    if store.is_null() {
        items.push(("redis", "not used (in-memory)".into()));
    } else {
        items.push((
            "redis",
            format!(
                "{} {} (prefix {}, fail {}): {} round trips, {} errors, {} timeouts, \
                 {} cache hits, {} malformed, {} answered locally",
                cell(&store["url"]),
                cell(&store["state"]),
                cell(&store["prefix"]),
                cell(&store["fail_mode"]),
                cell(&store["round_trips"]),
                cell(&store["errors"]),
                cell(&store["timeouts"]),
                cell(&store["cache_hits"]),
                cell(&store["malformed"]),
                cell(&store["answered_locally"])
            ),
        ));
        if !store["last_error"].is_null() {
            items.push(("redis error", cell(&store["last_error"])));
        }
    }
    let c = &v["connections"];
    items.push((
        "connections",
        format!("{} open of {}", cell(&c["open"]), cell(&c["max"])),
    ));
    pairs(&items)
}

fn lost_mail(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let samples: Vec<String> = r["samples"]
                        .as_array()
                        .map(|s| {
                            s.iter()
                                .map(|a| {
                                    format!(
                                        "<{}> -> <{}> from {}",
                                        cell(&a["from"]),
                                        cell(&a["to"]),
                                        cell(&a["client"])
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    vec![
                        cell(&r["network"]),
                        cell(&r["count"]),
                        time(&r["last_seen"]),
                        samples.join("; "),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return "no network lost mail\n".into();
    }
    table(
        &[
            "NETWORK",
            "LOST",
            "LAST SEEN",
            "SENDERS AND RECIPIENTS SEEN",
        ],
        rows,
    )
}

fn client(v: &Value) -> String {
    let blocked = match v["blocked_until"].as_i64() {
        Some(t) => format!("until {}", utc(t)),
        None => "no".into(),
    };
    pairs(&[
        ("network", cell(&v["network"])),
        ("pending", cell(&v["pending"])),
        ("passed", cell(&v["passed"])),
        ("passes", cell(&v["passes"])),
        ("whitelisted", cell(&v["whitelisted"])),
        ("auto-whitelisted", cell(&v["auto_whitelisted"])),
        ("blocked", blocked),
        ("lost mail", cell(&v["lost_mail"])),
    ])
}

fn render(command: &Command, v: &Value) -> String {
    match command {
        Command::Status => status(v),
        Command::LostMail { .. } => lost_mail(v),
        Command::Client { .. } => client(v),
        Command::Release { .. } | Command::ReleaseClient { .. } => {
            format!("released {} triplet(s)\n", cell(&v["released"]))
        }
        Command::Forget { .. } => match v["forgotten"].as_bool() {
            Some(true) => "forgotten\n".into(),
            _ => "not known (nothing to forget)\n".into(),
        },
        Command::Whitelist {
            action: WhitelistAction::Add { .. } | WhitelistAction::Remove { .. },
        } => match v["changed"].as_bool() {
            Some(true) => "done\n".into(),
            _ => "nothing to change\n".into(),
        },
        Command::Whitelist {
            action: WhitelistAction::List,
        } => {
            let rows = v
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| vec![cell(&r["list"]), cell(&r["entry"]), cell(&r["origin"])])
                        .collect()
                })
                .unwrap_or_default();
            table(&["LIST", "ENTRY", "ORIGIN"], rows)
        }
        Command::Reload => {
            let counts: Vec<String> = v
                .as_object()
                .map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect())
                .unwrap_or_default();
            format!("lists reloaded: {}\n", counts.join(", "))
        }
        Command::Save => format!(
            "saved {} entries to {}\n",
            cell(&v["entries"]),
            cell(&v["path"])
        ),
    }
}

/// The Debian package's control socket.
const SYSTEM_CONTROL: &str = "/run/greylist/greylist-policyd.ctl";

/// greylistctl(8)'s sections that --help has no place for.
const MAN_SECTIONS: &str = r#".SH FILES
.TP
\fI/run/greylist/greylist\-policyd.ctl\fR
The control socket of the daemon the Debian package starts (mode 0600: its user and root).
.SH "SEE ALSO"
\fBgreylist\-policyd\fR(8)
"#;

/// `--control`, or the default socket.
fn control_socket(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let system = Path::new(SYSTEM_CONTROL);
        if std::fs::symlink_metadata(system).is_ok() {
            system.to_path_buf()
        } else {
            control_path(Path::new(DEFAULT_SNAPSHOT))
        }
    })
}

fn main() -> ExitCode {
    if manual::requested() {
        use clap::CommandFactory;
        manual::print(Cli::command(), MAN_SECTIONS);
    }
    let cli = Cli::parse();
    let command = cli.command;
    let guessed = cli.control.is_none();
    let socket = control_socket(cli.control);
    let asked = ask(&socket, &command).map_err(|e| {
        if guessed && socket != Path::new(SYSTEM_CONTROL) {
            format!("{e}; nor is one at {SYSTEM_CONTROL} (the Debian package's)")
        } else {
            e
        }
    });
    match asked {
        Ok(v) => {
            let text = if cli.json {
                serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
            } else {
                render(&command, &v)
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("greylistctl: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_never_carry_terminal_controls() {
        let hostile = Value::from("a\u{1b}[2J\u{9b}31m\u{202e}b@x");
        assert_eq!(cell(&hostile), "a\\u{1b}[2J\\u{9b}31m\\u{202e}b@x");
        assert_eq!(
            cell(&Value::from("J\u{fc}rgen@b\u{fc}cher.example")),
            "J\u{fc}rgen@b\u{fc}cher.example"
        );
        assert_eq!(cell(&Value::Null), "-");
    }
}
