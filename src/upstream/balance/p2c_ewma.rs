//! Power of two choices over peak-EWMA latency (Finagle, linkerd): sample two distinct
//! endpoints at random and take the one with the lower `latency × (active + 1)`.
//! Endpoints without a latency sample yet cost 0, so new endpoints are tried early.

use crate::hash::fast_rand;
use crate::upstream::Endpoint;
use std::sync::Arc;

pub struct P2cEwma;

impl P2cEwma {
    pub fn pick(&self, endpoints: &[Arc<Endpoint>]) -> usize {
        self.pick_where(endpoints, |_| true)
            .expect("at least one endpoint")
    }

    /// Two random choices among the endpoints `usable` accepts; the cheaper one wins.
    pub fn pick_where(
        &self,
        endpoints: &[Arc<Endpoint>],
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = endpoints.len();
        let cost = |i: usize| endpoints[i].latency_ns() * (endpoints[i].active() as f64 + 1.0);
        let r = fast_rand();
        let a = (r % n as u64) as usize;
        if n == 1 {
            return usable(0).then_some(0);
        }
        let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
        match (usable(a), usable(b)) {
            (true, true) => Some(if cost(b) < cost(a) { b } else { a }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            // Both samples unusable: the cheapest usable endpoint, scanning from `a`.
            (false, false) => (0..n)
                .map(|k| (a + k) % n)
                .filter(|&i| usable(i))
                .min_by(|&x, &y| cost(x).total_cmp(&cost(y))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::ActiveGuard;
    use std::time::Duration;

    fn eps(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(&format!("127.0.0.1:{}", 1000 + i), 1)))
            .collect()
    }

    #[test]
    fn never_picks_the_worst_of_many() {
        // With two distinct samples, the single slowest endpoint can never win.
        let e = eps(4);
        for (i, ep) in e.iter().enumerate() {
            ep.observe_latency(Duration::from_millis(1 + i as u64 * 10), 0);
        }
        for _ in 0..1000 {
            assert_ne!(P2cEwma.pick(&e), 3);
        }
    }

    #[test]
    fn prefers_fast_endpoint() {
        let e = eps(2);
        e[0].observe_latency(Duration::from_millis(50), 0);
        e[1].observe_latency(Duration::from_millis(5), 0);
        let picks1 = (0..1000).filter(|_| P2cEwma.pick(&e) == 1).count();
        assert_eq!(picks1, 1000, "with 2 endpoints both are always sampled");
        // Load shifts the choice: 20 active requests make the fast one costlier.
        let _guards: Vec<_> = (0..20).map(|_| ActiveGuard::new(e[1].clone())).collect();
        assert_eq!(P2cEwma.pick(&e), 0);
    }

    #[test]
    fn peak_then_decay() {
        let e = eps(1);
        // Times in nanoseconds on the upstream's clock.
        let t0 = 1_000_000_000;
        e[0].observe_latency(Duration::from_millis(10), t0);
        e[0].observe_latency(Duration::from_millis(100), t0);
        assert!(
            (e[0].latency_ns() - 100e6).abs() < 1.0,
            "a slower sample takes effect at once"
        );
        // One time constant (10 s) later a faster sample weighs 1 − 1/e.
        e[0].observe_latency(Duration::from_millis(1), t0 + 10_000_000_000);
        let w = (-1f64).exp();
        let expected = 100e6 * w + 1e6 * (1.0 - w);
        assert!(
            (e[0].latency_ns() - expected).abs() < 1.0,
            "a faster sample decays in: {} against {expected}",
            e[0].latency_ns()
        );
    }
}
