//! Smooth weighted round robin, nginx's algorithm: each pick adds every endpoint's weight
//! to its current value, takes the largest, and subtracts the total from it. The sequence
//! repeats every `sum(weights)/gcd` picks, so it is computed once when the selector is
//! built and the request path only bumps an atomic index into it — no lock.

use std::sync::atomic::{AtomicUsize, Ordering};

pub struct SmoothWeightedRoundRobin {
    schedule: Vec<u32>,
    next: AtomicUsize,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl SmoothWeightedRoundRobin {
    /// `weights` are ≥ 1 (config caps them at [`crate::config::MAX_WEIGHT`]).
    pub fn new(weights: &[u32]) -> Self {
        let g = weights.iter().fold(0u64, |g, &w| gcd(g, w as u64)).max(1);
        let weights: Vec<i64> = weights.iter().map(|&w| (w as u64 / g) as i64).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..weights.len() {
                current[i] += weights[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            schedule.push(best as u32);
        }
        SmoothWeightedRoundRobin {
            schedule,
            next: AtomicUsize::new(0),
        }
    }

    pub fn pick(&self) -> usize {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        self.schedule[i] as usize
    }

    /// The next scheduled endpoint that `usable` accepts.
    pub fn pick_where(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let first = self.pick();
        if usable(first) {
            return Some(first);
        }
        let n = self.schedule.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| self.schedule[(start + k) % n] as usize)
            .find(|&i| usable(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nginx_sequence_for_5_1_1() {
        // The example from nginx's commit introducing smooth WRR: a a b a c a a.
        let w = SmoothWeightedRoundRobin::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| w.pick()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn one_to_three_is_interleaved() {
        let w = SmoothWeightedRoundRobin::new(&[1, 3]);
        let seq: Vec<usize> = (0..8).map(|_| w.pick()).collect();
        // nginx breaks ties towards the first peer.
        assert_eq!(seq, vec![1, 0, 1, 1, 1, 0, 1, 1]);
    }

    proptest! {
        /// Over any whole number of cycles each endpoint gets exactly its weight's share,
        /// and the schedule is smooth: after any k picks, endpoint i has been chosen
        /// fewer than one time more than its fair share k·w_i/W, and fewer than n−1
        /// times less (n endpoints). Why: with current weights cw (they sum to 0), the
        /// deviation c_i − k·w_i/W is −cw_i/W; the picked endpoint had the largest
        /// cw + w, at least W/n, so after losing W its cw stays above −W, and the others'
        /// only grow: every cw_i > −W, hence every cw_i < (n−1)·W. (Within one either way does
        /// not hold for three or more endpoints: proptest found one 1.007 behind.)
        #[test]
        fn exact_shares_and_smooth(weights in proptest::collection::vec(1u32..50, 1..6), cycles in 1usize..4) {
            let w = SmoothWeightedRoundRobin::new(&weights);
            let g = weights.iter().fold(0u64, |g, &x| gcd(g, x as u64));
            let period: u64 = weights.iter().map(|&x| x as u64 / g).sum();
            let total: f64 = weights.iter().map(|&x| x as f64).sum();
            let mut counts = vec![0u64; weights.len()];
            for k in 1..=period as usize * cycles {
                counts[w.pick()] += 1;
                for (i, &c) in counts.iter().enumerate() {
                    let fair = k as f64 * weights[i] as f64 / total;
                    let behind = (weights.len() - 1).max(1) as f64;
                    prop_assert!((c as f64) - fair < 1.0 + 1e-9, "endpoint {} after {} picks: {} vs fair {}", i, k, c, fair);
                    prop_assert!(fair - (c as f64) < behind + 1e-9, "endpoint {} after {} picks: {} vs fair {}", i, k, c, fair);
                }
            }
            for (i, &c) in counts.iter().enumerate() {
                prop_assert_eq!(c, weights[i] as u64 / g * cycles as u64);
            }
        }
    }
}
