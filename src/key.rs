//! Turning a request into its keys: the client network (or verified
//! domain), the normalised sender and recipient, their keyed 128-bit
//! hashes, and what the static lists say of it.
//!
//! SipHash-1-3 with a random 128-bit secret is a PRF: without the secret
//! nobody can predict a key, so nobody can craft a triplet that lands on
//! someone else's passed entry. The table stores only these keys, never an
//! address.

use std::fmt;
use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::config::Config;
use crate::lists::{Listed, Lists};
use crate::normalize::{self, ClientNet, InputError};

/// The engine's key secret. It must be kept with a snapshot (keys are
/// stable only under the same secret) and shared between MX hosts that share
/// state.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 16]);

impl Secret {
    /// A fresh random secret from the operating system.
    pub fn random() -> Secret {
        let mut bytes = [0u8; 16];
        // The OS random source failing at engine creation leaves no safe
        // way to go on: keys would be predictable.
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        Secret(bytes)
    }

    /// A secret from stored bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Secret {
        Secret(bytes)
    }

    /// The secret's bytes, for persistence.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0
    }

    /// A secret written as 32 hex digits (white space around them is
    /// ignored), as `openssl rand -hex 16` prints one.
    pub fn from_hex(text: &str) -> Result<Secret, String> {
        let text = text.trim();
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "a key secret is 32 hex digits (openssl rand -hex 16), not {} characters",
                text.chars().count()
            ));
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("checked hex digits");
        }
        Ok(Secret(bytes))
    }

    /// Reads a secret file holding 32 hex digits; errors name the file.
    pub fn from_file(path: &std::path::Path) -> Result<Secret, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Secret::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The keyed 128-bit hash of `bytes` (one call: key material is built
    /// in one buffer, so the hasher sees one write).
    pub(crate) fn hash(&self, bytes: &[u8]) -> u128 {
        let mut h = SipHasher13::new_with_key(&self.0);
        h.write(bytes);
        h.finish128().as_u128()
    }

    /// The key of a client network (auto-whitelist and blast records).
    pub(crate) fn net_key(&self, net: &ClientNet) -> u128 {
        let mut buf = vec![NET_TAG];
        net.encode_into(&mut buf);
        self.hash(&buf)
    }

    /// The key of a triplet, over already-normalised parts.
    #[cfg(test)]
    pub(crate) fn triplet_key(&self, net: &ClientNet, sender: &[u8], recipient: &[u8]) -> u128 {
        let mut buf = vec![TRIPLET_TAG];
        net.encode_into(&mut buf);
        for part in [sender, recipient] {
            push_part(&mut buf, |b| {
                b.extend_from_slice(part);
                Ok::<_, ()>(())
            })
            .unwrap();
        }
        self.hash(&buf)
    }
}

/// First byte of a network key's material.
pub(crate) const NET_TAG: u8 = b'N';
/// First byte of a triplet key's material: then the network, then the
/// sender and the recipient, each length-prefixed.
pub(crate) const TRIPLET_TAG: u8 = b'T';

/// Appends a part that `write` produces, prefixed with its length (so
/// `a@xb` + `@y` never meets `a@x` + `b@y`), and returns where it lies.
pub(crate) fn push_part<E>(
    buf: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<std::ops::Range<usize>, E> {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    write(buf)?;
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(at + 4..buf.len())
}

/// The length field that marks a part keyed by a hash of its raw bytes
/// (see [`push_part_or_hash`]): no normalised part is ever that long.
const HASHED_PART: u32 = u32::MAX;

/// Appends a triplet part: normalised by `write` when `raw` is at most
/// [`MAX_ADDRESS_LEN`](crate::MAX_ADDRESS_LEN) bytes, else as the keyed
/// hash of its exact bytes behind a length field no normalised part has.
/// Input the engine cannot normalise is thus still keyed (and greylisted),
/// in bounded space. Returns where a normalised part lies (`None` for a
/// hashed one).
pub(crate) fn push_part_or_hash<E>(
    buf: &mut Vec<u8>,
    secret: &Secret,
    raw: &[u8],
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Option<std::ops::Range<usize>>, E> {
    if raw.len() <= crate::normalize::MAX_ADDRESS_LEN {
        return push_part(buf, write).map(Some);
    }
    let mut h = SipHasher13::new_with_key(&secret.0);
    h.write(&[RAW_TAG]);
    h.write(raw);
    buf.extend_from_slice(&HASHED_PART.to_le_bytes());
    buf.extend_from_slice(&h.finish128().as_u128().to_le_bytes());
    Ok(None)
}

/// First byte hashed with an over-long part's raw bytes.
const RAW_TAG: u8 = b'R';

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The 48 bits of a network key a triplet entry keeps, so a triplet can be
/// traced to its client network (lost-mail report, release of a client)
/// without storing the network itself.
pub(crate) fn net_id(net_key: u128) -> u64 {
    (net_key as u64) & 0xFFFF_FFFF_FFFF
}

/// What the triplet table keeps of a triplet's identity: the low 64 bits
/// of its keyed hash (which also place it in the table) and the 48 bits of
/// its client network's key every entry keeps anyway. The hash's material
/// holds the network, so the pair tells triplets apart as well as the
/// 128-bit hash does in practice: two triplets of one network share an
/// entry only if 64 keyed bits collide (one chance in 2^64 per check for
/// each triplet of that network, and no way to aim at one without the
/// secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TripletId {
    pub(crate) key: u64,
    pub(crate) net_id: u64,
}

impl TripletId {
    /// The 128-bit value hosts know the triplet by
    /// ([`Engine::request_key`](crate::Engine::request_key),
    /// [`Event::triplet`](crate::Event::triplet)): the network's 48 bits
    /// above the hash's 64.
    pub(crate) fn public(self) -> u128 {
        (u128::from(self.net_id) << 64) | u128::from(self.key)
    }

    /// The identity of a triplet keyed `triplet_key` under `net_key`.
    pub(crate) fn of(triplet_key: u128, net_key: u128) -> TripletId {
        TripletId {
            key: triplet_key as u64,
            net_id: net_id(net_key),
        }
    }
}

thread_local! {
    /// Scratch space for key material, reused by every check on a thread.
    static KEY_MATERIAL: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
}

/// What the client part of a request's key is (see
/// [`Verdict::key`](crate::Verdict::key)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyKind {
    /// The client's network (its address masked to `ipv4_prefix` or
    /// `ipv6_prefix`): no usable verified name or domain, or a trap hit.
    #[default]
    Network,
    /// The registrable domain of the client's verified host name
    /// (`key_by_host_name`).
    HostDomain,
    /// A sender domain the MTA verified, by SPF or DKIM
    /// (`key_by_verified_domain`).
    VerifiedDomain,
}

impl KeyKind {
    /// The name logs use: `network`, `host-domain`, `verified-domain`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Network => "network",
            KeyKind::HostDomain => "host-domain",
            KeyKind::VerifiedDomain => "verified-domain",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request, parsed and keyed once.
pub(crate) struct Keys {
    /// The client part of the key: the network, or a domain (`kind`).
    pub(crate) net: ClientNet,
    pub(crate) kind: KeyKind,
    pub(crate) net_key: u128,
    pub(crate) triplet_key: u128,
    pub(crate) listed: Listed,
}

impl Keys {
    /// Whether a static whitelist matched the request.
    pub(crate) fn whitelisted(&self) -> bool {
        self.listed == Listed::Whitelisted
    }

    /// The triplet's identity in the table (see [`TripletId`]).
    pub(crate) fn triplet_id(&self) -> TripletId {
        TripletId::of(self.triplet_key, self.net_key)
    }
}

/// A check request: the triplet, plus what the MTA knows of the client.
///
/// Addresses and names are bytes, as SMTP carries them: an address that is
/// not UTF-8 (Latin-1 from an old client, or Postfix with
/// `smtputf8_enable=no`) or longer than [`MAX_ADDRESS_LEN`](crate::MAX_ADDRESS_LEN)
/// is keyed and greylisted like any other (see [`Engine::check_request`](crate::Engine::check_request)).
///
/// ```
/// let req = greylist::Request::new("209.85.220.41", "alice@gmail.com", "bob@example.net")
///     .client_name("mail-a1.google.com")
///     .verified_domain("gmail.com");
/// # let _ = req;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request<'a> {
    /// The connecting client's IP address.
    pub client_ip: &'a str,
    /// The envelope sender; empty or `<>` for the null sender.
    pub sender: &'a [u8],
    /// The envelope recipient.
    pub recipient: &'a [u8],
    /// The client's host name, as the MTA verified it (forward-confirmed
    /// reverse DNS; `unknown` or absent when it could not); matched against
    /// host-name whitelist entries and, with `key_by_host_name` on (the
    /// default), its registrable domain replaces the client network in the
    /// key unless the name is generic (see
    /// [`host_name_domain`](crate::host_name_domain)). Ignored when it is
    /// not UTF-8 or longer than 1 KiB.
    pub client_name: Option<&'a [u8]>,
    /// The HELO/EHLO name. It is unverified, so it never decides anything,
    /// and any value is accepted.
    pub helo: Option<&'a [u8]>,
    /// A sender domain the MTA verified (SPF pass or DKIM signature); with
    /// `key_by_verified_domain` on, it replaces the client network. Ignored
    /// (the network keys the request) when it is not a domain name.
    pub verified_domain: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// A request with just the triplet.
    pub fn new(
        client_ip: &'a str,
        sender: &'a (impl AsRef<[u8]> + ?Sized),
        recipient: &'a (impl AsRef<[u8]> + ?Sized),
    ) -> Self {
        Request {
            client_ip,
            sender: sender.as_ref(),
            recipient: recipient.as_ref(),
            ..Request::default()
        }
    }

    /// With the client's verified host name.
    pub fn client_name(self, name: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        Request {
            client_name: Some(name.as_ref()),
            ..self
        }
    }

    /// With the HELO/EHLO name.
    pub fn helo(self, helo: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        Request {
            helo: Some(helo.as_ref()),
            ..self
        }
    }

    /// With a sender domain the MTA verified.
    pub fn verified_domain(self, domain: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        Request {
            verified_domain: Some(domain.as_ref()),
            ..self
        }
    }
}

/// Parses and keys a request, and looks it up in the static lists.
///
/// Only a client IP that is not one, and an empty recipient, are
/// errors. Sender and recipient are normalised as bytes; one over
/// [`MAX_ADDRESS_LEN`](crate::MAX_ADDRESS_LEN) is keyed by a hash of its
/// exact bytes (and matches no list). An unusable optional attribute
/// (client name, verified domain) is ignored.
///
/// The client part is a verified sender domain, else the verified host
/// name's registrable domain, else the network (see [`KeyKind`]); a trap
/// recipient always keys by network, so a trap hit from one host of a pool
/// blocks that host's network, never the pool's domain.
pub(crate) fn keys(
    c: &Config,
    secret: &Secret,
    lists: &Lists,
    req: &Request<'_>,
) -> Result<Keys, InputError> {
    let ip = normalize::parse_ip(req.client_ip)?;
    fn text(v: Option<&[u8]>) -> Option<&str> {
        v.filter(|v| v.len() <= normalize::MAX_ADDRESS_LEN)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
    let client_name = text(req.client_name);
    let verified = || {
        text(req.verified_domain.filter(|_| c.key_by_verified_domain))
            .and_then(|d| ClientNet::domain(d).ok())
            .map(|d| (d, KeyKind::VerifiedDomain))
    };
    let host = || {
        client_name
            .filter(|_| c.key_by_host_name)
            .and_then(|name| crate::hostname::host_name_domain(name, ip))
            .and_then(|d| ClientNet::domain(&d).ok())
            .map(|d| (d, KeyKind::HostDomain))
    };
    let network = || {
        (
            ClientNet::from_ip(ip, c.ipv4_prefix, c.ipv6_prefix),
            KeyKind::Network,
        )
    };
    let (mut net, mut kind) = verified().or_else(host).unwrap_or_else(network);
    let delimiters = c.extension_delimiters.as_bytes();
    // Key material is built in a per-thread buffer: no allocation and
    // one hasher call per key.
    KEY_MATERIAL.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        buf.push(TRIPLET_TAG);
        let client_at = buf.len();
        net.encode_into(&mut buf);
        let mut client_end = buf.len();
        let sender = push_part_or_hash(&mut buf, secret, req.sender, |b| {
            normalize::sender_into(req.sender, delimiters, b);
            Ok(())
        })?;
        let rcpt = push_part_or_hash(&mut buf, secret, req.recipient, |b| {
            normalize::recipient_into(req.recipient, delimiters, b)
        })?;
        let listed = if lists.is_empty() {
            Listed::No
        } else {
            // An over-long address matches no list entry; one that no
            // list reads is not prepared.
            let (reads_sender, reads_recipient) = lists.reads_addresses();
            let sender = sender
                .filter(|_| reads_sender)
                .map_or_else(String::new, |_| normalize::lower_address(req.sender));
            let recipient = rcpt
                .filter(|_| reads_recipient)
                .map_or_else(String::new, |r| {
                    String::from_utf8_lossy(&buf[r]).into_owned()
                });
            lists.lookup(ip, client_name, &sender, &recipient)
        };
        if listed == Listed::Trap && kind != KeyKind::Network {
            (net, kind) = network();
            let mut client = Vec::new();
            net.encode_into(&mut client);
            let len = client.len();
            buf.splice(client_at..client_end, client);
            client_end = client_at + len;
        }
        let triplet_key = secret.hash(&buf);
        buf.truncate(client_end);
        buf[0] = NET_TAG;
        let net_key = secret.hash(&buf[..]);
        Ok(Keys {
            triplet_key,
            net_key,
            net,
            kind,
            listed,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_from_hex() {
        let s = Secret::from_hex(" 000102030405060708090a0B0c0d0e0f\n").unwrap();
        assert_eq!(s.to_bytes(), std::array::from_fn(|i| i as u8));
        for bad in [
            "",
            "0001",
            "zz0102030405060708090a0b0c0d0e0f",
            "é01020304050607080",
        ] {
            let err = Secret::from_hex(bad).unwrap_err();
            assert!(err.contains("32 hex digits"), "{err}");
        }
    }

    fn net(ip: &str) -> ClientNet {
        ClientNet::parse(ip, 24, 64).unwrap()
    }

    #[test]
    fn keys_depend_on_every_part_and_the_secret() {
        let s = Secret::from_bytes([7; 16]);
        let k = s.triplet_key(&net("192.0.2.1"), b"a@x", b"b@y");
        assert_eq!(k, s.triplet_key(&net("192.0.2.200"), b"a@x", b"b@y"));
        assert_ne!(k, s.triplet_key(&net("192.0.3.1"), b"a@x", b"b@y"));
        assert_ne!(k, s.triplet_key(&net("192.0.2.1"), b"a@xb", b"@y"));
        assert_ne!(k, s.triplet_key(&net("192.0.2.1"), b"a@x", b"b@z"));
        let other = Secret::from_bytes([8; 16]);
        assert_ne!(k, other.triplet_key(&net("192.0.2.1"), b"a@x", b"b@y"));
        assert_ne!(s.net_key(&net("192.0.2.1")), s.net_key(&net("192.0.3.1")));
        // A domain and an IP network never share a key.
        assert_ne!(
            s.net_key(&ClientNet::domain("example.com").unwrap()),
            s.net_key(&net("192.0.2.1"))
        );
    }

    #[test]
    fn random_secrets_differ_and_do_not_print() {
        let a = Secret::random();
        assert_ne!(a, Secret::random());
        assert_eq!(format!("{a:?}"), "Secret(..)");
        assert_eq!(Secret::from_bytes(a.to_bytes()), a);
    }
}
