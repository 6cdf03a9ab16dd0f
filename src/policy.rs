//! Postfix's policy delegation protocol, on the engine: reading requests
//! (`name=value` lines ended by a blank line) and answering them
//! (`action=...` and a blank line). `greylist-policyd` serves it; Exim
//! sites reach it through `readsocket`.
//!
//! Reading is bounded: a line longer than [`MAX_LINE`] or a request longer
//! than [`MAX_REQUEST`] is an error that ends the connection. A request
//! that is not at `protocol_state=RCPT` is answered `DUNNO`. At RCPT, what
//! the engine cannot judge (a missing recipient, a client address that is
//! not one) is greylisted: fail closed for the request, never for the
//! daemon. Values are bytes: a sender or recipient that is not UTF-8, or
//! longer than the engine's 1 KiB, is keyed by its bytes and greylisted
//! like any other, and a line that is not `name=value` is ignored.

use std::fmt;
use std::io::{self, BufRead};
use std::ops::Range;

use crate::{Action, Engine, KeyKind, Reason, Request, Verdict};

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

/// One policy request: its attributes, and the first line that was not
/// `name=value` (ignored, but worth a log line). Values are bytes, as
/// Postfix passes them: an address need not be UTF-8. The attributes live
/// in one buffer (a request is read and answered with two allocations, not
/// two per attribute).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    text: Vec<u8>,
    /// Byte ranges of each attribute's name and value in `text`.
    attributes: Vec<(Range<usize>, Range<usize>)>,
    malformed: Option<String>,
}

impl PolicyRequest {
    /// An attribute's value (the last one, if it was sent twice), if it is
    /// UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// An attribute's value as bytes (the last one, if it was sent twice).
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.attributes
            .iter()
            .rev()
            .find(|(n, _)| self.text[n.clone()] == *name.as_bytes())
            .map(|(_, v)| &self.text[v.clone()])
    }

    /// The first line that was not `name=value`, if any (it was ignored).
    pub fn malformed(&self) -> Option<&str> {
        self.malformed.as_deref()
    }

    /// Takes the line at `text[start..]` (just read, without its `\n`) as
    /// an attribute, or notes it as malformed and drops it.
    fn add_line(&mut self, start: usize) {
        if self.text.last() == Some(&b'\r') {
            self.text.pop();
        }
        let line = &self.text[start..];
        match memchr::memchr(b'=', line) {
            Some(eq) if eq > 0 => {
                let mid = start + eq;
                self.attributes.push((start..mid, mid + 1..self.text.len()));
            }
            _ => {
                if self.malformed.is_none() {
                    let mut shown = String::from("not a name=value line: ");
                    quote_into(&mut shown, line, 40);
                    self.malformed = Some(shown);
                }
                self.text.truncate(start);
            }
        }
    }
}

/// The bytes a request's buffer is allocated with, and kept at between
/// requests on one connection: a Postfix request (about 25 attributes) is
/// under 1 KiB; a bigger one grows it for itself alone.
const REQUEST_CAPACITY: usize = 1024;

/// Reads the next request from `reader`: `Ok(None)` at a clean end of the
/// stream (no partial request), an error for an over-long line or request
/// or a failed read. However the bytes arrive (split across reads at any
/// point), the requests are the same.
pub fn read_request(reader: &mut impl BufRead) -> Result<Option<PolicyRequest>, ProtocolError> {
    let mut request = PolicyRequest::default();
    Ok(read_request_into(reader, &mut request)?.then_some(request))
}

/// [`read_request`] into `request`, whose buffers a connection reuses from
/// one request to the next (no allocation per request): true when a
/// request was read, false at a clean end of the stream. On an error,
/// `request` holds what was read of the broken one.
pub fn read_request_into(
    reader: &mut impl BufRead,
    request: &mut PolicyRequest,
) -> Result<bool, ProtocolError> {
    request.text.clear();
    request.text.shrink_to(REQUEST_CAPACITY);
    request.text.reserve(REQUEST_CAPACITY);
    request.attributes.clear();
    request.attributes.shrink_to(32);
    request.attributes.reserve(32);
    request.malformed = None;
    let (mut total, mut started) = (0usize, false);
    loop {
        let start = request.text.len();
        let complete = read_line(reader, &mut request.text, start)?;
        let len = request.text.len() - start;
        total += len + usize::from(complete);
        if total > MAX_REQUEST {
            return Err(ProtocolError::RequestTooLong);
        }
        if !complete {
            // End of stream: a clean end only between requests.
            return if started || len > 0 {
                Err(ProtocolError::Io(io::ErrorKind::UnexpectedEof.into()))
            } else {
                Ok(false)
            };
        }
        if len == 0 || request.text[start..] == *b"\r" {
            request.text.truncate(start);
            if started {
                return Ok(true);
            }
            continue; // blank lines between requests are harmless
        }
        started = true;
        request.add_line(start);
    }
}

/// Reads one line (without its `\n`) onto the end of `out`, where it
/// starts at `start`; false if the stream ended first.
fn read_line(
    reader: &mut impl BufRead,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<bool, ProtocolError> {
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ProtocolError::Io(e)),
        };
        if buf.is_empty() {
            return Ok(false);
        }
        let (chunk, found) = match memchr::memchr(b'\n', buf) {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        if out.len() - start + chunk.len() > MAX_LINE {
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
    /// The action of a defer (postgrey's `--greylist-action`):
    /// `DEFER_IF_PERMIT` by default.
    pub greylist_action: String,
    /// The header of a message that passed after its delay (postgrey's
    /// `--x-greylist-header`): `%t` the delay in seconds, `%v` this
    /// version, `%h` [`hostname`](Self::hostname), `%d` the date (RFC 5322).
    pub x_greylist_header: String,
    /// The host name for `%h`.
    pub hostname: String,
    /// Decision lines in postgrey's format (`action=greylist, reason=new,
    /// client_name=..., client_address=..., sender=..., recipient=...`),
    /// for log watchers written for postgrey.
    pub postgrey_log: bool,
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
            greylist_action: "DEFER_IF_PERMIT".into(),
            x_greylist_header: "X-Greylist: delayed %t seconds by greylist-policyd".into(),
            hostname: "localhost".into(),
            postgrey_log: false,
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
    /// The engine's verdict, when it judged the request.
    pub verdict: Option<Verdict>,
    /// The key of the triplet as the engine judged it (see
    /// [`Engine::check_request_keyed`]), when it judged the request.
    pub triplet_key: Option<u128>,
    /// What the log line says of it (`action=` and `reason=`): `pass`,
    /// `defer` or `block` and the verdict's reason; `defer` and
    /// `cannot-judge`; `dunno` and `not-rcpt`.
    pub outcome: (&'static str, &'static str),
    /// The sender domain a [`SenderCheck`] verified, which keyed the
    /// request with the engine's `key_by_verified_domain` (see
    /// [`Answer::client_key`]).
    pub verified_domain: Option<String>,
}

impl Answer {
    /// The bytes to send: `action=...` and a blank line.
    pub fn to_wire(&self) -> String {
        let mut wire = Vec::new();
        self.wire_into(&mut wire);
        String::from_utf8(wire).expect("an action is text")
    }

    /// [`Answer::to_wire`] into `out` (cleared first), a buffer a
    /// connection reuses.
    pub fn wire_into(&self, out: &mut Vec<u8>) {
        out.clear();
        for part in [&b"action="[..], self.action.as_bytes(), b"\n\n"] {
            out.extend_from_slice(part);
        }
    }

    /// The key the engine judged the request's triplet under (the key
    /// its events carry), and the client part of that key as text
    /// (`192.0.2.0/24`, `google.com`): what a host keeps a deferred
    /// request's addresses under, to name them when its mail is lost.
    /// `None` when the engine did not judge it.
    pub fn client_key(&self, engine: &Engine, request: &PolicyRequest) -> Option<(u128, String)> {
        let (v, key) = (self.verdict?, self.triplet_key?);
        let req = engine_request(request)?;
        let req = Request {
            verified_domain: self.verified_domain.as_deref().map(str::as_bytes),
            ..req
        };
        let client = match v.key {
            KeyKind::Network => {
                let c = engine.config();
                crate::ClientNet::parse(req.client_ip, c.ipv4_prefix(), c.ipv6_prefix())
                    .ok()?
                    .to_string()
            }
            kind => key_domain(&req, kind)?,
        };
        Some((key, client))
    }
}

/// Longest value a log line shows of one field, in bytes before escaping.
pub const MAX_LOG_VALUE: usize = 256;

/// Appends `value` to a log line so that it stays one field whatever it
/// holds: as it is when every byte is printable ASCII other than `"` and
/// `\`, else in double quotes, with `"` and `\` escaped by a backslash and
/// every byte outside printable ASCII but the space written `\xHH`. At most `max`
/// bytes are shown; a longer value is cut and says how long it was. A log
/// parser (fail2ban, a SIEM) thus reads one decision as one line of
/// `key=value` fields, whatever a sender put in its address.
pub fn quote_into(out: &mut String, value: &[u8], max: usize) {
    quote_parts_into(out, &[value], max);
}

/// [`quote_into`] for a value in parts, shown as one.
fn quote_parts_into(out: &mut String, parts: &[&[u8]], max: usize) {
    use std::fmt::Write as _;
    let plain = |b: u8| b.is_ascii_graphic() && b != b'"' && b != b'\\';
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if (1..=max).contains(&len) && parts.iter().all(|p| p.iter().all(|&b| plain(b))) {
        for part in parts {
            out.push_str(std::str::from_utf8(part).expect("ASCII"));
        }
        return;
    }
    out.push('"');
    let mut left = max;
    for part in parts {
        let shown = &part[..part.len().min(left)];
        left -= shown.len();
        for &b in shown {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b' ' => out.push(' '),
                b if plain(b) => out.push(char::from(b)),
                b => {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
        }
    }
    if len > max {
        let _ = write!(out, "...({len} bytes)");
    }
    out.push('"');
}

/// Appends ` key=value` to a log line, the value quoted as [`quote_into`]
/// does.
pub fn field(out: &mut String, key: &str, value: &[u8]) {
    out.push(' ');
    out.push_str(key);
    out.push('=');
    quote_into(out, value, MAX_LOG_VALUE);
}

/// Appends ` key=<address>`, the brackets inside any quotes.
pub fn address_field(out: &mut String, key: &str, address: &[u8]) {
    let bare = address
        .strip_prefix(b"<")
        .and_then(|a| a.strip_suffix(b">"))
        .unwrap_or(address);
    out.push(' ');
    out.push_str(key);
    out.push('=');
    quote_parts_into(out, &[b"<", bare, b">"], MAX_LOG_VALUE);
}

fn dunno(why: &str) -> Answer {
    let mut log = String::from("action=dunno");
    field(&mut log, "why", why.as_bytes());
    Answer {
        action: "DUNNO".into(),
        log,
        verdict: None,
        triplet_key: None,
        outcome: ("dunno", "not-rcpt"),
        verified_domain: None,
    }
}

/// The answer for an RCPT-stage request the engine cannot judge: greylist
/// it (fail closed), never wave it through.
fn cannot_judge(why: &str, request: &PolicyRequest) -> Answer {
    let mut log = String::from("action=defer reason=cannot-judge");
    for (key, name) in [
        ("client", "client_address"),
        ("from", "sender"),
        ("to", "recipient"),
    ] {
        let value = request.get_bytes(name).unwrap_or_default();
        if key == "client" {
            field(&mut log, key, value);
        } else {
            address_field(&mut log, key, value);
        }
    }
    field(&mut log, "why", why.as_bytes());
    Answer {
        action:
            "DEFER_IF_PERMIT 4.3.0 Greylisting cannot judge this request, please try again later"
                .into(),
        log,
        verdict: None,
        triplet_key: None,
        outcome: ("defer", "cannot-judge"),
        verified_domain: None,
    }
}

/// The engine's request for an RCPT-stage policy request: the client
/// address, sender and recipient, and the client's verified name and HELO
/// where Postfix knows them; `None` without a client address or recipient.
pub fn engine_request(request: &PolicyRequest) -> Option<Request<'_>> {
    let (Some(ip), Some(recipient)) = (
        request.get("client_address"),
        request.get_bytes("recipient"),
    ) else {
        return None;
    };
    let sender = request.get_bytes("sender").unwrap_or_default();
    let named = |k| {
        request
            .get_bytes(k)
            .filter(|v| !v.is_empty() && *v != b"unknown")
    };
    Some(Request {
        client_name: named("client_name"),
        helo: named("helo_name"),
        ..Request::new(ip, sender, recipient)
    })
}

/// A decision line as postgrey writes it (`[QUEUE_ID: ]action=greylist,
/// reason=new, client_name=..., client_address=..., sender=...,
/// recipient=...`), so that log watchers written for postgrey (mailgraph,
/// logcheck, postgreyreport) read it. Values are as Postfix sent them, but
/// for control characters (shown as `?`), so a line stays one line.
fn postgrey_line(request: &PolicyRequest, v: &Verdict) -> String {
    let (action, reason) = match v.reason {
        Reason::New => ("greylist", "new".to_string()),
        Reason::EarlyRetry => (
            "greylist",
            format!("early-retry ({}s missing)", v.retry_after),
        ),
        Reason::Retried | Reason::Passed => ("pass", "triplet found".into()),
        Reason::Whitelisted => ("pass", "whitelist".into()),
        Reason::AutoWhitelisted => ("pass", "client AWL".into()),
        Reason::Blocked => ("block", "blocked".into()),
        Reason::Trapped => ("block", "trap recipient".into()),
        Reason::StoreUnavailable => (
            match v.action {
                Action::Pass => "pass",
                _ => "greylist",
            },
            "store unavailable".into(),
        ),
    };
    let text = |v: &[u8]| -> String {
        String::from_utf8_lossy(v)
            .chars()
            .take(MAX_LOG_VALUE)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    let mut line = String::new();
    if let Some(id) = request.get_bytes("queue_id").filter(|i| !i.is_empty()) {
        line.push_str(&text(id));
        line.push_str(": ");
    }
    line.push_str(&format!("action={action}, reason={reason}"));
    if v.reason == Reason::Retried {
        line.push_str(&format!(", delay={}", v.delayed));
    }
    for name in ["client_name", "client_address", "sender", "recipient"] {
        if let Some(value) = request.get_bytes(name).filter(|x| !x.is_empty()) {
            line.push_str(&format!(", {name}={}", text(value)));
        }
    }
    line
}

/// One `X-Greylist` header per message, as postgrey does: Postfix asks for
/// each recipient, and each retried recipient's `PREPEND` would add the
/// header again. A `PREPEND` for the message (`instance`) that got one on
/// this connection last becomes `DUNNO`; `last` is the connection's memory
/// of that instance. Postfix sends one session's requests on one connection.
pub fn prepend_once(answer: &mut Answer, request: &PolicyRequest, last: &mut Option<Vec<u8>>) {
    if !answer.action.starts_with("PREPEND ") {
        return;
    }
    let Some(instance) = request.get_bytes("instance").filter(|i| !i.is_empty()) else {
        return;
    };
    if last.as_deref() == Some(instance) {
        answer.action = "DUNNO".into();
        answer.log.push_str(" header=already-prepended");
    } else {
        *last = Some(instance.to_vec());
    }
}

/// The action for a verdict: `PREPEND` the `X-Greylist` header for a
/// retried triplet, `DUNNO` for another pass, the greylist action and text
/// for a defer, the block action for a block; on one line whatever the
/// operator's options hold (a line break would end the answer early).
fn action_text(
    engine: &Engine,
    options: &PolicyOptions,
    verdict: &Verdict,
    recipient: &[u8],
    now: i64,
) -> String {
    use std::fmt::Write as _;
    let mut action = String::with_capacity(128);
    match (verdict.action, verdict.reason) {
        (Action::Pass, Reason::Retried) => {
            action.push_str("PREPEND ");
            expand_into(&mut action, &options.x_greylist_header, |c, out| {
                match c {
                    't' => drop(write!(out, "{}", verdict.delayed)),
                    'v' => out.push_str(env!("CARGO_PKG_VERSION")),
                    'h' => out.push_str(&options.hostname),
                    'd' => out.push_str(&rfc5322_date(now)),
                    _ => return false,
                }
                true
            });
        }
        (Action::Pass, _) => action.push_str("DUNNO"),
        (Action::Defer, _) => {
            for part in [
                &options.greylist_action,
                " ",
                engine.config().reply_enhanced(),
                " ",
            ] {
                action.push_str(part);
            }
            expand_into(&mut action, &options.greylist_text, |c, out| {
                match c {
                    's' => drop(write!(out, "{}", verdict.retry_after)),
                    'r' => push_domain(out, recipient),
                    _ => return false,
                }
                true
            });
        }
        (Action::Block, _) => match options.block_action {
            BlockAction::Reject => action.push_str("REJECT 5.7.1 Client network blocked for abuse"),
            BlockAction::Defer => drop(write!(
                action,
                "DEFER_IF_PERMIT 4.7.1 Client network blocked, please try again in {} seconds",
                verdict.retry_after
            )),
        },
    }
    if memchr::memchr2(b'\r', b'\n', action.as_bytes()).is_some() {
        action = action.replace(['\r', '\n'], " ");
    }
    action
}

/// Appends `template` with each `%` and letter that `value` knows replaced
/// by what `value` writes (it returns false for a letter it does not
/// know: that `%` stays as it is). One pass: what a value writes is not
/// looked into again.
fn expand_into(out: &mut String, template: &str, mut value: impl FnMut(char, &mut String) -> bool) {
    let mut rest = template;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after.chars().next() {
            Some(c) if value(c, out) => rest = &after[c.len_utf8()..],
            _ => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

/// `now` as an RFC 5322 date in UTC: `Wed, 02 Dec 2026 18:00:00 +0000`.
pub fn rfc5322_date(now: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, h, m, sec) = civil_time(now);
    format!(
        "{}, {day:02} {} {year:04} {h:02}:{m:02}:{sec:02} +0000",
        DAYS[now.div_euclid(86_400).rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
    )
}

/// Unix seconds as the UTC calendar: year, month (1-12), day, hour,
/// minute, second.
pub fn civil_time(now: i64) -> (i64, i64, i64, i64, i64, i64) {
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
    (year, month, day, secs / 3600, secs / 60 % 60, secs % 60)
}

/// Appends what keyed a request: ` key=network`, or ` key=host-domain`
/// or ` key=spf-domain` (the daemon's only verified domains come from
/// SPF) with ` domain=...`.
fn key_fields(log: &mut String, req: &Request<'_>, kind: KeyKind) {
    let domain = key_domain(req, kind);
    log.push_str(match kind {
        KeyKind::HostDomain => " key=host-domain",
        KeyKind::VerifiedDomain => " key=spf-domain",
        _ => " key=network",
    });
    if let Some(domain) = domain {
        field(log, "domain", domain.as_bytes());
    }
}

/// The domain that keyed a request of key kind `kind`, if a domain did.
fn key_domain(req: &Request<'_>, kind: KeyKind) -> Option<String> {
    match kind {
        KeyKind::HostDomain => req
            .client_name
            .and_then(|n| std::str::from_utf8(n).ok())
            .zip(crate::normalize::parse_ip(req.client_ip).ok())
            .and_then(|(name, ip)| crate::host_name_domain(name, ip)),
        KeyKind::VerifiedDomain => req
            .verified_domain
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| crate::ClientNet::domain(d).ok())
            .map(|d| d.to_string()),
        _ => None,
    }
}

/// Appends the domain of `address` (after its last `@`, without a closing
/// `>`) as an SMTP reply may show it: letters, digits, `.`, `-` and `_`
/// only, at most 255 bytes of it.
fn push_domain(out: &mut String, address: &[u8]) {
    let domain = memchr::memrchr(b'@', address).map_or(&[][..], |at| &address[at + 1..]);
    let domain = domain.strip_suffix(b">").unwrap_or(domain);
    // The domain goes into the SMTP reply: only what a domain name may hold.
    out.extend(
        domain
            .iter()
            .take(255)
            .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            .map(|&b| char::from(b)),
    );
}

/// What verifies a request's sender domain for its client before the
/// engine decides (the daemon's `--spf`): asked only for a request the
/// engine would not pass as it is.
pub trait SenderCheck {
    /// What the check found of the request's sender domain.
    fn verify(&self, request: &Request<'_>) -> Verification;
}

/// What a [`SenderCheck`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// The sender domain the check was about (lower-case), if it ran.
    pub domain: Option<String>,
    /// Whether the domain is verified for the client (SPF `pass`).
    pub verified: bool,
    /// Whether the check could not tell for now (a DNS failure, the
    /// deadline): a triplet that passed under the domain keeps passing.
    pub transient: bool,
    /// What the log line says of the check (`pass`, `fail`, `timeout`,
    /// ...), if it ran.
    pub log: Option<&'static str>,
}

/// Answers one request at `now` (Unix seconds). Requests that are not an
/// RCPT-stage `smtpd_access_policy` get `DUNNO`; every RCPT-stage request
/// is greylisted unless the engine passes it, including one it cannot
/// judge (fail closed).
pub fn answer(
    engine: &Engine,
    request: &PolicyRequest,
    options: &PolicyOptions,
    now: i64,
) -> Answer {
    answer_with(engine, request, options, now, None)
}

/// [`answer`], with a [`SenderCheck`] asked first for a request the engine
/// would not pass as it is (its triplet not passed, its client not
/// whitelisted): a domain it verifies keys the request (the engine must
/// have `key_by_verified_domain` on); anything else leaves the key as it
/// was, never a penalty.
pub fn answer_with(
    engine: &Engine,
    request: &PolicyRequest,
    options: &PolicyOptions,
    now: i64,
    sender_check: Option<&dyn SenderCheck>,
) -> Answer {
    if request.get_bytes("request") != Some(b"smtpd_access_policy") {
        return dunno("not a smtpd_access_policy request");
    }
    let state = request.get_bytes("protocol_state").unwrap_or_default();
    if !state.eq_ignore_ascii_case(b"RCPT") {
        let mut why = String::from("protocol_state=");
        quote_into(&mut why, state, 32);
        why.push_str(" is not RCPT");
        return dunno(&why);
    }
    let Some(req) = engine_request(request) else {
        return cannot_judge("client_address or recipient missing", request);
    };
    let (ip, sender, recipient) = (req.client_ip, req.sender, req.recipient);
    let now = match request.get("policy_test_time") {
        Some(t) if options.allow_test_time => t.parse().unwrap_or(now),
        _ => now,
    };
    let plain = Request {
        verified_domain: None,
        ..req
    };
    let found = match sender_check {
        Some(check) if !engine.would_pass(&plain, now).unwrap_or(false) => check.verify(&plain),
        _ => Verification::default(),
    };
    // A check that could not tell keeps what passed under the domain.
    let verified = found.domain.filter(|d| {
        found.verified
            || found.transient
                && engine
                    .would_pass(
                        &Request {
                            verified_domain: Some(d.as_bytes()),
                            ..plain
                        },
                        now,
                    )
                    .unwrap_or(false)
    });
    let check_log = found.log;
    let req = Request {
        verified_domain: verified.as_deref().map(str::as_bytes),
        ..req
    };
    let (verdict, triplet_key) = match engine.check_request_keyed(&req, now) {
        Ok(judged) => judged,
        Err(e) => return cannot_judge(&e.to_string(), request),
    };
    let action = action_text(engine, options, &verdict, recipient, now);
    let outcome = (
        match verdict.action {
            Action::Pass => "pass",
            Action::Defer => "defer",
            Action::Block => "block",
        },
        verdict.reason.as_str(),
    );
    if options.postgrey_log {
        return Answer {
            action,
            log: postgrey_line(request, &verdict),
            verdict: Some(verdict),
            triplet_key: Some(triplet_key),
            outcome,
            verified_domain: verified.clone(),
        };
    }
    let mut log = String::with_capacity(256);
    for part in ["action=", outcome.0, " reason=", outcome.1] {
        log.push_str(part);
    }
    field(&mut log, "client", ip.as_bytes());
    address_field(&mut log, "from", sender);
    address_field(&mut log, "to", recipient);
    use std::fmt::Write as _;
    let _ = write!(
        log,
        " retry_after={} delayed={}",
        verdict.retry_after, verdict.delayed
    );
    key_fields(&mut log, &req, verdict.key);
    if let Some(result) = check_log {
        log.push_str(" spf=");
        log.push_str(result);
    }
    if let Some(why) = request.malformed() {
        field(&mut log, "ignored", why.as_bytes());
    }
    Answer {
        action,
        log,
        verdict: Some(verdict),
        triplet_key: Some(triplet_key),
        outcome,
        verified_domain: verified.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20: a message to three greylisted recipients got three
    /// X-Greylist headers after its retry.
    #[test]
    fn one_header_per_message() {
        let engine = crate::Engine::default();
        let options = PolicyOptions::default();
        let request = |rcpt: &str, instance: &str| {
            let text = format!(
                "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n\
                 sender=a@example.org\nrecipient={rcpt}\ninstance={instance}\n\n"
            );
            read_request(&mut text.as_bytes()).unwrap().unwrap()
        };
        let mut last = None;
        let mut actions = Vec::new();
        for (now, instance) in [(0, "m1"), (400, "m2"), (500, "m3")] {
            for rcpt in ["a@y.net", "b@y.net", "c@y.net"] {
                let req = request(rcpt, instance);
                let mut a = answer(&engine, &req, &options, 1_700_000_000 + now);
                prepend_once(&mut a, &req, &mut last);
                actions.push(a.action.split(':').next().unwrap().to_string());
            }
        }
        let defer = "DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 300 seconds";
        assert_eq!(
            actions,
            [
                defer,
                defer,
                defer,
                "PREPEND X-Greylist",
                "DUNNO",
                "DUNNO",
                "DUNNO",
                "DUNNO",
                "DUNNO"
            ]
        );
    }

    /// Issue 20: log watchers written for postgrey's lines saw nothing.
    #[test]
    fn postgreys_log_lines() {
        let engine = crate::Engine::default();
        let options = PolicyOptions {
            postgrey_log: true,
            ..PolicyOptions::default()
        };
        let req = |extra: &str| {
            let text = format!(
                "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n\
                 client_name=mail.example.org\nsender=a@example.org\nrecipient=b@example.net\n\
                 queue_id={extra}\n\n"
            );
            read_request(&mut text.as_bytes()).unwrap().unwrap()
        };
        let log = |now: i64, id: &str| answer(&engine, &req(id), &options, 1_700_000_000 + now).log;
        let tail = "client_name=mail.example.org, client_address=192.0.2.1, \
                    sender=a@example.org, recipient=b@example.net";
        assert_eq!(log(0, ""), format!("action=greylist, reason=new, {tail}"));
        assert_eq!(
            log(100, "4F2A1"),
            format!("4F2A1: action=greylist, reason=early-retry (200s missing), {tail}")
        );
        assert_eq!(
            log(301, ""),
            format!("action=pass, reason=triplet found, delay=301, {tail}")
        );
        assert_eq!(
            log(302, ""),
            format!("action=pass, reason=triplet found, {tail}")
        );
    }

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_700_000_000),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }
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
        // One request's buffers reused for the next (as a connection does)
        // read the same, whatever the one before held.
        let odd = format!("no equals sign\r\n{wire}{}\n", "x=y\n".repeat(400));
        let mut reader = io::BufReader::with_capacity(5, odd.as_bytes());
        let mut reused = PolicyRequest::default();
        for fresh in read_all(odd.as_bytes()) {
            assert!(read_request_into(&mut reader, &mut reused).unwrap());
            assert_eq!(reused, fresh);
        }
        assert!(!read_request_into(&mut reader, &mut reused).unwrap());
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
        assert_eq!(ask("request=other\n\n", T0).action, "DUNNO");
        // At RCPT, what cannot be judged is greylisted (fail closed).
        let cannot =
            "DEFER_IF_PERMIT 4.3.0 Greylisting cannot judge this request, please try again later";
        let missing = ask("request=smtpd_access_policy\nprotocol_state=RCPT\n\n", T0);
        assert_eq!(missing.action, cannot);
        assert!(
            missing.log.starts_with("action=defer reason=cannot-judge"),
            "{}",
            missing.log
        );
        let bad_ip = ask(&rcpt("999.1.1.1", "a@x.org", "b@y.net"), T0);
        assert_eq!(bad_ip.action, cannot);
        // The quotes inside the reason are escaped (issue 17): one value.
        let why = r#" why="client_ip: not an IP address: \"999.1.1.1\"""#;
        assert!(bad_ip.log.ends_with(why), "{}", bad_ip.log);
        // A line that is not name=value is ignored, and said so in the log.
        let junk = ask(
            &format!(
                "junk without equals\n{}",
                rcpt("198.51.100.7", "a@x.org", "b@y.net")
            ),
            T0,
        );
        assert!(
            junk.action.starts_with("DEFER_IF_PERMIT 4.2.0 Greylisted"),
            "{}",
            junk.action
        );
        assert!(
            junk.log.contains(" ignored=\"not a name=value line: "),
            "{}",
            junk.log
        );
    }

    /// Issue 15, item 1: over-long or non-UTF-8 senders, recipients and
    /// HELO names were answered DUNNO (accepted, never greylisted).
    #[test]
    fn first_attempts_are_greylisted_whatever_their_content() {
        let e = Engine::new(Config::default());
        let o = PolicyOptions::default();
        let long = "x".repeat(3000);
        let cases: Vec<Vec<u8>> = vec![
            rcpt("10.0.1.1", &format!("{long}@spam.example"), "b@y.net").into_bytes(),
            rcpt("10.0.2.1", "a@x.org", &format!("{long}@y.net")).into_bytes(),
            rcpt("10.0.3.1", "a@x.org", "b@y.net")
                .replace("helo_name=mx.example", &format!("helo_name={long}"))
                .into_bytes(),
            rcpt("10.0.4.1", "a@x.org", "b@y.net")
                .replace("client_name=unknown", &format!("client_name={long}"))
                .into_bytes(),
            // Latin-1, as Postfix passes it with smtputf8_enable=no.
            rcpt("10.0.5.1", "J#rgen@x.org", "b@y.net")
                .replace('#', "\u{1}")
                .bytes()
                .map(|b| if b == 1 { 0xFC } else { b })
                .collect(),
            b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=10.0.6.1\n\
              sender=a@x.org\nrecipient=b\xf6b@y.net\nhelo_name=\xff\xfe\n\n"
                .to_vec(),
        ];
        for wire in cases {
            let req = &read_all(&wire)[0];
            let first = answer(&e, req, &o, T0);
            assert!(
                first
                    .action
                    .starts_with("DEFER_IF_PERMIT 4.2.0 Greylisted, please try again in 300"),
                "{:?}: {}",
                String::from_utf8_lossy(&wire),
                first.action
            );
            assert_eq!(
                answer(&e, req, &o, T0 + 100).log.split(' ').nth(1),
                Some("reason=early-retry")
            );
            assert!(answer(&e, req, &o, T0 + 300)
                .action
                .starts_with("PREPEND X-Greylist"));
        }
    }

    /// Issue 15, item 2: a quoted local part could write a second
    /// `action=` into the decision line.
    #[test]
    fn log_fields_cannot_be_forged() {
        let e = Engine::new(Config::default());
        let o = PolicyOptions::default();
        let forged = "\"x> action=pass reason=whitelisted client=10.0.0.1 from=<y\"@spam.example";
        let wire = rcpt("192.0.2.1", forged, "b@y.net");
        let log = answer(&e, &read_all(wire.as_bytes())[0], &o, T0).log;
        assert_eq!(
            log,
            "action=defer reason=new client=192.0.2.1 \
             from=\"<\\\"x> action=pass reason=whitelisted client=10.0.0.1 from=<y\\\"@spam.example>\" \
             to=<b@y.net> retry_after=300 delayed=0 key=network"
        );
        // Parsed as key=value fields with quoted strings: one action, one from.
        let fields = parse_fields(&log);
        assert_eq!(fields.iter().filter(|(k, _)| k == "action").count(), 1);
        assert_eq!(fields.iter().filter(|(k, _)| k == "from").count(), 1);
        // Control bytes, non-UTF-8 bytes and backslashes are escaped; long
        // values are cut, saying how long they were.
        let wire = format!(
            "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.2\n\
             sender=a\\b\tc\r@x\nrecipient={}@y.net\n\n",
            "r".repeat(1000)
        );
        let log = answer(&e, &read_all(wire.as_bytes())[0], &o, T0).log;
        assert!(log.contains(r#" from="<a\\b\x09c\x0d@x>" "#), "{log}");
        assert!(log.contains(r#"...(1008 bytes)" retry_after=300"#), "{log}");
        assert!(!log.contains('\n') && !log.contains('\t') && !log.contains('\r'));
        let wire = b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.3\n\
              sender=\xe9t\xe9@x.org\nrecipient=b@y.net\n\n";
        let log = answer(&e, &read_all(wire)[0], &o, T0).log;
        assert!(log.contains(r#" from="<\xe9t\xe9@x.org>" "#), "{log}");
    }

    /// Splits a log line into key=value fields, values optionally in double
    /// quotes with backslash escapes (as fail2ban or a SIEM would).
    fn parse_fields(line: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut chars = line.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
                chars.next(); // the space after the closing quote
            } else {
                value = chars.by_ref().take_while(|&c| c != ' ').collect();
            }
            out.push((key, value));
        }
        out
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

    /// The key an answer carries is the one the engine's events name
    /// the triplet by (what lost mail is reported under), without the
    /// key being derived again.
    #[test]
    fn the_answer_carries_the_judged_triplet_key() {
        let e = Engine::new(Config::default());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        e.on_event(Some(Box::new(move |ev: &crate::Event| {
            sink.lock().unwrap().push(ev.triplet);
        })))
        .unwrap();
        let o = PolicyOptions::default();
        let req = &read_all(rcpt("192.0.2.1", "a@x.org", "b@y.net").as_bytes())[0];
        for now in [T0, T0 + 10] {
            let a = answer(&e, req, &o, now);
            let events = std::mem::take(&mut *seen.lock().unwrap());
            assert_eq!(events, [a.triplet_key]);
            let (key, client) = a.client_key(&e, req).unwrap();
            assert_eq!(Some(key), a.triplet_key);
            assert_eq!(client, "192.0.2.0/24");
        }
        let not_judged = answer(
            &e,
            &read_all(b"request=smtpd_access_policy\nprotocol_state=RCPT\n\n")[0],
            &o,
            T0,
        );
        assert_eq!(
            (not_judged.triplet_key, not_judged.client_key(&e, req)),
            (None, None)
        );
    }

    /// An operator's texts stay on the answer's line (a line break in
    /// `--greylist-text` used to end the answer early and desynchronise
    /// the connection), and each `%` letter is expanded once: a value is
    /// not looked into again, and an unknown letter stays as it is.
    #[test]
    fn operator_texts_stay_one_line_and_expand_once() {
        let e = Engine::new(Config::default());
        let o = PolicyOptions {
            greylist_action: "DEFER_IF_PERMIT\r".into(),
            greylist_text: "wait %s s\nfor %r, 100%% sure %x %".into(),
            x_greylist_header: "X-Greylist: delayed %t seconds by %h\r\n%v".into(),
            hostname: "mx%d.example".into(),
            ..PolicyOptions::default()
        };
        let req = &read_all(rcpt("192.0.2.1", "a@x", "b@%s.y-z_net\r>").as_bytes())[0];
        let first = answer(&e, req, &o, T0);
        assert_eq!(
            first.action,
            "DEFER_IF_PERMIT  4.2.0 wait 300 s for s.y-z_net, 100%% sure %x %"
        );
        assert_eq!(first.to_wire().matches('\n').count(), 2);
        let retried = answer(&e, req, &o, T0 + 400);
        assert_eq!(
            retried.action,
            format!(
                "PREPEND X-Greylist: delayed 400 seconds by mx%d.example  {}",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}
