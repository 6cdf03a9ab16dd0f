//! A lock-sharded hash table: a power-of-two number of `parking_lot`
//! mutexes, each around a `hashbrown` table.
//!
//! Keys are already keyed-hash outputs, so they are not hashed again: the
//! caller's 64-bit hash picks the shard from the bits just below the top
//! seven (which hashbrown keeps for its SIMD tag), and the same hash then
//! picks the bucket inside the shard, as dashmap does.

use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};

/// Keeps each shard's lock on its own cache line, so two threads working
/// on neighbouring shards do not bounce one line between cores. (One
/// 64-byte line, not two: with a thousand shards, the locks of a large
/// table should stay in cache.)
#[repr(align(64))]
pub(crate) struct CachePadded<T>(pub(crate) T);

/// An entry that knows its own 64-bit hash.
pub(crate) trait Hashed {
    fn hash(&self) -> u64;
}

pub(crate) struct Sharded<T> {
    shards: Box<[CachePadded<Mutex<HashTable<T>>>]>,
    shift: u32,
}

impl<T: Hashed> Sharded<T> {
    /// `count` must be a power of two (the config rounds it up).
    pub(crate) fn new(count: usize) -> Self {
        debug_assert!(count.is_power_of_two());
        let shards = (0..count)
            .map(|_| CachePadded(Mutex::new(HashTable::new())))
            .collect();
        Sharded {
            shards,
            shift: 64 - count.trailing_zeros(),
        }
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard a hash lives in.
    pub(crate) fn index(&self, hash: u64) -> usize {
        if self.shift == 64 {
            0
        } else {
            ((hash << 7) >> self.shift) as usize
        }
    }

    /// Locks one shard. The guard must not be held while calling out.
    pub(crate) fn lock(&self, index: usize) -> MutexGuard<'_, HashTable<T>> {
        self.shards[index].0.lock()
    }

    /// Total entries, locking one shard at a time.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }
}

/// Counter stripes: more than the threads that usually check at once.
pub(crate) const STRIPES: usize = 64;

static NEXT_STRIPE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe, handed out round robin.
    static THREAD_STRIPE: usize = NEXT_STRIPE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// This thread's stripe (of [`STRIPES`]): each thread keeps to one, so the
/// counters it adds to stay in its core's cache.
pub(crate) fn thread_stripe() -> usize {
    THREAD_STRIPE.with(|s| *s) % STRIPES
}

/// Rehash callback for hashbrown when a shard grows.
pub(crate) fn hasher<T: Hashed>(entry: &T) -> u64 {
    entry.hash()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct E(u64);
    impl Hashed for E {
        fn hash(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn shard_index_uses_bits_below_the_tag() {
        let t: Sharded<E> = Sharded::new(16);
        assert_eq!(t.shard_count(), 16);
        // Bits 53..57 choose among 16 shards.
        assert_eq!(t.index(0), 0);
        assert_eq!(t.index(1 << 53), 1);
        assert_eq!(t.index(0xF << 53), 15);
        // The top 7 bits (hashbrown's tag) do not.
        assert_eq!(t.index(0x7F << 57), 0);
        let one: Sharded<E> = Sharded::new(1);
        assert_eq!(one.index(u64::MAX), 0);
    }

    #[test]
    fn len_sums_the_shards() {
        let t: Sharded<E> = Sharded::new(4);
        for h in [0u64, 1 << 62, 2 << 62, 3 << 62, 5] {
            let i = t.index(h);
            t.lock(i).insert_unique(h, E(h), hasher);
        }
        assert_eq!(t.len(), 5);
    }
}
