//! Turning what an MTA hands us into the parts of a triplet key.
//!
//! The goal is that one message, retried by a well-behaved sender, maps to one
//! key, while distinct messages stay distinct. Senders rewrite their envelope
//! on every attempt in a few well-known ways (BATV, SRS, VERP, `+tags`), and
//! large senders retry from another host of the same farm; both are undone
//! here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bumped whenever normalisation changes the key of some address. A
/// snapshot made under a newer version is refused; one made under an
/// older version is read: the addresses whose normal form changed no
/// longer find their entries, so those triplets are greylisted once more
/// (never passed wrongly) and their old entries expire.
///
/// Version 2: digit runs are folded only when they stand between
/// non-word characters (`bounce-123-x`, `msg.4711.`), as postgrey does, so
/// `user1@` and `user2@` are two senders.
pub const NORMALISATION_VERSION: u16 = 2;

/// Longest address (or IP string) accepted, in bytes. RFC 5321 limits a path
/// to 256 octets; 1 KiB leaves room for odd but real input.
pub const MAX_ADDRESS_LEN: usize = 1024;

/// Bad input, naming the argument that was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    argument: &'static str,
    reason: String,
}

impl InputError {
    pub(crate) fn new(argument: &'static str, reason: impl Into<String>) -> Self {
        InputError {
            argument,
            reason: reason.into(),
        }
    }

    /// The name of the argument that was refused (`client_ip`, `sender`, ...).
    pub fn argument(&self) -> &'static str {
        self.argument
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.argument, self.reason)
    }
}

impl std::error::Error for InputError {}

/// Shows at most 64 characters of refused input, so an error message never
/// carries a 64 KiB string into a log.
fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}

pub(crate) fn check_len(argument: &'static str, s: &str) -> Result<(), InputError> {
    if s.len() > MAX_ADDRESS_LEN {
        return Err(InputError::new(
            argument,
            format!(
                "{} bytes is longer than the limit of {MAX_ADDRESS_LEN}",
                s.len()
            ),
        ));
    }
    Ok(())
}

/// The part of a client's identity that greylisting keys on: its network (the
/// IP masked to a prefix) or, when the host vouches for it, the verified
/// sender domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientNet {
    /// An IPv4 network (IPv4-mapped IPv6 addresses count as IPv4).
    V4 {
        /// The network address, host bits zero.
        network: Ipv4Addr,
        /// Prefix length, 1 to 32.
        prefix: u8,
    },
    /// An IPv6 network.
    V6 {
        /// The network address, host bits zero.
        network: Ipv6Addr,
        /// Prefix length, 1 to 128.
        prefix: u8,
    },
    /// A sender domain the MTA verified (SPF or DKIM), lower-cased.
    Domain(Box<str>),
}

impl ClientNet {
    /// Masks `ip` to the configured prefix. IPv4-mapped IPv6 addresses are
    /// treated as the IPv4 address they carry.
    pub fn from_ip(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> ClientNet {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let prefix = ipv4_prefix.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                ClientNet::V4 {
                    network: Ipv4Addr::from(u32::from(v4) & mask),
                    prefix,
                }
            }
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                ClientNet::V6 {
                    network: Ipv6Addr::from(u128::from(v6) & mask),
                    prefix,
                }
            }
        }
    }

    /// Parses a client IP string as an MTA passes it and masks it.
    pub fn parse(client_ip: &str, ipv4_prefix: u8, ipv6_prefix: u8) -> Result<Self, InputError> {
        Ok(Self::from_ip(
            parse_ip(client_ip)?,
            ipv4_prefix,
            ipv6_prefix,
        ))
    }

    /// A verified sender domain as a client identity.
    pub fn domain(domain: &str) -> Result<Self, InputError> {
        const ARG: &str = "verified_domain";
        check_len(ARG, domain)?;
        let d = domain.trim().trim_end_matches('.');
        if d.is_empty() || d.contains(|c: char| c.is_whitespace() || c == '@') {
            return Err(InputError::new(
                ARG,
                format!("not a domain name: {}", excerpt(domain)),
            ));
        }
        Ok(ClientNet::Domain(d.to_ascii_lowercase().into_boxed_str()))
    }

    /// The network from its [`Display`](fmt::Display) text
    /// (`192.0.2.0/24`, `2001:db8::/64`, or a domain), as the shared store
    /// keeps it for the lost-mail report; `None` when it is not one.
    pub fn from_text(text: &str) -> Option<ClientNet> {
        let Some((address, prefix)) = text.split_once('/') else {
            return ClientNet::domain(text)
                .ok()
                .filter(|d| d.to_string() == text);
        };
        let prefix: u8 = prefix.parse().ok()?;
        let net = match address.parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) if (1..=32).contains(&prefix) => {
                ClientNet::from_ip(v4.into(), prefix, 128)
            }
            IpAddr::V6(v6) if (1..=128).contains(&prefix) && v6.to_ipv4_mapped().is_none() => {
                ClientNet::from_ip(v6.into(), 32, prefix)
            }
            _ => return None,
        };
        // Host bits set, or another spelling: not what the store wrote.
        (net.to_string() == text).then_some(net)
    }

    /// Appends an unambiguous encoding of the network to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            ClientNet::V4 { network, prefix } => {
                out.extend_from_slice(&[4, *prefix]);
                out.extend_from_slice(&network.octets());
            }
            ClientNet::V6 { network, prefix } => {
                out.extend_from_slice(&[6, *prefix]);
                out.extend_from_slice(&network.octets());
            }
            ClientNet::Domain(d) => {
                out.push(b'D');
                out.extend_from_slice(&(d.len() as u32).to_le_bytes());
                out.extend_from_slice(d.as_bytes());
            }
        }
    }
}

impl fmt::Display for ClientNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientNet::V4 { network, prefix } => write!(f, "{network}/{prefix}"),
            ClientNet::V6 { network, prefix } => write!(f, "{network}/{prefix}"),
            ClientNet::Domain(d) => f.write_str(d),
        }
    }
}

/// Parses a client IP as MTAs write it: `192.0.2.1`, `2001:db8::1`,
/// `::ffff:192.0.2.1`, optionally in brackets or with an `IPv6:` tag (the
/// address-literal forms of RFC 5321).
pub fn parse_ip(client_ip: &str) -> Result<IpAddr, InputError> {
    const ARG: &str = "client_ip";
    if let Some(v4) = plain_ipv4(client_ip.as_bytes()) {
        return Ok(IpAddr::V4(v4));
    }
    check_len(ARG, client_ip)?;
    let mut s = client_ip.trim();
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        s = inner;
    }
    // Compared as bytes: slicing the str at 5 could split a character.
    if s.len() > 5 && s.as_bytes()[..5].eq_ignore_ascii_case(b"ipv6:") {
        s = &s[5..];
    }
    s.parse::<IpAddr>().map_err(|_| {
        let why = if client_ip.is_empty() {
            "is empty".to_string()
        } else {
            format!("not an IP address: {}", excerpt(client_ip))
        };
        InputError::new(ARG, why)
    })
}

/// The common case of [`parse_ip`], without its general parser: four
/// decimal octets of one to three digits, none over 255 and none with a
/// leading zero. Exactly what the standard parser accepts of such text, to
/// the same address; `None` sends anything else to it.
fn plain_ipv4(s: &[u8]) -> Option<Ipv4Addr> {
    if s.len() < 7 || s.len() > 15 {
        return None;
    }
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if s.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut value = 0u32;
        while i < s.len() && i - start < 3 && s[i].is_ascii_digit() {
            value = value * 10 + u32::from(s[i] - b'0');
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || (digits > 1 && s[start] == b'0') {
            return None;
        }
        *octet = u8::try_from(value).ok()?;
    }
    (i == s.len()).then_some(Ipv4Addr::from(octets))
}

/// Strips white space and angle brackets around an address.
fn unbracket(mut s: &[u8]) -> &[u8] {
    loop {
        // ASCII white space only, as the byte-level trims below, so that a
        // normalised address normalises to itself.
        s = s.trim_ascii();
        match s.strip_prefix(b"<").and_then(|r| r.strip_suffix(b">")) {
            Some(inner) => s = inner,
            None => return s,
        }
    }
}

/// An address as list entries are matched: lower-case, without white space
/// or angle brackets (bytes that are not UTF-8 shown as U+FFFD, which no
/// list entry holds).
pub(crate) fn lower_address(address: &[u8]) -> String {
    String::from_utf8_lossy(unbracket(address)).to_ascii_lowercase()
}

/// Splits at the last `@`: (local part, domain with its `@`, or empty).
fn split_address(a: &[u8]) -> (&[u8], &[u8]) {
    match swar::rfind(a, b'@') {
        Some(at) => (&a[..at], &a[at..]),
        None => (a, &[]),
    }
}

/// `s` without `prefix`, compared without regard to ASCII case.
fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// `a=b=c=...`: the first `n - 1` fields and the rest (which may hold `=`).
fn split_fields<const N: usize>(s: &[u8]) -> Option<[&[u8]; N]> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut rest = s;
    for slot in out.iter_mut().take(N - 1) {
        let eq = rest.iter().position(|&b| b == b'=')?;
        *slot = &rest[..eq];
        rest = &rest[eq + 1..];
    }
    out[N - 1] = rest;
    out.iter().all(|f| !f.is_empty()).then_some(out)
}

/// Undoes the Sender Rewriting Scheme: `SRS0=HHH=TT=domain=local@forwarder`
/// and `SRS1=HHH=forwarder==HHH=TT=domain=local@forwarder2` both carry the
/// original `local@domain`. Returns (local, domain without `@`).
fn unwrap_srs(local: &[u8]) -> Option<(&[u8], &[u8])> {
    fn srs0_tail(tail: &[u8]) -> Option<(&[u8], &[u8])> {
        let [_hash, _timestamp, domain, orig] = split_fields::<4>(tail)?;
        // A domain with an '@' is not one: leave such an address alone.
        (!domain.contains(&b'@')).then_some((orig, domain))
    }
    let sep_ok = |b: u8| matches!(b, b'=' | b'+' | b'-');
    if local.len() > 5 && sep_ok(local[4]) {
        if local[..4].eq_ignore_ascii_case(b"srs0") {
            return srs0_tail(&local[5..]);
        }
        if local[..4].eq_ignore_ascii_case(b"srs1") {
            let tail = &local[5..];
            let double = tail.windows(2).position(|w| w == b"==")?;
            return srs0_tail(&tail[double + 2..]);
        }
    }
    None
}

/// Undoes Bounce Address Tag Validation: `prvs=TAG=local` and
/// `btv1==TAG==local` carry the original local part.
fn unwrap_batv(local: &[u8]) -> &[u8] {
    if let Some(rest) =
        strip_prefix_ci(local, b"prvs=").or_else(|| strip_prefix_ci(local, b"msprvs1="))
    {
        if let Some(eq) = rest.iter().position(|&b| b == b'=') {
            if eq + 1 < rest.len() {
                return &rest[eq + 1..];
            }
        }
    } else if let Some(rest) = strip_prefix_ci(local, b"btv1==") {
        if let Some(eq) = rest.windows(2).position(|w| w == b"==") {
            if eq + 2 < rest.len() {
                return &rest[eq + 2..];
            }
        }
    }
    local
}

/// Cuts `local` at its first extension delimiter (`user+tag` → `user`),
/// unless that would leave it empty.
fn cut_extension<'a>(local: &'a [u8], delimiters: &[u8]) -> &'a [u8] {
    let at = match one_plain_delimiter(delimiters) {
        Some(d) => swar::find(local, d),
        None => local
            .iter()
            .position(|b| delimiters.contains(&b.to_ascii_lowercase())),
    };
    match at {
        Some(i) if i > 0 => &local[..i],
        _ => local,
    }
}

/// Appends `bytes` lower-cased (ASCII letters; a copy, then one pass over
/// it eight bytes at a time).
fn push_lower(out: &mut Vec<u8>, bytes: &[u8]) {
    swar::push_lower(out, bytes);
}

/// Appends the normalised envelope sender to `out`: lower-cased, SRS and
/// BATV unwrapped, `+extension` removed, and each digit run of the local
/// part that stands between non-word characters (not a letter, digit or
/// `_`; the ends count as such) replaced by `#`, postgrey's `\b\d+\b`:
/// the serial numbers of VERP and bounce addresses (`bounce-12345-user=`,
/// `msg.4711.`), not the digits of a mailbox name (`user1`, `s123`). The null sender (`""` or `<>`) adds nothing. Works on
/// bytes: an address that is not UTF-8 (Latin-1 from an old client) is
/// normalised the same way, only its ASCII bytes being changed.
pub(crate) fn sender_into(sender: &[u8], delimiters: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    if let Some(plain) = plain_lower_into(sender, delimiters, out) {
        if plain.digits {
            out.truncate(start);
            fold_serials(&sender[..plain.local], out);
            push_lower(out, &sender[plain.domain..]);
        }
        return;
    }
    if let Some((local, domain)) = plain_address(sender) {
        fold_serials(cut_extension(local, delimiters), out);
        push_lower(out, domain);
        return;
    }
    to_fixpoint(sender, delimiters, out, sender_pass);
}

/// The bytes no plain address holds: ASCII white space (what
/// `trim_ascii` removes) and angle brackets.
fn unplain(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'<' | b'>')
}

/// Whether `a` may hold an [`unplain`] byte: one below `!` (ASCII white
/// space, or a control byte, which no real address holds either) or an
/// angle bracket. Eight bytes at a time (see [`swar`]).
fn any_unplain(a: &[u8]) -> bool {
    swar::any(a, b'a', swar::unplain)
}

/// Byte tests and case folding eight bytes at a time, in a few integer
/// operations on a `u64` (no branch per byte; exact for every byte value).
mod swar {
    const HIGH: u64 = splat(0x80);

    /// `b` in every byte.
    pub(super) const fn splat(b: u8) -> u64 {
        0x0101_0101_0101_0101 * b as u64
    }

    /// The high bit of each byte of `w` in `lo..=hi` (both ASCII), the
    /// other bits clear. The sums stay within each byte: at most
    /// 0x7F + 0x80.
    pub(super) fn in_range(w: u64, lo: u8, hi: u8) -> u64 {
        debug_assert!(lo <= hi && hi < 0x80);
        let low7 = w & !HIGH;
        let at_least_lo = low7 + splat(0x80 - lo);
        let above_hi = low7 + splat(0x7F - hi);
        at_least_lo & !above_hi & !w & HIGH
    }

    /// The high bit of each byte of `w` below `!` or an angle bracket (see
    /// [`super::any_unplain`]).
    pub(super) fn unplain(w: u64) -> u64 {
        in_range(w, 0, b' ') | in_range(w | splat(2), b'>', b'>')
    }

    /// `w` with its ASCII capitals lower-cased.
    pub(super) fn lower(w: u64) -> u64 {
        w | (in_range(w, b'A', b'Z') >> 2)
    }

    /// Calls `each` with every word of `a` and its offset, until it says
    /// enough. A last part word is `a`'s last eight bytes, overlapping the
    /// word before (those bytes are seen twice); a slice shorter than a
    /// word is padded with `pad`.
    #[inline(always)]
    fn scan(a: &[u8], pad: u8, mut each: impl FnMut(usize, u64) -> bool) {
        if a.len() < 8 {
            each(0, padded(a, pad));
            return;
        }
        let mut at = 0;
        while at + 8 <= a.len() {
            if each(at, word(a, at)) {
                return;
            }
            at += 8;
        }
        if at < a.len() {
            each(a.len() - 8, word(a, a.len() - 8));
        }
    }

    /// The eight bytes of `a` at `at`.
    fn word(a: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(a[at..at + 8].try_into().expect("8 bytes"))
    }

    /// `a`, shorter than a word, padded with `pad`.
    fn padded(a: &[u8], pad: u8) -> u64 {
        let mut w = splat(pad);
        for (i, &b) in a.iter().enumerate() {
            w = (w & !(0xFF << (8 * i))) | (u64::from(b) << (8 * i));
        }
        w
    }

    /// Whether `test` marks a byte of `a` (padding with `pad`, which it
    /// must not mark).
    pub(super) fn any(a: &[u8], pad: u8, test: impl Fn(u64) -> u64) -> bool {
        let mut marks = 0;
        scan(a, pad, |_, w| {
            marks |= test(w);
            false
        });
        marks != 0
    }

    /// The first byte of `a` equal to `b` (`b` ASCII, not NUL).
    pub(super) fn find(a: &[u8], b: u8) -> Option<usize> {
        let mut found = None;
        scan(a, 0, |at, w| {
            let m = in_range(w, b, b);
            if m != 0 {
                found = Some(at + m.trailing_zeros() as usize / 8);
            }
            m != 0
        });
        found
    }

    /// The last byte of `a` equal to `b` (`b` ASCII, not NUL).
    pub(super) fn rfind(a: &[u8], b: u8) -> Option<usize> {
        let mut found = None;
        scan(a, 0, |at, w| {
            let m = in_range(w, b, b);
            if m != 0 {
                found = Some(at + (63 - m.leading_zeros() as usize) / 8);
            }
            false
        });
        found
    }

    /// What [`lower_into`] finds in an address (positions in it).
    pub(super) struct Marks {
        /// A byte below `!` or an angle bracket (see [`super::any_unplain`]).
        pub(super) unplain: bool,
        pub(super) last_at: Option<usize>,
        pub(super) first_delimiter: Option<usize>,
        pub(super) first_digit: Option<usize>,
    }

    /// [`Marks`] as they are gathered: a mask of every byte that is not
    /// plain, and the last word with an `@`, the first with a delimiter and
    /// the first with a digit (offset and marks; no marks: none yet).
    #[derive(Default, Clone, Copy)]
    struct Gather {
        unplain: u64,
        at: (usize, u64),
        delimiter: (usize, u64),
        digit: (usize, u64),
    }

    impl Gather {
        #[inline(always)]
        fn add(&mut self, at: usize, w: u64, delimiter: u8) {
            self.unplain |= unplain(w);
            let ats = in_range(w, b'@', b'@');
            if ats != 0 {
                self.at = (at, ats);
            }
            let delimiters = in_range(w, delimiter, delimiter);
            if self.delimiter.1 == 0 {
                self.delimiter = (at, delimiters);
            }
            let digits = in_range(w, b'0', b'9');
            if self.digit.1 == 0 {
                self.digit = (at, digits);
            }
        }

        fn marks(self) -> Marks {
            let first =
                |(at, m): (usize, u64)| (m != 0).then(|| at + m.trailing_zeros() as usize / 8);
            Marks {
                unplain: self.unplain != 0,
                last_at: (self.at.1 != 0)
                    .then(|| self.at.0 + (63 - self.at.1.leading_zeros() as usize) / 8),
                first_delimiter: first(self.delimiter),
                first_digit: first(self.digit),
            }
        }
    }

    /// Appends `a` lower-cased.
    pub(super) fn push_lower(out: &mut Vec<u8>, a: &[u8]) {
        lower_into(a, b'+', out);
    }

    /// Appends `a` lower-cased, a word at a time, and finds its [`Marks`]
    /// in the same pass (`delimiter` ASCII, not a letter nor NUL).
    pub(super) fn lower_into(a: &[u8], delimiter: u8, out: &mut Vec<u8>) -> Marks {
        let mut gather = Gather::default();
        if a.len() < 8 {
            // Padded with a letter, which nothing marks.
            let w = padded(a, b'a');
            gather.add(0, w, delimiter);
            out.extend_from_slice(&lower(w).to_le_bytes()[..a.len()]);
            return gather.marks();
        }
        out.reserve(a.len());
        let mut at = 0;
        while at + 8 <= a.len() {
            let w = word(a, at);
            gather.add(at, w, delimiter);
            out.extend_from_slice(&lower(w).to_le_bytes());
            at += 8;
        }
        if at < a.len() {
            // The last eight bytes: their overlap with the word before is
            // written again.
            let last = a.len() - 8;
            let w = word(a, last);
            gather.add(last, w, delimiter);
            out.truncate(out.len() - (at - last));
            out.extend_from_slice(&lower(w).to_le_bytes());
        }
        gather.marks()
    }
}

/// The wrappers a normalisation pass undoes, by the start of a local part
/// (ASCII case ignored); [`to_fixpoint`] looks for them too.
const WRAPPERS: [&str; 5] = ["srs0", "srs1", "prvs=", "msprvs1=", "btv1=="];

/// Splits a plain address (local part, domain with its `@`): one with no
/// white space or angle bracket and no wrapper at the start of its local
/// part. Nearly every real address is one, and one pass of
/// [`sender_pass`] or [`recipient_pass`] on it comes down to cutting the
/// extension, folding serials and lower-casing (no bracket or white space
/// to strip, no wrapper to undo), and its result holds nothing that would
/// make [`to_fixpoint`] pass again: its bytes are the input's (lower-cased)
/// or `#`, and it starts with a wrapper only if the local part did. So
/// the fast paths of [`sender_into`] and [`recipient_into`] give what the
/// general ones give (`tests::plain_fast_paths_match_the_general_ones`).
fn plain_address(a: &[u8]) -> Option<(&[u8], &[u8])> {
    if any_unplain(a) {
        return None;
    }
    let (local, domain) = split_address(a);
    (!wrapped(local)).then_some((local, domain))
}

/// Whether a local part starts with one of the [`WRAPPERS`].
fn wrapped(local: &[u8]) -> bool {
    matches!(
        local.first().map(u8::to_ascii_lowercase),
        Some(b's' | b'p' | b'm' | b'b')
    ) && WRAPPERS
        .iter()
        .any(|w| strip_prefix_ci(local, w.as_bytes()).is_some())
}

/// A plain address (see [`plain_address`]) with one delimiter that is not
/// a letter (the usual `+`), in one pass: appends it lower-cased, its
/// extension cut, and says where its parts lie in `a`. `None` (nothing
/// appended) for any other address or delimiter list.
fn plain_lower_into(a: &[u8], delimiters: &[u8], out: &mut Vec<u8>) -> Option<Plain> {
    let delimiter = one_plain_delimiter(delimiters)?;
    let start = out.len();
    let marks = swar::lower_into(a, delimiter, out);
    let domain = marks.last_at.unwrap_or(a.len());
    if marks.unplain || wrapped(&a[..domain]) {
        out.truncate(start);
        return None;
    }
    // `cut_extension`: at the first delimiter, unless it starts the local part.
    let local = marks
        .first_delimiter
        .filter(|&d| d > 0 && d < domain)
        .unwrap_or(domain);
    out.drain(start + local..start + domain);
    Some(Plain {
        local,
        domain,
        digits: marks.first_digit.is_some_and(|d| d < local),
    })
}

/// The delimiter of a list of one that the word scans can look for as it
/// is (the usual `+`): ASCII, not NUL, and not a letter, since lower-casing
/// changes only letters, so a byte matches it lower-cased exactly when it
/// matches it as it is.
fn one_plain_delimiter(delimiters: &[u8]) -> Option<u8> {
    match *delimiters {
        [d] if (1..0x80).contains(&d) && !d.is_ascii_alphabetic() => Some(d),
        _ => None,
    }
}

/// Where [`plain_lower_into`] found an address's parts.
struct Plain {
    /// The end of the local part without its extension.
    local: usize,
    /// Where the domain (with its `@`) starts.
    domain: usize,
    /// Whether that local part holds a digit (see [`fold_serials`]).
    digits: bool,
}

/// Runs `pass` and, if its output could normalise differently (garbage can
/// hide a wrapper or brackets behind white space or an extension), runs it
/// again on its own output until nothing changes, so a normalised address
/// is its own normal form. Real addresses never need the second pass.
///
/// This ends: a pass never lengthens its input (it only cuts, unwraps,
/// lower-cases and folds digit runs into one `#`), and a pass that changes
/// an input without shortening it has lowered a capital or folded a digit,
/// which no pass makes again. So each further pass shortens the text or
/// removes a capital or digit: at most three passes a byte, and a bounded
/// address (1 KiB) costs at most a few million byte steps. (A fixed number
/// of passes did not suffice: the fuzzer found wrappers nested deeper than
/// it peeled.)
fn to_fixpoint(
    input: &[u8],
    delimiters: &[u8],
    out: &mut Vec<u8>,
    pass: fn(&[u8], &[u8], &mut Vec<u8>),
) {
    let start = out.len();
    pass(input, delimiters, out);
    let mut again = Vec::new();
    for _ in 0..=3 * input.len() {
        let produced = &out[start..];
        let suspicious = produced.iter().any(|&b| unplain(b))
            || WRAPPERS
                .iter()
                .any(|p| strip_prefix_ci(produced, p.as_bytes()).is_some());
        if !suspicious {
            return;
        }
        again.clear();
        again.extend_from_slice(produced);
        out.truncate(start);
        pass(&again, delimiters, out);
        if out[start..] == again[..] {
            return;
        }
    }
    debug_assert!(false, "normalisation did not settle: {input:?}");
}

/// Appends `local` lower-cased, with each digit run that stands between
/// non-word characters replaced by `#` (see [`sender_into`]).
fn fold_serials(local: &[u8], out: &mut Vec<u8>) {
    if !swar::any(local, b'a', |w| swar::in_range(w, b'0', b'9')) {
        return push_lower(out, local);
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < local.len() {
        let b = local[i];
        let run = local[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if run == 0 {
            out.push(b.to_ascii_lowercase());
            i += 1;
            continue;
        }
        let before = i.checked_sub(1).map(|j| local[j]);
        let after = local.get(i + run).copied();
        if !before.is_some_and(word) && !after.is_some_and(word) {
            out.push(b'#');
        } else {
            out.extend_from_slice(&local[i..i + run]);
        }
        i += run;
    }
}

/// One pass of sender normalisation (see [`sender_into`]).
fn sender_pass(sender: &[u8], delimiters: &[u8], out: &mut Vec<u8>) {
    let (mut local, domain) = split_address(unbracket(sender));
    let mut srs_domain = None;
    // Wrappers can nest (SRS around BATV, SRS of SRS); peel a few layers,
    // so that normalising a normalised sender changes nothing.
    for _ in 0..8 {
        let before = local;
        if let Some((orig_local, orig_domain)) = unwrap_srs(local) {
            local = orig_local;
            srs_domain = Some(orig_domain.trim_ascii());
        }
        local = unwrap_batv(local).trim_ascii();
        if local == before {
            break;
        }
    }
    local = cut_extension(local, delimiters).trim_ascii();
    out.reserve(local.len() + domain.len() + 1);
    fold_serials(local, out);
    match srs_domain {
        Some(d) => {
            out.push(b'@');
            push_lower(out, d);
        }
        None => push_lower(out, domain),
    }
}

/// Appends the normalised envelope recipient to `out`: lower-cased and
/// `+extension` removed (on bytes, as [`sender_into`]).
pub(crate) fn recipient_into(
    recipient: &[u8],
    delimiters: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), InputError> {
    let start = out.len();
    if plain_lower_into(recipient, delimiters, out).is_none() {
        match plain_address(recipient) {
            Some((local, domain)) => {
                push_lower(out, cut_extension(local, delimiters));
                push_lower(out, domain);
            }
            None => to_fixpoint(unbracket(recipient), delimiters, out, recipient_pass),
        }
    }
    if out.len() == start {
        return Err(InputError::new("recipient", "is empty"));
    }
    Ok(())
}

/// One pass of recipient normalisation (see [`recipient_into`]).
fn recipient_pass(recipient: &[u8], delimiters: &[u8], out: &mut Vec<u8>) {
    let (local, domain) = split_address(unbracket(recipient));
    push_lower(out, cut_extension(local, delimiters).trim_ascii());
    push_lower(out, domain);
}

fn to_string(bytes: Vec<u8>) -> String {
    // Input was UTF-8 and only ASCII bytes were changed or cut at ASCII
    // boundaries, so this never replaces anything; lossy keeps it panic-free.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The normalised form of an envelope sender, as keys are built from it.
/// An address over [`MAX_ADDRESS_LEN`] bytes has none (the engine keys it
/// by a hash of its exact bytes) and is an error here.
///
/// ```
/// use greylist::normalize_sender;
/// assert_eq!(normalize_sender("prvs=1234abcd=User@Example.COM", "+").unwrap(), "user@example.com");
/// assert_eq!(normalize_sender("<>", "+").unwrap(), "");
/// ```
pub fn normalize_sender(sender: &str, delimiters: &str) -> Result<String, InputError> {
    check_len("sender", sender)?;
    let mut out = Vec::new();
    sender_into(sender.as_bytes(), delimiters.as_bytes(), &mut out);
    Ok(to_string(out))
}

/// The normalised form of an envelope recipient, as keys are built from
/// it (over-long: an error, as for [`normalize_sender`]).
pub fn normalize_recipient(recipient: &str, delimiters: &str) -> Result<String, InputError> {
    check_len("recipient", recipient)?;
    let mut out = Vec::new();
    recipient_into(recipient.as_bytes(), delimiters.as_bytes(), &mut out)?;
    Ok(to_string(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> String {
        normalize_sender(x, "+").unwrap()
    }
    fn r(x: &str) -> String {
        normalize_recipient(x, "+").unwrap()
    }

    /// Found by the fuzzer: wrappers nested deeper than a fixed number of
    /// passes peeled left a normal form that normalised again to
    /// something else (so one sender could have two keys).
    #[test]
    fn deeply_nested_wrappers_settle_in_one_call() {
        let batv = "prvs=x= ".repeat(100) + "User@Example.org";
        assert_eq!(s(&batv), "user@example.org");
        let srs = "SRS0=h=t=example.org=".repeat(40) + "user@forwarder.example";
        assert_eq!(s(&s(&srs)), s(&srs));
        let brackets = "< prvs=x=".repeat(80) + "u@d" + &">".repeat(80);
        assert_eq!(s(&brackets), "u@d");
        let rcpt = "< ".repeat(200) + "Bob+tag@Example.NET" + &" >".repeat(200);
        assert_eq!(r(&rcpt), "bob@example.net");
    }

    #[test]
    fn sender_case_and_extension() {
        assert_eq!(s("User+tag@Example.COM"), "user@example.com");
        assert_eq!(s("<User+tag@Example.COM>"), "user@example.com");
        assert_eq!(s("  alice@example.org "), "alice@example.org");
        // A leading delimiter is part of the name, not an extension.
        assert_eq!(s("+x@example.org"), "+x@example.org");
    }

    #[test]
    fn sender_batv() {
        assert_eq!(s("prvs=1234abcd=user@example.com"), "user@example.com");
        assert_eq!(s("PRVS=0123456789=User@Example.com"), "user@example.com");
        assert_eq!(s("btv1==12345abcdef==user@example.com"), "user@example.com");
        assert_eq!(s("msprvs1=17abcdef=user@example.com"), "user@example.com");
        // Malformed wrappers are left alone, not mangled.
        assert_eq!(s("prvs=@example.com"), "prvs=@example.com");
    }

    #[test]
    fn sender_srs() {
        assert_eq!(
            s("SRS0=HHH=TT=example.org=user@forwarder.net"),
            "user@example.org"
        );
        assert_eq!(
            s("SRS0+abcd=X7=Example.ORG=User+list@forwarder.net"),
            "user@example.org"
        );
        assert_eq!(
            s("SRS1=XXX=forwarder1.net==HHH=TT=example.org=user@forwarder2.net"),
            "user@example.org"
        );
        // SRS around BATV: both come off.
        assert_eq!(
            s("SRS0=HHH=TT=example.com=prvs=1234abcd=user@forwarder.net"),
            "user@example.com"
        );
        // Not enough fields: left as it is.
        assert_eq!(s("srs0=abc@forwarder.net"), "srs0=abc@forwarder.net");
    }

    #[test]
    fn sender_verp_digits() {
        assert_eq!(
            s("bounce-12345-user=example.com@lists.example.net"),
            "bounce-#-user=example.com@lists.example.net"
        );
        assert_eq!(
            s("bounce-99-user=example.com@lists.example.net"),
            s("bounce-12345-user=example.com@lists.example.net")
        );
        assert_eq!(
            s("Msg.4711.X@lists.example.net"),
            "msg.#.x@lists.example.net"
        );
        assert_eq!(s("12345@example.net"), "#@example.net");
        // Digits that are part of a mailbox name stay, and so do digits in
        // the domain: two users are two senders (issue 16).
        assert_eq!(s("a1b22@mx2.example.net"), "a1b22@mx2.example.net");
        assert_ne!(s("user1@example.org"), s("user2@example.org"));
        assert_ne!(s("s123@uni.example"), s("s373@uni.example"));
        assert_eq!(s("user_42@example.org"), "user_42@example.org");
    }

    #[test]
    fn null_sender() {
        assert_eq!(s(""), "");
        assert_eq!(s("<>"), "");
        assert_eq!(s(" < > "), "");
    }

    #[test]
    fn configurable_delimiters() {
        assert_eq!(
            normalize_sender("user-tag@x.org", "+-").unwrap(),
            "user@x.org"
        );
        assert_eq!(
            normalize_sender("user+tag@x.org", "").unwrap(),
            "user+tag@x.org"
        );
        assert_eq!(
            normalize_recipient("bob-tag@x.org", "-").unwrap(),
            "bob@x.org"
        );
    }

    #[test]
    fn recipient() {
        assert_eq!(r("Bob+Lists@Example.NET"), "bob@example.net");
        assert_eq!(r("<bob@example.net>"), "bob@example.net");
        // Digits and wrappers stay in recipients: they are real mailboxes.
        assert_eq!(r("user123@example.net"), "user123@example.net");
        assert_eq!(r("postmaster"), "postmaster");
        let e = normalize_recipient("", "+").unwrap_err();
        assert_eq!(e.argument(), "recipient");
        assert_eq!(e.to_string(), "recipient: is empty");
    }

    #[test]
    fn over_long_is_refused() {
        let long = format!("{}@example.com", "a".repeat(2000));
        let e = normalize_sender(&long, "+").unwrap_err();
        assert_eq!(e.argument(), "sender");
        assert!(e.reason().contains("limit of 1024"), "{e}");
        let e = normalize_recipient(&long, "+").unwrap_err();
        assert_eq!(e.argument(), "recipient");
        let e = parse_ip(&"1".repeat(70_000)).unwrap_err();
        assert_eq!(e.argument(), "client_ip");
        // Exactly at the limit is fine.
        let edge = format!("{}@x.org", "a".repeat(MAX_ADDRESS_LEN - 6));
        assert_eq!(edge.len(), MAX_ADDRESS_LEN);
        assert!(normalize_sender(&edge, "+").is_ok());
    }

    /// Found by the c_abi_check fuzz target: a multi-byte character at byte
    /// 4 of a client IP made `parse_ip` slice inside it and panic.
    #[test]
    fn fuzz_multibyte_character_in_ip_prefix() {
        let e = parse_ip("ab\u{2ab}xyz").unwrap_err();
        assert_eq!(e.argument(), "client_ip");
        assert!(parse_ip("abcdʫ1").is_err());
    }

    /// Found by the normalize fuzz target: an SRS "domain" holding an '@'
    /// gave a sender that normalised differently the second time.
    #[test]
    fn fuzz_normalising_twice_changes_nothing() {
        for raw in [
            "SRS0=HHH=TT=exam1ple.orr@forwg=user@foraax=ewmpld",
            "User\n\n+tag@Example.COM",
            "<<a@b>>",
            "ms\u{b}\u{b}+\u{b}prvs1=.\0pt",
            "<ggSGGI\t\t1.>\t\t\r\t\t+\t\t",
            "<prvs==<><>>",
            "SRS0=a=b=c.example=SRS0=d=e=f.example=user@x.example",
        ] {
            let once = s(raw);
            assert_eq!(s(&once), once, "{raw:?}");
        }
        for raw in ["name.)120 +x", "<~pT\t\t>\t+0"] {
            let once = r(raw);
            assert_eq!(r(&once), once, "{raw:?}");
        }
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        /// The plain-address fast paths give what the general passes give,
        /// on text made of what matters to them: wrapper letters, digits,
        /// delimiters, brackets, white space, `@`.
        #[test]
        fn plain_fast_paths_match_the_general_ones(
            tokens in proptest::collection::vec(proptest::prop_oneof![
                proptest::sample::select(vec![
                    "srs0", "SRS1", "prvs=", "MSprvs1=", "btv1==", "=", "==", "+", "-",
                    "@", "<", ">", " ", "\t", "a", "B", "9", "42", "x.y", "\u{fc}", "\u{b}",
                    "Z", "[", "`", "{", "/", ":",
                ])
                .prop_map(|t| t.as_bytes().to_vec()),
                "[sSrR01pPvVmMbBtT=+<> @a9.]{1,3}".prop_map(String::into_bytes),
                // Not UTF-8: `@`, `+`, `0` and `Z` with the high bit set.
                proptest::sample::select(vec![0xC0u8, 0xAB, 0xB0, 0xDA]).prop_map(|b| vec![b]),
            ], 0..10),
            delimiters in proptest::sample::select(vec!["+", "+-=", "-"]),
        ) {
            let raw = tokens.concat();
            let d = delimiters.as_bytes();
            let (mut fast, mut general) = (Vec::new(), Vec::new());
            sender_into(&raw, d, &mut fast);
            to_fixpoint(&raw, d, &mut general, sender_pass);
            proptest::prop_assert_eq!(&fast, &general, "sender {:?}", raw);
            let (mut fast, mut general) = (Vec::new(), Vec::new());
            let fast_ok = recipient_into(&raw, d, &mut fast).is_ok();
            to_fixpoint(unbracket(&raw), d, &mut general, recipient_pass);
            proptest::prop_assert_eq!(&fast, &general, "recipient {:?}", raw);
            proptest::prop_assert_eq!(fast_ok, !general.is_empty());
        }

        /// The dotted-quad fast path agrees with the standard parser
        /// wherever it answers, and answers for every address it prints.
        #[test]
        fn plain_ipv4_matches_the_standard_parser(
            raw in "[0-9.]{0,16}",
            octets in proptest::prelude::any::<[u8; 4]>(),
        ) {
            if let Some(v4) = plain_ipv4(raw.as_bytes()) {
                proptest::prop_assert_eq!(raw.parse::<Ipv4Addr>().ok(), Some(v4));
            }
            let printed = Ipv4Addr::from(octets);
            proptest::prop_assert_eq!(plain_ipv4(printed.to_string().as_bytes()), Some(printed));
        }
    }

    #[test]
    fn the_word_scans_agree_with_byte_at_a_time_ones() {
        // Every byte value at every position of slices one to three words
        // long, between letters: each lane of a word, a last part word
        // that overlaps the one before, and a short slice's padding.
        for len in 1..=24 {
            for pos in 0..len {
                for b in 0..=u8::MAX {
                    let mut a = vec![b'q'; len];
                    a[pos] = b;
                    let flagged = b <= b' ' || b == b'<' || b == b'>';
                    assert_eq!(any_unplain(&a), flagged, "byte {b} at {pos} of {len}");
                    assert!(!unplain(b) || flagged, "byte {b}");
                    let mut lower = Vec::new();
                    push_lower(&mut lower, &a);
                    assert_eq!(lower, a.to_ascii_lowercase(), "byte {b} at {pos} of {len}");
                    let digit = b.is_ascii_digit().then_some(pos);
                    assert_eq!(
                        swar::any(&a, b'a', |w| swar::in_range(w, b'0', b'9')),
                        digit.is_some()
                    );
                    for needle in [b'@', b'+', b'-'] {
                        let at = (b == needle).then_some(pos);
                        assert_eq!(swar::find(&a, needle), at, "{needle} in {a:?}");
                        assert_eq!(swar::rfind(&a, needle), at, "{needle} in {a:?}");
                        let mut out = vec![b'x'];
                        let marks = swar::lower_into(&a, needle, &mut out);
                        assert_eq!(&out[1..], a.to_ascii_lowercase());
                        assert_eq!(marks.unplain, flagged);
                        assert_eq!(marks.first_delimiter, at);
                        assert_eq!(marks.last_at, (b == b'@').then_some(pos));
                        assert_eq!(marks.first_digit, digit);
                    }
                }
            }
        }
        // First and last of several.
        assert_eq!(swar::find(b"a+b+c+d+e+f+g+h+i", b'+'), Some(1));
        assert_eq!(swar::rfind(b"a@b@c@d@e@f@g@h@i", b'@'), Some(15));
    }

    #[test]
    fn plain_ipv4_leaves_the_rest_to_the_standard_parser() {
        for odd in [
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.",
            "256.1.1.1",
            "1..2.3",
            " 1.2.3.4",
            "1.2.3.4 ",
            "[1.2.3.4]",
            "0000.1.1.1",
            "1.2.3.4.5",
        ] {
            assert_eq!(plain_ipv4(odd.as_bytes()), None, "{odd}");
        }
        assert_eq!(parse_ip("[1.2.3.4]").unwrap().to_string(), "1.2.3.4");
        assert_eq!(parse_ip(" 1.2.3.4 ").unwrap().to_string(), "1.2.3.4");
        assert!(parse_ip("01.2.3.4").is_err());
        assert_eq!(parse_ip("0.0.0.0").unwrap().to_string(), "0.0.0.0");
    }

    #[test]
    fn non_ascii_survives() {
        assert_eq!(s("Jürgen+x@Bücher.example"), "jürgen@bücher.example");
    }

    fn net(ip: &str) -> String {
        ClientNet::parse(ip, 24, 64).unwrap().to_string()
    }

    #[test]
    fn networks() {
        assert_eq!(net("192.0.2.1"), "192.0.2.0/24");
        assert_eq!(net("192.0.2.254"), "192.0.2.0/24");
        assert_eq!(net("::ffff:192.0.2.1"), "192.0.2.0/24");
        assert_eq!(net("[192.0.2.9]"), "192.0.2.0/24");
        assert_eq!(net("2001:db8::1"), "2001:db8::/64");
        assert_eq!(net("2001:db8:0:0:ffff::1"), "2001:db8::/64");
        assert_eq!(net("IPv6:2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(
            ClientNet::parse("192.0.2.77", 32, 128).unwrap().to_string(),
            "192.0.2.77/32"
        );
        assert_eq!(
            ClientNet::parse("2001:db8::77", 32, 128)
                .unwrap()
                .to_string(),
            "2001:db8::77/128"
        );
        assert_eq!(
            ClientNet::parse("10.1.2.3", 8, 64).unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_ne!(net("192.0.2.1"), net("192.0.3.1"));
    }

    #[test]
    fn bad_ips() {
        for bad in [
            "",
            "192.0.2",
            "192.0.2.256",
            "example.com",
            "2001:db8:::1",
            "1.2.3.4 5",
        ] {
            let e = parse_ip(bad).unwrap_err();
            assert_eq!(e.argument(), "client_ip", "{bad}");
        }
        assert_eq!(
            parse_ip("nope").unwrap_err().to_string(),
            "client_ip: not an IP address: \"nope\""
        );
    }

    #[test]
    fn domains() {
        assert_eq!(
            ClientNet::domain("Example.COM.").unwrap().to_string(),
            "example.com"
        );
        assert!(ClientNet::domain("").is_err());
        assert!(ClientNet::domain("a b").is_err());
        assert!(ClientNet::domain("user@example.com").is_err());
    }
}
