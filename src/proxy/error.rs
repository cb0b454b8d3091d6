//! Every failure the gateway answers itself, mapped in one place to a status and the JSON
//! body `{"error":{"code":"…","message":"…","request_id":"…"}}` (the admin API answers
//! with the same shape, through [`json_error`]).

use super::body::ResponseBody;
use crate::ai::Api;
use crate::normalize::NormalizeError;
use crate::upstream::call::CallError;
use crate::upstream::classify::{ClientBodyFault, TryError};
use http::{header, HeaderValue, Response, StatusCode};
use std::sync::Arc;

/// nginx's "client closed request": the client left before the gateway could answer; it
/// is what the access log and metrics record.
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => panic!("499 is a valid status"),
};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The path could not be normalized (encoded `/`, NUL, malformed escape…).
    #[error("{0}")]
    BadPath(NormalizeError),
    #[error("{0}")]
    BadRequest(&'static str),
    /// The request's authority (Host, `:authority`, absolute-form URI) is missing,
    /// repeated, contradictory or not a valid `host[:port]`.
    #[error("{0}")]
    BadHost(&'static str),
    /// A `Transfer-Encoding` other than `chunked` alone (RFC 9112 §6.1: 501).
    #[error("transfer coding not implemented: only `chunked` is accepted")]
    UnsupportedTransferEncoding,
    /// The client's body framing was malformed (a bad chunk).
    #[error("request body is malformed")]
    MalformedBody,
    /// The client went away before its request body was complete.
    #[error("client closed the request before its body was complete")]
    ClientClosed,
    #[error("no route matches this request")]
    NotFound,
    #[error("method not allowed here; allowed: {0}")]
    MethodNotAllowed(String),
    #[error("request body exceeds the route's limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("request headers are too large")]
    HeadersTooLarge,
    /// The upstream had no endpoint to pick; the message names it and says why.
    #[error("{0}")]
    NoEndpoint(String),
    /// Every endpoint is unhealthy, ejected or behind an open circuit breaker.
    #[error("no endpoint of upstream `{0}` is available (all unhealthy, ejected or circuit open)")]
    Unavailable(String),
    #[error("cannot connect to upstream: {0}")]
    ConnectFailed(String),
    #[error("timed out connecting to upstream")]
    ConnectTimeout,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// A plugin failed (trap, timeout, memory) and its policy is `on_error = "deny"`.
    #[error("plugin `{0}` failed")]
    PluginFailed(String),
    /// Every upstream of a fallback chain asked to be left alone (429 `Retry-After`); the
    /// client may try again after this long.
    #[error("every upstream of this route is rate limited; retry after {} s", retry_secs(*.0))]
    RateLimited(std::time::Duration),
    /// An HTTP/2 extended CONNECT for a protocol the route does not forward (over HTTP/1.1
    /// such a request is forwarded without its upgrade instead).
    #[error("this route does not forward upgrades to `{0}`")]
    UpgradeNotAllowed(String),
    /// The route has `tunnel.max_connections` upgraded connections open.
    #[error("too many upgraded connections on this route")]
    TooManyUpgrades,
    /// The upstream switched protocols when not asked to, to a protocol not asked for, or
    /// answered an HTTP/2 WebSocket handshake with a 2xx other than 101.
    #[error("{0}")]
    BadUpgrade(&'static str),
    /// A `[[limits]]` limit has no room for the request (429 in its API's shape).
    #[error("{}", limit_message(.0))]
    LimitExceeded(Box<(crate::limits::Refusal, Option<Api>)>),
    /// A limit counted in Redis, which did not answer; its policy is `deny`.
    #[error("rate limit `{0}` cannot be checked: its backend is unavailable")]
    LimitBackendDown(Arc<str>),
    /// A part of a composite route failed (`proxy/composite.rs`): the whole request's
    /// failure when the part is `required`, else its entry in the answer. Keeps the
    /// cause's code; a 5xx cause keeps its status, any other is a 502.
    #[error("part `{0}`: {1}")]
    Part(Arc<str>, Box<ProxyError>),
    /// A composite route's part answered with a status other than 2xx.
    #[error("upstream answered {0}")]
    PartStatus(u16),
    /// A composite route's part answered what cannot be merged (not JSON, an event stream).
    #[error("{0}")]
    PartUnmergeable(&'static str),
    /// The part whose answer is a pipeline step's input failed.
    #[error("its input, part `{0}`, failed")]
    PartInputFailed(Arc<str>),
    /// A composite route's parts answered more than its `max_response_size`.
    #[error("the parts' answers exceed the route's max_response_size of {0} bytes")]
    ResponseTooLarge(u64),
}

fn limit_message((r, _): &(crate::limits::Refusal, Option<Api>)) -> String {
    match r.retry_after {
        Some(after) => format!(
            "rate limit `{}` reached ({} {}); retry after {} s",
            r.limit,
            r.quota.limit,
            r.what,
            retry_secs(after)
        ),
        None => format!(
            "the request is more than rate limit `{}` allows at once ({} {})",
            r.limit, r.quota.limit, r.what
        ),
    }
}

/// Whole seconds, rounded up, at least 1 (`Retry-After`).
fn retry_secs(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

impl From<ClientBodyFault> for ProxyError {
    fn from(fault: ClientBodyFault) -> Self {
        match fault {
            ClientBodyFault::Malformed => ProxyError::MalformedBody,
            ClientBodyFault::Gone => ProxyError::ClientClosed,
        }
    }
}

impl ProxyError {
    /// Why a call to an upstream got no response; `body_limit` is the route's, which an
    /// over-long streamed body passed.
    pub fn from_call(e: CallError, body_limit: u64) -> Self {
        match e {
            CallError::NoEndpoint(reason) => ProxyError::NoEndpoint(reason),
            CallError::Unavailable(name) => ProxyError::Unavailable(name),
            CallError::Try(TryError::ConnectFailed(cause)) => ProxyError::ConnectFailed(cause),
            CallError::Try(TryError::ConnectTimeout) => ProxyError::ConnectTimeout,
            CallError::Try(TryError::Timeout) => ProxyError::UpstreamTimeout,
            CallError::Try(TryError::Failed(cause)) => ProxyError::Upstream(cause),
            CallError::Try(TryError::BodyTooLarge) => ProxyError::BodyTooLarge(body_limit),
            CallError::Try(TryError::ClientBody(fault)) => fault.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_)
            | ProxyError::BadRequest(_)
            | ProxyError::BadHost(_)
            | ProxyError::MalformedBody => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedTransferEncoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::ClientClosed => CLIENT_CLOSED_REQUEST,
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NoEndpoint(_) | ProxyError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ConnectFailed(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::PluginFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::UpgradeNotAllowed(_) => StatusCode::FORBIDDEN,
            ProxyError::TooManyUpgrades => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadUpgrade(_) => StatusCode::BAD_GATEWAY,
            ProxyError::RateLimited(_) | ProxyError::LimitExceeded(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::LimitBackendDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Part(_, cause) if cause.status().is_server_error() => cause.status(),
            ProxyError::Part(..)
            | ProxyError::PartStatus(_)
            | ProxyError::PartUnmergeable(_)
            | ProxyError::PartInputFailed(_)
            | ProxyError::ResponseTooLarge(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BadHost(_) => "bad_host",
            ProxyError::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            ProxyError::MalformedBody => "malformed_body",
            ProxyError::ClientClosed => "client_closed_request",
            ProxyError::NotFound => "route_not_found",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::HeadersTooLarge => "headers_too_large",
            ProxyError::NoEndpoint(_) => "no_endpoints",
            ProxyError::Unavailable(_) => "no_healthy_endpoint",
            ProxyError::ConnectFailed(_) => "upstream_connect_failed",
            ProxyError::ConnectTimeout => "upstream_connect_timeout",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::Upstream(_) => "upstream_error",
            ProxyError::PluginFailed(_) => "plugin_failed",
            ProxyError::RateLimited(_) => "upstream_rate_limited",
            ProxyError::UpgradeNotAllowed(_) => "upgrade_not_allowed",
            ProxyError::TooManyUpgrades => "too_many_upgraded_connections",
            ProxyError::BadUpgrade(_) => "upstream_bad_upgrade",
            ProxyError::LimitExceeded(_) => "rate_limit_exceeded",
            ProxyError::LimitBackendDown(_) => "rate_limit_backend_unavailable",
            ProxyError::Part(_, cause) => cause.code(),
            ProxyError::PartStatus(_) => "upstream_status",
            ProxyError::PartUnmergeable(_) => "upstream_bad_response",
            ProxyError::PartInputFailed(_) => "part_input_failed",
            ProxyError::ResponseTooLarge(_) => "response_too_large",
        }
    }

    /// The synthetic response for this error.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<ResponseBody> {
        if let ProxyError::LimitExceeded(r) = self {
            return limit_response(&r.0, r.1, &self.to_string(), request_id);
        }
        let mut resp = json_error(
            self.status(),
            self.code(),
            &self.to_string(),
            Some(request_id),
        );
        let h = resp.headers_mut();
        h.insert(super::headers::X_REQUEST_ID, request_id.clone());
        if let ProxyError::MethodNotAllowed(allow) = self {
            if let Ok(v) = HeaderValue::from_str(allow) {
                h.insert(header::ALLOW, v);
            }
        }
        if let ProxyError::RateLimited(after) = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(*after)));
        }
        if matches!(
            self,
            ProxyError::BodyTooLarge(_)
                | ProxyError::MalformedBody
                | ProxyError::ClientClosed
                | ProxyError::UnsupportedTransferEncoding
        ) {
            // The rest of the body was not read (or cannot be framed); the connection
            // cannot be reused.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A limit's 429: in the shape of the route's API (OpenAI's `rate_limit_exceeded`,
/// Anthropic's `rate_limit_error`), else the gateway's own; `Retry-After` in whole
/// seconds and the refused limit's `x-ratelimit-*` headers.
fn limit_response(
    r: &crate::limits::Refusal,
    api: Option<Api>,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let status = StatusCode::TOO_MANY_REQUESTS;
    let mut resp = match api {
        Some(api) => {
            let body = match api {
                Api::OpenAi => serde_json::json!({"error": {
                    "message": message,
                    "type": r.what,
                    "param": null,
                    "code": "rate_limit_exceeded",
                }}),
                Api::Anthropic => serde_json::json!({
                    "type": "error",
                    "error": {"type": "rate_limit_error", "message": message},
                }),
            };
            let mut resp = Response::new(ResponseBody::full(body.to_string().into()));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        None => json_error(status, "rate_limit_exceeded", message, Some(request_id)),
    };
    let h = resp.headers_mut();
    h.insert(super::headers::X_REQUEST_ID, request_id.clone());
    let after = r.retry_after.unwrap_or(std::time::Duration::from_secs(60));
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(after)));
    match r.what {
        "tokens" => super::respond::quota_headers(h, "tokens", &r.quota),
        "requests" => super::respond::quota_headers(h, "requests", &r.quota),
        _ => {}
    }
    resp
}

/// `{"error":{"code","message"[,"request_id"]}}`: the body of [`json_error`], and what a
/// composite route's answer holds for a failed part.
pub fn error_object(
    code: &str,
    message: &str,
    request_id: Option<&HeaderValue>,
) -> serde_json::Value {
    let mut error = serde_json::json!({ "code": code, "message": message });
    if let Some(id) = request_id {
        error["request_id"] = id.to_str().unwrap_or("").into();
    }
    serde_json::json!({ "error": error })
}

/// The error shape of every response the gateway makes itself, proxy and admin alike:
/// `{"error":{"code","message"[,"request_id"]}}` as `application/json`.
pub fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let body = error_object(code, message, request_id);
    let mut resp = Response::new(ResponseBody::full(body.to_string().into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
