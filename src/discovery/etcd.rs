//! etcd v3 discovery over etcd's JSON gateway (`POST /v3/kv/range`, `POST /v3/watch`, keys
//! and values base64): every key under `prefix` is one endpoint, its value a JSON endpoint
//! or `host:port`. The prefix is listed, then watched from the listed revision on, so no
//! change between the two is lost; a watch that ends (server restart, compaction, lost
//! connection) is followed by a fresh list on the next endpoint, after a backoff.
//!
//! The gateway is part of every etcd v3 server (on by default since 3.3), so this needs
//! nothing beyond the HTTP client the gateway already has: no gRPC stack, no protoc.

use super::{endpoint, preview, Backoff, HttpClient, Sink};
use crate::config::discovery::etcd::EtcdConfig;
use crate::config::TargetConfig;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a range request, or the start of a watch, may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn run(cfg: EtcdConfig, mut sink: Sink) {
    let client = super::http_client();
    let key = B64.encode(&cfg.prefix);
    let range_end = B64.encode(prefix_end(cfg.prefix.as_bytes()));
    let mut backoff = Backoff::connection();
    for member in cfg.endpoints.iter().cycle() {
        let mut session = Session {
            client: &client,
            base: member.to_string(),
            key: &key,
            range_end: &range_end,
            sink: &mut sink,
            backoff: &mut backoff,
        };
        match session.run().await {
            Ok(()) => return,
            Err(e) => sink.failed(format!("{member}: {e}")),
        }
        tokio::time::sleep(backoff.fail()).await;
        if !sink.alive() {
            return;
        }
    }
}

/// The end of the key range that holds every key starting with `prefix` (etcd's rule:
/// the prefix with its last byte below 0xff incremented, the rest dropped).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

struct Session<'a> {
    client: &'a HttpClient,
    /// `http://host:port/`
    base: String,
    key: &'a str,
    range_end: &'a str,
    sink: &'a mut Sink,
    backoff: &'a mut Backoff,
}

#[derive(Deserialize)]
struct RangeResponse {
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct Header {
    /// int64 values come as JSON strings from the gateway.
    revision: String,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct WatchMessage {
    result: Option<WatchResult>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    compact_revision: Option<String>,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    /// Absent for PUT, the enum's zero value.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    kv: KeyValue,
}

impl Session<'_> {
    /// Lists, then watches until the watch fails (`Err`) or the upstream is gone (`Ok`).
    async fn run(&mut self) -> Result<(), String> {
        let range = serde_json::json!({ "key": self.key, "range_end": self.range_end });
        let resp = self.post("v3/kv/range", &range).await?;
        let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| "range response timed out".to_string())?
            .map_err(|e| format!("reading range response: {e}"))?
            .to_bytes();
        let listed: RangeResponse = serde_json::from_slice(&body)
            .map_err(|e| format!("unexpected range response ({e}): {}", preview(&body)))?;
        let revision: i64 = listed
            .header
            .revision
            .parse()
            .map_err(|_| format!("bad revision `{}`", listed.header.revision))?;
        let mut kvs: BTreeMap<String, Result<TargetConfig, String>> = BTreeMap::new();
        for kv in listed.kvs {
            let (key, value) = decode(&kv)?;
            kvs.insert(key, endpoint::parse_value(&value));
        }
        if !self.apply(&kvs) {
            return Ok(());
        }
        self.backoff.reset();

        let watch = serde_json::json!({ "create_request": {
            "key": self.key, "range_end": self.range_end, "start_revision": (revision + 1).to_string(),
        }});
        let mut body = self.post("v3/watch", &watch).await?.into_body();
        let mut buf = BytesMut::new();
        loop {
            let frame = body
                .frame()
                .await
                .ok_or("watch stream ended")?
                .map_err(|e| format!("watch stream failed: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            // The gateway writes one JSON message per line.
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(nl + 1);
                let msg = line.chunk().trim_ascii();
                if msg.is_empty() {
                    continue;
                }
                if self.on_message(msg, &mut kvs)? && !self.apply(&kvs) {
                    return Ok(());
                }
            }
        }
    }

    /// Folds one watch message into `kvs`; `Ok(true)` when it changed something.
    fn on_message(
        &mut self,
        msg: &[u8],
        kvs: &mut BTreeMap<String, Result<TargetConfig, String>>,
    ) -> Result<bool, String> {
        let m: WatchMessage = serde_json::from_slice(msg)
            .map_err(|e| format!("unexpected watch message ({e}): {}", preview(msg)))?;
        if let Some(e) = m.error {
            return Err(format!("watch error: {e}"));
        }
        let Some(r) = m.result else { return Ok(false) };
        if let Some(c) = r.compact_revision.filter(|c| c != "0") {
            return Err(format!(
                "watch start revision compacted (at {c}); listing again"
            ));
        }
        if r.canceled {
            return Err(format!("watch canceled by the server: {}", r.cancel_reason));
        }
        for ev in &r.events {
            let (key, value) = decode(&ev.kv)?;
            match ev.kind.as_deref() {
                None | Some("PUT") => {
                    kvs.insert(key, endpoint::parse_value(&value));
                }
                Some("DELETE") => {
                    kvs.remove(&key);
                }
                Some(other) => return Err(format!("unknown watch event type `{other}`")),
            }
        }
        Ok(!r.events.is_empty())
    }

    fn apply(&mut self, kvs: &BTreeMap<String, Result<TargetConfig, String>>) -> bool {
        let found = self.sink.usable(
            kvs.iter()
                .map(|(k, r)| (format!("key {k}"), r.clone().map(Some))),
        );
        self.sink.update(found)
    }

    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<http::Response<Incoming>, String> {
        let req = http::Request::post(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| format!("{path} timed out"))?
            .map_err(|e| format!("{path}: {}", super::error_chain(&e)))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(format!("{path}: HTTP {status}: {}", preview(&body)));
        }
        Ok(resp)
    }
}

fn decode(kv: &KeyValue) -> Result<(String, Vec<u8>), String> {
    let key = B64
        .decode(&kv.key)
        .map_err(|_| format!("key `{}` is not base64", kv.key))?;
    let value = B64
        .decode(&kv.value)
        .map_err(|_| "value is not base64".to_string())?;
    Ok((String::from_utf8_lossy(&key).into_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/svc/"), b"/svc0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
