//! Lock-free sliding-window counters and the upstream's clock.
//!
//! The clock reads `tokio::time::Instant`, so unit tests run on paused, hand-advanced
//! time; times are kept as nanoseconds since the clock's base so they fit in atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Nanoseconds since a base instant, from tokio's (pausable) clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            base: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> u64 {
        self.at(tokio::time::Instant::now())
    }

    /// `t` on this clock: for a caller that read the time already (each read of the
    /// clock costs ~25 ns here, a call reads it once per try end).
    pub fn at(&self, t: tokio::time::Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

pub fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

const BUCKETS: usize = 10;
const SEQ_BITS: u32 = 16;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// Two counts (`total`, `marked`) over the last `window`, in ten buckets. Each bucket is
/// one `AtomicU64` holding its sequence number and both counts, so a bucket is reset and
/// incremented in one compare-and-swap; counts saturate at 2^24 per bucket.
#[derive(Debug)]
pub struct Window {
    buckets: [AtomicU64; BUCKETS],
    bucket_ns: u64,
}

fn pack(seq: u64, total: u64, marked: u64) -> u64 {
    ((seq & SEQ_MASK) << (2 * COUNT_BITS))
        | (total.min(COUNT_MASK) << COUNT_BITS)
        | marked.min(COUNT_MASK)
}

fn unpack(v: u64) -> (u64, u64, u64) {
    (
        v >> (2 * COUNT_BITS),
        (v >> COUNT_BITS) & COUNT_MASK,
        v & COUNT_MASK,
    )
}

impl Window {
    pub fn new(window: Duration) -> Self {
        Window {
            buckets: Default::default(),
            bucket_ns: (nanos(window) / BUCKETS as u64).max(1),
        }
    }

    /// Counts one event at `now`; `marked` also counts it in the second tally.
    pub fn add(&self, now: u64, marked: bool) {
        let seq = now / self.bucket_ns + 1;
        let slot = &self.buckets[(seq % BUCKETS as u64) as usize];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (s, t, m) = unpack(cur);
            let next = if s == seq & SEQ_MASK {
                pack(seq, t + 1, m + marked as u64)
            } else {
                pack(seq, 1, marked as u64)
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(v) => cur = v,
            }
        }
    }

    /// `(total, marked)` over the window ending at `now`.
    pub fn sum(&self, now: u64) -> (u64, u64) {
        let seq = now / self.bucket_ns + 1;
        let (mut total, mut marked) = (0, 0);
        for b in &self.buckets {
            let (s, t, m) = unpack(b.load(Ordering::Relaxed));
            let age = (seq & SEQ_MASK).wrapping_sub(s) & SEQ_MASK;
            if s != 0 && age < BUCKETS as u64 {
                total += t;
                marked += m;
            }
        }
        (total, marked)
    }

    pub fn clear(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn counts_inside_the_window_only() {
        let w = Window::new(Duration::from_secs(10));
        for i in 0..10 {
            w.add(i * S, i % 2 == 0);
        }
        assert_eq!(w.sum(9 * S), (10, 5));
        // One second later the first bucket has left the window.
        assert_eq!(w.sum(10 * S), (9, 4));
        assert_eq!(w.sum(18 * S), (1, 0));
        assert_eq!(w.sum(19 * S), (0, 0));
    }

    #[test]
    fn a_reused_bucket_starts_from_zero() {
        let w = Window::new(Duration::from_secs(10));
        w.add(0, true);
        w.add(0, true);
        w.add(10 * S, false);
        assert_eq!(w.sum(10 * S), (1, 0));
    }

    #[test]
    fn clear_empties() {
        let w = Window::new(Duration::from_secs(1));
        w.add(5, true);
        w.clear();
        assert_eq!(w.sum(5), (0, 0));
    }
}
