//! Circuit breakers, health checks, outlier detection and retries through the real
//! binary, against real upstream servers that are killed and restarted.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A replica on its own thread and runtime: [`Replica::kill`] drops the runtime, which
/// closes the listener *and* every open connection, as a crashed process would.
struct Replica {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Handler = Arc<
    dyn Fn(
            http::Request<Incoming>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = http::Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

impl Replica {
    fn echo(name: &'static str) -> Replica {
        Self::start("127.0.0.1:0".parse().unwrap(), echo_handler(name))
    }

    /// Serves `handler` on `addr` (port 0: any free port), counting requests.
    fn start(addr: SocketAddr, handler: Handler) -> Replica {
        let hits = Arc::new(AtomicUsize::new(0));
        Self::start_counting(addr, handler, hits)
    }

    fn start_counting(addr: SocketAddr, handler: Handler, hits: Arc<AtomicUsize>) -> Replica {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let h = hits.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let counted = move |req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    handler(req)
                };
                let _server = Upstream::serve(listener, counted);
                let _ = stop_rx.await;
            });
            // Dropping the runtime aborts every connection task: sockets close.
            drop(rt);
        });
        Replica {
            addr: addr_rx.recv().unwrap(),
            hits,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Starts again on the same port, keeping the hit counter.
    fn restart(&mut self, handler: Handler) {
        self.kill();
        *self = Self::start_counting(self.addr, handler, self.hits.clone());
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn echo_handler(name: &'static str) -> Handler {
    Arc::new(move |req| Box::pin(echo_response(name, req)))
}

fn status_handler(status: u16) -> Handler {
    Arc::new(move |_req| {
        Box::pin(async move {
            http::Response::builder()
                .status(status)
                .body(full("failing"))
                .unwrap()
        })
    })
}

/// One upstream `up` over `targets` with `sections` (TOML sub-tables of the upstream)
/// and a catch-all route.
fn gateway_config(upstream_keys: &str, targets: &[SocketAddr], sections: &str) -> String {
    let t: Vec<String> = targets
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n\n[[upstreams]]\nname = \"up\"\n{upstream_keys}\ntargets = [{}]\n{sections}\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n",
        t.join(", ")
    )
}

/// Sends `n` sequential GETs and returns their statuses.
async fn gets(c: &HttpClient, gw: &Gateway, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            send(c, req("GET", &gw.url("/")).body(Full::default()).unwrap())
                .await
                .status,
        );
    }
    out
}

fn failures(statuses: &[u16]) -> usize {
    statuses.iter().filter(|&&s| s != 200).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_a_killed_replica_costs_no_get_and_comes_back_after_a_probe() {
    let (a, mut b, c) = (Replica::echo("a"), Replica::echo("b"), Replica::echo("c"));
    let gw = Gateway::start_logging(
        &gateway_config(
            "",
            &[a.addr, b.addr, c.addr],
            "[upstreams.circuit_breaker]\nconsecutive_failures = 2\nopen_time = \"300ms\"\nmax_open_time = \"300ms\"\njitter = 0.0\n\
             [upstreams.retry]\nattempts = 3\nbackoff = \"0ms\"\n",
        ),
        &[],
    );
    // Steady traffic from four concurrent clients while b is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, url) = (stop.clone(), gw.url("/"));
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                statuses.push(
                    send(&c, req("GET", &url).body(Full::default()).unwrap())
                        .await
                        .status,
                );
            }
            statuses
        }));
    }
    // Let b serve some traffic first, then kill it mid-stream.
    wait_until("b served 20 requests", WAIT, || b.hits() >= 20).await;
    b.kill();
    gw.wait_log(&["circuit breaker opened", &b.addr.to_string()]);
    let before_restart = a.hits() + c.hits();
    wait_until("a and c served 100 more", WAIT, || {
        a.hits() + c.hits() >= before_restart + 100
    })
    .await;
    // Restarted: after the open time a probe succeeds and b takes traffic again.
    let b_hits = b.hits();
    b.restart(echo_handler("b"));
    gw.wait_log(&["circuit breaker closed", &b.addr.to_string()]);
    wait_until("b serves again", WAIT, || b.hits() >= b_hits + 20).await;
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for t in clients {
        all.extend(t.await.unwrap());
    }
    assert!(all.len() > 200, "{} requests", all.len());
    assert_eq!(
        failures(&all),
        0,
        "a GET failed while a replica died: {:?}",
        all.iter().filter(|&&s| s != 200).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn without_retries_failures_stop_once_the_breaker_opens() {
    let (a, mut b, c) = (Replica::echo("a"), Replica::echo("b"), Replica::echo("c"));
    let gw = Gateway::start_logging(
        &gateway_config(
            "",
            &[a.addr, b.addr, c.addr],
            "[upstreams.circuit_breaker]\nconsecutive_failures = 3\nopen_time = \"60s\"\njitter = 0.0\n\
             [upstreams.retry]\nenabled = false\n",
        ),
        &[],
    );
    let cl = client();
    assert_eq!(failures(&gets(&cl, &gw, 30).await), 0);
    assert!(b.hits() > 0);
    b.kill();
    let statuses = gets(&cl, &gw, 60).await;
    let failed = failures(&statuses);
    assert!(
        (1..=3).contains(&failed),
        "failures are bounded by consecutive_failures = 3, got {failed}: {statuses:?}"
    );
    // The failures all came before the breaker opened; nothing fails after.
    let last_failure = statuses.iter().rposition(|&s| s != 200).unwrap();
    assert!(last_failure < 10, "{statuses:?}");
    gw.wait_log(&[
        "circuit breaker opened",
        &b.addr.to_string(),
        "3 consecutive failures",
    ]);
}

#[tokio::test]
async fn a_hanging_upstream_gets_504_at_the_timeout_and_the_breaker_counts_it() {
    // Accepts connections and never answers.
    let hang: Handler = Arc::new(|_req| Box::pin(std::future::pending()));
    let slow = Replica::start("127.0.0.1:0".parse().unwrap(), hang);
    let gw = Gateway::start_logging(
        &gateway_config(
            "request_timeout = \"300ms\"",
            &[slow.addr],
            "[upstreams.circuit_breaker]\nconsecutive_failures = 2\nopen_time = \"60s\"\njitter = 0.0\n",
        ),
        &[],
    );
    let cl = client();
    for _ in 0..2 {
        let r = send(&cl, req("GET", &gw.url("/")).body(Full::default()).unwrap()).await;
        assert_eq!(r.status, 504);
        assert_eq!(r.error_code(), "upstream_timeout");
    }
    gw.wait_log(&["circuit breaker opened", "2 consecutive failures"]);
    let r = send(&cl, req("GET", &gw.url("/")).body(Full::default()).unwrap()).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "no_healthy_endpoint");
    assert_eq!(
        slow.hits(),
        2,
        "the open breaker kept the third request away"
    );
}

#[tokio::test]
async fn all_replicas_down_answers_503_at_once_once_breakers_are_open() {
    let (_l1, _f1, a) = black_hole().await;
    let (_l2, _f2, b) = black_hole().await;
    let connect_timeout = Duration::from_secs(2);
    let gw = Gateway::start_logging(
        &gateway_config(
            "connect_timeout = \"2s\"",
            &[a, b],
            "[upstreams.circuit_breaker]\nconsecutive_failures = 1\nopen_time = \"60s\"\njitter = 0.0\n\
             [upstreams.retry]\nenabled = false\n",
        ),
        &[],
    );
    let cl = client();
    // One connect timeout per replica opens both breakers.
    for _ in 0..2 {
        let r = send(&cl, req("GET", &gw.url("/")).body(Full::default()).unwrap()).await;
        assert_eq!(r.error_code(), "upstream_connect_timeout");
    }
    let started = Instant::now();
    let r = send(&cl, req("GET", &gw.url("/")).body(Full::default()).unwrap()).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "no_healthy_endpoint");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`up`"),
        "{:?}",
        r.body
    );
    // Fail-fast means no connect attempt at all: far below the 2 s connect timeout.
    assert!(took < connect_timeout / 2, "503 took {took:?}");
}

/// Reads the whole request body, then drops the connection without answering.
fn read_then_reset() -> Handler {
    Arc::new(|req: http::Request<Incoming>| {
        Box::pin(async move {
            let _ = req.into_body().collect().await;
            // Panicking in the service makes hyper drop the connection: a reset after the
            // request was sent.
            panic!("replica crashes after reading the request");
        })
    })
}

#[tokio::test]
async fn a_post_is_never_retried_after_its_body_was_sent_but_a_get_is() {
    let crash = Replica::start("127.0.0.1:0".parse().unwrap(), read_then_reset());
    let good = Replica::echo("good");
    // Round robin starts at the first target: the crashing one.
    let gw = Gateway::start(&gateway_config(
        "",
        &[crash.addr, good.addr],
        "[upstreams.retry]\nattempts = 3\nbackoff = \"0ms\"\non = [\"connect\", \"reset\", \"timeout\", \"5xx\"]\n",
    ));
    let cl = client();
    let mut post_failed = 0;
    let mut get_ok = 0;
    // Methods repeat every 3 requests and round robin every 2, so both methods meet the
    // crashing replica.
    for i in 0..9 {
        let crash_before = crash.hits();
        let good_before = good.hits();
        let method = if i % 3 == 0 { "POST" } else { "GET" };
        let r = send(
            &cl,
            // A GET without a body can be sent again; the POST's streamed body cannot.
            req(method, &gw.url("/v1/models?x=1"))
                .header("x-model-hint", "m1")
                .body(Full::new(if method == "POST" {
                    Bytes::from_static(b"payload")
                } else {
                    Bytes::new()
                }))
                .unwrap(),
        )
        .await;
        if crash.hits() > crash_before {
            if method == "POST" {
                assert_eq!(
                    r.status, 502,
                    "a POST that reached the crashing replica fails"
                );
                assert_eq!(good.hits(), good_before, "and was not sent again");
                post_failed += 1;
            } else {
                assert_eq!(r.status, 200, "a GET is retried on the other replica");
                assert_eq!(good.hits(), good_before + 1);
                // The head the first try sent (read where it was, not copied) goes
                // again whole: the target, the client's headers, the gateway's once.
                let j = r.json();
                assert_eq!(j["path"], "/v1/models");
                assert_eq!(j["query"], "x=1");
                assert_eq!(j["headers"]["x-model-hint"], "m1");
                assert!(j["headers"]["x-request-id"].is_string(), "{j}");
                assert_eq!(j["headers"]["x-forwarded-for"], "127.0.0.1", "{j}");
                get_ok += 1;
            }
        }
    }
    assert!(
        post_failed > 0 && get_ok > 0,
        "post_failed {post_failed}, get_ok {get_ok}"
    );
}

#[tokio::test]
async fn a_post_is_retried_when_the_connection_was_never_made() {
    // A port nobody listens on: connect is refused before anything is sent.
    let dead = closed_addr();
    let good = Replica::echo("good");
    let gw = Gateway::start(&gateway_config(
        "",
        &[dead, good.addr],
        "[upstreams.retry]\nattempts = 2\nbackoff = \"0ms\"\n",
    ));
    let cl = client();
    for _ in 0..4 {
        let r = send(
            &cl,
            req("POST", &gw.url("/v1/chat/completions?x=1"))
                .header("x-model-hint", "m1")
                .body(Full::new(Bytes::from_static(b"streamed body")))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let j = r.json();
        assert_eq!(j["body"], "streamed body", "the body survives the retry");
        // The refused try's head is sent again (not a copy made beforehand): the same
        // method, target and headers, with the gateway's own headers once.
        assert_eq!(j["method"], "POST");
        assert_eq!(j["path"], "/v1/chat/completions");
        assert_eq!(j["query"], "x=1");
        assert_eq!(j["headers"]["x-model-hint"], "m1");
        assert!(j["headers"]["x-request-id"].is_string(), "{j}");
        assert!(j["headers"]["x-forwarded-for"].is_string(), "{j}");
    }
    assert_eq!(good.hits(), 4);
}

#[tokio::test]
async fn the_retry_budget_caps_retries_in_an_outage() {
    let (a, b) = (
        Replica::start("127.0.0.1:0".parse().unwrap(), status_handler(503)),
        Replica::start("127.0.0.1:0".parse().unwrap(), status_handler(503)),
    );
    let gw = Gateway::start(&gateway_config(
        "",
        &[a.addr, b.addr],
        "[upstreams.retry]\nattempts = 5\nbackoff = \"0ms\"\nbudget_percent = 20.0\nbudget_min_per_second = 0\nbudget_window = \"60s\"\n",
    ));
    let cl = client();
    let n = 100;
    let statuses = gets(&cl, &gw, n).await;
    assert!(statuses.iter().all(|&s| s == 503));
    let tries = a.hits() + b.hits();
    // Without a budget this would be 5 tries per request (500).
    assert!(tries > n, "retries happened: {tries}");
    assert!(
        tries <= n + n / 5 + 1,
        "retries are at most 20% of requests: {tries} tries for {n}"
    );
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_replica_but_never_too_many() {
    let good = Replica::echo("good");
    let bad1 = Replica::start("127.0.0.1:0".parse().unwrap(), status_handler(502));
    let bad2 = Replica::start("127.0.0.1:0".parse().unwrap(), status_handler(500));
    let gw = Gateway::start_logging(
        &gateway_config(
            "",
            &[good.addr, bad1.addr, bad2.addr],
            "[upstreams.outlier_detection]\nconsecutive_5xx = 3\nconsecutive_gateway_errors = 3\nbase_ejection_time = \"60s\"\nmax_ejection_percent = 34\n",
        ),
        &[],
    );
    let cl = client();
    gets(&cl, &gw, 30).await;
    let line = gw.wait_log(&["outlier ejected"]);
    assert!(line.contains("consecutive"), "{line}");
    gw.wait_log(&["outlier not ejected: max_ejection_percent reached"]);
    // One bad replica is out; the other stays (34% of 3 allows one ejection).
    let (h1, h2) = (bad1.hits(), bad2.hits());
    gets(&cl, &gw, 30).await;
    let moved = [(bad1.hits() - h1), (bad2.hits() - h2)];
    assert!(moved.contains(&0), "one bad replica is ejected: {moved:?}");
    assert!(
        moved.iter().any(|&m| m > 0),
        "the other is kept by max_ejection_percent: {moved:?}"
    );
}

#[tokio::test]
async fn health_checks_take_an_endpoint_out_and_bring_it_back() {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let checked: Handler = Arc::new(move |req: http::Request<Incoming>| {
        let ok = flag.load(Ordering::SeqCst);
        Box::pin(async move {
            if req.uri().path() == "/healthz" {
                let status = if ok { 200 } else { 503 };
                http::Response::builder()
                    .status(status)
                    .body(full(""))
                    .unwrap()
            } else {
                echo_response("checked", req).await
            }
        })
    });
    let checked = Replica::start("127.0.0.1:0".parse().unwrap(), checked);
    let other = Replica::echo("other");
    let gw = Gateway::start_logging(
        &gateway_config(
            "",
            &[checked.addr, other.addr],
            "[upstreams.health_check]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n",
        ),
        &[],
    );
    let cl = client();
    let statuses = gets(&cl, &gw, 10).await;
    assert_eq!(failures(&statuses), 0);
    let upstream_of = |r: &Reply| r.json()["upstream"].as_str().unwrap().to_string();
    healthy.store(false, Ordering::SeqCst);
    gw.wait_log(&[
        "health check: endpoint unhealthy",
        &checked.addr.to_string(),
        "status 503",
    ]);
    for _ in 0..10 {
        let r = send(&cl, req("GET", &gw.url("/")).body(Full::default()).unwrap()).await;
        assert_eq!(upstream_of(&r), "other");
    }
    healthy.store(true, Ordering::SeqCst);
    gw.wait_log(&[
        "health check: endpoint healthy again",
        &checked.addr.to_string(),
    ]);
    let mut seen = Vec::new();
    for _ in 0..10 {
        let r = send(&cl, req("GET", &gw.url("/")).body(Full::default()).unwrap()).await;
        seen.push(upstream_of(&r));
    }
    assert!(seen.iter().any(|u| u == "checked"), "{seen:?}");
}

#[tokio::test]
async fn tcp_health_check_marks_a_dead_port_unhealthy() {
    let other = Replica::echo("other");
    let mut gone = Replica::echo("gone");
    let gone_addr = gone.addr;
    gone.kill();
    let gw = Gateway::start_logging(
        &gateway_config(
            "",
            &[gone_addr, other.addr],
            "[upstreams.health_check]\nkind = \"tcp\"\ninterval = \"50ms\"\nunhealthy_threshold = 1\n",
        ),
        &[],
    );
    gw.wait_log(&[
        "health check: endpoint unhealthy",
        &gone_addr.to_string(),
        "connect",
    ]);
    let statuses = gets(&client(), &gw, 10).await;
    assert_eq!(failures(&statuses), 0, "{statuses:?}");
    assert_eq!(other.hits(), 10);
}

/// What a newcomer writes first: three replicas, no resilience sections. One refuses
/// connections; by default a refused connection is tried again on another replica for any
/// method (nothing was sent), and the replica is ejected after three refusals in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_replica_that_refuses_connections_costs_no_request_and_is_ejected() {
    let (a, b) = (Replica::echo("a"), Replica::echo("b"));
    let dead = closed_addr();
    let config = gateway_config("", &[a.addr, dead, b.addr], "")
        .replace("[server]\n", "[server]\nadmin_listen = \"127.0.0.1:0\"\n");
    let gw = Gateway::start_logging(&config, &[]);
    let cl = client();
    let post = || {
        req("POST", &gw.url("/v1/chat/completions"))
            .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
            .unwrap()
    };
    for i in 0..30 {
        let r = send(&cl, post()).await;
        assert_eq!(r.status, 200, "POST {i} reached the client as a failure");
    }
    let line = gw.wait_log(&["outlier ejected", &dead.to_string()]);
    assert!(line.contains("3 consecutive connect failures"), "{line}");
    let upstreams = get(&format!("http://{}/upstreams", gw.admin.unwrap()))
        .await
        .json();
    let endpoints = upstreams["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .clone();
    let ejected: Vec<(&str, bool)> = endpoints
        .iter()
        .map(|e| (e["address"].as_str().unwrap(), e["ejected"] == true))
        .collect();
    assert!(
        ejected.contains(&(dead.to_string().as_str(), true)),
        "{ejected:?}"
    );
    assert_eq!(
        ejected.iter().filter(|(_, out)| *out).count(),
        1,
        "{ejected:?}"
    );
    assert_eq!(a.hits() + b.hits(), 30);
}

/// Both defaults can be turned off: then every request the balancer sends to the refusing
/// replica fails, as it says.
#[tokio::test]
async fn retry_and_outlier_detection_turn_off_with_enabled_false() {
    let a = Replica::echo("a");
    let dead = closed_addr();
    let gw = Gateway::start(&gateway_config(
        "",
        &[a.addr, dead],
        "[upstreams.retry]\nenabled = false\n[upstreams.outlier_detection]\nenabled = false\n",
    ));
    let statuses = gets(&client(), &gw, 20).await;
    assert!(
        statuses.iter().filter(|&&s| s == 502).count() >= 5,
        "without retries or ejection the refusing replica answers 502s: {statuses:?}"
    );
    assert_eq!(failures(&statuses) + a.hits(), 20);
}
