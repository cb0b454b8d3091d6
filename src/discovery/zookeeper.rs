//! ZooKeeper discovery (zookeeper-client): the children of a znode are the endpoints, as
//! services register them with ephemeral nodes. The children and each child's data are
//! read with one-shot watches; any watch firing re-reads the set. While the connection is
//! lost the client reconnects by itself (keeping the session, whose watches the server
//! restores) and the last good set stays; an expired or closed session is replaced by a
//! new one, which lists everything again.
//!
//! A child's data may be:
//! - a Curator `ServiceInstance` JSON (`{"name", "address", "port", "sslPort", …}`; an
//!   instance with `"enabled": false` is left out);
//! - an endpoint JSON `{"address": "host:port", "weight": N}`, or `host:port` as text;
//! - empty, with the child's name `host:port` itself.

use super::{endpoint, Backoff, Sink};
use crate::config::discovery::zookeeper::ZookeeperConfig;
use crate::config::TargetConfig;
use tokio::task::JoinSet;
use zookeeper_client::{Client, Error, EventType, SessionState};

pub(super) async fn run(cfg: ZookeeperConfig, mut sink: Sink) {
    let mut backoff = Backoff::connection();
    loop {
        let connected = Client::connector()
            .with_session_timeout(cfg.session_timeout)
            .connect(&cfg.servers)
            .await;
        match connected {
            Ok(client) => {
                if !follow(&client, &cfg.path, &mut sink, &mut backoff).await {
                    return;
                }
            }
            Err(e) => sink.failed(format!("cannot connect to {}: {e}", cfg.servers)),
        }
        tokio::time::sleep(backoff.fail()).await;
        if !sink.alive() {
            return;
        }
    }
}

/// Why following a session stopped.
enum Stop {
    /// The session ended (expired, closed, auth failed): start a new one.
    Session(Error),
    /// A transient failure: retry on the same session after a backoff.
    Retry(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        match e {
            Error::SessionExpired | Error::ClientClosed | Error::AuthFailed => Stop::Session(e),
            e => Stop::Retry(e),
        }
    }
}

/// Follows `path` on one session until the session ends; `false` when the upstream is gone.
async fn follow(client: &Client, path: &str, sink: &mut Sink, backoff: &mut Backoff) -> bool {
    let mut state = client.state_watcher();
    loop {
        let mut watches = JoinSet::new();
        match list(client, path, &mut watches).await {
            Ok(entries) => {
                let found = sink.usable(entries);
                if !sink.update(found) {
                    return false;
                }
                backoff.reset();
            }
            Err(Stop::Session(e)) => {
                sink.failed(format!("zookeeper session ended: {e}; starting a new one"));
                return true;
            }
            Err(Stop::Retry(Error::NoNode)) => {
                // Wait for the znode to appear instead of polling for it.
                sink.failed(format!("znode {path} does not exist"));
                match client.check_and_watch_stat(path).await {
                    Ok((Some(_), _)) => continue,
                    Ok((None, w)) => {
                        watches.spawn(w.changed());
                    }
                    Err(e) => {
                        sink.failed(format!("watching {path}: {e}"));
                        tokio::time::sleep(backoff.fail()).await;
                        continue;
                    }
                }
            }
            Err(Stop::Retry(e)) => {
                sink.failed(format!("reading {path}: {e}"));
                tokio::time::sleep(backoff.fail()).await;
                if !sink.alive() {
                    return false;
                }
                continue;
            }
        }
        // Wait for a change of the children or of a child's data, or of the session.
        loop {
            tokio::select! {
                Some(event) = watches.join_next() => {
                    let Ok(event) = event else { break };
                    if event.event_type == EventType::Session && event.session_state.is_terminated() {
                        sink.failed(format!("zookeeper session {}; starting a new one", event.session_state));
                        return true;
                    }
                    break;
                }
                s = state.changed() => match s {
                    SessionState::Disconnected => sink.failed(
                        "disconnected from zookeeper; reconnecting",
                    ),
                    s if s.is_terminated() => {
                        sink.failed(format!("zookeeper session {s}; starting a new one"));
                        return true;
                    }
                    // Reconnected: read again in case a change was missed.
                    _ => break,
                },
            }
        }
        if !sink.alive() {
            return false;
        }
    }
}

type Entries = Vec<(String, Result<Option<TargetConfig>, String>)>;

/// Reads the children of `path` and their data, leaving a watch on each in `watches`.
async fn list(
    client: &Client,
    path: &str,
    watches: &mut JoinSet<zookeeper_client::WatchedEvent>,
) -> Result<Entries, Stop> {
    let (children, watch) = client.list_and_watch_children(path).await?;
    watches.spawn(watch.changed());
    let mut entries = Vec::with_capacity(children.len());
    for child in children {
        let child_path = if path == "/" {
            format!("/{child}")
        } else {
            format!("{path}/{child}")
        };
        match client.get_and_watch_data(&child_path).await {
            Ok((data, _, watch)) => {
                watches.spawn(watch.changed());
                let parsed = parse_node(&child, &data);
                entries.push((child_path, parsed));
            }
            // Gone between the listing and now: the children watch has fired already.
            Err(Error::NoNode) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(entries)
}

/// One child: its data in one of the accepted formats, or its name when the data is empty.
fn parse_node(name: &str, data: &[u8]) -> Result<Option<TargetConfig>, String> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return endpoint::check(name, 1)
            .map(Some)
            .map_err(|e| format!("no data, and the node name is not an endpoint: {e}"));
    }
    if data.trim_ascii_start().starts_with(b"{") {
        let v: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| format!("bad JSON: {e}"))?;
        if v.get("port").is_some() || v.get("sslPort").is_some() {
            return curator(&v);
        }
    }
    endpoint::parse_value(data).map(Some)
}

/// A Curator `ServiceInstance`: `address` and `port` (or `sslPort` when there is no port).
fn curator(v: &serde_json::Value) -> Result<Option<TargetConfig>, String> {
    if v.get("enabled").and_then(|e| e.as_bool()) == Some(false) {
        return Ok(None);
    }
    let address = v
        .get("address")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
        .ok_or("Curator instance without `address`")?;
    let port = [v.get("port"), v.get("sslPort")]
        .into_iter()
        .flatten()
        .find_map(|p| p.as_u64())
        .ok_or("Curator instance without `port` or `sslPort`")?;
    let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
    endpoint::check(&endpoint::join_host_port(address, port), 1).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(name: &str, data: &str) -> Result<Option<String>, String> {
        parse_node(name, data.as_bytes()).map(|t| t.map(|t| format!("{}/{}", t.address, t.weight)))
    }

    #[test]
    fn node_formats() {
        let curator = r#"{"name":"chat","id":"5f1c","address":"10.0.0.7","port":9001,"sslPort":null,
            "payload":null,"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC",
            "uriSpec":null,"enabled":true}"#;
        assert_eq!(addr("5f1c", curator).unwrap().unwrap(), "10.0.0.7:9001/1");
        let ssl_only = r#"{"name":"chat","address":"::1","port":null,"sslPort":8443}"#;
        assert_eq!(addr("x", ssl_only).unwrap().unwrap(), "[::1]:8443/1");
        let disabled = r#"{"name":"chat","address":"10.0.0.7","port":9001,"enabled":false}"#;
        assert_eq!(addr("x", disabled).unwrap(), None);
        assert_eq!(
            addr("x", r#"{"address":"10.0.0.8:80","weight":4}"#)
                .unwrap()
                .unwrap(),
            "10.0.0.8:80/4"
        );
        assert_eq!(addr("x", "10.0.0.9:81").unwrap().unwrap(), "10.0.0.9:81/1");
        assert_eq!(addr("10.0.0.10:82", "").unwrap().unwrap(), "10.0.0.10:82/1");
        assert!(addr("member-0001", "").unwrap_err().contains("node name"));
        assert!(addr("x", r#"{"name":"chat","port":1}"#)
            .unwrap_err()
            .contains("address"));
        assert!(addr("x", r#"{"name":"chat","address":"h","port":70000}"#)
            .unwrap_err()
            .contains("out of range"));
    }
}
