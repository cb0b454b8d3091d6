//! One worker's idle warm instances of one plugin, over every route that uses it: sized by
//! demand, not by route count. An instance is bound to one route's config (its key here);
//! a call takes one of its route's, or the caller makes a fresh one. A returned instance
//! is always kept: when the plugin already has `max` idle, the least recently returned
//! instance of another route makes room, and when they are all its own route's, the
//! store grows past `max` for a while. A route whose calls wait (on the network, the
//! key-value store) thus keeps as many instances as it has calls in flight instead of
//! dropping and remaking them — which would save no memory while the calls last, and
//! costs a componentize-py plugin milliseconds of instantiation each. A sweeper task
//! trims each route back to `per_key` idle and the plugin to `max` once the spare
//! instances have gone unused for half an idle timeout, and drops the instances idle for
//! longer than the idle timeout. No clock is read on the request path:
//! the sweeper counts its ticks (half an idle timeout each), and an instance remembers the
//! tick it came back in.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// An instance idle for this many sweeper ticks (of half an idle timeout) or more is
/// dropped: after between 1 and 1.5 idle timeouts.
const IDLE_TICKS: u64 = 3;

/// An instance past its route's `per_key` or the plugin's `max` is dropped by a sweep once
/// it has been idle for this many ticks: a whole tick, so that a route still busy, which
/// takes its most recently returned instances first, loses only the ones it did not need
/// for that long, not ones it is about to take again (remaking those all at once stalls
/// the worker).
const SPARE_TICKS: u64 = 2;

/// The idle instances (`T`) of one plugin in one worker, keyed by the route binding they
/// were configured for, oldest first.
pub struct Idle<T> {
    entries: VecDeque<Entry<T>>,
    /// Most idle instances kept, over all keys.
    max: usize,
    /// Idle instances of one key kept past a sweep.
    per_key: usize,
    /// The sweeper's tick count.
    tick: u64,
    /// Whether a sweeper task runs for this store.
    swept: bool,
}

struct Entry<T> {
    key: usize,
    tick: u64,
    value: T,
}

impl<T> Idle<T> {
    pub fn new(max: usize, per_key: usize) -> Self {
        Idle {
            entries: VecDeque::new(),
            max,
            per_key,
            tick: 0,
            swept: false,
        }
    }

    /// The most recently returned idle instance of `key`.
    pub fn take(&mut self, key: usize) -> Option<T> {
        let at = self.entries.iter().rposition(|e| e.key == key)?;
        self.entries.remove(at).map(|e| e.value)
    }

    /// Keeps `value` as an idle instance of `key`. When the store is full, the least
    /// recently returned instance of another key makes room and comes back, to be
    /// dropped; when every idle instance is `key`'s, nothing does (see the module's doc).
    pub fn put(&mut self, key: usize, value: T) -> Option<T> {
        let evicted = if self.entries.len() >= self.max {
            let other = self.entries.iter().position(|e| e.key != key);
            other
                .and_then(|at| self.entries.remove(at))
                .map(|e| e.value)
        } else {
            None
        };
        self.entries.push_back(Entry {
            key,
            tick: self.tick,
            value,
        });
        evicted
    }

    /// Idle instances of `key`.
    pub fn count(&self, key: usize) -> usize {
        self.entries.iter().filter(|e| e.key == key).count()
    }

    /// Idle instances of every key.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One sweeper tick: the instances idle for [`IDLE_TICKS`] ticks, and those idle for
    /// [`SPARE_TICKS`] beyond their key's `per_key` most recently returned or the store's
    /// `max`, to be dropped.
    pub fn tick(&mut self) -> Vec<T> {
        self.tick += 1;
        let mut dropped = Vec::new();
        while self
            .entries
            .front()
            .is_some_and(|e| self.tick - e.tick >= IDLE_TICKS)
        {
            dropped.extend(self.entries.pop_front().map(|e| e.value));
        }
        // Newest first: a key's first `per_key` stay.
        let mut seen: HashMap<usize, usize> = HashMap::new();
        let mut kept = VecDeque::with_capacity(self.entries.len());
        while let Some(e) = self.entries.pop_back() {
            let n = seen.entry(e.key).or_default();
            *n += 1;
            let spare = *n > self.per_key || kept.len() >= self.max;
            if spare && self.tick - e.tick >= SPARE_TICKS {
                dropped.push(e.value);
            } else {
                kept.push_front(e);
            }
        }
        self.entries = kept;
        dropped
    }

    /// Marks the store as swept; true the first time, when the caller starts the sweeper.
    pub fn start_sweeping(&mut self) -> bool {
        !std::mem::replace(&mut self.swept, true)
    }
}

/// Ticks `idle` every half `idle_timeout` until the store is gone (the worker's gateway was
/// replaced by a reload). The instances a tick lets go are dropped outside the lock.
pub async fn sweep<T: Send + 'static>(idle: Weak<Mutex<Idle<T>>>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(1));
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(idle) = idle.upgrade() else { return };
        let dropped = idle.lock().expect("pool lock").tick();
        drop(idle);
        drop(dropped);
    }
}

/// Starts the sweeper of `idle` on the current runtime, once.
pub fn ensure_sweeper<T: Send + 'static>(idle: &Arc<Mutex<Idle<T>>>, idle_timeout: Duration) {
    if idle.lock().expect("pool lock").start_sweeping() {
        tokio::spawn(sweep(Arc::downgrade(idle), idle_timeout));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_its_own_keys_instances_most_recent_first() {
        let mut idle = Idle::new(8, 8);
        assert_eq!(idle.put(1, "a1"), None);
        assert_eq!(idle.put(2, "b1"), None);
        assert_eq!(idle.put(1, "a2"), None);
        assert_eq!(idle.take(1), Some("a2"));
        assert_eq!(idle.take(1), Some("a1"));
        assert_eq!(idle.take(1), None);
        assert_eq!(idle.take(2), Some("b1"));
        assert!(idle.is_empty());
    }

    #[test]
    fn a_key_keeps_what_its_calls_in_flight_returned_until_the_sweep_trims_it() {
        let mut idle = Idle::new(8, 2);
        // Four calls of key 1 were in flight at once: all four instances come back.
        for v in [10, 11, 12, 13] {
            assert_eq!(idle.put(1, v), None);
        }
        assert_eq!(idle.put(2, 20), None);
        assert_eq!((idle.count(1), idle.count(2)), (4, 1));
        // The next burst of four finds them all warm.
        let taken: Vec<_> = (0..4).map_while(|_| idle.take(1)).collect();
        assert_eq!(taken, [13, 12, 11, 10]);
        for v in taken {
            idle.put(1, v);
        }
        // A sweep spares what came back within its tick.
        assert!(idle.tick().is_empty());
        // Three calls at once in the next tick: the fourth instance went unused.
        let taken: Vec<_> = (0..3).map_while(|_| idle.take(1)).collect();
        assert_eq!(taken, [10, 11, 12]);
        for v in taken.into_iter().rev() {
            idle.put(1, v);
        }
        assert_eq!(idle.tick(), [13], "spare, and unused for a whole tick");
        // Then the route's load is over: one tick later it is back to `per_key` (and key
        // 2's instance, unused for three ticks, has expired).
        assert_eq!(idle.tick(), [20, 12]);
        assert_eq!((idle.count(1), idle.count(2)), (2, 0));
        assert_eq!(idle.take(1), Some(10));
        assert_eq!(idle.take(1), Some(11));
    }

    #[test]
    fn a_full_store_evicts_the_least_recently_returned_of_another_key() {
        let mut idle = Idle::new(3, 8);
        for k in 0..3 {
            assert_eq!(idle.put(k, k * 10), None);
        }
        // Key 0's instance is used and comes back: key 1's is now the oldest.
        assert_eq!(idle.take(0), Some(0));
        assert_eq!(idle.put(0, 0), None);
        assert_eq!(idle.put(7, 70), Some(10));
        assert_eq!(idle.len(), 3);
        assert_eq!(idle.take(1), None);
        assert_eq!(idle.take(7), Some(70));
        // Key 7 returning into a store of keys 0 and 2 evicts the older of them.
        assert_eq!(idle.put(7, 71), None, "room for 3");
        assert_eq!(idle.put(7, 72), Some(20));
    }

    #[test]
    fn a_store_full_of_one_keys_instances_grows_until_the_sweep() {
        let mut idle = Idle::new(2, 8);
        // Four calls of key 1 were in flight at once; all four come back.
        for v in [10, 11, 12, 13] {
            assert_eq!(idle.put(1, v), None);
        }
        assert_eq!(idle.len(), 4);
        // Another key's instance still makes room by evicting key 1's oldest.
        assert_eq!(idle.put(2, 20), Some(10));
        // The second sweep keeps the most recently returned `max`.
        assert!(idle.tick().is_empty());
        let mut dropped = idle.tick();
        dropped.sort();
        assert_eq!(dropped, [11, 12]);
        assert_eq!((idle.count(1), idle.count(2)), (1, 1));
        assert_eq!(idle.take(1), Some(13));
    }

    #[test]
    fn ticks_expire_instances_idle_for_three_ticks_oldest_first() {
        let mut idle = Idle::new(8, 8);
        idle.put(1, "old");
        assert!(idle.tick().is_empty());
        idle.put(2, "new");
        assert!(idle.tick().is_empty());
        assert_eq!(idle.tick(), vec!["old"]);
        assert_eq!(idle.tick(), vec!["new"]);
        assert!(idle.is_empty());
        // Being used restarts the count.
        idle.put(3, "used");
        idle.tick();
        idle.tick();
        let v = idle.take(3).unwrap();
        idle.put(3, v);
        assert!(idle.tick().is_empty());
        assert!(idle.tick().is_empty());
        assert_eq!(idle.tick(), vec!["used"]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_sweeper_drops_instances_idle_past_the_timeout() {
        let idle = Arc::new(Mutex::new(Idle::new(8, 8)));
        idle.lock().unwrap().put(1, "a");
        ensure_sweeper(&idle, Duration::from_secs(60));
        // A second call starts no second sweeper.
        ensure_sweeper(&idle, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(
            idle.lock().unwrap().len(),
            1,
            "kept within the idle timeout"
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            idle.lock().unwrap().len(),
            0,
            "dropped by 1.5 idle timeouts"
        );
        assert_eq!(
            idle.lock().unwrap().tick,
            3,
            "one sweeper, ticking every 30 s"
        );
    }
}
