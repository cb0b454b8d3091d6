//! One worker's idle warm instances of one plugin, over every route that uses it: sized by
//! demand, not by route count. An instance is bound to one route's config (its key here);
//! a call takes one of its route's, or the caller makes a fresh one. A returned instance
//! is kept while its route has fewer than `per_key` idle and the plugin fewer than `max`
//! (the least recently returned one goes first); a sweeper task drops the ones idle for
//! longer than the idle timeout. No clock is read on the request path: the sweeper counts
//! its ticks (half an idle timeout each), and an instance remembers the tick it came back in.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// An instance idle for this many sweeper ticks (of half an idle timeout) or more is
/// dropped: after between 1 and 1.5 idle timeouts.
const IDLE_TICKS: u64 = 3;

/// The idle instances (`T`) of one plugin in one worker, keyed by the route binding they
/// were configured for, oldest first.
pub struct Idle<T> {
    entries: VecDeque<Entry<T>>,
    /// Most idle instances kept, over all keys.
    max: usize,
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
    pub fn new(max: usize) -> Self {
        Idle {
            entries: VecDeque::new(),
            max,
            tick: 0,
            swept: false,
        }
    }

    /// The most recently returned idle instance of `key`.
    pub fn take(&mut self, key: usize) -> Option<T> {
        let at = self.entries.iter().rposition(|e| e.key == key)?;
        self.entries.remove(at).map(|e| e.value)
    }

    /// Keeps `value` as an idle instance of `key`, unless `key` already has `per_key`:
    /// then `value` comes back, to be dropped. When the store is full, the least recently
    /// returned instance (of any key) makes room and comes back instead.
    pub fn put(&mut self, key: usize, value: T, per_key: usize) -> Option<T> {
        if self.count(key) >= per_key {
            return Some(value);
        }
        let evicted = if self.entries.len() >= self.max {
            self.entries.pop_front().map(|e| e.value)
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

    /// One sweeper tick: the instances idle for [`IDLE_TICKS`] ticks, to be dropped.
    pub fn tick(&mut self) -> Vec<T> {
        self.tick += 1;
        let mut expired = Vec::new();
        while self
            .entries
            .front()
            .is_some_and(|e| self.tick - e.tick >= IDLE_TICKS)
        {
            expired.extend(self.entries.pop_front().map(|e| e.value));
        }
        expired
    }

    /// Marks the store as swept; true the first time, when the caller starts the sweeper.
    pub fn start_sweeping(&mut self) -> bool {
        !std::mem::replace(&mut self.swept, true)
    }
}

/// Ticks `idle` every half `idle_timeout` until the store is gone (the worker's gateway was
/// replaced by a reload). Expired instances are dropped outside the lock.
pub async fn sweep<T: Send + 'static>(idle: Weak<Mutex<Idle<T>>>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(1));
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(idle) = idle.upgrade() else { return };
        let expired = idle.lock().expect("pool lock").tick();
        drop(idle);
        drop(expired);
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
        let mut idle = Idle::new(8);
        assert_eq!(idle.put(1, "a1", 8), None);
        assert_eq!(idle.put(2, "b1", 8), None);
        assert_eq!(idle.put(1, "a2", 8), None);
        assert_eq!(idle.take(1), Some("a2"));
        assert_eq!(idle.take(1), Some("a1"));
        assert_eq!(idle.take(1), None);
        assert_eq!(idle.take(2), Some("b1"));
        assert!(idle.is_empty());
    }

    #[test]
    fn per_key_limit_refuses_the_returned_instance() {
        let mut idle = Idle::new(8);
        assert_eq!(idle.put(1, 10, 2), None);
        assert_eq!(idle.put(1, 11, 2), None);
        assert_eq!(idle.put(1, 12, 2), Some(12));
        assert_eq!(idle.put(2, 20, 2), None);
        assert_eq!((idle.count(1), idle.count(2), idle.len()), (2, 1, 3));
    }

    #[test]
    fn a_full_store_evicts_the_least_recently_returned_of_any_key() {
        let mut idle = Idle::new(3);
        for k in 0..3 {
            assert_eq!(idle.put(k, k * 10, 8), None);
        }
        // Key 0's instance is used and comes back: key 1's is now the oldest.
        assert_eq!(idle.take(0), Some(0));
        assert_eq!(idle.put(0, 0, 8), None);
        assert_eq!(idle.put(7, 70, 8), Some(10));
        assert_eq!(idle.len(), 3);
        assert_eq!(idle.take(1), None);
        assert_eq!(idle.take(7), Some(70));
    }

    #[test]
    fn ticks_expire_instances_idle_for_three_ticks_oldest_first() {
        let mut idle = Idle::new(8);
        idle.put(1, "old", 8);
        assert!(idle.tick().is_empty());
        idle.put(2, "new", 8);
        assert!(idle.tick().is_empty());
        assert_eq!(idle.tick(), vec!["old"]);
        assert_eq!(idle.tick(), vec!["new"]);
        assert!(idle.is_empty());
        // Being used restarts the count.
        idle.put(3, "used", 8);
        idle.tick();
        idle.tick();
        let v = idle.take(3).unwrap();
        idle.put(3, v, 8);
        assert!(idle.tick().is_empty());
        assert!(idle.tick().is_empty());
        assert_eq!(idle.tick(), vec!["used"]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_sweeper_drops_instances_idle_past_the_timeout() {
        let idle = Arc::new(Mutex::new(Idle::new(8)));
        idle.lock().unwrap().put(1, "a", 8);
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
