//! A worker's HTTP/1.1 connection pool to one plain upstream: a list of idle connections
//! per endpoint, owned by one worker (so its mutex is never contended), no boxed future,
//! no pool-key hashing per request. Requests go by the gateway's own client ([`h1`]: on
//! the request's task, no spawned task or channel per exchange); upgrades and CONNECT by
//! hyper's connection API (`hyper::client::conn::http1`). A connection goes back to the pool when its response
//! body has been read to the end ([`PooledBody`]); one whose body was dropped part-way, or
//! that the upstream closed, is not reused.
//!
//! Measured with callgrind (user-space instructions per request of a plain route, release
//! build): 65.3k with hyper-util's legacy client, 60.8k with this pool on hyper's
//! connection API; later, 47.6k → 41.7k with the gateway's own client for GETs.

use super::body::UpstreamBody;
use super::call::Added;
use super::classify::{self, TryError};
use super::client::within;
use super::h1;
use crate::BoxError;
use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, Uri};
use http_body::Body as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service as _;

/// Idle connections by endpoint: a list, searched in order — an upstream has a handful
/// of endpoints, and comparing a few authorities costs less than hashing one (SipHash was
/// 3% of the instructions per request with a map).
type Idle<C> = Vec<(Authority, Vec<(C, Instant)>)>;
type Shared<C> = Arc<Mutex<Idle<C>>>;
type HyperConn = SendRequest<UpstreamBody>;

pub struct Http1Pool {
    /// Connections of the gateway's own client (`h1`), and hyper's.
    own: Shared<Box<h1::Conn>>,
    idle: Shared<HyperConn>,
    connector: HttpConnector,
    idle_timeout: Duration,
    max_idle: usize,
    /// Whether this pool's reaper task runs (started by the first connection returned).
    reaping: std::sync::atomic::AtomicBool,
}

impl Http1Pool {
    pub fn new(connector: HttpConnector, idle_timeout: Duration, max_idle: usize) -> Self {
        Http1Pool {
            own: Arc::default(),
            idle: Arc::default(),
            connector,
            idle_timeout,
            max_idle,
            reaping: Default::default(),
        }
    }

    /// Sends the head in `slot` (its URI absolute: the endpoint is its authority) and
    /// `body` on an idle connection to that endpoint, or a new one: by the gateway's own
    /// client unless it asks for an upgrade ([`h1::fits`]), else by hyper's. A pooled
    /// connection the upstream closed before it took the request is replaced by a new
    /// connection, with the same request. The own client reads the head where it is, so
    /// it stays in `slot` (see [`SendTry::send`](super::client::SendTry::send)) and
    /// `added` is written as it is encoded; without `keep` the response may take its
    /// header map. hyper's client consumes it (with `added` inserted), leaving a copy with
    /// `keep`, and gives it back (without `added`) when no connection could be made. `at`:
    /// the try's start (the caller read it), for the idle connections' age; the clock is
    /// read again only for a connection taken after a reused one failed. `until`: the
    /// try's deadline (see [`h1::Conn::exchange`] for how the own client keeps it).
    pub async fn send(
        &self,
        slot: &mut Option<http::request::Parts>,
        added: Added<'_>,
        body: UpstreamBody,
        keep: bool,
        at: Instant,
        until: Instant,
    ) -> Result<Response<PooledBody>, TryError> {
        let head = slot.as_ref().expect("a head to send");
        let Some(authority) = head.uri.authority().cloned() else {
            return Err(TryError::Failed("upstream URI without an authority".into()));
        };
        let whole = match &body {
            UpstreamBody::Buffered(b) => b.size_hint().exact(),
            UpstreamBody::Stream(b) if b.is_end_stream() => Some(0),
            UpstreamBody::Stream(_) => None,
        };
        if !h1::fits(&head.method, &head.headers, whole) {
            let req = Request::from_parts(super::client::take_head(slot, added, keep), body);
            return within(until, self.send_hyper(req, authority, slot, added, at)).await;
        }
        let body = match whole {
            Some(_) => h1::Outgoing::Whole(in_memory_bytes(body)),
            None => h1::Outgoing::Stream(body),
        };
        // Read where it is: it stays for a later try, this one dropped (timed out) or not.
        let head = slot.as_mut().expect("a head to send");
        self.send_own(head, added, body, authority, keep, at, until)
            .await
    }

    /// By the gateway's own client. A reused connection that closes before any of a
    /// response came is the upstream's close racing the request (it had not seen the
    /// close yet): an idempotent request whose body is in memory is sent again on
    /// another connection.
    #[allow(clippy::too_many_arguments)] // `send`'s, with the head and body as it sends them
    async fn send_own(
        &self,
        head: &mut http::request::Parts,
        added: Added<'_>,
        mut body: h1::Outgoing,
        authority: Authority,
        keep: bool,
        mut at: Instant,
        until: Instant,
    ) -> Result<Response<PooledBody>, TryError> {
        let idempotent = super::call::idempotent(&head.method);
        loop {
            let (mut conn, pooled) =
                match checkout(&self.own, &authority, self.idle_timeout, at, |c| {
                    c.is_idle()
                }) {
                    Some(conn) => (conn, true),
                    None => {
                        let io = within(until, self.connect(head.uri.clone())).await?;
                        (h1::Conn::new(io), false)
                    }
                };
            let Some(exchanged) = conn.exchange(head, added, &mut body, keep, until).await else {
                return Err(TryError::Timeout);
            };
            match exchanged {
                Ok(answer) => {
                    self.start_reaper();
                    let back = self.back(&self.own, authority);
                    let (parts, body) = h1::Body::new(conn, answer, back);
                    return Ok(Response::from_parts(parts, PooledBody::Own(Box::new(body))));
                }
                Err(e) if pooled && !e.received && idempotent && body.resendable() => {
                    // The next connection's age is judged now, not at the try's start.
                    at = Instant::now();
                }
                Err(e) => return Err(classify::error(&*e.error, false)),
            }
        }
    }

    /// By hyper's client.
    async fn send_hyper(
        &self,
        mut req: Request<UpstreamBody>,
        authority: Authority,
        slot: &mut Option<http::request::Parts>,
        added: Added<'_>,
        mut at: Instant,
    ) -> Result<Response<PooledBody>, TryError> {
        // HTTP/1.1 requests carry the origin form (`/path?query`).
        let origin = req
            .uri()
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        let absolute = std::mem::replace(req.uri_mut(), origin);
        loop {
            let (mut conn, pooled) =
                match checkout(&self.idle, &authority, self.idle_timeout, at, |c| {
                    c.is_ready()
                }) {
                    Some(conn) => (conn, true),
                    None => match self.handshake(absolute.clone()).await {
                        Ok(conn) => (conn, false),
                        Err(e) => {
                            let (mut head, _body) = req.into_parts();
                            head.uri = absolute;
                            // A later try adds its own (the own client writes them
                            // without looking in the map).
                            for (name, _) in added.fields.iter() {
                                head.headers.remove(name);
                            }
                            *slot = Some(head);
                            return Err(e);
                        }
                    },
                };
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    self.start_reaper();
                    let back = Some((self.back(&self.idle, authority), conn));
                    return Ok(
                        resp.map(|inner| PooledBody::Hyper(Box::new(HyperBody { inner, back })))
                    );
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the pooled connection had closed; try the next one.
                    Some(back) if pooled => {
                        req = back;
                        at = Instant::now();
                    }
                    _ => return Err(classify::error(e.error(), false)),
                },
            }
        }
    }

    async fn connect(&self, to: Uri) -> Result<tokio::net::TcpStream, TryError> {
        let tcp = self
            .connector
            .clone()
            .call(to)
            .await
            .map_err(|e| classify::error(&e, true))?;
        Ok(tcp.into_inner())
    }

    async fn handshake(&self, to: Uri) -> Result<HyperConn, TryError> {
        let tcp = TokioIo::new(self.connect(to).await?);
        let (send, conn) = http1::Builder::new()
            .handshake::<_, UpstreamBody>(tcp)
            .await
            .map_err(|e| classify::error(&e, true))?;
        // With upgrades: a 101 hands the connection to the tunnel (`proxy::upgrade`).
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(send)
    }

    fn back<C>(&self, pool: &Shared<C>, to: Authority) -> Return<C> {
        Return {
            pool: Arc::downgrade(pool),
            to,
            max_idle: self.max_idle,
        }
    }

    /// Closes connections idle for longer than `idle_timeout`, or that the upstream
    /// closed, every `idle_timeout`, for as long as the pool lives; started on the worker
    /// that uses the pool.
    fn start_reaper(&self) {
        use std::sync::atomic::Ordering;
        if self.reaping.load(Ordering::Relaxed) || self.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let every = self.idle_timeout;
        let (own, hyper) = (Arc::downgrade(&self.own), Arc::downgrade(&self.idle));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (Some(own), Some(hyper)) = (own.upgrade(), hyper.upgrade()) else {
                    return;
                };
                reap(&own, every, |c| c.is_idle());
                reap(&hyper, every, |c| !c.is_closed());
            }
        });
    }
}

/// The body of a request the caller found in memory (see `Http1Pool::send`).
fn in_memory_bytes(body: UpstreamBody) -> Bytes {
    match body {
        UpstreamBody::Buffered(mut full) => {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match Pin::new(&mut full).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
                _ => Bytes::new(),
            }
        }
        UpstreamBody::Stream(_) => Bytes::new(),
    }
}

/// The most recently used idle connection to `to` that `usable` accepts.
fn checkout<C>(
    pool: &Shared<C>,
    to: &Authority,
    idle_timeout: Duration,
    now: Instant,
    mut usable: impl FnMut(&mut C) -> bool,
) -> Option<C> {
    let mut idle = pool.lock().unwrap_or_else(|p| p.into_inner());
    let (_, conns) = idle.iter_mut().find(|(a, _)| same(a, to))?;
    while let Some((mut conn, since)) = conns.pop() {
        if now.saturating_duration_since(since) < idle_timeout && usable(&mut conn) {
            return Some(conn);
        }
    }
    None
}

/// Whether two pool keys are the same authority, byte for byte. `Authority`'s `==` ignores
/// ASCII case one byte at a time (~200 instructions for `127.0.0.1:8080`, twice per
/// request: the checkout and the return); a pool's keys are made from its endpoints'
/// addresses, so the same endpoint always spells its key the same way.
fn same(a: &Authority, b: &Authority) -> bool {
    a.as_str() == b.as_str()
}

fn reap<C>(pool: &Shared<C>, every: Duration, mut usable: impl FnMut(&mut C) -> bool) {
    let mut idle = pool.lock().unwrap_or_else(|p| p.into_inner());
    idle.retain_mut(|(_, conns)| {
        conns.retain_mut(|(c, since)| since.elapsed() < every && usable(c));
        !conns.is_empty()
    });
}

/// What puts a connection back when its response has been read.
pub struct Return<C> {
    pool: Weak<Mutex<Idle<C>>>,
    to: Authority,
    max_idle: usize,
}

impl<C> Return<C> {
    pub fn put_back(self, conn: C) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut idle = pool.lock().unwrap_or_else(|p| p.into_inner());
        let conns = match idle.iter().position(|(a, _)| same(a, &self.to)) {
            Some(i) => &mut idle[i].1,
            None => {
                idle.push((self.to, Vec::new()));
                &mut idle.last_mut().expect("just pushed").1
            }
        };
        if conns.len() < self.max_idle {
            conns.push((conn, Instant::now()));
        }
    }
}

/// An upstream response body; at its end its connection goes back to the pool (also
/// when it is dropped at its end unpolled, as an empty body may be).
///
/// Both kinds are boxed, so the body is 16 bytes and a `Response<PooledBody>` 128: the
/// response is moved whole several times between the client and the proxy (the try's
/// result, the retry loop's match, the answer, the call's result), and above 128 bytes
/// each move is a `memcpy` call.
pub enum PooledBody {
    /// Read by the gateway's own client.
    Own(Box<h1::Body>),
    /// Read by hyper's.
    Hyper(Box<HyperBody>),
}

/// A body read by hyper's client (`back`: this pool's connection, `None` for
/// hyper-util's client, which keeps its own).
pub struct HyperBody {
    inner: Incoming,
    back: Option<(Return<HyperConn>, HyperConn)>,
}

impl HyperBody {
    fn give_back(&mut self) {
        if let Some((back, conn)) = self.back.take() {
            if !conn.is_closed() {
                back.put_back(conn);
            }
        }
    }
}

impl Drop for HyperBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

impl PooledBody {
    /// The response's head as it came, if the own client kept it so
    /// ([`h1::RawHead`]).
    pub fn take_raw_head(&mut self) -> Option<h1::RawHead> {
        match self {
            PooledBody::Own(b) => b.take_raw_head(),
            PooledBody::Hyper(_) => None,
        }
    }

    pub fn has_raw_head(&self) -> bool {
        match self {
            PooledBody::Own(b) => b.has_raw_head(),
            PooledBody::Hyper(_) => false,
        }
    }
}

impl From<Incoming> for PooledBody {
    /// A body whose connection is not this pool's (hyper-util's client keeps its own).
    fn from(inner: Incoming) -> Self {
        PooledBody::Hyper(Box::new(HyperBody { inner, back: None }))
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            PooledBody::Own(body) => Pin::new(&mut **body).poll_frame(cx),
            PooledBody::Hyper(body) => {
                let frame = Pin::new(&mut body.inner).poll_frame(cx);
                match &frame {
                    Poll::Ready(None) => body.give_back(),
                    Poll::Ready(Some(Err(_))) => body.back = None,
                    _ => {}
                }
                frame.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PooledBody::Own(body) => body.is_end_stream(),
            PooledBody::Hyper(body) => body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            PooledBody::Own(body) => body.size_hint(),
            PooledBody::Hyper(body) => body.inner.size_hint(),
        }
    }
}
