//! The admin listener (`server.admin_listen`): health and readiness probes, Prometheus
//! metrics, a JSON admin API and the dashboard.
//!
//! | endpoint | |
//! |---|---|
//! | `GET /healthz` | the process is up (no token needed) |
//! | `GET /readyz` | config and plugins are loaded (no token needed) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /config` | the loaded config as JSON, secrets redacted |
//! | `GET /upstreams` | endpoints with health, breaker state, in-flight requests, latency |
//! | `GET /routes` | routes with their upstream and plugins |
//! | `GET /plugins` | loaded plugins and their routes |
//! | `GET /stats` | request and 5xx totals per route (the dashboard's rates), tokens per route and model |
//! | `POST /reload` | reload the config file and plugins |
//! | `GET /` | the dashboard (one self-contained page) |
//!
//! With `server.admin_token`, every endpoint but the probes and the dashboard page needs
//! `Authorization: Bearer TOKEN` (the dashboard takes it as `/#token=TOKEN` and sends it
//! with its API calls).

use crate::live::Live;
use crate::metrics;
use crate::plugin::Role;
use crate::proxy::body::ResponseBody;
use crate::proxy::error::json_error;
use crate::proxy::Gateway;
use crate::upstream::breaker::State;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use std::sync::Arc;

const DASHBOARD: &str = include_str!("dashboard.html");

pub async fn handle(live: &Arc<Live>, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path();
    let method = req.method();
    // The probes, and the dashboard page itself (it holds no data; its requests carry
    // the token).
    let open = matches!(path, "/healthz" | "/readyz" | "/" | "/dashboard");
    if !open && !authorized(live, &req) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin bearer token",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let wants = |m: &Method| method == m;
    match path {
        "/healthz" if wants(&Method::GET) => json_response(StatusCode::OK, json!({"status": "ok"})),
        "/readyz" if wants(&Method::GET) => json_response(
            StatusCode::OK,
            json!({"ready": true, "config_hash": format!("{:016x}", live.hash())}),
        ),
        "/metrics" if wants(&Method::GET) => {
            refresh_gauges(live);
            let mut r = Response::new(ResponseBody::full(metrics::get().render().into()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/config" if wants(&Method::GET) => {
            json_response(StatusCode::OK, config_json(&live.current()))
        }
        "/upstreams" if wants(&Method::GET) => {
            json_response(StatusCode::OK, upstreams_json(&live.current()))
        }
        "/routes" if wants(&Method::GET) => {
            json_response(StatusCode::OK, routes_json(&live.current()))
        }
        "/plugins" if wants(&Method::GET) => json_response(StatusCode::OK, plugins_json(live)),
        "/stats" if wants(&Method::GET) => {
            json_response(StatusCode::OK, stats_json(&live.current()))
        }
        "/reload" if wants(&Method::POST) => match live.reload().await {
            Ok(r) => json_response(
                StatusCode::OK,
                json!({
                    "reloaded": true,
                    "config_hash": format!("{:016x}", r.hash),
                    "routes": r.routes,
                    "upstreams": r.upstreams,
                    "plugins": r.plugins,
                }),
            ),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, "reload_failed", &e),
        },
        "/" | "/dashboard" if wants(&Method::GET) => {
            let mut r = Response::new(ResponseBody::full(DASHBOARD.into()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "/healthz" | "/readyz" | "/metrics" | "/config" | "/upstreams" | "/routes" | "/plugins"
        | "/stats" | "/" | "/dashboard" => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        ),
        "/reload" => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}

fn authorized(live: &Live, req: &Request<Incoming>) -> bool {
    let gw = live.current();
    let Some(token) = gw.server.admin_token.as_deref() else {
        return true;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the time taken does not tell how much of it matched.
    given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

fn json_response(status: StatusCode, v: Value) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(v.to_string().into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<ResponseBody> {
    let mut r = json_error(status, code, message, None);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Keys whose values are never shown: anything that looks like a credential.
fn secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k != "hash_key"
        && ["token", "secret", "password", "key", "credential"]
            .iter()
            .any(|s| k.contains(s))
}

fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if secret_key(k) {
                    *v = Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

fn config_json(gw: &Gateway) -> Value {
    let mut config = toml::from_str::<toml::Value>(&gw.config_text)
        .ok()
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or(Value::Null);
    redact(&mut config);
    json!({
        "hash": format!("{:016x}", gw.config_hash),
        "workers": gw.server.workers,
        "config": config,
    })
}

fn breaker_state(ep: &crate::upstream::Endpoint) -> &'static str {
    ep.breaker.as_ref().map_or("none", |b| b.state().as_str())
}

fn upstreams_json(gw: &Gateway) -> Value {
    let upstreams: Vec<Value> = gw
        .upstreams
        .iter()
        .map(|u| {
            let now = u.clock.now();
            let endpoints: Vec<Value> = u
                .endpoints()
                .iter()
                .map(|e| {
                    json!({
                        "address": &*e.address,
                        "weight": e.weight,
                        "available": u.usable(e, now),
                        // null: no active health check configured.
                        "healthy": u.config.health_check.as_ref().map(|_| e.healthy()),
                        "ejected": e.outlier.ejected(now),
                        "breaker": breaker_state(e),
                        "active_requests": e.active(),
                        "latency_ewma_ms": e.latency_ns() / 1e6,
                    })
                })
                .collect();
            json!({
                "name": u.name(),
                "balance": format!("{:?}", u.balance()),
                "protocol": format!("{:?}", u.config.protocol),
                "circuit_breaker": u.config.circuit_breaker.is_some(),
                "health_check": u.config.health_check.is_some(),
                "outlier_detection": u.config.outlier_detection.is_some(),
                "retry": u.config.retry.as_ref().map(|r| r.attempts),
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({ "upstreams": upstreams })
}

fn routes_json(gw: &Gateway) -> Value {
    let routes: Vec<Value> = gw
        .routes()
        .iter()
        .map(|entry| {
            let r = &entry.config;
            let path = match &r.path {
                crate::config::PathMatch::Exact(p) => json!({"exact": p}),
                crate::config::PathMatch::Prefix(p) => json!({"prefix": p}),
                crate::config::PathMatch::Regex(re) => json!({"regex": re.as_str()}),
            };
            json!({
                "name": r.name,
                "path": path,
                "methods": r.methods.as_ref().map(|ms| ms.iter().map(|m| m.as_str()).collect::<Vec<_>>()),
                "hosts": r.hosts,
                "upstream": gw.upstreams[r.upstream].name(),
                "plugins": entry.plugins.iter().map(|p| &*p.plugin.name).collect::<Vec<_>>(),
                "upgrades": r.upgrades,
                "limits": entry.limits.list.iter().map(|l| &*l.name).collect::<Vec<_>>(),
                // A composite route's parts (its `upstream` is its first part's).
                "parts": r.composite.as_ref().map(|c| c.parts.iter().map(|p| json!({
                    "name": p.name,
                    "upstream": gw.upstreams[p.upstream].name(),
                    "required": p.required,
                    "input": p.input.map(|i| &c.parts[i].name),
                })).collect::<Vec<_>>()),
            })
        })
        .collect();
    json!({ "routes": routes })
}

/// Each limit: what it caps, where it counts, how many requests it refused, and what
/// this gateway's own counters hold (for a Redis limit: only what it counted while Redis
/// was away).
fn limits_json(gw: &Gateway) -> Value {
    use crate::config::{LimitBackend, LimitKind};
    let limits: Vec<Value> = gw
        .limits
        .list
        .iter()
        .map(|l| {
            let (kind, limit, window) = match l.config.kind {
                LimitKind::Requests { limit, window } => ("requests", limit, Some(window)),
                LimitKind::Tokens { limit, window, .. } => ("tokens", limit, Some(window)),
                LimitKind::Concurrent { limit } => ("concurrent", limit, None),
            };
            let window_ms = window.map(|w| w.as_millis() as u64);
            let backend = match l.config.backend {
                LimitBackend::Local => "local",
                LimitBackend::Redis => "redis",
            };
            json!({
                "name": &*l.name,
                "kind": kind,
                "limit": limit,
                "window_ms": window_ms,
                "key": l.key_kind,
                "backend": backend,
                "refused": l.refused.get(),
                "local_keys": l.local.keys(),
                "local_used": l.local.used_total(window_ms.unwrap_or(1)),
            })
        })
        .collect();
    Value::Array(limits)
}

fn plugins_json(live: &Live) -> Value {
    let gw = live.current();
    // One entry per plugin, in order of first use; `routes` and `idle_instances` summed
    // over every route that enables it and every worker's pool.
    let mut plugins: Vec<Value> = Vec::new();
    for route in gw.routes() {
        for (k, bound) in route.plugins.iter().enumerate() {
            let p = &bound.plugin;
            let idle: usize = live
                .workers()
                .iter()
                .map(|w| w.load().pools(route)[k].idle())
                .sum();
            let entry = match plugins.iter().position(|v| v["name"] == *p.name) {
                Some(at) => &mut plugins[at],
                None => {
                    plugins.push(json!({
                        "name": &*p.name,
                        "path": p.config.path.display().to_string(),
                        "role": match p.role { Role::Auth => "auth", Role::Predicate => "predicate", Role::Transform => "transform" },
                        "memory_limit_bytes": p.config.memory_limit,
                        "timeout_ms": p.config.timeout.as_secs_f64() * 1e3,
                        "on_error": format!("{:?}", p.config.on_error).to_lowercase(),
                        "pool_size": p.config.pool_size,
                        "max_warm": p.config.max_warm,
                        "idle_timeout_ms": p.config.idle_timeout.as_secs_f64() * 1e3,
                        "routes": [],
                        "idle_instances": 0,
                    }));
                    plugins.last_mut().expect("just pushed")
                }
            };
            entry["routes"]
                .as_array_mut()
                .expect("routes is an array")
                .push(json!(&*route.name));
            entry["idle_instances"] =
                json!(entry["idle_instances"].as_u64().unwrap_or(0) + idle as u64);
        }
    }
    json!({ "plugins": plugins })
}

fn stats_json(gw: &Gateway) -> Value {
    let routes: Vec<Value> = gw
        .routes()
        .iter()
        .map(|r| {
            let (total, errors) = r.metrics.totals();
            // Token sums are the histograms' sums: exact integers below 2^53.
            let (mut input, mut output) = (0u64, 0u64);
            let models: Vec<Value> = r
                .metrics
                .models
                .entries()
                .iter()
                .map(|m| {
                    let i = m.input_tokens.get_sample_sum() as u64;
                    let o = m.output_tokens.get_sample_sum() as u64;
                    input += i;
                    output += o;
                    json!({
                        "request_model": &*m.request_model,
                        "response_model": &*m.response_model,
                        "requests": m.requests(),
                        "input_tokens": i,
                        "output_tokens": o,
                    })
                })
                .collect();
            let t = &r.metrics.tunnels;
            json!({
                "route": &*r.name,
                "requests": total,
                "errors_5xx": errors,
                "input_tokens": input,
                "output_tokens": output,
                "models": models,
                "upgraded_open": t.open.get(),
                "upgraded_bytes_to_upstream": t.to_upstream.get(),
                "upgraded_bytes_to_client": t.to_client.get(),
            })
        })
        .collect();
    json!({ "routes": routes, "limits": limits_json(gw) })
}

/// Sets the gauges that mirror live state, just before a scrape.
fn refresh_gauges(live: &Live) {
    let m = metrics::get();
    let gw = live.current();
    m.upstream_active.reset();
    m.breaker_state.reset();
    m.endpoint_healthy.reset();
    m.discovery_endpoints.reset();
    m.plugin_instances.reset();
    for u in &gw.upstreams {
        let now = u.clock.now();
        let endpoints = u.endpoints();
        m.discovery_endpoints
            .with_label_values(&[u.name()])
            .set(endpoints.len() as i64);
        for e in &endpoints {
            let labels = [u.name(), &*e.address];
            m.upstream_active
                .with_label_values(&labels)
                .set(e.active() as i64);
            m.endpoint_healthy
                .with_label_values(&labels)
                .set(u.usable(e, now) as i64);
            if let Some(b) = &e.breaker {
                let v = match b.state() {
                    State::Closed => 0,
                    State::Open => 1,
                    State::HalfOpen => 2,
                };
                m.breaker_state.with_label_values(&labels).set(v);
            }
        }
    }
    for w in live.workers() {
        let gw = w.load();
        for route in gw.routes() {
            for p in gw.pools(route) {
                m.plugin_instances
                    .with_label_values(&[&p.bound.plugin.name])
                    .add(p.idle() as i64);
            }
        }
    }
}
