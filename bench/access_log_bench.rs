//! The access-log line's cost, old way against new (not a test; prints same-run ratios):
//!
//! - `old`: the line as a `tracing` event with the record's 25 fields, formatted by
//!   `tracing_subscriber`'s fmt layer (text, or JSON with `flatten_event`) into
//!   `io::sink()` — what `AccessLog::emit` did before the dedicated writer; no ANSI codes
//!   and no I/O, so only the formatting is counted;
//! - `new`: `AccessLog::write`, the same line formatted straight into a reused buffer;
//! - `emit`: the whole new path, `AccessLog::emit` — this thread's batch, and the
//!   `portcullis-access-log` thread writing the batches to `/dev/null`.
//!
//! `cargo run --example access-log-bench [LINES]` (dev profile: the crate itself is built
//! at opt-level 0 and its dependencies — `tracing_subscriber` — at 2, so the ratio is
//! pessimistic for the new path; `--release` gives the shipped numbers).

use http::{HeaderValue, Method, StatusCode};
use portcullis::ai::CallLog;
use portcullis::config::AccessLogFormat;
use portcullis::proxy::access_log::{writer, AccessLog};
use portcullis::proxy::trace_context::TraceId;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

fn record() -> AccessLog {
    AccessLog {
        start: Instant::now(),
        client: "127.0.0.1:53412".parse().unwrap(),
        method: Method::POST,
        path: "/v1/chat/completions".to_string(),
        route: Some(Arc::from("chat")),
        endpoint: Some(Arc::from("127.0.0.1:8001")),
        status: StatusCode::OK,
        request_id: HeaderValue::from_static("5d3fee699350395d0000000000000000"),
        upstream_ms: Some(1.734_211),
        error: None,
        consumer: Some("alice".to_string()),
        trace_id: TraceId(*b"\x4b\xf9\x2f\x35\x77\xb3\x4d\xa6\xa3\xce\x92\x9d\x0e\x0e\x47\x36"),
        plugin: None,
        stream_plugin: None,
        served_by: None,
        call: Some(CallLog {
            request_model: Some("gpt-4o-mini".into()),
            response_model: Some("gpt-4o-mini-2024-07-18".to_string()),
            input_tokens: Some(13),
            output_tokens: Some(21),
            ttft_ms: Some(0.912),
        }),
        parts: None,
    }
}

/// The event `AccessLog::emit` sent before the dedicated writer, field for field.
fn old_emit(r: &AccessLog, bytes: u64) {
    let call = r.call.as_ref();
    let count = |n: Option<u64>| n.map_or(-1, |n| n.min(i64::MAX as u64) as i64);
    let plugin = |p: &Option<(Arc<str>, &'static str)>| match p {
        Some((name, outcome)) => format!("{name}:{outcome}"),
        None => "-".to_string(),
    };
    let tunnel: Option<&str> = None;
    tracing::info!(
        target: "access",
        client = %r.client,
        method = %r.method,
        path = %r.path,
        route = r.route.as_deref().unwrap_or("-"),
        upstream = r.endpoint.as_deref().unwrap_or("-"),
        status = r.status.as_u16(),
        bytes,
        duration_ms = r.start.elapsed().as_secs_f64() * 1e3,
        upstream_ms = r.upstream_ms.unwrap_or(-1.0),
        error = r.error.unwrap_or("-"),
        consumer = r.consumer.as_deref().unwrap_or("-"),
        plugin = %plugin(&r.plugin),
        stream_plugin = %plugin(&r.stream_plugin),
        served_by = r.served_by.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
        parts = r.parts.as_deref(),
        model = call.and_then(|c| c.request_model.as_deref()).unwrap_or("-"),
        response_model = call.and_then(|c| c.response_model.as_deref()).unwrap_or("-"),
        input_tokens = count(call.and_then(|c| c.input_tokens)),
        output_tokens = count(call.and_then(|c| c.output_tokens)),
        ttft_ms = call.and_then(|c| c.ttft_ms).unwrap_or(-1.0),
        request_id = r.request_id.to_str().unwrap_or("-"),
        trace_id = %r.trace_id,
        upgrade = tunnel,
        bytes_received = tunnel.map(|_| 0u64),
        closed_by = tunnel,
        close_reason = tunnel,
    );
}

/// Nanoseconds per line of `f`, the best of three runs of `lines`.
fn per_line(lines: u32, mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..lines {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(lines)
        })
        .fold(f64::INFINITY, f64::min)
}

fn old(lines: u32, r: &AccessLog, format: AccessLogFormat) -> f64 {
    use tracing_subscriber::prelude::*;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(std::io::sink);
    let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = match format {
        AccessLogFormat::Text => Box::new(tracing_subscriber::registry().with(layer)),
        AccessLogFormat::Json => {
            Box::new(tracing_subscriber::registry().with(layer.json().flatten_event(true)))
        }
    };
    tracing::subscriber::with_default(subscriber, || per_line(lines, || old_emit(r, 1234)))
}

fn new(lines: u32, r: &AccessLog, format: AccessLogFormat) -> f64 {
    let mut buf = Vec::with_capacity(1024);
    per_line(lines, || {
        buf.clear();
        r.write(&mut buf, format, SystemTime::now(), 1234, None);
        std::hint::black_box(&buf);
    })
}

fn main() {
    let lines: u32 = std::env::args()
        .nth(1)
        .map_or(200_000, |n| n.parse().expect("LINES: a number"));
    let r = record();
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    println!("{lines} lines each, best of 3 ({profile} build)");
    for format in [AccessLogFormat::Text, AccessLogFormat::Json] {
        let (o, n) = (old(lines, &r, format), new(lines, &r, format));
        println!(
            "{format:?}: old (tracing fmt) {o:7.0} ns/line   new {n:7.0} ns/line   old/new {:.1}x",
            o / n
        );
    }
    let out = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null");
    let flush = writer::start(writer::Output::File(out), AccessLogFormat::Json)
        .expect("start the access-log writer");
    let e = per_line(lines, || r.emit(1234, None));
    drop(flush);
    println!("emit (JSON, batched, written to /dev/null by the writer thread): {e:7.0} ns/line");
}
