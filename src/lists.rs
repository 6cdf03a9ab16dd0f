//! Static lists: clients, senders and recipients that skip greylisting,
//! and trap recipients that block whoever writes to them.
//!
//! A list file holds one entry a line; `#` starts a comment; blank lines
//! are allowed. A file holds one kind of entry:
//! - **clients**: IPv4 or IPv6 addresses, CIDRs (`192.0.2.0/24`,
//!   `2001:db8::/32`) and host names (`.google.com` or `google.com` match
//!   that host and every host under it, at a label boundary:
//!   `mail-a1.google.com` but never `evilgoogle.com`), checked against
//!   the host name the MTA verified;
//! - **senders**, **recipients**, **trap recipients**: addresses
//!   (`user@example.com`), domains (`example.com`, also `@example.com`
//!   or `.example.com`, matching that domain and its subdomains), or local
//!   parts at any domain (`postmaster@`).
//!
//! postgrey's list files load as they are: `/regex/` lines (matched
//! without regard to case and unanchored unless they anchor themselves,
//! against the verified client host name for clients, the address for the
//! others), partial IPv4 addresses (`195.235.39` is a /24, `195.235` a
//! /16). Regular expressions are the `regex` crate's: linear time, so no
//! entry can make a check slow; a Perl-only construct (a look-around, a
//! back-reference) is an entry that cannot be honoured.
//!
//! A bad line refuses the whole file with its line number; nothing of it
//! is applied ([`Engine::load_lists`](crate::Engine::load_lists)). A host
//! loading postgrey's files may instead skip such lines, each with a
//! warning ([`Engine::load_lists_skipping`](crate::Engine::load_lists_skipping)).

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

/// Which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ListKind {
    /// Client addresses, networks and host names that skip greylisting.
    Clients = 0,
    /// Sender addresses and domains that skip greylisting.
    Senders = 1,
    /// Recipient addresses and domains that opt out of greylisting.
    Recipients = 2,
    /// Recipients that no real sender writes to: a check for one blocks
    /// its client network at once (OpenBSD spamd's greytrap).
    TrapRecipients = 3,
}

impl ListKind {
    /// Every kind, in number order.
    pub const ALL: [ListKind; 4] = [
        ListKind::Clients,
        ListKind::Senders,
        ListKind::Recipients,
        ListKind::TrapRecipients,
    ];

    /// The kind with this number.
    pub fn from_u32(n: u32) -> Option<ListKind> {
        ListKind::ALL.into_iter().find(|k| *k as u32 == n)
    }

    /// A short name for logs: `clients`, `senders`, `recipients`,
    /// `trap-recipients`.
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Clients => "clients",
            ListKind::Senders => "senders",
            ListKind::Recipients => "recipients",
            ListKind::TrapRecipients => "trap-recipients",
        }
    }
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A list that could not be read or parsed.
#[derive(Debug)]
pub enum ListError {
    /// A line is not a valid entry of this kind (1-based line number; 0
    /// for an entry not from a file).
    BadEntry {
        /// The line number.
        line: usize,
        /// Why.
        reason: String,
    },
    /// The file could not be read.
    Io(std::io::Error),
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListError::BadEntry { line: 0, reason } => f.write_str(reason),
            ListError::BadEntry { line, reason } => write!(f, "line {line}: {reason}"),
            ListError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ListError {}

/// Client addresses by prefix length, host names, and patterns of host
/// names.
#[derive(Debug, Default, Clone)]
struct ClientList {
    v4: Vec<(u8, HashSet<u32>)>,
    v6: Vec<(u8, HashSet<u128>)>,
    names: HashSet<Box<str>>,
    patterns: Vec<regex::Regex>,
}

/// A `/regex/` entry, compiled without regard to case; `None` when the
/// entry is not one. Its compiled size is bounded (1 MiB).
fn pattern(entry: &str) -> Option<Result<regex::Regex, String>> {
    let inner = entry.strip_prefix('/')?.strip_suffix('/')?;
    if inner.is_empty() {
        return None;
    }
    Some(
        regex::RegexBuilder::new(inner)
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                format!("{entry:?} is not a regular expression this daemon can use ({first})")
            }),
    )
}

/// postgrey's partial IPv4 addresses: `a.b.c` (a /24) and `a.b` (a /16).
fn partial_v4(entry: &str) -> Option<(u32, u8)> {
    let octets: Vec<u8> = entry
        .split('.')
        .map(|o| (1..=3).contains(&o.len()).then(|| o.parse().ok()).flatten())
        .collect::<Option<_>>()?;
    let prefix = match octets.len() {
        3 => 24,
        2 => 16,
        _ => return None,
    };
    let mut ip = [0u8; 4];
    ip[..octets.len()].copy_from_slice(&octets);
    Some((u32::from_be_bytes(ip), prefix))
}

fn mask_v4(ip: u32, prefix: u8) -> u32 {
    ip & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(ip: u128, prefix: u8) -> u128 {
    ip & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// A lower-case host or domain name, at most 253 bytes of letters,
/// digits, `-`, `_` and dots.
fn domain_name(s: &str) -> Option<String> {
    let s = s.trim_matches('.').to_ascii_lowercase();
    let ok = !s.is_empty()
        && s.len() <= 253
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then_some(s)
}

/// `name` and each parent of it at a label boundary.
fn with_parents(name: &str) -> impl Iterator<Item = &str> {
    std::iter::once(name).chain(name.match_indices('.').map(move |(i, _)| &name[i + 1..]))
}

impl ClientList {
    fn add(&mut self, entry: &str) -> Result<(), String> {
        if let Some(p) = pattern(entry) {
            self.patterns.push(p?);
            return Ok(());
        }
        if let Some((net, prefix)) = partial_v4(entry) {
            insert_net(&mut self.v4, prefix, net);
            return Ok(());
        }
        let (addr, prefix) = match entry.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (entry, None),
        };
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => {
                let prefix = parse_prefix(prefix, 32)?;
                insert_net(&mut self.v4, prefix, mask_v4(v4.into(), prefix));
            }
            Ok(IpAddr::V6(v6)) => {
                if let (Some(v4), None) = (v6.to_ipv4_mapped(), prefix) {
                    insert_net(&mut self.v4, 32, v4.into());
                } else {
                    let prefix = parse_prefix(prefix, 128)?;
                    insert_net(&mut self.v6, prefix, mask_v6(v6.into(), prefix));
                }
            }
            Err(_) if prefix.is_none() => {
                let name = domain_name(entry)
                    .filter(|n| n.contains(|c: char| c.is_ascii_alphabetic()))
                    .ok_or_else(|| format!("{entry:?} is not an IP address, CIDR or host name"))?;
                self.names.insert(name.into());
            }
            Err(_) => return Err(format!("{entry:?} is not a CIDR")),
        }
        Ok(())
    }

    fn matches(&self, ip: IpAddr, host: Option<&str>) -> bool {
        let by_ip = match ip {
            IpAddr::V4(v4) => self
                .v4
                .iter()
                .any(|(p, set)| set.contains(&mask_v4(v4.into(), *p))),
            IpAddr::V6(v6) => self
                .v6
                .iter()
                .any(|(p, set)| set.contains(&mask_v6(v6.into(), *p))),
        };
        by_ip
            || host.is_some_and(|h| {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                with_parents(&h).any(|n| self.names.contains(n))
                    || self.patterns.iter().any(|p| p.is_match(&h))
            })
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty()
            && self.v6.is_empty()
            && self.names.is_empty()
            && self.patterns.is_empty()
    }
}

fn parse_prefix(p: Option<&str>, max: u8) -> Result<u8, String> {
    match p {
        None => Ok(max),
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("/{p} is not a prefix length from 0 to {max}")),
    }
}

fn insert_net<T: std::hash::Hash + Eq>(nets: &mut Vec<(u8, HashSet<T>)>, prefix: u8, net: T) {
    match nets.iter_mut().find(|(p, _)| *p == prefix) {
        Some((_, set)) => {
            set.insert(net);
        }
        None => {
            nets.push((prefix, HashSet::from([net])));
            nets.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
        }
    }
}

/// Addresses, local parts at any domain, domains with subdomains, and
/// patterns of addresses.
#[derive(Debug, Default, Clone)]
struct AddressList {
    addresses: HashSet<Box<str>>,
    locals: HashSet<Box<str>>,
    domains: HashSet<Box<str>>,
    patterns: Vec<regex::Regex>,
}

impl AddressList {
    fn add(&mut self, entry: &str) -> Result<(), String> {
        if let Some(p) = pattern(entry) {
            self.patterns.push(p?);
            return Ok(());
        }
        let bad = || format!("{entry:?} is not an address, domain or local part");
        let e = entry.to_ascii_lowercase();
        match e.rsplit_once('@') {
            Some(("", domain)) => {
                self.domains
                    .insert(domain_name(domain).ok_or_else(bad)?.into());
            }
            Some((local, "")) => {
                if local.contains(char::is_whitespace) {
                    return Err(bad());
                }
                self.locals.insert(local.into());
            }
            Some((local, domain)) => {
                let domain = domain_name(domain).ok_or_else(bad)?;
                if local.contains(char::is_whitespace) {
                    return Err(bad());
                }
                self.addresses.insert(format!("{local}@{domain}").into());
            }
            None => {
                self.domains.insert(domain_name(&e).ok_or_else(bad)?.into());
            }
        }
        Ok(())
    }

    /// `address` is lower-case, without angle brackets.
    fn matches(&self, address: &str) -> bool {
        if self.is_empty() {
            return false;
        }
        if self.addresses.contains(address) {
            return true;
        }
        let (local, domain) = address.rsplit_once('@').unwrap_or(("", address));
        (!local.is_empty() && self.locals.contains(local))
            || (!domain.is_empty() && with_parents(domain).any(|d| self.domains.contains(d)))
            || self.patterns.iter().any(|p| p.is_match(address))
    }

    fn is_empty(&self) -> bool {
        self.addresses.is_empty()
            && self.locals.is_empty()
            && self.domains.is_empty()
            && self.patterns.is_empty()
    }
}

/// All static lists of an engine. Replaced whole (copy on write), so checks
/// read them without a lock.
#[derive(Debug, Default, Clone)]
pub(crate) struct Lists {
    clients: ClientList,
    senders: AddressList,
    recipients: AddressList,
    traps: AddressList,
}

/// What the lists say of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listed {
    Whitelisted,
    Trap,
    No,
}

impl Lists {
    pub(crate) fn is_empty(&self) -> bool {
        self.clients.is_empty()
            && self.senders.is_empty()
            && self.recipients.is_empty()
            && self.traps.is_empty()
    }

    /// Whether [`Lists::lookup`] reads the sender (a sender list is set)
    /// and the recipient (a recipient or trap list is set): one it does
    /// not read need not be prepared.
    pub(crate) fn reads_addresses(&self) -> (bool, bool) {
        (
            !self.senders.is_empty(),
            !(self.recipients.is_empty() && self.traps.is_empty()),
        )
    }

    /// The whitelists first: a whitelisted client writing to a trap is not
    /// punished. `sender` and `recipient` are lower-case.
    pub(crate) fn lookup(
        &self,
        ip: IpAddr,
        host: Option<&str>,
        sender: &str,
        recipient: &str,
    ) -> Listed {
        if self.clients.matches(ip, host)
            || (!sender.is_empty() && self.senders.matches(sender))
            || self.recipients.matches(recipient)
        {
            Listed::Whitelisted
        } else if self.traps.matches(recipient) {
            Listed::Trap
        } else {
            Listed::No
        }
    }

    /// A copy with `kind`'s list replaced (`replace`) or extended by
    /// `entries`. Errors carry the 1-based index of the bad entry.
    pub(crate) fn with<'a>(
        &self,
        kind: ListKind,
        entries: impl IntoIterator<Item = (usize, &'a str)>,
        replace: bool,
    ) -> Result<Lists, ListError> {
        let (next, mut skipped) = self.with_skipping(kind, entries, replace, false);
        match skipped.pop() {
            Some(e) => Err(e),
            None => Ok(next),
        }
    }

    /// As [`Lists::with`]; with `skip`, a bad entry is left out (and
    /// returned) instead of refusing them all. Without `skip`, stops at the
    /// first bad entry and returns it alone.
    pub(crate) fn with_skipping<'a>(
        &self,
        kind: ListKind,
        entries: impl IntoIterator<Item = (usize, &'a str)>,
        replace: bool,
        skip: bool,
    ) -> (Lists, Vec<ListError>) {
        let mut next = self.clone();
        if replace {
            match kind {
                ListKind::Clients => next.clients = ClientList::default(),
                ListKind::Senders => next.senders = AddressList::default(),
                ListKind::Recipients => next.recipients = AddressList::default(),
                ListKind::TrapRecipients => next.traps = AddressList::default(),
            }
        }
        let mut skipped = Vec::new();
        for (line, entry) in entries {
            let result = match kind {
                ListKind::Clients => next.clients.add(entry),
                ListKind::Senders => next.senders.add(entry),
                ListKind::Recipients => next.recipients.add(entry),
                ListKind::TrapRecipients => next.traps.add(entry),
            };
            if let Err(reason) = result {
                skipped.push(ListError::BadEntry { line, reason });
                if !skip {
                    break;
                }
            }
        }
        (next, skipped)
    }
}

/// The entries of a list file's text: (line number, entry) without
/// comments and blank lines.
/// The entries of a list file, as [`Engine::load_list`](crate::Engine::load_list)
/// reads them (comments and blank lines left out), unchecked: for a host
/// that shows an operator what its files hold.
pub fn read_list_file(path: &Path) -> Result<Vec<String>, ListError> {
    let text = read_file(path)?;
    Ok(list_entries(&text).into_iter().map(String::from).collect())
}

/// The entries of a list file's text (comments and blank lines left out),
/// unchecked: for a list that is not a file (one built into a program).
pub fn list_entries(text: &str) -> Vec<&str> {
    file_entries(text).map(|(_, e)| e).collect()
}

pub(crate) fn file_entries(text: &str) -> impl Iterator<Item = (usize, &str)> + Clone {
    text.lines().enumerate().filter_map(|(i, line)| {
        let entry = line.split('#').next().unwrap_or("").trim();
        (!entry.is_empty()).then_some((i + 1, entry))
    })
}

pub(crate) fn read_file(path: &Path) -> Result<String, ListError> {
    std::fs::read_to_string(path).map_err(ListError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20: postgrey's own files use regular expressions and partial
    /// addresses; they stopped the daemon from starting.
    #[test]
    fn postgreys_regex_and_partial_ip_entries() {
        let l = lists(
            ListKind::Clients,
            &[
                "/^ms-smtp.*\\.rr\\.com$/",
                "/^mail\\d+\\.telekom\\.de$/",
                "195.235.39",
                "10.20",
            ],
        );
        assert!(client(&l, "192.0.2.1", Some("MS-SMTP-03.texas.rr.com")));
        assert!(client(&l, "192.0.2.1", Some("mail12.telekom.de")));
        assert!(!client(&l, "192.0.2.1", Some("mailx.telekom.de")));
        assert!(!client(
            &l,
            "192.0.2.1",
            Some("ms-smtp-03.rr.com.evil.example")
        ));
        assert!(client(&l, "195.235.39.200", None));
        assert!(!client(&l, "195.235.40.1", None));
        assert!(client(&l, "10.20.255.1", None));
        assert!(!client(&l, "10.21.0.1", None));
        // Unanchored unless anchored, as postgrey's qr{}i.
        let l = lists(ListKind::Recipients, &["/^abuse@/", "/spamtrap/"]);
        assert_eq!(
            l.lookup("192.0.2.1".parse().unwrap(), None, "", "abuse@y.net"),
            Listed::Whitelisted
        );
        assert_eq!(
            l.lookup("192.0.2.1".parse().unwrap(), None, "", "my-spamtrap@y.net"),
            Listed::Whitelisted
        );
        assert_eq!(
            l.lookup("192.0.2.1".parse().unwrap(), None, "", "noabuse@y.net"),
            Listed::No
        );
    }

    #[test]
    fn entries_that_cannot_be_honoured_are_named_or_skipped() {
        let entries = [
            (1, "192.0.2.0/24"),
            (2, "/(?<=x)y/"),
            (3, "not a host"),
            (4, "example.org"),
        ];
        let e = Lists::default()
            .with(ListKind::Clients, entries, true)
            .unwrap_err();
        assert!(e.to_string().starts_with("line 2: "), "{e}");
        assert!(e.to_string().contains("regular expression"), "{e}");
        let (l, skipped) = Lists::default().with_skipping(ListKind::Clients, entries, true, true);
        let lines: Vec<String> = skipped.iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("line 2: ") && lines[1].starts_with("line 3: "));
        assert!(client(&l, "192.0.2.9", None));
        assert!(client(&l, "198.51.100.1", Some("mx.example.org")));
    }

    fn lists(kind: ListKind, entries: &[&str]) -> Lists {
        Lists::default()
            .with(kind, entries.iter().map(|e| (0, *e)), true)
            .unwrap()
    }

    fn client(l: &Lists, ip: &str, host: Option<&str>) -> bool {
        l.lookup(ip.parse().unwrap(), host, "", "r@x.net") == Listed::Whitelisted
    }

    #[test]
    fn client_networks_match_and_do_not_over_match() {
        let l = lists(
            ListKind::Clients,
            &[
                "10.0.0.0/8",
                "192.0.2.7",
                "2001:db8::/32",
                "::ffff:198.51.100.1",
            ],
        );
        assert!(client(&l, "10.255.1.2", None));
        assert!(!client(&l, "11.0.0.1", None));
        assert!(client(&l, "192.0.2.7", None));
        assert!(!client(&l, "192.0.2.8", None));
        assert!(client(&l, "2001:db8:ffff::1", None));
        assert!(!client(&l, "2001:db9::1", None));
        assert!(client(&l, "198.51.100.1", None));
        // A CIDR with host bits set is taken as its network.
        let l = lists(ListKind::Clients, &["172.16.5.9/12"]);
        assert!(client(&l, "172.31.0.1", None));
    }

    #[test]
    fn host_names_match_at_label_boundaries() {
        let l = lists(ListKind::Clients, &[".google.com", "mx.example.org"]);
        assert!(client(&l, "203.0.113.1", Some("mail-a1.google.com")));
        assert!(client(&l, "203.0.113.1", Some("MAIL-A1.Google.COM.")));
        assert!(client(&l, "203.0.113.1", Some("google.com")));
        assert!(!client(&l, "203.0.113.1", Some("evilgoogle.com")));
        assert!(!client(&l, "203.0.113.1", Some("google.com.evil.net")));
        assert!(!client(&l, "203.0.113.1", None));
        assert!(client(&l, "203.0.113.1", Some("a.mx.example.org")));
    }

    #[test]
    fn addresses_domains_and_local_parts() {
        let l = lists(
            ListKind::Recipients,
            &["postmaster@example.net", "example.org", "abuse@"],
        );
        let r =
            |a: &str| l.lookup("192.0.2.1".parse().unwrap(), None, "", a) == Listed::Whitelisted;
        assert!(r("postmaster@example.net"));
        assert!(!r("bob@example.net"));
        assert!(r("anyone@example.org"));
        assert!(r("anyone@lists.example.org"));
        assert!(!r("anyone@notexample.org"));
        assert!(r("abuse@anywhere.example"));
        let s = lists(ListKind::Senders, &["@example.com"]);
        assert_eq!(
            s.lookup("192.0.2.1".parse().unwrap(), None, "a@example.com", "r@x"),
            Listed::Whitelisted
        );
        // The null sender matches no sender entry.
        assert_eq!(
            s.lookup("192.0.2.1".parse().unwrap(), None, "", "r@x"),
            Listed::No
        );
    }

    #[test]
    fn traps_lose_to_whitelists() {
        let l = lists(ListKind::TrapRecipients, &["trap@example.net"]);
        let ip = "192.0.2.1".parse().unwrap();
        assert_eq!(l.lookup(ip, None, "a@b", "trap@example.net"), Listed::Trap);
        let l = l
            .with(ListKind::Clients, [(0, "192.0.2.0/24")], true)
            .unwrap();
        assert_eq!(
            l.lookup(ip, None, "a@b", "trap@example.net"),
            Listed::Whitelisted
        );
    }

    #[test]
    fn bad_lines_are_numbered() {
        let text = "# clients\n10.0.0.0/8\n\n192.0.2.1/40   # too long\n";
        let err = Lists::default()
            .with(ListKind::Clients, file_entries(text), true)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 4: /40 is not a prefix length from 0 to 32"
        );
        for bad in ["not a host", "1.2.3.4/x", "exa mple.com", "-"] {
            assert!(
                Lists::default()
                    .with(ListKind::Clients, [(1, bad)], true)
                    .is_err(),
                "{bad}"
            );
        }
        for bad in ["a b@example.com", "@", "user@exa mple.com"] {
            assert!(
                Lists::default()
                    .with(ListKind::Senders, [(1, bad)], true)
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn replace_and_extend() {
        let l = lists(ListKind::Clients, &["10.0.0.0/8"]);
        let more = l
            .with(ListKind::Clients, [(0, "11.0.0.0/8")], false)
            .unwrap();
        assert!(client(&more, "10.1.1.1", None) && client(&more, "11.1.1.1", None));
        let replaced = l
            .with(ListKind::Clients, [(0, "11.0.0.0/8")], true)
            .unwrap();
        assert!(!client(&replaced, "10.1.1.1", None) && client(&replaced, "11.1.1.1", None));
    }
}
