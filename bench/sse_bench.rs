//! The SSE relay benchmark's two ends (driven by `bench/sse.sh`; not a test):
//!
//! - `sse-bench serve PORT`: an OpenAI-shaped chat completion stream server on
//!   127.0.0.1:PORT. `POST /v1/chat/completions?events=N&gap_us=G&batch=B&pad=P` answers
//!   with N chunk events (content of P bytes: `x`s, or words under a `/words/` path), B events per write, G µs between writes
//!   (0: as fast as the reader takes them), then `[DONE]`. Each event carries `"t":NANOS`,
//!   the wall-clock time it was written. As OpenAI does, a request with
//!   `stream_options.include_usage` gets `"usage":null` in every chunk and a usage-only
//!   chunk before `[DONE]`.
//! - `sse-bench run URL MODE STREAMS EVENTS [ask]`: opens STREAMS concurrent streams of
//!   EVENTS events each (`ask`: the request sets `stream_options.include_usage`, else the
//!   gateway adds it and strips it back out: the client checks that no usage reaches it) and prints one line: `throughput EVENTS_PER_S` (MODE `throughput`:
//!   batches, no gaps) or `latency P50_US P99_US P999_US` (MODE `latency`: one event per
//!   write, 1 ms apart; latency is arrival − `t`, both read from the same clock).

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::demo::ChannelBody;
use std::convert::Infallible;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

fn query(req: &Request<Incoming>, key: &str, default: u64) -> u64 {
    req.uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        })
        .unwrap_or(default)
}

async fn serve_stream(req: Request<Incoming>) -> Result<Response<ChannelBody>, Infallible> {
    let events = query(&req, "events", 1000);
    let gap = Duration::from_micros(query(&req, "gap_us", 0));
    let batch = query(&req, "batch", 1).max(1);
    let pad_len = query(&req, "pad", 32) as usize;
    // Under a `/words/` path the content is words ending with a space (as model text
    // mostly is), not one long run of `x`: `bench/events.sh` uses it for `redact`.
    let pad = if req.uri().path().contains("/words/") {
        "word ".repeat(pad_len.div_ceil(5))
    } else {
        "x".repeat(pad_len)
    };
    // As OpenAI does: with `stream_options.include_usage` every chunk carries
    // `"usage":null` and a usage-only chunk ends the stream; without, no usage at all.
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let usage = body.is_ok_and(|b| memchr::memmem::find(&b, br#""include_usage":true"#).is_some());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut sent = 0;
        while sent < events {
            let mut b = BytesMut::new();
            let n = batch.min(events - sent);
            let t = now_ns();
            for _ in 0..n {
                b.extend_from_slice(chunk_event(&pad, t, usage).as_bytes());
            }
            sent += n;
            if tx.send(b.freeze()).await.is_err() {
                return;
            }
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
        }
        if !usage {
            let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
            return;
        }
        let tail = format!("data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[],\"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":{events},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n", events + 10);
        let _ = tx.send(Bytes::from(tail)).await;
    });
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .body(ChannelBody(rx))
        .expect("valid response"))
}

/// One chunk event of `serve`'s stream: content `pad`, written at `t` (ns), with
/// `"usage":null` (last, where OpenAI puts it) when the request asked for usage.
fn chunk_event(pad: &str, t: u128, usage: bool) -> String {
    let usage = if usage { ",\"usage\":null" } else { "" };
    format!("data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"t\":{t},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{pad}\"}},\"finish_reason\":null}}]{usage}}}\n\n")
}

async fn serve(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), service_fn(serve_stream))
                .await;
        });
    }
}

/// One stream: (events seen, latencies in µs when measuring them).
async fn one_stream(url: String, latency: bool, ask: bool) -> (u64, Vec<f64>) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let body = if ask {
        r#"{"model":"bench","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#
    } else {
        r#"{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
    };
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid request");
    let resp = client.request(req).await.expect("request");
    assert!(resp.status().is_success(), "status {}", resp.status());
    let mut body = resp.into_body();
    let (mut events, mut lat) = (0u64, Vec::new());
    let finder = memchr::memmem::Finder::new(b"\"t\":");
    while let Some(f) = body.frame().await {
        let Ok(d) = f.expect("stream").into_data() else {
            continue;
        };
        let arrived = now_ns();
        events += memchr::memmem::find_iter(&d, b"data: ").count() as u64;
        assert!(
            ask || memchr::memmem::find(&d, b"\"usage\"").is_none(),
            "usage the client did not ask for reached it"
        );
        if latency {
            for at in finder.find_iter(&d) {
                let digits: Vec<u8> = d[at + 4..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .copied()
                    .collect();
                if let Some(t) = std::str::from_utf8(&digits)
                    .ok()
                    .and_then(|s| s.parse::<u128>().ok())
                {
                    lat.push(arrived.saturating_sub(t) as f64 / 1e3);
                }
            }
        }
    }
    (events, lat)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(url: &str, mode: &str, streams: usize, events: u64, ask: bool) {
    let latency = mode == "latency";
    let q = if latency {
        format!("?events={events}&gap_us=1000&batch=1&pad=32")
    } else {
        format!("?events={events}&gap_us=0&batch=64&pad=32")
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| tokio::spawn(one_stream(format!("{url}{q}"), latency, ask)))
        .collect();
    let (mut total, mut lat) = (0u64, Vec::new());
    for t in tasks {
        let (n, l) = t.await.expect("stream task");
        total += n;
        lat.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    if latency {
        lat.sort_by(f64::total_cmp);
        println!(
            "latency {:.1} {:.1} {:.1}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 0.999)
        );
    } else {
        println!("throughput {:.0}", total as f64 / secs);
    }
}

/// `sse-bench observe [EVENTS [MODE]]`: the usage observer alone, in this process, over the
/// stream `serve` writes (64 events per piece): nanoseconds per event reading it as it
/// passes, and stripping, against copying the same bytes once (what relaying costs at
/// least). Prints one line per mode (only MODE's when given).
fn observe(events: usize, only: Option<&str>) {
    use portcullis::ai::usage::{Format, Observer};
    let pad = "x".repeat(32);
    let mut piece = BytesMut::new();
    for _ in 0..64 {
        // What the upstream sends when usage was asked for (by the client or the gateway).
        piece.extend_from_slice(chunk_event(&pad, now_ns(), true).as_bytes());
    }
    let piece = piece.freeze();
    let pieces = events.div_ceil(64);
    let per_event = |d: Duration| d.as_nanos() as f64 / (pieces * 64) as f64;
    let mut sink = vec![0u8; piece.len()];
    let started = Instant::now();
    for _ in 0..pieces {
        sink.copy_from_slice(std::hint::black_box(&piece));
        std::hint::black_box(&mut sink);
    }
    println!(
        "copy {:.2} ns/event ({} bytes/event)",
        per_event(started.elapsed()),
        piece.len() / 64
    );
    for (name, stripping) in [("observe", false), ("strip", true)] {
        if only.is_some_and(|m| m != name) {
            continue;
        }
        let mut o = if stripping {
            Observer::stripping(Format::EventStream)
        } else {
            Observer::new(Format::EventStream)
        };
        let started = Instant::now();
        for _ in 0..pieces {
            std::hint::black_box(o.observe(std::hint::black_box(&piece)));
        }
        println!("{name} {:.2} ns/event", per_event(started.elapsed()));
        std::hint::black_box(o.report());
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(args[2].parse().expect("PORT")).await,
        Some("run") => {
            run(
                &args[2],
                &args[3],
                args[4].parse().expect("STREAMS"),
                args[5].parse().expect("EVENTS"),
                args.get(6).is_some_and(|a| a == "ask"),
            )
            .await
        }
        Some("observe") => observe(
            args.get(2)
                .map_or(2_000_000, |n| n.parse().expect("EVENTS")),
            args.get(3).map(String::as_str),
        ),
        _ => {
            eprintln!("usage: sse-bench serve PORT | sse-bench run URL throughput|latency STREAMS EVENTS [ask] | sse-bench observe [EVENTS [observe|strip]]");
            std::process::exit(2);
        }
    }
}
