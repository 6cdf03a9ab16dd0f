//! A small, fast, deterministic generator (xorshift64) for tests and
//! benches, so a failure replays with the same numbers.

#![allow(dead_code)]

/// xorshift64; the seed must not be 0.
pub struct Rng(pub u64);

impl Rng {
    /// The next number (the state itself).
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
