//! Fallback between model upstreams before the commit point (`fallback = [...]` on a
//! route): a primary that refuses, times out, answers 503 or 429 hands the request to the
//! next upstream with the fallback's model in the body; a primary whose response began is
//! never replaced.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use std::net::SocketAddr;
use std::time::Duration;

const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

/// Route `chat` on upstream `primary` over `primary`, falling back to `backup` (model
/// `llama-3`) over `backup`; `extra` goes in the route.
fn fallback_config(primary: SocketAddr, backup: SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nname = \"primary\"\ntargets = [{{ address = \"{primary}\" }}]\nrequest_timeout = \"2s\"\n\n\
         [[upstreams]]\nname = \"backup\"\ntargets = [{{ address = \"{backup}\" }}]\n\n\
         [[routes]]\nname = \"chat\"\npath = \"/v1/chat/completions\"\nupstream = \"primary\"\n\
         fallback = [ {{ upstream = \"backup\", model = \"llama-3\" }} ]\n{extra}\n"
    )
}

async fn chat(gw: &Gateway) -> Reply {
    let r = req("POST", &gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap();
    send(&client(), r).await
}

/// The backup answered, with the fallback's model and the client's messages.
fn assert_served_by_backup(r: &Reply) {
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-portcullis-served-by"), Some("backup:llama-3"));
    let echo = r.json();
    assert_eq!(echo["upstream"], "backup");
    let sent: serde_json::Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["model"], "llama-3");
    assert_eq!(sent["messages"][0]["content"], "hi");
    assert_eq!(
        echo["headers"]["content-length"],
        echo["body"].as_str().unwrap().len().to_string()
    );
    // The step that served got the request's id and trace context too.
    let id = echo["headers"]["x-request-id"].as_str();
    assert_eq!(id, r.header("x-request-id"), "{echo}");
    let trace = echo["headers"]["traceparent"].as_str().unwrap_or_default();
    assert_eq!(trace.len(), 55, "{echo}");
}

/// An upstream answering every request with `status` (and `headers`).
async fn answering(status: u16, headers: &'static [(&'static str, &'static str)]) -> Upstream {
    Upstream::start(move |_req| async move {
        let mut r = http::Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(full("{\"error\":{\"message\":\"busy\"}}")).unwrap()
    })
    .await
}

#[tokio::test]
async fn a_refusing_primary_falls_back_with_the_fallback_model() {
    let backup = Upstream::echo("backup").await;
    let gw = Gateway::start(&fallback_config(closed_addr(), backup.addr, ""));
    assert_served_by_backup(&chat(&gw).await);
    assert_eq!(backup.hits(), 1);
}

#[tokio::test]
async fn a_primary_answering_503_falls_back() {
    let primary = answering(503, &[]).await;
    let backup = Upstream::echo("backup").await;
    let gw = Gateway::start(&fallback_config(primary.addr, backup.addr, ""));
    assert_served_by_backup(&chat(&gw).await);
    assert_eq!(primary.hits(), 1, "a POST is not retried on the primary");
}

#[tokio::test]
async fn a_primary_that_times_out_before_its_head_falls_back() {
    let hang = Upstream::start(|_req| std::future::pending()).await;
    let backup = Upstream::echo("backup").await;
    let gw = Gateway::start(&fallback_config(
        hang.addr,
        backup.addr,
        "request_timeout = \"300ms\"",
    ));
    assert_served_by_backup(&chat(&gw).await);
}

#[tokio::test]
async fn a_429_with_retry_after_holds_the_primary_off_until_then() {
    let primary = answering(429, &[("retry-after", "60")]).await;
    let backup = Upstream::echo("backup").await;
    let gw = Gateway::start(&fallback_config(primary.addr, backup.addr, ""));
    for _ in 0..3 {
        assert_served_by_backup(&chat(&gw).await);
    }
    assert_eq!(
        primary.hits(),
        1,
        "held off for its Retry-After after the first 429"
    );
    assert_eq!(backup.hits(), 3);
}

#[tokio::test]
async fn when_every_upstream_is_held_off_the_client_gets_429_with_retry_after() {
    let primary = answering(429, &[("retry-after", "60")]).await;
    let backup = answering(429, &[("retry-after", "30")]).await;
    let gw = Gateway::start(&fallback_config(primary.addr, backup.addr, ""));
    let first = chat(&gw).await;
    assert_eq!(first.status, 429, "the last upstream's own answer");
    let second = chat(&gw).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.error_code(), "upstream_rate_limited");
    let wait: u64 = second.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&wait), "the shortest hold-off: {wait}");
    assert_eq!((primary.hits(), backup.hits()), (1, 1));
}

#[tokio::test]
async fn fallback_on_narrows_what_falls_back() {
    let primary = answering(503, &[]).await;
    let backup = Upstream::echo("backup").await;
    let gw = Gateway::start(&fallback_config(
        primary.addr,
        backup.addr,
        "fallback_on = [\"connect\", 429]",
    ));
    let r = chat(&gw).await;
    assert_eq!(
        r.status, 503,
        "a 503 is the answer when fallback_on leaves 5xx out"
    );
    assert_eq!(r.header("x-portcullis-served-by"), Some("primary"));
    assert_eq!(backup.hits(), 0);
}

/// The commit point: once the primary's response head (and first event) went to the
/// client, its failure is the client's to see; the backup is never asked.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_that_fails_after_its_first_event_is_not_replaced() {
    let primary = Upstream::start(|_req| async move {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            let _ = tx
                .send(Bytes::from_static(
                    b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
                ))
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Dropping the sender ends the body early: the upstream aborts the stream.
            drop(tx);
        });
        http::Response::builder()
            .header("content-type", "text/event-stream")
            .header("content-length", "100000")
            .body(stream(rx))
            .unwrap()
    })
    .await;
    let backup = Upstream::echo("backup").await;
    let gw = Gateway::start(&fallback_config(primary.addr, backup.addr, "[routes.ai]"));
    let r = req("POST", &gw.url("/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap();
    let resp = client().request(r).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-portcullis-served-by"], "primary");
    let mut body = resp.into_body();
    let (mut seen, mut failed) = (Vec::new(), false);
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        match frame {
            Ok(f) => seen.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..])),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        failed,
        "the cut stream reaches the client as a failure: {text}"
    );
    assert!(text.starts_with("data: {\"choices\""), "{text}");
    assert!(
        text.contains("\"error\""),
        "the API's error event comes before the abort: {text}"
    );
    assert_eq!(backup.hits(), 0, "no fallback after the commit point");
}

#[test]
fn bad_fallback_config_names_file_line_and_key() {
    let dir = TempDir::new();
    let path = dir.0.join("bad.toml");
    let text = fallback_config(closed_addr(), closed_addr(), "").replace(
        "upstream = \"backup\", model",
        "upstream = \"nowhere\", model",
    );
    std::fs::write(&path, text).unwrap();
    let (ok, out) = validate(&path);
    assert!(!ok);
    assert!(out.contains("bad.toml:"), "{out}");
    assert!(out.contains("fallback[0].upstream"), "{out}");
    assert!(out.contains("unknown upstream `nowhere`"), "{out}");
    let without = config(
        "",
        &[closed_addr()],
        "[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"up\"\nfirst_token_timeout = \"1s\"\n",
    );
    std::fs::write(&path, without).unwrap();
    let (ok, out) = validate(&path);
    assert!(!ok);
    assert!(out.contains("bad.toml:13:"), "{out}");
    assert!(
        out.contains("first_token_timeout") && out.contains("needs `fallback`"),
        "{out}"
    );
}

/// An upstream that answers 200 with an event-stream head at once, then sends `events`
/// after `delay` (and ends).
async fn streaming_after(delay: Duration, events: &'static [&'static str]) -> Upstream {
    Upstream::start(move |_req| async move {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for e in events {
                if tx.send(Bytes::from_static(e.as_bytes())).await.is_err() {
                    return;
                }
            }
        });
        http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(stream(rx))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn first_token_timeout_falls_back_from_a_head_with_no_bytes() {
    let silent = streaming_after(Duration::from_secs(30), &["data: late\n\n"]).await;
    let backup = Upstream::echo("backup").await;
    let gw = Gateway::start(&fallback_config(
        silent.addr,
        backup.addr,
        "first_token_timeout = \"200ms\"",
    ));
    assert_served_by_backup(&chat(&gw).await);
    assert_eq!(silent.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_token_in_time_is_the_answer_and_no_byte_is_lost() {
    const EVENTS: &[&str] = &[
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
        "data: [DONE]\n\n",
    ];
    let quick = streaming_after(Duration::from_millis(10), EVENTS).await;
    let backup = Upstream::echo("backup").await;
    let gw = Gateway::start(&fallback_config(
        quick.addr,
        backup.addr,
        "first_token_timeout = \"5s\"",
    ));
    let r = chat(&gw).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-portcullis-served-by"), Some("primary"));
    assert_eq!(String::from_utf8_lossy(&r.body), EVENTS.concat());
    assert_eq!(backup.hits(), 0);
}

/// The request's duration (`portcullis_request_duration_seconds`) ends when the response
/// goes back: on a route with `first_token_timeout` that is after the first bytes came,
/// not when the upstream's head did.
#[tokio::test(flavor = "multi_thread")]
async fn the_request_duration_includes_the_wait_for_the_first_bytes() {
    const EVENTS: &[&str] = &["data: {\"choices\":[]}\n\n", "data: [DONE]\n\n"];
    let slow = streaming_after(Duration::from_millis(300), EVENTS).await;
    let backup = Upstream::echo("backup").await;
    let config = fallback_config(slow.addr, backup.addr, "first_token_timeout = \"5s\"").replacen(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
        1,
    );
    let gw = Gateway::start(&config);
    let r = chat(&gw).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-portcullis-served-by"), Some("primary"));
    let route = "{route=\"chat\"}";
    let count = metric(
        &gw,
        &format!("portcullis_request_duration_seconds_count{route}"),
    )
    .await;
    let sum = metric(
        &gw,
        &format!("portcullis_request_duration_seconds_sum{route}"),
    )
    .await;
    assert_eq!(count, 1.0);
    // The head reached the client only after the upstream's first bytes, 300 ms in.
    assert!(
        sum >= 0.3,
        "duration {sum} s ends before the first bytes came"
    );
}
