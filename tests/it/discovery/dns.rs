//! DNS discovery against dnsmasq on a loopback port: A records (from an addn-hosts file,
//! reloaded with SIGHUP) and SRV records (priority and weight; dnsmasq restarted with new
//! records on the same port).

use super::*;
use crate::support::{echo_response, Gateway, TempDir, Upstream};
use std::path::PathBuf;

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// dnsmasq answering only from `hosts` and `records` (command-line record options), with a
/// 1 s TTL on them.
fn dnsmasq(dir: &TempDir, label: &str, port: u16, records: &[String]) -> (Server, PathBuf) {
    let log = dir.0.join(format!("dnsmasq-{label}.log"));
    let mut cmd = Command::new(DNSMASQ);
    cmd.args([
        &format!("--port={port}"),
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--local-ttl=1",
        "--log-queries",
        &format!("--pid-file={}", dir.0.join("dnsmasq.pid").display()),
        &format!("--addn-hosts={}", dir.0.join("hosts").display()),
    ])
    .args(records);
    (Server::start("dnsmasq", cmd, &log), log)
}

/// Waits until dnsmasq answers on `port` (it binds before it announces anything).
async fn dns_ready(port: u16) {
    until_ready("dnsmasq", || async move {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // A minimal query for `ready.` (type A); any answer means the server is up.
        let q = [
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, b'r', b'e', b'a', b'd', b'y', 0, 0, 1, 0,
            1,
        ];
        sock.send_to(&q, ("127.0.0.1", port)).await.unwrap();
        let mut buf = [0u8; 512];
        tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf))
            .await
            .is_ok()
    })
    .await;
}

/// An echo upstream named `name` on `ip:port`.
async fn echo_on(name: &'static str, ip: &str, port: u16) -> Upstream {
    let l = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    Upstream::serve(l, move |req| echo_response(name, req))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsmasq (apt-get install dnsmasq-base; .ci/run installs it)"]
async fn dns_a_records_follow_the_zone() {
    require(DNSMASQ, "dnsmasq-base");
    // One port, three loopback addresses: A records carry only the address.
    let first = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = first.local_addr().unwrap().port();
    let a = Upstream::serve(first, |req| echo_response("a", req));
    let b = echo_on("b", "127.0.0.3", port).await;
    let c = echo_on("c", "127.0.0.4", port).await;

    let dir = TempDir::new();
    let hosts = dir.0.join("hosts");
    std::fs::write(&hosts, "127.0.0.2 api.test\n127.0.0.3 api.test\n").unwrap();
    let dns_port = free_port();
    let (mut server, log) = dnsmasq(&dir, "a", dns_port, &[]);
    dns_ready(dns_port).await;
    server.assert_running(&log);

    let gw = Gateway::start_logging(
        &config(
            "round_robin",
            &format!(
                "{{ kind = \"dns\", name = \"api.test\", port = {port}, family = \"ipv4\", resolver = \"127.0.0.1:{dns_port}\", min_refresh = \"100ms\", max_refresh = \"2s\" }}"
            ),
        ),
        &[],
    );
    wait_for(&gw, &["a", "b"]).await;

    std::fs::write(
        &hosts,
        "127.0.0.2 api.test\n127.0.0.3 api.test\n127.0.0.4 api.test\n",
    )
    .unwrap();
    server.signal("HUP");
    let took = wait_for(&gw, &["a", "b", "c"]).await;
    eprintln!("dns: an added A record took {took:?} to get traffic");

    std::fs::write(&hosts, "127.0.0.3 api.test\n127.0.0.4 api.test\n").unwrap();
    server.signal("HUP");
    wait_for(&gw, &["b", "c"]).await;

    // The DNS server goes away: the last good set keeps serving.
    server.stop();
    gw.wait_log(&["discovery failed", "upstream=up", "api.test"]);
    assert_serving(&gw, &["b", "c"]).await;
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsmasq (apt-get install dnsmasq-base; .ci/run installs it)"]
async fn dns_srv_uses_the_lowest_priority_and_weights() {
    require(DNSMASQ, "dnsmasq-base");
    let [a, b, c] = echoes(["a", "b", "c"]).await;
    let srv = |host: &str, up: &Upstream, priority: u16, weight: u16| {
        format!(
            "--srv-host=_http._tcp.models.test,{host},{},{priority},{weight}",
            up.addr.port()
        )
    };
    let host_records = [
        "--host-record=a.test,127.0.0.1".to_string(),
        "--host-record=b.test,127.0.0.1".to_string(),
        "--host-record=c.test,127.0.0.1".to_string(),
    ];
    let dir = TempDir::new();
    std::fs::write(dir.0.join("hosts"), "").unwrap();
    let dns_port = free_port();
    // a and b at priority 0 with weights 10:30; c only as a fallback at priority 1.
    let mut records = host_records.to_vec();
    records.extend([
        srv("a.test", &a, 0, 10),
        srv("b.test", &b, 0, 30),
        srv("c.test", &c, 1, 10),
    ]);
    let (mut server, log) = dnsmasq(&dir, "first", dns_port, &records);
    dns_ready(dns_port).await;
    server.assert_running(&log);

    let gw = Gateway::start(&config(
        "weighted_round_robin",
        &format!(
            "{{ kind = \"dns\", srv = \"_http._tcp.models.test\", resolver = \"127.0.0.1:{dns_port}\", min_refresh = \"100ms\", max_refresh = \"2s\" }}"
        ),
    ));
    wait_for(&gw, &["a", "b"]).await;
    let seen = tally(&gw, 40).await;
    assert_eq!((seen["a"], seen["b"]), (10, 30), "{seen:?}");

    // New records: b is gone and c is promoted to priority 0.
    server.stop();
    let mut records = host_records.to_vec();
    records.extend([srv("a.test", &a, 0, 10), srv("c.test", &c, 0, 10)]);
    let (mut server, log) = dnsmasq(&dir, "second", dns_port, &records);
    dns_ready(dns_port).await;
    server.assert_running(&log);
    wait_for(&gw, &["a", "c"]).await;
}
