//! The bounds of one client connection that hyper does not keep itself: the time to the
//! first bytes (enough of them to tell HTTP/1 from the HTTP/2 preface), the idle
//! keep-alive time (no request in flight), being closed on demand when the connection
//! cap needs room, and the drain at shutdown. hyper keeps the rest: HTTP/1's
//! `header_read_timeout` and HTTP/2's keep-alive pings.

use crate::upstream::h1::WriteNow;
use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::LazyLock;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Milliseconds since the process's first call: a clock cheap to store in an atomic.
/// tokio's clock, so that unit tests on paused time see it move.
fn now_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

/// What the acceptor, the connection's task, its requests and the connection cap share
/// about one connection. Only atomics: requests on the worker touch it, the acceptor
/// reads it when it looks for an idle connection to close.
#[derive(Debug, Default)]
pub(super) struct ConnState {
    /// Requests whose service was called and whose response body is not yet done.
    in_flight: AtomicUsize,
    /// When `in_flight` last dropped to 0 (or the connection was accepted), in
    /// [`now_ms`] time.
    idle_since: AtomicU64,
    /// Set once when the connection was asked to close (cap reached).
    closing: AtomicBool,
    close: Notify,
    /// Upgraded connections (tunnels) on this connection still open; each also counts
    /// as a request in flight.
    tunnels: AtomicUsize,
    tunnel_closed: Notify,
}

impl ConnState {
    pub(super) fn new() -> Self {
        ConnState {
            idle_since: AtomicU64::new(now_ms()),
            ..ConnState::default()
        }
    }

    /// `Some(idle since)` when no request is in flight and it is not closing already.
    pub(super) fn idle_since(&self) -> Option<u64> {
        (self.in_flight.load(Ordering::Acquire) == 0 && !self.closing.load(Ordering::Acquire))
            .then(|| self.idle_since.load(Ordering::Acquire))
    }

    /// Asks the connection to close; false if it was asked already.
    pub(super) fn close(&self) -> bool {
        if self.closing.swap(true, Ordering::AcqRel) {
            return false;
        }
        // `notify_one` keeps the permit if the task is not waiting yet.
        self.close.notify_one();
        true
    }

    #[cfg(test)]
    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Resolves when [`ConnState::close`] was called.
    pub(super) async fn closed(&self) {
        self.close.notified().await
    }

    /// Counts a request in flight until the returned guard is dropped (with the response
    /// body, or with the service future if the client left before the answer).
    pub(super) fn request(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Counts an upgraded connection (a tunnel) on this connection until the returned
    /// hold is dropped: as a request in flight (so neither the keep-alive bound nor the
    /// connection cap closes it) and in [`ConnState::tunnels_closed`], which keeps the
    /// connection's task — its place under the cap, its part in the drain — alive after
    /// hyper has handed the socket over.
    pub(super) fn tunnel(self: &std::sync::Arc<Self>) -> TunnelHold {
        self.tunnels.fetch_add(1, Ordering::AcqRel);
        TunnelHold(self.request())
    }

    /// Resolves when no tunnel of this connection is open.
    pub(super) async fn tunnels_closed(&self) {
        // One waiter (the connection's task); `notify_one` keeps a permit for it, so a
        // close between the load and the wait is not missed.
        while self.tunnels.load(Ordering::Acquire) > 0 {
            self.tunnel_closed.notified().await;
        }
    }

    /// Resolves when the connection has had no request in flight for `timeout`. Wakes at
    /// most once per `timeout` while requests run: no work per request.
    pub(super) async fn idle_for(&self, timeout: Duration) {
        let limit = timeout.as_millis() as u64;
        loop {
            let wait = match self.in_flight.load(Ordering::Acquire) {
                0 => {
                    let idle = now_ms().saturating_sub(self.idle_since.load(Ordering::Acquire));
                    if idle >= limit {
                        return;
                    }
                    Duration::from_millis(limit - idle)
                }
                _ => timeout,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One request in flight on a connection; see [`ConnState::request`].
pub(super) struct InFlight(std::sync::Arc<ConnState>);

/// One open tunnel on a connection; see [`ConnState::tunnel`].
pub(super) struct TunnelHold(InFlight);

impl Drop for TunnelHold {
    fn drop(&mut self) {
        let state = &self.0 .0;
        state.tunnels.fetch_sub(1, Ordering::AcqRel);
        state.tunnel_closed.notify_one();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Store the time first, so a reader that sees 0 in flight sees a fresh time.
        self.0.idle_since.store(now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until it is done.
    pub(super) struct Counted<B> {
        #[pin]
        body: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> Counted<B> {
    pub(super) fn new(body: B, in_flight: InFlight) -> Self {
        Counted {
            body,
            in_flight: Some(in_flight),
        }
    }

    pub(super) fn body_mut(&mut self) -> &mut B {
        &mut self.body
    }
}

impl<B: http_body::Body> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // Done: hyper may keep the body a while; the request is over now.
            this.in_flight.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// How [`race`] ended: the connection's future, or one of its bounds, was ready first.
pub(super) enum Race<C, B> {
    Conn(C),
    Bound(B),
}

/// What wakes a connection's task for its bounds: notes that they asked, then wakes the
/// task.
struct BoundsWoke {
    woke: AtomicBool,
    task: AtomicWaker,
}

impl Wake for BoundsWoke {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woke.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// Drives `conn` until it ends or `bounds` (the drain, the idle bound, the cap's
    /// close) resolves; see [`race`].
    pub(super) struct Raced<'c, C: ?Sized, B> {
        conn: Pin<&'c mut C>,
        #[pin]
        bounds: B,
        woke: Arc<BoundsWoke>,
    }
}

/// Drives `conn` until it ends or `bounds` (the drain, the idle bound, the cap's close)
/// resolves. `conn` is polled on every wake of the task; `bounds` only when it woke the
/// task itself, through a waker of its own. A `tokio::select!` polled all of them on every
/// wake, ~3 per request: ~1.4k instructions per request (callgrind), for bounds that
/// seldom fire. A struct rather than an `async fn`, which would hold `bounds` twice (as
/// its argument and pinned in a local) in every connection, idle ones too.
pub(super) fn race<C: Future + ?Sized, B: Future>(conn: Pin<&mut C>, bounds: B) -> Raced<'_, C, B> {
    let woke = Arc::new(BoundsWoke {
        // Polled once at the start, so that each bound registers its waker.
        woke: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    Raced { conn, bounds, woke }
}

impl<C: Future + ?Sized, B: Future> Future for Raced<'_, C, B> {
    type Output = Race<C::Output, B::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(Race::Conn(out));
        }
        // Registered before the flag is read: a bound that fires after the read wakes
        // the task through it.
        this.woke.task.register(cx.waker());
        if this.woke.woke.swap(false, Ordering::AcqRel) {
            let waker = Waker::from(this.woke.clone());
            if let Poll::Ready(out) = this.bounds.poll(&mut Context::from_waker(&waker)) {
                return Poll::Ready(Race::Bound(out));
            }
        }
        Poll::Pending
    }
}

/// Reads the first bytes of a connection within `timeout`: until there are enough to
/// tell HTTP/1 from the HTTP/2 preface (24 bytes of it, or a byte that differs from it),
/// or the client closes. Without this bound a client that sends nothing, or part of the
/// preface, would hold the connection forever (hyper-util's version detection waits
/// without a timer). Returns the stream with those bytes put back in front.
pub(super) async fn first_bytes<IO>(mut io: IO, timeout: Duration) -> io::Result<Prefixed<IO>>
where
    IO: AsyncRead + Unpin,
{
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    let read = async {
        while filled < buf.len() {
            let n = io.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
            if buf[..filled] != H2_PREFACE[..filled] {
                break;
            }
        }
        io::Result::Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within first_byte_timeout",
            ))
        }
    }
    Ok(Prefixed {
        prefix: Bytes::copy_from_slice(&buf[..filled]),
        io,
    })
}

/// A stream with bytes already read from it put back in front.
pub(super) struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    /// Puts bytes read from the stream back in front of what is still to be read (the own
    /// HTTP/1 server hands a connection to hyper with what it read and did not serve).
    pub(super) fn put_back(&mut self, bytes: Bytes) {
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else {
            let mut both = bytes::BytesMut::with_capacity(bytes.len() + self.prefix.len());
            both.extend_from_slice(&bytes);
            both.extend_from_slice(&self.prefix);
            self.prefix = both.freeze();
        }
    }

    /// Whether the client sent the HTTP/2 preface (hyper will serve it as HTTP/2; over
    /// TLS too, whatever ALPN said, since hyper-util detects the version the same way).
    pub(super) fn is_h2(&self) -> bool {
        self.prefix == H2_PREFACE[..]
    }
}

/// The start of a drain (graceful shutdown) for a set of connections, and the wait until
/// each has finished. hyper-util's `GracefulShutdown` owns the connections it watches, so a
/// connection it watches cannot also be shut down gracefully for its own reasons (idle,
/// connection cap); this one only signals, and each connection calls
/// `graceful_shutdown` itself.
pub(super) struct Drain(watch::Sender<bool>);

/// A connection's side of a [`Drain`]: held while the connection runs.
pub(super) struct DrainWatch(watch::Receiver<bool>);

impl Drain {
    pub(super) fn new() -> Self {
        Drain(watch::channel(false).0)
    }

    pub(super) fn watcher(&self) -> DrainWatch {
        DrainWatch(self.0.subscribe())
    }

    /// Tells every connection to finish and waits until all have dropped their watch.
    pub(super) async fn shutdown(self) {
        self.0.send_replace(true);
        self.0.closed().await
    }
}

impl DrainWatch {
    /// Another watch of the same drain, as a bare receiver (an upgraded connection holds
    /// one, so the drain waits for it too).
    pub(super) fn receiver(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }

    /// Resolves when the drain has started.
    pub(super) async fn started(&mut self) {
        // An error means the `Drain` is gone: nothing will wait for this connection.
        let _ = self.0.wait_for(|draining| *draining).await;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            // What else has come goes with it, so the first read holds the request's
            // head as one read would have: hyper would otherwise parse the prefix alone,
            // then grow its read buffer (a reallocation and a copy) to read the rest —
            // measured as the largest cost of a connection that carries one request.
            // Nothing more yet, or an error, is for the next read to find.
            if self.prefix.is_empty() && buf.remaining() > 0 {
                let _ = Pin::new(&mut self.io).poll_read(cx, buf);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: WriteNow> WriteNow for Prefixed<IO> {
    fn write_now(&mut self, bufs: &[std::io::IoSlice<'_>]) -> Option<io::Result<usize>> {
        self.io.write_now(bufs)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc::{UnboundedReceiver as Receiver, UnboundedSender as Sender};
    use tokio::task::JoinHandle;

    async fn first(client_sends: &[u8], close: bool) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(client_sends).await.unwrap();
        if close {
            drop(client);
        } else {
            // Kept open and silent for the rest of the test.
            std::mem::forget(client);
        }
        let mut p = first_bytes(server, Duration::from_secs(5)).await?;
        let mut out = vec![0; p.prefix.len()];
        p.read_exact(&mut out).await?;
        Ok(out)
    }

    #[tokio::test(start_paused = true)]
    async fn first_bytes_stop_where_the_version_is_known() {
        // Differs from the preface at the first byte: HTTP/1, nothing more is awaited.
        assert_eq!(first(b"G", false).await.unwrap(), b"G");
        assert_eq!(first(b"PRX", false).await.unwrap(), b"PRX");
        assert_eq!(first(H2_PREFACE, false).await.unwrap(), H2_PREFACE);
        // A client that closes early hands hyper what it sent.
        assert_eq!(first(b"PRI * ", true).await.unwrap(), b"PRI * ");
        // Silence, or a partial preface, runs into the deadline.
        for partial in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
            let e = first(partial, false).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        }
    }

    /// The first read after the version check hands over the bytes read for it and what
    /// has come since, in one piece; later reads come from the stream.
    #[tokio::test]
    async fn the_first_read_holds_the_prefix_and_what_followed() {
        use tokio::io::AsyncReadExt;
        let head = b"GET /a-path-longer-than-the-preface HTTP/1.1\r\nHost: a\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(head).await.unwrap();
        let mut p = first_bytes(server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(p.prefix.len(), H2_PREFACE.len());
        let mut buf = [0u8; 512];
        let n = p.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &head[..], "one read, the whole head");
        client.write_all(b"next").await.unwrap();
        let n = p.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"next");
        // Nothing more has come: the prefix alone, without waiting.
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut p = first_bytes(server, Duration::from_secs(5)).await.unwrap();
        let n = p.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        drop(client);
        assert_eq!(p.read(&mut buf).await.unwrap(), 0);
    }

    /// How a raced connection ended (its count, or None when a bound ended it), and how
    /// often the bounds were polled.
    type Raced = (Option<u32>, usize);

    /// A connection that wakes its task for each message and ends at the third; bounds
    /// that count their polls and end on `close`. Returns the connection's count or None
    /// (a bound ended it), and the bounds' polls.
    fn raced(close: Arc<Notify>) -> (Sender<()>, Receiver<u32>, JoinHandle<Raced>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let task = tokio::spawn(async move {
            let conn = std::pin::pin!(async move {
                let mut n = 0;
                while rx.recv().await.is_some() {
                    n += 1;
                    if n == 3 {
                        break;
                    }
                    ack_tx.send(n).unwrap();
                }
                n
            });
            let polls = AtomicUsize::new(0);
            let mut notified = std::pin::pin!(close.notified());
            let bounds = std::future::poll_fn(|cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                notified.as_mut().poll(cx)
            });
            let out = match race(conn, bounds).await {
                Race::Conn(n) => Some(n),
                Race::Bound(()) => None,
            };
            (out, polls.load(Ordering::Relaxed))
        });
        (tx, ack_rx, task)
    }

    #[tokio::test]
    async fn race_polls_the_bounds_only_when_they_woke_the_task() {
        let close = Arc::new(Notify::new());
        let (tx, mut acks, task) = raced(close.clone());
        for want in 1..=2 {
            tx.send(()).unwrap();
            assert_eq!(acks.recv().await, Some(want));
        }
        tx.send(()).unwrap();
        assert_eq!(
            task.await.unwrap(),
            (Some(3), 1),
            "the connection ended it; its three wakes never polled the bounds again"
        );

        let (tx, mut acks, task) = raced(close.clone());
        tx.send(()).unwrap();
        assert_eq!(acks.recv().await, Some(1));
        close.notify_one();
        assert_eq!(
            task.await.unwrap(),
            (None, 2),
            "the bound ended it, polled at the start and when it woke the task"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_for_counts_only_time_without_requests() {
        let c = Arc::new(ConnState::new());
        let req = c.request();
        let idle = tokio::spawn({
            let c = c.clone();
            async move { c.idle_for(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!idle.is_finished(), "a request is in flight");
        assert_eq!(c.idle_since(), None);
        drop(req);
        assert!(c.idle_since().is_some());
        idle.await.unwrap();
        assert!(c.close());
        assert!(!c.close(), "asked once");
        assert_eq!(
            c.idle_since(),
            None,
            "a closing connection is not offered again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_keeps_its_connection_busy_until_it_closes() {
        let c = Arc::new(ConnState::new());
        c.tunnels_closed().await;
        let hold = c.tunnel();
        assert_eq!(c.idle_since(), None, "counted in flight");
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.tunnels_closed().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished());
        drop(hold);
        waiting.await.unwrap();
        assert!(c.idle_since().is_some());
    }
}
