//! Lock-sharded hash tables: a power-of-two number of `parking_lot`
//! mutexes, each around a `hashbrown` table or a [`ProbeTable`].
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

/// A table one shard holds.
pub(crate) trait Shard: Default {
    fn len(&self) -> usize;
}

impl<T> Shard for HashTable<T> {
    fn len(&self) -> usize {
        HashTable::len(self)
    }
}

impl<T: Probed> Shard for ProbeTable<T> {
    fn len(&self) -> usize {
        ProbeTable::len(self)
    }
}

pub(crate) struct Sharded<S> {
    shards: Box<[CachePadded<Mutex<S>>]>,
    shift: u32,
}

impl<S: Shard> Sharded<S> {
    /// `count` must be a power of two (the config rounds it up).
    pub(crate) fn new(count: usize) -> Self {
        debug_assert!(count.is_power_of_two());
        let shards = (0..count)
            .map(|_| CachePadded(Mutex::new(S::default())))
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
    pub(crate) fn lock(&self, index: usize) -> MutexGuard<'_, S> {
        self.shards[index].0.lock()
    }

    /// Total entries, locking one shard at a time.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }
}

/// An entry a [`ProbeTable`] can hold: `Copy`, with a vacant value whose
/// hash is 0 (real entries with hash 0 are kept aside).
pub(crate) trait Probed: Hashed + Copy {
    /// The value of an empty slot; its hash must be 0.
    const VACANT: Self;
}

/// An open-addressing hash table with linear probing, for entries that
/// carry their own 64-bit hash (a keyed hash: no one can aim entries at
/// one run of slots). The entry sits in the slot its hash picks, or in the
/// next free one after it, so a lookup reads the entries themselves, one
/// cache line or two, where a table with a separate control-byte array
/// reads that array first: one dependent cache miss less a lookup in a
/// table larger than the cache. A removal shifts the entries after it back
/// (no tombstones), so the table stays as a fresh one would be. At most
/// 4/5 full: a power-of-two number of slots, doubled when an insert would
/// pass that.
pub(crate) struct ProbeTable<T> {
    slots: Box<[T]>,
    len: usize,
    /// The entries whose hash is 0 (a slot with hash 0 is vacant), nearly
    /// always none.
    zero: Vec<T>,
}

impl<T: Probed> Default for ProbeTable<T> {
    fn default() -> Self {
        ProbeTable {
            slots: Box::new([]),
            len: 0,
            zero: Vec::new(),
        }
    }
}

impl<T: Probed> ProbeTable<T> {
    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slots `entries` entries need (0, or a power of two at least 8;
    /// the largest one for a count no table could hold).
    pub(crate) fn slots_for(entries: usize) -> usize {
        if entries == 0 {
            0
        } else {
            (entries.saturating_mul(5) / 4 + 1)
                .checked_next_power_of_two()
                .unwrap_or(1 << (usize::BITS - 1))
                .max(8)
        }
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The slot of hash `h` or of the first entry after it, and whether
    /// that slot holds an entry `eq` accepts.
    fn probe(&self, h: u64, mut eq: impl FnMut(&T) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut i = h as usize & mask;
        loop {
            let e = &self.slots[i];
            let eh = e.hash();
            if eh == 0 {
                return None;
            }
            if eh == h && eq(e) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// The entry of hash `h` that `eq` accepts.
    pub(crate) fn find(&self, h: u64, mut eq: impl FnMut(&T) -> bool) -> Option<&T> {
        if h == 0 {
            return self.zero.iter().find(|e| eq(e));
        }
        self.probe(h, eq).map(|i| &self.slots[i])
    }

    /// The entry of hash `h` that `eq` accepts, to change (not its hash).
    pub(crate) fn find_mut(&mut self, h: u64, mut eq: impl FnMut(&T) -> bool) -> Option<&mut T> {
        if h == 0 {
            return self.zero.iter_mut().find(|e| eq(e));
        }
        self.probe(h, eq).map(|i| &mut self.slots[i])
    }

    /// Adds an entry the table does not hold (the caller has looked).
    pub(crate) fn insert_unique(&mut self, entry: T) {
        if entry.hash() == 0 {
            self.zero.push(entry);
            self.len += 1;
            return;
        }
        if Self::slots_for(self.len + 1) > self.slots.len() {
            self.resize(Self::slots_for(self.len + 1));
        }
        self.place(entry);
        self.len += 1;
    }

    /// Puts an entry in its slot or the first free one after it (there is
    /// one: the table is never full).
    fn place(&mut self, entry: T) {
        let mask = self.mask();
        let mut i = entry.hash() as usize & mask;
        while self.slots[i].hash() != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = entry;
    }

    /// Moves every entry into `slots` new slots.
    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![T::VACANT; slots].into_boxed_slice());
        for e in old.iter().filter(|e| e.hash() != 0) {
            self.place(*e);
        }
    }

    /// Makes room for `additional` more entries.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let want = Self::slots_for(self.len + additional);
        if want > self.slots.len() {
            self.resize(want);
        }
    }

    /// Removes the entry of hash `h` that `eq` accepts.
    pub(crate) fn remove(&mut self, h: u64, mut eq: impl FnMut(&T) -> bool) -> Option<T> {
        if h == 0 {
            let at = self.zero.iter().position(&mut eq)?;
            self.len -= 1;
            return Some(self.zero.swap_remove(at));
        }
        let at = self.probe(h, eq)?;
        Some(self.remove_at(at))
    }

    /// Removes the entry in slot `hole`, and shifts back each entry after
    /// it that may move into the hole: one whose own slot is not between
    /// the hole and where it sits. Entries before the hole never move.
    fn remove_at(&mut self, mut hole: usize) -> T {
        let removed = std::mem::replace(&mut self.slots[hole], T::VACANT);
        self.len -= 1;
        let mask = self.mask();
        let mut i = (hole + 1) & mask;
        loop {
            let e = self.slots[i];
            if e.hash() == 0 {
                return removed;
            }
            // Distances round the table: from its own slot, from the hole.
            let home = e.hash() as usize & mask;
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                self.slots[hole] = e;
                self.slots[i] = T::VACANT;
                hole = i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Keeps the entries `keep` accepts (it may change them, not their
    /// hashes), each seen once. The walk starts after a vacant slot, so an
    /// entry a removal shifts back comes from further on and is seen where
    /// it lands.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut T) -> bool) {
        let aside = self.zero.len();
        self.zero.retain_mut(&mut keep);
        self.len -= aside - self.zero.len();
        let Some(start) = self.slots.iter().position(|e| e.hash() == 0) else {
            return;
        };
        let mask = self.mask();
        let mut i = (start + 1) & mask;
        while i != start {
            if self.slots[i].hash() != 0 && !keep(&mut self.slots[i]) {
                self.remove_at(i);
            } else {
                i = (i + 1) & mask;
            }
        }
    }

    /// Every entry.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots
            .iter()
            .filter(|e| e.hash() != 0)
            .chain(&self.zero)
    }

    /// Every entry, to change (not their hashes).
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots
            .iter_mut()
            .filter(|e| e.hash() != 0)
            .chain(&mut self.zero)
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
        let t: Sharded<HashTable<E>> = Sharded::new(16);
        assert_eq!(t.shard_count(), 16);
        // Bits 53..57 choose among 16 shards.
        assert_eq!(t.index(0), 0);
        assert_eq!(t.index(1 << 53), 1);
        assert_eq!(t.index(0xF << 53), 15);
        // The top 7 bits (hashbrown's tag) do not.
        assert_eq!(t.index(0x7F << 57), 0);
        let one: Sharded<HashTable<E>> = Sharded::new(1);
        assert_eq!(one.index(u64::MAX), 0);
    }

    #[test]
    fn len_sums_the_shards() {
        let t: Sharded<HashTable<E>> = Sharded::new(4);
        for h in [0u64, 1 << 62, 2 << 62, 3 << 62, 5] {
            let i = t.index(h);
            t.lock(i).insert_unique(h, E(h), hasher);
        }
        assert_eq!(t.len(), 5);
    }

    /// A key (its hash) and a tag: two entries may share a hash.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct P(u64, u32, u32);

    impl Hashed for P {
        fn hash(&self) -> u64 {
            self.0
        }
    }

    impl Probed for P {
        const VACANT: P = P(0, 0, 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64, u32),
        Bump(u64, u32),
        RetainOdd,
        Reserve(u16),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        // Few distinct hashes, many sharing their low bits (one run of
        // slots), some 0, some with the top bit: runs wrap round the end.
        let hash = prop_oneof![
            Just(0u64),
            (0u64..4).prop_map(|x| x << 32 | 5),
            (1u64..40),
            (0u64..8).prop_map(|x| u64::MAX - x),
        ];
        prop_oneof![
            6 => (hash.clone(), 0u32..3).prop_map(|(h, t)| Op::Insert(h, t)),
            3 => (hash.clone(), 0u32..3).prop_map(|(h, t)| Op::Remove(h, t)),
            2 => (hash, 0u32..3).prop_map(|(h, t)| Op::Bump(h, t)),
            1 => Just(Op::RetainOdd),
            1 => (0u16..50).prop_map(Op::Reserve),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Every operation agrees with a map, and every entry can be found.
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec(op(), 0..300)) {
            let mut t = ProbeTable::<P>::default();
            let mut m: std::collections::HashMap<(u64, u32), u32> = std::collections::HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(h, tag) => {
                        if t.find(h, |e| e.1 == tag).is_none() {
                            t.insert_unique(P(h, tag, 0));
                            m.insert((h, tag), 0);
                        }
                    }
                    Op::Remove(h, tag) => {
                        let got = t.remove(h, |e| e.1 == tag).map(|e| e.2);
                        proptest::prop_assert_eq!(got, m.remove(&(h, tag)));
                    }
                    Op::Bump(h, tag) => {
                        if let Some(e) = t.find_mut(h, |e| e.1 == tag) {
                            e.2 += 1;
                        }
                        if let Some(v) = m.get_mut(&(h, tag)) {
                            *v += 1;
                        }
                    }
                    Op::RetainOdd => {
                        let mut seen = Vec::new();
                        t.retain(|e| {
                            seen.push((e.0, e.1));
                            e.2 += 1;
                            e.2 % 2 == 1
                        });
                        let before = seen.len();
                        seen.sort();
                        seen.dedup();
                        proptest::prop_assert_eq!(seen.len(), before, "an entry seen twice");
                        proptest::prop_assert_eq!(before, m.len());
                        m.retain(|_, v| {
                            *v += 1;
                            *v % 2 == 1
                        });
                    }
                    Op::Reserve(n) => t.reserve(usize::from(n)),
                }
                proptest::prop_assert_eq!(t.len(), m.len());
                proptest::prop_assert!((t.len() - t.zero.len()) * 5 <= t.slots.len() * 4);
                for (&(h, tag), &v) in &m {
                    proptest::prop_assert_eq!(t.find(h, |e| e.1 == tag), Some(&P(h, tag, v)));
                }
                let mut all: Vec<_> = t.iter().map(|e| ((e.0, e.1), e.2)).collect();
                all.sort();
                let mut want: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
                want.sort();
                proptest::prop_assert_eq!(all, want);
            }
        }
    }

    #[test]
    fn grows_by_doubling_and_keeps_every_entry() {
        let mut t = ProbeTable::<P>::default();
        for i in 1..=10_000u64 {
            t.insert_unique(P(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), 0, i as u32));
        }
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.slots.len(), 16_384);
        for i in 1..=10_000u64 {
            let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(t.find(h, |_| true).map(|e| e.2), Some(i as u32));
        }
        for e in t.iter_mut() {
            e.2 = 0;
        }
        assert!(t.iter().all(|e| e.2 == 0));
    }
}
