//! Round robin: one atomic counter.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn pick(&self, n: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Over k*n picks every endpoint is chosen exactly k times.
        #[test]
        fn even(n in 1usize..20, k in 1usize..20) {
            let rr = RoundRobin::default();
            let mut counts = vec![0; n];
            for _ in 0..n * k { counts[rr.pick(n)] += 1; }
            prop_assert!(counts.iter().all(|&c| c == k));
        }
    }
}
