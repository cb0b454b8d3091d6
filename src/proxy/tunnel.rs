//! An upgraded connection after the switch (101, or 200 to an HTTP/2 extended CONNECT):
//! the bytes are copied both ways through one fixed buffer per direction, never gathered,
//! until one side closes (what it sent is delivered and the other side's write half shut,
//! then both connections are closed — nginx does the same; half-closed tunnels are not
//! kept), one fails, or the gateway ends it — `idle_timeout` (no
//! byte either way), `max_duration`, or the drain at shutdown. Its access-log line is
//! written when it ends.
//!
//! The tunnel holds everything it needs (its route's bounds and metric handles, the
//! endpoint's [`ActiveGuard`], the server's [`Lease`]), not the gateway, so a reload does
//! not touch it and it counts in `least_connections` and the in-flight gauges while open.
//!
//! When the gateway ends a WebSocket tunnel it sends each side a close frame 1001 ("going
//! away") if it can do so safely: it does not parse messages, but it follows the frame
//! headers going by ([`Frames`]: a few bytes of state, no buffering), so it knows whether
//! the bytes written so far end on a frame boundary. A close frame is written only there
//! (a control frame may come between the fragments of a message, RFC 6455 §5.4), and only
//! if no close frame has gone that way yet. Otherwise the side's TCP connection is just
//! closed.

use super::access_log::TunnelEnd;
use super::body::Handover;
use crate::config::TunnelConfig;
use crate::limits::Outcome;
use crate::metrics::{ClosedBy, TunnelMetrics};
use crate::upstream::ActiveGuard;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

/// The copy buffer of one direction (tokio's `copy_bidirectional` uses 8 KiB too).
const BUFFER: usize = 8 * 1024;

/// How long the gateway spends, when it ends a tunnel, writing what it already read and
/// the close frames.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How much of `drain_timeout` a tunnel is left at shutdown: the rest is for its close
/// frames, before the process exits at `drain_timeout`.
fn drain_grace(drain_timeout: Duration) -> Duration {
    drain_timeout.saturating_sub((drain_timeout / 4).min(Duration::from_millis(250)))
}

/// What the server lends an upgraded connection: a hold that keeps the client connection
/// counted as busy (under `max_connections`, and waited for at the drain) for the
/// tunnel's life, and the drain signal.
pub struct Lease {
    pub hold: Box<dyn Send + Sync>,
    /// Turns `true` when the server starts draining.
    pub drain: watch::Receiver<bool>,
}

/// Reserves a place under a route's `tunnel.max_connections`; the place is given back
/// when dropped.
pub struct OpenSlot(prometheus::IntGauge);

impl OpenSlot {
    /// A place if fewer than `cap` are open. Counted first and checked after, so racing
    /// opens may both be refused near the cap but never both admitted over it.
    pub fn reserve(open: &prometheus::IntGauge, cap: usize) -> Option<Self> {
        open.inc();
        let slot = OpenSlot(open.clone());
        (open.get() <= cap as i64).then_some(slot)
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An upgraded connection about to start: both sides' pending upgrades and what bounds
/// and records it.
pub struct Tunnel {
    pub protocol: Box<str>,
    pub client: OnUpgrade,
    pub upstream: OnUpgrade,
    pub bounds: TunnelConfig,
    pub drain_timeout: Duration,
    pub metrics: TunnelMetrics,
    pub slot: OpenSlot,
    /// Counts the tunnel against its endpoint (`least_connections`, active gauge).
    pub guard: ActiveGuard,
    pub lease: Option<Lease>,
    /// The access-log record and the limits' reservations, sent once the switch has
    /// been answered.
    pub log: oneshot::Receiver<Handover>,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct End {
    by: ClosedBy,
    reason: &'static str,
}

impl End {
    const fn new(by: ClosedBy, reason: &'static str) -> Self {
        End { by, reason }
    }
}

impl Tunnel {
    /// Runs the tunnel to its end (spawned on the worker that answered the switch).
    pub async fn run(self) {
        let Tunnel {
            protocol,
            client,
            upstream,
            bounds,
            drain_timeout,
            metrics,
            slot,
            guard,
            lease,
            log,
        } = self;
        let started = Instant::now();
        let websocket = protocol.eq_ignore_ascii_case("websocket");
        let (end, to_upstream, to_client) = match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => {
                let mut t = Copying::new(TokioIo::new(c), TokioIo::new(u), websocket, &metrics);
                let deadline = started + bounds.max_duration;
                let end = t
                    .run(bounds.idle_timeout, deadline, drain_timeout, lease)
                    .await;
                (end, t.up.bytes, t.down.bytes)
            }
            (Err(e), _) => {
                tracing::debug!(error = %e, "client side of an upgrade failed");
                (End::new(ClosedBy::Client, "upgrade_failed"), 0, 0)
            }
            (_, Err(e)) => {
                tracing::debug!(error = %e, "upstream side of an upgrade failed");
                (End::new(ClosedBy::Upstream, "upgrade_failed"), 0, 0)
            }
        };
        metrics.closed(end.by).inc();
        drop((guard, slot));
        let Ok(handover) = log.await else { return };
        if let Some(admission) = handover.admission {
            admission.settle(Outcome::new(None, None, false));
        }
        if let Some(log) = handover.log {
            log.emit(
                to_client,
                Some(&TunnelEnd {
                    protocol,
                    to_upstream,
                    closed_by: end.by,
                    reason: end.reason,
                }),
            );
        }
    }
}

/// Both directions of a running tunnel.
struct Copying<C, U> {
    client: C,
    upstream: U,
    /// Client to upstream.
    up: Pipe,
    /// Upstream to client.
    down: Pipe,
}

impl<C, U> Copying<C, U>
where
    C: Stream,
    U: Stream,
{
    fn new(client: C, upstream: U, websocket: bool, m: &TunnelMetrics) -> Self {
        Copying {
            client,
            upstream,
            up: Pipe::new(websocket.then(Frames::default), m.to_upstream.clone()),
            down: Pipe::new(websocket.then(Frames::default), m.to_client.clone()),
        }
    }

    /// Copies until the tunnel ends; if the gateway ends it, closes both sides.
    async fn run(
        &mut self,
        idle: Duration,
        deadline: Instant,
        drain_timeout: Duration,
        lease: Option<Lease>,
    ) -> End {
        let mut drain = lease.as_ref().map(|l| l.drain.clone());
        let draining = async {
            match drain.as_mut() {
                Some(d) => {
                    // An error: the server is gone, nothing waits for this tunnel.
                    if d.wait_for(|v| *v).await.is_ok() {
                        tokio::time::sleep(drain_grace(drain_timeout)).await;
                        return;
                    }
                    std::future::pending().await
                }
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            end = self.copy(idle) => end,
            () = tokio::time::sleep_until(deadline) => End::new(ClosedBy::Gateway, "max_duration"),
            () = draining => End::new(ClosedBy::Gateway, "shutdown"),
        };
        if end.by == ClosedBy::Gateway {
            let _ = tokio::time::timeout(CLOSE_GRACE, self.close()).await;
        }
        drop(lease);
        end
    }

    /// Copies both ways until one side closes (its direction is finished and the other
    /// side's write half shut, then both are dropped, as nginx does), one fails, or
    /// nothing has moved for `idle`.
    async fn copy(&mut self, idle: Duration) -> End {
        let Copying {
            client,
            upstream,
            up,
            down,
        } = self;
        let mut last = Instant::now();
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(idle));
        poll_fn(|cx| {
            let mut moved = false;
            if let Some(end) = up.step(cx, &mut *client, &mut *upstream, Side::Client, &mut moved) {
                return Poll::Ready(end);
            }
            if let Some(end) =
                down.step(cx, &mut *upstream, &mut *client, Side::Upstream, &mut moved)
            {
                return Poll::Ready(end);
            }
            if moved {
                last = Instant::now();
            }
            // The timer is moved only when it fires, not on every chunk.
            while timer.as_mut().poll(cx).is_ready() {
                let due = last + idle;
                if Instant::now() >= due {
                    return Poll::Ready(End::new(ClosedBy::Gateway, "idle_timeout"));
                }
                timer.as_mut().reset(due);
            }
            Poll::Pending
        })
        .await
    }

    /// The gateway ends the tunnel: what was read is written, then a WebSocket close
    /// 1001 where a frame boundary allows it, then each side's write half is shut.
    async fn close(&mut self) {
        let to_upstream = close_to_upstream();
        let _ = tokio::join!(
            self.down.finish(&mut self.client, &CLOSE_TO_CLIENT),
            self.up.finish(&mut self.upstream, &to_upstream),
        );
    }
}

/// A close frame 1001 "going away" as a server sends it (unmasked, RFC 6455 §5.5.1).
const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// The same as a client sends it: masked with a fresh key (RFC 6455 §5.3).
fn close_to_upstream() -> [u8; 8] {
    let key = (crate::hash::fast_rand() as u32).to_be_bytes();
    [
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        0x03 ^ key[0],
        0xE9 ^ key[1],
    ]
}

/// Which side a pipe reads from.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

impl Side {
    fn reader(self) -> ClosedBy {
        match self {
            Side::Client => ClosedBy::Client,
            Side::Upstream => ClosedBy::Upstream,
        }
    }

    fn writer(self) -> ClosedBy {
        match self {
            Side::Client => ClosedBy::Upstream,
            Side::Upstream => ClosedBy::Client,
        }
    }
}

/// Either end of a tunnel, as a pipe uses it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A pipe's failure, by the end it came from.
enum Failed {
    Read(io::Error),
    Write(io::Error),
}

/// One direction: a fixed buffer, what of it is still to be written, and the frame
/// boundaries when the protocol is WebSocket.
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The reader has ended.
    eof: bool,
    /// The writer was shut down after `eof` (the direction is done).
    done: bool,
    /// Bytes written since the last flush.
    dirty: bool,
    bytes: u64,
    counter: prometheus::IntCounter,
    frames: Option<Frames>,
}

impl Pipe {
    fn new(frames: Option<Frames>, counter: prometheus::IntCounter) -> Self {
        Pipe {
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            done: false,
            dirty: false,
            bytes: 0,
            counter,
            frames,
        }
    }

    /// One poll of this direction: `Some` when it has ended (`eof`: `r` ended and `w` was
    /// shut down; `reset`: either failed).
    fn step(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut dyn Stream,
        w: &mut dyn Stream,
        side: Side,
        moved: &mut bool,
    ) -> Option<End> {
        if self.done {
            return None;
        }
        match self.poll_copy(cx, r, w, moved) {
            Poll::Pending => None,
            Poll::Ready(Ok(())) => {
                self.done = true;
                Some(End::new(side.reader(), "eof"))
            }
            Poll::Ready(Err(Failed::Read(e))) => {
                tracing::debug!(error = %e, from = side.reader().as_str(), "tunnel read failed");
                Some(End::new(side.reader(), "reset"))
            }
            Poll::Ready(Err(Failed::Write(e))) => {
                tracing::debug!(error = %e, to = side.writer().as_str(), "tunnel write failed");
                Some(End::new(side.writer(), "reset"))
            }
        }
    }

    /// Moves bytes from `r` to `w` until both would wait; ready when `r` has ended and
    /// `w` has been shut down.
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut dyn Stream,
        w: &mut dyn Stream,
        moved: &mut bool,
    ) -> Poll<Result<(), Failed>> {
        loop {
            if self.start == self.end && !self.eof {
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            if let Some(f) = &mut self.frames {
                                f.feed(&self.buf[..n]);
                            }
                            (self.start, self.end) = (0, n);
                            *moved = true;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Read(e))),
                    Poll::Pending => {
                        if self.dirty {
                            ready!(Pin::new(&mut *w).poll_flush(cx)).map_err(Failed::Write)?;
                            self.dirty = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.start < self.end {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.start..self.end]))
                    .map_err(Failed::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(Failed::Write(io::ErrorKind::WriteZero.into())));
                }
                self.start += n;
                self.bytes += n as u64;
                self.counter.inc_by(n as u64);
                self.dirty = true;
                *moved = true;
            }
            if self.eof {
                // Shutting down flushes first.
                ready!(Pin::new(&mut *w).poll_shutdown(cx)).map_err(Failed::Write)?;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Writes what was read and not yet written, then `close` if this direction is a
    /// WebSocket at a frame boundary that has not carried a close frame, then shuts `w`.
    async fn finish(&mut self, w: &mut dyn Stream, close: &[u8]) {
        if self.done {
            return;
        }
        if w.write_all(&self.buf[self.start..self.end]).await.is_err() {
            return;
        }
        self.start = self.end;
        if self.frames.as_ref().is_some_and(Frames::may_close) {
            let _ = w.write_all(close).await;
        }
        let _ = w.shutdown().await;
        self.done = true;
    }
}

/// Where a WebSocket byte stream is, frame by frame (RFC 6455 §5.2): in a frame header
/// (its bytes so far) or in a payload (how much is left). Headers are 2–14 bytes; the
/// payload is skipped, never looked at.
#[derive(Default, Debug)]
struct Frames {
    header: [u8; 14],
    have: usize,
    payload: u64,
    /// A close frame has gone by.
    closed: bool,
}

impl Frames {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload > 0 {
                let k = self.payload.min(data.len() as u64);
                self.payload -= k;
                data = &data[k as usize..];
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.have >= 2 && self.have == self.header_len() {
                self.payload = self.payload_len();
                self.closed |= self.header[0] & 0x0F == 0x8;
                self.have = 0;
            }
        }
    }

    /// The length of the header being read (known from its second byte).
    fn header_len(&self) -> usize {
        let ext = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7F {
            126 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            n => n as u64,
        }
    }

    /// Whether a close frame may be written now: at a frame boundary, none sent yet.
    fn may_close(&self) -> bool {
        self.have == 0 && self.payload == 0 && !self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0xAB, len));
        f
    }

    #[test]
    fn frame_boundaries_are_followed_across_any_split() {
        let mut stream = Vec::new();
        for (op, masked, len) in [
            (1, false, 5),
            (2, true, 300),
            (9, false, 0),
            (2, false, 70_000),
            (1, true, 125),
        ] {
            stream.extend(frame(op, masked, len));
        }
        for chunk in [1, 2, 3, 7, 100, 8192, stream.len()] {
            let mut f = Frames::default();
            for c in stream.chunks(chunk) {
                f.feed(c);
            }
            assert!(f.may_close(), "chunk {chunk}: {f:?}");
        }
        let mut f = Frames::default();
        f.feed(&stream[..stream.len() - 1]);
        assert!(!f.may_close(), "inside a payload");
        let mut f = Frames::default();
        f.feed(&frame(2, false, 70_000)[..3]);
        assert!(!f.may_close(), "inside a header");
        let mut f = Frames::default();
        f.feed(&frame(8, false, 2));
        assert!(!f.may_close(), "a close frame went by");
    }

    #[test]
    fn the_close_frames_say_going_away() {
        let mut f = Frames::default();
        f.feed(&CLOSE_TO_CLIENT);
        assert!(f.closed && f.have == 0 && f.payload == 0);
        let mut f = Frames::default();
        let masked = close_to_upstream();
        f.feed(&masked);
        assert!(f.closed && f.have == 0 && f.payload == 0);
        let code = [masked[6] ^ masked[2], masked[7] ^ masked[3]];
        assert_eq!(code, [0x03, 0xE9]);
        assert_eq!(
            u16::from_be_bytes([CLOSE_TO_CLIENT[2], CLOSE_TO_CLIENT[3]]),
            1001
        );
    }

    #[test]
    fn a_slot_is_refused_over_the_cap_and_given_back() {
        let g = prometheus::IntGauge::new("t", "t").unwrap();
        let a = OpenSlot::reserve(&g, 2).unwrap();
        let b = OpenSlot::reserve(&g, 2).unwrap();
        assert!(OpenSlot::reserve(&g, 2).is_none());
        assert_eq!(g.get(), 2);
        drop(a);
        let _c = OpenSlot::reserve(&g, 2).unwrap();
        drop(b);
        assert_eq!(g.get(), 1);
    }

    #[test]
    fn the_drain_leaves_time_for_the_close() {
        assert_eq!(
            drain_grace(Duration::from_secs(30)),
            Duration::from_millis(29_750)
        );
        assert_eq!(
            drain_grace(Duration::from_millis(400)),
            Duration::from_millis(300)
        );
        assert_eq!(drain_grace(Duration::ZERO), Duration::ZERO);
    }
}
