//! Streamed responses through `stream-transform` plugins: the upstream's event stream
//! (SSE; NDJSON on routes with `[routes.events] ndjson = true`) cut into whole events, each
//! handed to the route's stream plugins in turn (reverse route order, like `on-response`)
//! and sent on as soon as the last of them returns — no batching. One event at a time is
//! held (its bytes as sent, and its fields for the plugins), up to the route's
//! `max_event_size`; an event that ends in a piece already read is sliced out of it, not
//! copied. A model call's meter reads the upstream's bytes before the plugins do, so usage
//! accounting sees what the upstream sent and plugins get the usage so far.
//!
//! Set up by [`Gateway::event_chain`] once the response head is known; the stage then
//! rides in the response body (`body::Inner::Events`), so routes without a stream plugin
//! keep their body path exactly as it was.

use super::access_log::AccessLog;
use super::body::ResponseBody;
use super::context::RequestCtx;
use super::error::ProxyError;
use super::Gateway;
use crate::ai::sse::{self, NamedField};
use crate::ai::Meter;
use crate::config::OnError;
use crate::plugin::stream::{Api, Event, EventAction, Framing, Held, StreamInfo, Usage};
use crate::plugin::{PluginFailure, Pool};
use crate::upstream::pool::PooledBody;
use crate::BoxError;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, Response};
use http_body::{Body, Frame};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// The stream was ended by a plugin's failure (`on_error = "deny"`) or an event over
/// `max_event_size`: the response body fails with this after the error event.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}` failed on the event stream: {reason}")]
pub struct StreamAborted {
    pub plugin: Arc<str>,
    pub reason: String,
}

/// The access-log `stream_plugin` outcome of a plugin, and its name.
type Note = (Arc<str>, &'static str);

/// One event's trip through the plugins, owning them while it runs.
type Call = Pin<Box<dyn Future<Output = (Vec<Held>, Verdict, Option<Note>)> + Send>>;

/// What the plugins made of one event.
enum Verdict {
    /// Send its bytes as they came.
    Pass,
    /// Send these bytes instead (empty: dropped).
    Send(Bytes),
    /// Send these bytes (possibly none), then end the response.
    End(Bytes, Arc<str>),
    /// A plugin failed under `on_error = "deny"`.
    Failed(Arc<str>, PluginFailure),
}

/// What cutting the next event out of the piece gave.
enum Cut {
    /// An event for the plugins, and its bytes.
    Event(Event, Bytes),
    /// Bytes to send as they are (no event: comments, blank lines; or an oversized event
    /// passing under `on_error = "allow"`).
    Pass(Bytes),
    /// The piece ended inside an event (now held).
    Partial,
}

/// The event-level reader and writer of one streamed response.
pub struct EventStage {
    body: PooledBody,
    /// A frame read ahead (`ResponseBody::first_frame`), read before the body.
    first: Option<Frame<Bytes>>,
    framing: Framing,
    parser: sse::Parser,
    fields: Fields,
    /// The bytes of the current event from earlier pieces.
    held: BytesMut,
    /// The piece being cut into events, and how far it has been.
    piece: Bytes,
    at: usize,
    /// The upstream's body has ended (`terminated`: what closes a partial last event has
    /// been fed too).
    upstream_done: bool,
    terminated: bool,
    trailers: Option<HeaderMap>,
    /// The plugins, while no call runs.
    plugins: Vec<Held>,
    call: Option<Call>,
    /// The bytes of the event whose call runs.
    raw: Bytes,
    max_event: usize,
    /// An oversized event passes as it comes (`on_error = "allow"`).
    passing: bool,
    /// A plugin ended the stream.
    ended: bool,
    /// The upstream sent something since the body last looked: its idle timer restarts
    /// even when nothing went to the client (events dropped or held).
    pub upstream_active: bool,
}

impl EventStage {
    fn new(
        body: PooledBody,
        first: Option<Frame<Bytes>>,
        plugins: Vec<Held>,
        framing: Framing,
        max_event: usize,
    ) -> Self {
        EventStage {
            body,
            first,
            framing,
            parser: sse::Parser::default(),
            fields: Fields {
                limit: max_event,
                ..Fields::default()
            },
            held: BytesMut::new(),
            piece: Bytes::new(),
            at: 0,
            upstream_done: false,
            terminated: false,
            trailers: None,
            plugins,
            call: None,
            raw: Bytes::new(),
            max_event,
            passing: false,
            ended: false,
            upstream_active: false,
        }
    }

    /// The error event that ends a failed stream (already at an event boundary: partial
    /// events are never sent): the model API's on `[routes.ai]` routes, else a plain one
    /// when a plugin ended it; `None` for an upstream failure off such routes (the body
    /// just fails, as without plugins).
    pub fn error_event(&self, meter: Option<&Meter>, code: &str, e: &BoxError) -> Option<Bytes> {
        let aborted = e.is::<StreamAborted>();
        let message = if aborted {
            e.to_string()
        } else {
            format!("the upstream failed mid-stream: {e}")
        };
        if self.framing == Framing::Sse {
            if let Some(event) = meter.and_then(|m| m.bare_error_event(code, &message)) {
                return Some(event);
            }
        }
        if !aborted {
            return None;
        }
        let json = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
        let mut out = BytesMut::with_capacity(json.len() + 24);
        if self.framing == Framing::Sse {
            out.put_slice(b"event: error\ndata: ");
            out.put_slice(json.as_bytes());
            out.put_slice(b"\n\n");
        } else {
            out.put_slice(json.as_bytes());
            out.put_slice(b"\n");
        }
        Some(out.freeze())
    }

    /// The next frame for the client. `Ok(None)`: the response is complete (the upstream
    /// ended, or a plugin ended it). Errors: the upstream's, or [`StreamAborted`].
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        meter: &mut Option<Box<Meter>>,
        log: &mut Option<Box<AccessLog>>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(call) = self.call.as_mut() {
                let (plugins, verdict, note) = ready!(call.as_mut().poll(cx));
                self.call = None;
                self.plugins = plugins;
                if let (Some(note), Some(log)) = (note, log.as_mut()) {
                    log.stream_plugin = Some(note);
                }
                let raw = std::mem::take(&mut self.raw);
                let out = match verdict {
                    Verdict::Pass => raw,
                    Verdict::Send(bytes) => bytes,
                    Verdict::End(bytes, plugin) => {
                        if let Some(log) = log.as_mut() {
                            log.stream_plugin = Some((plugin, "end"));
                        }
                        self.ended = true;
                        bytes
                    }
                    Verdict::Failed(plugin, failure) => {
                        return Poll::Ready(Some(Err(self.abort(
                            plugin,
                            "error",
                            failure.to_string(),
                            log,
                        ))));
                    }
                };
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                continue;
            }
            if self.ended {
                return Poll::Ready(None);
            }
            if self.at < self.piece.len() {
                if self.plugins.is_empty() {
                    // Every plugin has failed under `allow`: the rest passes untouched.
                    let mut out = self.held.split();
                    out.extend_from_slice(&self.piece[self.at..]);
                    self.at = self.piece.len();
                    self.terminated = true;
                    return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                }
                let cut = match self.framing {
                    Framing::Sse => self.cut_sse(),
                    Framing::Ndjson => self.cut_line(),
                };
                match cut {
                    Ok(Cut::Event(event, raw)) => {
                        let usage = meter.as_ref().map(|m| {
                            let u = m.usage_so_far();
                            Usage {
                                input_tokens: u.input,
                                output_tokens: u.output,
                            }
                        });
                        self.raw = raw;
                        let plugins = std::mem::take(&mut self.plugins);
                        self.call = Some(Box::pin(run_chain(plugins, event, usage, self.framing)));
                    }
                    Ok(Cut::Pass(raw)) => {
                        if !raw.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(raw))));
                        }
                    }
                    Ok(Cut::Partial) => {}
                    Err(plugin) => {
                        let reason = format!(
                            "an event is larger than max_event_size ({} bytes)",
                            self.max_event
                        );
                        return Poll::Ready(Some(Err(self.abort(plugin, "oversize", reason, log))));
                    }
                }
                continue;
            }
            if self.upstream_done {
                if !self.terminated {
                    // What closes a partial last event, so that it too goes through the
                    // plugins (a client would discard it unclosed).
                    self.terminated = true;
                    let t: &'static [u8] = match self.framing {
                        Framing::Sse => self.parser.terminator(),
                        Framing::Ndjson if self.held.is_empty() => b"",
                        Framing::Ndjson => b"\n",
                    };
                    self.piece = Bytes::from_static(t);
                    self.at = 0;
                    continue;
                }
                if let Some(t) = self.trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                return Poll::Ready(None);
            }
            let frame = match self.first.take() {
                Some(f) => Some(Ok(f)),
                None => ready!(Pin::new(&mut self.body).poll_frame(cx)),
            };
            self.upstream_active = true;
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.piece = match meter.as_mut().and_then(|m| m.observe(&data)) {
                            None => data,
                            Some(edited) => edited,
                        };
                        self.at = 0;
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers = Some(t);
                            self.end_of_upstream(meter);
                        }
                    }
                },
                None => self.end_of_upstream(meter),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    /// The upstream's body ended: what the meter still holds is the last piece.
    fn end_of_upstream(&mut self, meter: &mut Option<Box<Meter>>) {
        self.upstream_done = true;
        if let Some(held) = meter.as_mut().and_then(|m| m.flush()) {
            self.piece = held;
            self.at = 0;
        }
    }

    /// The stream ends with `plugin`'s failure: noted in the access log; the held partial
    /// event is dropped (it never reached a plugin).
    fn abort(
        &mut self,
        plugin: Arc<str>,
        outcome: &'static str,
        reason: String,
        log: &mut Option<Box<AccessLog>>,
    ) -> BoxError {
        tracing::warn!(plugin = &*plugin, %reason, "event stream ended: on_error = deny");
        if let Some(log) = log.as_mut() {
            log.stream_plugin = Some((plugin.clone(), outcome));
        }
        self.held.clear();
        self.ended = true;
        Box::new(StreamAborted { plugin, reason })
    }

    /// An event over `max_event_size`: `Err(plugin)` when a plugin's `on_error` is deny,
    /// else it passes as it comes.
    fn oversize(&self) -> Result<(), Arc<str>> {
        match self.plugins.iter().find(|p| p.on_error() == OnError::Deny) {
            Some(p) => Err(p.name().clone()),
            None => Ok(()),
        }
    }

    /// The rest of the piece holds no end of an event: hold it, or pass it when the event
    /// is too large.
    fn hold_rest(&mut self) -> Result<Cut, Arc<str>> {
        let rest = self.piece.slice(self.at..);
        self.at = self.piece.len();
        if self.passing {
            return Ok(Cut::Pass(rest));
        }
        if self.held.len() + rest.len() > self.max_event {
            self.oversize()?;
            self.passing = true;
            self.fields.reset();
            let mut out = self.held.split();
            out.extend_from_slice(&rest);
            return Ok(Cut::Pass(out.freeze()));
        }
        self.held.extend_from_slice(&rest);
        Ok(Cut::Partial)
    }

    /// The bytes of the event that ends `n` bytes into the rest of the piece.
    fn take_raw(&mut self, n: usize) -> Bytes {
        let end = self.at + n;
        let raw = if self.held.is_empty() {
            self.piece.slice(self.at..end)
        } else {
            self.held.extend_from_slice(&self.piece[self.at..end]);
            self.held.split().freeze()
        };
        self.at = end;
        raw
    }

    fn cut_sse(&mut self) -> Result<Cut, Arc<str>> {
        let n = self
            .parser
            .feed_event(&self.piece[self.at..], &mut self.fields);
        if !self.fields.boundary {
            return self.hold_rest();
        }
        let raw = self.take_raw(n);
        let passing = std::mem::take(&mut self.passing);
        if passing || !self.fields.dispatched {
            self.fields.reset();
            return Ok(Cut::Pass(raw));
        }
        if raw.len() > self.max_event || self.fields.over {
            self.fields.reset();
            self.oversize()?;
            return Ok(Cut::Pass(raw));
        }
        Ok(Cut::Event(self.fields.take_event(), raw))
    }

    fn cut_line(&mut self) -> Result<Cut, Arc<str>> {
        let Some(k) = memchr::memchr(b'\n', &self.piece[self.at..]) else {
            return self.hold_rest();
        };
        let raw = self.take_raw(k + 1);
        if std::mem::take(&mut self.passing) {
            return Ok(Cut::Pass(raw));
        }
        if raw.len() > self.max_event {
            self.oversize()?;
            return Ok(Cut::Pass(raw));
        }
        let line = raw.strip_suffix(b"\n").unwrap_or(&raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(Cut::Pass(raw));
        }
        let event = Event {
            name: None,
            data: String::from_utf8_lossy(line).into_owned(),
            id: None,
        };
        Ok(Cut::Event(event, raw))
    }
}

/// One event through the plugins in turn: each sees what the one before made of it.
async fn run_chain(
    mut plugins: Vec<Held>,
    mut event: Event,
    usage: Option<Usage>,
    framing: Framing,
) -> (Vec<Held>, Verdict, Option<Note>) {
    let mut replaced = false;
    let mut note = None;
    let mut i = 0;
    while i < plugins.len() {
        let result = match plugins[i].on_event(&event, usage).await {
            Ok(EventAction::End(last)) => match last.map(|e| encode(&e, framing)).transpose() {
                Ok(bytes) => {
                    let name = plugins[i].name().clone();
                    return (plugins, Verdict::End(bytes.unwrap_or_default(), name), note);
                }
                Err(e) => Err(PluginFailure::Trap(format!("invalid final event: {e}"))),
            },
            other => other,
        };
        match result {
            Ok(EventAction::Pass) => {}
            Ok(EventAction::Replace(data)) => {
                event.data = data;
                replaced = true;
            }
            Ok(EventAction::Drop) => return (plugins, Verdict::Send(Bytes::new()), note),
            Ok(EventAction::End(_)) => unreachable!("handled above"),
            Err(failure) => {
                let name = plugins[i].name().clone();
                if plugins[i].on_error() == OnError::Deny {
                    return (plugins, Verdict::Failed(name, failure), note);
                }
                tracing::warn!(plugin = &*name, error = %failure, "on-event failed; on_error = allow sends the rest of the stream on without it");
                note = Some((name, "error_allowed"));
                // Its instance is gone (and with it the stream's state): the rest of the
                // stream passes it by.
                plugins.remove(i);
                continue;
            }
        }
        i += 1;
    }
    let verdict = if replaced {
        match encode(&event, framing) {
            Ok(bytes) => Verdict::Send(bytes),
            // Name and id come from the upstream's own lines: they hold no line end.
            Err(_) => Verdict::Pass,
        }
    } else {
        Verdict::Pass
    };
    (plugins, verdict, note)
}

/// An event as the client receives it.
fn encode(event: &Event, framing: Framing) -> Result<Bytes, &'static str> {
    let mut out = BytesMut::with_capacity(event.data.len() + 16);
    match framing {
        Framing::Sse => {
            for (field, value) in [("event", &event.name), ("id", &event.id)] {
                if let Some(v) = value {
                    if v.contains(['\r', '\n']) {
                        return Err("a name or id holds a line end");
                    }
                    out.put_slice(field.as_bytes());
                    out.put_slice(b": ");
                    out.put_slice(v.as_bytes());
                    out.put_u8(b'\n');
                }
            }
            // Every line of the data becomes a `data:` line (CRLF, CR and LF alike).
            let data = event.data.as_bytes();
            let mut start = 0;
            loop {
                let end = memchr::memchr2(b'\r', b'\n', &data[start..]).map(|k| start + k);
                out.put_slice(b"data: ");
                out.put_slice(&data[start..end.unwrap_or(data.len())]);
                out.put_u8(b'\n');
                let Some(end) = end else { break };
                start = end
                    + if data[end..].starts_with(b"\r\n") {
                        2
                    } else {
                        1
                    };
            }
            out.put_u8(b'\n');
        }
        Framing::Ndjson => {
            out.put_slice(event.data.as_bytes());
            out.put_u8(b'\n');
        }
    }
    Ok(out.freeze())
}

/// The parts of the current SSE event the plugins see, collected as the parser reads it
/// (at most `limit` bytes of data; more sets `over`).
#[derive(Default)]
struct Fields {
    data: Vec<u8>,
    name: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
    target: Option<NamedField>,
    limit: usize,
    over: bool,
    dispatched: bool,
    boundary: bool,
}

impl Fields {
    fn reset(&mut self) {
        self.data.clear();
        self.name = None;
        self.id = None;
        self.target = None;
        self.over = false;
        self.dispatched = false;
        self.boundary = false;
    }

    fn take_event(&mut self) -> Event {
        let text = |v: Vec<u8>| {
            String::from_utf8(v)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        };
        let event = Event {
            name: self.name.take().map(text),
            data: text(std::mem::take(&mut self.data)),
            id: self.id.take().map(text),
        };
        self.reset();
        event
    }

    fn room(&self, more: usize) -> bool {
        let used = self.data.len()
            + self.name.as_ref().map_or(0, Vec::len)
            + self.id.as_ref().map_or(0, Vec::len);
        used + more <= self.limit
    }
}

impl sse::Sink for Fields {
    fn data(&mut self, piece: &[u8]) {
        if self.room(piece.len()) {
            self.data.extend_from_slice(piece);
        } else {
            self.over = true;
        }
    }

    fn field_start(&mut self, field: NamedField) {
        self.target = Some(field);
        match field {
            NamedField::Event => self.name = Some(Vec::new()),
            NamedField::Id => self.id = Some(Vec::new()),
        }
    }

    fn field_value(&mut self, piece: &[u8]) {
        if !self.room(piece.len()) {
            self.over = true;
            return;
        }
        let value = match self.target {
            Some(NamedField::Event) => self.name.as_mut(),
            Some(NamedField::Id) => self.id.as_mut(),
            None => None,
        };
        if let Some(v) = value {
            v.extend_from_slice(piece);
        }
    }

    fn dispatch(&mut self) {
        self.dispatched = true;
    }

    fn boundary(&mut self, _end: usize, continued: bool) {
        // The LF of a CRLF whose CR ended the last event belongs to the next one's bytes.
        if !continued {
            self.boundary = true;
        }
    }
}

/// The framing of a response, if it is an event stream the route's plugins may see.
fn framing(headers: &HeaderMap, ndjson: bool) -> Option<Framing> {
    let value = |h| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !matches!(value(header::CONTENT_ENCODING).trim(), "" | "identity") {
        return None;
    }
    let ct = value(header::CONTENT_TYPE);
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("text/event-stream") {
        return Some(Framing::Sse);
    }
    let ndjson_type = [
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
    ]
    .iter()
    .any(|t| essence.eq_ignore_ascii_case(t));
    (ndjson && ndjson_type).then_some(Framing::Ndjson)
}

impl Gateway {
    /// Puts an event-stream response through the route's stream plugins that the request
    /// got past: each is asked (`open-stream`) whether it wants the stream, and those
    /// that do are held by the body until it ends. Other responses are returned as they
    /// are.
    pub(super) async fn event_chain(
        &self,
        streaming: &[&Pool],
        route: &super::RouteEntry,
        path: String,
        mut resp: Response<ResponseBody>,
        ctx: &mut RequestCtx<'_>,
    ) -> Response<ResponseBody> {
        if !resp.body().is_upstream() {
            return resp;
        }
        let Some(framing) = framing(resp.headers(), route.config.events.ndjson) else {
            return resp;
        };
        let info = StreamInfo {
            framing,
            api: ctx.ai.as_ref().map(|x| match x.api {
                crate::ai::Api::OpenAi => Api::Openai,
                crate::ai::Api::Anthropic => Api::Anthropic,
            }),
            status: resp.status().as_u16(),
            content_type: resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            path,
        };
        let mut held = Vec::with_capacity(streaming.len());
        for pool in streaming.iter().rev() {
            match pool.open_stream(&info, &ctx.request_id).await {
                Ok(Some(h)) => held.push(h),
                Ok(None) => {}
                Err(e) => {
                    let name = &pool.bound.plugin.name;
                    if pool.on_error() == OnError::Deny {
                        ctx.note_plugin(name, "error");
                        return ctx.fail(ProxyError::PluginFailed(name.to_string()));
                    }
                    ctx.note_plugin(name, "error_allowed");
                    tracing::warn!(plugin = &**name, error = %e, "open-stream failed; on_error = allow sends the stream on without it");
                }
            }
        }
        if held.is_empty() {
            return resp;
        }
        // Events may change length: the client's framing is the gateway's.
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        let max = route.config.events.max_event_size;
        resp.body_mut()
            .set_events(|body, first| Box::new(EventStage::new(body, first, held, framing, max)));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_splits_lines_and_keeps_name_and_id() {
        let e = Event {
            name: Some("delta".into()),
            data: "a\r\nb\rc\nd".into(),
            id: Some("7".into()),
        };
        let b = encode(&e, Framing::Sse).unwrap();
        assert_eq!(
            &b[..],
            b"event: delta\nid: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        let e = Event {
            name: None,
            data: String::new(),
            id: None,
        };
        assert_eq!(&encode(&e, Framing::Sse).unwrap()[..], b"data: \n\n");
        assert_eq!(&encode(&e, Framing::Ndjson).unwrap()[..], b"\n");
        let bad = Event {
            name: Some("x\ny".into()),
            data: String::new(),
            id: None,
        };
        assert!(encode(&bad, Framing::Sse).is_err());
    }

    #[test]
    fn fields_collect_one_event_at_a_time() {
        let s = b": hi\nevent: a\nid: 1\ndata: x\ndata: y\n\r\ndata: z\n\n";
        let mut p = sse::Parser::default();
        let mut f = Fields {
            limit: 1024,
            ..Fields::default()
        };
        let n = p.feed_event(s, &mut f);
        assert!(f.boundary && f.dispatched);
        assert_eq!(&s[..n], b": hi\nevent: a\nid: 1\ndata: x\ndata: y\n\r\n");
        let e = f.take_event();
        assert_eq!(
            (e.name.as_deref(), e.data.as_str(), e.id.as_deref()),
            (Some("a"), "x\ny", Some("1"))
        );
        let m = p.feed_event(&s[n..], &mut f);
        assert_eq!(n + m, s.len());
        let e = f.take_event();
        assert_eq!((e.name, e.data.as_str(), e.id), (None, "z", None));
    }

    #[test]
    fn a_crlf_cut_between_pieces_ends_the_event_at_the_cr() {
        let mut p = sse::Parser::default();
        let mut f = Fields {
            limit: 1024,
            ..Fields::default()
        };
        assert_eq!(p.feed_event(b"data: a\r\n\r", &mut f), 10);
        assert!(f.boundary && f.dispatched);
        assert_eq!(f.take_event().data, "a");
        // The LF of that CRLF is the start of the next event's bytes, not an end.
        let n = p.feed_event(b"\ndata: b\n\n", &mut f);
        assert_eq!(n, 10);
        assert_eq!(f.take_event().data, "b");
        // No end in the piece: all of it is consumed and the event goes on.
        assert_eq!(p.feed_event(b"data: c", &mut f), 7);
        assert!(!f.boundary);
    }

    #[test]
    fn framing_by_content_type() {
        let h = |ct: &str, enc: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            if let Some(e) = enc {
                h.insert(header::CONTENT_ENCODING, e.parse().unwrap());
            }
            h
        };
        assert_eq!(
            framing(&h("text/event-stream; charset=utf-8", None), false),
            Some(Framing::Sse)
        );
        assert_eq!(
            framing(&h("Text/Event-Stream", None), false),
            Some(Framing::Sse)
        );
        assert_eq!(framing(&h("text/event-stream", Some("gzip")), false), None);
        assert_eq!(framing(&h("application/x-ndjson", None), false), None);
        assert_eq!(
            framing(&h("application/x-ndjson", None), true),
            Some(Framing::Ndjson)
        );
        assert_eq!(framing(&h("application/json", None), true), None);
    }
}
