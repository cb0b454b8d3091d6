//! Connection bounds over raw sockets: a connection that never sends its first bytes,
//! never finishes its HTTP/2 preface or head, never answers a ping, or sits idle is
//! closed by the gateway; over `max_connections` the idle one goes and the new client is
//! served. Each deadline under test is short in the test's config and the others an hour,
//! so the one that closes the connection is the one under test. The close is awaited as
//! an event (end of stream or reset) within the suite's `WAIT`.

use crate::support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A gateway in front of an echo upstream with `bounds` (TOML lines of `[server]`).
async fn gateway(bounds: &str) -> (Upstream, Gateway) {
    let up = Upstream::echo("up").await;
    let routes = "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n";
    let cfg = config("", &[up.addr], routes).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{bounds}"),
    );
    (up, Gateway::start(&cfg))
}

/// Every bound an hour except those `short` names, which get 300ms.
fn bounds(short: &[&str]) -> String {
    [
        "first_byte_timeout",
        "header_read_timeout",
        "keep_alive_timeout",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
    ]
    .iter()
    .map(|k| {
        let v = if short.contains(k) { "300ms" } else { "1h" };
        format!("{k} = \"{v}\"\n")
    })
    .collect()
}

/// Sends one HTTP/1.1 request and reads its whole response (content-length framed).
async fn round_trip(s: &mut BufReader<TcpStream>, path: &str) -> String {
    s.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut status = String::new();
    s.read_line(&mut status).await.unwrap();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.unwrap();
    status
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let (up, gw) = gateway(&bounds(&["first_byte_timeout"])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    assert!(closed_by_gateway(&mut s).await.is_empty());
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_partial_http2_preface_is_closed() {
    let (_up, gw) = gateway(&bounds(&["first_byte_timeout"])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&PREFACE[..16]).await.unwrap();
    assert!(closed_by_gateway(&mut s).await.is_empty());
}

/// Reads frames until the first GOAWAY, answering PINGs as a client does; returns the
/// frame types before it and its error code.
async fn goaway_from_gateway(s: &mut TcpStream) -> (Vec<u8>, u32) {
    let read = async {
        let mut before = Vec::new();
        loop {
            let f = next_frame(s)
                .await
                .expect("the connection closed without GOAWAY");
            if let Some((_, code)) = f.goaway() {
                return (before, code);
            }
            if f.kind == PING && f.flags & ACK == 0 {
                s.write_all(&frame(PING, ACK, 0, &f.payload)).await.unwrap();
            }
            before.push(f.kind);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("no GOAWAY from the gateway")
}

#[tokio::test]
async fn http2_preface_and_settings_then_silence_is_closed_with_goaway() {
    let (_up, gw) = gateway(&bounds(&["keep_alive_timeout"])).await;
    let mut s = h2_connection(gw.addr).await;
    let (before, code) = goaway_from_gateway(&mut s).await;
    // It was served as HTTP/2 (the gateway's SETTINGS came first), then told it is closed.
    assert_eq!(before.first(), Some(&SETTINGS), "{before:?}");
    assert_eq!(code, NO_ERROR);
    closed_by_gateway(&mut s).await;
}

#[tokio::test]
async fn http2_headers_without_end_headers_is_closed() {
    let (up, gw) = gateway(&bounds(&["keep_alive_timeout"])).await;
    let mut s = h2_connection(gw.addr).await;
    // `:method: GET` (HPACK static index 2), END_STREAM but not END_HEADERS: the head
    // would go on in a CONTINUATION that never comes.
    s.write_all(&frame(HEADERS, END_STREAM, 1, &[0x82]))
        .await
        .unwrap();
    closed_by_gateway(&mut s).await;
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn an_http2_client_that_does_not_answer_pings_is_closed() {
    let (_up, gw) = gateway(&bounds(&[
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
    ]))
    .await;
    let mut s = h2_connection(gw.addr).await;
    let got = closed_by_gateway(&mut s).await;
    assert!(frame_types(&got).contains(&PING), "{got:?}");
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let (up, gw) = gateway(&bounds(&["keep_alive_timeout"])).await;
    let mut s = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
    let status = round_trip(&mut s, "/one").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // header_read_timeout is an hour: what closes it is the keep-alive timeout.
    assert!(closed_by_gateway(&mut s).await.is_empty());
    assert_eq!(up.hits(), 1);
}

/// The head timer also runs while a keep-alive HTTP/1 connection waits for its next
/// request (hyper's, and the own server's too): an idle connection goes after the smaller
/// of the two bounds.
#[tokio::test]
async fn an_idle_http1_connection_is_closed_at_the_header_read_timeout() {
    let (up, gw) = gateway(&bounds(&["header_read_timeout"])).await;
    let mut s = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
    let status = round_trip(&mut s, "/one").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // keep_alive_timeout is an hour: what closes it is the header read timeout.
    assert!(closed_by_gateway(&mut s).await.is_empty());
    assert_eq!(up.hits(), 1);
}

/// hyper's header timer is not moved for every head: it stays set for an earlier head's
/// deadline and is moved to the current head's only when it fires first. A head awaited
/// from the end of a slow response (so after the timer was set) gets its own whole
/// `header_read_timeout`, not the rest of the first head's; a head never finished is
/// still cut.
#[tokio::test]
async fn a_later_head_gets_its_own_header_read_timeout() {
    use std::time::{Duration, Instant};
    let up = Upstream::start(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        http::Response::new(full("ok"))
    })
    .await;
    let routes = "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n";
    let short = bounds(&[]).replace(
        "header_read_timeout = \"1h\"",
        "header_read_timeout = \"1s\"",
    );
    let gw = Gateway::start(&config("", &[up.addr], routes).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{short}"),
    ));
    let mut s = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
    // The first head is awaited from the connection's start: the timer is set for 1 s
    // later.
    let status = round_trip(&mut s, "/slow").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // The second is awaited from the answer: its deadline is about 1 s after it. The
    // first head was read from before the request went upstream, 0.7 s or more before
    // the answer, so its deadline (the timer's) is at most 0.3 s after it. Sent 0.5 s
    // after the answer, the second head comes after the first's deadline and well
    // within its own.
    let answered = Instant::now();
    let send_at = answered + Duration::from_millis(500);
    tokio::time::sleep_until(send_at.into()).await;
    let status = round_trip(&mut s, "/two").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // A third head, never finished, is cut by the gateway.
    s.get_mut()
        .write_all(b"GET /three HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let got = closed_by_gateway(&mut s).await;
    assert!(!String::from_utf8_lossy(&got).contains("200"), "{got:?}");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn over_max_connections_an_idle_connection_makes_room_for_a_new_client() {
    let (up, gw) = gateway(&format!("{}max_connections = 2\n", bounds(&[]))).await;
    let mut idle = Vec::new();
    for i in 0..2 {
        let mut s = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
        let status = round_trip(&mut s, &format!("/idle{i}")).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        idle.push(s);
    }
    // A third client is served...
    let mut third = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
    let status = round_trip(&mut third, "/third").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // ...because one of the two idle ones was closed (either: they went idle within the
    // same millisecond or not).
    let (mut a, mut b) = (idle.remove(0), idle.remove(0));
    let a_closed = tokio::select! {
        _ = closed_by_gateway(&mut a) => true,
        _ = closed_by_gateway(&mut b) => false,
    };
    // The other one still works.
    let mut kept = if a_closed { b } else { a };
    let status = round_trip(&mut kept, "/kept").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn over_max_connections_an_idle_http2_connection_gets_goaway() {
    let (up, gw) = gateway(&format!("{}max_connections = 1\n", bounds(&[]))).await;
    let mut idle = h2_connection(gw.addr).await;
    let settings = next_frame(&mut idle).await.expect("served as HTTP/2");
    assert_eq!(settings.kind, SETTINGS);
    let mut new = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
    let status = round_trip(&mut new, "/new").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let (_, code) = goaway_from_gateway(&mut idle).await;
    assert_eq!(code, NO_ERROR);
    closed_by_gateway(&mut idle).await;
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn out_of_descriptors_the_oldest_idle_connections_make_room_for_a_client() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = TempDir::new();
    let path = dir.write(
        "p.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\nfirst_byte_timeout = \"1h\"\n",
    );
    // Soft and hard limit 64, so the gateway cannot raise it: silent connections use up
    // its descriptors and accept fails with EMFILE.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec {} run --config {} --log-level warn",
            bin(),
            path.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let (log_tx, log) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = log_tx.send(l);
        }
    });
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // No route matches: the gateway answers itself, with no upstream descriptor needed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&closed_by_gateway(&mut s).await).into_owned();
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<String> = log.try_iter().collect();
    assert!(
        answer.starts_with("HTTP/1.1 404"),
        "{answer:?} (gateway exited: {exited:?}; log: {lines:?})"
    );
    // It got there through the out-of-descriptors path.
    assert!(
        lines.iter().any(|l| l.contains("accept failed")),
        "{lines:?}"
    );
}
