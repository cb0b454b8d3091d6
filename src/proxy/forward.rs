//! Forwarding to an upstream endpoint: one pooled keep-alive hyper client per upstream
//! (HTTP/1.1, or prior-knowledge HTTP/2 for gRPC; either over TLS with `tls = true`), and
//! the upstream request built from the client's with the normalized path.

use super::body::{BodyTooLarge, UpstreamBody};
use super::connector::TlsConnector;
use super::error::ProxyError;
use crate::config::{Protocol, UpstreamConfig};
use http::uri::{PathAndQuery, Scheme};
use http::{Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// An upstream's connection pool. Plain upstreams keep the bare `HttpConnector` client,
/// so TLS costs them nothing.
pub enum UpstreamClient {
    Plain(Client<HttpConnector, UpstreamBody>),
    Tls(Client<TlsConnector, UpstreamBody>),
}

impl UpstreamClient {
    pub fn request(&self, req: http::Request<UpstreamBody>) -> ResponseFuture {
        match self {
            UpstreamClient::Plain(c) => c.request(req),
            UpstreamClient::Tls(c) => c.request(req),
        }
    }

    /// The scheme of upstream URIs (`:scheme` on HTTP/2).
    pub fn scheme(&self) -> Scheme {
        match self {
            UpstreamClient::Plain(_) => Scheme::HTTP,
            UpstreamClient::Tls(_) => Scheme::HTTPS,
        }
    }
}

pub fn build_client(cfg: &UpstreamConfig) -> UpstreamClient {
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
        None => UpstreamClient::Plain(b.build(connector)),
        Some(tls) => {
            UpstreamClient::Tls(b.build(TlsConnector::new(connector, tls, cfg.connect_timeout)))
        }
    }
}

/// `PATH?QUERY` for a rewritten path.
pub fn path_and_query(path: &str, query: Option<&str>) -> Result<PathAndQuery, ProxyError> {
    match query {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))
}

/// The upstream URI: `http://ENDPOINT/PATH?QUERY` (`https` for TLS upstreams).
pub fn upstream_uri(
    scheme: Scheme,
    authority: &http::uri::Authority,
    pq: PathAndQuery,
) -> Result<Uri, ProxyError> {
    Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))
}

pub fn version_for(protocol: Protocol) -> Version {
    match protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::H2 => Version::HTTP_2,
    }
}

/// Maps a client error to the synthetic response it deserves.
pub fn classify(err: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut timed_out = false;
    while let Some(e) = source {
        if e.is::<BodyTooLarge>() {
            return ProxyError::BodyTooLarge(0);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                timed_out = true;
            }
        }
        source = e.source();
    }
    if err.is_connect() {
        if timed_out {
            ProxyError::ConnectTimeout
        } else {
            ProxyError::ConnectFailed(root_cause(err))
        }
    } else {
        ProxyError::Upstream(root_cause(err))
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}
