//! ZooKeeper discovery against a real ZooKeeper 3.8 (Debian's zookeeper package, started
//! here with its own config): ephemeral children in the three accepted formats, watches
//! for added and removed children, the server going away, and a fresh server (which no
//! longer knows the gateway's session) forcing a new session and a new listing.

use super::*;
use crate::support::{Gateway, TempDir, Upstream};
use std::path::PathBuf;
use zookeeper_client::{Acls, Client, CreateMode};

const JAVA: &str = "/usr/bin/java";
const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const PATH: &str = "/services/chat";

struct ZooKeeper {
    server: Server,
    log: PathBuf,
    port: u16,
}

impl ZooKeeper {
    /// A standalone server on `port` with its data in `dir/label`.
    fn start(dir: &TempDir, label: &str, port: u16) -> ZooKeeper {
        let data = dir.0.join(label);
        std::fs::create_dir_all(&data).unwrap();
        let cfg = dir.write(
            &format!("zoo-{label}.cfg"),
            &format!(
                "tickTime=200\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\nminSessionTimeout=400\nmaxSessionTimeout=20000\n",
                data.display()
            ),
        );
        let mut cmd = Command::new(JAVA);
        cmd.args([
            "-Xmx256m",
            "-cp",
            &format!("/etc/zookeeper/conf:{ZOOKEEPER_JAR}"),
        ])
        .arg(format!("-Dzookeeper.log.dir={}", dir.0.display()))
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(&cfg);
        let log = dir.0.join(format!("zookeeper-{label}.log"));
        ZooKeeper {
            server: Server::start("zookeeper", cmd, &log),
            log,
            port,
        }
    }

    /// Connects a client of the test's own (waiting for the server to come up).
    async fn client(&mut self) -> Client {
        let servers = format!("127.0.0.1:{}", self.port);
        let every = Duration::from_millis(100);
        crate::support::until_ok("zookeeper to come up", DEADLINE, every, async || {
            let connected = Client::connector()
                .with_session_timeout(Duration::from_secs(5))
                .with_connection_timeout(Duration::from_millis(500))
                .with_fail_eagerly()
                .connect(&servers)
                .await;
            if connected.is_err() {
                self.server.assert_running(&self.log);
            }
            connected
        })
        .await
    }
}

async fn register(zk: &Client, child: &str, data: &str) {
    zk.create(
        &format!("{PATH}/{child}"),
        data.as_bytes(),
        &CreateMode::Ephemeral.with_acls(Acls::anyone_all()),
    )
    .await
    .unwrap_or_else(|e| panic!("create {child}: {e}"));
}

/// Curator's ServiceInstance JSON, as `ServiceDiscovery.registerService` writes it.
fn curator(u: &Upstream, id: &str) -> String {
    format!(
        r#"{{"name":"chat","id":"{id}","address":"127.0.0.1","port":{},"sslPort":null,"payload":null,"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":{{"parts":[{{"value":"scheme","variable":true}}]}},"enabled":true}}"#,
        u.addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZooKeeper (apt-get install zookeeper; .ci/run installs it)"]
async fn zookeeper_children_follow_registrations_and_sessions() {
    require(JAVA, "zookeeper");
    require(ZOOKEEPER_JAR, "zookeeper");
    let ups = echoes(["a", "b", "c", "d"]).await;
    let [a, b, c, d] = &ups;
    let dir = TempDir::new();
    let port = free_port();
    let mut server = ZooKeeper::start(&dir, "first", port);
    let zk = server.client().await;
    zk.mkdir(PATH, &CreateMode::Persistent.with_acls(Acls::anyone_all()))
        .await
        .unwrap();
    register(&zk, "a-5f1c", &curator(a, "a-5f1c")).await;
    register(
        &zk,
        "b",
        &format!(r#"{{"address":"{}","weight":1}}"#, b.addr),
    )
    .await;

    let gw = Gateway::start_logging(
        &config(
            "round_robin",
            &format!(
                "{{ kind = \"zookeeper\", servers = \"127.0.0.1:{port}\", path = \"{PATH}\", session_timeout = \"2s\" }}"
            ),
        ),
        &[],
    );
    wait_for(&gw, &["a", "b"]).await;

    // A child whose name is the endpoint, with no data.
    register(&zk, &c.addr.to_string(), "").await;
    let took = wait_for(&gw, &["a", "b", "c"]).await;
    eprintln!("zookeeper: a new child took {took:?} to get traffic");
    zk.delete(&format!("{PATH}/a-5f1c"), None).await.unwrap();
    wait_for(&gw, &["b", "c"]).await;

    // ZooKeeper goes away: the last good set keeps serving.
    server.server.stop();
    gw.wait_log(&["discovery failed", "upstream=up", "zookeeper"]);
    assert_serving(&gw, &["b", "c"]).await;

    // A fresh server on the same port knows nothing of the gateway's session: the gateway
    // must start a new session and list the new registrations.
    let mut server = ZooKeeper::start(&dir, "second", port);
    let zk = server.client().await;
    zk.mkdir(PATH, &CreateMode::Persistent.with_acls(Acls::anyone_all()))
        .await
        .unwrap();
    register(&zk, "c", &c.addr.to_string()).await;
    register(
        &zk,
        "d",
        &format!(r#"{{"address":"{}","weight":2}}"#, d.addr),
    )
    .await;
    wait_for(&gw, &["c", "d"]).await;
}
