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

/// `portcullis demo` shows the plugins at work with no other step: the auth plugin on the
/// chat routes, the model router choosing the pool, streaming, embeddings, the dashboard.
#[tokio::test(flavor = "multi_thread")]
async fn demo_shows_auth_and_model_routing_plugins_streaming_and_the_dashboard() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(bin())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--log-level", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut admin, mut printed) = (None, None, String::new());
    while addr.is_none() || admin.is_none() {
        let line = lines
            .next()
            .expect("the demo announces its listeners")
            .unwrap();
        if let Some(a) = line.strip_prefix("listening on http://") {
            addr = Some(a.to_string());
        } else if let Some(a) = line.strip_prefix("admin listening on http://") {
            admin = Some(a.to_string());
        } else {
            printed.push_str(&line);
            printed.push('\n');
        }
    }
    let (addr, admin) = (addr.unwrap(), admin.unwrap());
    assert!(printed.contains("x-api-key: demo-key-alice"), "{printed}");
    let c = client();
    let chat = |model: &str, key: Option<&str>, stream: bool| {
        let mut r = req("POST", &format!("http://{addr}/v1/chat/completions"));
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        let body = format!(
            r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        r.body(body.into()).unwrap()
    };
    let denied = send(&c, chat("demo-gpt", None, false)).await;
    assert_eq!(denied.status, 401, "no key: the auth plugin denies");
    let a = send(&c, chat("demo-gpt", Some("demo-key-alice"), false)).await;
    assert_eq!(a.status, 200);
    let answer = a.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        answer.starts_with("Hello alice, this is demo-gpt"),
        "{answer}"
    );
    assert!(a.json()["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let b = send(&c, chat("demo-gpt", Some("demo-key-bob"), false)).await;
    let replicas = [a.header("x-demo-replica"), b.header("x-demo-replica")];
    assert!(
        replicas.contains(&Some("gpt-a")) && replicas.contains(&Some("gpt-b")),
        "round robin over the gpt pool: {replicas:?}"
    );
    let llama = send(&c, chat("demo-llama", Some("demo-key-alice"), false)).await;
    assert_eq!(
        llama.header("x-demo-replica"),
        Some("llama-a"),
        "the model router"
    );
    let bob = send(&c, chat("demo-llama", Some("demo-key-bob"), false)).await;
    assert_eq!(bob.status, 401, "bob's key is not valid on the llama route");
    let other = send(&c, chat("other-model", Some("demo-key-alice"), false)).await;
    assert_eq!(other.status, 404);
    let s = send(&c, chat("demo-gpt", Some("demo-key-alice"), true)).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8_lossy(&s.body);
    assert!(
        text.matches("data: ").count() > 3 && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    let e = send(
        &c,
        req("POST", &format!("http://{addr}/v1/embeddings"))
            .body(r#"{"input":["a","b"]}"#.to_string().into())
            .unwrap(),
    )
    .await;
    assert_eq!(e.json()["data"].as_array().unwrap().len(), 2);
    // gpt-pool failing: the route falls back to the llama pool, with its model.
    let mut failing = chat("demo-gpt", Some("demo-key-alice"), false);
    failing
        .headers_mut()
        .insert("x-demo-fail", http::HeaderValue::from_static("503"));
    let f = send(&c, failing).await;
    assert_eq!(f.status, 200);
    assert_eq!(
        f.header("x-portcullis-served-by"),
        Some("llama-pool:demo-llama")
    );
    assert_eq!(f.header("x-demo-replica"), Some("llama-a"));
    // The tokens the model services reported are in the metrics, by route and model.
    let metrics =
        String::from_utf8_lossy(&get(&format!("http://{admin}/metrics")).await.body).into_owned();
    let tokens = metrics
        .lines()
        .find(|l| {
            l.starts_with("gen_ai_client_token_usage_sum")
                && l.contains("route=\"chat-gpt\"")
                && l.contains("gen_ai_token_type=\"output\"")
        })
        .unwrap_or_else(|| panic!("no output tokens for chat-gpt: {metrics}"));
    let n: f64 = tokens.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n > 0.0, "{tokens}");
    // The composite vision route: one request, three models, one answer.
    assert!(printed.contains("/v1/vision"), "{printed}");
    let vision = |fail: Option<&'static str>| {
        let mut r =
            req("POST", &format!("http://{addr}/v1/vision")).header("x-api-key", "demo-key-alice");
        if let Some(f) = fail {
            r = r.header("x-demo-fail", f);
        }
        r.body(r#"{"image":"aGVsbG8="}"#.to_string().into())
            .unwrap()
    };
    let v = send(&c, vision(None)).await;
    assert_eq!(v.status, 200, "{}", String::from_utf8_lossy(&v.body));
    let j = v.json();
    let found = j["detect"]["detections"].as_array().unwrap();
    assert!(!found.is_empty(), "{j}");
    assert_eq!(
        j["classify"]["classes"].as_array().unwrap().len(),
        found.len(),
        "classification was fed detection's answer: {j}"
    );
    assert!(!j["segment"]["masks"].as_array().unwrap().is_empty(), "{j}");
    let v = send(&c, vision(Some("503"))).await;
    assert_eq!(v.status, 200, "segment is optional");
    assert_eq!(v.json()["segment"]["error"]["code"], "upstream_status");
    let dashboard = get(&format!("http://{admin}/")).await;
    assert_eq!(dashboard.status, 200);
    assert_eq!(
        dashboard.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let _ = child.kill();
    let _ = child.wait();
}
