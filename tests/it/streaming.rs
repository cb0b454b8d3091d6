//! Streaming without buffering: SSE events reach the client one by one, and HTTP/2
//! trailers (gRPC status) pass through.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

#[tokio::test]
async fn sse_event_reaches_client_before_the_next_is_sent() {
    // The upstream sends one event, then waits until the test has *received* it before
    // sending the second: if the gateway buffered, the test would never see event 1.
    let (up, release_tx) = held_stream(
        Some("text/event-stream"),
        b"data: one\n\n",
        &[b"data: two\n\n", b"data: [DONE]\n\n"],
    )
    .await;
    let gw = Gateway::start(&config(
        "",
        &[up.addr],
        "[[routes]]\nname = \"chat\"\npath = \"/v1/chat/completions\"\nupstream = \"up\"\n",
    ));
    for client in [client(), h2_client()] {
        let resp = client
            .request(
                req("POST", &gw.url("/v1/chat/completions"))
                    .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"data: one\n\n");
        release_tx.send(()).await.unwrap();
        let mut rest = Vec::new();
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                rest.extend_from_slice(&d);
            }
        }
        assert_eq!(rest, b"data: two\n\ndata: [DONE]\n\n");
    }
}

#[tokio::test]
async fn http2_trailers_pass_through() {
    // An h2 upstream that answers with a body and gRPC-style trailers.
    let up = Upstream::start(|req| async move {
        let version = format!("{:?}", req.version());
        let te = req
            .headers()
            .get("te")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        trailers.insert("grpc-message", "no such model".parse().unwrap());
        http::Response::builder()
            .header("content-type", "application/grpc")
            .header("x-seen-version", version)
            .header("x-seen-te", te)
            .body(frames(vec![
                http_body::Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x02hi")),
                http_body::Frame::trailers(trailers),
            ]))
            .unwrap()
    })
    .await;
    let gw = Gateway::start(&config(
        "protocol = \"h2\"",
        &[up.addr],
        "[[routes]]\nname = \"grpc\"\npath_prefix = \"/demo.Models/\"\nupstream = \"up\"\n",
    ));
    let resp = h2_client()
        .request(
            req("POST", &gw.url("/demo.Models/Echo"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x00")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-seen-version"],
        "HTTP/2.0",
        "upstream spoken to over h2"
    );
    assert_eq!(
        resp.headers()["x-seen-te"],
        "trailers",
        "te: trailers reaches a gRPC upstream"
    );
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "5");
    assert_eq!(trailers["grpc-message"], "no such model");
    assert_eq!(&collected.to_bytes()[..], b"\x00\x00\x00\x00\x02hi");
}
