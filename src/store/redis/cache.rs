//! Triplets this host saw pass, so that a passed triplet's next checks
//! cost no round trip (see `pass_cache_entries` and `pass_cache_ttl`).

use hashbrown::HashTable;

use crate::table::{hasher, Hashed, Sharded};

/// Triplets this host saw pass, and when; bounded in entries and in time.
pub(crate) struct PassCache {
    table: Sharded<HashTable<CachedPass>>,
    cap_per_shard: usize,
    ttl: u32,
}

#[derive(Clone, Copy)]
struct CachedPass {
    key: u128,
    at: u32,
}

impl Hashed for CachedPass {
    fn hash(&self) -> u64 {
        self.key as u64
    }
}

/// Shards of the pass cache: enough that callers rarely meet on a lock.
const CACHE_SHARDS: usize = 64;

impl PassCache {
    pub(crate) fn new(entries: usize, ttl: u32) -> PassCache {
        let shards = if entries == 0 || ttl == 0 {
            1
        } else {
            CACHE_SHARDS.min(entries.next_power_of_two())
        };
        PassCache {
            table: Sharded::new(shards),
            cap_per_shard: if ttl == 0 { 0 } else { entries / shards },
            ttl,
        }
    }

    fn fresh(&self, at: u32, now: u32) -> bool {
        (0..=i64::from(self.ttl)).contains(&(i64::from(now) - i64::from(at)))
    }

    pub(crate) fn contains(&self, key: u128, now: u32) -> bool {
        if self.cap_per_shard == 0 {
            return false;
        }
        let hash = key as u64;
        let table = self.table.lock(self.table.index(hash));
        table
            .find(hash, |e| e.key == key)
            .is_some_and(|e| self.fresh(e.at, now))
    }

    pub(crate) fn insert(&self, key: u128, now: u32) {
        if self.cap_per_shard == 0 {
            return;
        }
        let hash = key as u64;
        let mut table = self.table.lock(self.table.index(hash));
        if let Some(e) = table.find_mut(hash, |e| e.key == key) {
            e.at = now;
            return;
        }
        if table.len() >= self.cap_per_shard {
            table.retain(|e| self.fresh(e.at, now));
            if table.len() >= self.cap_per_shard {
                // Still full of fresh passes: start this shard over rather
                // than scan for the oldest on every insert.
                table.clear();
            }
        }
        table.insert_unique(hash, CachedPass { key, at: now }, hasher);
    }

    pub(crate) fn remove(&self, key: u128) {
        let hash = key as u64;
        let mut table = self.table.lock(self.table.index(hash));
        if let Ok(entry) = table.find_entry(hash, |e| e.key == key) {
            entry.remove();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    const T0: u32 = 1_700_000_000;

    #[test]
    fn cache_answers_within_its_lifetime_only() {
        let cache = PassCache::new(1000, 300);
        cache.insert(7, T0);
        assert!(cache.contains(7, T0));
        assert!(cache.contains(7, T0 + 300));
        assert!(!cache.contains(7, T0 + 301));
        assert!(!cache.contains(7, T0 - 1), "a clock that went back misses");
        assert!(!cache.contains(8, T0));
    }

    #[test]
    fn cache_stays_within_its_size() {
        let cache = PassCache::new(1000, 300);
        for key in 0..100_000u128 {
            cache.insert(
                key.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
                T0,
            );
            assert!(cache.len() <= 1000);
        }
        let off = PassCache::new(0, 300);
        off.insert(1, T0);
        assert!(!off.contains(1, T0));
        let off = PassCache::new(1000, 0);
        off.insert(1, T0);
        assert!(!off.contains(1, T0));
    }
}
