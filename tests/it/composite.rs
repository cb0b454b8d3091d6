//! Composite routes (`[[routes.parts]]`): one request fanned out to three model-service
//! stand-ins (detection, classification, segmentation) — real HTTP servers — and their
//! answers merged into one JSON object; optional and required parts, timeouts, a pipeline
//! step fed by an earlier part's answer, the response size cap, the access log and metrics.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Barrier;

const IMAGE: &str = r#"{"image":"aGVsbG8=","id":"frame-7"}"#;

/// What a model service received.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    path: String,
    query: Option<String>,
    headers: http::HeaderMap,
    body: Bytes,
}

/// A model-service stand-in: records each request, waits at `barrier` (when given) and
/// answers `answer(body)` as JSON.
struct Model {
    up: Upstream,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Model {
    async fn start(answer: fn(&[u8]) -> serde_json::Value, barrier: Option<Arc<Barrier>>) -> Model {
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let up = Upstream::start(move |req: http::Request<hyper::body::Incoming>| {
            let log = log.clone();
            let barrier = barrier.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                log.lock().unwrap().push(Received {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().map(str::to_string),
                    headers: parts.headers,
                    body: body.clone(),
                });
                if let Some(b) = barrier {
                    b.wait().await;
                }
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(full(answer(&body).to_string()))
                    .unwrap()
            }
        })
        .await;
        Model { up, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn detections(_: &[u8]) -> serde_json::Value {
    serde_json::json!({"detections": [
        {"label": "cat", "score": 0.92, "box": [10, 20, 110, 140]},
        {"label": "dog", "score": 0.31, "box": [200, 40, 260, 90]},
    ]})
}

/// Classifies what it was sent: the labels of the regions in a detection answer, or
/// `scene` for anything else.
fn classes(body: &[u8]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match v["detections"].as_array() {
        Some(d) => {
            serde_json::json!({"classes": d.iter().map(|r| format!("{}-breed", r["label"].as_str().unwrap_or("?"))).collect::<Vec<_>>()})
        }
        None => serde_json::json!({"classes": ["scene"]}),
    }
}

fn masks(_: &[u8]) -> serde_json::Value {
    serde_json::json!({"masks": [{"label": "sky", "area": 0.4}]})
}

/// The three upstreams and a route `vision` on `/v1/vision` with `route_extra` (route
/// keys) and `parts` (`[[routes.parts]]` tables); `server_extra` goes in `[server]`.
fn vision_config(
    [d, c, s]: [SocketAddr; 3],
    server_extra: &str,
    route_extra: &str,
    parts: &str,
) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n\n\
         [[upstreams]]\nname = \"detection\"\ntargets = [{{ address = \"{d}\" }}]\n\n\
         [[upstreams]]\nname = \"classification\"\ntargets = [{{ address = \"{c}\" }}]\n\n\
         [[upstreams]]\nname = \"segmentation\"\ntargets = [{{ address = \"{s}\" }}]\n\n\
         [[routes]]\nname = \"vision\"\npath = \"/v1/vision\"\n{route_extra}\n\n{parts}"
    )
}

/// A `[[routes.parts]]` table.
fn part(name: &str, upstream: &str, path: &str, extra: &str) -> String {
    format!(
        "[[routes.parts]]\nname = \"{name}\"\nupstream = \"{upstream}\"\npath = \"{path}\"\n{extra}\n\n"
    )
}

/// The three parts at once, each with `extra`.
fn three_parts(extra: [&str; 3]) -> String {
    part("detect", "detection", "/v1/detect", extra[0])
        + &part("classify", "classification", "/v1/classify", extra[1])
        + &part("segment", "segmentation", "/v1/segment", extra[2])
}

/// The gateway on `vision_config` with the three parts and nothing else.
fn gateway(addrs: [SocketAddr; 3], extra: [&str; 3]) -> Gateway {
    Gateway::start(&vision_config(addrs, "", "", &three_parts(extra)))
}

/// An error reply's `error.message`.
fn message(r: &Reply) -> String {
    r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn addrs(m: [&Model; 3]) -> [SocketAddr; 3] {
    m.map(|m| m.up.addr)
}

async fn vision(gw: &Gateway, body: &'static str) -> Reply {
    vision_with(gw, body, &[]).await
}

async fn vision_with(gw: &Gateway, body: &'static str, headers: &[(&str, &str)]) -> Reply {
    let mut r =
        req("POST", &gw.url("/v1/vision?threshold=0.5")).header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    send(&client(), r.body(Full::from(body)).unwrap()).await
}

/// A service that never answers.
async fn hanging() -> Upstream {
    Upstream::start(|_req| std::future::pending()).await
}

/// Each part blocks until all three have received their request: the answer can only
/// come if the gateway called them at once (called one after the other, the first would
/// wait for the others until its timeout, and the required parts fail the request).
#[tokio::test(flavor = "multi_thread")]
async fn three_parts_are_called_at_once_and_answered_together() {
    let barrier = Arc::new(Barrier::new(3));
    let d = Model::start(detections, Some(barrier.clone())).await;
    let c = Model::start(classes, Some(barrier.clone())).await;
    let s = Model::start(masks, Some(barrier)).await;
    let req = "required = true\ntimeout = \"20s\"";
    let gw = Gateway::start(&vision_config(
        addrs([&d, &c, &s]),
        "",
        "methods = [\"POST\"]",
        &three_parts([req; 3]),
    ));
    let r = vision_with(&gw, IMAGE, &[("x-request-id", "rid-vision-1")]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-request-id"), Some("rid-vision-1"));
    let j = r.json();
    assert_eq!(j["detect"], detections(b""));
    assert_eq!(j["classify"], serde_json::json!({"classes": ["scene"]}));
    assert_eq!(j["segment"], masks(b""));
    let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let mut traces = Vec::new();
    for (m, path) in [
        (&d, "/v1/detect"),
        (&c, "/v1/classify"),
        (&s, "/v1/segment"),
    ] {
        let got = m.received();
        assert_eq!(got.len(), 1, "each part is called once");
        let got = &got[0];
        assert_eq!(got.method, "POST");
        assert_eq!(got.path, path);
        assert_eq!(
            got.query.as_deref(),
            Some("threshold=0.5"),
            "the client's query goes along"
        );
        assert_eq!(
            got.body,
            IMAGE.as_bytes(),
            "the client's body goes to every part"
        );
        assert_eq!(got.headers["x-request-id"], "rid-vision-1");
        assert_eq!(got.headers["content-type"], "application/json");
        assert_eq!(
            got.headers["content-length"],
            IMAGE.len().to_string().as_str()
        );
        let trace = got.headers.get_all("traceparent").iter();
        traces.push(
            trace
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>(),
        );
    }
    // One trace context, sent once to every part.
    assert_eq!(traces[0].len(), 1, "{traces:?}");
    assert!(traces.iter().all(|t| t == &traces[0]), "{traces:?}");
}

#[tokio::test]
async fn an_optional_part_that_times_out_is_an_error_object_in_a_200() {
    let d = Model::start(detections, None).await;
    let c = Model::start(classes, None).await;
    let slow = hanging().await;
    let gw = gateway(
        [d.up.addr, c.up.addr, slow.addr],
        ["required = true", "", "timeout = \"200ms\""],
    );
    let r = vision(&gw, IMAGE).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["detect"], detections(b""));
    assert_eq!(j["classify"]["classes"][0], "scene");
    let e = &j["segment"]["error"];
    assert_eq!(e["code"], "upstream_timeout", "{j}");
    assert!(
        e["message"].as_str().unwrap().contains("part `segment`"),
        "{e}"
    );
    assert_eq!(e["request_id"], r.header("x-request-id").unwrap());
    assert_eq!(slow.hits(), 1);
}

#[tokio::test]
async fn a_required_part_that_times_out_fails_the_request_with_504_naming_it() {
    let d = Model::start(detections, None).await;
    let c = Model::start(classes, None).await;
    let slow = hanging().await;
    let gw = gateway(
        [d.up.addr, c.up.addr, slow.addr],
        ["", "", "required = true\ntimeout = \"200ms\""],
    );
    let r = vision(&gw, IMAGE).await;
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "upstream_timeout");
    assert!(message(&r).contains("part `segment`"), "{}", message(&r));
}

#[tokio::test]
async fn a_required_part_answering_500_fails_the_request_with_502_naming_it() {
    let d = Model::start(detections, None).await;
    let c = Model::start(classes, None).await;
    let broken = Upstream::start(|_req| async {
        http::Response::builder()
            .status(500)
            .body(full("{\"error\":\"model crashed\"}"))
            .unwrap()
    })
    .await;
    let gw = gateway(
        [broken.addr, c.up.addr, d.up.addr],
        ["required = true", "", ""],
    );
    let r = vision(&gw, IMAGE).await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "upstream_status");
    let m = message(&r);
    assert!(m.contains("part `detect`") && m.contains("500"), "{m}");
    // A refused connection is a 502 too, with its own code.
    let gw = gateway(
        [closed_addr(), c.up.addr, d.up.addr],
        ["required = true", "", ""],
    );
    let r = vision(&gw, IMAGE).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_connect_failed");
}

/// Detection's answer is classification's request body, byte for byte; segmentation runs
/// beside them on the client's body.
#[tokio::test]
async fn a_pipeline_step_receives_exactly_the_earlier_parts_answer() {
    let d = Model::start(detections, None).await;
    let c = Model::start(classes, None).await;
    let s = Model::start(masks, None).await;
    let gw = gateway(
        addrs([&d, &c, &s]),
        ["required = true", "input = \"detect\"\nrequired = true", ""],
    );
    let r = vision(&gw, IMAGE).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(
        j["classify"],
        serde_json::json!({"classes": ["cat-breed", "dog-breed"]})
    );
    assert_eq!(j["segment"], masks(b""));
    let classified = &c.received()[0];
    assert_eq!(
        classified.body,
        detections(b"").to_string().as_bytes(),
        "classification receives detection's output exactly"
    );
    assert_eq!(classified.headers["content-type"], "application/json");
    assert_eq!(
        classified.headers["content-length"],
        classified.body.len().to_string().as_str()
    );
    assert_eq!(d.received()[0].body, IMAGE.as_bytes());
    assert_eq!(s.received()[0].body, IMAGE.as_bytes());
}

#[tokio::test]
async fn a_pipeline_step_whose_input_failed_reports_it() {
    let c = Model::start(classes, None).await;
    let s = Model::start(masks, None).await;
    let gw = gateway(
        [closed_addr(), c.up.addr, s.up.addr],
        ["", "input = \"detect\"", ""],
    );
    let r = vision(&gw, IMAGE).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["detect"]["error"]["code"], "upstream_connect_failed");
    assert_eq!(j["classify"]["error"]["code"], "part_input_failed", "{j}");
    assert_eq!(j["segment"], masks(b""));
    assert_eq!(c.up.hits(), 0, "a step without its input is not called");
}

#[tokio::test]
async fn answers_over_the_size_cap_are_a_502_and_a_body_over_the_buffer_a_413() {
    let big = Upstream::start(|_req| async {
        let items: Vec<u32> = (0..1000).collect();
        http::Response::builder()
            .header("content-type", "application/json")
            .body(full(serde_json::json!({ "items": items }).to_string()))
            .unwrap()
    })
    .await;
    let c = Model::start(classes, None).await;
    let s = Model::start(masks, None).await;
    let gw = Gateway::start(&vision_config(
        [big.addr, c.up.addr, s.up.addr],
        "",
        "max_response_size = \"1KiB\"\nbuffer_request_body = \"64KiB\"",
        &three_parts(["", "", ""]),
    ));
    let r = vision(&gw, IMAGE).await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "response_too_large");
    assert!(message(&r).contains("part `detect`"), "{}", message(&r));
    let too_big: &'static str = Box::leak("x".repeat(100 * 1024).into_boxed_str());
    let r = vision(&gw, too_big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "body_too_large");
}

#[tokio::test]
async fn a_part_answering_what_cannot_be_merged_is_an_error_object() {
    let text = Upstream::start(|_req| async {
        http::Response::builder()
            .header("content-type", "text/plain")
            .body(full("not json"))
            .unwrap()
    })
    .await;
    let sse = Upstream::start(|_req| async {
        http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(full("data: {}\n\n"))
            .unwrap()
    })
    .await;
    let s = Model::start(masks, None).await;
    let gw = gateway([text.addr, sse.addr, s.up.addr], ["", "", ""]);
    let j = vision(&gw, IMAGE).await.json();
    assert_eq!(j["detect"]["error"]["code"], "upstream_bad_response");
    assert!(j["detect"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not JSON"));
    assert_eq!(j["classify"]["error"]["code"], "upstream_bad_response");
    assert!(j["classify"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("event stream"));
    assert_eq!(j["segment"], masks(b""));
}

/// The client cannot steer the parts: its Host and an absolute-form target change
/// neither where they go nor the Host they are sent with; its consumer header is dropped
/// and the auth plugin's consumer goes to every part.
#[tokio::test]
async fn auth_runs_once_and_the_client_does_not_choose_the_parts_authorities() {
    let d = Model::start(detections, None).await;
    let c = Model::start(classes, None).await;
    let s = Model::start(masks, None).await;
    let plugins = format!(
        "[[plugins]]\nname = \"api-key\"\npath = \"{}\"\n",
        plugin("api-key")
    );
    let text = vision_config(
        addrs([&d, &c, &s]),
        "",
        "plugins = [ { name = \"api-key\", config = { keys = [ { key = \"k-1\", consumer = \"alice\" } ] } } ]",
        &three_parts(["", "", ""]),
    )
    .replace("[[upstreams]]\nname = \"detection\"", &format!("{plugins}\n[[upstreams]]\nname = \"detection\""));
    let gw = Gateway::start(&text);
    let r = vision(&gw, IMAGE).await;
    assert_eq!(r.status, 401, "no key");
    assert_eq!(d.up.hits() + c.up.hits() + s.up.hits(), 0);
    let r = send(
        &client(),
        req("POST", &format!("http://{}/v1/vision", gw.addr))
            .header("host", "evil.example")
            .header("x-api-key", "k-1")
            .header("x-portcullis-consumer", "mallory")
            .body(Full::from(IMAGE))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for m in [&d, &c, &s] {
        let got = &m.received()[0];
        assert_eq!(got.headers["x-portcullis-consumer"], "alice");
        assert_eq!(got.headers["host"], m.up.addr.to_string().as_str());
        assert_eq!(got.headers["x-forwarded-host"], "evil.example");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_access_log_line_with_the_parts_and_metrics_per_part() {
    let d = Model::start(detections, None).await;
    let c = Model::start(classes, None).await;
    let slow = hanging().await;
    let text = vision_config(
        [d.up.addr, c.up.addr, slow.addr],
        "admin_listen = \"127.0.0.1:0\"",
        "",
        &three_parts(["", "", "timeout = \"100ms\""]),
    );
    let gw = Gateway::start_logging(&text, &["--log-format", "json"]);
    let r = vision_with(&gw, IMAGE, &[("x-request-id", "rid-parts")]).await;
    assert_eq!(r.status, 200);
    let line = tokio::task::block_in_place(|| gw.wait_log(&["\"target\":\"access\"", "rid-parts"]));
    let j: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(j["route"], "vision");
    assert_eq!(j["status"], 200);
    let parts = j["parts"].as_str().unwrap_or_else(|| panic!("{line}"));
    let fields: Vec<Vec<&str>> = parts.split(',').map(|p| p.split(':').collect()).collect();
    assert_eq!(fields.len(), 3, "{parts}");
    assert_eq!(fields[0][..2], ["detect", "200"], "{parts}");
    assert_eq!(fields[1][..2], ["classify", "200"], "{parts}");
    assert_eq!(fields[2][..2], ["segment", "upstream_timeout"], "{parts}");
    assert!(fields[2][2].parse::<f64>().unwrap() >= 100.0, "{parts}");
    let metrics = send(
        &client(),
        req("GET", &format!("http://{}/metrics", gw.admin.unwrap()))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let m = String::from_utf8_lossy(&metrics.body);
    for want in [
        "portcullis_composite_parts_total{outcome=\"ok\",part=\"detect\",route=\"vision\"} 1",
        "portcullis_composite_parts_total{outcome=\"ok\",part=\"classify\",route=\"vision\"} 1",
        "portcullis_composite_parts_total{outcome=\"timeout\",part=\"segment\",route=\"vision\"} 1",
        "portcullis_composite_part_duration_seconds_count{part=\"detect\",route=\"vision\"} 1",
    ] {
        assert!(m.contains(want), "{want} missing in:\n{m}");
    }
    let routes = send(
        &client(),
        req("GET", &format!("http://{}/routes", gw.admin.unwrap()))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .json();
    assert_eq!(
        routes["routes"][0]["parts"][2],
        serde_json::json!({"name": "segment", "upstream": "segmentation", "required": false, "input": null}),
        "{routes}"
    );
}

/// A transform plugin in Python with the `response-body` hook replaces the default merge:
/// it receives the combined answer and keeps only the detections above its `min_score`.
#[tokio::test]
#[ignore = "needs componentize-py (plugins/build-polyglot.sh installs it; .ci/run runs it)"]
async fn a_python_merge_plugin_reshapes_the_combined_answer() {
    if let Err(reason) = build_polyglot("python") {
        panic!("the Python plugin toolchain is unavailable ({reason}): run `bash plugins/build-polyglot.sh python`");
    }
    let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins/target/components/python-vision-merge.wasm");
    assert!(
        wasm.is_file(),
        "build-polyglot.sh did not build {}",
        wasm.display()
    );
    let d = Model::start(detections, None).await;
    let c = Model::start(classes, None).await;
    let s = Model::start(masks, None).await;
    let cache = std::env::temp_dir().join("portcullis-test-wasm-cache");
    let text = vision_config(
        addrs([&d, &c, &s]),
        &format!(
            "plugin_cache_dir = \"{}\"\n\n[[plugins]]\nname = \"vision-merge\"\npath = \"{}\"\ntimeout = \"500ms\"\nmemory_limit = \"256MiB\"",
            cache.display(),
            wasm.display()
        ),
        "plugins = [ { name = \"vision-merge\", config = { min_score = 0.5 } } ]",
        &three_parts(["", "input = \"detect\"", ""]),
    );
    // Compiled into the cache first (no listener timeout there), so the gateway starts fast.
    let dir = TempDir::new();
    assert_valid(&dir.write("warm.toml", &text));
    let gw = Gateway::start(&text);
    let r = vision(&gw, IMAGE).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let j = r.json();
    assert_eq!(
        j["detect"]["detections"],
        serde_json::json!([{"label": "cat", "score": 0.92, "box": [10, 20, 110, 140]}]),
        "{j}"
    );
    assert_eq!(
        j["summary"],
        serde_json::json!({"min_score": 0.5, "kept": 1, "dropped": 1})
    );
    // The pipeline step still saw detection's answer as it was, before the merge.
    assert_eq!(
        j["classify"],
        serde_json::json!({"classes": ["cat-breed", "dog-breed"]})
    );
    assert_eq!(j["segment"], masks(b""));
}

/// A part without `path` gets the path the route forwards; `method` replaces the client's.
#[tokio::test]
async fn a_part_without_a_path_gets_the_routes_and_a_method_of_its_own() {
    let d = Model::start(detections, None).await;
    let c = Model::start(classes, None).await;
    let s = Model::start(masks, None).await;
    let parts = part("detect", "detection", "/v1/detect", "method = \"put\"")
        + "[[routes.parts]]\nname = \"classify\"\nupstream = \"classification\"\n\n"
        + &part("segment", "segmentation", "/v1/segment", "");
    let gw = Gateway::start(&vision_config(addrs([&d, &c, &s]), "", "", &parts));
    assert_eq!(vision(&gw, IMAGE).await.status, 200);
    let (detect, classify) = (&d.received()[0], &c.received()[0]);
    assert_eq!(
        (detect.method.as_str(), detect.path.as_str()),
        ("PUT", "/v1/detect")
    );
    assert_eq!(
        (
            classify.method.as_str(),
            classify.path.as_str(),
            classify.query.as_deref()
        ),
        ("POST", "/v1/vision", Some("threshold=0.5"))
    );
}

/// Signals when dropped: a handler future holding it was cancelled.
struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A required part's failure answers at once: the other parts are cancelled (their
/// connections closed, so the service's handler is dropped) long before their own
/// 60 s timeout. The required part fails only once the slow one has its request.
#[tokio::test]
async fn a_required_failure_cancels_the_parts_still_running() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let entered = arrived.clone();
    let slow = Upstream::start(move |_req| {
        let guard = Dropped(tx.lock().unwrap().take());
        entered.notify_one();
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            unreachable!()
        }
    })
    .await;
    let failing = Upstream::start(move |_req| {
        let arrived = arrived.clone();
        async move {
            arrived.notified().await;
            http::Response::builder()
                .status(500)
                .body(full("{}"))
                .unwrap()
        }
    })
    .await;
    let c = Model::start(classes, None).await;
    let gw = gateway(
        [failing.addr, c.up.addr, slow.addr],
        ["required = true", "", "timeout = \"60s\""],
    );
    // The answer is awaited only after the cancellation: a gateway that waited for the
    // slow part would answer (and drop it) only after its 60 s.
    let url = gw.url("/v1/vision");
    let answer = tokio::spawn(async move {
        send(
            &client(),
            req("POST", &url).body(Full::from(IMAGE)).unwrap(),
        )
        .await
    });
    tokio::time::timeout(WAIT, rx)
        .await
        .expect("the running part was not cancelled")
        .expect("signal sent");
    let r = answer.await.unwrap();
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "upstream_status");
    assert!(message(&r).contains("part `detect`"), "{}", message(&r));
}

/// An HTTP/2 extended CONNECT (WebSocket) to a composite route is refused with 403, never
/// answered 200 (which would open a tunnel); no part is called.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_websocket_to_a_composite_route_is_refused() {
    let d = Model::start(detections, None).await;
    let c = Model::start(classes, None).await;
    let s = Model::start(masks, None).await;
    let gw = gateway(addrs([&d, &c, &s]), ["", "", ""]);
    let resp = h2_websocket_connect(gw.addr, "/v1/vision").await;
    assert_eq!(resp.status(), 403);
    assert_eq!(d.up.hits() + c.up.hits() + s.up.hits(), 0);
}
