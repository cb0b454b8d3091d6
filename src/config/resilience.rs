//! `[upstreams.circuit_breaker]`, `[upstreams.health_check]`,
//! `[upstreams.outlier_detection]` and `[upstreams.retry]`: the serde model and its
//! validation (DESIGN §6). Retries of failed connections and passive ejection of endpoints
//! that refuse connections are on when their sections are absent (`enabled = false` turns
//! them off); the circuit breaker and active health checks are on when their sections are
//! present. Every key has a default, and an absent section means the same as an empty one.

use super::section::{span_or, Section};
use super::units::Dur;
use super::ConfigError;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

// ---------------------------------------------------------------------------------------
// As written.
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    /// `consecutive_failures = 5`: trip after this many failures in a row.
    consecutive_failures: Option<Spanned<u32>>,
    /// `error_ratio = 0.5`: or when failures / requests over `window` reach this (0: off).
    error_ratio: Option<Spanned<f64>>,
    /// `window = "10s"`
    window: Option<Spanned<Dur>>,
    /// `min_requests = 20`: requests the window needs before the ratio counts.
    min_requests: Option<Spanned<u32>>,
    /// `open_time = "5s"`: open this long, doubled after each failed probe …
    open_time: Option<Spanned<Dur>>,
    /// `max_open_time = "60s"`: … up to this.
    max_open_time: Option<Spanned<Dur>>,
    /// `half_open_probes = 1`: requests let through at once when half-open.
    half_open_probes: Option<Spanned<u32>>,
    /// `failure_on = ["connect", "timeout", "reset", "5xx", "gateway", 429]`
    failure_on: Option<Spanned<Vec<Spanned<Condition>>>>,
    /// `jitter = 0.1`: open times spread by ±10%.
    jitter: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    /// `kind = "http" | "tcp"`: GET `path`, or connect only.
    #[serde(default)]
    kind: HealthCheckKindRaw,
    /// `path = "/healthz"`
    path: Option<Spanned<String>>,
    /// `host = "chat.internal"`: Host of the check (default: the endpoint's address).
    host: Option<Spanned<String>>,
    /// `statuses = ["2xx", 301]`: healthy answers.
    statuses: Option<Spanned<Vec<Spanned<Condition>>>>,
    /// `interval = "5s"`
    interval: Option<Spanned<Dur>>,
    /// `timeout = "1s"` (default: the smaller of 1s and `interval`).
    timeout: Option<Spanned<Dur>>,
    /// `healthy_threshold = 2`: passes in a row to become healthy again.
    healthy_threshold: Option<Spanned<u32>>,
    /// `unhealthy_threshold = 3`: failures in a row to become unhealthy.
    unhealthy_threshold: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum HealthCheckKindRaw {
    #[default]
    Http,
    Tcp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlier {
    /// `enabled = true`: `false` turns passive ejection off.
    enabled: Option<Spanned<bool>>,
    /// `consecutive_connect_failures = 3`: eject after this many refused connections in a
    /// row (0: off).
    consecutive_connect_failures: Option<Spanned<u32>>,
    /// `consecutive_5xx = 0`: eject after this many 5xx in a row (0: off).
    consecutive_5xx: Option<Spanned<u32>>,
    /// `consecutive_gateway_errors = 0`: or this many 502/503/504/connect/reset/timeout.
    consecutive_gateway_errors: Option<Spanned<u32>>,
    /// `base_ejection_time = "30s"`: ejected for this × the number of ejections …
    base_ejection_time: Option<Spanned<Dur>>,
    /// `max_ejection_time = "300s"`: … at most this.
    max_ejection_time: Option<Spanned<Dur>>,
    /// `max_ejection_percent = 50`: never eject beyond this share of the endpoints.
    max_ejection_percent: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    /// `enabled = true`: `false` turns retries off (as `attempts = 1` does).
    enabled: Option<Spanned<bool>>,
    /// `attempts = 2`: tries in all, the first included.
    attempts: Option<Spanned<u32>>,
    /// `on = ["connect", "timeout", "reset", 502, 503, 504]`: same words as `failure_on`.
    on: Option<Spanned<Vec<Spanned<Condition>>>>,
    /// `per_try_timeout = "2s"`
    per_try_timeout: Option<Spanned<Dur>>,
    /// `backoff = "25ms"`: pause before retry n is random below backoff × 2^(n-1) …
    backoff: Option<Spanned<Dur>>,
    /// `max_backoff = "250ms"`: … capped here.
    max_backoff: Option<Spanned<Dur>>,
    /// `budget_percent = 20.0`: retries at most this share of the requests …
    budget_percent: Option<Spanned<f64>>,
    /// `budget_min_per_second = 10`: … but always this many per second.
    budget_min_per_second: Option<Spanned<u32>>,
    /// `budget_window = "10s"`
    budget_window: Option<Spanned<Dur>>,
}

/// One entry of `failure_on`, `on` or `statuses`: a keyword or a status code.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub(super) enum Condition {
    Status(u16),
    Word(String),
}

// ---------------------------------------------------------------------------------------
// Validated.
// ---------------------------------------------------------------------------------------

/// Which outcomes of a try count (as a breaker failure, or as a reason to retry).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// The connection could not be made (refused, unreachable, connect timeout).
    pub connect: bool,
    /// No response head within the (per-try) timeout.
    pub timeout: bool,
    /// The connection failed after the request was sent (reset, closed early).
    pub reset: bool,
    /// Any 5xx response.
    pub any_5xx: bool,
    /// These response statuses.
    pub statuses: Vec<u16>,
}

impl Conditions {
    pub fn status(&self, status: u16) -> bool {
        (self.any_5xx && (500..600).contains(&status)) || self.statuses.contains(&status)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    /// Trip when failures / requests over `window` reach this (with `min_requests`).
    pub error_ratio: Option<f64>,
    pub window: Duration,
    pub min_requests: u32,
    pub open_time: Duration,
    pub max_open_time: Duration,
    pub half_open_probes: u32,
    pub failure_on: Conditions,
    /// Open times are spread by ±this fraction so endpoints do not all probe together.
    pub jitter: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            error_ratio: Some(0.5),
            window: Duration::from_secs(10),
            min_requests: 20,
            open_time: Duration::from_secs(5),
            max_open_time: Duration::from_secs(60),
            half_open_probes: 1,
            failure_on: Conditions {
                connect: true,
                timeout: true,
                reset: true,
                any_5xx: true,
                statuses: Vec::new(),
            },
            jitter: 0.1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheckKind {
    Http {
        path: String,
        /// The Host header of the check; default the endpoint's address.
        host: Option<String>,
        /// Statuses that count as healthy.
        statuses: Conditions,
    },
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    pub consecutive_connect_failures: u32,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        // Only refusals count by default: a client can make an endpoint answer 5xx, reset or
        // time out (a malformed or expensive request), never make it refuse a connection
        // the gateway opens before sending anything.
        OutlierConfig {
            consecutive_connect_failures: 3,
            consecutive_5xx: 0,
            consecutive_gateway_errors: 0,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub on: Conditions,
    /// Limit for each try; the route's or upstream's `request_timeout` bounds them all.
    pub per_try_timeout: Option<Duration>,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub budget_percent: f64,
    pub budget_min_per_second: u32,
    pub budget_window: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            on: Conditions {
                connect: true,
                timeout: true,
                reset: true,
                any_5xx: false,
                statuses: vec![502, 503, 504],
            },
            per_try_timeout: None,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            budget_percent: 20.0,
            budget_min_per_second: 10,
            budget_window: Duration::from_secs(10),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------

/// Parses a list of conditions; `words` says which keywords this list accepts.
pub(super) fn conditions(
    cx: &Section<'_>,
    list: &Spanned<Vec<Spanned<Condition>>>,
    key: &str,
    words: &[&str],
) -> Result<Conditions, ConfigError> {
    let mut c = Conditions::default();
    for item in list.get_ref() {
        match item.get_ref() {
            Condition::Status(s) if (100..=599).contains(s) => c.statuses.push(*s),
            Condition::Status(s) => {
                return Err(cx.error(
                    item.span(),
                    key,
                    format!("{s} is not an HTTP status (100..=599)"),
                ))
            }
            Condition::Word(w) if words.contains(&w.as_str()) => match w.as_str() {
                "connect" => c.connect = true,
                "timeout" => c.timeout = true,
                "reset" => c.reset = true,
                "5xx" => c.any_5xx = true,
                "gateway" => c.statuses.extend([502, 503, 504]),
                "2xx" => c.statuses.extend(200..300),
                "3xx" => c.statuses.extend(300..400),
                _ => unreachable!("keyword list and match agree"),
            },
            Condition::Word(w) => {
                return Err(cx.error(
                    item.span(),
                    key,
                    format!(
                        "unknown condition `{w}`: expected a status code or one of {}",
                        words
                            .iter()
                            .map(|w| format!("\"{w}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        }
    }
    Ok(c)
}

pub(super) const FAILURE_WORDS: &[&str] = &["connect", "timeout", "reset", "5xx", "gateway"];

pub(super) fn breaker(
    upstream: &Section<'_>,
    raw: &Spanned<RawBreaker>,
) -> Result<BreakerConfig, ConfigError> {
    let cx = upstream.table("circuit_breaker", raw.span());
    let r = raw.get_ref();
    let d = BreakerConfig::default();
    let open_time = cx
        .positive(&r.open_time, "open_time")?
        .unwrap_or(d.open_time);
    let max_open_time = cx
        .positive(&r.max_open_time, "max_open_time")?
        .unwrap_or(d.max_open_time.max(open_time));
    if max_open_time < open_time {
        return Err(cx.error(
            span_or(&r.max_open_time, &cx.span),
            "max_open_time",
            "must not be less than open_time",
        ));
    }
    let failure_on = match &r.failure_on {
        None => d.failure_on,
        Some(l) => conditions(&cx, l, "failure_on", FAILURE_WORDS)?,
    };
    Ok(BreakerConfig {
        consecutive_failures: cx
            .range(
                &r.consecutive_failures,
                "consecutive_failures",
                1..=1_000_000,
            )?
            .unwrap_or(d.consecutive_failures),
        // 0 turns the ratio off.
        error_ratio: match cx.range(&r.error_ratio, "error_ratio", 0.0..=1.0)? {
            None => d.error_ratio,
            Some(x) => Some(x).filter(|&x| x > 0.0),
        },
        window: cx.positive(&r.window, "window")?.unwrap_or(d.window),
        min_requests: cx
            .range(&r.min_requests, "min_requests", 1..=1_000_000)?
            .unwrap_or(d.min_requests),
        open_time,
        max_open_time,
        half_open_probes: cx
            .range(&r.half_open_probes, "half_open_probes", 1..=1000)?
            .unwrap_or(d.half_open_probes),
        failure_on,
        jitter: cx
            .range(&r.jitter, "jitter", 0.0..=1.0)?
            .unwrap_or(d.jitter),
    })
}

pub(super) fn health_check(
    upstream: &Section<'_>,
    raw: &Spanned<RawHealthCheck>,
) -> Result<HealthCheckConfig, ConfigError> {
    let cx = upstream.table("health_check", raw.span());
    let r = raw.get_ref();
    let kind = match r.kind {
        HealthCheckKindRaw::Tcp => {
            for (name, set) in [
                ("path", r.path.as_ref().map(|s| s.span())),
                ("host", r.host.as_ref().map(|s| s.span())),
                ("statuses", r.statuses.as_ref().map(|s| s.span())),
            ] {
                if let Some(span) = set {
                    return Err(cx.error(span, name, "only applies to kind = \"http\""));
                }
            }
            HealthCheckKind::Tcp
        }
        HealthCheckKindRaw::Http => {
            let path = match &r.path {
                None => "/healthz".to_string(),
                Some(p)
                    if p.get_ref().starts_with('/')
                        && p.get_ref().parse::<http::uri::PathAndQuery>().is_ok() =>
                {
                    p.get_ref().clone()
                }
                Some(p) => {
                    return Err(cx.error(
                        p.span(),
                        "path",
                        format!("`{}` is not a request path starting with `/`", p.get_ref()),
                    ))
                }
            };
            if let Some(h) = &r.host {
                if http::HeaderValue::from_str(h.get_ref()).is_err() || h.get_ref().is_empty() {
                    return Err(cx.error(h.span(), "host", "not a valid Host header value"));
                }
            }
            let statuses = match &r.statuses {
                None => Conditions {
                    statuses: (200..300).collect(),
                    ..Conditions::default()
                },
                Some(l) => {
                    let c = conditions(&cx, l, "statuses", &["2xx", "3xx"])?;
                    if c.statuses.is_empty() {
                        return Err(cx.error(l.span(), "statuses", "must not be empty"));
                    }
                    c
                }
            };
            HealthCheckKind::Http {
                path,
                host: r.host.as_ref().map(|h| h.get_ref().clone()),
                statuses,
            }
        }
    };
    let interval = cx
        .positive(&r.interval, "interval")?
        .unwrap_or(Duration::from_secs(5));
    let timeout = cx
        .positive(&r.timeout, "timeout")?
        .unwrap_or(Duration::from_secs(1).min(interval));
    Ok(HealthCheckConfig {
        kind,
        interval,
        timeout,
        healthy_threshold: cx
            .range(&r.healthy_threshold, "healthy_threshold", 1..=1000)?
            .unwrap_or(2),
        unhealthy_threshold: cx
            .range(&r.unhealthy_threshold, "unhealthy_threshold", 1..=1000)?
            .unwrap_or(3),
    })
}

/// `[upstreams.outlier_detection]`; `None` when it says `enabled = false` (the other keys
/// are still checked).
pub(super) fn outlier(
    upstream: &Section<'_>,
    raw: &Spanned<RawOutlier>,
) -> Result<Option<OutlierConfig>, ConfigError> {
    let cx = upstream.table("outlier_detection", raw.span());
    let r = raw.get_ref();
    let enabled = r.enabled.as_ref().is_none_or(|e| *e.get_ref());
    let d = OutlierConfig::default();
    let base = cx
        .positive(&r.base_ejection_time, "base_ejection_time")?
        .unwrap_or(d.base_ejection_time);
    let max = cx
        .positive(&r.max_ejection_time, "max_ejection_time")?
        .unwrap_or(d.max_ejection_time.max(base));
    if max < base {
        return Err(cx.error(
            span_or(&r.max_ejection_time, &cx.span),
            "max_ejection_time",
            "must not be less than base_ejection_time",
        ));
    }
    let cfg = OutlierConfig {
        consecutive_connect_failures: cx
            .range(
                &r.consecutive_connect_failures,
                "consecutive_connect_failures",
                0..=1_000_000,
            )?
            .unwrap_or(d.consecutive_connect_failures),
        consecutive_5xx: cx
            .range(&r.consecutive_5xx, "consecutive_5xx", 0..=1_000_000)?
            .unwrap_or(d.consecutive_5xx),
        consecutive_gateway_errors: cx
            .range(
                &r.consecutive_gateway_errors,
                "consecutive_gateway_errors",
                0..=1_000_000,
            )?
            .unwrap_or(d.consecutive_gateway_errors),
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: cx
            .range(&r.max_ejection_percent, "max_ejection_percent", 0..=100)?
            .unwrap_or(d.max_ejection_percent),
    };
    Ok(enabled.then_some(cfg))
}

/// `[upstreams.retry]`; `None` when it says `enabled = false` (the other keys are still
/// checked).
pub(super) fn retry(
    upstream: &Section<'_>,
    raw: &Spanned<RawRetry>,
) -> Result<Option<RetryConfig>, ConfigError> {
    let cx = upstream.table("retry", raw.span());
    let r = raw.get_ref();
    let enabled = r.enabled.as_ref().is_none_or(|e| *e.get_ref());
    let d = RetryConfig::default();
    let backoff = match &r.backoff {
        None => d.backoff,
        Some(b) => b.get_ref().0,
    };
    let max_backoff = match &r.max_backoff {
        None => d.max_backoff.max(backoff),
        Some(b) if b.get_ref().0 < backoff => {
            return Err(cx.error(b.span(), "max_backoff", "must not be less than backoff"))
        }
        Some(b) => b.get_ref().0,
    };
    let cfg = RetryConfig {
        attempts: cx
            .range(&r.attempts, "attempts", 1..=10)?
            .unwrap_or(d.attempts),
        on: match &r.on {
            None => d.on,
            Some(l) => conditions(&cx, l, "on", FAILURE_WORDS)?,
        },
        per_try_timeout: cx.positive(&r.per_try_timeout, "per_try_timeout")?,
        backoff,
        max_backoff,
        budget_percent: cx
            .range(&r.budget_percent, "budget_percent", 0.0..=100.0)?
            .unwrap_or(d.budget_percent),
        budget_min_per_second: cx
            .range(
                &r.budget_min_per_second,
                "budget_min_per_second",
                0..=1_000_000,
            )?
            .unwrap_or(d.budget_min_per_second),
        budget_window: cx
            .positive(&r.budget_window, "budget_window")?
            .unwrap_or(d.budget_window),
    };
    Ok(enabled.then_some(cfg))
}
