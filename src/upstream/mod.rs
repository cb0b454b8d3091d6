//! Upstreams: their endpoints, the per-endpoint load signals (active requests, peak-EWMA
//! latency) and the balancer snapshot that the request path reads without locks; and
//! every resilience decision about a request to them — the try loop ([`call`]), the one
//! classifier of a try's outcome ([`classify`]), breakers, outlier detection, health
//! checks and the retry budget.

pub mod balance;
pub mod body;
pub mod breaker;
pub mod call;
pub mod classify;
pub mod client;
pub mod connector;
pub mod h1;
pub mod health_check;
pub mod outlier;
pub mod pool;
pub mod replay;
pub mod retry;
pub mod window;

use crate::config::{BalanceKind, HashKey, TargetConfig, UpstreamConfig};
use arc_swap::ArcSwap;
use balance::Selector;
use breaker::{Admission, Breaker, Transition};
use classify::ErrorKind;
pub use classify::Outcome;
use outlier::Outlier;
use retry::RetryBudget;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One instance of an upstream service.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port`
    pub address: Arc<str>,
    pub authority: http::uri::Authority,
    /// `Host` header value naming this endpoint.
    pub host_header: http::HeaderValue,
    pub weight: u32,
    /// Requests picked for this endpoint whose response has not finished streaming.
    active: AtomicUsize,
    ewma: PeakEwma,
    /// Present when the upstream has `[upstreams.circuit_breaker]`.
    pub breaker: Option<Breaker>,
    pub outlier: Outlier,
    /// The active health check's verdict (true until a check says otherwise).
    healthy: AtomicBool,
    metrics: Option<EndpointMetrics>,
}

/// An endpoint's metric handles, resolved when the endpoint appears.
#[derive(Debug)]
struct EndpointMetrics {
    duration: prometheus::Histogram,
    /// By [`ErrorKind`].
    errors: [prometheus::IntCounter; 4],
}

impl EndpointMetrics {
    fn new(upstream: &str, endpoint: &str) -> Self {
        let m = crate::metrics::get();
        EndpointMetrics {
            duration: m.upstream_duration.with_label_values(&[upstream, endpoint]),
            errors: ErrorKind::ALL.map(|kind| {
                m.upstream_errors
                    .with_label_values(&[upstream, endpoint, kind.as_str()])
            }),
        }
    }
}

impl Endpoint {
    pub fn new(address: &str, weight: u32) -> Self {
        Endpoint {
            address: address.into(),
            authority: address.parse().expect("address validated by config"),
            host_header: http::HeaderValue::from_str(address).expect("address validated by config"),
            weight: weight.max(1),
            active: AtomicUsize::new(0),
            ewma: PeakEwma::new(),
            breaker: None,
            outlier: Outlier::default(),
            healthy: AtomicBool::new(true),
            metrics: None,
        }
    }

    fn for_upstream(config: &UpstreamConfig, address: &str, weight: u32) -> Self {
        Endpoint {
            breaker: config.circuit_breaker.as_ref().map(Breaker::new),
            metrics: Some(EndpointMetrics::new(&config.name, address)),
            ..Endpoint::new(address, weight)
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the health-check verdict; returns whether it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Peak-EWMA latency estimate in nanoseconds.
    pub fn latency_ns(&self) -> f64 {
        self.ewma.get()
    }

    /// Feeds one observed latency (time to response head, taken at `now`: nanoseconds on
    /// the endpoint's upstream's clock, [`window::Clock`]) into the estimate and the
    /// metrics.
    pub fn observe_latency(&self, rtt: Duration, now: u64) {
        self.ewma.observe(rtt, now);
        if let Some(m) = &self.metrics {
            m.duration.observe(rtt.as_secs_f64());
        }
    }
}

/// Counts an in-flight request against an endpoint until dropped.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Endpoint>);

impl ActiveGuard {
    pub fn new(ep: Arc<Endpoint>) -> Self {
        ep.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(ep)
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Peak-sensitive exponentially weighted moving average of latency (as in Finagle and
/// linkerd): a slower sample takes effect at once, faster ones decay in with time constant
/// [`PeakEwma::TAU`]. Lock-free; two racing updates may lose one sample, which only
/// slows convergence.
#[derive(Debug)]
struct PeakEwma {
    /// f64 nanoseconds, as bits.
    value: AtomicU64,
    /// When it was last updated (nanoseconds on the upstream's clock).
    stamp: AtomicU64,
}

impl PeakEwma {
    const TAU: f64 = 10e9; // 10 s in ns

    fn new() -> Self {
        PeakEwma {
            value: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(0),
        }
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.value.load(Ordering::Relaxed))
    }

    /// `now`: when the sample was taken.
    fn observe(&self, rtt: Duration, now: u64) {
        let sample = rtt.as_nanos() as f64;
        let prev = self.get();
        let last = self.stamp.swap(now, Ordering::Relaxed);
        let next = if sample > prev || prev == 0.0 {
            sample
        } else {
            let w = (-((now.saturating_sub(last)) as f64) / Self::TAU).exp();
            prev * w + sample * (1.0 - w)
        };
        self.value.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// The endpoint set and the selector built for it; swapped whole when endpoints change.
pub struct Snapshot {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub selector: Selector,
}

/// A picked endpoint and what its breaker must be told when the try ends.
pub struct Picked {
    pub endpoint: Arc<Endpoint>,
    pub admission: Admission,
}

/// Why no endpoint could be picked.
#[derive(Debug, PartialEq, Eq)]
pub enum NoPick {
    /// The upstream has no endpoints at all (discovery has produced none).
    Empty,
    /// Every endpoint is unhealthy, ejected, open or already tried.
    Unavailable,
}

pub struct Upstream {
    pub config: UpstreamConfig,
    snapshot: ArcSwap<Snapshot>,
    /// Whether the discovery source has reported an endpoint set yet.
    discovered: AtomicBool,
    pub clock: window::Clock,
    /// Present when the upstream has `[upstreams.retry]`.
    pub budget: Option<RetryBudget>,
    /// Whether any mechanism can make an endpoint unusable (else picks skip the checks).
    guarded: bool,
    /// Fallback chains skip the upstream until this time (`clock` nanoseconds): it
    /// answered 429 with `Retry-After`.
    held_off_until: AtomicU64,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Self {
        let endpoints: Vec<Arc<Endpoint>> = config
            .targets
            .iter()
            .map(|t| Arc::new(Endpoint::for_upstream(&config, &t.address, t.weight)))
            .collect();
        let selector = Selector::build(config.balance, &endpoints);
        Upstream {
            clock: window::Clock::new(),
            budget: config
                .retry
                .as_ref()
                .map(|r| RetryBudget::new(r, &config.name)),
            guarded: config.circuit_breaker.is_some()
                || config.outlier_detection.is_some()
                || config.health_check.is_some(),
            config,
            snapshot: ArcSwap::from_pointee(Snapshot {
                endpoints,
                selector,
            }),
            discovered: AtomicBool::new(false),
            held_off_until: AtomicU64::new(0),
        }
    }

    /// Skips the upstream in fallback chains for `time` (a 429's `Retry-After`).
    pub fn hold_off(&self, time: Duration) {
        let until = self.clock.now().saturating_add(window::nanos(time));
        self.held_off_until.fetch_max(until, Ordering::Relaxed);
    }

    /// How much longer fallback chains skip the upstream, if they do.
    pub fn held_off(&self) -> Option<Duration> {
        let until = self.held_off_until.load(Ordering::Relaxed);
        let now = self.clock.now();
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn balance(&self) -> BalanceKind {
        self.config.balance
    }

    pub fn hash_key(&self) -> &HashKey {
        &self.config.hash_key
    }

    /// Picks an endpoint; `key` is the request's hash for consistent hashing.
    pub fn pick(&self, key: u64) -> Option<Arc<Endpoint>> {
        self.pick_excluding(key, &[], self.clock.now())
            .ok()
            .map(|p| p.endpoint)
    }

    /// Picks a usable endpoint that is not in `tried` (a retry goes elsewhere when it can)
    /// and admits the try through its breaker. `now`: the time on the upstream's clock.
    pub fn pick_excluding(
        &self,
        key: u64,
        tried: &[Arc<Endpoint>],
        now: u64,
    ) -> Result<Picked, NoPick> {
        let snap = self.snapshot.load();
        if snap.endpoints.is_empty() {
            return Err(NoPick::Empty);
        }
        if !self.guarded && tried.is_empty() {
            let i = snap
                .selector
                .pick(&snap.endpoints, key, |_| true)
                .ok_or(NoPick::Empty)?;
            return Ok(Picked {
                endpoint: snap.endpoints[i].clone(),
                admission: Admission::Normal,
            });
        }
        // A half-open endpoint whose probe slots a racing request took is skipped too.
        let mut refused: Vec<usize> = Vec::new();
        loop {
            let usable = |i: usize| {
                let ep = &snap.endpoints[i];
                !refused.contains(&i)
                    && !tried.iter().any(|t| Arc::ptr_eq(t, ep))
                    && self.usable(ep, now)
            };
            let Some(i) = snap.selector.pick(&snap.endpoints, key, usable) else {
                return Err(NoPick::Unavailable);
            };
            let endpoint = &snap.endpoints[i];
            let admission = match (&endpoint.breaker, &self.config.circuit_breaker) {
                (Some(b), Some(cfg)) => b.admit(cfg),
                _ => Some(Admission::Normal),
            };
            match admission {
                Some(admission) => {
                    return Ok(Picked {
                        endpoint: endpoint.clone(),
                        admission,
                    })
                }
                None => refused.push(i),
            }
        }
    }

    /// Whether `ep` may take a try now: healthy, not ejected, breaker not open.
    pub fn usable(&self, ep: &Endpoint, now: u64) -> bool {
        if !ep.healthy() || ep.outlier.ejected(now) {
            return false;
        }
        match (&ep.breaker, &self.config.circuit_breaker) {
            (Some(b), Some(cfg)) => {
                let (ok, t) = b.usable(cfg, now);
                if let Some(t) = t {
                    self.log_transition(ep, &t);
                }
                ok
            }
            _ => true,
        }
    }

    /// Feeds the outcome of a try to the endpoint's error metrics, breaker and outlier
    /// detection. A try that says nothing about the endpoint (the client's body failed
    /// it) counts nowhere; a half-open probe slot it held is given back.
    /// `now`: when the try ended, on the upstream's clock.
    pub fn record(&self, ep: &Endpoint, admission: Admission, outcome: Outcome, now: u64) {
        if let (Some(m), Some(kind)) = (&ep.metrics, outcome.error_kind()) {
            m.errors[kind as usize].inc();
        }
        if !self.guarded {
            return;
        }
        if let (Some(b), Some(cfg)) = (&ep.breaker, &self.config.circuit_breaker) {
            match outcome.breaker_failure(&cfg.failure_on) {
                Some(failed) => {
                    if let Some(t) = b.record(cfg, now, admission, failed) {
                        self.log_transition(ep, &t);
                    }
                }
                None => b.release(admission),
            }
        }
        if let (Some(cfg), Some(signal)) =
            (&self.config.outlier_detection, outcome.outlier_signal())
        {
            if let Some(trigger) = ep.outlier.record(cfg, signal) {
                self.eject(ep, cfg, now, &trigger.reason);
            }
        }
    }

    /// Ejects `ep` unless `max_ejection_percent` of the endpoints are out already.
    fn eject(
        &self,
        ep: &Endpoint,
        cfg: &crate::config::resilience::OutlierConfig,
        now: u64,
        reason: &str,
    ) {
        let snap = self.snapshot.load();
        let ejected = snap
            .endpoints
            .iter()
            .filter(|e| e.outlier.ejected(now))
            .count();
        if outlier::may_eject(cfg, ejected, snap.endpoints.len()) {
            let time = ep.outlier.eject(cfg, now);
            crate::metrics::get()
                .ejections
                .with_label_values(&[self.name(), &ep.address])
                .inc();
            tracing::warn!(
                upstream = self.name(),
                endpoint = &*ep.address,
                reason,
                ejection_time = ?Duration::from_nanos(time),
                "outlier ejected"
            );
        } else {
            tracing::warn!(
                upstream = self.name(),
                endpoint = &*ep.address,
                reason,
                ejected,
                max_ejection_percent = cfg.max_ejection_percent,
                "outlier not ejected: max_ejection_percent reached"
            );
        }
    }

    fn log_transition(&self, ep: &Endpoint, t: &Transition) {
        let (from, to) = (t.from.as_str(), t.to.as_str());
        crate::metrics::get()
            .breaker_transitions
            .with_label_values(&[self.name(), &ep.address, to])
            .inc();
        if t.to == breaker::State::Open {
            tracing::warn!(upstream = self.name(), endpoint = &*ep.address, from, to, reason = %t.reason, "circuit breaker opened");
        } else {
            tracing::info!(upstream = self.name(), endpoint = &*ep.address, from, to, reason = %t.reason, "circuit breaker {to}");
        }
    }

    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.snapshot.load().endpoints.clone()
    }

    /// Why [`Upstream::pick`] found nothing, naming the upstream (the 503's message).
    pub fn unavailable_reason(&self) -> String {
        let name = self.name();
        match &self.config.discovery {
            None => format!("upstream `{name}` has no endpoints"),
            Some(d) if !self.has_discovered() => format!(
                "upstream `{name}` has no endpoints yet: its discovery source ({}) has not produced any",
                d.describe()
            ),
            Some(d) => format!(
                "upstream `{name}` has no endpoints: its discovery source ({}) currently lists none",
                d.describe()
            ),
        }
    }

    /// Whether a discovery source has reported an endpoint set to this upstream.
    pub fn has_discovered(&self) -> bool {
        self.discovered.load(Ordering::Acquire)
    }

    /// Replaces the endpoint set with one a discovery source reported (see
    /// `set_endpoints`) and remembers that the source has reported.
    pub fn set_discovered(&self, targets: &[TargetConfig]) -> bool {
        let changed = self.set_endpoints(targets);
        self.discovered.store(true, Ordering::Release);
        changed
    }

    /// Replaces the endpoint set (discovery): the balancer is rebuilt here, off the request
    /// path, and swapped in whole. Endpoints whose address stays keep their state (active
    /// requests, latency, health); requests already on a removed endpoint finish on it.
    /// Returns whether the set changed.
    fn set_endpoints(&self, targets: &[TargetConfig]) -> bool {
        let old = self.snapshot.load();
        let unchanged = old.endpoints.len() == targets.len()
            && old
                .endpoints
                .iter()
                .zip(targets)
                .all(|(e, t)| *e.address == *t.address && e.weight == t.weight.max(1));
        if unchanged {
            return false;
        }
        let endpoints: Vec<Arc<Endpoint>> = targets
            .iter()
            .map(|t| {
                old.endpoints
                    .iter()
                    .find(|e| *e.address == *t.address && e.weight == t.weight.max(1))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Endpoint::for_upstream(&self.config, &t.address, t.weight))
                    })
            })
            .collect();
        let selector = Selector::build(self.config.balance, &endpoints);
        self.snapshot.store(Arc::new(Snapshot {
            endpoints,
            selector,
        }));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovered_upstream(balance: &str) -> Upstream {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"up\"\nbalance = \"{balance}\"\ndiscovery = {{ kind = \"file\", path = \"e.json\" }}\n"
        );
        let cfg = crate::config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        Upstream::new(cfg.upstreams.into_iter().next().unwrap())
    }

    #[test]
    fn every_balancer_starts_empty_and_takes_discovered_sets() {
        for balance in [
            "round_robin",
            "weighted_round_robin",
            "least_connections",
            "weighted_least_connections",
            "p2c_ewma",
            "consistent_hash",
        ] {
            let u = discovered_upstream(balance);
            assert!(u.pick(7).is_none(), "{balance}");
            assert!(
                u.unavailable_reason().contains("has not produced any"),
                "{}",
                u.unavailable_reason()
            );
            let t = |a: &str, w| TargetConfig {
                address: a.into(),
                weight: w,
            };
            assert!(u.set_discovered(&[t("10.0.0.1:80", 1), t("10.0.0.2:80", 3)]));
            assert!(!u.set_discovered(&[t("10.0.0.1:80", 1), t("10.0.0.2:80", 3)]));
            assert!(u.pick(7).is_some(), "{balance}");
            assert!(u.set_discovered(&[]));
            assert!(u.pick(7).is_none(), "{balance}");
            assert!(
                u.unavailable_reason().contains("currently lists none"),
                "{}",
                u.unavailable_reason()
            );
        }
    }
}
