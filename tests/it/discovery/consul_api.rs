//! A stand-in for a Consul agent's health endpoint, since no Consul binary can be installed
//! from the package registries reachable here. It follows Consul's documented HTTP API for
//! `GET /v1/health/service/:service` (developer.hashicorp.com/consul/api-docs/health and
//! …/api-docs/features/blocking) as far as the gateway can observe it:
//!
//! - answers a JSON array of `{Node, Service, Checks}` entries with `X-Consul-Index`,
//!   `X-Consul-KnownLeader` and `X-Consul-LastContact`;
//! - blocking queries: with `index` > 0 the request waits while the current index is not
//!   greater than it, until a change or `wait` (a Go duration, default 5m, at most 10m, plus
//!   up to wait/16 jitter) has passed, then answers with the current index either way;
//! - `passing` (also `passing=true|false`) keeps instances whose checks are all passing;
//!   `tag` (repeatable) keeps instances carrying every tag; `dc` other than the agent's is
//!   `500 No path to datacenter`;
//! - ACLs with default deny: the token comes from `X-Consul-Token`, `Authorization:
//!   Bearer` or `?token=`; an unknown token is `403 ACL not found`; no token is the
//!   anonymous token, whose results are filtered to nothing
//!   (`X-Consul-Results-Filtered-By-ACLs: true`);
//! - malformed `index`/`wait`/`passing` are `400` with Consul's messages.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// One registered service instance with its service check's status.
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub node: String,
    pub node_address: String,
    /// Empty: clients use the node's address.
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    /// `passing`, `warning` or `critical`.
    pub status: &'static str,
    pub weight: u32,
}

struct Catalog {
    index: u64,
    instances: Vec<(Instance, u64)>,
}

struct Shared {
    catalog: Mutex<Catalog>,
    /// The current index, for blocking queries to wait on.
    index: watch::Sender<u64>,
    token: String,
    datacenter: String,
}

/// The running responder; stops (with its connections) when dropped.
pub struct ConsulApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ConsulApi {
    /// Serves on `listener` for an agent in `datacenter` whose ACL system knows only
    /// `token`; the index starts at `first_index`.
    pub fn start(listener: TcpListener, token: &str, datacenter: &str, first_index: u64) -> Self {
        let shared = Arc::new(Shared {
            catalog: Mutex::new(Catalog {
                index: first_index,
                instances: Vec::new(),
            }),
            index: watch::channel(first_index).0,
            token: token.into(),
            datacenter: datacenter.into(),
        });
        let addr = listener.local_addr().unwrap();
        let s = shared.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set, so aborting the task closes them all.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let s = s.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req| {
                                let s = s.clone();
                                async move { Ok::<_, Infallible>(handle(&s, req).await) }
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next() => {}
                }
            }
        });
        ConsulApi { addr, shared, task }
    }

    fn change(&self, f: impl FnOnce(&mut Vec<(Instance, u64)>, u64)) {
        let mut c = self.shared.catalog.lock().unwrap();
        c.index += 1;
        let index = c.index;
        f(&mut c.instances, index);
        self.shared.index.send_replace(index);
    }

    /// Registers (or re-registers) an instance.
    pub fn register(&self, inst: Instance) {
        self.change(|all, index| {
            all.retain(|(i, _)| i.id != inst.id);
            all.push((inst, index));
        });
    }

    pub fn set_status(&self, id: &str, status: &'static str) {
        self.change(|all, index| {
            for (i, modified) in all.iter_mut().filter(|(i, _)| i.id == id) {
                i.status = status;
                *modified = index;
            }
        });
    }

    pub fn index(&self) -> u64 {
        self.shared.catalog.lock().unwrap().index
    }
}

impl Drop for ConsulApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .unwrap()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go's `time.ParseDuration` for the units Consul users write: `500ms`, `10s`, `1m30s`.
fn go_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

async fn handle(s: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(service) = req.uri().path().strip_prefix("/v1/health/service/") else {
        return reply(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    let service = percent_decode(service);
    if req.method() != http::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let params: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());

    let header_token = req
        .headers()
        .get("x-consul-token")
        .or_else(|| req.headers().get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).to_string());
    let token = header_token.or_else(|| param("token").map(str::to_string));
    if token.as_ref().is_some_and(|t| *t != s.token) {
        return reply(StatusCode::FORBIDDEN, "ACL not found");
    }
    if param("dc").is_some_and(|dc| dc != s.datacenter) {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter");
    }
    let passing = match param("passing") {
        None => false,
        Some("") => true,
        Some(v) => match v.parse::<bool>() {
            Ok(b) => b,
            Err(_) => return reply(StatusCode::BAD_REQUEST, "Invalid value for ?passing"),
        },
    };
    let index = match param("index").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(i)) => i,
        Some(Err(_)) => return reply(StatusCode::BAD_REQUEST, "Invalid index"),
    };
    let wait = match param("wait").map(go_duration) {
        None => Duration::from_secs(300),
        Some(Some(w)) => w.min(Duration::from_secs(600)),
        Some(None) => return reply(StatusCode::BAD_REQUEST, "Invalid wait time"),
    };
    let tags: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.as_str())
        .collect();

    if index > 0 {
        let jitter = wait.mul_f64(jitter_unit() / 16.0);
        let mut rx = s.index.subscribe();
        let _ = tokio::time::timeout(wait + jitter, rx.wait_for(|current| *current > index)).await;
    }

    let (current, entries) = {
        let c = s.catalog.lock().unwrap();
        let entries: Vec<serde_json::Value> = c
            .instances
            .iter()
            .filter(|(i, _)| i.service == service)
            .filter(|(i, _)| !passing || i.status == "passing")
            .filter(|(i, _)| tags.iter().all(|t| i.tags.iter().any(|it| it == t)))
            .filter(|_| token.is_some())
            .map(|(i, modified)| entry(i, *modified, &s.datacenter))
            .collect();
        (c.index, entries)
    };
    let mut resp = Response::builder()
        .header("content-type", "application/json")
        .header("x-consul-index", current.to_string())
        .header("x-consul-knownleader", "true")
        .header("x-consul-lastcontact", "0")
        .header("x-consul-effective-consistency", "leader");
    if token.is_none() {
        resp = resp.header("x-consul-results-filtered-by-acls", "true");
    }
    resp.body(Full::new(
        serde_json::Value::Array(entries).to_string().into(),
    ))
    .unwrap()
}

/// A number in 0..1 from the clock, for the wait jitter.
fn jitter_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    f64::from(nanos % 1000) / 1000.0
}

/// One `{Node, Service, Checks}` entry in Consul's JSON shape.
fn entry(i: &Instance, modified: u64, dc: &str) -> serde_json::Value {
    serde_json::json!({
        "Node": {
            "ID": format!("{:0>8}-0000-0000-0000-000000000000", i.node.len()),
            "Node": i.node,
            "Address": i.node_address,
            "Datacenter": dc,
            "TaggedAddresses": { "lan": i.node_address, "wan": i.node_address },
            "Meta": { "consul-network-segment": "" },
            "CreateIndex": modified,
            "ModifyIndex": modified,
        },
        "Service": {
            "Kind": "",
            "ID": i.id,
            "Service": i.service,
            "Tags": i.tags,
            "Address": i.address,
            "TaggedAddresses": {},
            "Meta": {},
            "Port": i.port,
            "Weights": { "Passing": i.weight, "Warning": 1 },
            "EnableTagOverride": false,
            "Proxy": { "Mode": "", "MeshGateway": {}, "Expose": {} },
            "Connect": {},
            "Datacenter": dc,
            "CreateIndex": modified,
            "ModifyIndex": modified,
        },
        "Checks": [
            {
                "Node": i.node, "CheckID": "serfHealth", "Name": "Serf Health Status",
                "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
                "CreateIndex": modified, "ModifyIndex": modified,
            },
            {
                "Node": i.node, "CheckID": format!("service:{}", i.id),
                "Name": format!("Service '{}' check", i.service),
                "Status": i.status, "Notes": "", "Output": "",
                "ServiceID": i.id, "ServiceName": i.service, "ServiceTags": i.tags,
                "Type": "http", "CreateIndex": modified, "ModifyIndex": modified,
            },
        ],
    })
}
