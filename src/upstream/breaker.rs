//! The per-endpoint circuit breaker: closed → open → half-open → closed (DESIGN §6).
//!
//! * **Closed**: every try is counted. The breaker trips after `consecutive_failures`
//!   failures in a row, or when the failure ratio over the sliding `window` reaches
//!   `error_ratio` with at least `min_requests` tries in it.
//! * **Open**: the endpoint is not a balancing candidate for `open_time`, doubled on each
//!   trip that follows a failed probe, up to `max_open_time`, spread by ±`jitter`.
//! * **Half-open**: when the open time has passed, up to `half_open_probes` tries are let
//!   through at once; the first one to finish decides: success closes the breaker (and
//!   resets the backoff), failure opens it again for longer.
//!
//! All state is atomics; the success path costs one relaxed load and one window update.

use super::window::{nanos, Window};
use crate::config::resilience::BreakerConfig;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// A state change, for the caller to log (and, later, count).
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
}

#[derive(Debug)]
pub struct Breaker {
    state: AtomicU8,
    consecutive: AtomicU32,
    /// When an open breaker may let probes through (clock nanoseconds).
    open_until: AtomicU64,
    /// Trips since the breaker was last closed by a probe: the backoff exponent.
    trips: AtomicU32,
    /// Probes in flight while half-open.
    probes: AtomicU32,
    window: Window,
}

/// What a try admitted through the breaker must report back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Normal,
    Probe,
}

impl Breaker {
    pub fn new(cfg: &BreakerConfig) -> Self {
        Breaker {
            state: AtomicU8::new(State::Closed as u8),
            consecutive: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            trips: AtomicU32::new(0),
            probes: AtomicU32::new(0),
            window: Window::new(cfg.window),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Whether a try could be admitted now. Moves an open breaker whose time is up to
    /// half-open (the returned transition is for the log).
    pub fn usable(&self, cfg: &BreakerConfig, now: u64) -> (bool, Option<Transition>) {
        match self.state() {
            State::Closed => (true, None),
            State::Open if now >= self.open_until.load(Ordering::Relaxed) => {
                let moved = self
                    .state
                    .compare_exchange(
                        State::Open as u8,
                        State::HalfOpen as u8,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok();
                let t = moved.then(|| {
                    self.probes.store(0, Ordering::Relaxed);
                    Transition {
                        from: State::Open,
                        to: State::HalfOpen,
                        reason: "open time elapsed; letting probes through".into(),
                    }
                });
                (self.has_probe_room(cfg), t)
            }
            State::Open => (false, None),
            State::HalfOpen => (self.has_probe_room(cfg), None),
        }
    }

    fn has_probe_room(&self, cfg: &BreakerConfig) -> bool {
        self.state() != State::HalfOpen
            || self.probes.load(Ordering::Relaxed) < cfg.half_open_probes
    }

    /// Admits a try to a picked endpoint; `None` when a racing try took the last probe
    /// slot or the breaker opened meanwhile.
    pub fn admit(&self, cfg: &BreakerConfig) -> Option<Admission> {
        match self.state() {
            State::Closed => Some(Admission::Normal),
            State::Open => None,
            State::HalfOpen => {
                let before = self.probes.fetch_add(1, Ordering::AcqRel);
                if before < cfg.half_open_probes {
                    Some(Admission::Probe)
                } else {
                    self.probes.fetch_sub(1, Ordering::AcqRel);
                    None
                }
            }
        }
    }

    /// Ends an admitted try that says nothing about the endpoint (the client's fault):
    /// a probe gives its slot back without deciding.
    pub fn release(&self, admission: Admission) {
        if admission == Admission::Probe {
            self.probes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Records the outcome of an admitted try.
    pub fn record(
        &self,
        cfg: &BreakerConfig,
        now: u64,
        admission: Admission,
        failed: bool,
    ) -> Option<Transition> {
        if admission == Admission::Probe {
            self.probes.fetch_sub(1, Ordering::AcqRel);
            return if failed {
                self.open(cfg, now, State::HalfOpen, "a half-open probe failed".into())
            } else if self
                .state
                .compare_exchange(
                    State::HalfOpen as u8,
                    State::Closed as u8,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.consecutive.store(0, Ordering::Relaxed);
                self.trips.store(0, Ordering::Relaxed);
                self.window.clear();
                Some(Transition {
                    from: State::HalfOpen,
                    to: State::Closed,
                    reason: "a half-open probe succeeded".into(),
                })
            } else {
                None
            };
        }
        // Late outcomes of tries admitted before a trip do not count.
        if self.state() != State::Closed {
            return None;
        }
        if cfg.error_ratio.is_some() {
            self.window.add(now, failed);
        }
        if !failed {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let run = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if run >= cfg.consecutive_failures {
            return self.open(
                cfg,
                now,
                State::Closed,
                format!("{run} consecutive failures"),
            );
        }
        if let Some(ratio) = cfg.error_ratio {
            let (total, failures) = self.window.sum(now);
            if total >= cfg.min_requests as u64 && failures as f64 >= ratio * total as f64 {
                return self.open(
                    cfg,
                    now,
                    State::Closed,
                    format!(
                        "{failures} of {total} requests failed in the last {:?} (error_ratio {ratio})",
                        cfg.window
                    ),
                );
            }
        }
        None
    }

    fn open(
        &self,
        cfg: &BreakerConfig,
        now: u64,
        from: State,
        reason: String,
    ) -> Option<Transition> {
        // Only the try that moves the state sets the timer.
        self.state
            .compare_exchange(
                from as u8,
                State::Open as u8,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .ok()?;
        let trips = self.trips.fetch_add(1, Ordering::AcqRel);
        let base = nanos(cfg.open_time) as f64 * 2f64.powi(trips.min(62) as i32);
        let capped = base.min(nanos(cfg.max_open_time) as f64);
        let spread = if cfg.jitter > 0.0 {
            let r = (crate::hash::fast_rand() >> 11) as f64 / (1u64 << 53) as f64;
            1.0 + cfg.jitter * (2.0 * r - 1.0)
        } else {
            1.0
        };
        let open_for = (capped * spread) as u64;
        self.open_until.store(now + open_for, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        Some(Transition {
            from,
            to: State::Open,
            reason: format!(
                "{reason}; open for {:?}",
                std::time::Duration::from_nanos(open_for)
            ),
        })
    }

    /// When an open breaker lets probes through (clock nanoseconds).
    pub fn open_until(&self) -> u64 {
        self.open_until.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::window::Clock;
    use std::time::Duration;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            error_ratio: None,
            open_time: Duration::from_secs(1),
            max_open_time: Duration::from_secs(5),
            jitter: 0.0,
            ..BreakerConfig::default()
        }
    }

    fn fail(b: &Breaker, c: &BreakerConfig, now: u64) -> Option<Transition> {
        let a = b.admit(c).expect("admitted");
        b.record(c, now, a, true)
    }

    fn succeed(b: &Breaker, c: &BreakerConfig, now: u64) -> Option<Transition> {
        let a = b.admit(c).expect("admitted");
        b.record(c, now, a, false)
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_trip_and_success_resets_the_run() {
        let (c, clock) = (cfg(), Clock::new());
        let b = Breaker::new(&c);
        assert!(fail(&b, &c, clock.now()).is_none());
        assert!(fail(&b, &c, clock.now()).is_none());
        assert!(
            succeed(&b, &c, clock.now()).is_none(),
            "a success resets the run"
        );
        assert!(fail(&b, &c, clock.now()).is_none());
        assert!(fail(&b, &c, clock.now()).is_none());
        let t = fail(&b, &c, clock.now()).expect("third failure in a row trips");
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        assert!(t.reason.contains("3 consecutive failures"), "{}", t.reason);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.usable(&c, clock.now()), (false, None));
        assert!(b.admit(&c).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn error_ratio_trips_only_with_enough_requests() {
        let c = BreakerConfig {
            consecutive_failures: 100,
            error_ratio: Some(0.5),
            min_requests: 10,
            window: Duration::from_secs(10),
            ..cfg()
        };
        let clock = Clock::new();
        let b = Breaker::new(&c);
        // 4 failures of 8: ratio reached, but under min_requests.
        for i in 0..8 {
            let t = if i % 2 == 0 {
                fail(&b, &c, clock.now())
            } else {
                succeed(&b, &c, clock.now())
            };
            assert!(t.is_none());
        }
        assert!(succeed(&b, &c, clock.now()).is_none());
        // 10 requests, 5 failures: trips.
        let t = fail(&b, &c, clock.now()).expect("ratio reached with 10 requests");
        assert!(t.reason.contains("5 of 10"), "{}", t.reason);
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let c = BreakerConfig {
            consecutive_failures: 100,
            error_ratio: Some(0.5),
            min_requests: 4,
            window: Duration::from_secs(10),
            ..cfg()
        };
        let clock = Clock::new();
        let b = Breaker::new(&c);
        fail(&b, &c, clock.now());
        fail(&b, &c, clock.now());
        fail(&b, &c, clock.now());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(succeed(&b, &c, clock.now()).is_none());
        assert!(succeed(&b, &c, clock.now()).is_none());
        assert!(succeed(&b, &c, clock.now()).is_none());
        assert!(fail(&b, &c, clock.now()).is_none(), "1 of 4 in the window");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_open_time_and_a_successful_probe_closes() {
        let (c, clock) = (cfg(), Clock::new());
        let b = Breaker::new(&c);
        for _ in 0..3 {
            fail(&b, &c, clock.now());
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(b.usable(&c, clock.now()), (false, None));
        tokio::time::advance(Duration::from_millis(1)).await;
        let (ok, t) = b.usable(&c, clock.now());
        assert!(ok);
        assert_eq!(t.map(|t| t.to), Some(State::HalfOpen));
        let probe = b.admit(&c).expect("one probe");
        assert_eq!(probe, Admission::Probe);
        assert!(b.admit(&c).is_none(), "half_open_probes = 1");
        assert_eq!(b.usable(&c, clock.now()), (false, None));
        let t = b.record(&c, clock.now(), probe, false).expect("closes");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
        assert_eq!(b.admit(&c), Some(Admission::Normal));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_back_off_exponentially_up_to_the_cap() {
        let (c, clock) = (cfg(), Clock::new());
        let b = Breaker::new(&c);
        for _ in 0..3 {
            fail(&b, &c, clock.now());
        }
        let mut open_for = Vec::new();
        for _ in 0..5 {
            let wait = b.open_until() - clock.now();
            open_for.push(wait / 1_000_000);
            tokio::time::advance(Duration::from_nanos(wait)).await;
            assert!(b.usable(&c, clock.now()).0);
            let p = b.admit(&c).expect("probe");
            let t = b.record(&c, clock.now(), p, true).expect("reopens");
            assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
        }
        assert_eq!(open_for, vec![1000, 2000, 4000, 5000, 5000]);
        // A successful probe resets the backoff: the next trip opens for open_time again.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.usable(&c, clock.now()).0);
        let p = b.admit(&c).unwrap();
        b.record(&c, clock.now(), p, false).expect("closes");
        for _ in 0..3 {
            fail(&b, &c, clock.now());
        }
        assert_eq!(b.open_until() - clock.now(), 1_000_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn several_probes_and_the_first_outcome_decides() {
        let c = BreakerConfig {
            half_open_probes: 2,
            ..cfg()
        };
        let clock = Clock::new();
        let b = Breaker::new(&c);
        for _ in 0..3 {
            fail(&b, &c, clock.now());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.usable(&c, clock.now()).0);
        let p1 = b.admit(&c).unwrap();
        let p2 = b.admit(&c).unwrap();
        assert!(b.admit(&c).is_none());
        assert_eq!(
            b.record(&c, clock.now(), p1, true).map(|t| t.to),
            Some(State::Open)
        );
        // The second probe's success comes too late to change anything.
        assert!(b.record(&c, clock.now(), p2, false).is_none());
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_of_an_open_breaker_are_ignored() {
        let (c, clock) = (cfg(), Clock::new());
        let b = Breaker::new(&c);
        let late = b.admit(&c).unwrap();
        for _ in 0..3 {
            fail(&b, &c, clock.now());
        }
        assert!(b.record(&c, clock.now(), late, false).is_none());
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn jitter_spreads_open_time_within_bounds() {
        let c = BreakerConfig {
            jitter: 0.5,
            ..cfg()
        };
        for _ in 0..50 {
            let b = Breaker::new(&c);
            for _ in 0..3 {
                fail(&b, &c, 0);
            }
            let ms = b.open_until() / 1_000_000;
            assert!((500..=1500).contains(&ms), "{ms}");
        }
    }
}
