//! The in-process backend: one sharded map per limit (`dashmap`), shared by every worker
//! thread. A request locks only the shard of its own key, for a few arithmetic steps; no
//! lock is held across an await. Keys whose windows emptied are swept every
//! [`SWEEP_EVERY`] charges, so idle keys do not pile up.
//!
//! A limit's `Local` survives a hot reload that leaves its definition unchanged
//! (`Limits::build` takes it from the running tables).

use super::window::{Full, Taken, Window};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Charges between sweeps of emptied keys.
const SWEEP_EVERY: u64 = 4096;

/// A limit's counters in this process, by key (a limit is one kind: only one of the maps
/// is used).
#[derive(Debug, Default)]
pub struct Local {
    windows: DashMap<Box<str>, Window>,
    /// Requests in flight.
    in_flight: DashMap<Box<str>, u64>,
    charges: AtomicU64,
}

/// Milliseconds on the process's monotonic clock (tokio's, so paused-time tests drive
/// it).
pub fn now_ms() -> u64 {
    static BASE: OnceLock<tokio::time::Instant> = OnceLock::new();
    // A day before the first call: clocks that started a little earlier (each paused-time
    // test has its own) never read as before it.
    let base = *BASE.get_or_init(|| {
        let now = tokio::time::Instant::now();
        now.checked_sub(std::time::Duration::from_secs(86_400))
            .unwrap_or(now)
    });
    tokio::time::Instant::now()
        .saturating_duration_since(base)
        .as_millis() as u64
}

impl Local {
    /// Keys with state (the admin API shows it).
    pub fn keys(&self) -> usize {
        self.windows.len() + self.in_flight.len()
    }

    /// Charges `cost` to `key`'s window if it fits.
    pub fn take(&self, key: &str, window_ms: u64, limit: u64, cost: u64) -> Result<Taken, Full> {
        let now = now_ms();
        if self.charges.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(now, window_ms);
        }
        if let Some(mut w) = self.windows.get_mut(key) {
            return w.take(now, window_ms, limit, cost);
        }
        // Two first requests of a key may race to insert it: the entry decides.
        self.windows
            .entry(key.into())
            .or_insert_with(|| Window::new(now, window_ms))
            .take(now, window_ms, limit, cost)
    }

    /// Settles a charge made in sub-window `slot` by `delta`.
    pub fn settle(&self, key: &str, window_ms: u64, slot: u64, delta: i64) {
        if delta == 0 {
            return;
        }
        if let Some(mut w) = self.windows.get_mut(key) {
            w.settle(now_ms(), window_ms, slot, delta);
        } else if delta > 0 {
            // Swept meanwhile: the charge still counts.
            let _ = self.take(key, window_ms, u64::MAX, delta as u64);
        }
    }

    /// Admits one more request in flight for `key` if fewer than `limit` are; returns how
    /// many more may be.
    pub fn enter(&self, key: &str, limit: u64) -> Option<u64> {
        // A key already in flight needs no owned copy.
        let mut n = match self.in_flight.get_mut(key) {
            Some(n) => n,
            None => self.in_flight.entry(key.into()).or_insert(0),
        };
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(limit - *n)
    }

    /// One request in flight for `key` ended.
    pub fn leave(&self, key: &str) {
        self.in_flight.remove_if_mut(key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }

    /// What `key`'s window holds now (tests, the admin API).
    pub fn used(&self, key: &str, window_ms: u64) -> u64 {
        match self.windows.get_mut(key) {
            Some(mut w) => w.used(now_ms(), window_ms),
            None => self.in_flight.get(key).map_or(0, |n| *n),
        }
    }

    /// The sum over every key (the admin API).
    pub fn used_total(&self, window_ms: u64) -> u64 {
        let now = now_ms();
        let windows: u64 = self
            .windows
            .iter_mut()
            .map(|mut w| w.used(now, window_ms))
            .sum();
        windows + self.in_flight.iter().map(|n| *n).sum::<u64>()
    }

    fn sweep(&self, now: u64, window_ms: u64) {
        self.windows.retain(|_, w| w.used(now, window_ms) > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn windows_slide_on_the_clock() {
        let l = Local::default();
        assert!(l.take("a", 60_000, 10, 10).is_ok());
        assert!(l.take("a", 60_000, 10, 1).is_err());
        assert!(l.take("b", 60_000, 10, 10).is_ok(), "keys are separate");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(l.take("a", 60_000, 10, 1).is_err(), "still in the window");
        tokio::time::advance(Duration::from_secs(32)).await;
        let t = l.take("a", 60_000, 10, 4).unwrap();
        assert_eq!(t.remaining, 6);
        l.settle("a", 60_000, t.slot, -3);
        assert_eq!(l.used("a", 60_000), 1);
        tokio::time::advance(Duration::from_secs(120)).await;
        l.sweep(now_ms(), 60_000);
        assert_eq!(l.keys(), 0, "emptied keys are swept");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_released() {
        let l = Local::default();
        assert_eq!(l.enter("k", 2), Some(1));
        assert_eq!(l.enter("k", 2), Some(0));
        assert_eq!(l.enter("k", 2), None);
        l.leave("k");
        assert_eq!(l.enter("k", 2), Some(0));
        l.leave("k");
        l.leave("k");
        assert_eq!(l.keys(), 0);
    }
}
