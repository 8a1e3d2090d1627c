//! Hash maps keyed by 64-bit digests computed ahead of time.
//!
//! A map whose keys carry (or are) a seeded digest never hashes strings again when it
//! grows: rehashing reads the digest instead of following pointers to the strings,
//! which matters for maps of millions of holds and records.

use std::hash::{BuildHasherDefault, Hasher};

/// A [`Hasher`] for keys that feed it a uniform 64-bit digest with `write_u64`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by digest keys; folds the bytes in so any other key still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Builds [`Prehashed`] hashers.
pub(crate) type BuildPrehashed = BuildHasherDefault<Prehashed>;

/// The seeded hash that makes digests (random per process, so clients cannot aim
/// collisions).
pub(crate) type Seed = foldhash::fast::RandomState;
