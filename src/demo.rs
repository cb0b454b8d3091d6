//! `portcullis demo`: OpenAI-style model services (chat completions streamed as server-sent
//! events, with token usage; embeddings) and a gateway in front of them that shows its Wasm
//! plugins at work — the API-key auth plugin on the chat routes, the model router sending
//! `demo-gpt` and `demo-llama` to different pools — with the admin API and dashboard; and
//! three vision models (detection, classification, segmentation) behind one composite
//! route, `/v1/vision`. One process, no setup: the plugins are built by `build.rs` and
//! embedded in the binary.

use crate::config;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A response body fed from a channel, for streaming demo responses.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type DemoBody = http_body_util::Either<http_body_util::Full<Bytes>, ChannelBody>;

fn json(status: StatusCode, v: serde_json::Value, replica: &str) -> Response<DemoBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-demo-replica", replica)
        .body(DemoBody::Left(v.to_string().into()))
        .expect("valid response")
}

/// The request's body as JSON (`null` when it is not).
async fn json_body(req: Request<Incoming>) -> serde_json::Value {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&body).unwrap_or_default()
}

/// The status `x-demo-fail: STATUS` asks a demo service to fail with.
fn demo_fail(req: &Request<Incoming>) -> Option<StatusCode> {
    req.headers()
        .get("x-demo-fail")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
}

/// Token counts the demo reports: one token per word (real services use a tokenizer).
fn usage(prompt: &str, answer: &str) -> serde_json::Value {
    let (p, c) = (
        prompt.split_whitespace().count(),
        answer.split_whitespace().count(),
    );
    serde_json::json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

async fn chat(req: Request<Incoming>, replica: &'static str) -> Response<DemoBody> {
    let consumer = req
        .headers()
        .get("x-portcullis-consumer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_string();
    if req.method() != http::Method::POST {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "use POST"}),
            replica,
        );
    }
    // `x-demo-fail: 503` makes the demo-gpt replicas fail, to show the fallback.
    let fail = demo_fail(&req);
    if let (Some(status), true) = (fail, replica.starts_with("gpt-")) {
        return json(
            status,
            serde_json::json!({"error": {"message": format!("{replica} failed as asked"), "type": "server_error"}}),
            replica,
        );
    }
    let parsed = json_body(req).await;
    let model = parsed["model"].as_str().unwrap_or("demo-llm").to_string();
    let prompt = parsed["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let answer = format!("Hello {consumer}, this is {model} on {replica}. You said: {prompt}");
    let usage = usage(&prompt, &answer);
    let words: Vec<String> = answer.split_inclusive(' ').map(str::to_string).collect();
    if parsed["stream"].as_bool() != Some(true) {
        return json(
            StatusCode::OK,
            serde_json::json!({
                "id": "chatcmpl-demo", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": usage,
            }),
            replica,
        );
    }
    let include_usage = parsed["stream_options"]["include_usage"] == true;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        for w in words {
            let chunk = serde_json::json!({
                "id": "chatcmpl-demo", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {"content": w}}],
            });
            if tx
                .send(Bytes::from(format!("data: {chunk}\n\n")))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        if include_usage {
            // As OpenAI does: a last chunk with no choices and the whole request's usage.
            let chunk = serde_json::json!({
                "id": "chatcmpl-demo", "object": "chat.completion.chunk", "model": model,
                "choices": [], "usage": usage,
            });
            let _ = tx.send(Bytes::from(format!("data: {chunk}\n\n"))).await;
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-demo-replica", replica)
        .body(DemoBody::Right(ChannelBody(rx)))
        .expect("valid response")
}

async fn embeddings(req: Request<Incoming>, replica: &'static str) -> Response<DemoBody> {
    let parsed = json_body(req).await;
    let inputs: Vec<String> = match &parsed["input"] {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "`input` must be a string or a list of strings"}),
                replica,
            )
        }
    };
    let data: Vec<serde_json::Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // A deterministic toy embedding: 8 dimensions from the text's hash.
            let h = crate::hash::hash_bytes(s.as_bytes());
            let v: Vec<f64> = (0..8)
                .map(|k| (((h >> (k * 8)) & 0xff) as f64 / 127.5) - 1.0)
                .collect();
            serde_json::json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({"object": "list", "model": "demo-embed", "data": data}),
        replica,
    )
}

/// A vision model stand-in: `detect` finds objects in `{"image": …}` (deterministic from
/// the image's hash), `classify` names each region of a detection answer it is sent,
/// `segment` answers masks (and fails with `x-demo-fail: STATUS`, to show an optional
/// part's failure inside the composite answer).
async fn vision(req: Request<Incoming>, kind: Service) -> Response<DemoBody> {
    let fail = demo_fail(&req);
    let parsed = json_body(req).await;
    let answer = match kind {
        Service::Detect => {
            let Some(image) = parsed["image"].as_str() else {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "send {\"image\": \"<base64>\"}"}),
                    "detect-a",
                );
            };
            let h = crate::hash::hash_bytes(image.as_bytes());
            let score = |k: u32| 0.05 + ((h >> (k * 8)) & 0xff) as f64 / 255.0 * 0.9;
            let labels = ["cat", "dog", "bicycle"];
            let found: Vec<serde_json::Value> = labels
                .iter()
                .zip(0u32..)
                .map(|(label, k)| {
                    let x = (h >> (k * 5)) & 0x1ff;
                    serde_json::json!({"label": label, "score": (score(k) * 100.0).round() / 100.0,
                        "box": [x, x / 2, x + 64, x / 2 + 48]})
                })
                .collect();
            serde_json::json!({"model": "demo-detector", "detections": found})
        }
        Service::Classify => {
            let regions = parsed["detections"].as_array().cloned().unwrap_or_default();
            let classes: Vec<serde_json::Value> = regions
                .iter()
                .map(|r| {
                    let label = r["label"].as_str().unwrap_or("object");
                    serde_json::json!({"label": label, "class": format!("{label}/demo-breed")})
                })
                .collect();
            serde_json::json!({"model": "demo-classifier", "classes": classes})
        }
        _ => {
            if let Some(status) = fail {
                return json(
                    status,
                    serde_json::json!({"error": "segment-a failed as asked"}),
                    "segment-a",
                );
            }
            serde_json::json!({"model": "demo-segmenter",
                "masks": [{"label": "sky", "area": 0.38}, {"label": "road", "area": 0.21}]})
        }
    };
    json(StatusCode::OK, answer, "vision")
}

/// What a demo service serves.
#[derive(Clone, Copy)]
enum Service {
    Chat,
    Embed,
    Detect,
    Classify,
    Segment,
}

async fn serve_demo_service(name: &'static str, kind: Service) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req| async move {
                    Ok::<_, Infallible>(match kind {
                        Service::Chat => chat(req, name).await,
                        Service::Embed => embeddings(req, name).await,
                        _ => vision(req, kind).await,
                    })
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The demo's addresses: where the gateway and its admin API listen, its model services,
/// and the directory holding the plugins.
pub struct DemoSetup<'a> {
    pub listen: &'a str,
    pub admin_listen: &'a str,
    pub gpt: [SocketAddr; 2],
    pub llama: SocketAddr,
    pub embed: [SocketAddr; 2],
    /// Detection, classification, segmentation.
    pub vision: [SocketAddr; 3],
    pub plugins: &'a Path,
}

/// The demo's config text, with the demo's addresses filled in.
pub fn demo_config(d: &DemoSetup<'_>) -> String {
    let plugins = d.plugins.display();
    format!(
        r#"[server]
listen = "{listen}"
admin_listen = "{admin}"       # GET / for the dashboard, /metrics for Prometheus

[[plugins]]
name = "api-key"               # auth: a key in `x-api-key` names the consumer
path = "{plugins}/api-key.wasm"
on_error = "deny"              # a failing auth plugin never lets a request through

[[plugins]]
name = "model-router"          # a route predicate on the JSON body's `model`
path = "{plugins}/model-router.wasm"

[[upstreams]]
name = "gpt-pool"
balance = "round_robin"
targets = [ {{ address = "{gpt0}" }}, {{ address = "{gpt1}" }} ]

[upstreams.circuit_breaker]
consecutive_failures = 3
open_time = "2s"

[[upstreams]]
name = "llama-pool"
targets = [ {{ address = "{llama}" }} ]

[[upstreams]]
name = "embedding-models"
balance = "least_connections"
targets = [ {{ address = "{embed0}" }}, {{ address = "{embed1}" }} ]

[[routes]]
name = "chat-gpt"
path = "/v1/chat/completions"
methods = ["POST"]
upstream = "gpt-pool"
buffer_request_body = "1MiB"   # the model router reads the body
fallback = [ {{ upstream = "llama-pool", model = "demo-llama" }} ]   # when gpt-pool fails
plugins = [
  {{ name = "model-router", config = {{ models = ["demo-gpt*"] }} }},
  {{ name = "api-key", config = {{ keys = [ {{ key = "demo-key-alice", consumer = "alice" }},
                                          {{ key = "demo-key-bob", consumer = "bob" }} ] }} }},
]

[routes.ai]                    # model calls: tokens in the access log, /metrics, /stats

[[routes]]
name = "chat-llama"
path = "/v1/chat/completions"
methods = ["POST"]
upstream = "llama-pool"
buffer_request_body = "1MiB"
plugins = [
  {{ name = "model-router", config = {{ models = ["demo-llama*"] }} }},
  {{ name = "api-key", config = {{ keys = [ {{ key = "demo-key-alice", consumer = "alice" }} ] }} }},
]

[routes.ai]

[[routes]]
name = "embeddings"
path = "/v1/embeddings"
methods = ["POST"]
upstream = "embedding-models"

[[upstreams]]
name = "detection"
targets = [ {{ address = "{detect}" }} ]

[[upstreams]]
name = "classification"
targets = [ {{ address = "{classify}" }} ]

[[upstreams]]
name = "segmentation"
targets = [ {{ address = "{segment}" }} ]

# One request, three vision models, one JSON answer: detection and segmentation at once,
# classification of what detection found (a pipeline step); the key is checked once.
[[routes]]
name = "vision"
path = "/v1/vision"
methods = ["POST"]
max_response_size = "1MiB"
plugins = [
  {{ name = "api-key", config = {{ keys = [ {{ key = "demo-key-alice", consumer = "alice" }} ] }} }},
]

[[routes.parts]]
name = "detect"
upstream = "detection"
path = "/v1/detect"
required = true                # no detections: the whole request fails
timeout = "2s"

[[routes.parts]]
name = "classify"
upstream = "classification"
path = "/v1/classify"
input = "detect"               # its request body is detection's answer
timeout = "2s"

[[routes.parts]]
name = "segment"
upstream = "segmentation"
path = "/v1/segment"
timeout = "2s"                 # optional: a failure is an error object in the answer
"#,
        listen = d.listen,
        admin = d.admin_listen,
        gpt0 = d.gpt[0],
        gpt1 = d.gpt[1],
        llama = d.llama,
        embed0 = d.embed[0],
        embed1 = d.embed[1],
        detect = d.vision[0],
        classify = d.vision[1],
        segment = d.vision[2],
    )
}

/// The demo's plugins, built by `build.rs` and embedded in the binary.
const API_KEY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/api-key.wasm"));
const MODEL_ROUTER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/model-router.wasm"));

/// Writes the embedded plugins to a fresh directory for the config to name (removed once
/// they are loaded).
fn write_plugins() -> anyhow::Result<PathBuf> {
    if API_KEY.is_empty() || MODEL_ROUTER.is_empty() {
        anyhow::bail!(
            "this binary was built without the demo's plugins ({}); install the target with \
             `rustup target add wasm32-wasip2` and build again",
            env!("PORTCULLIS_DEMO_PLUGINS_ERROR")
        );
    }
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("api-key.wasm"), API_KEY)?;
    std::fs::write(dir.join("model-router.wasm"), MODEL_ROUTER)?;
    Ok(dir)
}

pub async fn run(
    listen: &str,
    admin_listen: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let plugin_dir = write_plugins()?;
    let setup = DemoSetup {
        listen,
        admin_listen,
        gpt: [
            serve_demo_service("gpt-a", Service::Chat).await?,
            serve_demo_service("gpt-b", Service::Chat).await?,
        ],
        llama: serve_demo_service("llama-a", Service::Chat).await?,
        embed: [
            serve_demo_service("embed-a", Service::Embed).await?,
            serve_demo_service("embed-b", Service::Embed).await?,
        ],
        vision: [
            serve_demo_service("detect-a", Service::Detect).await?,
            serve_demo_service("classify-a", Service::Classify).await?,
            serve_demo_service("segment-a", Service::Segment).await?,
        ],
        plugins: &plugin_dir,
    };
    let text = demo_config(&setup);
    let config = config::parse(&text, Path::new("<demo>")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let host = crate::plugin::PluginHost::new(config.server.plugin_cache_dir.as_deref())?;
    let plugins = crate::plugin::PluginSet::load(&host, &config).await;
    let _ = std::fs::remove_dir_all(&plugin_dir);
    let plugins = plugins?;
    let gw = config.server.listen[0].address;
    let admin = config.server.admin_listen.expect("the demo config has one");
    println!("The demo config:\n\n{text}");
    println!(
        "Portcullis demo: model services demo-gpt on {} and {}, demo-llama on {}, embeddings on {} and {}",
        setup.gpt[0], setup.gpt[1], setup.llama, setup.embed[0], setup.embed[1]
    );
    let chat = |model: &str, key: Option<&str>, extra: &str| {
        let key = key.map_or(String::new(), |k| format!(" -H 'x-api-key: {k}'"));
        format!(
            "curl -i{key} http://{gw}/v1/chat/completions -d '{{\"model\":\"{model}\"{extra},\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'"
        )
    };
    println!(
        "Try (the api-key plugin guards the chat routes; the model-router plugin picks the pool):"
    );
    println!("  {}   # 401: no key", chat("demo-gpt", None, ""));
    println!(
        "  {}   # 200 for consumer alice; x-demo-replica alternates gpt-a / gpt-b",
        chat("demo-gpt", Some("demo-key-alice"), "")
    );
    println!(
        "  {}   # the llama pool",
        chat("demo-llama", Some("demo-key-alice"), "")
    );
    println!(
        "  {}   # 401: bob's key is not valid on the llama route",
        chat("demo-llama", Some("demo-key-bob"), "")
    );
    println!(
        "  {}   # 404: no route takes this model",
        chat("other-model", Some("demo-key-alice"), "")
    );
    println!(
        "  {}   # tokens stream as server-sent events",
        chat("demo-gpt", Some("demo-key-bob"), ",\"stream\":true").replacen("-i", "-N", 1)
    );
    println!(
        "  {}   # gpt-pool fails: x-portcullis-served-by: llama-pool:demo-llama",
        chat("demo-gpt", Some("demo-key-alice"), "").replacen("-i", "-i -H 'x-demo-fail: 503'", 1)
    );
    println!("  curl -s http://{admin}/metrics | grep gen_ai_client_token_usage_sum   # tokens by route and model");
    println!("  curl http://{gw}/v1/embeddings -d '{{\"input\":[\"hello\",\"world\"]}}'   # no auth on this route");
    let vision = format!("curl -s -H 'x-api-key: demo-key-alice' http://{gw}/v1/vision -d '{{\"image\":\"aGVsbG8=\"}}'");
    println!("  {vision}   # composite: detect + segment at once, classify fed detect's answer; one JSON object");
    println!(
        "  {}   # segment fails: its error object in a 200",
        vision.replacen("-s", "-s -H 'x-demo-fail: 503'", 1)
    );
    println!("  open http://{admin}/   # the dashboard; http://{admin}/metrics for Prometheus");
    println!();
    crate::app::run(config, plugins, shutdown).await
}
