//! Postfix's policy delegation protocol, on the engine: reading requests
//! (`name=value` lines ended by a blank line) and answering them
//! (`action=...` and a blank line). `greylist-policyd` serves it; Exim
//! sites reach it through `readsocket`.
//!
//! Reading is bounded: a line longer than [`MAX_LINE`] or a request longer
//! than [`MAX_REQUEST`] is an error that ends the connection. A request the
//! engine cannot judge (not at `protocol_state=RCPT`, a missing or
//! malformed attribute) is answered `DUNNO`, never an error.

use std::fmt;
use std::io::{self, BufRead};
use std::ops::Range;

use crate::{Action, Engine, Reason, Request};

/// Longest request line accepted, in bytes.
pub const MAX_LINE: usize = 4096;
/// Longest request accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Why a connection must be closed.
#[derive(Debug)]
pub enum ProtocolError {
    /// A line longer than [`MAX_LINE`].
    LineTooLong,
    /// A request longer than [`MAX_REQUEST`].
    RequestTooLong,
    /// The connection failed or timed out.
    Io(io::Error),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::LineTooLong => write!(f, "a line longer than {MAX_LINE} bytes"),
            ProtocolError::RequestTooLong => write!(f, "a request longer than {MAX_REQUEST} bytes"),
            ProtocolError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// One policy request: its attributes, and whether any line was malformed.
/// The attributes live in one buffer (a request is read and answered with
/// two allocations, not two per attribute).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    text: String,
    /// Byte ranges of each attribute's name and value in `text`.
    attributes: Vec<(Range<usize>, Range<usize>)>,
    malformed: Option<String>,
}

impl PolicyRequest {
    /// An attribute's value (the last one, if it was sent twice).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .rev()
            .find(|(n, _)| &self.text[n.clone()] == name)
            .map(|(_, v)| &self.text[v.clone()])
    }

    /// Why the request cannot be judged, if a line was malformed.
    pub fn malformed(&self) -> Option<&str> {
        self.malformed.as_deref()
    }

    fn add_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(text) = std::str::from_utf8(line) else {
            self.malformed
                .get_or_insert_with(|| "a line is not UTF-8".into());
            return;
        };
        match text.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                let start = self.text.len();
                self.text.push_str(name);
                self.text.push_str(value);
                let mid = start + name.len();
                self.attributes.push((start..mid, mid..self.text.len()));
            }
            _ => {
                let shown: String = text.chars().take(40).collect();
                self.malformed
                    .get_or_insert_with(|| format!("not a name=value line: {shown:?}"));
            }
        }
    }
}

/// Reads the next request from `reader`: `Ok(None)` at a clean end of the
/// stream (no partial request), an error for an over-long line or request
/// or a failed read. However the bytes arrive (split across reads at any
/// point), the requests are the same.
pub fn read_request(reader: &mut impl BufRead) -> Result<Option<PolicyRequest>, ProtocolError> {
    let mut request = PolicyRequest::default();
    let (mut line, mut total, mut started) = (Vec::new(), 0usize, false);
    loop {
        line.clear();
        let complete = read_line(reader, &mut line)?;
        total += line.len() + usize::from(complete);
        if total > MAX_REQUEST {
            return Err(ProtocolError::RequestTooLong);
        }
        if !complete {
            // End of stream: a clean end only between requests.
            return if started || !line.is_empty() {
                Err(ProtocolError::Io(io::ErrorKind::UnexpectedEof.into()))
            } else {
                Ok(None)
            };
        }
        if line.is_empty() || line == b"\r" {
            if started {
                return Ok(Some(request));
            }
            continue; // blank lines between requests are harmless
        }
        started = true;
        request.add_line(&line);
    }
}

/// Reads one line (without its `\n`) into `out`; false if the stream ended
/// first.
fn read_line(reader: &mut impl BufRead, out: &mut Vec<u8>) -> Result<bool, ProtocolError> {
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ProtocolError::Io(e)),
        };
        if buf.is_empty() {
            return Ok(false);
        }
        let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        if out.len() + chunk.len() > MAX_LINE {
            return Err(ProtocolError::LineTooLong);
        }
        out.extend_from_slice(chunk);
        let used = chunk.len() + usize::from(found);
        reader.consume(used);
        if found {
            return Ok(true);
        }
    }
}

/// What a blocked client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockAction {
    /// `REJECT 5.7.1 ...`: a permanent refusal.
    Reject,
    /// `DEFER_IF_PERMIT 4.7.1 ...`: a temporary one.
    Defer,
}

/// How the daemon answers.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    /// Text of a defer; `%s` is the seconds to wait, `%r` the recipient's
    /// domain (as postgrey's `--greylist-text`).
    pub greylist_text: String,
    /// What a blocked client network gets.
    pub block_action: BlockAction,
    /// Honour `policy_test_time` (a request's own `now`) and
    /// `policy_test_advance` (moves this server's clock forward): for tests
    /// with a real MTA, which must not sleep through the delay.
    pub allow_test_time: bool,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            greylist_text: "Greylisted, please try again in %s seconds".into(),
            block_action: BlockAction::Defer,
            allow_test_time: false,
        }
    }
}

/// An answer: the action line for the client, and a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `DUNNO`, `DEFER_IF_PERMIT ...`, `PREPEND ...`, `REJECT ...`.
    pub action: String,
    /// One line for the log, `key=value` pairs an operator can grep.
    pub log: String,
}

impl Answer {
    /// The bytes to send: `action=...` and a blank line.
    pub fn to_wire(&self) -> String {
        format!("action={}\n\n", self.action)
    }
}

fn dunno(why: impl fmt::Display) -> Answer {
    Answer {
        action: "DUNNO".into(),
        log: format!("action=dunno why=\"{why}\""),
    }
}

fn domain_of(address: &str) -> &str {
    address
        .rsplit_once('@')
        .map_or("", |(_, d)| d.trim_end_matches('>'))
}

/// Answers one request at `now` (Unix seconds): `DUNNO` unless it is an
/// RCPT-stage request the engine can judge.
pub fn answer(
    engine: &Engine,
    request: &PolicyRequest,
    options: &PolicyOptions,
    now: i64,
) -> Answer {
    if let Some(why) = request.malformed() {
        return dunno(format_args!("malformed request: {why}"));
    }
    if request.get("request") != Some("smtpd_access_policy") {
        return dunno("not a smtpd_access_policy request");
    }
    let state = request.get("protocol_state").unwrap_or("");
    if !state.eq_ignore_ascii_case("RCPT") {
        return dunno(format_args!("protocol_state={state} is not RCPT"));
    }
    let (Some(ip), Some(recipient)) = (request.get("client_address"), request.get("recipient"))
    else {
        return dunno("client_address or recipient missing");
    };
    let sender = request.get("sender").unwrap_or("");
    let named = |k| request.get(k).filter(|v| !v.is_empty() && *v != "unknown");
    let req = Request {
        client_name: named("client_name"),
        helo: named("helo_name"),
        ..Request::new(ip, sender, recipient)
    };
    let now = match request.get("policy_test_time") {
        Some(t) if options.allow_test_time => t.parse().unwrap_or(now),
        _ => now,
    };
    let verdict = match engine.check_request(&req, now) {
        Ok(v) => v,
        Err(e) => return dunno(e),
    };
    let action = match (verdict.action, verdict.reason) {
        (Action::Pass, Reason::Retried) => {
            format!(
                "PREPEND X-Greylist: delayed {} seconds by greylist-policyd",
                verdict.delayed
            )
        }
        (Action::Pass, _) => "DUNNO".into(),
        (Action::Defer, _) => {
            let text = options
                .greylist_text
                .replace("%s", &verdict.retry_after.to_string())
                .replace("%r", domain_of(recipient));
            format!(
                "DEFER_IF_PERMIT {} {text}",
                engine.config().reply_enhanced()
            )
        }
        (Action::Block, _) => match options.block_action {
            BlockAction::Reject => "REJECT 5.7.1 Client network blocked for abuse".into(),
            BlockAction::Defer => format!(
                "DEFER_IF_PERMIT 4.7.1 Client network blocked, please try again in {} seconds",
                verdict.retry_after
            ),
        },
    };
    let log = format!(
        "action={} reason={} client={ip} from=<{}> to=<{recipient}> retry_after={} delayed={}",
        match verdict.action {
            Action::Pass => "pass",
            Action::Defer => "defer",
            Action::Block => "block",
        },
        verdict.reason.as_str(),
        sender.trim_matches(['<', '>']),
        verdict.retry_after,
        verdict.delayed
    );
    Answer { action, log }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    const T0: i64 = 1_700_000_000;

    fn rcpt(ip: &str, sender: &str, rcpt: &str) -> String {
        format!(
            "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
             client_address={ip}\nclient_name=unknown\nhelo_name=mx.example\nsender={sender}\n\
             recipient={rcpt}\ninstance=123.456\n\n"
        )
    }

    fn read_all(bytes: &[u8]) -> Vec<PolicyRequest> {
        let mut reader = io::BufReader::with_capacity(7, bytes);
        std::iter::from_fn(|| read_request(&mut reader).unwrap()).collect()
    }

    #[test]
    fn requests_split_anywhere_read_the_same() {
        let wire = format!(
            "{}{}",
            rcpt("192.0.2.1", "a@x.org", "b@y.net"),
            rcpt("192.0.2.2", "", "c@y.net")
        );
        let whole = read_all(wire.as_bytes());
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[1].get("sender"), Some(""));
        let crlf = wire.replace('\n', "\r\n");
        assert_eq!(read_all(crlf.as_bytes()), whole);
    }

    #[test]
    fn limits_and_truncation() {
        let long = format!(
            "request=smtpd_access_policy\nsender={}\n\n",
            "a".repeat(MAX_LINE)
        );
        let mut r = io::BufReader::new(long.as_bytes());
        assert!(matches!(
            read_request(&mut r),
            Err(ProtocolError::LineTooLong)
        ));
        let many = "x=y\n".repeat(MAX_REQUEST / 4 + 1);
        let mut r = io::BufReader::new(many.as_bytes());
        assert!(matches!(
            read_request(&mut r),
            Err(ProtocolError::RequestTooLong)
        ));
        let mut r = io::BufReader::new(&b"request=smtpd_access_policy\nsender=a"[..]);
        assert!(matches!(read_request(&mut r), Err(ProtocolError::Io(_))));
        let mut r = io::BufReader::new(&b"\n\n"[..]);
        assert!(read_request(&mut r).unwrap().is_none());
    }

    #[test]
    fn answers() {
        let e = Engine::new(Config::default());
        let o = PolicyOptions::default();
        let ask = |wire: &str, now| answer(&e, &read_all(wire.as_bytes())[0], &o, now);
        let first = ask(&rcpt("192.0.2.1", "a@x.org", "b@y.net"), T0);
        assert_eq!(
            first.action,
            "DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 300 seconds"
        );
        assert_eq!(first.to_wire(), format!("action={}\n\n", first.action));
        assert!(
            first
                .log
                .starts_with("action=defer reason=new client=192.0.2.1 "),
            "{}",
            first.log
        );
        let pass = ask(&rcpt("192.0.2.1", "a@x.org", "b@y.net"), T0 + 301);
        assert_eq!(
            pass.action,
            "PREPEND X-Greylist: delayed 301 seconds by greylist-policyd"
        );
        assert_eq!(
            ask(&rcpt("192.0.2.1", "a@x.org", "b@y.net"), T0 + 400).action,
            "DUNNO"
        );
        let data = rcpt("192.0.2.1", "a@x.org", "b@y.net").replace("RCPT", "DATA");
        assert_eq!(ask(&data, T0).action, "DUNNO");
        assert_eq!(
            ask("request=smtpd_access_policy\nprotocol_state=RCPT\n\n", T0).action,
            "DUNNO"
        );
        assert_eq!(
            ask("junk without equals\nrequest=smtpd_access_policy\n\n", T0).action,
            "DUNNO"
        );
        let bad_ip = ask(&rcpt("999.1.1.1", "a@x.org", "b@y.net"), T0);
        assert_eq!(bad_ip.action, "DUNNO");
        assert!(
            bad_ip.log.contains("client_ip: not an IP address"),
            "{}",
            bad_ip.log
        );
    }

    #[test]
    fn test_time_only_when_allowed() {
        let e = Engine::new(Config::default());
        let wire = rcpt("192.0.2.1", "a@x.org", "b@y.net")
            .replace("instance", "policy_test_time=1700000000\ninstance");
        let req = &read_all(wire.as_bytes())[0];
        let strict = answer(&e, req, &PolicyOptions::default(), 0);
        assert!(strict.log.contains("retry_after=300"));
        let allowed = PolicyOptions {
            allow_test_time: true,
            ..PolicyOptions::default()
        };
        let e = Engine::new(Config::default());
        assert!(answer(&e, req, &allowed, 0)
            .action
            .starts_with("DEFER_IF_PERMIT"));
        // Judged at the attribute's time, not the server's clock (0).
        let later = wire.replace("1700000000", "1700000300");
        let retry = answer(&e, &read_all(later.as_bytes())[0], &allowed, 0);
        assert!(retry.action.starts_with("PREPEND"), "{}", retry.action);
    }

    #[test]
    fn block_actions_and_recipient_domain_in_text() {
        let e = Engine::new(Config::default());
        e.set_list(crate::ListKind::TrapRecipients, &["trap@y.net"])
            .unwrap();
        let req = &read_all(rcpt("203.0.113.9", "s@x", "trap@y.net").as_bytes())[0];
        let reject = PolicyOptions {
            block_action: BlockAction::Reject,
            greylist_text: "see https://help.example/%r".into(),
            ..PolicyOptions::default()
        };
        assert_eq!(
            answer(&e, req, &reject, T0).action,
            "REJECT 5.7.1 Client network blocked for abuse"
        );
        let defer = answer(&e, req, &PolicyOptions::default(), T0 + 1);
        assert!(
            defer
                .action
                .starts_with("DEFER_IF_PERMIT 4.7.1 Client network blocked"),
            "{}",
            defer.action
        );
        let req = &read_all(rcpt("198.51.100.1", "a@x", "b@y.net").as_bytes())[0];
        assert_eq!(
            answer(&e, req, &reject, T0).action,
            "DEFER_IF_PERMIT 4.2.0 see https://help.example/y.net"
        );
    }
}
