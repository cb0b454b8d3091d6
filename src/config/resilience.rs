//! `[upstreams.circuit_breaker]`, `[upstreams.health_check]`,
//! `[upstreams.outlier_detection]` and `[upstreams.retry]`: the serde model and its
//! validation (DESIGN §6). A section that is present turns its mechanism on; every key in
//! it has a default.

use super::error::Source;
use super::units::Dur;
use super::ConfigError;
use serde::Deserialize;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

// ---------------------------------------------------------------------------------------
// As written.
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    consecutive_failures: Option<Spanned<u32>>,
    error_ratio: Option<Spanned<f64>>,
    window: Option<Spanned<Dur>>,
    min_requests: Option<Spanned<u32>>,
    open_time: Option<Spanned<Dur>>,
    max_open_time: Option<Spanned<Dur>>,
    half_open_probes: Option<Spanned<u32>>,
    failure_on: Option<Spanned<Vec<Spanned<Condition>>>>,
    jitter: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    #[serde(default)]
    kind: HealthCheckKindRaw,
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    statuses: Option<Spanned<Vec<Spanned<Condition>>>>,
    interval: Option<Spanned<Dur>>,
    timeout: Option<Spanned<Dur>>,
    healthy_threshold: Option<Spanned<u32>>,
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
    consecutive_5xx: Option<Spanned<u32>>,
    consecutive_gateway_errors: Option<Spanned<u32>>,
    base_ejection_time: Option<Spanned<Dur>>,
    max_ejection_time: Option<Spanned<Dur>>,
    max_ejection_percent: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    attempts: Option<Spanned<u32>>,
    on: Option<Spanned<Vec<Spanned<Condition>>>>,
    per_try_timeout: Option<Spanned<Dur>>,
    backoff: Option<Spanned<Dur>>,
    max_backoff: Option<Spanned<Dur>>,
    budget_percent: Option<Spanned<f64>>,
    budget_min_per_second: Option<Spanned<u32>>,
    budget_window: Option<Spanned<Dur>>,
}

/// One entry of `failure_on`, `on` or `statuses`: a keyword or a status code.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum Condition {
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
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 5,
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

fn range_u32(
    src: &Source<'_>,
    v: &Option<Spanned<u32>>,
    key: &str,
    range: std::ops::RangeInclusive<u32>,
    default: u32,
) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if range.contains(s.get_ref()) => Ok(*s.get_ref()),
        Some(s) => Err(src.error(
            s.span(),
            key,
            format!(
                "{} is out of range {}..={}",
                s.get_ref(),
                range.start(),
                range.end()
            ),
        )),
    }
}

fn fraction(
    src: &Source<'_>,
    v: &Option<Spanned<f64>>,
    key: &str,
    max: f64,
) -> Result<Option<f64>, ConfigError> {
    match v {
        None => Ok(None),
        Some(s) if (0.0..=max).contains(s.get_ref()) => Ok(Some(*s.get_ref())),
        Some(s) => Err(src.error(
            s.span(),
            key,
            format!("{} is out of range 0..={max}", s.get_ref()),
        )),
    }
}

fn duration(
    src: &Source<'_>,
    v: &Option<Spanned<Dur>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if s.get_ref().0.is_zero() => Err(src.error(s.span(), key, "must be more than 0")),
        Some(s) => Ok(s.get_ref().0),
    }
}

fn span_of<T>(v: &Option<Spanned<T>>, fallback: &Range<usize>) -> Range<usize> {
    v.as_ref().map_or(fallback.clone(), |s| s.span())
}

/// Parses a list of conditions; `words` says which keywords this list accepts.
fn conditions(
    src: &Source<'_>,
    list: &Spanned<Vec<Spanned<Condition>>>,
    key: &str,
    words: &[&str],
) -> Result<Conditions, ConfigError> {
    let mut c = Conditions::default();
    for item in list.get_ref() {
        match item.get_ref() {
            Condition::Status(s) if (100..=599).contains(s) => c.statuses.push(*s),
            Condition::Status(s) => {
                return Err(src.error(
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
                return Err(src.error(
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

const FAILURE_WORDS: &[&str] = &["connect", "timeout", "reset", "5xx", "gateway"];

pub(super) fn breaker(
    src: &Source<'_>,
    raw: &Spanned<RawBreaker>,
    prefix: &str,
) -> Result<BreakerConfig, ConfigError> {
    let r = raw.get_ref();
    let key = |k: &str| format!("{prefix}.circuit_breaker.{k}");
    let d = BreakerConfig::default();
    let open_time = duration(src, &r.open_time, &key("open_time"), d.open_time)?;
    let max_open_time = duration(
        src,
        &r.max_open_time,
        &key("max_open_time"),
        d.max_open_time.max(open_time),
    )?;
    if max_open_time < open_time {
        return Err(src.error(
            span_of(&r.max_open_time, &raw.span()),
            key("max_open_time"),
            "must not be less than open_time",
        ));
    }
    let failure_on = match &r.failure_on {
        None => d.failure_on,
        Some(l) => conditions(src, l, &key("failure_on"), FAILURE_WORDS)?,
    };
    Ok(BreakerConfig {
        consecutive_failures: range_u32(
            src,
            &r.consecutive_failures,
            &key("consecutive_failures"),
            1..=1_000_000,
            d.consecutive_failures,
        )?,
        error_ratio: match &r.error_ratio {
            None => d.error_ratio,
            Some(_) => {
                fraction(src, &r.error_ratio, &key("error_ratio"), 1.0)?.filter(|&x| x > 0.0)
            }
        },
        window: duration(src, &r.window, &key("window"), d.window)?,
        min_requests: range_u32(
            src,
            &r.min_requests,
            &key("min_requests"),
            1..=1_000_000,
            d.min_requests,
        )?,
        open_time,
        max_open_time,
        half_open_probes: range_u32(
            src,
            &r.half_open_probes,
            &key("half_open_probes"),
            1..=1000,
            d.half_open_probes,
        )?,
        failure_on,
        jitter: fraction(src, &r.jitter, &key("jitter"), 1.0)?.unwrap_or(d.jitter),
    })
}

pub(super) fn health_check(
    src: &Source<'_>,
    raw: &Spanned<RawHealthCheck>,
    prefix: &str,
) -> Result<HealthCheckConfig, ConfigError> {
    let r = raw.get_ref();
    let key = |k: &str| format!("{prefix}.health_check.{k}");
    let kind = match r.kind {
        HealthCheckKindRaw::Tcp => {
            for (name, set) in [
                ("path", r.path.as_ref().map(|s| s.span())),
                ("host", r.host.as_ref().map(|s| s.span())),
                ("statuses", r.statuses.as_ref().map(|s| s.span())),
            ] {
                if let Some(span) = set {
                    return Err(src.error(span, key(name), "only applies to kind = \"http\""));
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
                    return Err(src.error(
                        p.span(),
                        key("path"),
                        format!("`{}` is not a request path starting with `/`", p.get_ref()),
                    ))
                }
            };
            if let Some(h) = &r.host {
                if http::HeaderValue::from_str(h.get_ref()).is_err() || h.get_ref().is_empty() {
                    return Err(src.error(h.span(), key("host"), "not a valid Host header value"));
                }
            }
            let statuses = match &r.statuses {
                None => Conditions {
                    statuses: (200..300).collect(),
                    ..Conditions::default()
                },
                Some(l) => {
                    let c = conditions(src, l, &key("statuses"), &["2xx", "3xx"])?;
                    if c.statuses.is_empty() {
                        return Err(src.error(l.span(), key("statuses"), "must not be empty"));
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
    let interval = duration(src, &r.interval, &key("interval"), Duration::from_secs(5))?;
    let timeout = duration(
        src,
        &r.timeout,
        &key("timeout"),
        Duration::from_secs(1).min(interval),
    )?;
    Ok(HealthCheckConfig {
        kind,
        interval,
        timeout,
        healthy_threshold: range_u32(
            src,
            &r.healthy_threshold,
            &key("healthy_threshold"),
            1..=1000,
            2,
        )?,
        unhealthy_threshold: range_u32(
            src,
            &r.unhealthy_threshold,
            &key("unhealthy_threshold"),
            1..=1000,
            3,
        )?,
    })
}

pub(super) fn outlier(
    src: &Source<'_>,
    raw: &Spanned<RawOutlier>,
    prefix: &str,
) -> Result<OutlierConfig, ConfigError> {
    let r = raw.get_ref();
    let key = |k: &str| format!("{prefix}.outlier_detection.{k}");
    let d = OutlierConfig::default();
    let base = duration(
        src,
        &r.base_ejection_time,
        &key("base_ejection_time"),
        d.base_ejection_time,
    )?;
    let max = duration(
        src,
        &r.max_ejection_time,
        &key("max_ejection_time"),
        d.max_ejection_time.max(base),
    )?;
    if max < base {
        return Err(src.error(
            span_of(&r.max_ejection_time, &raw.span()),
            key("max_ejection_time"),
            "must not be less than base_ejection_time",
        ));
    }
    Ok(OutlierConfig {
        consecutive_5xx: range_u32(
            src,
            &r.consecutive_5xx,
            &key("consecutive_5xx"),
            0..=1_000_000,
            d.consecutive_5xx,
        )?,
        consecutive_gateway_errors: range_u32(
            src,
            &r.consecutive_gateway_errors,
            &key("consecutive_gateway_errors"),
            0..=1_000_000,
            d.consecutive_gateway_errors,
        )?,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: range_u32(
            src,
            &r.max_ejection_percent,
            &key("max_ejection_percent"),
            0..=100,
            d.max_ejection_percent,
        )?,
    })
}

pub(super) fn retry(
    src: &Source<'_>,
    raw: &Spanned<RawRetry>,
    prefix: &str,
) -> Result<RetryConfig, ConfigError> {
    let r = raw.get_ref();
    let key = |k: &str| format!("{prefix}.retry.{k}");
    let d = RetryConfig::default();
    let backoff = match &r.backoff {
        None => d.backoff,
        Some(b) => b.get_ref().0,
    };
    let max_backoff = match &r.max_backoff {
        None => d.max_backoff.max(backoff),
        Some(b) if b.get_ref().0 < backoff => {
            return Err(src.error(
                b.span(),
                key("max_backoff"),
                "must not be less than backoff",
            ))
        }
        Some(b) => b.get_ref().0,
    };
    Ok(RetryConfig {
        attempts: range_u32(src, &r.attempts, &key("attempts"), 1..=10, d.attempts)?,
        on: match &r.on {
            None => d.on,
            Some(l) => conditions(src, l, &key("on"), FAILURE_WORDS)?,
        },
        per_try_timeout: match &r.per_try_timeout {
            None => None,
            Some(_) => Some(duration(
                src,
                &r.per_try_timeout,
                &key("per_try_timeout"),
                Duration::ZERO,
            )?),
        },
        backoff,
        max_backoff,
        budget_percent: fraction(src, &r.budget_percent, &key("budget_percent"), 100.0)?
            .unwrap_or(d.budget_percent),
        budget_min_per_second: range_u32(
            src,
            &r.budget_min_per_second,
            &key("budget_min_per_second"),
            0..=1_000_000,
            d.budget_min_per_second,
        )?,
        budget_window: duration(
            src,
            &r.budget_window,
            &key("budget_window"),
            d.budget_window,
        )?,
    })
}
