//! Service discovery (DESIGN §7): one background task per upstream with `discovery = {…}`,
//! feeding the endpoint sets its source reports into [`Upstream::set_discovered`], which
//! rebuilds the balancer off the request path and swaps it in whole.
//!
//! Every source follows the same rules, kept in [`Sink`]: a complete set replaces the
//! last one (`discovery updated` at info when it changes); a failure keeps the last good set
//! and says so at warn, naming the upstream and the source, and the source retries with
//! [`Backoff`]. Entries a source lists that are not usable endpoints are skipped with a
//! warning rather than failing the whole set.
//!
//! Tasks hold only a [`Weak`] reference to their upstream; they are started and aborted
//! with the tables' other background tasks (`Live` (`src/live.rs`)),
//! so they end at shutdown or when a reload replaces the tables. A reload hands the
//! endpoints of an unchanged source over to the new tables ([`carry_over`]).
//!
//! Each source is one file (its task) with its `config.rs` next to it (its keys as written,
//! their validation and its validated config); [`config`] dispatches on `kind`.

pub mod consul;
pub mod dns;
pub mod endpoint;
pub mod etcd;
pub mod file;
pub mod zookeeper;

use crate::config::DiscoveryConfig;
use crate::config::TargetConfig;
use crate::upstream::Upstream;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::fmt::Display;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Starts one discovery task per upstream that has a discovery source, on the current
/// tokio runtime. The caller aborts them when the tables they feed are replaced or the
/// gateway stops (see `Live` (`src/live.rs`)).
pub fn spawn(upstreams: &[Arc<Upstream>]) -> Vec<JoinHandle<()>> {
    upstreams
        .iter()
        .filter_map(|u| {
            let cfg = u.config.discovery.clone()?;
            let sink = Sink::new(u, &cfg);
            tracing::info!(upstream = %sink.upstream, source = %sink.source, "discovery starting");
            Some(tokio::spawn(async move {
                match cfg {
                    DiscoveryConfig::Dns(c) => dns::run(c, sink).await,
                    DiscoveryConfig::File(c) => file::run(c, sink).await,
                    DiscoveryConfig::Etcd(c) => etcd::run(c, sink).await,
                    DiscoveryConfig::Zookeeper(c) => zookeeper::run(c, sink).await,
                    DiscoveryConfig::Consul(c) => consul::run(c, sink).await,
                }
            }))
        })
        .collect()
}

/// On reload: each new upstream whose discovery source is the same as a running one's
/// (same name, same source settings) starts from the running one's endpoints, so a reload
/// neither empties it until its new task answers nor loses the last good set of a source
/// that is down.
pub fn carry_over(running: &[Arc<Upstream>], new: &[Arc<Upstream>]) {
    for n in new {
        let Some(d) = &n.config.discovery else {
            continue;
        };
        let same = running
            .iter()
            .find(|r| r.name() == n.name() && r.config.discovery.as_ref() == Some(d));
        if let Some(r) = same.filter(|r| r.has_discovered()) {
            let targets: Vec<TargetConfig> = r
                .endpoints()
                .iter()
                .map(|e| TargetConfig {
                    address: e.address.to_string(),
                    weight: e.weight,
                })
                .collect();
            n.set_discovered(&targets);
        }
    }
}

/// Where a source delivers what it found: applies endpoint sets to the upstream, logs
/// updates and failures with the upstream's and the source's names, and counts them in
/// `portcullis_discovery_updates_total` / `portcullis_discovery_errors_total`.
pub(crate) struct Sink {
    target: Weak<Upstream>,
    upstream: String,
    source: String,
    /// Since when the source has been failing, and when that was last logged at warn.
    failing: Option<(Instant, Instant)>,
    updates: prometheus::IntCounter,
    errors: prometheus::IntCounter,
}

/// A failing source is logged at warn when it starts failing, and again at most this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

impl Sink {
    fn new(upstream: &Arc<Upstream>, cfg: &DiscoveryConfig) -> Self {
        let m = crate::metrics::get();
        let labels = [upstream.name(), cfg.kind()];
        Sink {
            target: Arc::downgrade(upstream),
            upstream: upstream.name().to_string(),
            source: cfg.describe(),
            failing: None,
            updates: m.discovery_updates.with_label_values(&labels),
            errors: m.discovery_errors.with_label_values(&labels),
        }
    }

    /// Whether the upstream still exists; a task whose upstream is gone ends.
    pub fn alive(&self) -> bool {
        self.target.strong_count() > 0
    }

    /// Applies a complete endpoint set as the source reported it (entries already checked
    /// with [`endpoint::check`]); the order does not matter and duplicate addresses keep
    /// their first weight. Returns `false` when the upstream is gone.
    pub fn update(&mut self, mut found: Vec<TargetConfig>) -> bool {
        let Some(upstream) = self.target.upgrade() else {
            return false;
        };
        found.sort_by(|a, b| a.address.cmp(&b.address));
        found.dedup_by(|later, first| later.address == first.address);
        if let Some((since, _)) = self.failing.take() {
            tracing::info!(
                upstream = %self.upstream,
                source = %self.source,
                failed_for = ?since.elapsed(),
                "discovery recovered"
            );
        }
        if upstream.set_discovered(&found) {
            self.updates.inc();
            let addresses: Vec<&str> = found.iter().map(|t| t.address.as_str()).collect();
            tracing::info!(
                upstream = %self.upstream,
                source = %self.source,
                endpoints = found.len(),
                addresses = %addresses.join(","),
                "discovery updated"
            );
            if found.is_empty() {
                tracing::warn!(
                    upstream = %self.upstream,
                    source = %self.source,
                    "discovery source lists no endpoints; requests get 503 until it lists some"
                );
            }
        }
        true
    }

    /// Reports that the source failed; the last good set stays in use.
    pub fn failed(&mut self, error: impl Display) {
        self.errors.inc();
        let now = Instant::now();
        let endpoints = self.target.upgrade().map_or(0, |u| u.endpoints().len());
        let log_now = match &mut self.failing {
            None => {
                self.failing = Some((now, now));
                true
            }
            Some((_, logged)) if now.duration_since(*logged) >= FAILURE_LOG_EVERY => {
                *logged = now;
                true
            }
            Some(_) => false,
        };
        if log_now {
            tracing::warn!(
                upstream = %self.upstream,
                source = %self.source,
                error = %error,
                kept_endpoints = endpoints,
                "discovery failed; keeping the last good endpoint set"
            );
        } else {
            tracing::debug!(
                upstream = %self.upstream,
                source = %self.source,
                error = %error,
                "discovery still failing"
            );
        }
    }

    /// Reports an entry of the source that is not a usable endpoint (skipped).
    pub fn skip(&self, entry: impl Display, why: impl Display) {
        tracing::warn!(
            upstream = %self.upstream,
            source = %self.source,
            entry = %entry,
            error = %why,
            "discovery: skipping an entry that is not a usable endpoint"
        );
    }

    /// Keeps the usable entries of `entries` (name, parse result), logging the others.
    pub fn usable<N: Display>(
        &self,
        entries: impl IntoIterator<Item = (N, Result<Option<TargetConfig>, String>)>,
    ) -> Vec<TargetConfig> {
        entries
            .into_iter()
            .filter_map(|(name, r)| match r {
                Ok(t) => t,
                Err(e) => {
                    self.skip(name, e);
                    None
                }
            })
            .collect()
    }
}

/// Exponential backoff between retries of a failing source: doubles from `min` to `max`,
/// with ±20% jitter so that many gateways do not retry in step.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The default for sources that hold a connection: quick first retry, at most 5 s.
    pub fn connection() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The delay before the next retry.
    pub fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = (crate::hash::fast_rand() % 41) as f64 / 100.0 + 0.8;
        d.mul_f64(jitter)
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The plain-HTTP client of the etcd and Consul sources. TCP keepalive (probes after 30 s
/// idle, every 10 s, 3 of them) notices within about a minute a server that vanished
/// without closing the connection, which a long-lived etcd watch would otherwise wait on
/// forever.
pub(crate) fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_keepalive(Some(Duration::from_secs(30)));
    connector.set_keepalive_interval(Some(Duration::from_secs(10)));
    connector.set_keepalive_retries(Some(3));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// An error with its chain of sources (hyper's client errors say little on their own).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The start of a response body, for error messages.
pub(crate) fn preview(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .to_string()
}

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved bytes).
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let d: Vec<Duration> = (0..5).map(|_| b.fail()).collect();
        for (got, base) in d.iter().zip([100u64, 200, 400, 500, 500]) {
            let base = Duration::from_millis(base);
            assert!(
                *got >= base.mul_f64(0.8) && *got <= base.mul_f64(1.2),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.fail() <= Duration::from_millis(120));
    }

    #[test]
    fn query_escape_keeps_unreserved() {
        assert_eq!(query_escape("v2-a_b.c~"), "v2-a_b.c~");
        assert_eq!(query_escape("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
