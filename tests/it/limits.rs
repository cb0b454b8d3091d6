//! Limits and timeouts: 413, 431, dribbling clients, 502/504 from upstream failures.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn route(extra: &str) -> String {
    format!("[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n{extra}\n")
}

/// Reads a whole HTTP/1.1 response off a raw socket (connection: close).
async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn body_over_the_limit_is_413_before_it_is_read() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config("", &[up.addr], &route("max_body_size = \"1KiB\"")));
    // Announce 10 MB and send none of it: the answer must come from the headers alone.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n")
        .await
        .unwrap();
    let out = read_all(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("\"code\":\"body_too_large\""), "{out}");
    assert_eq!(up.hits(), 0, "the upstream never saw it");
    // Within the limit, fine.
    let r = send(
        &client(),
        req("POST", &gw.url("/x"))
            .body(Full::new(Bytes::from(vec![b'a'; 1000])))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_refused() {
    // The upstream reads the whole body before answering, so the limit trips first.
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config("", &[up.addr], &route("max_body_size = \"1KiB\"")));
    // Sent in one write: the gateway answers and closes as soon as the limit trips, so a
    // later write of the client's could fail (the close resets the connection).
    let mut request = b"POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'z'; 0x200]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&request).await.unwrap();
    let out = read_all(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config("", &[up.addr], &route("")).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nmax_header_size = \"16KiB\"",
    ));
    let big = "v".repeat(20 * 1024);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let out = read_all(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // Many headers that fit hyper's buffer but exceed the limit in total: the JSON 431.
    let mut head = String::from("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for i in 0..42 {
        head.push_str(&format!("x-h{i}: {}\r\n", "w".repeat(400)));
    }
    head.push_str("\r\n");
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let out = read_all(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_client_dribbling_headers_is_dropped() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config("", &[up.addr], &route("")).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nheader_read_timeout = \"300ms\"",
    ));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    // Never finish the head: the gateway must close the connection by itself.
    let started = std::time::Instant::now();
    let out = read_all(&mut s).await;
    assert!(!out.contains("200 OK"), "{out}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "connection was not dropped"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn hanging_upstream_gets_504() {
    let up = Upstream::start(|_req| async {
        std::future::pending::<()>().await;
        unreachable!()
    })
    .await;
    let gw = Gateway::start(&config(
        "request_timeout = \"300ms\"",
        &[up.addr],
        &route(""),
    ));
    let r = get(&gw.url("/")).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "upstream_timeout");
}

#[tokio::test]
async fn per_route_timeout_overrides_the_upstream_one() {
    let up = Upstream::start(|_req| async {
        std::future::pending::<()>().await;
        unreachable!()
    })
    .await;
    let gw = Gateway::start(&config(
        "request_timeout = \"60s\"",
        &[up.addr],
        &route("request_timeout = \"200ms\""),
    ));
    assert_eq!(get(&gw.url("/")).await.status, 504);
}

#[tokio::test]
async fn refused_connection_gets_502() {
    let dead = closed_addr();
    let gw = Gateway::start(&config("", &[dead], &route("")));
    let r = get(&gw.url("/")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_connect_failed");
    assert!(r.json()["error"]["request_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn silent_stream_is_cut_at_idle_timeout() {
    use http_body_util::BodyExt;
    let up = Upstream::start(|_req| async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            tx.send(Bytes::from_static(b"data: first\n\n"))
                .await
                .unwrap();
            // Then silence, with the stream still open.
            std::future::pending::<()>().await;
            drop(tx);
        });
        http::Response::builder().body(stream(rx)).unwrap()
    })
    .await;
    let gw = Gateway::start(&config("idle_timeout = \"300ms\"", &[up.addr], &route("")));
    let resp = client()
        .request(req("GET", &gw.url("/")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert_eq!(
        &body.frame().await.unwrap().unwrap().into_data().unwrap()[..],
        b"data: first\n\n"
    );
    // The next read fails (the gateway aborts the stream) instead of hanging forever.
    if let Some(Ok(f)) = body.frame().await {
        panic!("unexpected frame {f:?}");
    }
}

#[tokio::test]
async fn connect_timeout_gets_504() {
    // The gateway's connect hangs until connect_timeout.
    let (listener, _fillers, addr) = black_hole().await;
    let gw = Gateway::start(&config("connect_timeout = \"300ms\"", &[addr], &route("")));
    let r = get(&gw.url("/")).await;
    assert_eq!(r.status, 504, "{:?}", r.body);
    assert_eq!(r.error_code(), "upstream_connect_timeout");
    drop(listener);
}
