//! Non-cryptographic hashing and randomness, shared by the balancers, the config (its
//! hash) and the background tasks' jitter: a stable hash of bytes, and a fast per-thread
//! pseudo-random generator seeded from the standard library's random hasher keys.

/// FNV-1a followed by a splitmix64 finalizer: stable across runs and platforms.
pub fn hash_bytes(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A small, fast per-thread pseudo-random generator (xorshift64*), seeded from the
/// standard library's random hasher keys. Not for cryptography.
pub(crate) fn fast_rand() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(fast_rand_seed() | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A random 64-bit seed from the standard library's per-process hasher keys.
pub(crate) fn fast_rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9E37_79B9_7F4A_7C15);
    h.finish()
}
