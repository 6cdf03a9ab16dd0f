//! Keyed 128-bit hashes of triplets and client networks.
//!
//! SipHash-1-3 with a random 128-bit secret is a PRF: without the secret
//! nobody can predict a key, so nobody can craft a triplet that lands on
//! someone else's passed entry. The table stores only these keys, never an
//! address.

use std::fmt;
use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::normalize::ClientNet;

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
