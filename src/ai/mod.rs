//! Model calls: what the gateway knows of a call to a model API on a route with
//! `[routes.ai]` — its API and operation, the model asked for and the one that answered,
//! the tokens in and out, the time to the first event — read as the bytes pass, never by
//! buffering a response.
//!
//! - [`request`]: the API and operation a path names, the request's `model`, and the body
//!   rewritten to ask a streamed OpenAI chat completion for its usage.
//! - [`sse`]: an incremental `text/event-stream` parser.
//! - [`json`]: an incremental JSON scanner for the few values wanted.
//! - [`prompt`]: the exact token count of a request's prompt, on a route with a
//!   tokenizer.
//! - [`usage`]: both together over a response body ([`usage::Observer`]).
//!
//! A call is an [`Exchange`] on the request side (built by `proxy::model`), and a
//! [`Meter`] riding in the response body (`proxy::body::ResponseBody`), which records the
//! metrics and the access-log fields when the body ends, fails or is abandoned.

pub mod json;
pub mod prompt;
#[cfg(test)]
mod recorded;
pub mod request;
pub mod sse;
pub mod usage;

use crate::metrics::{ModelTable, OUTCOMES};
use bytes::{BufMut, Bytes};
pub use request::{Api, Operation};
use std::sync::Arc;
use std::time::Instant;
use usage::{Format, Observer, Report};

/// A model call as the request showed it.
pub struct Exchange {
    pub api: Api,
    pub operation: Operation,
    /// The request's `model`, when the body was read.
    pub request_model: Option<Box<str>>,
    /// The gateway added `stream_options.include_usage`: strip it from the response.
    pub injected: bool,
    /// Send the API's error event when the stream fails.
    pub error_event: bool,
    /// The route's metrics by model.
    pub metrics: Arc<ModelTable>,
    /// The request's output cap (`max_tokens` and its other names), if it said.
    pub max_tokens: Option<u64>,
    /// The request body's length, when it was read.
    pub body_len: Option<u64>,
    /// The prompt's tokens, when the route's tokenizer counted them.
    pub prompt_tokens: Option<u64>,
}

/// How a response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Sent whole.
    Complete,
    /// The upstream failed after the head was sent (the access-log error code).
    Failed(&'static str),
    /// The client went away first.
    ClientGone,
}

/// What a model call's access-log line says of it.
#[derive(Clone, Debug, Default)]
pub struct CallLog {
    pub request_model: Option<Box<str>>,
    pub response_model: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub ttft_ms: Option<f64>,
}

/// A model call's response, observed as it streams.
pub struct Meter {
    exchange: Box<Exchange>,
    /// `None`: the body cannot be read (not JSON or an event stream, or encoded).
    observer: Option<Observer>,
    status: u16,
    start: Instant,
}

impl Meter {
    /// The meter of a response with this status and headers, to a call that arrived at
    /// `start`.
    pub fn new(
        exchange: Box<Exchange>,
        status: u16,
        headers: &http::HeaderMap,
        start: Instant,
    ) -> Self {
        let value = |h| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("");
        let encoded = !matches!(
            value(http::header::CONTENT_ENCODING).trim(),
            "" | "identity"
        );
        // Compared without case, and without a lowercased copy per response.
        let ct = value(http::header::CONTENT_TYPE).as_bytes();
        let format = if ct
            .get(..17)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"text/event-stream"))
        {
            Some(Format::EventStream)
        } else if ct.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")) {
            Some(Format::Json)
        } else {
            None
        };
        let observer = format.filter(|_| !encoded).map(|f| {
            if exchange.injected {
                Observer::stripping(f)
            } else {
                Observer::new(f)
            }
        });
        Meter {
            exchange,
            observer,
            status,
            start,
        }
    }

    /// Whether it may change the body's bytes (its length is then not known ahead).
    pub fn edits(&self) -> bool {
        self.observer.as_ref().is_some_and(Observer::edits)
    }

    /// Reads a piece of the body; `Some`: send these bytes instead.
    pub fn observe(&mut self, chunk: &Bytes) -> Option<Bytes> {
        self.observer.as_mut()?.observe(chunk)
    }

    /// Bytes held back that must still be sent (at the end, or before trailers).
    pub fn flush(&mut self) -> Option<Bytes> {
        let held = self.observer.as_mut()?.flush();
        (!held.is_empty()).then_some(held)
    }

    /// The last bytes of a failed event stream: what was held, line ends to close the
    /// event it stopped in, and the API's error event with `code` — when the route sends
    /// one and the body is an event stream.
    pub fn error_event(&mut self, code: &str, message: &str) -> Option<Bytes> {
        let o = self.observer.as_mut()?;
        if !self.exchange.error_event || o.format() != Format::EventStream {
            return None;
        }
        let mut out = o.terminator();
        self.put_error_event(&mut out, code, message);
        Some(out.freeze())
    }

    /// The API's error event alone, for a stream already at an event boundary (one cut
    /// into events by `proxy::events`); `None` as for [`Meter::error_event`].
    pub fn bare_error_event(&self, code: &str, message: &str) -> Option<Bytes> {
        let o = self.observer.as_ref()?;
        if !self.exchange.error_event || o.format() != Format::EventStream {
            return None;
        }
        let mut out = bytes::BytesMut::new();
        self.put_error_event(&mut out, code, message);
        Some(out.freeze())
    }

    /// The call's API.
    pub fn api(&self) -> Api {
        self.exchange.api
    }

    /// The tokens the response has reported so far.
    pub fn usage_so_far(&self) -> usage::Usage {
        self.observer
            .as_ref()
            .map(Observer::usage_so_far)
            .unwrap_or_default()
    }

    fn put_error_event(&self, out: &mut bytes::BytesMut, code: &str, message: &str) {
        let event = match self.exchange.api {
            Api::OpenAi => serde_json::json!({
                "error": {"message": message, "type": "server_error", "code": code}
            }),
            Api::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": "api_error", "message": message}
            }),
        };
        if self.exchange.api == Api::Anthropic {
            out.put_slice(b"event: error\n");
        }
        out.put_slice(b"data: ");
        out.put_slice(event.to_string().as_bytes());
        out.put_slice(b"\n\n");
    }

    /// Records the call in its route's metrics; returns what its access-log line says.
    pub fn finish(&mut self, end: End) -> CallLog {
        let now = Instant::now();
        let report = self
            .observer
            .as_mut()
            .map(Observer::report)
            .unwrap_or_default();
        let Report {
            model,
            usage,
            first_event,
            upstream_error,
            ..
        } = report;
        let m = self.exchange.metrics.get(
            self.exchange.request_model.as_deref().unwrap_or(""),
            model.as_deref().unwrap_or(""),
        );
        let outcome = match end {
            End::Failed(code) => code,
            End::ClientGone => "client_closed",
            End::Complete if self.status >= 500 => "status_5xx",
            End::Complete if self.status >= 400 => "status_4xx",
            End::Complete if upstream_error => "upstream_error_event",
            End::Complete => "ok",
        };
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            m.outcomes[i].inc();
        }
        if let Some(n) = usage.input {
            m.input_tokens.observe(n as f64);
        }
        if let Some(n) = usage.output {
            m.output_tokens.observe(n as f64);
        }
        let ttft = first_event.map(|t| t.saturating_duration_since(self.start));
        if let Some(t) = ttft {
            m.time_to_first_token.observe(t.as_secs_f64());
        }
        if let (Some(first), Some(out)) = (first_event, usage.output) {
            if out > 1 && end == End::Complete {
                let per = now.saturating_duration_since(first).as_secs_f64() / (out - 1) as f64;
                m.time_per_output_token.observe(per);
            }
        }
        CallLog {
            request_model: self.exchange.request_model.take(),
            response_model: model,
            input_tokens: usage.input,
            output_tokens: usage.output,
            ttft_ms: ttft.map(|t| t.as_secs_f64() * 1e3),
        }
    }
}
