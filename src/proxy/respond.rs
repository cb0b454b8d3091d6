//! Phase 4, respond: where a failure becomes its synthetic response (the only place), and
//! where every response gets its request id, is counted in the route's metrics and takes
//! the access-log record along (written when its body has been sent), and where a model
//! call's response gets the meter that reads its usage as it streams, and where an admitted
//! request's limit reservations ride into the body, to be settled when it ends.

use super::body::ResponseBody;
use super::context::RequestCtx;
use super::error::ProxyError;
use super::headers;
use crate::ai::Meter;
use crate::limits::Quota;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{header, Response};
use std::fmt::Write as _;

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-{kind}` headers for the most constrained
/// limit of a kind (`reset`: until the window holds nothing, as `1.5s`).
pub fn quota_headers(h: &mut HeaderMap, kind: &str, q: &Quota) {
    const TOKENS: [HeaderName; 3] = [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ];
    const REQUESTS: [HeaderName; 3] = [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ];
    let [limit, remaining, reset] = if kind == "tokens" { TOKENS } else { REQUESTS };
    // The three values written into one buffer and shared by the headers. The reset is
    // seconds with milliseconds when there are any (`60s`, `1.250s`).
    let mut b = BytesMut::with_capacity(64);
    let _ = write!(b, "{}", q.limit);
    let l = b.len();
    let _ = write!(b, "{}", q.remaining);
    let r = b.len();
    let (secs, ms) = (q.reset_ms / 1000, q.reset_ms % 1000);
    let _ = if ms == 0 {
        write!(b, "{secs}s")
    } else {
        write!(b, "{secs}.{ms:03}s")
    };
    let b = b.freeze();
    let value = |v: Bytes| HeaderValue::from_maybe_shared(v).expect("digits, a dot and `s`");
    h.insert(limit, value(b.slice(..l)));
    h.insert(remaining, value(b.slice(l..r)));
    h.insert(reset, value(b.slice(r..)));
}

impl RequestCtx<'_> {
    /// The response for a failure; the access log records its code.
    pub fn fail(&mut self, e: ProxyError) -> Response<ResponseBody> {
        self.error = Some(e.code());
        e.to_response(&self.request_id)
    }

    /// Finishes the response: the request id, the route's metrics (the unrouted
    /// counters when no route took it), the access-log record. By reference: the context
    /// (376 bytes) stays where it is in the request's future instead of being moved in.
    pub fn finish(
        &mut self,
        unrouted: &crate::metrics::RouteMetrics,
        result: Result<Response<ResponseBody>, ProxyError>,
    ) -> Response<ResponseBody> {
        let mut resp = result.unwrap_or_else(|e| self.fail(e));
        let status = resp.status();
        // A head that goes on as it came carries the id beside it, written after its
        // lines: its map stays empty (an insert hashes and probes).
        if let Err(id) = resp.body_mut().set_raw_request_id(self.request_id.clone()) {
            resp.headers_mut().insert(headers::X_REQUEST_ID, id);
        }
        let metrics = self.route.map_or(unrouted, |r| &r.metrics);
        metrics.observe(
            &self.method,
            status.as_u16(),
            self.start.elapsed().as_secs_f64(),
        );
        if let Some(admission) = self.limits.take() {
            let h = resp.headers_mut();
            if let Some(q) = &admission.tokens {
                quota_headers(h, "tokens", q);
            }
            if let Some(q) = &admission.requests {
                quota_headers(h, "requests", q);
            }
            resp.body_mut()
                .set_admission(admission, status.as_u16() >= 400);
        }
        if let Some(exchange) = self.ai.take() {
            let meter = Meter::new(exchange, status.as_u16(), resp.headers(), self.start);
            if meter.edits() {
                // The client receives fewer bytes than the upstream sent.
                resp.headers_mut().remove(header::CONTENT_LENGTH);
            }
            resp.body_mut().set_meter(Box::new(meter));
        }
        if let Some(log) = self.access_log(status) {
            resp.body_mut().set_log(log);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_headers_say_seconds_with_milliseconds_when_there_are_any() {
        let mut h = HeaderMap::new();
        for (ms, want) in [(60_000, "60s"), (1_250, "1.250s"), (7, "0.007s"), (0, "0s")] {
            let q = Quota {
                limit: 100,
                remaining: 40,
                reset_ms: ms,
            };
            quota_headers(&mut h, "tokens", &q);
            assert_eq!(h["x-ratelimit-reset-tokens"], want);
        }
        assert_eq!(h["x-ratelimit-limit-tokens"], "100");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "40");
        quota_headers(
            &mut h,
            "requests",
            &Quota {
                limit: 5,
                remaining: 4,
                reset_ms: 999,
            },
        );
        assert_eq!(h["x-ratelimit-reset-requests"], "0.999s");
    }
}
