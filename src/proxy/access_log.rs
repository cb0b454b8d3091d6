//! The access-log line: one `tracing` event per request (target `access`), written when
//! the response body has been sent (or the client went away), so it carries the bytes
//! sent and the full duration. `--log-format json` turns it into JSON lines.

use http::{HeaderValue, Method, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub struct AccessLog {
    pub start: Instant,
    pub client: SocketAddr,
    pub method: Method,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub endpoint: Option<Arc<str>>,
    pub status: StatusCode,
    pub request_id: HeaderValue,
    /// Time to the upstream's response head, when there was one.
    pub upstream_ms: Option<f64>,
    /// The synthetic error code, when the gateway answered itself.
    pub error: Option<&'static str>,
    /// The consumer an auth plugin named.
    pub consumer: Option<String>,
}

impl AccessLog {
    /// Whether access logging is on; when it is off no record is built at all.
    pub fn enabled() -> bool {
        tracing::enabled!(target: "access", tracing::Level::INFO)
    }

    pub fn emit(&self, bytes: u64) {
        tracing::info!(
            target: "access",
            client = %self.client,
            method = %self.method,
            path = %self.path,
            route = self.route.as_deref().unwrap_or("-"),
            upstream = self.endpoint.as_deref().unwrap_or("-"),
            status = self.status.as_u16(),
            bytes,
            duration_ms = self.start.elapsed().as_secs_f64() * 1e3,
            upstream_ms = self.upstream_ms.unwrap_or(-1.0),
            error = self.error.unwrap_or("-"),
            consumer = self.consumer.as_deref().unwrap_or("-"),
            request_id = self.request_id.to_str().unwrap_or("-"),
        );
    }
}
