//! A client's verified host name as the client part of a key.
//!
//! Large senders (Gmail, Outlook, Amazon SES) retry a message from another
//! host of their pool, often in another network, so a key by network makes
//! each retry a new triplet. Their hosts have forward-confirmed reverse
//! names under one registrable domain (`mail-sor-f41.google.com`,
//! `mail-yw1-f5.google.com`), which the MTA verified (Postfix's
//! `client_name`, Exim's `$sender_host_name`): keyed by that domain, the
//! retry from the second host finds the first attempt.
//!
//! A name only counts when it names a mail server, not an address of an
//! access network: names that carry the client's IP address
//! (`host-203-0-113-7.example.net`, `c0000207.example.net`) or a word of
//! dynamic or residential pools (`dsl`, `dyn`, `pool`, `dhcp`, `cable`,
//! ...) keep the network key, as Haraka's and sqlgrey's "smart" method
//! judge them: a whole ISP must not share one key (nor its reputation).
//! The registrable domain is found with the Public Suffix List (the `psl`
//! crate, which compiles it in), so `example.co.uk` and a private suffix
//! such as `github.io` are handled; a name under a suffix the list does not
//! know is not used.

use std::net::IpAddr;

/// Words of dynamic, residential and access-network host names (whole
/// words of the name: split at dots, dashes, underscores, and between
/// letters and digits).
const DYNAMIC_WORDS: &[&str] = &[
    "adsl",
    "bb",
    "broadband",
    "cable",
    "catv",
    "cpe",
    "cust",
    "customer",
    "customers",
    "dhcp",
    "dial",
    "dialin",
    "dialup",
    "dip",
    "dsl",
    "dyn",
    "dynamic",
    "dynip",
    "fiber",
    "fibre",
    "ftth",
    "fttc",
    "fttx",
    "gprs",
    "home",
    "lte",
    "mobile",
    "modem",
    "nat",
    "pool",
    "ppp",
    "pppoe",
    "res",
    "resi",
    "residential",
    "sdsl",
    "subscriber",
    "unassigned",
    "user",
    "users",
    "vdsl",
    "wifi",
    "wireless",
    "wlan",
    "xdsl",
];

/// Longest host name used (RFC 1035: 253 characters in text form).
const MAX_NAME: usize = 253;

/// The registrable domain of a verified client host name, lower-cased, when
/// the name names a mail server: `mail-sor-f41.google.com` (from
/// `209.85.220.41`) gives `google.com`. `None` (key by network) for a name
/// that is `unknown`, not a host name, under a public suffix the Public
/// Suffix List does not know, or generic: carrying the client's address
/// (its last two octets and one of the first two as numbers, or the whole
/// address as one hex or decimal number) or a word of dynamic or
/// residential pools (`dsl`, `dyn`, `pool`, `dhcp`, `cable`, ...), as
/// Haraka's and sqlgrey's "smart" method judge them.
///
/// ```
/// use std::net::IpAddr;
/// let ip: IpAddr = "209.85.220.41".parse().unwrap();
/// assert_eq!(greylist::host_name_domain("mail-sor-f41.google.com", ip).as_deref(), Some("google.com"));
/// let dsl: IpAddr = "203.0.113.7".parse().unwrap();
/// assert_eq!(greylist::host_name_domain("host-203-0-113-7.dsl.example.net", dsl), None);
/// ```
pub fn host_name_domain(name: &str, ip: IpAddr) -> Option<String> {
    let name = name.trim().strip_suffix('.').unwrap_or(name.trim());
    let host_like = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > MAX_NAME
        || name.eq_ignore_ascii_case("unknown")
        || !name.split('.').all(host_like)
        || name.parse::<IpAddr>().is_ok()
    {
        return None;
    }
    let name = name.to_ascii_lowercase();
    let domain = psl::domain(name.as_bytes())?;
    if !domain.suffix().is_known() {
        return None;
    }
    let domain = std::str::from_utf8(domain.as_bytes()).ok()?;
    // The labels left of the registrable domain: what names the host.
    let host = name[..name.len() - domain.len()].trim_end_matches('.');
    if is_generic(host, ip) {
        return None;
    }
    Some(domain.to_string())
}

/// Whether the host part of a name looks like an access network's address
/// rather than a mail server's name.
fn is_generic(host: &str, ip: IpAddr) -> bool {
    let tokens: Vec<&str> = host
        .split(['.', '-', '_'])
        .filter(|t| !t.is_empty())
        .collect();
    // Words split further where letters meet digits (`adsl123`, `dyn4`).
    let mut words = Vec::new();
    for token in &tokens {
        let mut rest = *token;
        while let Some(first) = rest.chars().next() {
            let digit = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digit)
                .unwrap_or(rest.len());
            words.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
    if words.iter().any(|w| DYNAMIC_WORDS.contains(w)) {
        return true;
    }
    let numbers: Vec<u64> = words.iter().filter_map(|w| w.parse().ok()).collect();
    let hex = |t: &&str| u128::from_str_radix(t, 16).ok();
    match ip {
        IpAddr::V4(v4) => carries_v4(v4, &tokens, &numbers),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => carries_v4(v4, &tokens, &numbers),
            None => {
                // The address's last two groups, as hex words of the name.
                let groups = v6.segments();
                let words: Vec<u128> = tokens.iter().filter_map(hex).collect();
                let (g6, g7) = (u128::from(groups[6]), u128::from(groups[7]));
                (g6 != 0 || g7 != 0) && words.contains(&g6) && words.contains(&g7)
                    || words.contains(&(u128::from(v6) & u128::from(u64::MAX)))
            }
        },
    }
}

/// Whether a name carries an IPv4 address: its last two octets and one of
/// the first two as distinct numbers of the name (`203-0-113-7`,
/// `7.113.0.203`; `a237-23` for `23.251.237.23` is not: one 23 cannot be
/// two octets), or the whole address in hex or zero-padded decimal inside
/// a word (`cb007107`, `d51525354`, `host203000113007`), or as one decimal
/// number.
fn carries_v4(v4: std::net::Ipv4Addr, tokens: &[&str], numbers: &[u64]) -> bool {
    let [a, b, c, d] = v4.octets().map(u64::from);
    let whole = u32::from(v4);
    let hex = format!("{whole:08x}");
    let padded = format!("{a:03}{b:03}{c:03}{d:03}");
    let mut left = numbers.to_vec();
    let mut take = |n: u64| match left.iter().position(|&x| x == n) {
        Some(i) => {
            left.swap_remove(i);
            true
        }
        None => false,
    };
    (take(d) && take(c) && (take(a) || take(b)))
        || tokens.iter().any(|t| {
            t.contains(&hex) || t.contains(&padded) || t.parse::<u32>().ok() == Some(whole)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(name: &str, ip: &str) -> Option<String> {
        host_name_domain(name, ip.parse().unwrap())
    }

    #[test]
    fn pools_share_their_registrable_domain() {
        for (name, ip, want) in [
            ("mail-sor-f41.google.com", "209.85.220.41", "google.com"),
            ("mail-yw1-f5.google.com", "74.125.0.5", "google.com"),
            (
                "a8-30.smtp-out.amazonses.com",
                "54.240.8.30",
                "amazonses.com",
            ),
            (
                "mail-db5eur01on2101.outbound.protection.outlook.com",
                "40.107.21.101",
                "outlook.com",
            ),
            (
                "mail180-5.suw21.mandrillapp.com",
                "198.2.180.5",
                "mandrillapp.com",
            ),
            // One number is one octet: 23 is not both the first and the last.
            (
                "a237-23.smtp-out.amazonses.com",
                "23.251.237.23",
                "amazonses.com",
            ),
            ("mail132-2.atl131.mcsv.net", "198.2.132.2", "mcsv.net"),
            ("MX1.Example.CO.UK.", "192.0.2.1", "example.co.uk"),
            ("example.org", "192.0.2.1", "example.org"),
            ("smtp.owner.github.io", "192.0.2.1", "owner.github.io"),
            ("mail.example.net", "2001:db8::25", "example.net"),
        ] {
            assert_eq!(domain(name, ip).as_deref(), Some(want), "{name}");
        }
    }

    #[test]
    fn unusable_and_generic_names_keep_the_network() {
        for (name, ip) in [
            ("unknown", "192.0.2.1"),
            ("", "192.0.2.1"),
            ("host-203-0-113-7.dsl.example.net", "203.0.113.7"),
            ("203-0-113-7.example.net", "203.0.113.7"),
            ("7.113.0.203.in-addr.example.net", "203.0.113.7"),
            ("ec2-54-1-2-3.compute-1.amazonaws.com", "54.1.2.3"),
            ("static.3.2.1.54.clients.your-server.de", "54.1.2.3"),
            ("cb007107.example.net", "203.0.113.7"),
            ("d51525354.access.telenet.be", "81.82.83.84"),
            ("host203000113007.example.net", "203.0.113.7"),
            ("203000113007.example.net", "203.0.113.7"),
            ("dynamic-pool.example.net", "192.0.2.1"),
            ("adsl123.example.net", "192.0.2.1"),
            ("c-24-0-0-1.hsd1.ca.comcast.net", "24.0.0.1"),
            ("cpe-1-2.example.net", "192.0.2.1"),
            ("ip-2001-db8--12-34.example.net", "2001:db8::12:34"),
            ("co.uk", "192.0.2.1"),
            ("mail.example.invalidtld", "192.0.2.1"),
            ("192.0.2.1", "192.0.2.1"),
            ("[192.0.2.1]", "192.0.2.1"),
            ("mail example.com", "192.0.2.1"),
            ("a@example.com", "192.0.2.1"),
            ("mail..example.com", "192.0.2.1"),
        ] {
            assert_eq!(domain(name, ip), None, "{name}");
        }
        let long = format!("{}.example.com", "a.".repeat(200));
        assert_eq!(domain(&long, "192.0.2.1"), None);
    }
}
