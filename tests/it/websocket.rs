//! WebSocket through the real binary (issue 20): a real client and server
//! (tokio-tungstenite) on both sides of the gateway — messages, ping/pong, a 10 MB
//! message, close codes both ways, the auth plugin on the handshake, HTTP/2 extended
//! CONNECT, the tunnel's bounds, reload and shutdown, hostile upstreams, and the memory
//! of 1,000 open connections.

use crate::support::*;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket echo server: echoes text and binary messages, answers pings (tungstenite
/// does), closes with code N when sent the text `close:N`, and records each handshake's
/// headers and the close codes its clients sent.
struct WsUpstream {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<http::HeaderMap>>>,
    closes: Arc<Mutex<Vec<u16>>>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let closes = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let (h, c, o) = (handshakes.clone(), closes.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (h, c, o) = (h.clone(), c.clone(), o.clone());
                tokio::spawn(async move {
                    // The result type is tungstenite's callback signature.
                    #[allow(clippy::result_large_err)]
                    let record = |req: &Request, mut resp: Response| {
                        h.lock().unwrap().push(req.headers().clone());
                        if let Some(p) = req.headers().get("sec-websocket-protocol") {
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", p.clone());
                        }
                        Ok::<_, ErrorResponse>(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, record).await else {
                        return;
                    };
                    o.fetch_add(1, Ordering::SeqCst);
                    while let Some(Ok(msg)) = ws.next().await {
                        let sent = match msg {
                            Message::Text(t) if t.starts_with("close:") => {
                                let code: u16 = t[6..].parse().unwrap();
                                let frame = CloseFrame {
                                    code: CloseCode::from(code),
                                    reason: "bye".into(),
                                };
                                ws.close(Some(frame)).await
                            }
                            Message::Text(_) | Message::Binary(_) => ws.send(msg).await,
                            Message::Close(f) => {
                                c.lock().unwrap().push(f.map_or(0, |f| u16::from(f.code)));
                                Ok(())
                            }
                            _ => Ok(()),
                        };
                        if sent.is_err() {
                            break;
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        WsUpstream {
            addr,
            handshakes,
            closes,
            open,
            task,
        }
    }

    fn handshakes(&self) -> usize {
        self.handshakes.lock().unwrap().len()
    }
}

fn ws_config(up: &WsUpstream, server: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplugin_cache_dir = \"{cache}\"\n{server}\n\n[[upstreams]]\nname = \"ws\"\ntargets = [{{ address = \"{}\" }}]\n\n{routes}",
        up.addr,
        cache = std::env::temp_dir()
            .join("portcullis-test-wasm-cache")
            .display(),
    )
}

const ROUTE: &str = "[[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"ws\"\n";

async fn connect(gw: &Gateway, path: &str) -> Client {
    let url = format!("ws://{}{}", gw.addr, path);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket handshake through the gateway")
        .0
}

/// The next data or close message (pongs are returned too; pings are answered by
/// tungstenite and skipped).
async fn next(ws: &mut Client) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the stream is open")
            .expect("a message");
        if !matches!(m, Message::Ping(_) | Message::Frame(_)) {
            return m;
        }
    }
}

fn close_code(m: &Message) -> Option<u16> {
    match m {
        Message::Close(Some(f)) => Some(u16::from(f.code)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_ping_a_10mb_message_and_close_codes_pass_both_ways() {
    let up = WsUpstream::start().await;
    let gw = Gateway::start_logging(&ws_config(&up, "", ROUTE), &[]);
    let mut req = format!("ws://{}/ws/chat", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat.v1".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    // tungstenite checked Sec-WebSocket-Accept against the key it sent: both passed
    // untouched.
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v1");
    {
        let seen = &up.handshakes.lock().unwrap()[0];
        assert_eq!(seen["sec-websocket-protocol"], "chat.v1");
        assert_eq!(seen["sec-websocket-version"], "13");
        assert!(seen.contains_key("x-forwarded-for"));
        assert!(seen.contains_key("x-request-id"));
    }

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(Bytes::from_static(b"are you there"))
    );
    let big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next(&mut ws).await {
        Message::Binary(b) => assert!(b == big, "the 10 MB message came back changed"),
        other => panic!("expected the 10 MB message back, got {other:?}"),
    }

    // The client closes with 4000: the upstream sees 4000 and answers the close.
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "done".into(),
    }))
    .await
    .unwrap();
    assert_eq!(close_code(&next(&mut ws).await), Some(4000));
    wait_until(
        "the upstream saw the close",
        Duration::from_secs(10),
        || up.closes.lock().unwrap().contains(&4000),
    )
    .await;
    // The server closes the TCP connection after the close handshake (RFC 6455 §7.1.1).
    let line = tokio::task::block_in_place(|| gw.wait_log(&["access", "status=101"]));
    for field in [
        "route=\"ws\"",
        "upgrade=\"websocket\"",
        "close_reason=\"eof\"",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(
        line.contains("bytes_received=1048") && line.contains("bytes=1048"),
        "10 MB each way: {line}"
    );

    // The upstream closes with 4001.
    drop(ws);
    let mut ws = connect(&gw, "/ws").await;
    ws.send(Message::text("close:4001")).await.unwrap();
    let m = next(&mut ws).await;
    assert_eq!(close_code(&m), Some(4001), "{m:?}");
    // Reading on sends tungstenite's close reply; then the upstream hangs up.
    while let Some(Ok(_)) = ws.next().await {}
    let line = tokio::task::block_in_place(|| gw.wait_log(&["access", "status=101"]));
    assert!(line.contains("closed_by=\"upstream\""), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_auth_plugin_runs_on_the_handshake_and_a_denied_one_never_reaches_the_upstream() {
    let up = WsUpstream::start().await;
    let routes = format!(
        "[[plugins]]\nname = \"api-key\"\npath = \"{}\"\n\n[[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"ws\"\nplugins = [ {{ name = \"api-key\", config = {{ keys = [ {{ key = \"k-123\", consumer = \"alice\" }} ] }} }} ]\n",
        plugin("api-key")
    );
    let gw = Gateway::start(&ws_config(&up, "", &routes));
    let url = format!("ws://{}/ws", gw.addr);
    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(
        up.handshakes(),
        0,
        "the denied handshake reached the upstream"
    );

    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("x-api-key", "k-123".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hi"));
    let seen = up.handshakes.lock().unwrap()[0].clone();
    assert_eq!(seen["x-portcullis-consumer"], "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_over_http2_extended_connect_reaches_an_http1_upstream() {
    use hyper_util::rt::TokioIo;
    let up = WsUpstream::start().await;
    let gw = Gateway::start(&ws_config(&up, "", ROUTE));
    let resp = h2_websocket_connect(gw.addr, "/ws/h2").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let seen = up.handshakes.lock().unwrap()[0].clone();
    assert_eq!(seen["upgrade"], "websocket");
    assert!(seen.contains_key("sec-websocket-key"), "the gateway's key");
    let io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
    ws.send(Message::text("over h2")).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::text("over h2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_tunnel_is_closed_with_going_away() {
    let up = WsUpstream::start().await;
    let routes = format!("{ROUTE}[routes.tunnel]\nidle_timeout = \"300ms\"\n");
    let gw = Gateway::start_logging(&ws_config(&up, "", &routes), &[]);
    let mut ws = connect(&gw, "/ws").await;
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("x"));
    let started = Instant::now();
    // Nothing more is sent: the gateway closes the tunnel, with 1001 to both sides.
    assert_eq!(close_code(&next(&mut ws).await), Some(1001));
    assert!(started.elapsed() >= Duration::from_millis(250));
    wait_until("the upstream got 1001", Duration::from_secs(10), || {
        up.closes.lock().unwrap().contains(&1001)
    })
    .await;
    let line = tokio::task::block_in_place(|| gw.wait_log(&["access", "status=101"]));
    assert!(
        line.contains("closed_by=\"gateway\"") && line.contains("close_reason=\"idle_timeout\""),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_an_open_tunnel_and_shutdown_closes_it_within_drain_timeout() {
    let up = WsUpstream::start().await;
    let server = "admin_listen = \"127.0.0.1:0\"\ndrain_timeout = \"1s\"";
    let gw = Gateway::start(&ws_config(&up, server, ROUTE));
    let admin = gw.admin.unwrap();
    let mut ws = connect(&gw, "/ws").await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("before"));
    let metrics = get(&format!("http://{admin}/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    let active = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_upstream_active_requests{"))
        .unwrap();
    assert!(
        active.ends_with(" 1"),
        "the tunnel counts against its endpoint: {active}"
    );

    // The route is gone from the new config; the open tunnel stays on the old one.
    let text = ws_config(&up, server, &ROUTE.replace("/ws", "/other"));
    std::fs::write(gw.dir.0.join("portcullis.toml"), text).unwrap();
    let r = send(
        &client(),
        req("POST", &format!("http://{admin}/reload"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("after"));

    let metrics = get(&format!("http://{admin}/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("portcullis_upgraded_connections{route=\"ws\"} 1"),
        "{metrics}"
    );
    let stats = get(&format!("http://{admin}/stats")).await.json();
    assert_eq!(stats["routes"][0]["upgraded_open"], 1, "{stats}");

    // Shutdown: the tunnel gets drain_timeout, then a going-away close.
    let started = Instant::now();
    gw.terminate();
    let m = next(&mut ws).await;
    assert_eq!(close_code(&m), Some(1001), "{m:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed before the drain: {waited:?}"
    );
    let mut child = gw;
    let status = tokio::task::block_in_place(|| child.child.wait()).unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_switches_and_refused_upgrades() {
    // An upstream that answers 101 to anything.
    let switcher = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let switcher_addr = switcher.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = switcher.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    // An HTTP upstream that records whether it saw an Upgrade header.
    let saw_upgrade = Arc::new(Mutex::new(Vec::new()));
    let seen = saw_upgrade.clone();
    let plain = Upstream::start(move |req| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push((
                req.headers().get("upgrade").cloned(),
                req.headers().get("connection").cloned(),
            ));
            echo_response("plain", req).await
        }
    })
    .await;
    let ws = WsUpstream::start().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nname = \"switcher\"\ntargets = [{{ address = \"{switcher_addr}\" }}]\n\n\
         [[upstreams]]\nname = \"plain\"\ntargets = [{{ address = \"{}\" }}]\n\n\
         [[upstreams]]\nname = \"ws\"\ntargets = [{{ address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"switcher\"\npath = \"/switch\"\nupstream = \"switcher\"\n\n\
         [[routes]]\nname = \"no-upgrades\"\npath = \"/plain\"\nupstream = \"plain\"\nupgrades = []\n\n\
         [[routes]]\nname = \"capped\"\npath = \"/capped\"\nupstream = \"ws\"\n[routes.tunnel]\nmax_connections = 1\n",
        plain.addr, ws.addr
    );
    let gw = Gateway::start(&text);

    // 101 to a plain request: 502.
    let r = get(&gw.url("/switch")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_bad_upgrade");
    // 101 to a WebSocket handshake, but to another protocol: 502.
    match tokio_tungstenite::connect_async(format!("ws://{}/switch", gw.addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 502),
        other => panic!("expected 502, got {:?}", other.map(|(_, r)| r.status())),
    }

    // A route with `upgrades = []`: forwarded as a plain request, no Upgrade upstream.
    let r = send(
        &client(),
        req("GET", &gw.url("/plain"))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let (upgrade, connection) = saw_upgrade.lock().unwrap()[0].clone();
    assert_eq!(upgrade, None, "the upstream saw Upgrade");
    assert_eq!(connection, None);
    assert_eq!(
        r.json()["headers"]["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );

    // An upgrade request with a body is not upgraded.
    let r = send(
        &client(),
        req("POST", &gw.url("/plain"))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::from_static(b"body")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(saw_upgrade.lock().unwrap()[1].0, None);

    // The route's cap: one open, the second handshake is 503.
    let _first = connect(&gw, "/capped").await;
    match tokio_tungstenite::connect_async(format!("ws://{}/capped", gw.addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|(_, r)| r.status())),
    }
}

/// 1,000 WebSocket connections open at once through the gateway: all of them work, and
/// the gateway's resident memory per connection is printed (asserted only loosely).
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_open_websockets_and_their_memory() {
    const N: usize = 1000;
    let up = WsUpstream::start().await;
    let gw = Gateway::start(&ws_config(&up, "", ROUTE));
    let pid = gw.child.id();
    // Warm up (worker pools, allocator arenas) before the baseline.
    let mut warm = Vec::new();
    for _ in 0..10 {
        warm.push(connect(&gw, "/ws").await);
    }
    let before = rss_kib(pid);
    let mut open = Vec::with_capacity(N);
    for chunk in 0..N / 50 {
        let batch = (0..50).map(|i| {
            let gw_addr = gw.addr;
            async move {
                let url = format!("ws://{gw_addr}/ws/{}", chunk * 50 + i);
                tokio_tungstenite::connect_async(url).await.unwrap().0
            }
        });
        open.extend(futures_util::future::join_all(batch).await);
    }
    wait_until("all upstream sides open", Duration::from_secs(30), || {
        up.open.load(Ordering::SeqCst) >= N + 10
    })
    .await;
    for (i, ws) in open.iter_mut().enumerate().step_by(97) {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(next(ws).await, Message::text(format!("m{i}")));
    }
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 / N as f64;
    println!(
        "gateway RSS: {before} KiB with 10 WebSockets open, {after} KiB with {}: {per:.1} KiB per connection",
        N + 10
    );
    assert!(per < 256.0, "{per:.1} KiB per open WebSocket");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_limit_counts_an_open_websocket_until_it_closes() {
    let up = WsUpstream::start().await;
    let routes = format!(
        "{ROUTE}limits = [\"one\"]\n\n[[limits]]\nname = \"one\"\nconcurrent = 1\nkey = [\"route\"]\n"
    );
    // With the access log on, the reservation goes to the tunnel with the log record;
    // with it off, on its own.
    for logging in [false, true] {
        let config = ws_config(&up, "", &routes);
        let gw = if logging {
            Gateway::start_logging(&config, &[])
        } else {
            Gateway::start(&config)
        };
        let url = format!("ws://{}/ws", gw.addr);
        let mut first = connect(&gw, "/ws").await;
        first.send(Message::text("x")).await.unwrap();
        assert_eq!(next(&mut first).await, Message::text("x"));
        // The first tunnel is open: a second handshake does not fit.
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 429, "logging {logging}");
                assert!(r.headers().contains_key("retry-after"));
            }
            other => panic!("logging {logging}: a second tunnel was let in: {other:?}"),
        }
        let before = up.handshakes();
        first.close(None).await.unwrap();
        while first.next().await.is_some() {}
        // Closed: the slot comes back (when the gateway's tunnel task has seen the close).
        let mut second = until_ok(
            "a handshake after the first tunnel closed",
            Duration::from_secs(10),
            Duration::from_millis(20),
            async || match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((ws, _)) => Ok(ws),
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 429 => {
                    Err("429")
                }
                Err(e) => panic!("logging {logging}: {e}"),
            },
        )
        .await;
        second.send(Message::text("y")).await.unwrap();
        assert_eq!(next(&mut second).await, Message::text("y"));
        assert_eq!(
            up.handshakes(),
            before + 1,
            "refused handshakes never reached it"
        );
    }
}
