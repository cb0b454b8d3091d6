//! Upstreams: their endpoints, the per-endpoint load signals (active requests, peak-EWMA
//! latency) and the balancer snapshot that the request path reads without locks.

pub mod balance;

use crate::config::{BalanceKind, HashKey, TargetConfig, UpstreamConfig};
use arc_swap::ArcSwap;
use balance::Selector;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Peak-EWMA latency estimate in nanoseconds.
    pub fn latency_ns(&self) -> f64 {
        self.ewma.get()
    }

    /// Feeds one observed latency (time to response head) into the estimate.
    pub fn observe_latency(&self, rtt: Duration) {
        self.ewma.observe(rtt);
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

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Peak-sensitive exponentially weighted moving average of latency (as in Finagle and
/// linkerd): a slower sample takes effect at once, faster ones decay in with time constant
/// [`PeakEwma::TAU`]. Lock-free; two racing updates may lose one sample, which only
/// slows convergence.
#[derive(Debug)]
struct PeakEwma {
    /// f64 nanoseconds, as bits.
    value: AtomicU64,
    /// Nanoseconds since [`epoch`] of the last update.
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

    fn observe(&self, rtt: Duration) {
        let now = epoch().elapsed().as_nanos() as u64;
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

pub struct Upstream {
    pub config: UpstreamConfig,
    snapshot: ArcSwap<Snapshot>,
    /// Whether the discovery source has reported an endpoint set yet.
    discovered: AtomicBool,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Self {
        let endpoints: Vec<Arc<Endpoint>> = config
            .targets
            .iter()
            .map(|t| Arc::new(Endpoint::new(&t.address, t.weight)))
            .collect();
        let selector = Selector::build(config.balance, &endpoints);
        Upstream {
            config,
            snapshot: ArcSwap::from_pointee(Snapshot {
                endpoints,
                selector,
            }),
            discovered: AtomicBool::new(false),
        }
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
        let snap = self.snapshot.load();
        snap.selector
            .pick(&snap.endpoints, key)
            .map(|i| snap.endpoints[i].clone())
    }

    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.snapshot.load().endpoints.clone()
    }

    /// Why [`Upstream::pick`] found nothing, naming the upstream (the 503's message).
    pub fn unavailable_reason(&self) -> String {
        let name = self.name();
        match &self.config.discovery {
            None => format!("upstream `{name}` has no available endpoint"),
            Some(d) if !self.discovered.load(Ordering::Acquire) => format!(
                "upstream `{name}` has no endpoints yet: its discovery source ({}) has not produced any",
                d.describe()
            ),
            Some(d) => format!(
                "upstream `{name}` has no endpoints: its discovery source ({}) currently lists none",
                d.describe()
            ),
        }
    }

    /// Replaces the endpoint set with one a discovery source reported (see
    /// [`Upstream::set_endpoints`]) and remembers that the source has reported.
    pub fn set_discovered(&self, targets: &[TargetConfig]) -> bool {
        let changed = self.set_endpoints(targets);
        self.discovered.store(true, Ordering::Release);
        changed
    }

    /// Replaces the endpoint set (discovery): the balancer is rebuilt here, off the request
    /// path, and swapped in whole. Endpoints whose address stays keep their state (active
    /// requests, latency, health); requests already on a removed endpoint finish on it.
    /// Returns whether the set changed.
    pub fn set_endpoints(&self, targets: &[TargetConfig]) -> bool {
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
                    .unwrap_or_else(|| Arc::new(Endpoint::new(&t.address, t.weight)))
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
