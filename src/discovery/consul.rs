//! Consul discovery: the agent's health API, `GET /v1/health/service/<service>` (with
//! `passing`, `tag`, `dc`, and the ACL token in `X-Consul-Token`), as blocking queries —
//! each request carries the `X-Consul-Index` of the last answer as `index` and returns
//! when the result changes or `wait` runs out. The index rules are Consul's: reset to 0
//! when it goes backwards (the agent restarted or the cluster was rebuilt), never below 1,
//! and requests are spaced at least [`MIN_INTERVAL`] apart so an index that changes
//! constantly cannot make a busy loop. An instance's address is `Service.Address`, or
//! `Node.Address` when that is empty; its weight is `Service.Weights.Passing`.

use super::{endpoint, Backoff, HttpClient, Sink};
use crate::config::discovery::consul::ConsulConfig;
use crate::config::{TargetConfig, MAX_WEIGHT};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde::Deserialize;
use std::time::{Duration, Instant};

const MIN_INTERVAL: Duration = Duration::from_millis(100);

pub(super) async fn run(cfg: ConsulConfig, mut sink: Sink) {
    let client = super::http_client();
    let mut backoff = Backoff::connection();
    let mut index = 0u64;
    loop {
        let started = Instant::now();
        match query(&client, &cfg, index).await {
            Ok((answered, entries)) => {
                index = next_index(index, answered);
                let found = sink.usable(entries);
                if !sink.update(found) {
                    return;
                }
                backoff.reset();
                tokio::time::sleep(MIN_INTERVAL.saturating_sub(started.elapsed())).await;
            }
            Err(e) => {
                sink.failed(e);
                // After an outage, ask without blocking: the agent may be a new one.
                index = 0;
                tokio::time::sleep(backoff.fail()).await;
            }
        }
        if !sink.alive() {
            return;
        }
    }
}

/// The index for the next blocking query, from the one sent and the one answered:
/// reset to 0 when it went backwards, and never 0 otherwise (an agent answering 0 would
/// make every following query return at once).
fn next_index(sent: u64, answered: u64) -> u64 {
    if answered < sent {
        0
    } else {
        answered.max(1)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry {
    node: Node,
    service: Service,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(default, rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: i64,
}

type Entries = Vec<(String, Result<Option<TargetConfig>, String>)>;

/// One (blocking) query: the answer's index and its instances.
async fn query(
    client: &HttpClient,
    cfg: &ConsulConfig,
    index: u64,
) -> Result<(u64, Entries), String> {
    let mut url = format!(
        "{}v1/health/service/{}?index={index}&wait={}ms",
        cfg.address,
        cfg.service,
        cfg.wait.as_millis()
    );
    if cfg.passing {
        url.push_str("&passing");
    }
    if let Some(tag) = &cfg.tag {
        url.push_str(&format!("&tag={}", super::query_escape(tag)));
    }
    if let Some(dc) = &cfg.datacenter {
        url.push_str(&format!("&dc={}", super::query_escape(dc)));
    }
    let mut req = http::Request::get(&url);
    if let Some(token) = &cfg.token {
        req = req.header("x-consul-token", token);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("bad request: {e}"))?;
    // Consul adds up to wait/16 of jitter to a blocking query.
    let limit = cfg.wait + cfg.wait / 16 + Duration::from_secs(5);
    let resp = tokio::time::timeout(limit, async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| super::error_chain(&e))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| super::error_chain(&e))?;
        Ok::<_, String>((parts, body.to_bytes()))
    })
    .await
    .map_err(|_| format!("{} did not answer within {limit:?}", cfg.address))?;
    let (parts, body) = resp.map_err(|e| format!("{}: {e}", cfg.address))?;
    if !parts.status.is_success() {
        let hint = match parts.status.as_u16() {
            403 => " (the ACL token was refused)",
            _ => "",
        };
        return Err(format!(
            "HTTP {}{hint}: {}",
            parts.status,
            super::preview(&body)
        ));
    }
    let next = parts
        .headers
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or("the answer has no valid X-Consul-Index header")?;
    let list: Vec<ServiceEntry> = serde_json::from_slice(&body)
        .map_err(|e| format!("unexpected answer ({e}): {}", super::preview(&body)))?;
    Ok((next, list.into_iter().map(instance).collect()))
}

fn instance(e: ServiceEntry) -> (String, Result<Option<TargetConfig>, String>) {
    let name = format!("{} on node {}", e.service.id, e.node.node);
    let host = if e.service.address.is_empty() {
        &e.node.address
    } else {
        &e.service.address
    };
    // Weights.Passing is 1 by default in Consul; 0 cannot be balanced to, so it is 1 here.
    let weight = e
        .service
        .weights
        .map_or(1, |w| w.passing.clamp(1, i64::from(MAX_WEIGHT)));
    let r = endpoint::check(&endpoint::join_host_port(host, e.service.port), weight).map(Some);
    (name, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 42), 42);
        assert_eq!(next_index(42, 42), 42);
        assert_eq!(next_index(42, 43), 43);
        assert_eq!(next_index(42, 7), 0, "backwards: reset");
        assert_eq!(next_index(0, 0), 1, "never 0");
    }

    #[test]
    fn instances_use_the_node_address_when_the_service_has_none() {
        let list: Vec<ServiceEntry> = serde_json::from_str(
            r#"[{"Node": {"Node": "n1", "Address": "10.0.0.1"},
                 "Service": {"ID": "a", "Address": "", "Port": 80, "Weights": {"Passing": 3, "Warning": 1}}},
                {"Node": {"Node": "n2", "Address": "10.0.0.2"},
                 "Service": {"ID": "b", "Address": "fd00::2", "Port": 81}},
                {"Node": {"Node": "n3", "Address": "10.0.0.3"},
                 "Service": {"ID": "c", "Address": "", "Port": 0}}]"#,
        )
        .unwrap();
        let got: Vec<_> = list.into_iter().map(instance).collect();
        let ok = |i: usize| got[i].1.as_ref().unwrap().as_ref().unwrap();
        assert_eq!((ok(0).address.as_str(), ok(0).weight), ("10.0.0.1:80", 3));
        assert_eq!((ok(1).address.as_str(), ok(1).weight), ("[fd00::2]:81", 1));
        assert_eq!(got[2].0, "c on node n3");
        assert!(got[2].1.is_err());
    }
}
