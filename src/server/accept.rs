//! Accepting connections: the connection cap (`server.max_connections`, closing the
//! oldest idle connection to make room), backoff on accept errors, and the descriptor
//! limit raised at start.

use super::connection::ConnState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Every open client connection of the proxy listeners. The lock is taken once when a
/// connection opens and once when it closes (and for a scan when the cap is reached),
/// never per request: requests only touch their connection's atomics.
pub(super) struct Connections {
    max: usize,
    next_id: AtomicU64,
    /// Open connections not yet asked to close (one asked to close leaves the map then,
    /// so its size is the count the cap compares).
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    /// Notified when a connection closes.
    freed: Notify,
}

/// A connection's place in [`Connections`]; dropping it (when its task ends) frees it.
pub(super) struct Registration {
    table: Arc<Connections>,
    id: u64,
    pub(super) state: Arc<ConnState>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Gone already if it was asked to close to make room.
        self.table.open.lock().unwrap().remove(&self.id);
        self.table.freed.notify_waiters();
    }
}

impl Connections {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Connections {
            max,
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            freed: Notify::new(),
        })
    }

    pub(super) fn register(self: &Arc<Self>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new());
        self.open.lock().unwrap().insert(id, state.clone());
        Registration {
            table: self.clone(),
            id,
            state,
        }
    }

    /// Asks the connection that has been idle (no request in flight) the longest, other
    /// than `except`, to close. False when every connection is busy.
    pub(super) fn close_oldest_idle(&self, except: Option<&Registration>) -> bool {
        let except = except.map(|r| r.id);
        // Chosen, taken out and told to close under one lock: no other thread can count
        // it in between.
        let mut open = self.open.lock().unwrap();
        let oldest = open
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter_map(|(id, c)| c.idle_since().map(|t| (t, *id)))
            .min_by_key(|(t, _)| *t)
            .map(|(_, id)| id);
        match oldest.and_then(|id| open.remove(&id)) {
            Some(c) => c.close(),
            None => false,
        }
    }

    /// Returns once the connection just accepted (`new`) may be served: it is under the
    /// cap, or the connection idle the longest was asked to make room. While every
    /// connection is busy it holds `new` (and the acceptor accepts no more: the kernel's
    /// backlog holds further clients) and looks again when a connection closes, or every
    /// 100ms, since a connection going idle does not wake it.
    pub(super) async fn room_for(&self, new: &Registration) {
        let mut warned = false;
        loop {
            let freed = self.freed.notified();
            let count = self.open.lock().unwrap().len();
            if count <= self.max || self.close_oldest_idle(Some(new)) {
                return;
            }
            if !warned {
                tracing::warn!(
                    max_connections = self.max,
                    "connection cap reached and every connection is busy; accepting paused"
                );
                warned = true;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
        }
    }
}

/// Delays between failed accepts: from 5ms doubling to 1s, reset by a success. A failed
/// accept (out of descriptors above all) leaves the connection in the backlog, so
/// retrying at once would spin.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    pub(super) fn next(&mut self) -> Duration {
        let d = Self::FIRST
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        d
    }

    pub(super) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Accepts the next connection, backing off on errors. When the process is out of
/// descriptors it also asks the oldest idle connection of `conns` (if any) to close.
pub(super) async fn accept(
    l: &TcpListener,
    backoff: &mut Backoff,
    conns: Option<&Connections>,
) -> (TcpStream, std::net::SocketAddr) {
    loop {
        match l.accept().await {
            Ok(a) => {
                backoff.reset();
                return a;
            }
            Err(e) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(24 | 23)); // EMFILE, ENFILE
                if out_of_fds {
                    if let Some(c) = conns {
                        c.close_oldest_idle(None);
                    }
                }
                let delay = backoff.next();
                tracing::error!(error = %e, retry_in = ?delay, "accept failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit (many systems start processes
/// at 1024), and warns if it is still below `max_connections` plus some room for
/// listeners, upstream connections and files.
pub fn raise_nofile_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::debug!(limit, "open-file limit");
            let needed = max_connections as u64 + 256;
            if limit < needed {
                tracing::warn!(
                    limit,
                    max_connections,
                    "the open-file limit is below server.max_connections + 256: \
                     accepts may fail with 'too many open files' before the cap is reached"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.next().as_millis()).collect();
        assert_eq!(ms, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        for _ in 0..100 {
            b.next();
        }
        assert_eq!(b.next(), Backoff::MAX);
        b.reset();
        assert_eq!(b.next(), Backoff::FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_closes_the_oldest_idle_connection() {
        let conns = Connections::new(2);
        let a = conns.register();
        let busy = a.state.request();
        conns.room_for(&a).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        let b = conns.register();
        conns.room_for(&b).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        let c = conns.register();
        assert!(
            !a.state.is_closing() && !b.state.is_closing(),
            "under the cap"
        );
        // Over the cap: the oldest idle one goes (not the new one); the busy one stays
        // though it is older.
        conns.room_for(&c).await;
        assert!(b.state.is_closing());
        assert!(!a.state.is_closing() && !c.state.is_closing());
        b.state.closed().await;
        // The one asked to close no longer counts.
        tokio::time::advance(Duration::from_secs(1)).await;
        let d = conns.register();
        conns.room_for(&d).await;
        assert!(c.state.is_closing() && !d.state.is_closing());
        drop(busy);
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_cap_with_every_connection_busy_the_new_one_waits_for_one_to_close() {
        let conns = Connections::new(1);
        let a = conns.register();
        let busy = a.state.request();
        let room = tokio::spawn({
            let conns = conns.clone();
            async move {
                let b = conns.register();
                conns.room_for(&b).await;
                b
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!room.is_finished());
        drop(busy);
        drop(a);
        let b = room.await.unwrap();
        assert!(!b.state.is_closing());
    }
}
