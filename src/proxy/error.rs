//! Every failure the gateway answers itself, mapped in one place to a status and the JSON
//! body `{"error":{"code":"…","message":"…","request_id":"…"}}`.

use super::body::ResponseBody;
use crate::normalize::NormalizeError;
use http::{header, HeaderValue, Response, StatusCode};

#[derive(Debug)]
pub enum ProxyError {
    /// The path could not be normalized (encoded `/`, NUL, malformed escape…).
    BadPath(NormalizeError),
    BadRequest(&'static str),
    NotFound,
    MethodNotAllowed(String),
    BodyTooLarge(u64),
    HeadersTooLarge,
    /// The upstream had no endpoint to pick; the message names it and says why.
    NoEndpoint(String),
    /// Every endpoint is unhealthy, ejected or behind an open circuit breaker.
    Unavailable(String),
    ConnectFailed(String),
    ConnectTimeout,
    UpstreamTimeout,
    Upstream(String),
    /// A plugin failed (trap, timeout, memory) and its policy is `on_error = "deny"`.
    PluginFailed(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_) | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
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
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::BadRequest(_) => "bad_request",
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
        }
    }

    pub fn message(&self) -> String {
        match self {
            ProxyError::BadPath(e) => e.to_string(),
            ProxyError::BadRequest(m) => (*m).to_string(),
            ProxyError::NotFound => "no route matches this request".into(),
            ProxyError::MethodNotAllowed(allow) => {
                format!("method not allowed here; allowed: {allow}")
            }
            ProxyError::BodyTooLarge(limit) => {
                format!("request body exceeds the route's limit of {limit} bytes")
            }
            ProxyError::HeadersTooLarge => "request headers are too large".into(),
            ProxyError::NoEndpoint(reason) => reason.clone(),
            ProxyError::Unavailable(u) => format!(
                "no endpoint of upstream `{u}` is available (all unhealthy, ejected or circuit open)"
            ),
            ProxyError::ConnectFailed(e) => format!("cannot connect to upstream: {e}"),
            ProxyError::ConnectTimeout => "timed out connecting to upstream".into(),
            ProxyError::UpstreamTimeout => "upstream did not answer in time".into(),
            ProxyError::Upstream(e) => format!("upstream failed: {e}"),
            ProxyError::PluginFailed(p) => format!("plugin `{p}` failed"),
        }
    }

    /// The synthetic response for this error.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let body = serde_json::json!({
            "error": {
                "code": self.code(),
                "message": self.message(),
                "request_id": request_id.to_str().unwrap_or(""),
            }
        });
        let mut resp = Response::new(ResponseBody::full(body.to_string().into()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(super::headers::X_REQUEST_ID, request_id.clone());
        if let ProxyError::MethodNotAllowed(allow) = self {
            if let Ok(v) = HeaderValue::from_str(allow) {
                h.insert(header::ALLOW, v);
            }
        }
        if matches!(self, ProxyError::BodyTooLarge(_)) {
            // The rest of the body was not read; the connection cannot be reused.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
