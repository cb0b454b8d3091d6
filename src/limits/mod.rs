//! Rate limits and token budgets (`[[limits]]`, applied by routes): reserve at admission,
//! settle when the response ends.
//!
//! A request is admitted when every limit of its route has room for its estimated cost;
//! the cost is reserved at once, so a concurrent burst sees every reservation made before
//! it. When the response body ends, each token reservation is settled with the usage the
//! upstream reported (`ai::Meter`): the difference is refunded or charged. A burst
//! therefore overshoots a budget by at most the settlement error of the requests in flight
//! (what they used beyond their estimate), never by the whole burst.
//!
//! - [`window`]: the sliding window (30 sub-windows) `requests` and `tokens` count in.
//! - [`local`]: the in-process backend (a sharded map per limit).
//! - [`redis`]: the Redis backend (one Lua round trip to reserve, one to settle).
//!
//! The estimate of a model call: input = the request body's length / 4 (about 4 bytes a
//! token in English text and JSON) — or, on a route with `ai.tokenizer`, the prompt's
//! exact token count by that encoding where the API's shape is known (`ai::prompt` says
//! what is counted; anything else, or more than 1 MiB of text, keeps the length
//! estimate) — output = its `max_completion_tokens`, `max_tokens` or
//! `max_output_tokens`, else the route's `ai.default_max_tokens`. A `total` limit reserves
//! both. Settling, a count the response reported replaces its estimate; one it did not
//! report (a stream cut short, a client gone, an unreadable body) stays charged at the
//! estimate — unless the response was an error (status ≥ 400, the upstream's or the
//! gateway's own), which is refunded.

pub mod local;
pub mod redis;
pub mod window;

use crate::config::{
    KeyPart, LimitBackend, LimitConfig, LimitKind, OnBackendError, RedisConfig, TokenCount,
};
use http::HeaderMap;
use local::Local;
use prometheus::IntCounter;
use redis::Redis;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use window::Taken;

/// One `[[limits]]` definition with its counters.
pub struct Limit {
    pub config: LimitConfig,
    pub name: Arc<str>,
    /// The hash of the definition: the counters survive a reload that keeps it.
    pub hash: u64,
    /// The key's kinds, e.g. `consumer+model` (the metrics label; never its values).
    pub key_kind: String,
    pub local: Arc<Local>,
    pub refused: IntCounter,
    backend_errors: IntCounter,
    /// Redis failed on the last try (warn once per outage, not per request).
    redis_down: AtomicBool,
}

/// Every limit of a loaded config, and the Redis connection they share.
pub struct Limits {
    pub list: Vec<Arc<Limit>>,
    pub redis: Option<Arc<Redis>>,
}

/// The limits one route applies.
#[derive(Clone, Default)]
pub struct RouteLimits {
    pub list: Vec<Arc<Limit>>,
    pub redis: Option<Arc<Redis>>,
}

impl RouteLimits {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether any of them counts tokens (the request body is then read).
    pub fn counts_tokens(&self) -> bool {
        self.list
            .iter()
            .any(|l| matches!(l.config.kind, LimitKind::Tokens { .. }))
    }

    /// Whether any of them counts input tokens (a route's tokenizer then counts them).
    pub fn counts_input_tokens(&self) -> bool {
        self.list.iter().any(|l| {
            matches!(
                l.config.kind,
                LimitKind::Tokens {
                    count: TokenCount::Input | TokenCount::Total,
                    ..
                }
            )
        })
    }
}

impl Limits {
    /// The limits of `configs`; a definition the running `previous` tables also have
    /// keeps its counters (and an unchanged `[redis]` its connection).
    pub fn build(
        configs: &[LimitConfig],
        redis: Option<&RedisConfig>,
        previous: Option<&Limits>,
    ) -> Self {
        let redis = redis.and_then(|c| {
            if let Some(r) = previous
                .and_then(|p| p.redis.as_ref())
                .filter(|r| r.config == *c)
            {
                return Some(r.clone());
            }
            match Redis::new(c.clone()) {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    tracing::error!(url = %c.url, error = %e, "cannot set up the Redis connection of the limits; they follow on_backend_error");
                    None
                }
            }
        });
        let m = crate::metrics::get();
        let list = configs
            .iter()
            .map(|c| {
                let hash = crate::hash::hash_bytes(format!("{c:?}").as_bytes());
                let local = previous
                    .and_then(|p| p.list.iter().find(|l| l.hash == hash))
                    .map_or_else(Default::default, |l| l.local.clone());
                let key_kind = if c.key.is_empty() {
                    "global".to_string()
                } else {
                    c.key
                        .iter()
                        .map(KeyPart::as_str)
                        .collect::<Vec<_>>()
                        .join("+")
                };
                let policy = match c.on_backend_error {
                    OnBackendError::Deny => "deny",
                    OnBackendError::Local => "local",
                };
                Arc::new(Limit {
                    name: Arc::from(c.name.as_str()),
                    hash,
                    refused: m.rate_limited.with_label_values(&[&c.name, &key_kind]),
                    backend_errors: m
                        .rate_limit_backend_errors
                        .with_label_values(&[&c.name, policy]),
                    key_kind,
                    local,
                    config: c.clone(),
                    redis_down: AtomicBool::new(false),
                })
            })
            .collect();
        Limits { list, redis }
    }

    /// The limits route `indices` names.
    pub fn for_route(&self, indices: &[usize]) -> RouteLimits {
        RouteLimits {
            list: indices.iter().map(|&i| self.list[i].clone()).collect(),
            redis: self.redis.clone(),
        }
    }
}

/// What a request is counted by and what it is estimated to cost.
pub struct Facts<'a> {
    pub consumer: Option<&'a str>,
    pub route: &'a str,
    pub model: Option<&'a str>,
    pub client: IpAddr,
    pub headers: &'a HeaderMap,
    /// Estimated input and output tokens (0 when the request is not a model call).
    pub input: u64,
    pub output: u64,
    /// The request's id (a concurrency slot in Redis is named by it).
    pub request_id: &'a str,
}

impl Limit {
    /// The key of this request under this limit: its parts' values joined by U+001F
    /// (which no header value carries); a missing value is empty.
    fn key(&self, f: &Facts<'_>) -> String {
        let mut k = String::new();
        for (i, part) in self.config.key.iter().enumerate() {
            if i > 0 {
                k.push('\u{1f}');
            }
            match part {
                KeyPart::Consumer => k.push_str(f.consumer.unwrap_or("")),
                KeyPart::Route => k.push_str(f.route),
                KeyPart::Model => k.push_str(f.model.unwrap_or("")),
                KeyPart::ClientAddress => {
                    let _ = write!(k, "{}", f.client);
                }
                KeyPart::Header(h) => {
                    k.push_str(f.headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or(""))
                }
            }
        }
        k
    }

    /// What the request reserves under this limit.
    fn cost(&self, f: &Facts<'_>) -> u64 {
        match self.config.kind {
            LimitKind::Tokens { count, .. } => count_of(count, f.input, f.output),
            _ => 1,
        }
    }

    fn window_ms(&self) -> Option<u64> {
        match self.config.kind {
            LimitKind::Requests { window, .. } | LimitKind::Tokens { window, .. } => {
                Some(window.as_millis() as u64)
            }
            LimitKind::Concurrent { .. } => None,
        }
    }

    fn limit(&self) -> u64 {
        match self.config.kind {
            LimitKind::Requests { limit, .. }
            | LimitKind::Tokens { limit, .. }
            | LimitKind::Concurrent { limit } => limit,
        }
    }

    /// What the limit counts, for the refusal and the response headers.
    fn what(&self) -> &'static str {
        match self.config.kind {
            LimitKind::Requests { .. } => "requests",
            LimitKind::Tokens { .. } => "tokens",
            LimitKind::Concurrent { .. } => "concurrent requests",
        }
    }

    /// Reserves in this process's counters.
    fn take_local(&self, key: &str, cost: u64) -> Result<Taken, Option<u64>> {
        match self.window_ms() {
            Some(w) => self
                .local
                .take(key, w, self.limit(), cost)
                .map_err(|f| f.retry_ms),
            None => self
                .local
                .enter(key, self.limit())
                .map(|remaining| Taken {
                    slot: 0,
                    remaining,
                    reset_ms: 0,
                })
                .ok_or(Some(1000)),
        }
    }

    fn backend_failed(&self, e: &redis::RedisError) {
        self.backend_errors.inc();
        if !self.redis_down.swap(true, Ordering::Relaxed) {
            let policy = match self.config.on_backend_error {
                OnBackendError::Deny => "refusing its requests (503)",
                OnBackendError::Local => "counting in this gateway's memory",
            };
            tracing::warn!(limit = %self.name, error = %e, "rate limit backend unavailable: {policy} until it answers again");
        }
    }

    fn backend_answered(&self) {
        // A load first: the usual answer writes nothing to the line every worker reads.
        if self.redis_down.load(Ordering::Relaxed) && self.redis_down.swap(false, Ordering::Relaxed)
        {
            tracing::info!(limit = %self.name, "rate limit backend answers again");
        }
    }
}

fn count_of(count: TokenCount, input: u64, output: u64) -> u64 {
    match count {
        TokenCount::Input => input,
        TokenCount::Output => output,
        TokenCount::Total => input + output,
    }
}

/// Where a reservation is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    Local,
    Redis,
}

/// One limit's reservation for a request.
struct Hold {
    limit: Arc<Limit>,
    /// The request's key under the limit (held in Redis: the whole Redis key).
    key: String,
    at: Held,
    slot: u64,
    /// Reserved (tokens, or 1).
    cost: u64,
}

/// The `x-ratelimit-*` values of one kind: the most constrained limit's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    pub reset_ms: u64,
}

impl Quota {
    fn narrow(slot: &mut Option<Quota>, q: Quota) {
        if slot.is_none_or(|s| q.remaining < s.remaining) {
            *slot = Some(q);
        }
    }
}

/// A request's reservations, settled when its response ends (or dropped: then refunded
/// as an error would be).
pub struct Admission {
    holds: Vec<Hold>,
    /// The connection and the request id (which names a concurrency slot), when a
    /// reservation is held in Redis.
    redis: Option<(Arc<Redis>, String)>,
    input: u64,
    output: u64,
    pub tokens: Option<Quota>,
    pub requests: Option<Quota>,
}

/// A request that does not fit.
#[derive(Debug)]
pub struct Refusal {
    pub limit: Arc<str>,
    pub what: &'static str,
    /// `None`: the request alone is more than the limit.
    pub retry_after: Option<Duration>,
    pub quota: Quota,
}

/// Why a request was not admitted.
#[derive(Debug)]
pub enum Denied {
    Limited(Refusal),
    /// Redis did not answer and the limit's policy is `deny`.
    BackendDown(Arc<str>),
}

/// Reserves the request's cost under every limit of its route, or none.
pub async fn admit(route: &RouteLimits, f: &Facts<'_>) -> Result<Admission, Denied> {
    let mut adm = Admission {
        holds: Vec::with_capacity(route.list.len()),
        redis: None,
        input: f.input,
        output: f.output,
        tokens: None,
        requests: None,
    };
    let mut remote: Vec<(&Arc<Limit>, String, u64)> = Vec::new();
    for limit in &route.list {
        let key = limit.key(f);
        let cost = limit.cost(f);
        if limit.config.backend == LimitBackend::Redis {
            remote.push((limit, key, cost));
            continue;
        }
        adm.take_local(limit, key, cost)?;
    }
    if remote.is_empty() {
        return Ok(adm);
    }
    // The whole Redis keys, made once: reserved under them, and settled under them.
    let mut keys: Vec<String> = Vec::new();
    let answer = match &route.redis {
        Some(r) => {
            keys = remote
                .iter()
                .map(|(l, k, _)| r.key(&l.name, l.hash, k))
                .collect();
            adm.redis = Some((r.clone(), f.request_id.to_string()));
            let items: Vec<redis::Reserve<'_>> = remote
                .iter()
                .zip(&keys)
                .map(|((l, _, cost), key)| redis::Reserve {
                    key,
                    window_ms: l.window_ms(),
                    limit: l.limit(),
                    cost: *cost,
                    member: f.request_id,
                })
                .collect();
            r.reserve(&items).await
        }
        None => Err(redis::RedisError::Unexpected("no connection".into())),
    };
    match answer {
        Ok(redis::Answer::Admitted(per)) => {
            for (((limit, _, cost), key), (slot, remaining, reset_ms)) in
                remote.into_iter().zip(keys).zip(per)
            {
                limit.backend_answered();
                adm.quota(limit, remaining, reset_ms);
                adm.holds.push(Hold {
                    limit: limit.clone(),
                    key,
                    at: Held::Redis,
                    slot,
                    cost,
                });
            }
            Ok(adm)
        }
        Ok(redis::Answer::Refused { index, retry_ms }) => {
            let limit = remote.get(index).map_or(&route.list[0], |r| r.0);
            limit.backend_answered();
            Err(adm.refuse(limit, retry_ms, 0))
        }
        Err(e) => {
            for (limit, ..) in &remote {
                limit.backend_failed(&e);
            }
            if let Some((limit, ..)) = remote
                .iter()
                .find(|(l, ..)| l.config.on_backend_error == OnBackendError::Deny)
            {
                adm.release(Outcome::refund());
                return Err(Denied::BackendDown(limit.name.clone()));
            }
            for (limit, key, cost) in remote {
                adm.take_local(limit, key, cost)?;
            }
            Ok(adm)
        }
    }
}

impl Admission {
    fn take_local(&mut self, limit: &Arc<Limit>, key: String, cost: u64) -> Result<(), Denied> {
        match limit.take_local(&key, cost) {
            Ok(r) => {
                self.quota(limit, r.remaining, r.reset_ms);
                self.holds.push(Hold {
                    limit: limit.clone(),
                    key,
                    at: Held::Local,
                    slot: r.slot,
                    cost,
                });
                Ok(())
            }
            Err(retry_ms) => {
                let remaining = limit.window_ms().map_or(0, |w| {
                    limit.limit().saturating_sub(limit.local.used(&key, w))
                });
                Err(self.refuse(limit, retry_ms, remaining))
            }
        }
    }

    fn quota(&mut self, limit: &Limit, remaining: u64, reset_ms: u64) {
        let q = Quota {
            limit: limit.limit(),
            remaining,
            reset_ms,
        };
        match limit.config.kind {
            LimitKind::Tokens { .. } => Quota::narrow(&mut self.tokens, q),
            LimitKind::Requests { .. } => Quota::narrow(&mut self.requests, q),
            LimitKind::Concurrent { .. } => {}
        }
    }

    /// Undoes what was reserved so far and words the refusal.
    fn refuse(&mut self, limit: &Limit, retry_ms: Option<u64>, remaining: u64) -> Denied {
        self.release(Outcome::refund());
        limit.refused.inc();
        Denied::Limited(Refusal {
            limit: limit.name.clone(),
            what: limit.what(),
            retry_after: retry_ms.map(Duration::from_millis),
            quota: Quota {
                limit: limit.limit(),
                remaining,
                reset_ms: retry_ms.unwrap_or(0),
            },
        })
    }

    /// Settles every reservation with what the response showed.
    pub fn settle(mut self, outcome: Outcome) {
        self.release(outcome);
    }

    /// Releases every hold (a second call finds none: `holds` is drained).
    fn release(&mut self, o: Outcome) {
        let used = |known: Option<u64>, estimate: u64| match known {
            Some(n) => n,
            None if o.error => 0,
            None => estimate,
        };
        let (input, output) = (used(o.input, self.input), used(o.output, self.output));
        let mut remote = Vec::new();
        for h in self.holds.drain(..) {
            let l = &h.limit;
            let delta = match l.config.kind {
                LimitKind::Tokens { count, .. } => {
                    count_of(count, input, output) as i64 - h.cost as i64
                }
                // A request refused by a later limit (or whose Redis reservation was
                // denied) gives its place back; an admitted one stays counted.
                LimitKind::Requests { .. } if o.rollback => -(h.cost as i64),
                LimitKind::Requests { .. } => 0,
                LimitKind::Concurrent { .. } => 0,
            };
            let window = l.window_ms();
            match (h.at, window) {
                (Held::Local, Some(w)) => l.local.settle(&h.key, w, h.slot, delta),
                (Held::Local, None) => l.local.leave(&h.key),
                (Held::Redis, _) if window.is_some() && delta == 0 => {}
                (Held::Redis, _) => remote.push(redis::Settle {
                    key: h.key,
                    window_ms: window,
                    slot: h.slot,
                    delta,
                    member: self
                        .redis
                        .as_ref()
                        .map(|(_, id)| id.clone())
                        .unwrap_or_default(),
                }),
            }
        }
        if remote.is_empty() {
            return;
        }
        let (Some((r, _)), Ok(rt)) = (self.redis.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move {
            if let Err(e) = r.settle(&remote).await {
                tracing::warn!(error = %e, keys = remote.len(), "rate limit settlement lost: the reservations stay charged at their estimate (a concurrency slot until its lease ends)");
            }
        });
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release(Outcome::refund());
    }
}

/// What a response showed of its usage.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub input: Option<u64>,
    pub output: Option<u64>,
    /// The response was an error (status ≥ 400): unreported counts are refunded.
    pub error: bool,
    /// The request was not admitted after all: give request counts back too.
    rollback: bool,
}

impl Outcome {
    pub fn new(input: Option<u64>, output: Option<u64>, error: bool) -> Self {
        Outcome {
            input,
            output,
            error,
            rollback: false,
        }
    }

    fn refund() -> Self {
        Outcome {
            input: Some(0),
            output: Some(0),
            error: true,
            rollback: true,
        }
    }
}
