//! The access-log line: one line per request, written when the response body has been
//! sent (or the client went away, or the upstream failed mid-body: `error` then says so),
//! so it carries the bytes sent, the full duration and, for a model call, its model and
//! token usage. An upgraded connection (WebSocket) writes its line when the tunnel closes,
//! with the bytes each way, who closed it and why (`proxy/tunnel.rs`).
//!
//! The line is formatted straight into the thread's batch ([`line`]: text `key=value` or a
//! JSON object, `--log-format` for stderr, `server.access_log.format` for a file) and
//! written by a background thread ([`writer`]); `main` decides whether the log is on and
//! where it goes.

pub mod line;
pub mod writer;

use self::line::{key, Key, Line};
use super::trace_context::TraceId;
use crate::config::AccessLogFormat;
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
        writer::started()
    }

    /// Writes the line: `bytes` sent to the client, and for an upgraded connection how its
    /// tunnel ended (these fields are left out of other lines).
    pub fn emit(&self, bytes: u64, tunnel: Option<&TunnelEnd>) {
        let now = std::time::SystemTime::now();
        writer::append(|buf, format| self.write(buf, format, now, bytes, tunnel));
    }

    /// The line in `format` at `now`, appended to `buf`.
    pub fn write(
        &self,
        buf: &mut Vec<u8>,
        format: AccessLogFormat,
        now: std::time::SystemTime,
        bytes: u64,
        tunnel: Option<&TunnelEnd>,
    ) {
        match format {
            AccessLogFormat::Json => self.write_as::<true>(buf, now, bytes, tunnel),
            AccessLogFormat::Text => self.write_as::<false>(buf, now, bytes, tunnel),
        }
    }

    fn write_as<const JSON: bool>(
        &self,
        buf: &mut Vec<u8>,
        now: std::time::SystemTime,
        bytes: u64,
        tunnel: Option<&TunnelEnd>,
    ) {
        let call = self.call.as_ref();
        let count = |n: Option<u64>| n.map_or(-1, |n| n.min(i64::MAX as u64) as i64);
        let mut l = Line::<JSON>::start(buf, now);
        let mut client = [0u8; 64];
        l.ascii(key!("client"), socket_addr(&self.client, &mut client));
        l.bare(key!("method"), &[self.method.as_str()]);
        l.bare(key!("path"), &[&self.path]);
        l.str_or_dash(key!("route"), self.route.as_deref());
        l.str_or_dash(key!("upstream"), self.endpoint.as_deref());
        l.u64(key!("status"), self.status.as_u16().into());
        l.u64(key!("bytes"), bytes);
        l.ms(
            key!("duration_ms"),
            self.start.elapsed().as_secs_f64() * 1e3,
        );
        l.ms(key!("upstream_ms"), self.upstream_ms.unwrap_or(-1.0));
        l.str_or_dash(key!("error"), self.error);
        l.str_or_dash(key!("consumer"), self.consumer.as_deref());
        plugin_outcome(&mut l, key!("plugin"), &self.plugin);
        plugin_outcome(&mut l, key!("stream_plugin"), &self.stream_plugin);
        let served_by = self.served_by.as_ref().and_then(|v| v.to_str().ok());
        l.str_or_dash(key!("served_by"), served_by);
        if let Some(parts) = &self.parts {
            l.str(key!("parts"), parts);
        }
        l.str_or_dash(key!("model"), call.and_then(|c| c.request_model.as_deref()));
        let response_model = call.and_then(|c| c.response_model.as_deref());
        l.str_or_dash(key!("response_model"), response_model);
        l.i64(
            key!("input_tokens"),
            count(call.and_then(|c| c.input_tokens)),
        );
        l.i64(
            key!("output_tokens"),
            count(call.and_then(|c| c.output_tokens)),
        );
        l.ms(
            key!("ttft_ms"),
            call.and_then(|c| c.ttft_ms).unwrap_or(-1.0),
        );
        l.str_or_dash(key!("request_id"), self.request_id.to_str().ok());
        l.ascii(key!("trace_id"), &self.trace_id.hex());
        if let Some(t) = tunnel {
            l.str(key!("upgrade"), &t.protocol);
            l.u64(key!("bytes_received"), t.to_upstream);
            l.str(key!("closed_by"), t.closed_by.as_str());
            l.str(key!("close_reason"), t.reason);
        }
        l.finish();
    }
}

/// `NAME:OUTCOME`, or `-`.
fn plugin_outcome<const JSON: bool>(
    l: &mut Line<'_, JSON>,
    key: Key,
    p: &Option<(Arc<str>, &'static str)>,
) {
    match p {
        Some((name, outcome)) => l.bare(key, &[name, ":", outcome]),
        None => l.bare_dash(key),
    }
}

/// `127.0.0.1:5555` (`[::1]:5555`) in `buf`.
fn socket_addr<'b>(addr: &SocketAddr, buf: &'b mut [u8; 64]) -> &'b [u8] {
    let SocketAddr::V4(a) = addr else {
        use std::io::Write as _;
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // At most 54 bytes (`[v6%scope]:port`).
        let _ = write!(cursor, "{addr}");
        let len = cursor.position() as usize;
        return &buf[..len];
    };
    // Digit by digit: at most 21 bytes (`255.255.255.255:65535`).
    let mut len = 0;
    for (i, octet) in a.ip().octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    buf[len] = b':';
    len += 1;
    let port = a.port();
    let digits = match port {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    };
    let mut n = port;
    for slot in buf[len..len + digits].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    &buf[..len + digits]
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// The address as `Display` writes it: every octet value in every place, ports at
    /// each digit count's edges, and IPv6 with a scope.
    #[test]
    fn socket_addresses_as_display_writes_them() {
        let ports = [0, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 18090, 65535];
        let mut buf = [0u8; 64];
        for n in 0..=255u8 {
            for (i, port) in ports.into_iter().enumerate() {
                let mut octets = [10, 0, 0, 1];
                octets[i % 4] = n;
                let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(octets), port));
                assert_eq!(socket_addr(&addr, &mut buf), addr.to_string().as_bytes());
            }
        }
        let v6: SocketAddr = "[fe80::1%7]:443".parse().unwrap();
        assert_eq!(socket_addr(&v6, &mut buf), b"[fe80::1%7]:443");
    }
}
