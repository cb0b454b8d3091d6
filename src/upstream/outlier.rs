//! Passive outlier detection, as Envoy does it: an endpoint that refuses
//! `consecutive_connect_failures` connections, answers `consecutive_5xx` 5xx responses, or
//! `consecutive_gateway_errors` gateway errors (connect failures, resets, timeouts,
//! 502/503/504) in a row, is ejected from balancing for
//! `base_ejection_time × (number of ejections)`, capped at `max_ejection_time`. The
//! multiplier starts over once the endpoint has gone `max_ejection_time` without an
//! ejection. No ejection happens that would leave more than `max_ejection_percent` of
//! the upstream's endpoints ejected.

use super::window::nanos;
use crate::config::resilience::OutlierConfig;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// How one try ended, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Ok,
    /// A 5xx that is not a gateway error.
    Status5xx,
    /// Reset, timeout, 502, 503 or 504.
    GatewayError,
    /// The connection could not be made: a gateway error too, and its own run, the one
    /// no client can cause (nothing was sent).
    Connect,
}

#[derive(Debug, Default)]
pub struct Outlier {
    run_5xx: AtomicU32,
    run_gateway: AtomicU32,
    run_connect: AtomicU32,
    /// Ejected while the clock is before this (nanoseconds; 0 = never ejected).
    ejected_until: AtomicU64,
    ejections: AtomicU32,
}

/// Why an endpoint crossed a threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub reason: String,
}

impl Outlier {
    pub fn ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Counts a try; returns a trigger when a threshold was reached (the caller decides,
    /// with the whole upstream in view, whether to eject).
    pub fn record(&self, cfg: &OutlierConfig, signal: Signal) -> Option<Trigger> {
        let bump = |run: &AtomicU32, limit: u32, what: &str| {
            let n = run.fetch_add(1, Ordering::AcqRel) + 1;
            (limit > 0 && n >= limit).then(|| {
                run.store(0, Ordering::Relaxed);
                Trigger {
                    reason: format!("{n} consecutive {what}"),
                }
            })
        };
        // A gateway error is a 5xx too, as far as the 5xx run is concerned.
        let gateway_error = || {
            bump(
                &self.run_gateway,
                cfg.consecutive_gateway_errors,
                "gateway errors",
            )
            .or_else(|| bump(&self.run_5xx, cfg.consecutive_5xx, "5xx responses"))
        };
        match signal {
            Signal::Ok => {
                for run in [&self.run_5xx, &self.run_gateway, &self.run_connect] {
                    if run.load(Ordering::Relaxed) != 0 {
                        run.store(0, Ordering::Relaxed);
                    }
                }
                None
            }
            Signal::Status5xx => {
                self.run_gateway.store(0, Ordering::Relaxed);
                self.run_connect.store(0, Ordering::Relaxed);
                bump(&self.run_5xx, cfg.consecutive_5xx, "5xx responses")
            }
            Signal::Connect => bump(
                &self.run_connect,
                cfg.consecutive_connect_failures,
                "connect failures",
            )
            .or_else(gateway_error),
            Signal::GatewayError => {
                // A try that got as far as sending ends a run of refusals.
                self.run_connect.store(0, Ordering::Relaxed);
                gateway_error()
            }
        }
    }

    /// Ejects the endpoint; returns for how long.
    pub fn eject(&self, cfg: &OutlierConfig, now: u64) -> u64 {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && now >= until.saturating_add(nanos(cfg.max_ejection_time)) {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let n = self.ejections.fetch_add(1, Ordering::AcqRel) as u64 + 1;
        let time = nanos(cfg.base_ejection_time)
            .saturating_mul(n)
            .min(nanos(cfg.max_ejection_time));
        self.ejected_until.store(now + time, Ordering::Relaxed);
        for run in [&self.run_5xx, &self.run_gateway, &self.run_connect] {
            run.store(0, Ordering::Relaxed);
        }
        time
    }
}

/// Whether one more ejection keeps the ejected share within `max_ejection_percent`.
pub fn may_eject(cfg: &OutlierConfig, ejected_now: usize, total: usize) -> bool {
    (ejected_now + 1) * 100 <= cfg.max_ejection_percent as usize * total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_connect_failures: 0,
            consecutive_5xx: 3,
            consecutive_gateway_errors: 2,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: 50,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn runs_reach_their_thresholds_and_success_resets() {
        let (c, o) = (cfg(), Outlier::default());
        assert!(o.record(&c, Signal::Status5xx).is_none());
        assert!(o.record(&c, Signal::Status5xx).is_none());
        assert!(o.record(&c, Signal::Ok).is_none());
        assert!(o.record(&c, Signal::Status5xx).is_none());
        assert!(o.record(&c, Signal::Status5xx).is_none());
        let t = o.record(&c, Signal::Status5xx).expect("3 in a row");
        assert_eq!(t.reason, "3 consecutive 5xx responses");
        assert!(o.record(&c, Signal::GatewayError).is_none());
        let t = o
            .record(&c, Signal::GatewayError)
            .expect("2 gateway errors");
        assert_eq!(t.reason, "2 consecutive gateway errors");
    }

    #[test]
    fn connect_failures_have_their_own_run_and_count_as_gateway_errors() {
        let c = OutlierConfig {
            consecutive_connect_failures: 3,
            consecutive_gateway_errors: 0,
            consecutive_5xx: 0,
            ..cfg()
        };
        let o = Outlier::default();
        assert!(o.record(&c, Signal::Connect).is_none());
        assert!(o.record(&c, Signal::Connect).is_none());
        // A timeout got as far as sending: the run of refusals starts over.
        assert!(o.record(&c, Signal::GatewayError).is_none());
        assert!(o.record(&c, Signal::Connect).is_none());
        assert!(o.record(&c, Signal::Connect).is_none());
        let t = o.record(&c, Signal::Connect).expect("3 refusals in a row");
        assert_eq!(t.reason, "3 consecutive connect failures");
        // With the connect run off, refusals still count as gateway errors.
        let c = OutlierConfig {
            consecutive_connect_failures: 0,
            consecutive_gateway_errors: 2,
            ..c
        };
        let o = Outlier::default();
        assert!(o.record(&c, Signal::Connect).is_none());
        let t = o.record(&c, Signal::Connect).expect("2 gateway errors");
        assert_eq!(t.reason, "2 consecutive gateway errors");
    }

    #[test]
    fn a_threshold_of_zero_is_off() {
        let c = OutlierConfig {
            consecutive_gateway_errors: 0,
            consecutive_5xx: 0,
            ..cfg()
        };
        let o = Outlier::default();
        for _ in 0..100 {
            assert!(o.record(&c, Signal::GatewayError).is_none());
        }
    }

    #[test]
    fn ejection_time_grows_then_caps_then_starts_over() {
        let (c, o) = (cfg(), Outlier::default());
        assert_eq!(o.eject(&c, 0), 10 * S);
        assert!(o.ejected(9 * S) && !o.ejected(10 * S));
        assert_eq!(o.eject(&c, 11 * S), 20 * S);
        assert_eq!(o.eject(&c, 40 * S), 25 * S, "capped at max_ejection_time");
        // Ejected until 65 s; max_ejection_time (25 s) later without an ejection the
        // multiplier starts over.
        assert_eq!(o.eject(&c, 90 * S), 10 * S);
    }

    #[test]
    fn max_ejection_percent_keeps_endpoints() {
        let c = cfg();
        assert!(may_eject(&c, 0, 2));
        assert!(!may_eject(&c, 1, 2), "50% of 2: one ejected at most");
        assert!(
            !may_eject(&c, 0, 1),
            "the only endpoint is never ejected at 50%"
        );
        let all = OutlierConfig {
            max_ejection_percent: 100,
            ..c
        };
        assert!(may_eject(&all, 2, 3));
    }
}
