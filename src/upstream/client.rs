//! An upstream's connection pool: one pooled keep-alive hyper client per upstream and
//! worker thread (HTTP/1.1, or prior-knowledge HTTP/2 for gRPC; either over TLS with
//! `tls = true`), and [`SendTry`], the one operation the retry loop needs of it.

use super::body::UpstreamBody;
use super::call::Added;
use super::classify::{self, TryError};
use super::connector::TlsConnector;
use super::pool::{Http1Pool, PooledBody};
use crate::config::{Protocol, UpstreamConfig};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use tokio::time::Instant;

/// Sends one try to an endpoint (the request's URI names it) and classifies a failure.
/// The retry loop ([`super::Upstream::call`]) is written against this, so it can be
/// tested with scripted endpoints.
pub trait SendTry {
    type Body;
    /// Sends the head in `slot` (there when called) with `body`. With `keep` (a later try
    /// may need the head) a head is left in `slot` whatever happens, the try's future
    /// dropped included: a client that only reads the head (this worker's own HTTP/1.1
    /// client) reads it there; one that consumes it leaves a copy first. Without, the
    /// head may be taken, and a try that failed before anything was sent may put it
    /// back, so a later try can send it without a copy having been made. `at`: when the
    /// try started (read once by the caller; a pool compares its idle times with it).
    /// `until`: the try's deadline, after which it gives up with [`TryError::Timeout`]
    /// (the own HTTP/1.1 client bounds an exchange with its connection's timer).
    /// `added`: the fields the try adds to the head, which `slot`'s head never gets (the
    /// own HTTP/1.1 client writes them as it encodes the head; a client that consumes the
    /// head inserts them into what it takes, [`take_head`]).
    fn send(
        &self,
        slot: &mut Option<http::request::Parts>,
        added: Added<'_>,
        body: UpstreamBody,
        keep: bool,
        at: Instant,
        until: Instant,
    ) -> impl Future<Output = Result<Response<Self::Body>, TryError>>;
    /// Whether every failure to connect leaves the head in `slot`.
    fn gives_back_unsent(&self) -> bool {
        false
    }
    /// The scheme of upstream URIs (`:scheme` on HTTP/2).
    fn scheme(&self) -> Scheme;
}

/// An upstream's connection pool. Plain HTTP/1.1 upstreams (most of them) use this
/// worker's own [`Http1Pool`]; HTTP/2 and TLS upstreams (ALPN may pick either protocol)
/// use hyper-util's client.
pub enum UpstreamClient {
    Http1(Http1Pool),
    Plain(Client<HttpConnector, UpstreamBody>),
    Tls(Client<TlsConnector, UpstreamBody>),
}

impl UpstreamClient {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.enforce_http(true);
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_target)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false);
        if cfg.protocol == Protocol::H2 {
            b.http2_only(true);
        }
        match &cfg.tls {
            None if cfg.protocol == Protocol::Http1 => UpstreamClient::Http1(Http1Pool::new(
                connector,
                cfg.pool_idle_timeout,
                cfg.pool_max_idle_per_target,
            )),
            None => UpstreamClient::Plain(b.build(connector)),
            Some(tls) => {
                UpstreamClient::Tls(b.build(TlsConnector::new(connector, tls, cfg.connect_timeout)))
            }
        }
    }
}

impl SendTry for UpstreamClient {
    type Body = PooledBody;

    async fn send(
        &self,
        slot: &mut Option<http::request::Parts>,
        added: Added<'_>,
        body: UpstreamBody,
        keep: bool,
        at: Instant,
        until: Instant,
    ) -> Result<Response<PooledBody>, TryError> {
        let sent = match self {
            UpstreamClient::Http1(p) => return p.send(slot, added, body, keep, at, until).await,
            UpstreamClient::Plain(c) => {
                c.request(Request::from_parts(take_head(slot, added, keep), body))
            }
            UpstreamClient::Tls(c) => {
                c.request(Request::from_parts(take_head(slot, added, keep), body))
            }
        };
        use futures_util::FutureExt as _;
        let sent = sent.map(|r| {
            r.map(|r| r.map(PooledBody::from))
                .map_err(|e| classify::client_error(&e))
        });
        within(until, sent).await
    }

    /// Only this worker's own HTTP/1.1 pool: hyper-util's client keeps a request it
    /// could not send.
    fn gives_back_unsent(&self) -> bool {
        matches!(self, UpstreamClient::Http1(_))
    }

    fn scheme(&self) -> Scheme {
        match self {
            UpstreamClient::Http1(_) | UpstreamClient::Plain(_) => Scheme::HTTP,
            UpstreamClient::Tls(_) => Scheme::HTTPS,
        }
    }
}

/// `sent`, given up at `until` with [`TryError::Timeout`]. A mapped future, not an
/// `async fn`: no state of its own in the try's future (which is copied into its box).
pub fn within<T>(
    until: Instant,
    sent: impl Future<Output = Result<T, TryError>>,
) -> impl Future<Output = Result<T, TryError>> {
    use futures_util::FutureExt as _;
    tokio::time::timeout_at(until, sent).map(|r| r.unwrap_or(Err(TryError::Timeout)))
}

/// The head in `slot` with the try's `added` fields, for a client that consumes it: with
/// `keep`, a copy is left there (without the fields).
pub fn take_head(
    slot: &mut Option<http::request::Parts>,
    added: Added<'_>,
    keep: bool,
) -> http::request::Parts {
    let mut head = match keep {
        true => super::call::clone_head(slot.as_ref().expect("a head to send")),
        false => slot.take().expect("a head to send"),
    };
    added.insert_into(&mut head.headers);
    head
}

/// `PATH?QUERY` for a rewritten path; `None` if it is not a valid request target.
pub fn path_and_query(path: &str, query: Option<&str>) -> Option<PathAndQuery> {
    match query {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .ok()
}

/// The upstream URI: `http://ENDPOINT/PATH?QUERY` (`https` for TLS upstreams).
pub fn upstream_uri(scheme: Scheme, authority: &http::uri::Authority, pq: PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).expect("scheme, authority and path are each valid")
}

pub fn version_for(protocol: Protocol) -> Version {
    match protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::H2 => Version::HTTP_2,
    }
}
