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

    fn hasher(&self, domain: u8) -> SipHasher13 {
        let mut h = SipHasher13::new_with_key(&self.0);
        h.write_u8(domain);
        h
    }

    /// The key of a client network (auto-whitelist and blast records).
    pub(crate) fn net_key(&self, net: &ClientNet) -> u128 {
        let mut h = self.hasher(b'N');
        net.hash_into(&mut h);
        h.finish128().as_u128()
    }

    /// The key of a triplet, over already-normalised parts.
    pub(crate) fn triplet_key(&self, net: &ClientNet, sender: &[u8], recipient: &[u8]) -> u128 {
        let mut h = self.hasher(b'T');
        net.hash_into(&mut h);
        for part in [sender, recipient] {
            h.write(&(part.len() as u32).to_le_bytes());
            h.write(part);
        }
        h.finish128().as_u128()
    }
}

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
