//! Load-balancing algorithms (DESIGN §5). Each is built once for an endpoint set, off the
//! request path, and picks with atomics only.

mod consistent_hash;
mod least_connections;
mod p2c_ewma;
mod round_robin;
mod weighted_round_robin;

pub use consistent_hash::Ring;
pub use least_connections::LeastConnections;
pub use p2c_ewma::P2cEwma;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::SmoothWeightedRoundRobin;

use super::Endpoint;
use crate::config::BalanceKind;
use std::sync::Arc;

/// A built balancer for one endpoint set.
pub enum Selector {
    RoundRobin(RoundRobin),
    WeightedRoundRobin(SmoothWeightedRoundRobin),
    LeastConnections(LeastConnections),
    P2cEwma(P2cEwma),
    ConsistentHash(Ring),
}

impl Selector {
    pub fn build(kind: BalanceKind, endpoints: &[Arc<Endpoint>]) -> Self {
        match kind {
            BalanceKind::RoundRobin => Selector::RoundRobin(RoundRobin::default()),
            BalanceKind::WeightedRoundRobin => {
                Selector::WeightedRoundRobin(SmoothWeightedRoundRobin::new(
                    &endpoints.iter().map(|e| e.weight).collect::<Vec<_>>(),
                ))
            }
            BalanceKind::LeastConnections => {
                Selector::LeastConnections(LeastConnections::new(false))
            }
            BalanceKind::WeightedLeastConnections => {
                Selector::LeastConnections(LeastConnections::new(true))
            }
            BalanceKind::P2cEwma => Selector::P2cEwma(P2cEwma),
            BalanceKind::ConsistentHash => Selector::ConsistentHash(Ring::new(
                &endpoints
                    .iter()
                    .map(|e| (&*e.address, e.weight))
                    .collect::<Vec<_>>(),
            )),
        }
    }

    /// Index of the chosen endpoint among those `usable` accepts, `None` when there is
    /// none. `key` is only read by consistent hashing. With every endpoint usable each
    /// algorithm picks exactly as it would without the filter; otherwise it takes the
    /// next usable endpoint in its own order (the next in the rotation or schedule, the
    /// next point on the hash ring, the least loaded of the usable ones).
    pub fn pick(
        &self,
        endpoints: &[Arc<Endpoint>],
        key: u64,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if endpoints.is_empty() {
            return None;
        }
        match self {
            Selector::RoundRobin(rr) => {
                let n = endpoints.len();
                let start = rr.pick(n);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
            Selector::WeightedRoundRobin(w) => w.pick_where(usable),
            Selector::LeastConnections(lc) => lc.pick_where(endpoints, usable),
            Selector::P2cEwma(p) => p.pick_where(endpoints, usable),
            Selector::ConsistentHash(ring) => ring.pick_where(key, usable),
        }
    }
}
