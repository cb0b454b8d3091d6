//! The gateway's own HTTP/1.1 server (`src/server/h1.rs`) over raw sockets: plain
//! requests are served by it, pipelined ones in order, bodies with a length whole; the
//! first request it does not serve (here a chunked `POST`) moves the connection to hyper
//! with the bytes already read; a client that leaves mid-request has its request dropped; a response of unknown
//! length goes out chunked as it comes, and one whose body fails is cut short, never
//! ended cleanly.

use crate::support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn routes() -> &'static str {
    "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n"
}

/// Reads one response: its status line, its fields (lower-cased names) and its body,
/// framed by `content-length` or chunked.
async fn response(s: &mut BufReader<TcpStream>) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut status = String::new();
    s.read_line(&mut status).await.unwrap();
    let mut fields = Vec::new();
    loop {
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        fields.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = field("content-length") {
        body.resize(len.parse().unwrap(), 0);
        s.read_exact(&mut body).await.unwrap();
    } else if field("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let mut size = String::new();
            s.read_line(&mut size).await.unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            s.read_exact(&mut chunk).await.unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    (status, fields, body)
}

/// Connects to `gw`, sends a GET for `path` and reads the response's head.
async fn get_head(gw: &Gateway, path: &str) -> (BufReader<TcpStream>, String) {
    let mut s = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
    s.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        s.read_line(&mut head).await.unwrap();
    }
    (s, head)
}

fn echoed(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

/// Reads one 200 per `(path, method, body)`, in order, each the echo of that request.
async fn answered_in_order(s: &mut BufReader<TcpStream>, expected: &[(&str, &str, &str)]) {
    for &(path, method, sent) in expected {
        let (status, _, body) = response(s).await;
        assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
        let j = echoed(&body);
        assert_eq!(j["path"], path);
        assert_eq!(j["method"], method);
        assert_eq!(j["body"], sent);
    }
}

#[tokio::test]
async fn pipelined_gets_are_answered_in_order() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config("", &[up.addr], routes()));
    let mut s = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
    let three: String = ["/a", "/b", "/c"]
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1\r\nhost: x\r\nx-n: {p}\r\n\r\n"))
        .collect();
    s.get_mut().write_all(three.as_bytes()).await.unwrap();
    for p in ["/a", "/b", "/c"] {
        let (status, fields, body) = response(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
        assert!(fields.iter().any(|(k, _)| k == "date"), "{fields:?}");
        let j = echoed(&body);
        assert_eq!(j["path"], p);
        assert_eq!(j["headers"]["x-n"], p);
    }
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn a_chunked_request_moves_the_connection_to_hyper_with_what_was_read() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config("", &[up.addr], routes()));
    let mut s = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
    // One write: a GET the own server serves, then a chunked POST it does not (read with
    // it, so it goes to hyper from the own server's buffer), then a GET hyper serves.
    let requests = "GET /first HTTP/1.1\r\nhost: x\r\n\r\n\
         POST /second HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n\
         GET /third HTTP/1.1\r\nhost: x\r\n\r\n";
    s.get_mut().write_all(requests.as_bytes()).await.unwrap();
    answered_in_order(
        &mut s,
        &[
            ("/first", "GET", ""),
            ("/second", "POST", "hello"),
            ("/third", "GET", ""),
        ],
    )
    .await;
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn a_body_then_a_bare_lf_head_in_one_read_are_both_answered() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config("", &[up.addr], routes()));
    let mut s = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
    // One write: a POST with its body (the own server's: the body is cut from the same
    // read), then a GET whose lines end in bare LF (hyper's, with the bytes left over).
    let requests = "POST /one HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
         GET /two HTTP/1.1\nhost: x\nx-n: 2\n\n";
    s.get_mut().write_all(requests.as_bytes()).await.unwrap();
    answered_in_order(&mut s, &[("/one", "POST", "hello"), ("/two", "GET", "")]).await;
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn bodies_with_a_length_reach_the_upstream_whole_wherever_the_reads_end() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config("", &[up.addr], routes()));
    let mut s = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
    // A POST and a PUT whose bodies come with their heads, and a GET, in one write.
    let requests = "POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello world\
         PUT /u HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc\
         GET /g HTTP/1.1\r\nhost: x\r\n\r\n";
    s.get_mut().write_all(requests.as_bytes()).await.unwrap();
    for (path, method, sent) in [
        ("/p", "POST", "hello world"),
        ("/u", "PUT", "abc"),
        ("/g", "GET", ""),
    ] {
        let (status, _, body) = response(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
        let j = echoed(&body);
        assert_eq!(
            (j["path"].as_str(), j["method"].as_str()),
            (Some(path), Some(method))
        );
        assert_eq!(j["body"], sent);
        assert_eq!(
            j["headers"]["content-length"].as_str(),
            (!sent.is_empty())
                .then(|| sent.len().to_string())
                .as_deref()
        );
    }
    // A body sent after its head, in a write of its own: the server has it whole or
    // leaves the connection to hyper, and the upstream gets it whole either way.
    s.get_mut()
        .write_all(b"POST /late HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\n\r\nlate")
        .await
        .unwrap();
    s.get_mut().write_all(b" body").await.unwrap();
    let (status, _, body) = response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    assert_eq!(echoed(&body)["body"], "late body");
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_has_its_request_dropped() {
    // The upstream holds each request until it is dropped, and says when.
    let (got_tx, mut got) = mpsc::unbounded_channel::<()>();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel::<()>();
    struct Said(mpsc::UnboundedSender<()>);
    impl Drop for Said {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let up = Upstream::start(move |_req| {
        let said = Said(dropped_tx.clone());
        let _ = got_tx.send(());
        async move {
            let _said = said;
            std::future::pending::<()>().await;
            unreachable!()
        }
    })
    .await;
    let gw = Gateway::start(&config("", &[up.addr], routes()));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /held HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(WAIT, got.recv())
        .await
        .expect("the request did not reach the upstream");
    drop(s);
    tokio::time::timeout(WAIT, dropped.recv())
        .await
        .expect("the upstream request was not dropped when the client left");
}

#[tokio::test]
async fn a_response_of_unknown_length_goes_out_chunked_as_it_comes() {
    let (up, release_tx) = held_stream(None, b"first;", &[b"second"]).await;
    let gw = Gateway::start(&config("", &[up.addr], routes()));
    let (mut s, head) = get_head(&gw, "/s").await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked\r\n"),
        "{head}"
    );
    // The first chunk arrives before the upstream sends the second.
    let mut first = [0u8; 11];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"6\r\nfirst;\r\n");
    release_tx.send(()).await.unwrap();
    let mut rest = [0u8; 16];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"6\r\nsecond\r\n0\r\n\r\n");
}

/// A raw upstream: reads each request's head, writes `reply`, closes the connection.
async fn raw_upstream(reply: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let _ = s.write_all(reply).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_response_whose_body_fails_is_cut_short_not_ended() {
    // A chunked head and one chunk, then the connection is closed.
    let addr =
        raw_upstream(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n").await;
    let gw = Gateway::start(&config("", &[addr], routes()));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /cut HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8(closed_by_gateway(&mut s).await).unwrap();
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    assert!(got.ends_with("\r\n\r\n5\r\nhello\r\n"), "{got}");
}

#[tokio::test]
async fn an_upstreams_own_reason_phrase_reaches_the_client() {
    for (reply, line) in [
        (
            &b"HTTP/1.1 200 Fine\r\ncontent-length: 2\r\n\r\nok"[..],
            "HTTP/1.1 200 Fine\r\n",
        ),
        (
            b"HTTP/1.1 404 Gone Fishing\r\ncontent-length: 2\r\n\r\nno",
            "HTTP/1.1 404 Gone Fishing\r\n",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\n",
        ),
    ] {
        let addr = raw_upstream(reply).await;
        let gw = Gateway::start(&config("", &[addr], routes()));
        let mut s = BufReader::new(TcpStream::connect(gw.addr).await.unwrap());
        s.get_mut()
            .write_all(b"GET /r HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (status, _, body) = response(&mut s).await;
        assert_eq!(status, line);
        assert_eq!(body.len(), 2);
    }
}

#[tokio::test]
async fn a_streams_head_goes_out_before_its_first_chunk() {
    let (up, release) = held_stream(Some("text/event-stream"), b"", &[b"data: one\n\n"]).await;
    let gw = Gateway::start(&config("", &[up.addr], routes()));
    // Nothing of the body has been sent: the head is there all the same.
    let (mut s, head) = tokio::time::timeout(WAIT, get_head(&gw, "/events"))
        .await
        .expect("the head waited for the body");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    release.send(()).await.unwrap();
    let mut first = [0u8; 16];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"b\r\ndata: one\n\n\r\n");
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_has_the_upstream_stream_dropped() {
    // The upstream sends one piece, then keeps its body open until it is dropped.
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel::<()>();
    let up = Upstream::start(move |_req| {
        let dropped_tx = dropped_tx.clone();
        async move {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                tx.send(bytes::Bytes::from_static(b"data: one\n\n"))
                    .await
                    .unwrap();
                tx.closed().await;
                let _ = dropped_tx.send(());
            });
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(stream(rx))
                .unwrap()
        }
    })
    .await;
    let gw = Gateway::start(&config("", &[up.addr], routes()));
    let (mut s, head) = get_head(&gw, "/events").await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let mut first = [0u8; 16];
    s.read_exact(&mut first).await.unwrap();
    drop(s);
    tokio::time::timeout(WAIT, dropped.recv())
        .await
        .expect("the upstream's stream was not dropped when the client left");
}

/// Sends `request` to a gateway in front of an upstream that answers `reply`, and reads
/// the response's head whole (until its blank line) and its two-byte body.
async fn head_and_body(reply: &'static [u8], request: &[u8]) -> (String, Vec<u8>) {
    let addr = raw_upstream(reply).await;
    let gw = Gateway::start(&config("", &[addr], routes()));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        got.push(byte[0]);
    }
    let mut body = vec![0; 2];
    s.read_exact(&mut body).await.unwrap();
    (String::from_utf8(got).unwrap(), body)
}

/// The upstream's head with every kind of line a proxy must not pass on.
const HOP_BY_HOP_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nServer: up\r\n\
    Date: Tue, 01 Dec 2026 00:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
    Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Request-Id: upstream-id\r\n\
    Proxy-Authenticate: Basic\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
    ETag: \"1\"\r\n\r\nok";

#[tokio::test]
async fn a_plain_response_head_goes_on_as_it_came_less_its_hop_by_hop_lines() {
    let (head, body) =
        head_and_body(HOP_BY_HOP_REPLY, b"GET /raw HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(body, b"ok");
    // The upstream's lines in its order and spelling; its date, not a second one; the
    // gateway's request id in place of the upstream's.
    let (kept, id) = head.split_once("x-request-id: ").expect("the gateway's id");
    assert_eq!(
        kept,
        "HTTP/1.1 200 OK\r\nServer: up\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\
         Content-Type: text/plain\r\nContent-Length: 2\r\nETag: \"1\"\r\n"
    );
    let id = id.strip_suffix("\r\n\r\n").unwrap();
    assert_eq!(id.len(), 32, "{head}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{head}");
}

#[tokio::test]
async fn a_response_served_by_hyper_or_not_plain_is_written_from_its_map() {
    // HTTP/1.0 goes to hyper's server, which writes the map: the same fields, less the
    // same lines (and no `connection`: HTTP/1.0 closes by default).
    let (head, body) =
        head_and_body(HOP_BY_HOP_REPLY, b"GET /raw HTTP/1.0\r\nhost: x\r\n\r\n").await;
    assert_eq!(body, b"ok");
    let mut got: Vec<String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "content-length",
            "content-type",
            "date",
            "etag",
            "server",
            "x-request-id"
        ],
        "{head}"
    );
    assert!(
        head.starts_with("HTTP/1.0 200 OK\r\nserver: up\r\n"),
        "{head}"
    );
    assert!(!head.contains("upstream-id"), "{head}");
    // Heads the own server does not write as they came: bare LF lines, a value with
    // trailing space, a `Connection` naming a field. Each is written from the map:
    // lower-case names, the named field gone.
    for (reply, want, gone) in [
        (
            &b"HTTP/1.1 200 OK\nX-A: 1\ncontent-length: 2\n\nok"[..],
            "x-a: 1\r\n",
            "X-A",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-A: 1  \r\ncontent-length: 2\r\n\r\nok",
            "x-a: 1\r\n",
            "X-A",
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nX-A: 1\r\n\
              content-length: 2\r\n\r\nok",
            "x-a: 1\r\n",
            "secret",
        ),
    ] {
        let (head, body) = head_and_body(reply, b"GET /m HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(body, b"ok");
        assert!(head.contains(want), "{head}");
        assert!(!head.contains(gone), "{head}");
        assert!(!head.to_ascii_lowercase().contains("connection"), "{head}");
    }
}
