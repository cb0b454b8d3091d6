//! Routing, path normalization and header handling through the real binary.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;

async fn two_upstreams() -> (Upstream, Upstream, Gateway) {
    let public = Upstream::echo("public").await;
    let admin = Upstream::echo("admin").await;
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "public"
targets = [ {{ address = "{}" }} ]

[[upstreams]]
name = "admin"
targets = [ {{ address = "{}" }} ]

[[routes]]
name = "admin-exact"
path = "/admin"
methods = ["GET"]
upstream = "admin"

[[routes]]
name = "admin-prefix"
path_prefix = "/admin/"
methods = ["GET", "DELETE"]
upstream = "admin"

[[routes]]
name = "api"
path_prefix = "/api"
strip_prefix = true
upstream = "public"

[[routes]]
name = "tenant"
path = "/tenant"
headers = {{ "x-tenant" = "acme" }}
query = {{ plan = "pro" }}
upstream = "admin"

[[routes]]
name = "vhost"
path = "/tenant"
hosts = ["*.example.test"]
preserve_host = true
upstream = "public"

[[routes]]
name = "rewrite"
path = "/rewrite"
host_rewrite = "models.internal"
upstream = "public"

[[routes]]
name = "models"
path_regex = "^/v[0-9]+/models"
upstream = "public"

[[routes]]
name = "public"
path_prefix = "/anything"
upstream = "public"
"#,
        public.addr, admin.addr
    );
    let gw = Gateway::start(&config);
    (public, admin, gw)
}

#[tokio::test]
async fn routes_by_path_method_host_header_query() {
    let (_p, _a, gw) = two_upstreams().await;
    let r = get(&gw.url("/admin")).await;
    assert_eq!(
        (r.status, r.json()["upstream"].as_str()),
        (200, Some("admin"))
    );
    let r = get(&gw.url("/admin/users")).await;
    assert_eq!(r.json()["upstream"], "admin");
    // Exact before prefix, longest prefix first, regex after prefixes.
    assert_eq!(
        get(&gw.url("/v2/models")).await.json()["upstream"],
        "public"
    );
    assert_eq!(get(&gw.url("/anything")).await.json()["upstream"], "public");
    // Header + query conditions.
    let c = client();
    let r = send(
        &c,
        req("GET", &gw.url("/tenant?plan=pro"))
            .header("x-tenant", "acme")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["upstream"], "admin");
    let r = send(
        &c,
        req("GET", &gw.url("/tenant?plan=free"))
            .header("x-tenant", "acme")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.status, 404,
        "no route: query does not match and host does not either"
    );
    assert_eq!(r.error_code(), "route_not_found");
    // Host wildcard; preserve_host sends the client's Host.
    let r = send(
        &c,
        req("GET", &gw.url("/tenant"))
            .header("host", "eu.example.test")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let j = r.json();
    assert_eq!(j["upstream"], "public");
    assert_eq!(j["headers"]["host"], "eu.example.test");
    // Default host policy: the target's address; host_rewrite: the given name.
    let j = get(&gw.url("/anything")).await.json();
    assert_eq!(
        j["headers"]["host"].as_str(),
        Some(_p.addr.to_string().as_str())
    );
    assert_eq!(
        get(&gw.url("/rewrite")).await.json()["headers"]["host"],
        "models.internal"
    );
}

#[tokio::test]
async fn method_not_allowed_and_not_found_are_json() {
    let (_p, _a, gw) = two_upstreams().await;
    let c = client();
    let r = send(
        &c,
        req("POST", &gw.url("/admin/users"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, DELETE"));
    let j = r.json();
    assert_eq!(j["error"]["code"], "method_not_allowed");
    assert_eq!(j["error"]["request_id"].as_str(), r.header("x-request-id"));
}

#[tokio::test]
async fn strip_prefix_and_query_are_forwarded() {
    let (_p, _a, gw) = two_upstreams().await;
    let j = get(&gw.url("/api/v1/items?limit=5&q=a%20b")).await.json();
    assert_eq!(j["path"], "/v1/items");
    assert_eq!(j["query"], "limit=5&q=a%20b");
    assert_eq!(get(&gw.url("/api")).await.json()["path"], "/");
}

/// Sends a request with a raw, unnormalized request target over a plain socket.
async fn raw_get(addr: std::net::SocketAddr, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test]
async fn unnormalized_paths_are_matched_and_forwarded_normalized() {
    let (_p, _a, gw) = two_upstreams().await;
    // Each spelling reaches the admin route (with its method rule), never the catch-all.
    for target in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/%2E%2e/admin",
        "//admin",
        "/./admin",
        "/adm%69n",
    ] {
        let (status, body) = raw_get(gw.addr, target).await;
        assert_eq!(status, 200, "{target}: {body}");
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["upstream"], "admin", "{target}");
        assert_eq!(j["path"], "/admin", "{target} is forwarded normalized");
    }
    // The admin route's method rule applies to every spelling.
    let c = client();
    let r = send(
        &c,
        req("POST", &format!("http://{}/x/..//admin", gw.addr))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 405);
    // Encoded slash, NUL and broken escapes are refused with 400.
    for target in ["/admin%2fusers", "/a%00b", "/a%zz", "/a%5Cb"] {
        let (status, body) = raw_get(gw.addr, target).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains("\"code\":\"bad_path\""), "{body}");
    }
}

#[tokio::test]
async fn hop_by_hop_forwarded_and_request_id_headers() {
    let (_p, _a, gw) = two_upstreams().await;
    let c = client();
    let r = send(
        &c,
        req("GET", &gw.url("/anything"))
            .header("connection", "x-hop")
            .header("x-hop", "secret")
            .header("keep-alive", "timeout=1")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("te", "trailers, deflate")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-kept", "yes")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let j = r.json();
    let h = &j["headers"];
    for gone in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's XFF is replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.addr.to_string());
    let rid = r
        .header("x-request-id")
        .expect("request id echoed")
        .to_string();
    assert_eq!(
        h["x-request-id"].as_str(),
        Some(rid.as_str()),
        "the upstream sees the same id"
    );
    assert_eq!(rid.len(), 32);
    // Response hop-by-hop headers are stripped too.
    assert!(r.header("x-upstream-secret").is_none());
    assert!(r.header("keep-alive").is_none());
    assert_eq!(r.header("x-upstream"), Some("public"));
    // A client-supplied request id is kept.
    let r = send(
        &c,
        req("GET", &gw.url("/anything"))
            .header("x-request-id", "abc-42")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("abc-42"));
    assert_eq!(r.json()["headers"]["x-request-id"], "abc-42");
}

#[tokio::test]
async fn trusted_forwarded_chain_is_appended() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(
        &config(
            "",
            &[up.addr],
            "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n",
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\ntrust_forwarded_headers = true",
        ),
    );
    let r = send(
        &client(),
        req("GET", &gw.url("/"))
            .header("x-forwarded-for", "10.1.2.3")
            .header("x-forwarded-proto", "https")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let j = r.json();
    assert_eq!(j["headers"]["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(j["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn h2c_and_http1_on_the_same_port_and_bodies_pass() {
    let (_p, _a, gw) = two_upstreams().await;
    let h2 = h2_client();
    let r = send(
        &h2,
        req("POST", &gw.url("/anything"))
            .body(Full::new(Bytes::from_static(b"hello over h2")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["body"], "hello over h2");
    assert_eq!(j["version"], "HTTP/1.1", "an HTTP/1 upstream gets HTTP/1.1");
    let r = send(
        &client(),
        req("POST", &gw.url("/anything"))
            .body(Full::new(Bytes::from_static(b"hello over h1")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["body"], "hello over h1");
}

#[tokio::test]
async fn keep_alive_reuses_the_client_connection() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (_p, _a, gw) = two_upstreams().await;
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut s = BufReader::new(s);
    for i in 0..3 {
        s.get_mut()
            .write_all(format!("GET /anything/n{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut len = 0usize;
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        loop {
            line.clear();
            s.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        s.read_exact(&mut body).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains(&format!("\"/anything/n{i}\"")));
    }
}

/// A raw HTTP/1.1 upstream that counts the connections it accepted and those that ended:
/// `/small` answers 5 bytes, `/empty` 204, `/close` answers and then closes the connection
/// (without saying so), `/big` sends a 4 MB body slowly enough to be cut, `/hang` never
/// answers, `/slow` answers after 1.5 s; the other paths
/// are the response framings of `upstream_response_framings_are_read_exactly`, and
/// `/drop-next` answers and then closes the connection when the next request comes on it.
struct CountingUpstream {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ended: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingUpstream {
    async fn start() -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (accepted, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, e) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let e = e.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut drop_next = false;
                    'conn: loop {
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => break 'conn,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                        buf.drain(..head_end);
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        if drop_next {
                            break;
                        }
                        drop_next = path == "/drop-next";
                        let ok = match path.as_str() {
                            _ if head.starts_with("HEAD ") => {
                                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                                    .await
                            }
                            "/empty" => s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await,
                            "/chunked" => s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n").await,
                            "/continue" => s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await,
                            "/te-and-cl" => s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await,
                            "/http10" => s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await,
                            "/extra" => s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforgd").await,
                            "/until-close" => s.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it").await,
                            "/two-lengths" => s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc").await,
                            "/reason" => s.write_all(b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\n\r\nok").await,
                            "/hang" => std::future::pending().await,
                            "/slow" => {
                                tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow").await
                            }
                            "/short" => s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await,
                            "/big" => {
                                let n = 4 << 20;
                                let hd = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                                let mut r = s.write_all(hd.as_bytes()).await;
                                for _ in 0..n / 16384 {
                                    if r.is_err() {
                                        break;
                                    }
                                    r = s.write_all(&[b'x'; 16384]).await;
                                }
                                r
                            }
                            _ => {
                                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                                    .await
                            }
                        };
                        if ok.is_err()
                            || matches!(path.as_str(), "/close" | "/until-close" | "/short")
                        {
                            break;
                        }
                    }
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        CountingUpstream {
            addr,
            accepted,
            ended,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn one_worker_gateway(up: &CountingUpstream, upstream_extra: &str) -> Gateway {
    let text = config(
        upstream_extra,
        &[up.addr],
        "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n",
    )
    .replacen("[server]\n", "[server]\nworkers = 1\n", 1);
    Gateway::start(&text)
}

#[tokio::test]
async fn upstream_connections_are_reused_once_their_response_is_read() {
    let up = CountingUpstream::start().await;
    let gw = one_worker_gateway(&up, "");
    for i in 0..10 {
        let r = get(&gw.url("/small")).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]), "request {i}");
    }
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/empty")).await.status, 204);
        let r = send(
            &client(),
            req("HEAD", &gw.url("/small"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        up.accepted(),
        1,
        "every request went on the one pooled connection"
    );
}

/// The own client bounds an exchange with its pooled connection's timer, kept from one
/// request to the next and moved only when needed. A request with a shorter timeout than
/// the one before it on the connection (whose timer is set later) still times out at its
/// own; a request with a longer one (the timer, set for the earlier request's deadline,
/// fires first) is not cut at the earlier deadline.
#[tokio::test]
async fn a_pooled_upstream_connection_times_each_request_out_at_its_own_deadline() {
    let up = CountingUpstream::start().await;
    let routes = "[[routes]]\nname = \"hang\"\npath_prefix = \"/hang\"\nupstream = \"up\"\nrequest_timeout = \"300ms\"\n\n\
                  [[routes]]\nname = \"slow\"\npath_prefix = \"/slow\"\nupstream = \"up\"\nrequest_timeout = \"5s\"\n\n\
                  [[routes]]\nname = \"long\"\npath_prefix = \"/long\"\nupstream = \"up\"\nrequest_timeout = \"60s\"\n\n\
                  [[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n";
    let text = config("request_timeout = \"1s\"", &[up.addr], routes).replacen(
        "[server]\n",
        "[server]\nworkers = 1\n",
        1,
    );
    let gw = Gateway::start(&text);
    // A 60 s request leaves its connection's timer set for its deadline...
    assert_eq!(get(&gw.url("/long")).await.status, 200);
    // ...and a 300 ms one on the same connection is cut at 300 ms, not then.
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), get(&gw.url("/hang")))
        .await
        .expect("the request was not timed out at its own deadline");
    assert_eq!(
        (r.status, r.error_code()),
        (504, "upstream_timeout".to_string())
    );
    assert_eq!(
        up.accepted(),
        1,
        "the second request went on the pooled connection"
    );
    // A 1 s request on a new connection, then a 5 s one on it answered after 1.5 s: the
    // timer fires at the first one's deadline and is moved on.
    assert_eq!(get(&gw.url("/small")).await.status, 200);
    let r = get(&gw.url("/slow")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"slow"[..]));
    assert_eq!(
        up.accepted(),
        2,
        "the slow request went on the pooled connection"
    );
}

#[tokio::test]
async fn a_closed_or_cut_upstream_connection_is_not_reused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = CountingUpstream::start().await;
    let gw = one_worker_gateway(&up, "");
    // The upstream closes its connection after answering, without saying so.
    assert_eq!(get(&gw.url("/close")).await.status, 200);
    wait_until("the upstream closed", Duration::from_secs(10), || {
        up.ended() == 1
    })
    .await;
    let r = get(&gw.url("/small")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    assert_eq!(up.accepted(), 2);
    // A client that goes away part-way through a body: that upstream connection still
    // has body bytes in it and must not carry the next request.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let n = s.read(&mut first).await.unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    drop(s);
    wait_until("the cut connection closed", Duration::from_secs(10), || {
        up.ended() == 2
    })
    .await;
    let r = get(&gw.url("/small")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    assert_eq!(
        up.accepted(),
        3,
        "a new connection for the request after the cut one"
    );
}

#[tokio::test]
async fn idle_upstream_connections_close_after_pool_idle_timeout() {
    let up = CountingUpstream::start().await;
    let gw = one_worker_gateway(&up, "pool_idle_timeout = \"1s\"");
    assert_eq!(get(&gw.url("/small")).await.status, 200);
    assert_eq!(up.accepted(), 1);
    wait_until(
        "the idle connection closed",
        Duration::from_secs(10),
        || up.ended() == 1,
    )
    .await;
    assert_eq!(get(&gw.url("/small")).await.status, 200);
    assert_eq!(up.accepted(), 2);
}

/// The gateway's own HTTP/1.1 client (`upstream::h1`) reads each framing of RFC 9112 §6.3
/// to its exact end, and reuses a connection only when nothing can be left in it.
#[tokio::test]
async fn upstream_response_framings_are_read_exactly() {
    let up = CountingUpstream::start().await;
    let gw = one_worker_gateway(&up, "");
    let text = |r: &Reply| String::from_utf8_lossy(&r.body).to_string();
    // Chunked (an extension, trailers) and an interim 100 before the answer: read to their
    // end, the one connection carries them all.
    for _ in 0..2 {
        let r = get(&gw.url("/chunked")).await;
        assert_eq!((r.status, text(&r)), (200, "hello world".into()));
        let r = get(&gw.url("/continue")).await;
        assert_eq!((r.status, text(&r)), (200, "ok".into()));
    }
    assert_eq!(up.accepted(), 1);
    // Each of these leaves the connection unfit for another request: the next one goes
    // on a new connection and gets its own answer.
    for (path, body) in [
        ("/te-and-cl", "hello"),
        ("/http10", "ok"),
        ("/extra", "ok"),
        ("/until-close", "all of it"),
    ] {
        let before = up.accepted();
        let r = get(&gw.url(path)).await;
        assert_eq!((r.status, text(&r)), (200, body.into()), "{path}");
        if path == "/te-and-cl" {
            assert_eq!(
                r.header("content-length"),
                None,
                "the overridden length is not passed on"
            );
        }
        let r = get(&gw.url("/small")).await;
        assert_eq!((r.status, text(&r)), (200, "hello".into()), "after {path}");
        assert_eq!(up.accepted(), before + 1, "after {path}");
    }
    // Two lengths that disagree: no response to pass on.
    let r = get(&gw.url("/two-lengths")).await;
    assert_eq!(r.status, 502, "{}", text(&r));
    let r = get(&gw.url("/small")).await;
    assert_eq!((r.status, text(&r)), (200, "hello".into()));
}

/// A reason phrase of the upstream's own reaches the client; a body cut short of its
/// length is never a complete response for the client (hyper may abort before it has
/// written the head: the client then sees the connection close with nothing).
#[tokio::test]
async fn an_upstream_reason_phrase_passes_and_a_short_body_stays_short() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = CountingUpstream::start().await;
    let gw = one_worker_gateway(&up, "");
    let fetch = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        String::from_utf8_lossy(&got).to_string()
    };
    let got = fetch("/reason").await;
    assert!(got.starts_with("HTTP/1.1 200 Fine Thanks\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\nok"), "{got}");
    let got = fetch("/short").await;
    if !got.is_empty() {
        let (head, body) = got.split_once("\r\n\r\n").unwrap_or((&got, ""));
        assert!(
            head.to_ascii_lowercase().contains("content-length: 10"),
            "{got}"
        );
        assert!(body.len() < 10, "{got}");
    }
}

/// An upstream that closes a kept-alive connection just as the next request goes on it
/// (the close and the request crossed): the gateway's own client sends an idempotent
/// request again on a new connection, and the endpoint is not blamed for it.
#[tokio::test]
async fn a_request_that_meets_a_closing_upstream_connection_goes_again() {
    let up = CountingUpstream::start().await;
    let text = config(
        "",
        &[up.addr],
        "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n",
    )
    .replacen(
        "[server]\n",
        "[server]\nworkers = 1\nadmin_listen = \"127.0.0.1:0\"\n",
        1,
    );
    let gw = Gateway::start(&text);
    assert_eq!(get(&gw.url("/drop-next")).await.status, 200);
    let r = get(&gw.url("/small")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    assert_eq!(
        up.accepted(),
        2,
        "the second request went on a new connection"
    );
    let reset = format!(
        "portcullis_upstream_errors_total{{endpoint=\"{}\",kind=\"reset\"",
        up.addr
    );
    assert_eq!(metric(&gw, &reset).await, 0.0);
}

/// A raw upstream that sends each request it received, whole (head and body as they
/// came on the wire), on `tx` and answers `200 ok` — or, for `/early`, answers 413 as
/// soon as the head is in, without reading the body; for `/continue-first` it answers
/// `100 Continue` as soon as the head is in (and says `sent 100` on `tx`).
async fn recording_upstream(
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut continued = false;
                loop {
                    let mut b = [0u8; 16384];
                    let n = match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    got.extend_from_slice(&b[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    let Some(head_end) = text.find("\r\n\r\n").map(|i| i + 4) else {
                        continue;
                    };
                    let head = text[..head_end].to_ascii_lowercase();
                    if head.starts_with("post /continue-first") && !continued {
                        continued = true;
                        if s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                            return;
                        }
                        let _ = tx.send("sent 100".into());
                    }
                    if head.starts_with("post /early") {
                        let _ = s
                            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
                            .await;
                        let _ = tx.send(head);
                        return;
                    }
                    let body = &text[head_end..];
                    let complete = match head.split("content-length: ").nth(1) {
                        Some(v) => {
                            body.len() >= v.split("\r\n").next().unwrap().parse::<usize>().unwrap()
                        }
                        None if head.contains("transfer-encoding: chunked") => {
                            body.find("\r\n0\r\n")
                                .is_some_and(|i| body[i..].ends_with("\r\n\r\n"))
                                || body.starts_with("0\r\n") && body.ends_with("\r\n\r\n")
                        }
                        None => true,
                    };
                    if complete {
                        let _ = tx.send(text.clone());
                        got.clear();
                        continued = false;
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Reads from `s` until an answer whose body is `ok` is in.
async fn read_ok(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    while !String::from_utf8_lossy(&buf).contains("\r\n\r\nok") {
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&buf).to_string()
}

/// A streamed request body goes upstream as it came: under the client's length, or
/// chunked (its trailers too) when it had none; an upstream that answers before the body
/// is all sent ends the sending, and its answer reaches the client.
#[tokio::test]
async fn streamed_request_bodies_are_framed_for_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let up = recording_upstream(tx).await;
    let text = config(
        "",
        &[up],
        "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n",
    )
    .replacen("[server]\n", "[server]\nworkers = 1\n", 1);
    let gw = Gateway::start(&text);
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // Chunked, with a trailer, sent in two pieces.
    s.write_all(
        b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    s.write_all(b"6\r\n world\r\n0\r\nx-t: 1\r\n\r\n")
        .await
        .unwrap();
    assert!(read_ok(&mut s).await.starts_with("HTTP/1.1 200"));
    let got = rx.recv().await.unwrap();
    let (head, body) = got.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("POST /chunked HTTP/1.1\r\n"), "{got}");
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{got}");
    assert!(!head.contains("content-length"), "{got}");
    let data: String = body
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .take_while(|c| c[0] != "0")
        .map(|c| c[1])
        .collect();
    assert_eq!(data, "hello world", "{got}");
    assert!(
        body.contains("\r\n0\r\nx-t: 1\r\n\r\n"),
        "the trailer went too: {got}"
    );
    // Under the client's length: the same length, the bytes as they came.
    s.write_all(b"POST /length HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello")
        .await
        .unwrap();
    s.write_all(b" world").await.unwrap();
    assert!(read_ok(&mut s).await.starts_with("HTTP/1.1 200"));
    let got = rx.recv().await.unwrap();
    let (head, body) = got.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("\r\ncontent-length: 11"), "{got}");
    assert!(!head.contains("transfer-encoding"), "{got}");
    assert_eq!(body, "hello world");
    // An interim 100 while the body is still coming: taken, and the body goes on.
    s.write_all(b"POST /continue-first HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello")
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap(), "sent 100");
    s.write_all(b" world").await.unwrap();
    let answer = read_ok(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let got = rx.recv().await.unwrap();
    assert!(got.ends_with("\r\n\r\nhello world"), "{got}");
    // An early answer: the client has sent 1 KB of its 1 MB.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 1000]).await.unwrap();
    let mut answer = [0u8; 12];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
    assert!(rx.recv().await.unwrap().starts_with("post /early"));
}
