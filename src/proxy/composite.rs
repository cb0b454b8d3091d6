//! A composite route (`[[routes.parts]]`): one request, several upstreams, one answer.
//! The client's body is read once (within `buffer_request_body`, 1 MiB by default: 413
//! beyond) and each part gets its own request built from the client's — the route's Host
//! policy, `X-Forwarded-*`, the request id, trace context and consumer, the part's path and
//! method — sent through its upstream's own try loop ([`crate::upstream::Upstream::call`]:
//! balancing, breakers, retries). Parts without an `input` start at once, on the request's
//! task; a pipeline step starts when its input part has answered, with that answer's body
//! as its request body. Each part is bounded by its `timeout` (call and body together).
//! Bodies are read whole (they are merged), counted against the route's
//! `max_response_size` as they arrive.
//!
//! The answer is one JSON object, in the route's part order: each part's JSON answer under
//! its name, or for a failed part an error object in the gateway's error shape. A failed
//! `required` part fails the request at once (the other parts are cancelled) with its
//! cause's 5xx (any other cause: 502), the part named in the message; so does an answer
//! over `max_response_size` (502). The response chain then runs as on any route, so a
//! transform with the `response-body` hook can replace the default merge.

use super::access_log::AccessLog;
use super::body::ResponseBody;
use super::context::{ClientRequest, RequestCtx};
use super::error::{error_object, ProxyError};
use super::{Gateway, RouteEntry, WorkerUpstream};
use crate::config::composite::PartConfig;
use crate::config::RouteConfig;
use crate::metrics::PartMetrics;
use crate::upstream::call::Call;
use crate::upstream::client::path_and_query;
use crate::upstream::replay::Replay;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use http::header::{self, HeaderValue};
use http::Response;
use http_body_util::BodyExt as _;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Each part's metric handles of a composite route (none for other routes).
pub(super) fn part_metrics(route: &RouteConfig) -> Vec<PartMetrics> {
    route.composite.as_ref().map_or_else(Vec::new, |c| {
        c.parts
            .iter()
            .map(|p| PartMetrics::new(&route.name, &p.name))
            .collect()
    })
}

/// A part's answer, read whole and checked to be JSON.
struct PartAnswer {
    body: Bytes,
    content_type: Option<HeaderValue>,
    status: u16,
}

/// How one part ended, and how long it took.
struct Done {
    index: usize,
    result: Result<PartAnswer, ProxyError>,
    elapsed: Duration,
}

/// What the access log says of a part.
#[derive(Clone, Copy)]
enum Seen {
    /// Not called, or cut short by a required part's failure.
    Cancelled,
    Answered(u16, Duration),
    Failed(&'static str, Duration),
}

/// The index of [`crate::metrics::PART_OUTCOMES`] for a failure.
fn outcome(e: &ProxyError) -> usize {
    match e {
        ProxyError::UpstreamTimeout | ProxyError::ConnectTimeout => 1,
        _ => 2,
    }
}

impl Gateway {
    pub(super) async fn forward_composite(
        &self,
        route: &RouteEntry,
        mut req: Box<ClientRequest>,
        ctx: &mut RequestCtx<'_>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let cfg = &route.config;
        let c = cfg.composite.as_ref().expect("a composite route has parts");
        let parts = &c.parts;
        // A composite route forwards no upgrade (its `upgrades` is empty): an HTTP/1.1 one
        // goes on as a plain request, an HTTP/2 extended CONNECT is refused (403), never
        // answered with the 200 that would open a tunnel.
        let none = super::upgrade::Handshake::prepare(ctx.upgrade.take(), route, &mut req)?;
        debug_assert!(none.is_none(), "a composite route allows no upgrade");
        // `buffer_request_body` (which the config sets on every composite route: 1 MiB
        // unless written), never over `max_body_size`: 413 beyond.
        req.body.buffer(route.body_limit()).await?;
        // The parts' answers are read as JSON: ask for them uncompressed.
        req.head.headers.remove(header::ACCEPT_ENCODING);
        // Each part is sent a copy of the head: the gateway's own fields go in it.
        ctx.settle_own(&mut req.head.headers);
        let query = match &req.rewritten {
            Some((_, q)) => q.clone(),
            None => req.target.uri.query().map(str::to_string),
        };
        let mut calls: Vec<Option<Call>> = Vec::with_capacity(parts.len());
        for part in parts {
            let to = &self.upstreams[part.upstream];
            let mut call = self.upstream_request(route, &to.upstream, req.replica(), ctx)?;
            if let Some(p) = &part.path {
                call.path_and_query = path_and_query(p, query.as_deref())
                    .ok_or(ProxyError::BadRequest("request target cannot be forwarded"))?;
            }
            if let Some(m) = &part.method {
                call.head.method = m.clone();
            }
            call.timeout = part.timeout;
            calls.push(Some(call));
        }
        drop(req);

        let used = AtomicU64::new(0);
        let max = c.max_response_size;
        let mut results: Vec<Option<Result<PartAnswer, ProxyError>>> =
            parts.iter().map(|_| None).collect();
        let mut seen = vec![Seen::Cancelled; parts.len()];
        let mut running = FuturesUnordered::new();
        for (i, p) in parts.iter().enumerate() {
            if p.input.is_none() {
                let call = calls[i].take().expect("each part is started once");
                running.push(Box::pin(self.call_part(i, p, call, &used, max)));
            }
        }
        let failed = loop {
            let Some(done) = running.next().await else {
                break None;
            };
            let i = done.index;
            let metrics = &route.parts[i];
            metrics.duration.observe(done.elapsed.as_secs_f64());
            match done.result {
                Ok(answer) => {
                    metrics.outcomes[0].inc();
                    seen[i] = Seen::Answered(answer.status, done.elapsed);
                    for (j, p) in parts.iter().enumerate() {
                        if p.input == Some(i) {
                            let mut call = calls[j].take().expect("each part is started once");
                            pipe(&mut call, &answer);
                            running.push(Box::pin(self.call_part(j, p, call, &used, max)));
                        }
                    }
                    results[i] = Some(Ok(answer));
                }
                Err(e) => {
                    metrics.outcomes[outcome(&e)].inc();
                    seen[i] = Seen::Failed(e.code(), done.elapsed);
                    tracing::debug!(route = %route.name, part = parts[i].name, error = %e, "composite: part failed");
                    if parts[i].required || matches!(e, ProxyError::ResponseTooLarge(_)) {
                        break Some((i, e));
                    }
                    results[i] = Some(Err(e));
                    if let Some(f) = fail_dependents(parts, i, &mut results) {
                        break Some(f);
                    }
                }
            }
        };
        drop(running);
        for (i, s) in seen.iter().enumerate() {
            if matches!(s, Seen::Cancelled) {
                route.parts[i].outcomes[3].inc();
            }
        }
        ctx.upstream_ms = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Answered(_, d) | Seen::Failed(_, d) => Some(d.as_secs_f64() * 1e3),
                Seen::Cancelled => None,
            })
            .reduce(f64::max);
        if AccessLog::enabled() {
            ctx.parts = Some(summary(parts, &seen));
        }
        if let Some((i, e)) = failed {
            return Err(ProxyError::Part(
                Arc::from(parts[i].name.as_str()),
                Box::new(e),
            ));
        }
        let body = merge(parts, &results, &ctx.request_id);
        let mut resp = Response::new(ResponseBody::full(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }

    /// Calls one part and reads its answer, within the part's timeout.
    async fn call_part(
        &self,
        index: usize,
        part: &PartConfig,
        call: Call,
        used: &AtomicU64,
        max: u64,
    ) -> Done {
        let start = Instant::now();
        let to = &self.upstreams[part.upstream];
        let result = tokio::time::timeout(part.timeout, answer(to, call, used, max))
            .await
            .unwrap_or(Err(ProxyError::UpstreamTimeout));
        Done {
            index,
            result,
            elapsed: start.elapsed(),
        }
    }
}

/// Sends `call` through the upstream's try loop and reads the answer whole: a 2xx JSON
/// body, not an event stream, within what is left of `max` (shared by the route's parts).
async fn answer(
    to: &WorkerUpstream,
    call: Call,
    used: &AtomicU64,
    max: u64,
) -> Result<PartAnswer, ProxyError> {
    let body_limit = call.body_limit;
    let called = to.upstream.call(&to.client, call).await;
    let answer = called
        .result
        .map_err(|e| ProxyError::from_call(e, body_limit))?;
    // Counts the request against the endpoint until the body is read.
    let _guard = answer.guard;
    let (head, mut body) = answer.response.into_parts();
    if !head.status.is_success() {
        return Err(ProxyError::PartStatus(head.status.as_u16()));
    }
    let content_type = head.headers.get(header::CONTENT_TYPE).cloned();
    let streams = content_type.as_ref().is_some_and(|v| {
        v.as_bytes()
            .get(..17)
            .is_some_and(|t| t.eq_ignore_ascii_case(b"text/event-stream"))
    });
    if streams {
        return Err(ProxyError::PartUnmergeable(
            "answered an event stream, which cannot be merged",
        ));
    }
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::Upstream(format!("body failed: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let len = data.len() as u64;
        if used.fetch_add(len, Ordering::Relaxed) + len > max {
            return Err(ProxyError::ResponseTooLarge(max));
        }
        // One frame (the common case) is kept as it came; more are joined.
        match (&mut first, &mut more) {
            (None, None) => first = Some(data),
            (Some(f), None) => {
                let mut m = BytesMut::with_capacity(f.len() + data.len());
                m.extend_from_slice(f);
                m.extend_from_slice(&data);
                first = None;
                more = Some(m);
            }
            (_, Some(m)) => m.extend_from_slice(&data),
        }
    }
    let body = match more {
        Some(m) => m.freeze(),
        None => first.unwrap_or_default(),
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return Err(ProxyError::PartUnmergeable(
            "answered a body that is not JSON",
        ));
    }
    Ok(PartAnswer {
        body,
        content_type,
        status: head.status.as_u16(),
    })
}

/// A pipeline step's request carries its input part's answer as its body.
fn pipe(call: &mut Call, input: &PartAnswer) {
    let h = &mut call.head.headers;
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(input.body.len()));
    h.remove(header::TRANSFER_ENCODING);
    match &input.content_type {
        Some(t) => h.insert(header::CONTENT_TYPE, t.clone()),
        None => h.remove(header::CONTENT_TYPE),
    };
    call.body = Replay::Bytes(input.body.clone());
}

/// Marks the parts downstream of failed part `failed` as failed (their input is missing);
/// the first `required` one among them fails the request.
fn fail_dependents(
    parts: &[PartConfig],
    failed: usize,
    results: &mut [Option<Result<PartAnswer, ProxyError>>],
) -> Option<(usize, ProxyError)> {
    let mut stack = vec![failed];
    while let Some(i) = stack.pop() {
        for (j, p) in parts.iter().enumerate() {
            if p.input != Some(i) {
                continue;
            }
            let e = ProxyError::PartInputFailed(Arc::from(parts[i].name.as_str()));
            if p.required {
                return Some((j, e));
            }
            results[j] = Some(Err(e));
            stack.push(j);
        }
    }
    None
}

/// The combined answer: `{"NAME": ANSWER | {"error":{…}}, …}` in part order, each
/// answer's bytes as the part sent them.
fn merge(
    parts: &[PartConfig],
    results: &[Option<Result<PartAnswer, ProxyError>>],
    request_id: &HeaderValue,
) -> Bytes {
    let size: usize = results
        .iter()
        .map(|r| match r {
            Some(Ok(a)) => a.body.len(),
            _ => 160,
        })
        .sum::<usize>()
        + parts.iter().map(|p| p.name.len() + 4).sum::<usize>()
        + 2;
    let mut out = Vec::with_capacity(size);
    out.push(b'{');
    for (i, (part, result)) in parts.iter().zip(results).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Part names are letters, digits, `-`, `_` and `.` (checked at load).
        out.push(b'"');
        out.extend_from_slice(part.name.as_bytes());
        out.extend_from_slice(b"\":");
        match result {
            Some(Ok(a)) => out.extend_from_slice(&a.body),
            Some(Err(e)) => {
                // As `ProxyError::Part` words it when a required part fails.
                let message = format!("part `{}`: {e}", part.name);
                let v = error_object(e.code(), &message, Some(request_id));
                serde_json::to_writer(&mut out, &v).expect("a JSON value serializes");
            }
            // Unreachable when no part failed the request: every part ran or failed.
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    Bytes::from(out)
}

/// The access log's `parts` field: `NAME:STATUS:MS,…`.
fn summary(parts: &[PartConfig], seen: &[Seen]) -> String {
    let mut s = String::with_capacity(parts.len() * 24);
    for (i, (p, seen)) in parts.iter().zip(seen).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = match seen {
            Seen::Answered(status, d) => {
                write!(s, "{}:{status}:{:.1}", p.name, d.as_secs_f64() * 1e3)
            }
            Seen::Failed(code, d) => write!(s, "{}:{code}:{:.1}", p.name, d.as_secs_f64() * 1e3),
            Seen::Cancelled => write!(s, "{}:cancelled:-", p.name),
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, input: Option<usize>, required: bool) -> PartConfig {
        PartConfig {
            name: name.into(),
            upstream: 0,
            path: None,
            method: None,
            required,
            timeout: Duration::from_secs(1),
            input,
        }
    }

    fn answered(body: &'static str) -> Option<Result<PartAnswer, ProxyError>> {
        Some(Ok(PartAnswer {
            body: Bytes::from_static(body.as_bytes()),
            content_type: None,
            status: 200,
        }))
    }

    #[test]
    fn the_answer_keeps_each_parts_bytes_and_the_error_shape() {
        let parts = [part("a", None, false), part("b.x", None, false)];
        let results = vec![
            answered("{\"k\": [1, 2]}"),
            Some(Err(ProxyError::UpstreamTimeout)),
        ];
        let body = merge(&parts, &results, &HeaderValue::from_static("rid-1"));
        assert!(
            body.starts_with(b"{\"a\":{\"k\": [1, 2]},\"b.x\":"),
            "{body:?}"
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["b.x"]["error"]["code"], "upstream_timeout");
        assert_eq!(v["b.x"]["error"]["request_id"], "rid-1");
        assert_eq!(
            v["b.x"]["error"]["message"],
            "part `b.x`: upstream did not answer in time"
        );
    }

    #[test]
    fn a_failure_reaches_every_step_downstream_and_a_required_one_fails_the_request() {
        // a ← b ← c, and d on its own.
        let mut parts = vec![
            part("a", None, false),
            part("b", Some(0), false),
            part("c", Some(1), false),
            part("d", None, false),
        ];
        let mut results: Vec<Option<Result<PartAnswer, ProxyError>>> =
            (0..4).map(|_| None).collect();
        assert!(fail_dependents(&parts, 0, &mut results).is_none());
        let failed = |r: &Option<Result<PartAnswer, ProxyError>>| match r {
            Some(Err(ProxyError::PartInputFailed(n))) => Some(n.to_string()),
            _ => None,
        };
        assert_eq!(failed(&results[1]).as_deref(), Some("a"));
        assert_eq!(failed(&results[2]).as_deref(), Some("b"));
        assert!(results[3].is_none());
        parts[2].required = true;
        let mut results: Vec<_> = (0..4).map(|_| None).collect();
        let (i, e) = fail_dependents(&parts, 0, &mut results).expect("c is required");
        assert_eq!((i, e.code()), (2, "part_input_failed"));
    }

    #[test]
    fn the_log_field_names_each_part_and_how_it_ended() {
        let parts = [
            part("a", None, false),
            part("b", None, false),
            part("c", None, false),
        ];
        let seen = [
            Seen::Answered(200, Duration::from_micros(1500)),
            Seen::Failed("upstream_timeout", Duration::from_millis(250)),
            Seen::Cancelled,
        ];
        assert_eq!(
            summary(&parts, &seen),
            "a:200:1.5,b:upstream_timeout:250.0,c:cancelled:-"
        );
    }
}
