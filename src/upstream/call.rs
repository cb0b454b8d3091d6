//! One request to an upstream: pick an endpoint, send a try, classify how it ended, feed
//! that to the endpoint's breaker and outlier detection, and decide — once per try —
//! whether to try again (`[upstreams.retry]`: conditions, idempotency, a replayable body,
//! tries and time left, the retry budget, backoff).

use super::classify::{Outcome, TryError};
use super::client::{upstream_uri, SendTry};
use super::replay::Replay;
use super::{retry, ActiveGuard, Endpoint, NoPick, Picked, Upstream};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{header, Method, Request, Response};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A request as the proxy hands it to an upstream: everything but the endpoint.
pub struct Call {
    /// The head to send; its URI is set per try to the endpoint's.
    pub head: http::request::Parts,
    pub path_and_query: PathAndQuery,
    /// Whether each try carries the endpoint's own `Host` (HTTP/1 with the route's
    /// `host = target` policy).
    pub endpoint_host: bool,
    /// Fields every try adds to the head (`X-Forwarded-*`; `traceparent` and
    /// `X-Request-Id` unless plugins saw them), which the head lacks.
    pub added: AddedFields,
    pub body: Replay,
    /// The route's `max_body_size`, applied to a streamed body as it is sent.
    pub body_limit: u64,
    /// The request's consistent-hash key (0 for other balancers).
    pub key: u64,
    /// The whole call's time limit, retries included.
    pub timeout: Duration,
    /// The caller writes the response head on to its client as it came, reading none of
    /// its fields: the own HTTP/1.1 client may then keep a plain head unparsed
    /// ([`super::h1::RawHead`], in the response's body) and leave the response's map
    /// empty for the fields the caller adds.
    pub raw_head: bool,
}

/// Fields the gateway adds to the head of every try, kept out of its map: the own
/// HTTP/1 client writes them as it encodes the head, the other clients insert them into
/// a copy of the map ([`Added::insert_into`]). Each insert cost ~250 instructions
/// (hashing the name, probing, growing the map; callgrind), six per request.
///
/// Names are kept by reference (a `static`), so the five places take 240 bytes, not 360:
/// the call is moved into its boxed future for every request.
#[derive(Clone, Default)]
pub struct AddedFields([Option<(&'static HeaderName, HeaderValue)>; 5]);

impl AddedFields {
    /// Adds a field the head does not have (at most five). (Found by a scan: a length
    /// kept beside them measured 60 instructions more per request, callgrind.)
    pub fn push(&mut self, name: &'static HeaderName, value: HeaderValue) {
        let free = self.0.iter_mut().find(|f| f.is_none());
        *free.expect("at most five added fields") = Some((name, value));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        self.0
            .iter()
            .map_while(|f| f.as_ref().map(|(n, v)| (*n, v)))
    }
}

/// What one try adds to the head: the endpoint's own `Host` (replacing the head's) and
/// the call's [`AddedFields`]; and `raw_head`, the call's [`Call::raw_head`].
#[derive(Clone, Copy)]
pub struct Added<'a> {
    pub host: Option<&'a HeaderValue>,
    pub fields: &'a AddedFields,
    pub raw_head: bool,
}

impl Added<'_> {
    /// Puts the fields into `h`, for a client that sends a head from its map.
    pub fn insert_into(self, h: &mut HeaderMap) {
        if let Some(v) = self.host {
            h.insert(header::HOST, v.clone());
        }
        for (n, v) in self.fields.iter() {
            h.insert(n.clone(), v.clone());
        }
    }
}

/// A response head from an endpoint.
pub struct Answer<B> {
    pub response: Response<B>,
    /// Counts the request against the endpoint until the response body is done.
    pub guard: ActiveGuard,
    /// Time from sending the try to its response head.
    pub rtt: Duration,
}

/// Why a call got no response.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The upstream has no endpoints at all; the message says why.
    #[error("{0}")]
    NoEndpoint(String),
    /// Every endpoint is unhealthy, ejected or behind an open breaker.
    #[error("no endpoint of upstream `{0}` is available")]
    Unavailable(String),
    /// The last try failed.
    #[error(transparent)]
    Try(#[from] TryError),
}

/// How a call ended, and the last endpoint it tried (for the access log).
pub struct Called<B> {
    pub endpoint: Option<Arc<str>>,
    pub result: Result<Answer<B>, CallError>,
}

/// Methods whose request may be sent twice (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl Upstream {
    /// Sends `call` through `client`, retrying as the upstream's policy allows.
    pub fn call<'a, C: SendTry>(
        &'a self,
        client: &'a C,
        call: Call,
    ) -> impl Future<Output = Called<C::Body>> + use<'a, C> {
        self.call_with(client, move || call)
    }

    /// [`Self::call`] of the call `make` makes when the future starts: made there, it is
    /// made in the future's own state (which the proxy boxes for every request) instead
    /// of being copied into it.
    ///
    /// An `async move` block rather than an `async fn`, which would hold its arguments
    /// twice (as arguments and as locals).
    #[allow(clippy::manual_async_fn)] // see above
    pub fn call_with<'a, C: SendTry, F: FnOnce() -> Call + 'a>(
        &'a self,
        client: &'a C,
        make: F,
    ) -> impl Future<Output = Called<C::Body>> + use<'a, C, F> {
        async move {
            let mut call = make();
            let retry = self.config.retry.as_ref();
            let attempts = retry.map_or(1, |r| r.attempts);
            // One clock read at each try's start and end, given to what needs the time
            // then (the retry budget, the breakers, the latency estimate, the pool):
            // each read costs ~25 ns here. The call's start is also its first try's.
            // Each is put on the upstream's clock (nanoseconds) once, for all of them:
            // each `Instant` subtraction costs ~37 instructions (callgrind), and a try
            // made five.
            let start = Instant::now();
            let start_ns = self.clock.at(start);
            let deadline = start + call.timeout;
            if let Some(b) = &self.budget {
                b.deposit(start_ns);
            }
            let idempotent = idempotent(&call.head.method);
            let mut template = Template(Some(std::mem::replace(&mut call.head, empty_head())));
            let mut tried: Vec<Arc<Endpoint>> = Vec::new();
            let mut last: Option<TryError> = None;
            let mut endpoint_name = None;
            let done = |endpoint, result| Called { endpoint, result };
            for try_no in 1..=attempts {
                // A try whose client consumed the template and kept it ends the tries.
                if template.0.is_none() {
                    break;
                }
                let (sent, sent_ns) = match try_no {
                    1 => (start, start_ns),
                    _ => {
                        let now = Instant::now();
                        (now, self.clock.at(now))
                    }
                };
                let Picked {
                    endpoint,
                    admission,
                } = match self.pick_next(call.key, &tried, sent_ns) {
                    Ok(p) => p,
                    Err(_) if last.is_some() => break,
                    Err(NoPick::Empty) => {
                        return done(None, Err(CallError::NoEndpoint(self.unavailable_reason())))
                    }
                    Err(NoPick::Unavailable) => {
                        return done(None, Err(CallError::Unavailable(self.name().into())))
                    }
                };
                endpoint_name = Some(endpoint.address.clone());
                let guard = ActiveGuard::new(endpoint.clone());
                // Each try is lent the template. The last possible one need not leave it;
                // earlier ones must (a client that consumes it leaves a copy) — unless the
                // only failure a later try could follow is one that leaves the head unsent:
                // a method that is not idempotent is tried again only when no connection
                // could be made (so a POST to a model is not copied).
                let bounds = TryBounds {
                    sent,
                    deadline,
                    per_try: retry.and_then(|r| r.per_try_timeout),
                    keep_body: try_no < attempts,
                    keep_head: try_no < attempts && (idempotent || !client.gives_back_unsent()),
                };
                let attempt =
                    Self::send_try(client, &mut call, &mut template.0, &endpoint, bounds).await;
                let outcome = match &attempt {
                    Ok(resp) => Outcome::Status(resp.status().as_u16()),
                    Err(e) => e.outcome(),
                };
                if let (Err(e), false) = (&attempt, outcome == Outcome::ClientBody) {
                    tracing::warn!(upstream = self.name(), endpoint = &*endpoint.address, error = %e, try_no, "upstream request failed");
                }
                let ended = self.clock.now();
                self.record(&endpoint, admission, outcome, ended);
                let retrying = retry.is_some_and(|r| outcome.retryable(&r.on, idempotent))
                    && call.body.replayable()
                    && self
                        .may_retry(try_no, attempts, deadline, &endpoint.address, outcome)
                        .await;
                match attempt {
                    Ok(response) if !retrying => {
                        let rtt = Duration::from_nanos(ended.saturating_sub(sent_ns));
                        endpoint.observe_latency(rtt, ended);
                        let answer = Answer {
                            response,
                            guard,
                            rtt,
                        };
                        return done(endpoint_name, Ok(answer));
                    }
                    Err(e) if !retrying => return done(endpoint_name, Err(e.into())),
                    Err(e) => last = Some(e),
                    // A status the policy retries: the response is dropped unread.
                    Ok(_) => {}
                }
                tried.push(endpoint);
            }
            let err = last.map_or_else(|| CallError::Unavailable(self.name().into()), Into::into);
            done(endpoint_name, Err(err))
        }
    }

    /// A retry goes to an endpoint not tried yet; if none is left, any usable one.
    fn pick_next(&self, key: u64, tried: &[Arc<Endpoint>], now: u64) -> Result<Picked, NoPick> {
        match self.pick_excluding(key, tried, now) {
            Err(NoPick::Unavailable) if !tried.is_empty() => self.pick_excluding(key, &[], now),
            other => other,
        }
    }

    /// One try to `endpoint` of the head in `slot`: its URI (and `Host`, added as the head
    /// is sent), the body, the per-try timeout within the call's deadline. A streamed
    /// body the try never read is taken back.
    async fn send_try<C: SendTry>(
        client: &C,
        call: &mut Call,
        slot: &mut Option<http::request::Parts>,
        endpoint: &Endpoint,
        bounds: TryBounds,
    ) -> Result<Response<C::Body>, TryError> {
        let head = slot.as_mut().expect("the template, checked by the loop");
        head.uri = upstream_uri(
            client.scheme(),
            &endpoint.authority,
            call.path_and_query.clone(),
        );
        let added = Added {
            host: call.endpoint_host.then_some(&endpoint.host_header),
            fields: &call.added,
            raw_head: call.raw_head,
        };
        let (body, give_back) = call.body.take(call.body_limit, bounds.keep_body);
        // An instant, not a duration: no clock read here or in the timer.
        let until = bounds
            .per_try
            .and_then(|t| bounds.sent.checked_add(t))
            .map_or(bounds.deadline, |end| end.min(bounds.deadline));
        let attempt = client
            .send(slot, added, body, bounds.keep_head, bounds.sent, until)
            .await;
        if let Some(rx) = give_back {
            call.body.recover(rx);
        }
        attempt
    }

    /// Whether one more try fits: tries left, time left, and the retry budget agrees.
    /// Waits out the backoff before saying yes.
    async fn may_retry(
        &self,
        try_no: u32,
        attempts: u32,
        deadline: Instant,
        endpoint: &str,
        outcome: Outcome,
    ) -> bool {
        let (Some(cfg), Some(budget)) = (self.config.retry.as_ref(), self.budget.as_ref()) else {
            return false;
        };
        if try_no >= attempts || Instant::now() >= deadline {
            return false;
        }
        if !budget.withdraw(self.clock.now()) {
            tracing::warn!(
                upstream = self.name(),
                endpoint,
                ?outcome,
                "retry budget exhausted; not retrying"
            );
            return false;
        }
        let pause = retry::backoff(cfg, try_no);
        tracing::debug!(
            upstream = self.name(),
            endpoint,
            ?outcome,
            try_no,
            ?pause,
            "retrying"
        );
        if !pause.is_zero() {
            tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
        }
        Instant::now() < deadline
    }
}

/// What bounds one try: the call's deadline, the per-try timeout, and whether a streamed
/// body must come back if the try never reads it and the head in any case (a later try
/// may need them).
struct TryBounds {
    /// When the try starts.
    sent: Instant,
    deadline: Instant,
    per_try: Option<Duration>,
    keep_body: bool,
    /// A later try may need the head: the client gives it back.
    keep_head: bool,
}

/// The head each try of a call is lent. A head still here when the call ends (a later
/// try might have needed it) gives its map to the thread's spares, for the next request
/// read or response head received.
struct Template(Option<http::request::Parts>);

impl Drop for Template {
    fn drop(&mut self) {
        if let Some(head) = self.0.take() {
            crate::spares::give_map(head.headers);
        }
    }
}

/// A placeholder head (the call's own is taken as the template of its tries).
fn empty_head() -> http::request::Parts {
    Request::new(()).into_parts().0
}

/// A copy of a request head for one try (extensions are not carried upstream anyway).
pub fn clone_head(p: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::body::UpstreamBody;
    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// Scripted endpoints: each try takes the next reply (after its delay) and records
    /// which endpoint it went to, the body it carried and its head. `gives_back`: a
    /// client that gives a refused try's head back (`Some(true)`), one that says it does
    /// and does not (`Some(false)`), or one that does not say so (`None`).
    #[derive(Default)]
    struct Script {
        replies: Mutex<VecDeque<(Duration, Result<u16, TryError>)>>,
        seen: Mutex<Vec<(String, Bytes)>>,
        heads: Mutex<Vec<(Method, http::HeaderMap)>>,
        gives_back: Option<bool>,
    }

    impl Script {
        fn new(replies: impl IntoIterator<Item = (u64, Result<u16, TryError>)>) -> Self {
            Script {
                replies: Mutex::new(
                    replies
                        .into_iter()
                        .map(|(ms, r)| (Duration::from_millis(ms), r))
                        .collect(),
                ),
                ..Script::default()
            }
        }

        fn seen(&self) -> Vec<(String, Bytes)> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl SendTry for Script {
        type Body = ();

        async fn send(
            &self,
            slot: &mut Option<http::request::Parts>,
            added: Added<'_>,
            body: UpstreamBody,
            keep: bool,
            _at: Instant,
            until: Instant,
        ) -> Result<Response<()>, TryError> {
            crate::upstream::client::within(until, self.reply(slot, added, body, keep)).await
        }

        fn gives_back_unsent(&self) -> bool {
            self.gives_back.is_some()
        }

        fn scheme(&self) -> http::uri::Scheme {
            http::uri::Scheme::HTTP
        }
    }

    impl Script {
        async fn reply(
            &self,
            slot: &mut Option<http::request::Parts>,
            added: Added<'_>,
            body: UpstreamBody,
            keep: bool,
        ) -> Result<Response<()>, TryError> {
            // A client that consumes the head.
            let head = crate::upstream::client::take_head(slot, added, keep);
            let req = Request::from_parts(head, body);
            let (delay, reply) = self
                .replies
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted reply");
            let to = req.uri().authority().unwrap().to_string();
            let head = (req.method().clone(), req.headers().clone());
            self.heads.lock().unwrap().push(head);
            if reply == Err(TryError::ConnectFailed("refused".into())) {
                // Nothing was sent: the body is not read.
                self.seen.lock().unwrap().push((to, Bytes::new()));
                if self.gives_back == Some(true) {
                    *slot = Some(req.into_parts().0);
                }
            } else {
                let body = req.into_body().collect().await.map(|c| c.to_bytes());
                self.seen
                    .lock()
                    .unwrap()
                    .push((to, body.unwrap_or_default()));
            }
            tokio::time::sleep(delay).await;
            reply.map(|s| {
                let mut r = Response::new(());
                *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
                r
            })
        }
    }

    fn upstream(sections: &str) -> Upstream {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"10.0.0.1:80\" }}, {{ address = \"10.0.0.2:80\" }}]\n{sections}\n"
        );
        let cfg = crate::config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        Upstream::new(cfg.upstreams.into_iter().next().unwrap())
    }

    fn call(method: Method, body: &'static str, timeout_ms: u64) -> Call {
        let mut head = Request::new(()).into_parts().0;
        head.method = method;
        Call {
            head,
            path_and_query: PathAndQuery::from_static("/x"),
            endpoint_host: true,
            added: AddedFields::default(),
            body: Replay::Bytes(Bytes::from_static(body.as_bytes())),
            body_limit: 1 << 20,
            key: 0,
            timeout: Duration::from_millis(timeout_ms),
            raw_head: false,
        }
    }

    const RETRY: &str = "[upstreams.retry]\nattempts = 3\non = [\"connect\", \"timeout\", \"reset\", 503]\nbackoff = \"0ms\"\nbudget_percent = 100.0\nbudget_min_per_second = 100\n";

    fn refused() -> Result<u16, TryError> {
        Err(TryError::ConnectFailed("refused".into()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_connection_is_retried_elsewhere_for_any_method_with_its_body() {
        let up = upstream(RETRY);
        let script = Script::new([(0, refused()), (0, Ok(200))]);
        let called = up.call(&script, call(Method::POST, "payload", 1000)).await;
        assert_eq!(called.result.unwrap().response.status(), 200);
        let seen = script.seen();
        assert_eq!(seen.len(), 2);
        assert_ne!(seen[0].0, seen[1].0, "the retry went to the other endpoint");
        assert_eq!(seen[1].1, "payload");
        assert_eq!(called.endpoint.as_deref(), Some(&*seen[1].0));
    }

    /// A POST is tried again only when no connection could be made; a client that gives
    /// that try's head back has it sent again as it was (no copy is made beforehand), one
    /// that does not has a copy sent, and one that says it gives it back and does not
    /// ends the call with the failure rather than sending something else.
    #[tokio::test(start_paused = true)]
    async fn a_refused_post_is_sent_again_with_its_own_head() {
        for gives_back in [Some(true), None] {
            let up = upstream(RETRY);
            let script = Script {
                gives_back,
                ..Script::new([(0, refused()), (0, refused()), (0, Ok(200))])
            };
            let mut post = call(Method::POST, "payload", 1000);
            post.head
                .headers
                .insert("x-model", http::HeaderValue::from_static("m1"));
            let called = up.call(&script, post).await;
            assert_eq!(
                called.result.unwrap().response.status(),
                200,
                "{gives_back:?}"
            );
            let (seen, heads) = (script.seen(), script.heads.lock().unwrap().clone());
            assert_eq!(heads.len(), 3);
            for (i, (method, headers)) in heads.iter().enumerate() {
                assert_eq!(method, Method::POST, "{gives_back:?} try {i}");
                assert_eq!(headers["x-model"], "m1", "{gives_back:?} try {i}");
                assert_eq!(headers[header::HOST], &*seen[i].0, "each try's own Host");
            }
            assert_eq!(seen[2].1, "payload");
        }
        let up = upstream(RETRY);
        let script = Script {
            gives_back: Some(false),
            ..Script::new([(0, refused()), (0, Ok(200))])
        };
        let called = up.call(&script, call(Method::POST, "payload", 1000)).await;
        assert!(matches!(
            called.result,
            Err(CallError::Try(TryError::ConnectFailed(_)))
        ));
        assert_eq!(script.seen().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_status_is_retried_only_for_idempotent_methods() {
        let up = upstream(RETRY);
        let script = Script::new([(0, Ok(503)), (0, Ok(200))]);
        let get = up.call(&script, call(Method::GET, "", 1000)).await;
        assert_eq!(get.result.unwrap().response.status(), 200);
        let script = Script::new([(0, Ok(503)), (0, Ok(200))]);
        let post = up.call(&script, call(Method::POST, "", 1000)).await;
        assert_eq!(post.result.unwrap().response.status(), 503);
        assert_eq!(script.seen().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_try_times_out_per_try_and_the_call_stops_at_its_deadline() {
        let up = upstream(&format!("{RETRY}per_try_timeout = \"100ms\"\n"));
        let script = Script::new([(500, Ok(200)), (500, Ok(200)), (500, Ok(200))]);
        let started = Instant::now();
        let called = up.call(&script, call(Method::GET, "", 250)).await;
        assert!(matches!(
            called.result,
            Err(CallError::Try(TryError::Timeout))
        ));
        assert_eq!(script.seen().len(), 3, "100 + 100 + the 50 ms left");
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_retry_section_a_refused_post_is_tried_again_elsewhere() {
        let up = upstream("");
        let script = Script::new([(0, refused()), (0, Ok(200))]);
        let called = up.call(&script, call(Method::POST, "body", 1000)).await;
        assert_eq!(called.result.unwrap().response.status(), 200);
        let seen = script.seen();
        assert_eq!(seen.len(), 2);
        assert_ne!(seen[0].0, seen[1].0, "the retry went to the other endpoint");
        assert_eq!(seen[1].1, "body", "the unread body went with it");
    }

    #[tokio::test(start_paused = true)]
    async fn with_retries_disabled_one_try_decides() {
        let up = upstream("[upstreams.retry]\nenabled = false\n");
        let script = Script::new([(0, refused())]);
        let called = up.call(&script, call(Method::GET, "", 1000)).await;
        assert!(matches!(
            called.result,
            Err(CallError::Try(TryError::ConnectFailed(_)))
        ));
        assert_eq!(script.seen().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_budget_stops_retries() {
        let up = upstream(
            "[upstreams.retry]\nattempts = 5\non = [\"connect\"]\nbackoff = \"0ms\"\nbudget_percent = 0.0\nbudget_min_per_second = 0\n",
        );
        let script = Script::new([(0, refused()), (0, Ok(200))]);
        let called = up.call(&script, call(Method::GET, "", 1000)).await;
        assert!(called.result.is_err());
        assert_eq!(script.seen().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_pauses_between_tries_within_its_cap() {
        let up = upstream(
            "[upstreams.retry]\nattempts = 3\non = [\"connect\"]\nbackoff = \"100ms\"\nmax_backoff = \"150ms\"\nbudget_percent = 100.0\nbudget_min_per_second = 100\n",
        );
        let script = Script::new([(0, refused()), (0, refused()), (0, Ok(200))]);
        let started = Instant::now();
        let called = up.call(&script, call(Method::GET, "", 10_000)).await;
        assert_eq!(called.result.unwrap().response.status(), 200);
        // Full jitter: each pause is below its ceiling (100 ms, then 150 ms).
        assert!(
            started.elapsed() <= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_clients_body_failures_are_not_retried_nor_held_against_the_endpoint() {
        use crate::upstream::classify::ClientBodyFault;
        let up = upstream(&format!(
            "{RETRY}[upstreams.circuit_breaker]\nconsecutive_failures = 1\n[upstreams.outlier_detection]\nconsecutive_gateway_errors = 1\n"
        ));
        for err in [
            TryError::BodyTooLarge,
            TryError::ClientBody(ClientBodyFault::Malformed),
            TryError::ClientBody(ClientBodyFault::Gone),
            TryError::ClientBody(ClientBodyFault::Gone),
        ] {
            let script = Script::new([(0, Err(err.clone()))]);
            let called = up.call(&script, call(Method::PUT, "", 1000)).await;
            assert!(
                matches!(&called.result, Err(CallError::Try(e)) if *e == err),
                "{err:?}"
            );
            assert_eq!(script.seen().len(), 1, "{err:?} is not retried");
        }
        let now = up.clock.now();
        assert!(
            up.endpoints().iter().all(|e| up.usable(e, now)),
            "no breaker opened, no endpoint ejected"
        );
    }
}
