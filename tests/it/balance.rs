//! Load balancing through the gateway to real upstream servers.

use crate::support::*;
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

fn one_route(balance: &str, targets: &[(SocketAddr, u32)], extra: &str) -> String {
    let t: Vec<String> = targets
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"up\"\nbalance = \"{balance}\"\n{extra}\ntargets = [{}]\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n",
        t.join(", ")
    )
}

async fn sequence(gw: &Gateway, n: usize) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = send(&c, req("GET", &gw.url("/")).body(Full::default()).unwrap()).await;
        assert_eq!(r.status, 200);
        out.push(r.header("x-upstream").unwrap().to_string());
    }
    out
}

#[tokio::test]
async fn round_robin_is_even() {
    let (a, b, c) = (
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
    );
    let gw = Gateway::start(&one_route(
        "round_robin",
        &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
        "",
    ));
    let seq = sequence(&gw, 30).await;
    for name in ["a", "b", "c"] {
        assert_eq!(seq.iter().filter(|s| *s == name).count(), 10, "{seq:?}");
    }
    // Strict rotation: no endpoint twice in a row.
    assert!(seq.windows(2).all(|w| w[0] != w[1]), "{seq:?}");
}

#[tokio::test]
async fn smooth_weighted_round_robin_one_to_three() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let gw = Gateway::start(&one_route(
        "weighted_round_robin",
        &[(a.addr, 1), (b.addr, 3)],
        "",
    ));
    let seq = sequence(&gw, 40).await;
    // Exactly 25% / 75% over every block of 4 consecutive picks: interleaved, not bunched.
    for w in seq.windows(4) {
        assert_eq!(w.iter().filter(|s| *s == "a").count(), 1, "{seq:?}");
    }
    assert_eq!(a.hits(), 10);
    assert_eq!(b.hits(), 30);
}

#[tokio::test]
async fn consistent_hash_keeps_affinity_by_header() {
    let ups = [
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
    ];
    let targets: Vec<_> = ups.iter().map(|u| (u.addr, 1)).collect();
    let gw = Gateway::start(&one_route(
        "consistent_hash",
        &targets,
        "hash_key = \"header:x-session\"",
    ));
    let c = client();
    let mut owners = std::collections::HashMap::new();
    for round in 0..3 {
        for s in 0..30 {
            let r = send(
                &c,
                req("GET", &gw.url("/"))
                    .header("x-session", format!("session-{s}"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
            let who = r.header("x-upstream").unwrap().to_string();
            if round == 0 {
                owners.insert(s, who);
            } else {
                assert_eq!(owners[&s], who, "session-{s} moved");
            }
        }
    }
    let used: std::collections::HashSet<_> = owners.values().collect();
    assert!(used.len() >= 2, "30 sessions should spread: {owners:?}");
}

/// An upstream whose requests to `/slow` announce themselves on `arrived`, then park
/// until released.
async fn parking_upstream(
    name: &'static str,
    release: Arc<Notify>,
    arrived: mpsc::UnboundedSender<&'static str>,
) -> Upstream {
    Upstream::start(move |req| {
        let release = release.clone();
        let arrived = arrived.clone();
        async move {
            if req.uri().path() == "/slow" {
                let parked = release.notified();
                arrived.send(name).unwrap();
                parked.await;
            }
            echo_response(name, req).await
        }
    })
    .await
}

#[tokio::test]
async fn least_connections_avoids_the_busy_endpoint() {
    for balance in ["least_connections", "weighted_least_connections"] {
        let release = Arc::new(Notify::new());
        let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
        let a = parking_upstream("a", release.clone(), arrived_tx.clone()).await;
        let b = parking_upstream("b", release.clone(), arrived_tx).await;
        let gw = Gateway::start(&one_route(balance, &[(a.addr, 1), (b.addr, 1)], ""));
        // Park one request, see where it went; every quick request must go to the other.
        let url = gw.url("/slow");
        let slow = tokio::spawn(async move { get(&url).await });
        let busy = arrived.recv().await.unwrap();
        let seq = sequence(&gw, 10).await;
        assert!(
            seq.iter().all(|s| s != busy),
            "{balance}: {seq:?} went to busy {busy}"
        );
        release.notify_waiters();
        assert_eq!(slow.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn weighted_least_connections_uses_weights() {
    let release = Arc::new(Notify::new());
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let a = parking_upstream("a", release.clone(), arrived_tx.clone()).await;
    let b = parking_upstream("b", release.clone(), arrived_tx).await;
    let gw = Gateway::start(&one_route(
        "weighted_least_connections",
        &[(a.addr, 1), (b.addr, 3)],
        "",
    ));
    // Hold 4 requests open: the scheduler puts them where active/weight is least, which
    // ends with 1 on a and 3 on b.
    let mut parked = Vec::new();
    for _ in 1..=4 {
        let url = gw.url("/slow");
        parked.push(tokio::spawn(async move { get(&url).await }));
        arrived.recv().await.unwrap();
    }
    assert_eq!((a.hits(), b.hits()), (1, 3));
    release.notify_waiters();
    for p in parked {
        assert_eq!(p.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn p2c_ewma_prefers_the_fast_endpoint() {
    let fast = Upstream::echo("fast").await;
    let slow = Upstream::start(|req| async move {
        // Deliberately slow: the latency is what p2c_ewma must learn, not an awaited event.
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        echo_response("slow", req).await
    })
    .await;
    let gw = Gateway::start(&one_route(
        "p2c_ewma",
        &[(fast.addr, 1), (slow.addr, 1)],
        "",
    ));
    let seq = sequence(&gw, 40).await;
    let to_slow = seq.iter().filter(|s| *s == "slow").count();
    // Both get sampled early; once latencies are known, two-of-two sampling always
    // picks the fast one, so the slow one sees only its first few requests.
    assert!(to_slow <= 3, "slow endpoint got {to_slow} of 40: {seq:?}");
    assert!(
        to_slow >= 1,
        "the slow endpoint should have been tried: {seq:?}"
    );
}
