//! Least connections and weighted least connections: argmin of `active` (or
//! `active / weight`, compared by cross-multiplication), ties broken round-robin by
//! starting the scan at a rotating offset.

use crate::upstream::Endpoint;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct LeastConnections {
    weighted: bool,
    rotate: AtomicUsize,
}

impl LeastConnections {
    pub fn new(weighted: bool) -> Self {
        LeastConnections {
            weighted,
            rotate: AtomicUsize::new(0),
        }
    }

    /// `loads[i] = (active, weight)`.
    pub fn pick_loads(&self, loads: &[(usize, u32)]) -> usize {
        self.least(loads.len(), |i| loads[i], |_| true)
            .expect("at least one endpoint")
    }

    /// The least loaded endpoint among those `usable` accepts.
    pub fn pick_where(
        &self,
        endpoints: &[Arc<Endpoint>],
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        self.least(
            endpoints.len(),
            |i| (endpoints[i].active(), endpoints[i].weight),
            usable,
        )
    }

    fn least(
        &self,
        n: usize,
        load: impl Fn(usize) -> (usize, u32),
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let start = self.rotate.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, (usize, u32))> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !usable(i) {
                continue;
            }
            let (a, wa) = load(i);
            let less = match best {
                None => true,
                Some((_, (b, wb))) if self.weighted => {
                    (a as u64) * (wb as u64) < (b as u64) * (wa as u64)
                }
                Some((_, (b, _))) => a < b,
            };
            if less {
                best = Some((i, (a, wa)));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The pick is always a minimum of active (or active/weight).
        #[test]
        fn picks_a_minimum(loads in proptest::collection::vec((0usize..10, 1u32..5), 1..8), weighted: bool) {
            let lc = LeastConnections::new(weighted);
            for _ in 0..loads.len() {
                let i = lc.pick_loads(&loads);
                let score = |(a, w): (usize, u32)| if weighted { a as f64 / w as f64 } else { a as f64 };
                let min = loads.iter().map(|&l| score(l)).fold(f64::INFINITY, f64::min);
                prop_assert!((score(loads[i]) - min).abs() < 1e-12);
            }
        }

        /// Among tied endpoints, n consecutive picks visit each of them.
        #[test]
        fn ties_rotate(n in 1usize..8) {
            let lc = LeastConnections::new(true);
            let loads = vec![(3, 1); n];
            let mut seen = vec![false; n];
            for _ in 0..n { seen[lc.pick_loads(&loads)] = true; }
            prop_assert!(seen.iter().all(|&s| s));
        }
    }

    #[test]
    fn weighted_prefers_heavier() {
        let lc = LeastConnections::new(true);
        // 2 active on weight 3 (0.67) beats 1 active on weight 1 (1.0).
        assert_eq!(lc.pick_loads(&[(1, 1), (2, 3)]), 1);
        let plain = LeastConnections::new(false);
        assert_eq!(plain.pick_loads(&[(1, 1), (2, 3)]), 0);
    }
}
