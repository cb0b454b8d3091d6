//! The retry budget (as linkerd and Finagle do it): over the last `budget_window`,
//! retries may be at most `budget_percent` of the requests, plus a floor of
//! `budget_min_per_second` so a quiet upstream can still retry. In an outage where every
//! request fails, retries therefore add at most that share of load instead of
//! multiplying it by `attempts`.

use super::window::Window;
use crate::config::resilience::RetryConfig;
use std::time::Duration;

#[derive(Debug)]
pub struct RetryBudget {
    /// Requests are counted as unmarked events, retries as marked ones.
    window: Window,
    percent: f64,
    floor: f64,
    /// `portcullis_retries_total` and `portcullis_retry_budget_exhausted_total` of the
    /// upstream, resolved once.
    granted: prometheus::IntCounter,
    denied: prometheus::IntCounter,
}

impl RetryBudget {
    pub fn new(cfg: &RetryConfig, upstream: &str) -> Self {
        let m = crate::metrics::get();
        RetryBudget {
            window: Window::new(cfg.budget_window),
            percent: cfg.budget_percent,
            floor: cfg.budget_min_per_second as f64 * cfg.budget_window.as_secs_f64(),
            granted: m.retries.with_label_values(&[upstream]),
            denied: m.retries_denied.with_label_values(&[upstream]),
        }
    }

    /// Counts a request (its first try).
    pub fn deposit(&self, now: u64) {
        self.window.add(now, false);
    }

    /// Takes one retry from the budget if there is room.
    pub fn withdraw(&self, now: u64) -> bool {
        let (events, retries) = self.window.sum(now);
        let requests = events - retries;
        let allowed = self.floor.max(requests as f64 * self.percent / 100.0);
        if (retries as f64) < allowed {
            self.window.add(now, true);
            self.granted.inc();
            true
        } else {
            self.denied.inc();
            false
        }
    }
}

/// The pause before retry number `n` (1-based): `backoff × 2^(n-1)` capped at
/// `max_backoff`, with full jitter (a uniform draw below that), so retries of many
/// clients do not arrive together.
pub fn backoff(cfg: &RetryConfig, n: u32) -> Duration {
    if cfg.backoff.is_zero() {
        return Duration::ZERO;
    }
    let ceiling = cfg
        .backoff
        .saturating_mul(1 << (n.saturating_sub(1)).min(20))
        .min(cfg.max_backoff);
    let r = (crate::hash::fast_rand() >> 11) as f64 / (1u64 << 53) as f64;
    ceiling.mul_f64(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::window::Clock;

    /// For tests: a budget and its clock.
    fn budget(percent: f64, floor_per_sec: u32) -> (RetryBudget, Clock) {
        let cfg = RetryConfig {
            budget_percent: percent,
            budget_min_per_second: floor_per_sec,
            budget_window: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        (RetryBudget::new(&cfg, "retry-unit-test"), Clock::new())
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_at_the_percentage() {
        let (b, clock) = budget(20.0, 0);
        for _ in 0..100 {
            b.deposit(clock.now());
        }
        let granted = (0..100).filter(|_| b.withdraw(clock.now())).count();
        assert_eq!(granted, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_retries_when_quiet() {
        let (b, clock) = budget(20.0, 1);
        // 1 per second over a 10 s window = 10 retries with no requests at all.
        let granted = (0..50).filter(|_| b.withdraw(clock.now())).count();
        assert_eq!(granted, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_as_the_window_moves() {
        let (b, clock) = budget(50.0, 0);
        for _ in 0..10 {
            b.deposit(clock.now());
        }
        assert_eq!((0..10).filter(|_| b.withdraw(clock.now())).count(), 5);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            !b.withdraw(clock.now()),
            "no requests in the window: no budget"
        );
        for _ in 0..4 {
            b.deposit(clock.now());
        }
        assert_eq!((0..10).filter(|_| b.withdraw(clock.now())).count(), 2);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let cfg = RetryConfig {
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(35),
            ..RetryConfig::default()
        };
        for _ in 0..100 {
            assert!(backoff(&cfg, 1) <= Duration::from_millis(10));
            assert!(backoff(&cfg, 2) <= Duration::from_millis(20));
            assert!(backoff(&cfg, 5) <= Duration::from_millis(35));
        }
        let none = RetryConfig {
            backoff: Duration::ZERO,
            ..cfg
        };
        assert_eq!(backoff(&none, 3), Duration::ZERO);
    }
}
