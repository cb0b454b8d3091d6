//! Prometheus metrics (the `prometheus` crate), served by the admin listener at
//! `/metrics`.
//!
//! The request path never looks a metric up by label: routes and endpoints resolve their
//! handles once, when the tables are built or an endpoint appears, and then only touch
//! atomics. Gauges that describe live state (in-flight requests, breaker state, health,
//! pool sizes) are read from that state when the endpoint is scraped — except the open
//! upgraded connections of a route, whose gauge *is* that state (it is also the count the
//! route's `tunnel.max_connections` is checked against, shared across reloads by name).

use arc_swap::ArcSwap;
use prometheus::{
    exponential_buckets, Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_active: IntGaugeVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub endpoint_healthy: IntGaugeVec,
    pub health_checks: IntCounterVec,
    pub ejections: IntCounterVec,
    pub retries: IntCounterVec,
    pub retries_denied: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub discovery_updates: IntCounterVec,
    pub discovery_errors: IntCounterVec,
    pub discovery_endpoints: IntGaugeVec,
    pub plugin_duration: HistogramVec,
    pub plugin_failures: IntCounterVec,
    pub plugin_instances: IntGaugeVec,
    pub plugin_instances_created: IntCounterVec,
    pub reloads: IntCounterVec,
    pub config_info: IntGaugeVec,
    pub stream_failures: IntCounterVec,
    pub token_usage: HistogramVec,
    pub time_to_first_token: HistogramVec,
    pub time_per_output_token: HistogramVec,
    pub model_requests: IntCounterVec,
    pub upgraded_open: IntGaugeVec,
    pub upgraded_closed: IntCounterVec,
    pub upgraded_bytes: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_backend_errors: IntCounterVec,
    pub composite_parts: IntCounterVec,
    pub composite_part_duration: HistogramVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        // 0.5 ms … ~65 s for requests (LLM calls are long); 10 µs … ~80 ms for plugins.
        let request_buckets = exponential_buckets(0.0005, 2.0, 18).expect("valid buckets");
        let plugin_buckets = exponential_buckets(0.00001, 2.0, 14).expect("valid buckets");
        Metrics {
            requests: counter(&r, "portcullis_requests_total", "Requests answered, by route, method and status class.", &["route", "method", "status"]),
            request_duration: histogram(&r, "portcullis_request_duration_seconds", "Time from a request's arrival to its response head being sent, by route.", &["route"], request_buckets.clone()),
            upstream_duration: histogram(&r, "portcullis_upstream_request_duration_seconds", "Time from sending a try upstream to its response head, by upstream and endpoint.", &["upstream", "endpoint"], request_buckets),
            upstream_errors: counter(&r, "portcullis_upstream_errors_total", "Failed tries, by upstream, endpoint and kind (connect, timeout, reset, status_5xx).", &["upstream", "endpoint", "kind"]),
            upstream_active: gauge(&r, "portcullis_upstream_active_requests", "Requests in flight to an endpoint (until their response body has streamed).", &["upstream", "endpoint"]),
            breaker_state: gauge(&r, "portcullis_circuit_breaker_state", "Circuit breaker state of an endpoint: 0 closed, 1 open, 2 half-open.", &["upstream", "endpoint"]),
            breaker_transitions: counter(&r, "portcullis_circuit_breaker_transitions_total", "Circuit breaker state changes, by the state entered.", &["upstream", "endpoint", "to"]),
            endpoint_healthy: gauge(&r, "portcullis_endpoint_healthy", "1 when an endpoint is a balancing candidate (healthy, not ejected, breaker not open).", &["upstream", "endpoint"]),
            health_checks: counter(&r, "portcullis_health_checks_total", "Active health-check probes, by result (pass, fail).", &["upstream", "endpoint", "result"]),
            ejections: counter(&r, "portcullis_outlier_ejections_total", "Endpoints ejected by outlier detection.", &["upstream", "endpoint"]),
            retries: counter(&r, "portcullis_retries_total", "Retries made, by upstream.", &["upstream"]),
            retries_denied: counter(&r, "portcullis_retry_budget_exhausted_total", "Retries not made because the retry budget was used up.", &["upstream"]),
            fallbacks: counter(&r, "portcullis_fallbacks_total", "Requests a route passed on to its next fallback, by route, the upstream that failed and why.", &["route", "upstream", "reason"]),
            discovery_updates: counter(&r, "portcullis_discovery_updates_total", "Endpoint sets applied from a discovery source.", &["upstream", "source"]),
            discovery_errors: counter(&r, "portcullis_discovery_errors_total", "Discovery source failures (the last good set is kept).", &["upstream", "source"]),
            discovery_endpoints: gauge(&r, "portcullis_upstream_endpoints", "Endpoints currently known for an upstream.", &["upstream"]),
            plugin_duration: histogram(&r, "portcullis_plugin_call_duration_seconds", "Plugin hook calls, by plugin and hook.", &["plugin", "hook"], plugin_buckets),
            plugin_failures: counter(&r, "portcullis_plugin_failures_total", "Failed plugin calls, by plugin and kind (trap, timeout, memory, error).", &["plugin", "kind"]),
            plugin_instances: gauge(&r, "portcullis_plugin_pool_instances", "Warm plugin instances pooled, by plugin.", &["plugin"]),
            plugin_instances_created: counter(&r, "portcullis_plugin_instances_created_total", "Plugin instances made (instantiated and configured) for calls that found no warm one, by plugin.", &["plugin"]),
            reloads: counter(&r, "portcullis_config_reloads_total", "Config reloads, by result (success, failure).", &["result"]),
            config_info: gauge(&r, "portcullis_config_info", "The loaded config: 1 for its hash.", &["hash"]),
            stream_failures: counter(&r, "portcullis_response_stream_failures_total", "Responses whose upstream body failed after the head was sent (the client saw the stream aborted), by route and error (upstream_reset_mid_stream, upstream_timeout_mid_stream).", &["route", "error"]),
            // The OpenTelemetry gen_ai metrics (semantic conventions 1.37), by route and model.
            token_usage: histogram(&r, "gen_ai_client_token_usage", "Tokens used per model call, by route, request and response model, and token type (input, output).", &MODEL_LABELS_TOKEN, TOKEN_BUCKETS.to_vec()),
            time_to_first_token: histogram(&r, "gen_ai_server_time_to_first_token_seconds", "Time from a model call's arrival to its first streamed event.", &MODEL_LABELS, TTFT_BUCKETS.to_vec()),
            time_per_output_token: histogram(&r, "gen_ai_server_time_per_output_token_seconds", "Time per output token after the first, of streamed model calls.", &MODEL_LABELS, TPOT_BUCKETS.to_vec()),
            model_requests: counter(&r, "portcullis_gen_ai_requests_total", "Model calls, by route, request and response model, and outcome (ok, status_4xx, status_5xx, upstream_error_event, upstream_reset_mid_stream, upstream_timeout_mid_stream, client_closed).", &MODEL_LABELS_OUTCOME),
            upgraded_open: gauge(&r, "portcullis_upgraded_connections", "Upgraded connections (WebSocket) open, by route.", &["route"]),
            upgraded_closed: counter(&r, "portcullis_upgraded_connections_closed_total", "Upgraded connections closed, by route and who closed them (client, upstream, gateway).", &["route", "closed_by"]),
            upgraded_bytes: counter(&r, "portcullis_upgraded_bytes_total", "Bytes copied through upgraded connections, by route and direction (to_upstream, to_client).", &["route", "direction"]),
            // By limit name and its key's kinds (`consumer+model`), never the key's values:
            // those are unbounded.
            rate_limited: counter(&r, "portcullis_rate_limited_total", "Requests refused (429) by a rate limit or token budget, by limit and the kinds of its key.", &["limit", "key"]),
            rate_limit_backend_errors: counter(&r, "portcullis_rate_limit_backend_errors_total", "Reservations Redis did not answer in time, by limit and the on_backend_error policy applied (deny, local).", &["limit", "policy"]),
            composite_parts: counter(&r, "portcullis_composite_parts_total", "Parts of composite routes called, by route, part and outcome (ok, timeout, error, cancelled).", &["route", "part", "outcome"]),
            composite_part_duration: histogram(&r, "portcullis_composite_part_duration_seconds", "Time from a composite route's part being sent to its body read whole, by route and part.", &["route", "part"], exponential_buckets(0.0005, 2.0, 18).expect("valid buckets")),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("text format is UTF-8")
    }
}

const MODEL_LABELS: [&str; 3] = ["route", "gen_ai_request_model", "gen_ai_response_model"];
const MODEL_LABELS_TOKEN: [&str; 4] = [
    "route",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "gen_ai_token_type",
];
const MODEL_LABELS_OUTCOME: [&str; 4] = [
    "route",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "outcome",
];
/// The semantic conventions' advised buckets.
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const TPOT_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// The outcomes of a model call, in the order of [`ModelMetrics::outcomes`].
pub const OUTCOMES: [&str; 7] = [
    "ok",
    "status_4xx",
    "status_5xx",
    "upstream_error_event",
    "upstream_reset_mid_stream",
    "upstream_timeout_mid_stream",
    "client_closed",
];

/// The most (request model, response model) pairs one route keeps metrics for; calls of
/// further pairs are counted under `other` (a hostile client or upstream cannot grow the
/// registry without bound).
pub const MAX_MODELS_PER_ROUTE: usize = 64;

/// The label of a model beyond [`MAX_MODELS_PER_ROUTE`].
pub const OTHER_MODEL: &str = "other";

/// One route's metrics of one (request model, response model) pair, resolved once.
pub struct ModelMetrics {
    pub request_model: Box<str>,
    pub response_model: Box<str>,
    pub input_tokens: Histogram,
    pub output_tokens: Histogram,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
    /// By [`OUTCOMES`].
    pub outcomes: Vec<IntCounter>,
}

impl ModelMetrics {
    fn new(route: &str, request_model: &str, response_model: &str) -> Self {
        let m = get();
        let labels = [route, request_model, response_model];
        let tokens = |t| {
            m.token_usage
                .with_label_values(&[route, request_model, response_model, t])
        };
        ModelMetrics {
            request_model: request_model.into(),
            response_model: response_model.into(),
            input_tokens: tokens("input"),
            output_tokens: tokens("output"),
            time_to_first_token: m.time_to_first_token.with_label_values(&labels),
            time_per_output_token: m.time_per_output_token.with_label_values(&labels),
            outcomes: OUTCOMES
                .iter()
                .map(|o| {
                    m.model_requests
                        .with_label_values(&[route, request_model, response_model, o])
                })
                .collect(),
        }
    }

    /// Calls counted so far.
    pub fn requests(&self) -> u64 {
        self.outcomes.iter().map(IntCounter::get).sum()
    }
}

/// A route's [`ModelMetrics`] by model pair. Lookups are lock-free (a snapshot behind an
/// `ArcSwap`); a new pair is added by swapping in a copy with it, once per pair.
pub struct ModelTable {
    route: Box<str>,
    entries: ArcSwap<Vec<Arc<ModelMetrics>>>,
}

impl ModelTable {
    pub fn new(route: &str) -> Self {
        ModelTable {
            route: route.into(),
            entries: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// The metrics of a call that asked for `request_model` and was answered by
    /// `response_model` (`""`: not named).
    pub fn get(&self, request_model: &str, response_model: &str) -> Arc<ModelMetrics> {
        let find = |v: &[Arc<ModelMetrics>], q: &str, r: &str| {
            v.iter()
                .find(|e| &*e.request_model == q && &*e.response_model == r)
                .cloned()
        };
        let entries = self.entries.load();
        if let Some(e) = find(&entries, request_model, response_model) {
            return e;
        }
        // A full table answers with its `other` entry without writing (an rcu would).
        if entries.len() >= MAX_MODELS_PER_ROUTE {
            if let Some(e) = find(&entries, OTHER_MODEL, OTHER_MODEL) {
                return e;
            }
        }
        let mut found = None;
        self.entries.rcu(|v| {
            let (q, r) = if v.len() >= MAX_MODELS_PER_ROUTE {
                (OTHER_MODEL, OTHER_MODEL)
            } else {
                (request_model, response_model)
            };
            if let Some(e) = find(v, q, r) {
                found = Some(e);
                return v.clone();
            }
            let e = Arc::new(ModelMetrics::new(&self.route, q, r));
            found = Some(e.clone());
            let mut next = Vec::with_capacity(v.len() + 1);
            next.extend(v.iter().cloned());
            next.push(e);
            Arc::new(next)
        });
        found.expect("set by the update")
    }

    /// Every pair seen so far.
    pub fn entries(&self) -> Arc<Vec<Arc<ModelMetrics>>> {
        self.entries.load_full()
    }
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Status class label of a status code.
pub fn status_class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other",
];

fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::PATCH => 4,
        http::Method::HEAD => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

/// One route's request metrics, resolved once: counters per method × status class, and
/// the duration histogram.
pub struct RouteMetrics {
    route: std::sync::Arc<str>,
    counters: Vec<IntCounter>,
    duration: Histogram,
    /// The route's model calls (routes with `[routes.ai]`).
    pub models: Arc<ModelTable>,
    pub tunnels: TunnelMetrics,
}

/// Who ended an upgraded connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedBy {
    Client,
    Upstream,
    Gateway,
}

impl ClosedBy {
    const ALL: [ClosedBy; 3] = [ClosedBy::Client, ClosedBy::Upstream, ClosedBy::Gateway];

    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Upstream => "upstream",
            ClosedBy::Gateway => "gateway",
        }
    }
}

/// One route's upgraded-connection metrics, resolved once.
#[derive(Clone)]
pub struct TunnelMetrics {
    /// Open now; also what `tunnel.max_connections` is checked against.
    pub open: IntGauge,
    /// By [`ClosedBy`].
    closed: [IntCounter; 3],
    pub to_upstream: IntCounter,
    pub to_client: IntCounter,
}

impl TunnelMetrics {
    fn new(route: &str) -> Self {
        let m = get();
        TunnelMetrics {
            open: m.upgraded_open.with_label_values(&[route]),
            closed: ClosedBy::ALL
                .map(|c| m.upgraded_closed.with_label_values(&[route, c.as_str()])),
            to_upstream: m.upgraded_bytes.with_label_values(&[route, "to_upstream"]),
            to_client: m.upgraded_bytes.with_label_values(&[route, "to_client"]),
        }
    }

    pub fn closed(&self, by: ClosedBy) -> &IntCounter {
        &self.closed[by as usize]
    }
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        let m = get();
        let mut counters = Vec::with_capacity(METHODS.len() * CLASSES.len());
        for method in METHODS {
            for class in CLASSES {
                counters.push(m.requests.with_label_values(&[route, method, class]));
            }
        }
        RouteMetrics {
            route: route.into(),
            counters,
            duration: m.request_duration.with_label_values(&[route]),
            models: Arc::new(ModelTable::new(route)),
            tunnels: TunnelMetrics::new(route),
        }
    }

    /// Requests counted so far, and how many of them were 5xx.
    pub fn totals(&self) -> (u64, u64) {
        let total = self.counters.iter().map(IntCounter::get).sum();
        let errors = self
            .counters
            .iter()
            .skip(status_class(500))
            .step_by(CLASSES.len())
            .map(IntCounter::get)
            .sum();
        (total, errors)
    }

    /// Counts a fallback away from `upstream` (rare: the labels are looked up each time).
    pub fn fallback(&self, upstream: &str, reason: &str) {
        get()
            .fallbacks
            .with_label_values(&[&self.route, upstream, reason])
            .inc();
    }

    pub fn observe(&self, method: &http::Method, status: u16, seconds: f64) {
        self.counters[method_index(method) * CLASSES.len() + status_class(status)].inc();
        self.duration.observe(seconds);
    }
}

/// The outcomes of a composite route's part, in the order of [`PartMetrics::outcomes`].
pub const PART_OUTCOMES: [&str; 4] = ["ok", "timeout", "error", "cancelled"];

/// One part of a composite route: its outcome counters and duration, resolved once.
pub struct PartMetrics {
    /// By [`PART_OUTCOMES`].
    pub outcomes: [IntCounter; 4],
    pub duration: Histogram,
}

impl PartMetrics {
    pub fn new(route: &str, part: &str) -> Self {
        let m = get();
        PartMetrics {
            outcomes: PART_OUTCOMES.map(|o| m.composite_parts.with_label_values(&[route, part, o])),
            duration: m.composite_part_duration.with_label_values(&[route, part]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_metrics_count_by_method_and_class() {
        let r = RouteMetrics::new("metrics-unit-test");
        r.observe(&http::Method::POST, 201, 0.01);
        r.observe(&http::Method::POST, 503, 0.02);
        r.observe(&http::Method::from_bytes(b"PURGE").unwrap(), 404, 0.03);
        let m = get();
        let get = |method: &str, class: &str| {
            m.requests
                .with_label_values(&["metrics-unit-test", method, class])
                .get()
        };
        assert_eq!(get("POST", "2xx"), 1);
        assert_eq!(get("POST", "5xx"), 1);
        assert_eq!(get("other", "4xx"), 1);
        assert_eq!(get("GET", "2xx"), 0);
        assert_eq!(r.totals(), (3, 1));
        let text = m.render();
        assert!(text.contains(
            "portcullis_requests_total{method=\"POST\",route=\"metrics-unit-test\",status=\"5xx\"} 1"
        ), "{text}");
        assert!(text
            .contains("portcullis_request_duration_seconds_count{route=\"metrics-unit-test\"} 3"));
    }
}
