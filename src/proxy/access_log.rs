//! The access-log line: one `tracing` event per request (target `access`), written when
//! the response body has been sent (or the client went away, or the upstream failed
//! mid-body: `error` then says so), so it carries the bytes sent, the full duration and,
//! for a model call, its model and token usage. `--log-format json` turns it into JSON lines;
//! `server.access_log` sends the lines to a file instead (see `main.rs`). An upgraded
//! connection (WebSocket) writes its line when the tunnel closes, with the bytes each way,
//! who closed it and why (`proxy/tunnel.rs`).

use super::trace_context::TraceId;
use crate::metrics::ClosedBy;
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
    /// The W3C trace id this request went upstream with.
    pub trace_id: TraceId,
    /// The plugin that decided the request's fate other than by passing it on, and how:
    /// `deny` (auth), `respond` (a transform answered), `error` (failed; 500) or
    /// `error_allowed` (failed; `on_error = "allow"` went on without it).
    pub plugin: Option<(Arc<str>, &'static str)>,
    /// The stream plugin that decided the fate of a streamed response other than event by
    /// event, and how: `end` (it ended the stream), `error` / `oversize` (it failed, or an
    /// event was over `max_event_size`, under `on_error = "deny"`: the stream was cut with
    /// an error event), `error_allowed` (it failed under `allow`; the stream went on).
    pub stream_plugin: Option<(Arc<str>, &'static str)>,
    /// On a route with fallbacks: the upstream (and `:model`) that served the request.
    pub served_by: Option<HeaderValue>,
    /// A model call's model and usage, filled in when its body ends.
    pub call: Option<crate::ai::CallLog>,
    /// On a composite route: each part as `NAME:STATUS:MS` (STATUS the part's HTTP
    /// status or its error code; `cancelled` with `-` for a part a required part's
    /// failure cut short), comma-separated in the route's order.
    pub parts: Option<String>,
}

impl AccessLog {
    /// Whether access logging is on; when it is off no record is built at all.
    pub fn enabled() -> bool {
        tracing::enabled!(target: "access", tracing::Level::INFO)
    }

    /// Writes the line: `bytes` sent to the client, and for an upgraded connection how its
    /// tunnel ended (these fields are left out of other lines).
    pub fn emit(&self, bytes: u64, tunnel: Option<&TunnelEnd>) {
        let call = self.call.as_ref();
        let count = |n: Option<u64>| n.map_or(-1, |n| n.min(i64::MAX as u64) as i64);
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
            plugin = %PluginOutcome(&self.plugin),
            stream_plugin = %PluginOutcome(&self.stream_plugin),
            served_by = self.served_by.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            parts = self.parts.as_deref(),
            model = call.and_then(|c| c.request_model.as_deref()).unwrap_or("-"),
            response_model = call.and_then(|c| c.response_model.as_deref()).unwrap_or("-"),
            input_tokens = count(call.and_then(|c| c.input_tokens)),
            output_tokens = count(call.and_then(|c| c.output_tokens)),
            ttft_ms = call.and_then(|c| c.ttft_ms).unwrap_or(-1.0),
            request_id = self.request_id.to_str().unwrap_or("-"),
            trace_id = %self.trace_id,
            upgrade = tunnel.map(|t| &*t.protocol),
            bytes_received = tunnel.map(|t| t.to_upstream),
            closed_by = tunnel.map(|t| t.closed_by.as_str()),
            close_reason = tunnel.map(|t| t.reason),
        );
    }
}

/// How an upgraded connection ended.
pub struct TunnelEnd {
    /// The protocol switched to (`websocket`).
    pub protocol: Box<str>,
    /// Bytes copied from the client to the upstream (the line's `bytes` are the other way).
    pub to_upstream: u64,
    pub closed_by: ClosedBy,
    /// `eof`, `reset`, `idle_timeout`, `max_duration`, `shutdown`, `upgrade_failed`.
    pub reason: &'static str,
}

/// `NAME:OUTCOME`, or `-`.
struct PluginOutcome<'a>(&'a Option<(Arc<str>, &'static str)>);

impl std::fmt::Display for PluginOutcome<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((name, outcome)) => write!(f, "{name}:{outcome}"),
            None => f.write_str("-"),
        }
    }
}
