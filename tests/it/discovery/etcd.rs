//! etcd discovery against a real etcd 3.4 (Debian's etcd-server), written to with etcdctl:
//! initial keys, a put and a delete seen through the watch, and an etcd restart on the
//! same data dir, after which the watch resumes.

use super::*;
use crate::support::{Gateway, TempDir, Upstream};
use std::path::PathBuf;

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
const PREFIX: &str = "/portcullis/test/up/";

struct Etcd {
    server: Server,
    log: PathBuf,
    client_port: u16,
}

impl Etcd {
    fn start(dir: &TempDir, label: &str, client_port: u16, peer_port: u16) -> Etcd {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(ETCD);
        cmd.args(["--name", "test", "--data-dir"])
            .arg(dir.0.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")]);
        let log = dir.0.join(format!("etcd-{label}.log"));
        Etcd {
            server: Server::start("etcd", cmd, &log),
            log,
            client_port,
        }
    }

    /// Waits until etcd serves requests.
    async fn ready(&mut self) {
        let port = self.client_port;
        until_ready("etcd", || async move {
            tokio::task::spawn_blocking(move || {
                Command::new(ETCDCTL)
                    .env("ETCDCTL_API", "3")
                    .args([
                        &format!("--endpoints=127.0.0.1:{port}"),
                        "--dial-timeout=1s",
                    ])
                    .args(["endpoint", "health"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .await
            .unwrap()
        })
        .await;
        self.server.assert_running(&self.log);
    }

    fn ctl(&self, args: &[&str]) {
        let out = Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=127.0.0.1:{}", self.client_port))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", &format!("{PREFIX}{key}"), value]);
    }

    fn del(&self, key: &str) {
        self.ctl(&["del", &format!("{PREFIX}{key}")]);
    }
}

fn endpoint_json(u: &Upstream) -> String {
    format!(r#"{{"address":"{}","weight":1}}"#, u.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (apt-get install etcd-server etcd-client; .ci/run installs it)"]
async fn etcd_watch_follows_changes_and_resumes_after_a_restart() {
    require(ETCD, "etcd-server");
    require(ETCDCTL, "etcd-client");
    let ups = echoes(["a", "b", "c", "d"]).await;
    let [a, b, c, d] = &ups;
    let dir = TempDir::new();
    let (client_port, peer_port) = (free_port(), free_port());
    let mut etcd = Etcd::start(&dir, "first", client_port, peer_port);
    etcd.ready().await;
    etcd.put("a", &endpoint_json(a));
    etcd.put("b", &b.addr.to_string()); // a bare host:port is accepted too
    etcd.put("not-an-endpoint", "x"); // under the prefix but not host:port: skipped
    etcd.ctl(&[
        "put",
        "/portcullis/test/upstream-not-ours",
        &endpoint_json(d),
    ]);

    let gw = Gateway::start_logging(
        &config(
            "round_robin",
            &format!(
                "{{ kind = \"etcd\", endpoints = [\"127.0.0.1:{client_port}\"], prefix = \"{PREFIX}\" }}"
            ),
        ),
        &[],
    );
    wait_for(&gw, &["a", "b"]).await;

    etcd.put("c", &endpoint_json(c));
    let took = wait_for(&gw, &["a", "b", "c"]).await;
    eprintln!("etcd: a put took {took:?} to get traffic");
    etcd.del("a");
    wait_for(&gw, &["b", "c"]).await;

    // etcd goes away: the last good set keeps serving.
    etcd.server.stop();
    gw.wait_log(&["discovery failed", "upstream=up", "etcd"]);
    assert_serving(&gw, &["b", "c"]).await;

    // Back on the same data dir: the gateway lists again and watches on.
    let mut etcd = Etcd::start(&dir, "second", client_port, peer_port);
    etcd.ready().await;
    gw.wait_log(&["discovery recovered", "upstream=up"]);
    etcd.put("d", &endpoint_json(d));
    let took = wait_for(&gw, &["b", "c", "d"]).await;
    eprintln!("etcd: after the restart a put took {took:?} to get traffic");
    etcd.del("b");
    wait_for(&gw, &["c", "d"]).await;
}
