//! Active health checks: one task per upstream with `[upstreams.health_check]` probes every
//! endpoint each `interval` (HTTP GET of `path` expecting `statuses`, or a TCP connect),
//! each probe bounded by `timeout`. An endpoint flips to unhealthy after
//! `unhealthy_threshold` failed probes in a row and back after `healthy_threshold`
//! passed ones; an unhealthy endpoint is not a balancing candidate. Endpoints start
//! healthy, and the first round runs at once.
//!
//! The task holds the upstream weakly and ends when the upstream is dropped (a config
//! reload) or the runtime stops; endpoints added by discovery are picked up each round.

use super::{Endpoint, Upstream};
use crate::config::resilience::{HealthCheckConfig, HealthCheckKind};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use tokio::net::TcpStream;

/// Consecutive probe results of one endpoint and the verdict they add up to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tracker {
    passes: u32,
    fails: u32,
}

impl Tracker {
    /// Counts one probe; returns the new verdict when the threshold to flip from
    /// `healthy` is reached.
    pub fn observe(
        &mut self,
        cfg: &HealthCheckConfig,
        healthy: bool,
        passed: bool,
    ) -> Option<bool> {
        if passed {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
            (!healthy && self.passes >= cfg.healthy_threshold).then_some(true)
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
            (healthy && self.fails >= cfg.unhealthy_threshold).then_some(false)
        }
    }
}

/// Starts the upstream's health-check task if it has one configured.
pub fn spawn(upstream: &Arc<Upstream>) -> Option<tokio::task::JoinHandle<()>> {
    upstream.config.health_check.as_ref()?;
    Some(tokio::spawn(run(Arc::downgrade(upstream))))
}

async fn run(upstream: Weak<Upstream>) {
    let mut trackers: HashMap<Arc<str>, Tracker> = HashMap::new();
    let mut tick = match upstream.upgrade() {
        Some(u) => tokio::time::interval(u.config.health_check.as_ref().expect("checked").interval),
        None => return,
    };
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(up) = upstream.upgrade() else { return };
        let cfg = up.config.health_check.clone().expect("checked");
        let endpoints = up.endpoints();
        drop(up);
        let mut probes = tokio::task::JoinSet::new();
        for ep in &endpoints {
            let (cfg, ep) = (cfg.clone(), ep.clone());
            probes.spawn(async move {
                let result = probe(&cfg, &ep).await;
                (ep, result)
            });
        }
        let results = probes.join_all().await;
        let Some(up) = upstream.upgrade() else { return };
        trackers.retain(|addr, _| endpoints.iter().any(|e| e.address == *addr));
        for (ep, result) in results {
            let t = trackers.entry(ep.address.clone()).or_default();
            let passed = result.is_ok();
            crate::metrics::get()
                .health_checks
                .with_label_values(&[up.name(), &ep.address, if passed { "pass" } else { "fail" }])
                .inc();
            if let Some(verdict) = t.observe(&cfg, ep.healthy(), passed) {
                ep.set_healthy(verdict);
                if verdict {
                    tracing::info!(
                        upstream = up.name(),
                        endpoint = &*ep.address,
                        "health check: endpoint healthy again"
                    );
                } else {
                    tracing::warn!(
                        upstream = up.name(),
                        endpoint = &*ep.address,
                        reason = %result.err().unwrap_or_default(),
                        "health check: endpoint unhealthy"
                    );
                }
            }
        }
    }
}

/// One probe of one endpoint: `Err` carries why it failed, for the log.
pub async fn probe(cfg: &HealthCheckConfig, ep: &Endpoint) -> Result<(), String> {
    match tokio::time::timeout(cfg.timeout, probe_inner(cfg, ep)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
    }
}

async fn probe_inner(cfg: &HealthCheckConfig, ep: &Endpoint) -> Result<(), String> {
    let stream = TcpStream::connect(&*ep.address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let HealthCheckKind::Http {
        path,
        host,
        statuses,
    } = &cfg.kind
    else {
        return Ok(());
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(path.as_str())
        .header(http::header::HOST, host.as_deref().unwrap_or(&ep.address))
        .header(http::header::USER_AGENT, "portcullis-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    if statuses.status(status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resilience::Conditions;
    use std::time::Duration;

    /// A probe interval longer than any test runs.
    const FOREVER: Duration = Duration::from_secs(3600);

    fn cfg() -> HealthCheckConfig {
        HealthCheckConfig {
            kind: HealthCheckKind::Tcp,
            interval: FOREVER,
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    #[test]
    fn flips_only_after_the_thresholds() {
        let c = cfg();
        let mut t = Tracker::default();
        assert_eq!(t.observe(&c, true, false), None);
        assert_eq!(t.observe(&c, true, false), None);
        assert_eq!(
            t.observe(&c, true, true),
            None,
            "a pass resets the failures"
        );
        assert_eq!(t.observe(&c, true, false), None);
        assert_eq!(t.observe(&c, true, false), None);
        assert_eq!(t.observe(&c, true, false), Some(false));
        assert_eq!(t.observe(&c, false, false), None, "already unhealthy");
        assert_eq!(t.observe(&c, false, true), None);
        assert_eq!(t.observe(&c, false, true), Some(true));
        assert_eq!(t.observe(&c, true, true), None);
    }

    #[tokio::test]
    async fn probes_over_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // An HTTP server answering 200 on /ok and 503 elsewhere.
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let status = if req.uri().path() == "/ok" { 200 } else { 503 };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Empty::<Bytes>::new())
                                    .unwrap(),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let ep = Endpoint::new(&addr, 1);
        let http = |path: &str| HealthCheckConfig {
            kind: HealthCheckKind::Http {
                path: path.into(),
                host: None,
                statuses: Conditions {
                    statuses: vec![200],
                    ..Conditions::default()
                },
            },
            ..cfg()
        };
        assert_eq!(probe(&http("/ok"), &ep).await, Ok(()));
        assert_eq!(probe(&http("/down"), &ep).await, Err("status 503".into()));
        assert_eq!(probe(&cfg(), &ep).await, Ok(()));
        // A port nobody listens on.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let gone = Endpoint::new(&closed, 1);
        let err = probe(&cfg(), &gone).await.unwrap_err();
        assert!(err.starts_with("connect:"), "{err}");
    }
}
