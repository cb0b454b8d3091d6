//! Listeners and connections: HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on the same
//! port, or TLS (rustls, ALPN `h2`/`http/1.1`) on listeners with a certificate;
//! keep-alive, header size and header-read-time limits, upgrades (HTTP/1.1 `Upgrade` and
//! HTTP/2 extended CONNECT, handed to `proxy::upgrade`), and graceful shutdown on
//! SIGINT/SIGTERM (stop accepting, drain in-flight requests and upgraded connections up
//! to `drain_timeout`).
//! Every connection is bounded in time (`connection.rs`) and their number is capped
//! (`accept.rs`).
//!
//! Thread per core, as nginx does with worker processes: `server.workers` threads each
//! run their own single-threaded tokio runtime with their own upstream connection pools,
//! so a request is served start to end on one thread with no cross-thread wake-ups. The
//! calling runtime accepts connections and deals them out round-robin; TLS handshakes
//! run on the worker that got the connection, so they spread over the cores too.

mod accept;
mod connection;
mod h1;

use crate::config::ServerConfig;
use crate::proxy::body::ResponseBody;
use crate::proxy::tunnel::Lease;
use crate::proxy::{ClientInfo, Gateway};
use accept::{Backoff, Connections, Registration};
use anyhow::Context as _;
use arc_swap::ArcSwap;
use connection::{ConnState, Counted, Drain, DrainWatch, InFlight, Race};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// An accepted connection, its peer, the TLS acceptor of its listener if it has one, and
/// its place under the connection cap.
type Accepted = (
    std::net::TcpStream,
    SocketAddr,
    Option<tokio_rustls::TlsAcceptor>,
    Registration,
);

/// A request being served: boxed (see `worker`). Its response's body counts as in flight
/// on the connection until it is sent.
type Handling = std::pin::Pin<
    Box<dyn Future<Output = Result<Response<Counted<ResponseBody>>, Infallible>> + Send>,
>;

/// Binds every listener of `server`, announces each on stdout as
/// `listening on http://ADDR` (`https://` for TLS listeners; tests and scripts read this),
/// then serves until `shutdown` resolves and in-flight requests have drained. Worker `i`
/// serves each request with the gateway in `workers[i]` at that moment; the admin
/// listener, if configured, serves `admin`.
pub async fn run<A, F>(
    server: &ServerConfig,
    workers: &[Arc<ArcSwap<Gateway>>],
    admin: A,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    A: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    accept::raise_nofile_limit(server.max_connections);
    let mut proxies = Vec::new();
    for l in &server.listen {
        let addr = l.address;
        proxies.push((
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
            l.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        ));
    }
    let admin_listener = match server.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on admin address {addr}"))?,
        ),
        None => None,
    };
    {
        let mut out = std::io::stdout().lock();
        for (l, tls) in &proxies {
            let scheme = if tls.is_some() { "https" } else { "http" };
            writeln!(out, "listening on {scheme}://{}", l.local_addr()?)?;
        }
        if let Some(l) = &admin_listener {
            writeln!(out, "admin listening on http://{}", l.local_addr()?)?;
        }
        out.flush()?;
    }
    for (l, tls) in &proxies {
        tracing::info!(address = %l.local_addr()?, tls = tls.is_some(), workers = server.workers, "listening");
    }

    // Workers.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut senders = Vec::new();
    let mut done = Vec::new();
    for (i, slot) in workers.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<Accepted>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let slot = slot.clone();
        let stop = stop_rx.clone();
        // Built here, before anything is accepted: built on the thread, it raced the
        // acceptors for descriptors, and a worker whose runtime could not be built
        // (EMFILE) panicked and dropped every connection dealt to it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build a worker runtime")?;
        std::thread::Builder::new()
            .name(format!("portcullis-worker-{i}"))
            .spawn(move || {
                rt.block_on(worker(slot, rx, stop));
                // Connections cut at the drain timeout end (and write their access-log
                // lines) when the runtime is dropped: before saying this worker is done.
                drop(rt);
                let _ = done_tx.send(());
            })
            .context("cannot start a worker thread")?;
        senders.push(tx);
        done.push(done_rx);
    }

    // Acceptors: deal connections out round-robin, under the connection cap.
    let conns = Connections::new(server.max_connections);
    let mut acceptors = Vec::new();
    for (l, tls) in proxies {
        let senders = senders.clone();
        let conns = conns.clone();
        acceptors.push(tokio::spawn(async move {
            let mut next = 0usize;
            let mut backoff = Backoff::default();
            loop {
                let (s, peer) = accept::accept(&l, &mut backoff, Some(&conns)).await;
                let registration = conns.register();
                conns.room_for(&registration).await;
                let Ok(s) = s.into_std() else { continue };
                if senders[next % senders.len()]
                    .send((s, peer, tls.clone(), registration))
                    .is_err()
                {
                    return;
                }
                next = next.wrapping_add(1);
            }
        }));
    }
    drop(senders);
    let admin_drain = Arc::new(Drain::new());
    if let Some(l) = admin_listener {
        let drain = admin_drain.clone();
        let builder = Arc::new(connection_builder(server));
        let bounds = Bounds::of(server);
        acceptors.push(tokio::spawn(async move {
            // Not under the cap (an operator must reach it when the proxy is full), but
            // bounded in time like every connection.
            let mut backoff = Backoff::default();
            loop {
                let (s, peer) = accept::accept(&l, &mut backoff, None).await;
                let admin = admin.clone();
                let handler = move |req, in_flight, _raw_heads| {
                    let answer = admin(req);
                    async move { Ok(answer.await.map(|b| Counted::new(b, in_flight))) }
                };
                let conn = serve(
                    builder.clone(),
                    bounds,
                    Arc::new(ConnState::new()),
                    drain.watcher(),
                    s,
                    peer,
                    handler,
                );
                tokio::spawn(conn);
            }
        }));
    }

    shutdown.await;
    for a in &acceptors {
        a.abort();
    }
    for a in acceptors {
        // Wait until each listener is really closed before saying so.
        let _ = a.await;
    }
    println!("shutting down: listeners closed, draining in-flight requests");
    let _ = std::io::stdout().flush();
    tracing::info!(drain_timeout = ?server.drain_timeout, "shutting down: no new connections, draining in-flight requests");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(server.drain_timeout, async {
        for d in done {
            let _ = d.await;
        }
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!("drain timeout passed; closing remaining connections"),
    }
    if let Ok(d) = Arc::try_unwrap(admin_drain) {
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), d.shutdown()).await;
    }
    Ok(())
}

/// HTTP/2 limits the config does not expose, set here rather than left to hyper's and
/// h2's defaults so that they hold whatever those defaults become (README, "Connection
/// limits"):
/// - streams open at once per connection (SETTINGS_MAX_CONCURRENT_STREAMS);
const H2_MAX_CONCURRENT_STREAMS: u32 = 200;
/// - streams the client resets before the server has accepted them (rapid reset,
///   CVE-2023-44487): one more and the connection gets GOAWAY ENHANCE_YOUR_CALM;
const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// - streams the server resets because the client broke the protocol on them: one more
///   and the connection gets GOAWAY ENHANCE_YOUR_CALM.
const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// The HTTP/1 and HTTP/2 connection settings. The protocol is known before a connection is
/// served (`connection::first_bytes` reads the HTTP/2 preface or not), so each connection
/// gets its own protocol's connection alone — hyper-util's `auto` connection held room for
/// both (the HTTP/2 state is the larger) and read the preface a second time.
struct Builders {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

fn connection_builder(server: &ServerConfig) -> Builders {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_size.max(8192) + 1024)
        .keep_alive(true);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        // SETTINGS_MAX_HEADER_LIST_SIZE: a larger decoded head (HPACK references to the
        // dynamic table included) is answered 431; over 4 times this, GOAWAY.
        .max_header_list_size(server.max_header_size as u32)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        // Extended CONNECT (RFC 8441): WebSocket over HTTP/2 streams.
        .enable_connect_protocol()
        .keep_alive_interval(server.http2_keep_alive_interval)
        .keep_alive_timeout(server.http2_keep_alive_timeout);
    Builders { h1, h2 }
}

/// A served HTTP/1 or HTTP/2 connection, boxed: the task of a connection holds a pointer,
/// and the box is as large as its own protocol's state.
trait Served: Future<Output = Result<(), hyper::Error>> + Send {
    /// hyper's graceful shutdown: finish what is in flight (HTTP/2: GOAWAY first).
    fn shut_down(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Served for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Send,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<I, S, B> Served for hyper::server::conn::http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Send,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/1 connection: the own server's (`h1.rs`), then hyper's for the rest of it
    /// once a request is not for the own server; `shut` asks either to finish.
    struct OwnH1<F> {
        #[pin]
        served: F,
        shut: Arc<AtomicBool>,
    }
}

impl<F: Future<Output = Result<(), hyper::Error>>> Future for OwnH1<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.project().served.poll(cx)
    }
}

impl<F: Future<Output = Result<(), hyper::Error>> + Send> Served for OwnH1<F> {
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.shut.store(true, Ordering::Release);
    }
}

/// The time bounds of a connection that the server keeps itself (hyper keeps the others:
/// `header_read_timeout` and the HTTP/2 pings).
#[derive(Clone, Copy, Debug)]
struct Bounds {
    first_byte: Duration,
    keep_alive: Duration,
    /// `server.max_header_size`: a larger head is hyper's to refuse.
    max_head: usize,
    /// `server.header_read_timeout`: hyper also runs it while an HTTP/1 connection waits
    /// for its next request, so an idle HTTP/1 connection goes after the smaller of this
    /// and `keep_alive` (kept for the own server's connections by the idle bound).
    header_read: Duration,
}

/// How long an HTTP/2 connection the server closes (idle, or to make room) has after its
/// first GOAWAY: hyper's graceful close sends GOAWAY and a PING, and the last GOAWAY when
/// the PING is answered; a client that does not answer is closed after this. The
/// connection has no request in flight, so there is nothing else to wait for (Go's
/// HTTP/2 server waits 1s too).
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

impl Bounds {
    fn of(server: &ServerConfig) -> Self {
        Bounds {
            first_byte: server.first_byte_timeout,
            keep_alive: server.keep_alive_timeout,
            max_head: server.max_header_size,
            header_read: server.header_read_timeout,
        }
    }
}

/// One worker thread's loop: serve the connections dealt to it until told to stop, then
/// let its connections finish their in-flight requests.
async fn worker(
    slot: Arc<ArcSwap<Gateway>>,
    mut conns: mpsc::UnboundedReceiver<Accepted>,
    mut stop: watch::Receiver<bool>,
) {
    let (builder, bounds, handshake_timeout) = {
        let gw = slot.load();
        (
            Arc::new(connection_builder(&gw.server)),
            Bounds::of(&gw.server),
            gw.server.tls_handshake_timeout,
        )
    };
    let drain = Drain::new();
    loop {
        tokio::select! {
            accepted = conns.recv() => {
                let Some((stream, peer, tls, registration)) = accepted else { break };
                let Ok(stream) = TcpStream::from_std(stream) else { continue };
                let _ = stream.set_nodelay(true);
                // The handshake counts as part of the connection for shutdown.
                let (builder, watcher) = (builder.clone(), drain.watcher());
                // An upgraded connection holds the client connection busy and watches the
                // drain for as long as it is open.
                let lend = {
                    let (state, drain) = (registration.state.clone(), watcher.receiver());
                    move || Lease { hold: Box::new(state.tunnel()), drain: drain.clone() }
                };
                let client = ClientInfo::with_tls(peer, tls.is_some()).with_lease(lend);
                // Each request is served by the gateway current when it arrives; a reload
                // swaps the slot and requests in flight finish on the old one.
                let (slot, client) = (slot.clone(), Arc::new(client));
                // Boxed: hyper keeps room for a request's future in every connection, idle
                // ones too, and moves it there for every request; the box is made only
                // while a request is served, and moving it moves one pointer.
                // What hyper awaits is this box: the response is wrapped in it (not in
                // another future around it, which moved the ~450-byte response twice more).
                // `raw_heads`: the own HTTP/1.1 server serves it (`RequestCtx::raw_heads`).
                let handler = move |req: Request<Incoming>, in_flight: InFlight, raw_heads: bool| -> Handling {
                    let gw = slot.load_full();
                    let client = client.clone();
                    crate::proxy::boxed(|| async move {
                        let response = gw.handle(req, &client, raw_heads).await;
                        Ok(response.map(|b| Counted::new(b, in_flight)))
                    })
                };
                let state = registration.state.clone();
                // Plain and TLS connections are separate tasks, each as large as its own
                // kind needs (a TLS handshake's state is large).
                let Some(acceptor) = tls else {
                    tokio::spawn(async move {
                        serve(builder, bounds, state, watcher, stream, peer, handler).await;
                        drop(registration);
                    });
                    continue;
                };
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                    let handshake = tokio::select! {
                        r = handshake => Some(r),
                        () = state.closed() => None,
                    };
                    match handshake {
                        Some(Ok(Ok(tls))) => serve(builder, bounds, state, watcher, tls, peer, handler).await,
                        Some(Ok(Err(e))) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                        Some(Err(_)) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                        None => tracing::debug!(peer = %peer, "connection closed during its TLS handshake to stay under max_connections"),
                    }
                    drop(registration);
                });
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    drain.shutdown().await;
}

/// Serves HTTP/1.1 and HTTP/2 on one client connection (plain TCP or TLS) until it closes,
/// its first bytes do not come within `first_byte_timeout`, it has had no request in
/// flight for `keep_alive_timeout`, the connection cap needs its room, or the drain
/// starts. An HTTP/2 connection the server closes is told so with GOAWAY (hyper's
/// graceful shutdown) and given [`GOAWAY_GRACE`] to finish; an idle HTTP/1 connection is
/// just closed. At the drain both finish what is in flight.
async fn serve<IO, H, F>(
    builder: Arc<Builders>,
    bounds: Bounds,
    state: Arc<ConnState>,
    mut drain: DrainWatch,
    io: IO,
    peer: SocketAddr,
    handler: H,
) where
    IO: tokio::io::AsyncRead + crate::upstream::h1::WriteNow + Send + 'static,
    H: Fn(Request<Incoming>, InFlight, bool) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<Counted<ResponseBody>>, Infallible>> + Send + 'static,
{
    let first = tokio::select! {
        r = connection::first_bytes(io, bounds.first_byte) => r,
        () = state.closed() => {
            tracing::debug!(peer = %peer, "connection closed before its first request to stay under max_connections");
            return;
        }
    };
    let io = match first {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!(peer = %peer, error = %e, "connection closed before its first request");
            return;
        }
    };
    let h2 = io.is_h2();
    let requests = state.clone();
    let mut conn: std::pin::Pin<Box<dyn Served>> = if h2 {
        let svc = service_fn(move |req| handler(req, requests.request(), false));
        Box::pin(builder.h2.serve_connection(TokioIo::new(io), svc))
    } else {
        let shut = Arc::new(AtomicBool::new(false));
        let flag = shut.clone();
        let max_head = bounds.max_head;
        let builder = builder.clone();
        Box::pin(OwnH1 {
            served: async move {
                let serve_own = |req| handler(req, requests.request(), true);
                let io = match h1::serve(io, &serve_own, &flag, max_head).await {
                    h1::Ended::Done => return Ok(()),
                    h1::Ended::HandOff(io) => io,
                };
                let serve_one = move |req| handler(req, requests.request(), false);
                let conn = builder
                    .h1
                    .serve_connection(TokioIo::new(io), service_fn(serve_one))
                    .with_upgrades();
                let mut conn = std::pin::pin!(conn);
                let mut shut_down = false;
                std::future::poll_fn(|cx| {
                    if !shut_down && flag.load(Ordering::Acquire) {
                        conn.as_mut().graceful_shutdown();
                        shut_down = true;
                    }
                    conn.as_mut().poll(cx)
                })
                .await
            },
            shut,
        })
    };
    let (idle, idle_bound) = match h2 {
        false if bounds.header_read < bounds.keep_alive => {
            (bounds.header_read, "header_read_timeout")
        }
        _ => (bounds.keep_alive, "keep_alive_timeout"),
    };
    let bounded = async {
        tokio::select! {
            () = drain.started() => None,
            () = state.idle_for(idle) => Some(idle_bound),
            () = state.closed() => Some("max_connections"),
        }
    };
    let closing = match connection::race(conn.as_mut(), bounded).await {
        Race::Conn(r) => {
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "connection ended with error");
            }
            // An upgraded HTTP/1.1 connection ends here for hyper; it lives on as a
            // tunnel, and keeps its place (cap, drain) until the tunnel closes.
            state.tunnels_closed().await;
            return;
        }
        Race::Bound(closing) => closing,
    };
    match closing {
        None => {
            conn.as_mut().shut_down();
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with error while draining");
            }
        }
        Some(bound) if h2 => {
            tracing::debug!(peer = %peer, bound, "idle HTTP/2 connection closed with GOAWAY");
            conn.as_mut().shut_down();
            let _ = tokio::time::timeout(GOAWAY_GRACE, conn).await;
        }
        Some(bound) => tracing::debug!(peer = %peer, bound, "idle HTTP/1 connection closed"),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
