//! The admin listener: metrics, the JSON admin API, its token, and hot reload under load.

use crate::support::*;
use http_body_util::Full;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn admin_url(gw: &Gateway, path: &str) -> String {
    format!("http://{}{}", gw.admin.expect("admin listener"), path)
}

async fn admin_get(gw: &Gateway, path: &str, token: Option<&str>) -> Reply {
    let mut r = req("GET", &admin_url(gw, path));
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    send(&client(), r.body(Full::default()).unwrap()).await
}

async fn reload(gw: &Gateway) -> Reply {
    send(
        &client(),
        req("POST", &admin_url(gw, "/reload"))
            .body(Full::default())
            .unwrap(),
    )
    .await
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The value of the metric line starting with `prefix` (name and labels).
fn metric(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn two_upstream_config(
    alpha: std::net::SocketAddr,
    beta: std::net::SocketAddr,
    route_to: &str,
    extra_server: &str,
) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{extra_server}\n\n\
         [[upstreams]]\nname = \"alpha\"\ntargets = [{{ address = \"{alpha}\" }}]\n\n\
         [upstreams.circuit_breaker]\nconsecutive_failures = 2\nopen_time = \"60s\"\n\n\
         [[upstreams]]\nname = \"beta\"\ntargets = [{{ address = \"{beta}\" }}]\n\n\
         [[routes]]\nname = \"models\"\npath_prefix = \"/v1\"\nupstream = \"{route_to}\"\n"
    )
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_show_endpoint_state() {
    let alpha = Upstream::echo("alpha").await;
    let beta = Upstream::echo("beta").await;
    let gw = Gateway::start(&two_upstream_config(alpha.addr, beta.addr, "alpha", ""));
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/v1/chat")).await.status, 200);
    }
    assert_eq!(get(&gw.url("/nowhere")).await.status, 404);
    let r = admin_get(&gw, "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let m = text(&r);
    assert_eq!(
        metric(
            &m,
            "portcullis_requests_total{method=\"GET\",route=\"models\",status=\"2xx\"}"
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_requests_total{method=\"GET\",route=\"\",status=\"4xx\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_request_duration_seconds_count{route=\"models\"}"
        ),
        Some(3.0)
    );
    let ep = format!("endpoint=\"{}\",upstream=\"alpha\"", alpha.addr);
    assert_eq!(
        metric(
            &m,
            &format!("portcullis_upstream_request_duration_seconds_count{{{ep}}}")
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&m, &format!("portcullis_circuit_breaker_state{{{ep}}}")),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, &format!("portcullis_endpoint_healthy{{{ep}}}")),
        Some(1.0)
    );
    assert!(m.contains("portcullis_config_info{hash=\""), "{m}");

    // A dead endpoint: two connect failures (not retried) open its breaker, and the metrics
    // say so.
    let gamma = closed_addr();
    let path = gw.dir.0.join("portcullis.toml");
    let with_gamma = format!(
        "{}\n[[upstreams]]\nname = \"gamma\"\ntargets = [{{ address = \"{gamma}\" }}]\n\n[upstreams.circuit_breaker]\nconsecutive_failures = 2\nopen_time = \"60s\"\n\n[upstreams.retry]\nenabled = false\n\n[[routes]]\nname = \"dead\"\npath = \"/dead\"\nupstream = \"gamma\"\n",
        two_upstream_config(alpha.addr, beta.addr, "alpha", "")
    );
    std::fs::write(&path, with_gamma).unwrap();
    assert_eq!(reload(&gw).await.status, 200);
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/dead")).await.status, 502);
    }
    assert_eq!(get(&gw.url("/dead")).await.status, 503);
    let m = text(&admin_get(&gw, "/metrics", None).await);
    let dead = format!("endpoint=\"{gamma}\",upstream=\"gamma\"");
    assert_eq!(
        metric(&m, &format!("portcullis_circuit_breaker_state{{{dead}}}")),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, &format!("portcullis_endpoint_healthy{{{dead}}}")),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!("portcullis_upstream_errors_total{{endpoint=\"{gamma}\",kind=\"connect\",upstream=\"gamma\"}}")
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!("portcullis_circuit_breaker_transitions_total{{endpoint=\"{gamma}\",to=\"open\",upstream=\"gamma\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_requests_total{method=\"GET\",route=\"dead\",status=\"5xx\"}"
        ),
        Some(3.0)
    );
}

#[tokio::test]
async fn admin_api_describes_upstreams_routes_config_and_plugins() {
    let alpha = Upstream::echo("alpha").await;
    let beta = Upstream::echo("beta").await;
    let plugin = plugin("api-key");
    let config = format!(
        "{}\n[[plugins]]\nname = \"api-key\"\npath = \"{plugin}\"\n\n[[routes]]\nname = \"keyed\"\npath = \"/keyed\"\nupstream = \"beta\"\nplugins = [{{ name = \"api-key\", config = {{ keys = [{{ key = \"k-very-secret\", consumer = \"alice\" }}] }} }}]\n",
        two_upstream_config(alpha.addr, beta.addr, "alpha", "")
    );
    let gw = Gateway::start(&config);
    let ready = admin_get(&gw, "/readyz", None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready"], true);

    let up = admin_get(&gw, "/upstreams", None).await.json();
    let alpha_json = &up["upstreams"][0];
    assert_eq!(alpha_json["name"], "alpha");
    assert_eq!(alpha_json["circuit_breaker"], true);
    let ep = &alpha_json["endpoints"][0];
    assert_eq!(ep["address"], alpha.addr.to_string());
    assert_eq!(ep["breaker"], "closed");
    assert_eq!(ep["available"], true);
    assert_eq!(up["upstreams"][1]["endpoints"][0]["breaker"], "none");

    let routes = admin_get(&gw, "/routes", None).await.json();
    assert_eq!(routes["routes"][0]["path"]["prefix"], "/v1");
    assert_eq!(routes["routes"][1]["plugins"][0], "api-key");

    let c = admin_get(&gw, "/config", None).await;
    let body = text(&c);
    assert!(
        !body.contains("k-very-secret"),
        "secrets are redacted: {body}"
    );
    assert!(body.contains("<redacted>"));
    assert_eq!(c.json()["config"]["upstreams"][0]["name"], "alpha");

    // One authenticated request warms an instance.
    let r = send(
        &client(),
        req("GET", &gw.url("/keyed"))
            .header("x-api-key", "k-very-secret")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let p = admin_get(&gw, "/plugins", None).await.json();
    assert_eq!(p["plugins"][0]["name"], "api-key");
    assert_eq!(p["plugins"][0]["role"], "auth");
    assert_eq!(p["plugins"][0]["routes"][0], "keyed");
    assert_eq!(p["plugins"][0]["idle_instances"], 1);
    let m = text(&admin_get(&gw, "/metrics", None).await);
    assert_eq!(
        metric(&m, "portcullis_plugin_call_duration_seconds_count{hook=\"authenticate\",plugin=\"api-key\"}"),
        Some(1.0),
        "{m}"
    );

    assert_eq!(admin_get(&gw, "/nope", None).await.status, 404);
    let wrong = send(
        &client(),
        req("POST", &admin_url(&gw, "/upstreams"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(wrong.status, 405);
}

#[tokio::test]
async fn the_admin_token_guards_everything_but_the_probes() {
    let alpha = Upstream::echo("alpha").await;
    let beta = Upstream::echo("beta").await;
    let token = "s3cret-admin-token-0123";
    let gw = Gateway::start(&two_upstream_config(
        alpha.addr,
        beta.addr,
        "alpha",
        &format!("admin_token = \"{token}\""),
    ));
    assert_eq!(admin_get(&gw, "/healthz", None).await.status, 200);
    assert_eq!(admin_get(&gw, "/readyz", None).await.status, 200);
    assert_eq!(
        admin_get(&gw, "/", None).await.status,
        200,
        "the page holds no data"
    );
    for path in [
        "/metrics",
        "/upstreams",
        "/config",
        "/stats",
        "/plugins",
        "/routes",
    ] {
        let r = admin_get(&gw, path, None).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(
            admin_get(&gw, path, Some("wrong-token-wrong-token"))
                .await
                .status,
            401
        );
        assert_eq!(
            admin_get(&gw, path, Some(token)).await.status,
            200,
            "{path}"
        );
    }
    let c = text(&admin_get(&gw, "/config", Some(token)).await);
    assert!(!c.contains(token), "the token itself is redacted: {c}");
    assert_eq!(reload(&gw).await.status, 401);
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    let dir = TempDir::new();
    let path = dir.write(
        "admin.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:9901\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [{ address = \"127.0.0.1:9\" }]\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n",
    );
    let (ok, out) = validate(&path);
    assert!(!ok);
    assert!(
        out.contains("admin.toml:3:16: key `server.admin_token`"),
        "{out}"
    );
    assert!(out.contains("not a loopback address"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request_and_switch_routes() {
    let alpha = Upstream::echo("alpha").await;
    let beta = Upstream::echo("beta").await;
    let config_a = two_upstream_config(alpha.addr, beta.addr, "alpha", "");
    let config_b = two_upstream_config(alpha.addr, beta.addr, "beta", "");
    let gw = Gateway::start_logging(&config_a, &[]);
    let path = gw.dir.0.join("portcullis.toml");

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failed, url) = (stop.clone(), failed.clone(), gw.url("/v1/chat"));
        let done = done.clone();
        load.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let r = c
                    .request(req("GET", &url).body(Full::default()).unwrap())
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        use http_body_util::BodyExt as _;
                        if r.into_body().collect().await.is_err() {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                n += 1;
                done.fetch_add(1, Ordering::SeqCst);
            }
            n
        }));
    }
    let served_by = |r: &Reply| r.json()["upstream"].as_str().unwrap().to_string();
    let started = Instant::now();
    for i in 0..10 {
        // Reload while requests flow: let 300 complete between reloads.
        let before = done.load(Ordering::SeqCst);
        wait_until("300 more requests", WAIT, || {
            done.load(Ordering::SeqCst) >= before + 300
        })
        .await;
        let (text, want) = if i % 2 == 0 {
            (&config_b, "beta")
        } else {
            (&config_a, "alpha")
        };
        std::fs::write(&path, text).unwrap();
        let r = reload(&gw).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["reloaded"], true);
        // The next request is served by the new routes.
        assert_eq!(
            served_by(&get(&gw.url("/v1/chat")).await),
            want,
            "after reload {i}"
        );
        if i == 4 {
            // An invalid config is refused and the running one keeps serving.
            std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"x\"\npath = \"/\"\nupstream = \"nowhere\"\n").unwrap();
            let bad = reload(&gw).await;
            assert_eq!(bad.status, 422);
            assert_eq!(bad.error_code(), "reload_failed");
            let msg = bad.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(
                msg.contains("portcullis.toml:8:12: key `routes[0].upstream`"),
                "{msg}"
            );
            assert_eq!(served_by(&get(&gw.url("/v1/chat")).await), want);
        }
    }
    // Keep the load running past the last reload, then stop it.
    let before = done.load(Ordering::SeqCst);
    wait_until("300 more requests", WAIT, || {
        done.load(Ordering::SeqCst) >= before + 300
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for t in load {
        total += t.await.unwrap();
    }
    assert!(total >= 3000, "{total} requests in {:?}", started.elapsed());
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests out of {total}"
    );
    let m = text(&admin_get(&gw, "/metrics", None).await);
    assert_eq!(
        metric(&m, "portcullis_config_reloads_total{result=\"success\"}"),
        Some(10.0)
    );
    assert_eq!(
        metric(&m, "portcullis_config_reloads_total{result=\"failure\"}"),
        Some(1.0)
    );
    gw.wait_log(&["config reload failed", "unknown upstream `nowhere`"]);
}

#[tokio::test]
async fn sighup_and_file_watching_reload() {
    let alpha = Upstream::echo("alpha").await;
    let beta = Upstream::echo("beta").await;
    let gw = Gateway::start_logging(
        &two_upstream_config(alpha.addr, beta.addr, "alpha", "watch_config = true"),
        &[],
    );
    let path = gw.dir.0.join("portcullis.toml");
    let served_by = |r: Reply| r.json()["upstream"].as_str().unwrap().to_string();
    assert_eq!(served_by(get(&gw.url("/v1/x")).await), "alpha");
    // Watched: writing the file is enough.
    std::fs::write(
        &path,
        two_upstream_config(
            alpha.addr,
            beta.addr,
            "beta",
            "watch_config = true\n# changed",
        ),
    )
    .unwrap();
    gw.wait_log(&["config reloaded"]);
    assert_eq!(served_by(get(&gw.url("/v1/x")).await), "beta");
    // SIGHUP.
    std::fs::write(
        &path,
        two_upstream_config(
            alpha.addr,
            beta.addr,
            "alpha",
            "watch_config = true\n# changed again",
        ),
    )
    .unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    gw.wait_log(&["config reloaded"]);
    assert_eq!(served_by(get(&gw.url("/v1/x")).await), "alpha");
}

#[tokio::test]
async fn a_reload_may_not_move_the_listeners() {
    let alpha = Upstream::echo("alpha").await;
    let beta = Upstream::echo("beta").await;
    let gw = Gateway::start(&two_upstream_config(alpha.addr, beta.addr, "alpha", ""));
    let path = gw.dir.0.join("portcullis.toml");
    std::fs::write(
        &path,
        two_upstream_config(alpha.addr, beta.addr, "beta", "").replace(
            "listen = \"127.0.0.1:0\"\nadmin",
            "listen = \"127.0.0.1:1\"\nadmin",
        ),
    )
    .unwrap();
    let r = reload(&gw).await;
    assert_eq!(r.status, 422);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("key `server.listen`: cannot change on reload"));
    assert_eq!(get(&gw.url("/v1/x")).await.json()["upstream"], "alpha");
}
