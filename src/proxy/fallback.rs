//! Fallback between upstreams (and models) before the commit point. A route with
//! `fallback = [...]` sends the request to its own upstream and, when that fails in a way
//! `fallback_on` names — no endpoint available, refused, timed out or reset before the
//! response head, a 5xx, a 429 — to each fallback in turn, with the fallback's `model`
//! put in the JSON body. The commit point is the response head handed to the client: a
//! response that began is never replaced (a stream that fails later is the response
//! body's business). The body was buffered (`buffer_request_body`, 1 MiB by default on
//! such routes), so each upstream gets it whole. With `first_token_timeout` a 2xx is held
//! until its body's first bytes, and falls back when they do not come in time (the commit
//! point moves to those bytes). A 429 with `Retry-After` holds its
//! upstream off — fallback chains skip it — until then. Each upstream keeps its own
//! retries, breakers and outlier detection: a fallback is tried once they gave up.

use super::body::ResponseBody;
use super::context::{ClientRequest, RequestCtx};
use super::error::ProxyError;
use super::{Gateway, RouteEntry};
use crate::config::resilience::Conditions;
use crate::config::{RouteConfig, FALLBACK_BODY};
use crate::upstream::Upstream;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// The response header naming the upstream (and `:model`) that served a request on a
/// route with fallbacks.
pub const X_SERVED_BY: HeaderName = HeaderName::from_static("x-portcullis-served-by");

/// The longest a 429's `Retry-After` holds an upstream off (a hostile or broken upstream
/// cannot take itself out of a chain for a day).
const MAX_HOLD_OFF: Duration = Duration::from_secs(300);

impl Gateway {
    pub(super) async fn forward_with_fallback(
        &self,
        route: &RouteEntry,
        mut req: Box<ClientRequest>,
        ctx: &mut RequestCtx<'_>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let cfg = &route.config;
        req.body
            .buffer(cfg.buffer_request_body.unwrap_or(FALLBACK_BODY))
            .await?;
        let body = req.body.buffered.clone().unwrap_or_default();
        // Each step is sent a copy of the head: the gateway's own fields go in it.
        ctx.settle_own(&mut req.head.headers);
        let steps = std::iter::once((cfg.upstream, None)).chain(
            cfg.fallback
                .iter()
                .map(|f| (f.upstream, f.model.as_deref())),
        );
        let last_step = cfg.fallback.len();
        let mut last: Option<Result<Response<ResponseBody>, ProxyError>> = None;
        let mut held_off: Option<Duration> = None;
        for (step, (index, model)) in steps.enumerate() {
            let to = &self.upstreams[index];
            let name = to.upstream.name();
            if let Some(wait) = to.upstream.held_off() {
                tracing::debug!(route = %route.name, upstream = name, ?wait, "fallback: upstream held off by its Retry-After; skipped");
                held_off = Some(held_off.map_or(wait, |h| h.min(wait)));
                continue;
            }
            let mut attempt = req.replica();
            if let Some(m) = model {
                attempt.body.buffered = Some(with_model(&body, m));
            }
            let mut result = self.forward_to(route, to, attempt, ctx).await;
            let mut reason = fallback_reason(&cfg.fallback_on, &result);
            if let (None, Some(wait), Ok(r), true) = (
                &reason,
                cfg.first_token_timeout,
                &mut result,
                step < last_step,
            ) {
                if r.status().is_success() {
                    reason = first_bytes(r.body_mut(), wait).await;
                }
            }
            match reason {
                None => {
                    let served = route.served_by[step].clone();
                    ctx.served_by = Some(served.clone());
                    return result.map(|mut r| {
                        r.headers_mut().insert(X_SERVED_BY, served);
                        r
                    });
                }
                Some(reason) => {
                    if let Ok(r) = &result {
                        if r.status() == StatusCode::TOO_MANY_REQUESTS {
                            if let Some(wait) = retry_after(r.headers()) {
                                to.upstream.hold_off(wait.min(MAX_HOLD_OFF));
                            }
                        }
                    }
                    tracing::warn!(route = %route.name, upstream = name, step, reason = %reason, "fallback: upstream failed before the response began");
                    route.metrics.fallback(name, &reason);
                    last = Some(result);
                }
            }
        }
        match last {
            // The last upstream's own answer (a 5xx or 429 it sent) or failure.
            Some(result) => result,
            None => Err(ProxyError::RateLimited(held_off.unwrap_or_default())),
        }
    }
}

/// Waits up to `wait` for the body's first bytes (kept to be sent first); why the
/// response falls back when they do not come.
async fn first_bytes(body: &mut ResponseBody, wait: Duration) -> Option<String> {
    match tokio::time::timeout(wait, body.first_frame()).await {
        Ok(Ok(())) => None,
        // The reason is a metric label: the error itself goes to the log.
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "fallback: the body failed before its first bytes");
            Some("reset_before_first_bytes".into())
        }
        Err(_) => Some("first_token_timeout".into()),
    }
}

/// Why `result` falls back under `on`, or `None` when it is the answer.
fn fallback_reason(
    on: &Conditions,
    result: &Result<Response<ResponseBody>, ProxyError>,
) -> Option<String> {
    match result {
        Ok(r) => on
            .status(r.status().as_u16())
            .then(|| format!("status {}", r.status().as_u16())),
        Err(e) => {
            let falls = match e {
                // Nothing was sent: as good as a refused connection.
                ProxyError::NoEndpoint(_)
                | ProxyError::Unavailable(_)
                | ProxyError::ConnectFailed(_)
                | ProxyError::ConnectTimeout => on.connect,
                ProxyError::UpstreamTimeout => on.timeout,
                ProxyError::Upstream(_) => on.reset,
                // The client's doing (its body), or not the upstream's: no fallback.
                _ => false,
            };
            falls.then(|| e.code().to_string())
        }
    }
}

/// The `x-portcullis-served-by` value of each step of a route's chain (`UPSTREAM` or
/// `UPSTREAM:MODEL`), made once per config; empty for a route without fallbacks.
pub(super) fn served_by(route: &RouteConfig, upstreams: &[Arc<Upstream>]) -> Vec<HeaderValue> {
    if route.fallback.is_empty() {
        return Vec::new();
    }
    std::iter::once((route.upstream, None))
        .chain(
            route
                .fallback
                .iter()
                .map(|f| (f.upstream, f.model.as_deref())),
        )
        .map(|(index, model)| {
            let upstream = upstreams[index].name();
            let text = match model {
                Some(m) => format!("{upstream}:{m}"),
                None => upstream.to_string(),
            };
            HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
        })
        .collect()
}

/// The JSON body with its top-level `model` replaced; a body that is not a JSON object is
/// sent as it is.
fn with_model(body: &Bytes, model: &str) -> Bytes {
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) {
        Ok(mut object) => {
            object.insert("model".into(), model.into());
            serde_json::to_vec(&object).map_or_else(|_| body.clone(), Bytes::from)
        }
        Err(_) => body.clone(),
    }
}

/// `Retry-After` as a duration: delay-seconds, or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(h: &http::HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    when.duration_since(std::time::SystemTime::now()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_replaced_and_other_bodies_pass_unchanged() {
        let b = Bytes::from_static(
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&with_model(&b, "llama-3")).unwrap();
        assert_eq!(v["model"], "llama-3");
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(v["stream"], true);
        let not_json = Bytes::from_static(b"model=gpt");
        assert_eq!(with_model(&not_json, "x"), not_json);
        let array = Bytes::from_static(b"[1,2]");
        assert_eq!(with_model(&array, "x"), array);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn what_falls_back() {
        let on = Conditions {
            connect: true,
            timeout: true,
            reset: false,
            any_5xx: true,
            statuses: vec![429],
        };
        let status = |s: u16| {
            let mut r = Response::new(ResponseBody::full(Bytes::new()));
            *r.status_mut() = StatusCode::from_u16(s).unwrap();
            Ok(r)
        };
        assert_eq!(
            fallback_reason(&on, &status(503)).as_deref(),
            Some("status 503")
        );
        assert_eq!(
            fallback_reason(&on, &status(429)).as_deref(),
            Some("status 429")
        );
        assert_eq!(fallback_reason(&on, &status(404)), None);
        assert_eq!(fallback_reason(&on, &status(200)), None);
        let err = |e| Err(e);
        assert_eq!(
            fallback_reason(&on, &err(ProxyError::Unavailable("u".into()))).as_deref(),
            Some("no_healthy_endpoint")
        );
        assert!(fallback_reason(&on, &err(ProxyError::UpstreamTimeout)).is_some());
        assert_eq!(
            fallback_reason(&on, &err(ProxyError::Upstream("reset".into()))),
            None
        );
        assert_eq!(fallback_reason(&on, &err(ProxyError::MalformedBody)), None);
        assert_eq!(fallback_reason(&on, &err(ProxyError::ClientClosed)), None);
    }
}
