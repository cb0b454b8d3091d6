//! A hostile client (issue 12): raw HTTP/1 bytes over TCP and raw HTTP/2 frames (the `h2`
//! crate), against the real gateway in front of an in-process upstream that records what
//! it received. Every test asserts both the client's answer and what reached the upstream.

use crate::support::*;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One request as the upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    trailers: Option<HeaderMap>,
    /// The body, or why it could not be read whole.
    body: Result<Bytes, String>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// An upstream that records every request (after reading its body) and answers 200 `ok`.
struct Recorder {
    up: Upstream,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let up = Upstream::start(move |req: http::Request<hyper::body::Incoming>| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let (body, trailers) = match body.collect().await {
                    Ok(c) => {
                        let t = c.trailers().cloned();
                        (Ok(c.to_bytes()), t)
                    }
                    Err(e) => (Err(e.to_string()), None),
                };
                log.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    headers: parts.headers,
                    trailers,
                    body,
                });
                http::Response::new(full("ok"))
            }
        })
        .await;
        Recorder { up, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests that reached the upstream, but the `/end` markers.
    fn paths(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .map(|s| s.path)
            .filter(|p| p != "/end")
            .collect()
    }
}

/// A gateway with host-scoped and key-protected routes in front of `rec`, whose upstream
/// opens its breaker after 3 failures in a row.
fn hostile_gateway(rec: &Recorder, extra_server: &str) -> Gateway {
    Gateway::start(&format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
plugin_cache_dir = "{cache}"
{extra_server}

[[plugins]]
name = "api-key"
path = "{plugin}"

[[upstreams]]
name = "up"
targets = [{{ address = "{addr}" }}]
[upstreams.circuit_breaker]
consecutive_failures = 3
open_time = "60s"

[[routes]]
name = "secure-host"
path_prefix = "/h/"
hosts = ["secure.example"]
preserve_host = true
upstream = "up"
plugins = [ {{ name = "api-key", config = {{ keys = [ {{ key = "k-1", consumer = "alice" }} ] }} }} ]

[[routes]]
name = "open-host"
path_prefix = "/h/"
hosts = ["other.example"]
preserve_host = true
upstream = "up"

[[routes]]
name = "keyed"
path_prefix = "/secure/"
upstream = "up"
plugins = [ {{ name = "api-key", config = {{ keys = [ {{ key = "k-1", consumer = "alice" }} ] }} }} ]

[[routes]]
name = "all"
path_prefix = "/"
preserve_host = true
upstream = "up"
"#,
        cache = std::env::temp_dir()
            .join("portcullis-test-wasm-cache")
            .display(),
        plugin = plugin("api-key"),
        addr = rec.up.addr,
    ))
}

/// A response as read off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn error_code(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .map(|j| j["error"]["code"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }
}

/// The last request of a raw exchange: answered, then the gateway closes, so reading to
/// the end of the stream sees every response the gateway sent.
const END: &[u8] = b"GET /end HTTP/1.1\r\nHost: end.example\r\nConnection: close\r\n\r\n";

/// Writes `bytes` on a new connection and reads every response until the gateway closes
/// it (a gateway that never closes fails the test after [`WAIT`]).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<Raw> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the gateway closes the connection");
    parse_responses(&buf)
}

/// Parses HTTP/1.1 responses (Content-Length or chunked bodies) one after another.
fn parse_responses(mut b: &[u8]) -> Vec<Raw> {
    let mut out = Vec::new();
    while let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = std::str::from_utf8(&b[..end]).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        b = &b[end + 4..];
        let body = if let Some(len) = get("content-length") {
            let len: usize = len.parse().unwrap();
            let body = Bytes::copy_from_slice(&b[..len]);
            b = &b[len..];
            body
        } else if get("transfer-encoding").is_some() {
            let mut body = Vec::new();
            loop {
                let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
                let size =
                    usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16)
                        .unwrap();
                b = &b[eol + 2..];
                if size == 0 {
                    b = &b[2..];
                    break;
                }
                body.extend_from_slice(&b[..size]);
                b = &b[size + 2..];
            }
            Bytes::from(body)
        } else {
            let body = Bytes::copy_from_slice(b);
            b = &[];
            body
        };
        out.push(Raw {
            status: status.parse().unwrap(),
            headers,
            body,
        });
    }
    out
}

/// Every response of the exchange but the last, which must be the `/end` marker's 200.
async fn answers(addr: SocketAddr, request: &[u8]) -> Vec<Raw> {
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(END);
    let mut r = exchange(addr, &bytes).await;
    let last = r.pop().expect("at least the /end answer");
    assert_eq!(last.status, 200, "the /end marker: {last:?}");
    r
}

// ---------------------------------------------------------------------------------------
// 1. One authority per request.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_absolute_form_target_is_the_one_authority_routed_and_forwarded() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    // Routed on the URI's authority (the open route), and forwarded under it too: the
    // client's Host does not reach the upstream as Host or X-Forwarded-Host.
    let r = answers(
        gw.addr,
        b"GET http://other.example/h/x HTTP/1.1\r\nHost: secure.example\r\n\r\n",
    )
    .await;
    assert_eq!(r[0].status, 200, "{r:?}");
    let seen = rec.seen();
    let first = &seen[0];
    assert_eq!(first.path, "/h/x");
    assert_eq!(first.header("host"), Some("other.example"));
    assert_eq!(first.header("x-forwarded-host"), Some("other.example"));
    assert_eq!(first.header("x-portcullis-consumer"), None);
    // The other way round: the key-protected route is chosen, and denies.
    let r = answers(
        gw.addr,
        b"GET http://secure.example/h/x HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert_eq!(r[0].status, 401, "{r:?}");
    assert_eq!(
        rec.paths(),
        ["/h/x"],
        "the denied request never went upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_authority_and_host_that_differ_are_refused() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let send = async |h2c: &mut h2::client::SendRequest<Bytes>, host: &str| {
        let req = http::Request::get("http://other.example/h/x")
            .header("host", host)
            .body(())
            .unwrap();
        let (resp, _) = h2c.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        (status, bytes)
    };
    let (status, body) = send(&mut h2c, "secure.example").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("bad_host"));
    assert!(rec.seen().is_empty(), "nothing reached the upstream");
    // Agreeing (case aside), the request goes through under that authority.
    let (status, _) = send(&mut h2c, "Other.Example").await;
    assert_eq!(status, 200);
    let seen = rec.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("host"), Some("other.example"));
    assert_eq!(seen[0].header("x-forwarded-host"), Some("other.example"));
}

#[tokio::test(flavor = "multi_thread")]
async fn http11_needs_exactly_one_host() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    for request in [
        &b"GET /a HTTP/1.1\r\n\r\n"[..],
        b"GET /a HTTP/1.1\r\nHost: other.example\r\nHost: secure.example\r\n\r\n",
        b"GET http://other.example/a HTTP/1.1\r\n\r\n",
    ] {
        let r = answers(gw.addr, request).await;
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!((r[0].status, r[0].error_code().as_str()), (400, "bad_host"));
    }
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
    // HTTP/1.0 may leave Host out.
    let r = exchange(gw.addr, b"GET /ten HTTP/1.0\r\n\r\n").await;
    assert_eq!(r[0].status, 200, "{r:?}");
    assert_eq!(rec.paths(), ["/ten"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_is_not_host_and_port_is_refused() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    for host in ["a:80:80", "u@a", "a,b", "secure.example:x", "[::1"] {
        let request = format!("GET /a HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let r = answers(gw.addr, request.as_bytes()).await;
        assert_eq!(r.len(), 1, "{host}: {r:?}");
        assert_eq!(
            (r[0].status, r[0].error_code().as_str()),
            (400, "bad_host"),
            "{host}"
        );
    }
    let r = answers(gw.addr, b"GET http://u@a/a HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(
        r[0].status, 400,
        "userinfo in an absolute-form target: {r:?}"
    );
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trailing_dot_does_not_escape_host_matching() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    let r = answers(
        gw.addr,
        b"GET /h/x HTTP/1.1\r\nHost: SECURE.example.\r\n\r\n",
    )
    .await;
    assert_eq!(r[0].status, 401, "the key-protected route took it: {r:?}");
    assert!(rec.paths().is_empty());
    let r = answers(
        gw.addr,
        b"GET /h/x HTTP/1.1\r\nHost: secure.example.:8080\r\nX-Api-Key: k-1\r\n\r\n",
    )
    .await;
    assert_eq!(r[0].status, 200, "{r:?}");
    let seen = rec.seen();
    let s = seen.iter().find(|s| s.path == "/h/x").expect("forwarded");
    assert_eq!(s.header("host"), Some("secure.example:8080"));
    assert_eq!(s.header("x-portcullis-consumer"), Some("alice"));
}

// ---------------------------------------------------------------------------------------
// 2. A failure of the client's body is the client's.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn client_body_failures_never_open_the_breaker() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    // Three malformed chunked bodies: each is the client's 400.
    for _ in 0..3 {
        let r = exchange(
            gw.addr,
            b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        )
        .await;
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            (r[0].status, r[0].error_code().as_str()),
            (400, "malformed_body")
        );
        assert_eq!(r[0].header("connection"), Some("close"));
    }
    // Three clients that leave mid-body.
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        drop(s);
    }
    // All six are answered (and counted) before the breaker is looked at.
    let counted = "portcullis_requests_total{method=\"POST\",route=\"all\",status=\"4xx\"}";
    until_ok(
        "the six requests to be counted",
        WAIT,
        WAIT / 1000,
        async || match metric(&gw, counted).await {
            6.0 => Ok(()),
            n => Err(n),
        },
    )
    .await;
    let opened = "portcullis_circuit_breaker_transitions_total{endpoint=";
    assert_eq!(metric(&gw, opened).await, 0.0, "no breaker transition");
    let r = answers(gw.addr, b"GET /good HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r[0].status, 200, "{r:?}");
    // Upstream: the failed bodies never arrived whole; the good request did.
    let seen = rec.seen();
    assert!(
        seen.iter()
            .filter(|s| s.path == "/up")
            .all(|s| s.body.is_err()),
        "{seen:?}"
    );
    assert!(seen.iter().any(|s| s.path == "/good" && s.method == "GET"));
}

// ---------------------------------------------------------------------------------------
// 5. Header hygiene.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn connection_cannot_remove_the_gateways_own_headers() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    let r = answers(
        gw.addr,
        b"GET /secure/x HTTP/1.1\r\nHost: a\r\nX-Api-Key: k-1\r\n\
          Connection: x-portcullis-consumer, x-request-id, traceparent, x-forwarded-for\r\n\r\n",
    )
    .await;
    assert_eq!(r[0].status, 200, "{r:?}");
    let s = &rec.seen()[0];
    assert_eq!(s.header("x-portcullis-consumer"), Some("alice"));
    assert!(s.header("x-request-id").is_some());
    assert!(s.header("traceparent").is_some());
    assert!(s.header("x-forwarded-for").is_some());
    assert_eq!(s.header("connection"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_fields_reach_the_upstream_once_as_the_gateway_sets_them() {
    // The gateway writes its `X-Forwarded-*` and a try's `Host` as it sends the head;
    // forged ones, sent twice or added by a plugin, must not go along beside them.
    let rec = Recorder::start().await;
    let gw = Gateway::start(&format!(
        r#"[server]
listen = "127.0.0.1:0"
plugin_cache_dir = "{cache}"

[[plugins]]
name = "headers"
path = "{plugin}"

[[upstreams]]
name = "up"
targets = [{{ address = "{addr}" }}]

[[routes]]
name = "plugin"
path_prefix = "/plugin/"
upstream = "up"
plugins = [ {{ name = "headers", config = {{ request = {{ add = {{ "x-forwarded-for" = "6.6.6.6", "x-forwarded-proto" = "gopher", "x-forwarded-host" = "plugin.example" }} }} }} }} ]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "up"
"#,
        cache = std::env::temp_dir()
            .join("portcullis-test-wasm-cache")
            .display(),
        plugin = plugin("headers"),
        addr = rec.up.addr,
    ));
    let forged = "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\
                  X-Forwarded-Proto: https\r\nx-forwarded-proto: ftp\r\n\
                  X-Forwarded-Host: evil.example\r\nX-Forwarded-Host: evil2.example\r\n";
    for path in ["/x", "/plugin/x"] {
        for fields in [forged, ""] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: api.example:8080\r\n{fields}\r\n");
            let r = answers(gw.addr, request.as_bytes()).await;
            assert_eq!(r[0].status, 200, "{path} {fields:?}: {r:?}");
        }
    }
    let seen: Vec<Seen> = rec
        .seen()
        .into_iter()
        .filter(|s| s.path != "/end")
        .collect();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        let all = |n: &str| {
            let v = s.headers.get_all(n).iter();
            v.map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-forwarded-for"), ["127.0.0.1"], "{s:?}");
        assert_eq!(all("x-forwarded-proto"), ["http"], "{s:?}");
        assert_eq!(all("x-forwarded-host"), ["api.example:8080"], "{s:?}");
        // The endpoint's own Host (the route's `host = target`), once and first.
        assert_eq!(all("host"), [rec.up.addr.to_string()], "{s:?}");
        assert_eq!(s.headers.keys().next().unwrap(), "host", "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn field_names_are_read_as_sent_whatever_came_before_in_their_place() {
    // The gateway keeps the field names of the last heads by place (the requests its
    // worker read, the responses of an upstream connection) and takes one from there only
    // when its bytes are the same: another name, another case or another order in a place
    // is read as sent. An upstream on one keep-alive connection answers each request with
    // names of its own.
    let responses = [
        "X-Up-A: 1\r\nX-Up-B: 1",
        "X-Up-B: 2\r\nX-Up-A: 2",
        "X-Up-B: 3\r\nX-UP-A: 3",
        "X-Up-B: 4\r\nX-UP-A: 4",
    ];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    let (log, accepted) = (heads.clone(), Arc::new(Mutex::new(0)));
    let connections = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            *connections.lock().unwrap() += 1;
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8(buf.drain(..end + 4).collect()).unwrap();
                        let n = {
                            let mut log = log.lock().unwrap();
                            log.push(head);
                            log.len() - 1
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\n{}\r\nContent-Length: 2\r\n\r\nok",
                            responses[n.min(responses.len() - 1)]
                        );
                        s.write_all(answer.as_bytes()).await.unwrap();
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let gw = Gateway::start(&config(
        "",
        &[up],
        "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n",
    ));
    let r = answers(
        gw.addr,
        b"GET /n/1 HTTP/1.1\r\nHost: a\r\nX-Alpha: 1\r\nContent-Type: t\r\n\r\n\
          GET /n/2 HTTP/1.1\r\nHost: a\r\nX-Alphb: 2\r\ncontent-type: u\r\n\r\n\
          GET /n/3 HTTP/1.1\r\nHost: a\r\nX-ALPHA: 3\r\nX-Alphb: 3\r\n\r\n",
    )
    .await;
    // What the client got: each response's own names.
    let got: Vec<Vec<(&str, &str)>> = r
        .iter()
        .map(|a| {
            let up = a.headers.iter().filter(|(n, _)| n.starts_with("x-up-"));
            up.map(|(n, v)| (n.as_str(), v.as_str())).collect()
        })
        .collect();
    assert_eq!(
        got,
        [
            vec![("x-up-a", "1"), ("x-up-b", "1")],
            vec![("x-up-b", "2"), ("x-up-a", "2")],
            vec![("x-up-b", "3"), ("x-up-a", "3")],
        ],
        "{r:?}"
    );
    assert_eq!(
        *accepted.lock().unwrap(),
        1,
        "one upstream connection, reused"
    );
    // What the upstream got: each request's own names, in lower case.
    let sent = |head: &str, name: &str| {
        head.split("\r\n")
            .filter_map(|l| l.split_once(": "))
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
            .collect::<Vec<_>>()
    };
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 4, "three requests and the end: {heads:?}");
    let fields =
        |head: &str| ["x-alpha", "x-alphb", "content-type"].map(|n| sent(head, n).join(","));
    assert_eq!(fields(&heads[0]), ["1", "", "t"], "{}", heads[0]);
    assert_eq!(fields(&heads[1]), ["", "2", "u"], "{}", heads[1]);
    assert_eq!(fields(&heads[2]), ["3", "3", ""], "{}", heads[2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_connection_header_names_hop_by_hop_headers() {
    // Two `Connection` fields are one list (RFC 9110 §5.3): what the second names is as
    // hop-by-hop as what the first names, and neither reaches the upstream.
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    let r = answers(
        gw.addr,
        b"GET /t HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nX-Hop-A: 1\r\n\
          Connection: x-hop-a , X-Hop-B\r\nX-Hop-B: 2\r\nConnection: \r\nX-Kept: 3\r\n\r\n",
    )
    .await;
    assert_eq!(r[0].status, 200, "{r:?}");
    let s = &rec.seen()[0];
    assert_eq!(s.header("x-hop-a"), None);
    assert_eq!(s.header("x-hop-b"), None);
    assert_eq!(s.header("connection"), None);
    assert_eq!(s.header("x-kept"), Some("3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn client_trailers_cannot_carry_gateway_managed_headers() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    let r = answers(
        gw.addr,
        b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\
          Trailer: X-Portcullis-Consumer, X-Request-Id, X-Checksum\r\n\r\n\
          5\r\nhello\r\n0\r\nX-Portcullis-Consumer: admin\r\nX-Request-Id: forged\r\n\
          X-Checksum: 1\r\n\r\n",
    )
    .await;
    assert_eq!(r[0].status, 200, "{r:?}");
    let s = &rec.seen()[0];
    assert_eq!(s.body.as_deref().ok(), Some(&b"hello"[..]));
    assert_eq!(s.header("x-portcullis-consumer"), None);
    let trailers = s.trailers.clone().unwrap_or_default();
    assert!(
        trailers.get("x-portcullis-consumer").is_none(),
        "{trailers:?}"
    );
    assert!(trailers.get("x-request-id").is_none(), "{trailers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn header_names_with_underscores_are_dropped_unless_allowed() {
    let request =
        b"GET /u HTTP/1.1\r\nHost: a\r\nX_Portcullis_Consumer: admin\r\nX-Kept: 1\r\n\r\n";
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    assert_eq!(answers(gw.addr, request).await[0].status, 200);
    let s = &rec.seen()[0];
    assert_eq!(s.header("x_portcullis_consumer"), None);
    assert_eq!(s.header("x-kept"), Some("1"));
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "allow_underscores_in_headers = true");
    assert_eq!(answers(gw.addr, request).await[0].status, 200);
    assert_eq!(rec.seen()[0].header("x_portcullis_consumer"), Some("admin"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_coding_other_than_chunked_alone_is_not_implemented() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    for te in ["gzip, chunked", "chunked, chunked", "identity, chunked"] {
        let request = format!(
            "POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let r = exchange(gw.addr, request.as_bytes()).await;
        assert_eq!(r.len(), 1, "{te}: {r:?}");
        assert_eq!(
            (r[0].status, r[0].error_code().as_str()),
            (501, "unsupported_transfer_encoding"),
            "{te}"
        );
    }
    // A coding list that does not end in chunked cannot be framed at all: 400 (hyper).
    let r = exchange(
        gw.addr,
        b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    )
    .await;
    assert!(matches!(r[0].status, 400 | 501), "{r:?}");
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
}

// ---------------------------------------------------------------------------------------
// 6. The bare prefix.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_route_takes_its_bare_prefix_before_the_catch_all() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    let r = answers(gw.addr, b"GET /secure HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r[0].status, 401, "{r:?}");
    let r = answers(gw.addr, b"GET /securex HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(
        r[0].status, 200,
        "a longer segment is not the prefix: {r:?}"
    );
    assert_eq!(rec.paths(), ["/securex"]);
}

// ---------------------------------------------------------------------------------------
// What already held: framing.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_chunked_smuggles_nothing() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    // CL.TE: chunked wins and the connection is closed after the answer; what a
    // CL-reader would see as a second request is never one.
    let r = exchange(
        gw.addr,
        b"POST /clte HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(r.len(), 1, "one answer, then the connection closes: {r:?}");
    assert_eq!(r[0].header("connection"), Some("close"));
    // TE.CL: a chunk that holds a request is a body, not a request.
    let r = exchange(
        gw.addr,
        b"POST /tecl HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
          23\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.len(), 1, "{r:?}");
    let seen = rec.seen();
    assert!(!seen.iter().any(|s| s.path == "/smuggled"), "{seen:?}");
    let clte = seen.iter().find(|s| s.path == "/clte").expect("forwarded");
    assert_eq!(clte.body.as_deref().ok(), Some(&b""[..]));
    let tecl = seen.iter().find(|s| s.path == "/tecl").expect("forwarded");
    assert_eq!(
        tecl.body.as_deref().ok(),
        Some(&b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"[..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_content_lengths_are_refused() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    let r = exchange(
        gw.addr,
        b"POST /dup HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 30\r\n\r\nhelloGET /smuggled HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, 400);
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
}

#[tokio::test(flavor = "multi_thread")]
async fn obsolete_line_folding_is_refused() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    let r = exchange(
        gw.addr,
        b"GET /fold HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
    )
    .await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, 400);
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
}

#[tokio::test(flavor = "multi_thread")]
async fn nul_and_bare_cr_in_header_values_are_refused() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    for value in [&b"a\0b"[..], b"a\rb"] {
        let mut request = b"GET /ctl HTTP/1.1\r\nHost: a\r\nX-Bad: ".to_vec();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n\r\n");
        let r = exchange(gw.addr, &request).await;
        assert_eq!(r.len(), 1, "{value:?}: {r:?}");
        assert_eq!(r[0].status, 400, "{value:?}");
    }
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_headers_are_refused() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    let mut request = b"GET /many HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..10_000 {
        request.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let r = exchange(gw.addr, &request).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(matches!(r[0].status, 400 | 431), "{}", r[0].status);
    assert!(rec.paths().is_empty(), "{:?}", rec.paths());
}

#[tokio::test(flavor = "multi_thread")]
async fn framing_obfuscations_smuggle_nothing() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    // Each hides `GET /smuggled` in what one reading of its framing takes as the body and
    // another as the next request; `/end` follows on the same connection. The statuses
    // are those of every answer the connection got before it was closed.
    let hidden = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let cl = hidden.len();
    let cases: Vec<(&str, String, &[u16])> = vec![
        (
            "space before the colon of Transfer-Encoding",
            format!("POST /v HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\nTransfer-Encoding : chunked\r\n\r\n{hidden}"),
            &[400],
        ),
        (
            "a coding that only ends in `chunked`",
            format!("POST /v HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\nTransfer-Encoding: xchunked\r\n\r\n{hidden}"),
            &[400],
        ),
        (
            "two Transfer-Encoding lines, chunked first",
            format!("POST /v HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{hidden}"),
            &[400],
        ),
        (
            "a tab before chunked (valid whitespace: chunked, then closed)",
            format!("POST /v HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\nTransfer-Encoding:\tchunked\r\n\r\n{hidden}"),
            &[200],
        ),
        (
            "chunked in HTTP/1.0",
            format!("POST /v HTTP/1.0\r\nHost: a\r\nContent-Length: {cl}\r\nTransfer-Encoding: chunked\r\n\r\n{hidden}"),
            &[400],
        ),
        (
            "two lengths in one Content-Length",
            format!("POST /v HTTP/1.1\r\nHost: a\r\nContent-Length: 0, {cl}\r\n\r\n{hidden}"),
            &[400],
        ),
        (
            "a signed Content-Length",
            format!("POST /v HTTP/1.1\r\nHost: a\r\nContent-Length: +{cl}\r\n\r\n{hidden}"),
            &[400],
        ),
        (
            "a chunk size that overflows 64 bits",
            format!("POST /v HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n{hidden}"),
            &[400],
        ),
    ];
    for (what, request, want) in cases {
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(END);
        let got: Vec<u16> = exchange(gw.addr, &bytes)
            .await
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(got, want, "{what}");
    }
    let seen = rec.seen();
    assert!(!seen.iter().any(|s| s.path == "/smuggled"), "{seen:?}");
    // The one forwarded: chunked won, its body was empty.
    let forwarded: Vec<_> = seen.iter().filter(|s| s.path == "/v").collect();
    assert_eq!(forwarded.len(), 1, "{seen:?}");
    assert_eq!(forwarded[0].body.as_deref().ok(), Some(&b""[..]));
}

// ---------------------------------------------------------------------------------------
// What already held: HTTP/2 (raw frames; limits set in src/server/mod.rs).
// ---------------------------------------------------------------------------------------

/// The gateway answers a new connection after an attack (`/after` reaches the upstream).
async fn still_serving(gw: &Gateway) {
    let r = answers(gw.addr, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r[0].status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_rapid_reset_is_cut_off_and_the_gateway_keeps_serving() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    // CVE-2023-44487: streams opened and cancelled at once, in one burst.
    const STREAMS: u32 = 1000;
    let mut burst = Vec::new();
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        let head = hpack_get(&format!("/rr{i}"), "a");
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &head));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let mut s = h2_connection(gw.addr).await;
    // The gateway may close while the burst is still being written.
    let _ = s.write_all(&burst).await;
    let got = closed_by_gateway(&mut s).await;
    let (last, code) = goaway(&got).expect("GOAWAY before the close");
    assert_eq!(code, ENHANCE_YOUR_CALM, "GOAWAY after stream {last}");
    still_serving(&gw).await;
    // Cut off within the first tenth of the burst (after 20 resets, the limit), and
    // nothing past the GOAWAY's last stream reached the upstream.
    assert!(last < 2 * STREAMS / 10, "GOAWAY only after stream {last}");
    let reached = rec.paths().iter().filter(|p| p.starts_with("/rr")).count();
    assert!(
        reached <= (last as usize).div_ceil(2),
        "{reached} cancelled streams reached the upstream; GOAWAY after stream {last}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_continuation_flood_is_closed_with_memory_bounded() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "");
    let pid = gw.child.id();
    let before = rss_kib(pid);
    let s = h2_connection(gw.addr).await;
    let (mut rd, mut wr) = s.into_split();
    let reader = tokio::spawn(async move { closed_by_gateway(&mut rd).await });
    // A head that never ends: HEADERS without END_HEADERS, then CONTINUATION frames that
    // never carry it either, each one more (valid) header field.
    wr.write_all(&frame(HEADERS, END_STREAM, 1, &hpack_get("/flood", "a")))
        .await
        .unwrap();
    let batch = frame(CONTINUATION, 0, 1, &hpack_literal("x-c", "1")).repeat(1024);
    const MAX_BATCHES: usize = 1024; // a million frames, 13 MB
    let mut batches = 0;
    while batches < MAX_BATCHES && wr.write_all(&batch).await.is_ok() {
        batches += 1;
    }
    let got = reader.await.unwrap();
    assert!(
        batches < MAX_BATCHES,
        "the gateway took a million CONTINUATION frames without closing"
    );
    let (_, code) = goaway(&got).expect("GOAWAY before the close");
    assert_eq!(code, ENHANCE_YOUR_CALM);
    let after = rss_kib(pid);
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    still_serving(&gw).await;
    assert_eq!(rec.paths(), ["/after"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_header_lists_over_the_configured_limit_are_refused() {
    let rec = Recorder::start().await;
    let gw = hostile_gateway(&rec, "max_header_size = \"16KiB\"");
    // The limit is announced: SETTINGS_MAX_HEADER_LIST_SIZE (0x6) in the first SETTINGS.
    let mut raw = h2_connection(gw.addr).await;
    let settings = next_frame(&mut raw).await.expect("the gateway's SETTINGS");
    assert_eq!(settings.kind, SETTINGS);
    let announced = settings
        .payload
        .chunks(6)
        .find(|s| s[..2] == [0, 6])
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    assert_eq!(announced, Some(16 * 1024));
    drop(raw);

    // One 4000-byte field in the dynamic table, then references to it (h2's encoder
    // indexes a repeated field: one byte each on the wire): the decoded list counts.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let big = "b".repeat(4000);
    let mut send = |copies: usize| {
        let mut req = http::Request::get("http://a/bomb").header("x-copies", copies);
        for _ in 0..copies {
            req = req.header("x-b", &big);
        }
        let (resp, _) = h2c.send_request(req.body(()).unwrap(), true).unwrap();
        resp
    };
    // 3 copies, 12 KiB decoded: under the limit, forwarded.
    let resp = send(3).await.unwrap();
    assert_eq!(resp.status(), 200);
    // 5 copies, 20 KiB decoded: over it, refused with 431 by the HTTP/2 layer.
    let resp = send(5).await.unwrap();
    assert_eq!(resp.status(), 431);

    // The bomb, by hand (a client library may give up writing it when the gateway
    // closes): 8000 references, 32 MB decoded from 12 KB, in one HEADERS frame.
    let mut block = hpack_get("/bomb", "a");
    block.extend(hpack_literal_indexed("x-b", &big));
    block.extend(std::iter::repeat_n(HPACK_FIRST_DYNAMIC, 8000));
    let mut raw = h2_connection(gw.addr).await;
    let _ = raw
        .write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await;
    let got = closed_by_gateway(&mut raw).await;
    assert_eq!(goaway(&got).map(|g| g.1), Some(ENHANCE_YOUR_CALM));

    still_serving(&gw).await;
    let seen = rec.seen();
    let bombs: Vec<_> = seen.iter().filter(|s| s.path == "/bomb").collect();
    assert_eq!(bombs.len(), 1, "{seen:?}");
    assert_eq!(bombs[0].header("x-copies"), Some("3"));
    assert_eq!(bombs[0].headers.get_all("x-b").iter().count(), 3);
}

// ---------------------------------------------------------------------------------------
// `portcullis validate`: a route without auth that comes before an authenticated
// route's bare prefix.
// ---------------------------------------------------------------------------------------

#[test]
fn validate_warns_when_a_route_without_auth_takes_an_authenticated_bare_prefix() {
    let dir = TempDir::new();
    let head = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplugin_cache_dir = \"{}\"\n\n[[plugins]]\nname = \"api-key\"\npath = \"{}\"\n\n[[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"127.0.0.1:1\" }}]\n",
        std::env::temp_dir().join("portcullis-test-wasm-cache").display(),
        plugin("api-key"),
    );
    let keyed = "\n[[routes]]\nname = \"keyed\"\npath_prefix = \"/secure/\"\nhosts = [\"secure.example\"]\nupstream = \"up\"\nplugins = [ { name = \"api-key\", config = { keys = [ { key = \"k\", consumer = \"c\" } ] } } ]\n";
    // A catch-all comes after a longer prefix: no warning.
    let safe = dir.write(
        "safe.toml",
        &format!(
            "{head}\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n{keyed}"
        ),
    );
    let (ok, text) = validate(&safe);
    assert!(ok, "{text}");
    assert!(!text.contains("warning"), "{text}");
    // An exact route for the bare prefix, any host, without auth: it wins.
    let config = format!(
        "{head}{keyed}\n[[routes]]\nname = \"status\"\npath = \"/secure\"\nupstream = \"up\"\n"
    );
    let path = dir.write("shadowed.toml", &config);
    let (ok, text) = validate(&path);
    assert!(ok, "a warning is not an error: {text}");
    let line = config
        .lines()
        .position(|l| l == "name = \"status\"")
        .unwrap(); // the `[[routes]]` line above it, 1-based
    let want = format!(
        "warning: {}:{line}:1: route `status` (no auth plugin) takes GET /secure (Host secure.example) before route `keyed`",
        path.display()
    );
    assert!(text.contains(&want), "{want}\nnot in:\n{text}");
    assert!(text.contains("path_prefix = \"/secure/\""), "{text}");
    // The gateway logs it at start.
    let gw = Gateway::start_logging(&config, &[]);
    gw.wait_log(&[
        "WARN",
        "route `status` (no auth plugin)",
        "before route `keyed`",
    ]);
}
