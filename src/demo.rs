//! `portcullis demo`: two replicas of an OpenAI-style chat-completions service (streaming
//! tokens as server-sent events), two of an embeddings service, and a gateway in front of
//! them — one process, no setup.

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
use std::path::Path;
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

async fn chat(req: Request<Incoming>, replica: &'static str) -> Response<DemoBody> {
    if req.method() != http::Method::POST {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "use POST"}),
            replica,
        );
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = parsed["model"].as_str().unwrap_or("demo-llm").to_string();
    let prompt = parsed["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let answer = format!("Hello from {replica}! You said: {prompt}");
    let words: Vec<String> = answer.split_inclusive(' ').map(str::to_string).collect();
    if parsed["stream"].as_bool() != Some(true) {
        return json(
            StatusCode::OK,
            serde_json::json!({
                "id": "chatcmpl-demo", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            }),
            replica,
        );
    }
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
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
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

async fn serve_demo_service(name: &'static str, embed: bool) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req| async move {
                    Ok::<_, Infallible>(if embed {
                        embeddings(req, name).await
                    } else {
                        chat(req, name).await
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

/// The demo's config text, with the demo services' addresses filled in.
pub fn demo_config(listen: &str, chat: [SocketAddr; 2], embed: [SocketAddr; 2]) -> String {
    format!(
        r#"[server]
listen = "{listen}"

[[upstreams]]
name = "chat-models"
balance = "round_robin"
targets = [ {{ address = "{}" }}, {{ address = "{}" }} ]

[upstreams.circuit_breaker]
consecutive_failures = 3
open_time = "2s"

[upstreams.retry]              # POSTs are retried only when the connection was never made
attempts = 2

[[upstreams]]
name = "embedding-models"
balance = "least_connections"
targets = [ {{ address = "{}" }}, {{ address = "{}" }} ]

[upstreams.outlier_detection]
consecutive_gateway_errors = 3

[[routes]]
name = "chat"
path = "/v1/chat/completions"
methods = ["POST"]
upstream = "chat-models"

[[routes]]
name = "embeddings"
path = "/v1/embeddings"
methods = ["POST"]
upstream = "embedding-models"
"#,
        chat[0], chat[1], embed[0], embed[1]
    )
}

pub async fn run(
    listen: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let chat = [
        serve_demo_service("chat-a", false).await?,
        serve_demo_service("chat-b", false).await?,
    ];
    let embed = [
        serve_demo_service("embed-a", true).await?,
        serve_demo_service("embed-b", true).await?,
    ];
    let text = demo_config(listen, chat, embed);
    let config = config::parse(&text, Path::new("<demo>")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let gw = config.server.listen[0].address;
    println!(
        "Portcullis demo: chat replicas on {} and {}, embedding replicas on {} and {}",
        chat[0], chat[1], embed[0], embed[1]
    );
    println!("The demo config:\n\n{text}");
    println!("Try:");
    println!("  curl -N http://{gw}/v1/chat/completions -d '{{\"model\":\"demo-llm\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'");
    println!("  curl -i http://{gw}/v1/chat/completions -d '{{\"model\":\"demo-llm\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'   # x-demo-replica alternates");
    println!("  curl http://{gw}/v1/embeddings -d '{{\"input\":[\"hello\",\"world\"]}}'");
    println!("  curl -i http://{gw}/v1/models   # 404 with the JSON error body");
    println!();
    let plugins = crate::plugin::PluginSet::none(config.routes.len());
    crate::app::run(config, plugins, shutdown).await
}
