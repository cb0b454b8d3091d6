//! What the phases of one request share: the per-request context ([`RequestCtx`]: id,
//! start, trace id, the chosen route, the consumer, what the access log will say) and the
//! client's request as the phases read and rewrite it ([`ClientRequest`]).

use super::access_log::AccessLog;
use super::error::ProxyError;
use super::headers::{self, ClientInfo};
use super::trace_context::{self, TraceId};
use super::RouteEntry;
use crate::config::ServerConfig;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Uri};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

/// One request's context, from its arrival to its access-log line.
pub struct RequestCtx<'g> {
    pub client: &'g ClientInfo,
    pub request_id: HeaderValue,
    pub start: Instant,
    pub method: Method,
    pub trace_id: TraceId,
    /// The route the request took, once routing chose one.
    pub route: Option<&'g RouteEntry>,
    /// The consumer an auth plugin named.
    pub consumer: Option<String>,
    /// The endpoint of the last try, and the time to its response head.
    pub endpoint: Option<Arc<str>>,
    pub upstream_ms: Option<f64>,
    /// The synthetic error the gateway answered with.
    pub error: Option<&'static str>,
    /// The plugin that decided the request's fate other than by passing it on, and how.
    pub plugin: Option<(Arc<str>, &'static str)>,
    /// The path for the access log (`None`: access logging is off).
    log_path: Option<String>,
}

impl<'g> RequestCtx<'g> {
    /// Starts the context: takes the request id (the client's, if sane) and moves the
    /// trace context on to this hop, so plugins and the upstream see both.
    pub fn new(req: &mut Request<Incoming>, client: &'g ClientInfo) -> Self {
        let request_id = headers::request_id(req.headers());
        let trace_id = trace_context::propagate(req.headers_mut());
        RequestCtx {
            client,
            request_id,
            start: Instant::now(),
            method: req.method().clone(),
            trace_id,
            route: None,
            consumer: None,
            endpoint: None,
            upstream_ms: None,
            error: None,
            plugin: None,
            log_path: AccessLog::enabled().then(|| req.uri().path().to_string()),
        }
    }

    /// Notes in the access log which plugin did what to the request.
    pub fn note_plugin(&mut self, plugin: &Arc<str>, outcome: &'static str) {
        self.plugin = Some((plugin.clone(), outcome));
    }

    /// The access-log record, if access logging is on.
    pub(super) fn access_log(&mut self, status: http::StatusCode) -> Option<Box<AccessLog>> {
        let path = self.log_path.take()?;
        Some(Box::new(AccessLog {
            start: self.start,
            client: self.client.addr,
            method: self.method.clone(),
            path,
            route: self.route.map(|r| r.name.clone()),
            endpoint: self.endpoint.take(),
            status,
            request_id: self.request_id.clone(),
            upstream_ms: self.upstream_ms,
            error: self.error,
            consumer: self.consumer.take(),
            trace_id: self.trace_id,
            plugin: self.plugin.take(),
        }))
    }
}

/// The client's request as the phases see it: its head (which becomes the upstream
/// request's), where it is going ([`Target`]), and its body — streamed, or buffered when
/// a plugin needs it.
pub struct ClientRequest {
    pub head: http::request::Parts,
    pub target: Target,
    pub body: ClientBody,
    /// The path and query a plugin rewrote the request to.
    pub rewritten: Option<(String, Option<String>)>,
}

/// Where the client's request is going: the URI as received, the normalized path and
/// the host.
pub struct Target {
    /// The client's URI, unchanged (the head's is replaced per try).
    pub uri: Uri,
    /// The normalized path when normalizing changed it (else it is `uri.path()`).
    normalized: Option<String>,
    /// The Host header as received.
    pub host_header: Option<HeaderValue>,
    /// The host, lowercased, when lowercasing changed it.
    host_lower: Option<String>,
}

/// The client's request body.
pub struct ClientBody {
    /// The stream, until a phase buffers or forwards it.
    pub stream: Option<Incoming>,
    /// The body read whole for plugins.
    pub buffered: Option<Bytes>,
}

/// The header carrying the consumer an auth plugin named.
pub const X_CONSUMER: header::HeaderName = header::HeaderName::from_static("x-portcullis-consumer");

impl ClientRequest {
    /// Reads the request head: its size, the normalized path (what is matched *and*
    /// forwarded), the host. A client cannot name the consumer; the request id it will be
    /// answered with goes upstream too.
    pub fn read(
        req: Request<Incoming>,
        ctx: &mut RequestCtx<'_>,
        server: &ServerConfig,
    ) -> Result<Self, ProxyError> {
        let (mut head, body) = req.into_parts();
        if header_bytes(&head) > server.max_header_size {
            return Err(ProxyError::HeadersTooLarge);
        }
        let uri = head.uri.clone();
        let normalized = match crate::normalize::normalize_path(uri.path()) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(p)) => Some(p),
            Err(e) => return Err(ProxyError::BadPath(e)),
        };
        if let (Some(p), Some(log)) = (&normalized, ctx.log_path.as_mut()) {
            log.clone_from(p);
        }
        let host_header = head.headers.get(header::HOST).cloned();
        let host_lower = request_host(&uri, host_header.as_ref())
            .filter(|h| h.bytes().any(|b| b.is_ascii_uppercase()))
            .map(|h| h.to_ascii_lowercase());
        head.headers.remove(X_CONSUMER);
        head.headers
            .insert(headers::X_REQUEST_ID, ctx.request_id.clone());
        Ok(ClientRequest {
            head,
            target: Target {
                uri,
                normalized,
                host_header,
                host_lower,
            },
            body: ClientBody {
                stream: Some(body),
                buffered: None,
            },
            rewritten: None,
        })
    }
}

impl Target {
    /// The normalized path.
    pub fn path(&self) -> &str {
        self.normalized.as_deref().unwrap_or(self.uri.path())
    }

    /// Whether the normalized path is the client's own bytes.
    pub fn path_unchanged(&self) -> bool {
        self.normalized.is_none()
    }

    /// The request's host, lowercase and without port: from the URI (HTTP/2, absolute
    /// form) or the Host header.
    pub fn host(&self) -> Option<&str> {
        match &self.host_lower {
            Some(h) => Some(h),
            None => request_host(&self.uri, self.host_header.as_ref()),
        }
    }
}

impl ClientBody {
    /// Reads the stream whole (once) for plugins that need it, within `limit`.
    pub async fn buffer(&mut self, limit: u64) -> Result<(), ProxyError> {
        if self.buffered.is_some() {
            return Ok(());
        }
        let body = self.stream.take().expect("body not yet consumed");
        self.buffered = Some(buffer_body(body, limit).await?);
        Ok(())
    }
}

async fn buffer_body(body: Incoming, limit: u64) -> Result<Bytes, ProxyError> {
    use http_body_util::BodyExt as _;
    use hyper::body::Body as _;
    if body.size_hint().lower() > limit {
        return Err(ProxyError::BodyTooLarge(limit));
    }
    match http_body_util::Limited::new(body, limit as usize)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge(limit))
        }
        Err(_) => Err(ProxyError::BadRequest("request body could not be read")),
    }
}

/// Size of the request head as received (name + value + separators per header).
fn header_bytes(head: &http::request::Parts) -> usize {
    head.headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + head.uri.path_and_query().map_or(0, |p| p.as_str().len())
}

/// The host as received, without port (not yet lowercased).
fn request_host<'a>(uri: &'a Uri, host_header: Option<&'a HeaderValue>) -> Option<&'a str> {
    match uri.authority() {
        Some(a) => Some(a.host()),
        None => {
            let v = host_header?.to_str().ok()?;
            Some(match v.rfind(':') {
                Some(i) if !v.ends_with(']') => &v[..i],
                _ => v,
            })
        }
    }
}
