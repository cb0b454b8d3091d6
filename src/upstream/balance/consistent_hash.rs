//! Consistent hashing on a ring of virtual nodes (ketama-style): each endpoint places
//! `160 × weight` points derived from its address only, so removing one endpoint remaps
//! only the keys that were on it.

use crate::hash::hash_bytes;

pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, u32)>,
}

const POINTS_PER_WEIGHT: u32 = 160;

impl Ring {
    pub fn new(endpoints: &[(&str, u32)]) -> Self {
        let mut points = Vec::new();
        for (i, (addr, weight)) in endpoints.iter().enumerate() {
            for v in 0..POINTS_PER_WEIGHT * weight.max(&1) {
                points.push((hash_bytes(format!("{addr}#{v}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    pub fn pick(&self, key: u64) -> usize {
        self.pick_where(key, |_| true).expect("a ring with points")
    }

    /// The endpoint owning `key`; if `usable` refuses it, the next one clockwise on the
    /// ring that it accepts (so only the keys of an unusable endpoint move).
    pub fn pick_where(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        let start = self.points.partition_point(|&(p, _)| p < key);
        let mut refused = u32::MAX;
        for k in 0..n {
            let idx = self.points[(start + k) % n].1;
            if idx == refused {
                continue;
            }
            if usable(idx as usize) {
                return Some(idx as usize);
            }
            refused = idx;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addrs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn spreads_keys() {
        let a = addrs(4);
        let ring = Ring::new(&a.iter().map(|s| (s.as_str(), 1)).collect::<Vec<_>>());
        let mut counts = [0usize; 4];
        for k in 0..40_000u32 {
            counts[ring.pick(hash_bytes(&k.to_le_bytes()))] += 1;
        }
        for c in counts {
            assert!((7_000..13_000).contains(&c), "{counts:?}");
        }
    }

    proptest! {
        /// Removing one endpoint moves only the keys that were on it.
        #[test]
        fn minimal_remapping(n in 2usize..8, removed in 0usize..8, keys in proptest::collection::vec(any::<u64>(), 1..200)) {
            let removed = removed % n;
            let a = addrs(n);
            let full = Ring::new(&a.iter().map(|s| (s.as_str(), 1)).collect::<Vec<_>>());
            let kept: Vec<&String> = a.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, s)| s).collect();
            let less = Ring::new(&kept.iter().map(|s| (s.as_str(), 1)).collect::<Vec<_>>());
            for k in keys {
                let before = full.pick(k);
                if before != removed {
                    let after = kept[less.pick(k)];
                    prop_assert_eq!(after, &a[before]);
                }
            }
        }
    }
}
