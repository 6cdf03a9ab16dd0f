//! Who lost mail: the daemon remembers the sender and recipient of each
//! early retry (only a triplet with early retries can become lost mail)
//! by its triplet key, so that when the engine reports
//! the triplet lost (an event carrying the key) the log line and the
//! lost-mail report can name them. Only in memory, never in the snapshot
//! or Redis (where the engine keeps keyed hashes only), and bounded: the
//! oldest deferred triplets are forgotten first, and each network keeps a
//! few samples of its lost mail.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use serde::Serialize;

/// Triplets with early retries remembered (the oldest go first): at most
/// about 20,000 x 3 fields of [`FIELD`] bytes, some 10 MB.
pub const PENDING: usize = 20_000;
/// Networks with samples of lost mail, and samples each.
pub const NETWORKS: usize = 10_000;
pub const SAMPLES: usize = 3;
/// Longest field kept, in bytes (longer ones are cut at a character).
pub const FIELD: usize = 128;

/// One deferred request's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addresses {
    pub client: String,
    pub from: String,
    pub to: String,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<u128, Addresses>,
    /// Keys in the order they were first deferred (some may have left).
    order: VecDeque<u128>,
    samples: HashMap<String, VecDeque<Addresses>>,
    networks: VecDeque<String>,
}

#[derive(Default)]
pub struct Recall {
    inner: Mutex<Inner>,
}

/// An address as the log shows it: lossy UTF-8, cut to [`FIELD`] bytes.
fn text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut end = s.len().min(FIELD);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl Recall {
    /// A request was deferred as an early retry.
    pub fn deferred(&self, key: u128, client: &str, from: &[u8], to: &[u8]) {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        if inner.pending.contains_key(&key) {
            return;
        }
        while inner.pending.len() >= PENDING {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.pending.remove(&old);
                }
                None => break,
            }
        }
        inner.pending.insert(
            key,
            Addresses {
                client: text(client.as_bytes()),
                from: text(from),
                to: text(to),
            },
        );
        inner.order.push_back(key);
        // Keys that left (passed, lost) stay in the order until they reach
        // its front: rebuild it when they outnumber the rest.
        if inner.order.len() > 2 * PENDING {
            let pending = &inner.pending;
            inner.order.retain(|k| pending.contains_key(k));
        }
    }

    /// A triplet passed: it is not lost mail.
    pub fn passed(&self, key: u128) {
        self.inner.lock().pending.remove(&key);
    }

    /// A triplet was judged lost: its addresses, if remembered, which
    /// become one of its network's samples.
    pub fn lost(&self, key: u128, network: &str) -> Option<Addresses> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let found = inner.pending.remove(&key)?;
        if !inner.samples.contains_key(network) {
            while inner.samples.len() >= NETWORKS {
                match inner.networks.pop_front() {
                    Some(old) => {
                        inner.samples.remove(&old);
                    }
                    None => break,
                }
            }
            inner.networks.push_back(network.to_string());
        }
        let samples = inner.samples.entry(network.to_string()).or_default();
        if samples.len() >= SAMPLES {
            samples.pop_front();
        }
        samples.push_back(found.clone());
        Some(found)
    }

    /// The latest lost mail of a network this daemon can name.
    pub fn samples(&self, network: &str) -> Vec<Addresses> {
        self.inner
            .lock()
            .samples
            .get(network)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize, usize) {
        let g = self.inner.lock();
        (g.pending.len(), g.order.len(), g.samples.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_mail_is_named_and_sampled() {
        let r = Recall::default();
        r.deferred(1, "192.0.2.10", b"a@corp.example", b"u@y.net");
        r.deferred(1, "192.0.2.10", b"a@corp.example", b"u@y.net");
        r.deferred(2, "192.0.2.11", b"b@corp.example", b"v@y.net");
        r.passed(2);
        assert_eq!(r.lost(2, "192.0.2.0/24"), None, "it passed");
        let a = r.lost(1, "192.0.2.0/24").unwrap();
        assert_eq!(
            (a.from.as_str(), a.to.as_str()),
            ("a@corp.example", "u@y.net")
        );
        assert_eq!(r.lost(1, "192.0.2.0/24"), None, "judged once");
        assert_eq!(r.samples("192.0.2.0/24"), [a]);
        assert!(r.samples("198.51.100.0/24").is_empty());
    }

    #[test]
    fn memory_stays_bounded() {
        let r = Recall::default();
        let long = vec![b'x'; 10_000];
        for key in 0..(3 * PENDING as u128) {
            r.deferred(key, "192.0.2.1", &long, b"\xff\xfe@y.net");
            if key % 2 == 0 {
                r.passed(key);
            }
        }
        let (pending, order, _) = r.len();
        assert!(
            pending <= PENDING && order <= 2 * PENDING + 1,
            "{pending} {order}"
        );
        for key in (0..(3 * PENDING as u128)).rev().take(2 * NETWORKS) {
            let network = format!("net{key}");
            for _ in 0..5 {
                r.lost(key, &network);
            }
        }
        let (_, _, networks) = r.len();
        assert!(networks <= NETWORKS);
        let last = format!("net{}", 3 * PENDING - 1);
        let samples = r.samples(&last);
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].from.len(), FIELD);
        assert_eq!(samples[0].to, "\u{fffd}\u{fffd}@y.net");
    }
}
