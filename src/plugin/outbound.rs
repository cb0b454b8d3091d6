//! Outbound HTTP for plugins: `wasi:http/outgoing-handler` as implemented by
//! `wasmtime-wasi-http`, with its `send_request` hook doing the gateway's part — the
//! plugin's `allowed_hosts` checked (scheme, host, port) before anything is dialled, the
//! call sent through one pooled keep-alive client (plain or rustls with the gateway's
//! roots), bounded by what is left of the hook call's `io_timeout`, its response body
//! capped at `max_response_size`. A denied call never leaves the process: the guest's
//! response future resolves to `error-code.http-request-denied` and the gateway logs a
//! warning naming the plugin and the origin.

use crate::config::{AllowedHost, UpstreamTls};
use crate::upstream::connector::TlsConnector;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Longest a TCP connect (and, for https, the TLS handshake) may take, within the call's
/// own deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection pool every plugin of a loaded config sends through (one per scheme).
pub struct OutboundClient {
    plain: Client<HttpConnector, WasiBody>,
    tls: Client<TlsConnector, WasiBody>,
}

impl OutboundClient {
    /// Keep-alive pools for http and https (`http/1.1`, certificates verified against
    /// the Mozilla roots the gateway uses for upstreams without a `ca_file`).
    pub fn new() -> Result<Self, String> {
        let client_tls = crate::tls::client_config(None, None, b"http/1.1")
            .map_err(|e| format!("outbound TLS: {e:?}"))?;
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(32)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new());
            b
        };
        let tls = UpstreamTls {
            client: client_tls,
            server_name: None,
        };
        Ok(OutboundClient {
            plain: builder().build(tcp.clone()),
            tls: builder().build(TlsConnector::new(tcp, &tls, CONNECT_TIMEOUT)),
        })
    }
}

/// The `wasi:http` hooks of one plugin instance.
pub struct Outbound {
    pub plugin: Arc<str>,
    pub allowed: Arc<[AllowedHost]>,
    pub client: Arc<OutboundClient>,
    pub max_response: u64,
    /// The plugin's `io_timeout`.
    pub io_timeout: Duration,
    /// When the current hook call's `io_timeout` runs out; set before every call.
    pub deadline: Instant,
}

/// Whether `uri` (absolute, as wasmtime-wasi-http builds it) names an allowed origin.
/// Returns the origin for the log line either way.
fn check(allowed: &[AllowedHost], uri: &http::Uri) -> (bool, String) {
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let scheme = if https { "https" } else { "http" };
    let Some(auth) = uri.authority() else {
        return (false, format!("{scheme}://"));
    };
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
    let ok = uri.scheme().is_some()
        && allowed
            .iter()
            .any(|a| a.https == https && a.port == port && a.host == host);
    let origin = if host.contains(':') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    };
    (ok, origin)
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let (allowed, origin) = check(&self.allowed, request.uri());
        if !allowed {
            tracing::warn!(
                target: "plugin",
                plugin = &*self.plugin,
                host = %origin,
                "outbound request denied: the origin is not in the plugin's allowed_hosts"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        // The guest may ask for less time than it has left, never for more.
        let mut deadline = self.deadline;
        if let Some(o) = options {
            let asked =
                o.connect_timeout.unwrap_or_default() + o.first_byte_timeout.unwrap_or_default();
            if o.first_byte_timeout.is_some() {
                deadline = deadline.min(Instant::now() + asked);
            }
        }
        let https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        let client = self.client.clone();
        let max = self.max_response;
        let body_deadline = self.deadline;
        Box::new(async move {
            let sent = if https {
                tokio::time::timeout_at(deadline, client.tls.request(request)).await
            } else {
                tokio::time::timeout_at(deadline, client.plain.request(request)).await
            };
            let resp = match sent {
                Err(_) => return Err(HttpError::HttpResponseTimeout),
                Ok(Err(e)) => return Err(classify(&e)),
                Ok(Ok(r)) => r,
            };
            if let Some(n) = resp.body().size_hint().exact() {
                if n > max {
                    return Err(HttpError::HttpResponseBodySize(Some(n)));
                }
            }
            let resp = resp.map(|b| {
                Capped {
                    inner: b,
                    left: max,
                    deadline: Box::pin(tokio::time::sleep_until(body_deadline)),
                }
                .boxed_unsync()
            });
            Ok((
                resp,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// The `error-code` a failed send means to the guest.
fn classify(e: &hyper_util::client::legacy::Error) -> HttpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return match t {
                rustls::Error::InvalidCertificate(_) => HttpError::TlsCertificateError,
                _ => HttpError::TlsProtocolError,
            };
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return HttpError::ConnectionRefused,
                std::io::ErrorKind::TimedOut => return HttpError::ConnectionTimeout,
                _ => {}
            }
        }
        source = s.source();
    }
    if e.is_connect() {
        HttpError::ConnectionRefused
    } else {
        HttpError::HttpProtocolError
    }
}

/// A response body that fails once it grows past the cap or outlives the call.
struct Capped {
    inner: Incoming,
    left: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len() as u64;
                    if n > self.left {
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(None))));
                    }
                    self.left -= n;
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::Hyper(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_pass() {
        let allowed = [
            AllowedHost::parse("https://idp.example.com").unwrap(),
            AllowedHost::parse("http://127.0.0.1:8080").unwrap(),
        ];
        let ok = |u: &str| check(&allowed, &u.parse().unwrap()).0;
        assert!(ok("https://idp.example.com/token"));
        assert!(ok("https://IDP.example.com:443/x"));
        assert!(ok("http://127.0.0.1:8080/"));
        assert!(!ok("http://idp.example.com/token"), "scheme matters");
        assert!(!ok("https://idp.example.com:8443/"), "port matters");
        assert!(!ok("http://127.0.0.1:8081/"));
        assert!(!ok("https://evil.example.com/"));
        assert!(!ok("https://idp.example.com.evil.net/"));
        assert!(!ok("/relative"));
        assert_eq!(
            check(&allowed, &"http://[::1]:9/".parse().unwrap()).1,
            "http://[::1]:9"
        );
    }
}
