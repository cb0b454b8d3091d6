//! The sliding window that `requests` and `tokens` limits count in: the window is cut
//! into [`SLOTS`] sub-windows and a charge stays counted from the moment it is made until
//! the end of its sub-window plus one whole window — never less than a window, at most a
//! sub-window (1/30 of the window) more. So no interval of one window's length ever
//! admits more than the limit (a fixed window admits up to twice that across its
//! boundary), and what is refunded leaves the sub-window it was charged to.
//!
//! The same arithmetic runs in Redis (`limits/redis.rs`), on Redis's clock.

/// Sub-windows per window.
pub const SLOTS: u64 = 30;
/// The ring holds the current sub-window and the `SLOTS` before it.
const RING: usize = SLOTS as usize + 1;

/// The sub-window `now_ms` falls in (absolute: counted from the clock's zero).
pub fn slot(now_ms: u64, window_ms: u64) -> u64 {
    match now_ms.checked_mul(SLOTS) {
        Some(n) => n / window_ms,
        None => (now_ms as u128 * SLOTS as u128 / window_ms as u128) as u64,
    }
}

/// When sub-window `k` begins.
fn slot_start(k: u64, window_ms: u64) -> u64 {
    match k.checked_mul(window_ms) {
        Some(n) => n.div_ceil(SLOTS),
        None => (k as u128 * window_ms as u128).div_ceil(SLOTS as u128) as u64,
    }
}

/// When a charge made in sub-window `k` stops being counted.
fn expiry(k: u64, window_ms: u64) -> u64 {
    slot_start(k + SLOTS + 1, window_ms)
}

/// One key's counts.
#[derive(Debug)]
pub struct Window {
    /// The newest sub-window the ring has advanced to.
    head: u64,
    counts: [u64; RING],
    total: u64,
}

/// A charge that fits: where it was made, what is left, and when the window is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    pub slot: u64,
    pub remaining: u64,
    pub reset_ms: u64,
}

/// A charge that does not fit: the soonest it could (ms), or `None` when it never can
/// (it is more than the limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    pub retry_ms: Option<u64>,
}

impl Window {
    pub fn new(now_ms: u64, window_ms: u64) -> Self {
        Window {
            head: slot(now_ms, window_ms),
            counts: [0; RING],
            total: 0,
        }
    }

    /// Moves the ring to `now_ms`: sub-windows that left the window are emptied.
    fn advance(&mut self, now_ms: u64, window_ms: u64) {
        let now = slot(now_ms, window_ms);
        if now <= self.head {
            return;
        }
        let steps = (now - self.head).min(RING as u64);
        for i in 1..=steps {
            let c = &mut self.counts[((self.head + i) % RING as u64) as usize];
            self.total -= *c;
            *c = 0;
        }
        self.head = now;
    }

    /// What the window holds at `now_ms`.
    pub fn used(&mut self, now_ms: u64, window_ms: u64) -> u64 {
        self.advance(now_ms, window_ms);
        self.total
    }

    /// The sub-windows still counted, oldest first, with their counts.
    fn live(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (self.head.saturating_sub(SLOTS)..=self.head)
            .map(|k| (k, self.counts[(k % RING as u64) as usize]))
    }

    /// Charges `cost` if the window holds at most `limit - cost`.
    pub fn take(
        &mut self,
        now_ms: u64,
        window_ms: u64,
        limit: u64,
        cost: u64,
    ) -> Result<Taken, Full> {
        self.advance(now_ms, window_ms);
        if self.total + cost > limit {
            let retry_ms = (cost <= limit).then(|| {
                let mut freed = 0;
                self.live()
                    .find_map(|(k, c)| {
                        freed += c;
                        (self.total - freed + cost <= limit)
                            .then(|| expiry(k, window_ms).saturating_sub(now_ms))
                    })
                    .unwrap_or(window_ms)
            });
            return Err(Full { retry_ms });
        }
        self.counts[(self.head % RING as u64) as usize] += cost;
        self.total += cost;
        // The newest sub-window with a count: the current one, unless nothing was taken.
        let newest = if cost > 0 {
            Some((self.head, cost))
        } else {
            self.live().filter(|(_, c)| *c > 0).last()
        };
        Ok(Taken {
            slot: self.head,
            remaining: limit - self.total,
            reset_ms: newest.map_or(0, |(k, _)| expiry(k, window_ms).saturating_sub(now_ms)),
        })
    }

    /// Settles a charge made in sub-window `slot`: `delta` < 0 refunds it from there (as
    /// far as it is still counted), `delta` > 0 charges the current sub-window.
    pub fn settle(&mut self, now_ms: u64, window_ms: u64, slot: u64, delta: i64) {
        self.advance(now_ms, window_ms);
        if delta > 0 {
            self.counts[(self.head % RING as u64) as usize] += delta as u64;
            self.total += delta as u64;
        } else if delta < 0 && slot + SLOTS >= self.head && slot <= self.head {
            let c = &mut self.counts[(slot % RING as u64) as usize];
            let back = delta.unsigned_abs().min(*c);
            *c -= back;
            self.total -= back;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000;

    #[test]
    fn admits_up_to_the_limit_and_says_when_it_fits_again() {
        let mut w = Window::new(0, W);
        assert_eq!(w.take(0, W, 100, 60).unwrap().remaining, 40);
        let t = w.take(10_000, W, 100, 40).unwrap();
        // Sub-window 5 (10–12 s) empties at 72 s.
        assert_eq!((t.remaining, t.reset_ms), (0, 72_000 - 10_000));
        let full = w.take(20_000, W, 100, 1).unwrap_err();
        // The first charge (sub-window 0, 0–2 s) is counted until 62 s.
        assert_eq!(full.retry_ms, Some(62_000 - 20_000));
        assert_eq!(w.take(0, W, 100, 101).unwrap_err().retry_ms, None);
        // Still counted just before; gone at the expiry.
        assert!(w.take(61_999, W, 100, 1).is_err());
        assert_eq!(w.take(62_000, W, 100, 60).unwrap().remaining, 0);
    }

    #[test]
    fn no_window_length_interval_admits_more_than_the_limit() {
        // A fixed window would admit 100 at 59.9 s and 100 more at 60.1 s.
        let mut w = Window::new(0, W);
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        let mut t = 0;
        while t < 5 * W {
            if w.take(t, W, 100, 7).is_ok() {
                admitted.push((t, 7));
            }
            t += 137;
        }
        for &(start, _) in &admitted {
            let within: u64 = admitted
                .iter()
                .filter(|(at, _)| *at >= start && *at < start + W)
                .map(|(_, c)| c)
                .sum();
            assert!(
                within <= 100,
                "{within} admitted in the window from {start}"
            );
        }
        // …and it does not starve: over 5 windows it admits about 5 limits' worth.
        let total: u64 = admitted.iter().map(|(_, c)| c).sum();
        assert!(total >= 4 * 98, "{total}");
    }

    #[test]
    fn settle_refunds_where_charged_and_charges_now() {
        let mut w = Window::new(0, W);
        let t = w.take(0, W, 100, 80).unwrap();
        w.settle(30_000, W, t.slot, -50);
        assert_eq!(w.used(30_000, W), 30);
        w.settle(30_000, W, t.slot, 25);
        assert_eq!(w.used(30_000, W), 55);
        // At 62 s the first sub-window's 30 leave; the 25 charged at 30 s stay.
        assert_eq!(w.used(62_000, W), 25);
        // A refund for a charge no longer counted changes nothing.
        w.settle(62_000, W, t.slot, -10);
        assert_eq!(w.used(62_000, W), 25);
        // A refund never takes more than its sub-window holds.
        let t2 = w.take(63_000, W, 100, 5).unwrap();
        w.settle(63_000, W, t2.slot, -1_000);
        assert_eq!(w.used(63_000, W), 25);
        assert_eq!(w.used(10 * W, W), 0);
    }
}
