//! Process lifecycle: graceful shutdown drains in-flight requests; the demo works.

use crate::support::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let release = Arc::new(Notify::new());
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let r2 = release.clone();
    let up = Upstream::start(move |req| {
        let release = r2.clone();
        let arrived = arrived_tx.clone();
        async move {
            let parked = release.notified();
            arrived.send(()).unwrap();
            parked.await;
            echo_response("up", req).await
        }
    })
    .await;
    let mut gw = Gateway::start(&config(
        "",
        &[up.addr],
        "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n",
    ));
    let url = gw.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    arrived.recv().await.unwrap();

    gw.terminate();
    let line =
        tokio::task::block_in_place(|| gw.stdout.recv_timeout(Duration::from_secs(30))).unwrap();
    assert!(line.starts_with("shutting down"), "{line}");
    // No new connections once the listeners are closed...
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err(),
        "still accepting after SIGTERM"
    );
    // ...but the request in flight completes.
    release.notify_waiters();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    let status = tokio::task::block_in_place(|| gw.child.wait()).unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_timeout_bounds_shutdown() {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let up = Upstream::start(move |_req| {
        let arrived = arrived_tx.clone();
        async move {
            arrived.send(()).unwrap();
            std::future::pending::<()>().await;
            unreachable!()
        }
    })
    .await;
    let mut gw = Gateway::start(
        &config(
            "",
            &[up.addr],
            "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n",
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\ndrain_timeout = \"200ms\"",
        ),
    );
    let url = gw.url("/hang");
    let hung = tokio::spawn(async move {
        client()
            .request(req("GET", &url).body(Default::default()).unwrap())
            .await
    });
    arrived.recv().await.unwrap();
    gw.terminate();
    let status = tokio::task::block_in_place(|| gw.child.wait()).unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(hung.await.unwrap().is_err(), "the hung request was cut off");
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_streaming_chat_and_embeddings() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--log-level", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let addr = std::io::BufReader::new(stdout)
        .lines()
        .map(|l| l.unwrap())
        .find_map(|l| l.strip_prefix("listening on http://").map(str::to_string))
        .expect("demo announces its listener");
    let c = client();
    let body = r#"{"model":"demo-llm","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = send(
        &c,
        req("POST", &format!("http://{addr}/v1/chat/completions"))
            .body(body.to_string().into())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.matches("data: ").count() > 3 && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    let first = r.header("x-demo-replica").unwrap().to_string();
    let again = send(
        &c,
        req("POST", &format!("http://{addr}/v1/chat/completions"))
            .body("{}".to_string().into())
            .unwrap(),
    )
    .await;
    assert_ne!(
        again.header("x-demo-replica").unwrap(),
        first,
        "replicas alternate"
    );
    let e = send(
        &c,
        req("POST", &format!("http://{addr}/v1/embeddings"))
            .body(r#"{"input":["a","b"]}"#.to_string().into())
            .unwrap(),
    )
    .await;
    assert_eq!(e.json()["data"].as_array().unwrap().len(), 2);
    let _ = child.kill();
    let _ = child.wait();
}
