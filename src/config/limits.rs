//! `[[limits]]` and `[redis]`: named rate limits and token budgets (requests or tokens per
//! sliding window, or requests in flight), keyed by any combination of consumer, route,
//! model, client address and a header; routes apply them by name (`limits = [...]`). A
//! limit counts in the gateway's own memory or, shared by a fleet, in Redis.

use super::error::{ConfigError, Source};
use super::section::Section;
use super::units::Dur;
use http::HeaderName;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// `[[limits]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    /// `name = "consumer-tokens"`: unique among limits; routes apply it by this name.
    name: Spanned<String>,
    /// `requests = 600`: requests admitted per `window` (one of `requests`, `tokens`,
    /// `concurrent`).
    requests: Option<Spanned<i64>>,
    /// `tokens = 100000`: tokens admitted per `window` (routes with `[routes.ai]` only).
    tokens: Option<Spanned<i64>>,
    /// `concurrent = 8`: requests in flight at once.
    concurrent: Option<Spanned<i64>>,
    /// `window = "1m"`: the sliding window of `requests` and `tokens` (1 s to 1 day).
    window: Option<Spanned<Dur>>,
    /// `count = "total"`: which tokens `tokens` counts: `"input"`, `"output"`, `"total"`.
    count: Option<Spanned<String>>,
    /// `key = ["consumer", "model"]`: what a request is counted by; any of `"consumer"`,
    /// `"route"`, `"model"`, `"client_address"`, `"header:NAME"` (default: one shared
    /// counter).
    #[serde(default)]
    key: Vec<Spanned<String>>,
    /// `backend = "local"`: `"local"` (this gateway's memory) or `"redis"` (`[redis]`,
    /// shared by every gateway using it).
    backend: Option<Spanned<String>>,
    /// `on_backend_error = "deny"`: when Redis does not answer within `redis.timeout`:
    /// `"deny"` (503) or `"local"` (count in this gateway's memory, with a warning).
    on_backend_error: Option<Spanned<String>>,
}

/// `[redis]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    /// `url = "redis://127.0.0.1:6379/0"`
    url: Spanned<String>,
    /// `timeout = "100ms"`: the longest a request waits for Redis (connect or answer).
    timeout: Option<Spanned<Dur>>,
    /// `key_prefix = "portcullis"`: the prefix of every key the limits write.
    key_prefix: Option<Spanned<String>>,
}

/// What a limit caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Requests per window.
    Requests { limit: u64, window: Duration },
    /// Tokens per window.
    Tokens {
        limit: u64,
        window: Duration,
        count: TokenCount,
    },
    /// Requests in flight.
    Concurrent { limit: u64 },
}

/// Which tokens a token limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenCount {
    Input,
    Output,
    Total,
}

/// One part of a limit's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// The consumer the auth plugin named.
    Consumer,
    /// The route's name.
    Route,
    /// The request's `model`.
    Model,
    /// The client's IP address.
    ClientAddress,
    /// A request header's value.
    Header(HeaderName),
}

impl KeyPart {
    /// The part as written in the config (metrics label it so).
    pub fn as_str(&self) -> &str {
        match self {
            KeyPart::Consumer => "consumer",
            KeyPart::Route => "route",
            KeyPart::Model => "model",
            KeyPart::ClientAddress => "client_address",
            KeyPart::Header(h) => h.as_str(),
        }
    }
}

/// Where a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitBackend {
    Local,
    Redis,
}

/// What a limit counted in Redis does when Redis does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnBackendError {
    /// 503.
    Deny,
    /// Count in this gateway's memory instead.
    Local,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LimitConfig {
    pub name: String,
    pub kind: LimitKind,
    pub key: Vec<KeyPart>,
    pub backend: LimitBackend,
    pub on_backend_error: OnBackendError,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RedisConfig {
    pub url: String,
    pub timeout: Duration,
    pub key_prefix: String,
}

/// The key kinds a limit may name (`header:NAME` aside).
const KEY_KINDS: &str = "\"consumer\", \"route\", \"model\", \"client_address\" or \"header:NAME\"";

/// Validates `[[limits]]` (names unique) and `[redis]` (needed by limits with
/// `backend = "redis"`).
pub(super) fn validate(
    src: &Source<'_>,
    raw: Vec<Spanned<RawLimit>>,
    redis: Option<Spanned<RawRedis>>,
) -> Result<(Vec<LimitConfig>, Option<RedisConfig>), ConfigError> {
    let redis = redis.map(|r| redis_config(src, r)).transpose()?;
    let mut limits: Vec<LimitConfig> = Vec::with_capacity(raw.len());
    for (i, l) in raw.into_iter().enumerate() {
        let cx = Section::new(src, format!("limits[{i}]"), l.span());
        let l = l.into_inner();
        let name = cx.name(&l.name, "limit", limits.iter().map(|q| q.name.as_str()))?;
        limits.push(limit(&cx, name, l, redis.is_some())?);
    }
    Ok((limits, redis))
}

fn limit(
    cx: &Section<'_>,
    name: String,
    l: RawLimit,
    have_redis: bool,
) -> Result<LimitConfig, ConfigError> {
    let amount = |v: &Spanned<i64>, key: &str| -> Result<u64, ConfigError> {
        match u64::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(cx.error(v.span(), key, "must be more than 0")),
        }
    };
    let window = || -> Result<Duration, ConfigError> {
        let w = cx.required(l.window.clone(), "window", "a `requests` or `tokens` limit")?;
        let d = w.get_ref().0;
        if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
            return Err(cx.error(w.span(), "window", "must be between 1s and 1d"));
        }
        Ok(d)
    };
    let kind = match (&l.requests, &l.tokens, &l.concurrent) {
        (Some(r), None, None) => LimitKind::Requests {
            limit: amount(r, "requests")?,
            window: window()?,
        },
        (None, Some(t), None) => LimitKind::Tokens {
            limit: amount(t, "tokens")?,
            window: window()?,
            count: cx.choice(
                &l.count,
                "count",
                "token count",
                &[
                    ("input", TokenCount::Input),
                    ("output", TokenCount::Output),
                    ("total", TokenCount::Total),
                ],
                TokenCount::Total,
            )?,
        },
        (None, None, Some(c)) => {
            if let Some(w) = &l.window {
                return Err(cx.error(w.span(), "window", "a `concurrent` limit has no window"));
            }
            LimitKind::Concurrent {
                limit: amount(c, "concurrent")?,
            }
        }
        _ => {
            return Err(cx.error_at_table(
                "requests",
                format!("limit `{name}` needs exactly one of `requests`, `tokens` or `concurrent`"),
            ))
        }
    };
    if let (Some(c), false) = (&l.count, matches!(kind, LimitKind::Tokens { .. })) {
        return Err(cx.error(c.span(), "count", "only a `tokens` limit has a `count`"));
    }
    let mut key = Vec::with_capacity(l.key.len());
    for k in &l.key {
        let part = match k.get_ref().as_str() {
            "consumer" => KeyPart::Consumer,
            "route" => KeyPart::Route,
            "model" => KeyPart::Model,
            "client_address" => KeyPart::ClientAddress,
            other => match other.strip_prefix("header:") {
                Some(h) => KeyPart::Header(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    cx.error(k.span(), "key", format!("`{h}` is not a header name"))
                })?),
                None => {
                    return Err(cx.error(
                        k.span(),
                        "key",
                        format!("unknown key kind `{other}` (expected {KEY_KINDS})"),
                    ))
                }
            },
        };
        if key.contains(&part) {
            return Err(cx.error(k.span(), "key", format!("`{}` is named twice", k.get_ref())));
        }
        key.push(part);
    }
    let backend = cx.choice(
        &l.backend,
        "backend",
        "backend",
        &[
            ("local", LimitBackend::Local),
            ("redis", LimitBackend::Redis),
        ],
        LimitBackend::Local,
    )?;
    if let (LimitBackend::Redis, false, Some(b)) = (backend, have_redis, &l.backend) {
        return Err(cx.error(b.span(), "backend", "`redis` needs a `[redis]` table"));
    }
    let on_backend_error = cx.choice(
        &l.on_backend_error,
        "on_backend_error",
        "policy",
        &[
            ("deny", OnBackendError::Deny),
            ("local", OnBackendError::Local),
        ],
        OnBackendError::Deny,
    )?;
    Ok(LimitConfig {
        name,
        kind,
        key,
        backend,
        on_backend_error,
    })
}

fn redis_config(src: &Source<'_>, raw: Spanned<RawRedis>) -> Result<RedisConfig, ConfigError> {
    let cx = Section::new(src, "redis", raw.span());
    let raw = raw.into_inner();
    let url = raw.url.get_ref();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(cx.error(
            raw.url.span(),
            "url",
            "must be a `redis://host:port[/db]` URL",
        ));
    }
    let timeout = cx
        .positive(&raw.timeout, "timeout")?
        .unwrap_or(Duration::from_millis(100));
    let key_prefix = match raw.key_prefix {
        Some(p) => cx.non_empty(p, "key_prefix")?,
        None => "portcullis".into(),
    };
    Ok(RedisConfig {
        url: url.clone(),
        timeout,
        key_prefix,
    })
}
