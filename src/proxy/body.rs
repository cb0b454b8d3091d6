//! The response body of the request path: a synthetic one, or the upstream's streamed
//! through untouched (with the upstream's `idle_timeout` between frames), that writes the
//! access-log line once it has been sent — or, for a switched protocol (101), hands the
//! access-log record to the connection's tunnel, which writes it when it closes. A model
//! call's body carries its `ai::Meter`, which reads the usage as the bytes pass, and an
//! admitted request's limit reservations, settled with that usage when the body ends.
//! An event stream on a route with `stream-transform` plugins is read through their
//! `proxy::events::EventStage` instead (its own variant: other bodies do not pay for it).
//! (Request bodies going upstream are in `upstream::body`.)

use super::access_log::AccessLog;
use super::events::{EventStage, StreamAborted};
use crate::ai::{End, Meter};
use crate::limits::{Admission, Outcome};
use crate::upstream::pool::PooledBody;
use crate::upstream::ActiveGuard;
use crate::BoxError;
use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// A streamed response body went silent for longer than the upstream's `idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body idle timeout")]
pub struct IdleTimeout;

pin_project! {
    #[project = InnerProj]
    enum Inner {
        Full { #[pin] body: Full<Bytes> },
        // 16 bytes: the upstream's body is boxed where it is made (`PooledBody`).
        Upstream { body: PooledBody },
        // The upstream's event stream through stream plugins.
        Events { stage: Box<EventStage> },
        // A switched protocol's empty body; the tunnel takes the access-log record and
        // the limits' reservations (held until the tunnel closes).
        Switched {
            tunnel: Option<oneshot::Sender<Handover>>,
            admission: Option<Box<Admission>>,
        },
    }
}

pin_project! {
    /// What the gateway sends back: a synthetic body or the upstream's, streamed.
    /// Dropping it (after the last frame, or when the client goes away) releases the
    /// endpoint's active-request count and writes the access-log line.
    ///
    /// When the upstream's body fails after the head was sent (reset, idle timeout), the
    /// failure is counted (`portcullis_response_stream_failures_total`) and logged
    /// (`upstream_reset_mid_stream`, `upstream_timeout_mid_stream`), a model call's event
    /// stream gets its API's error event, and then the body fails: hyper aborts the
    /// response (HTTP/1.1: no last chunk, the connection closed; h2: RST_STREAM), so the
    /// client never mistakes it for a clean end.
    #[project = StateProj]
    pub struct State {
        #[pin]
        inner: Inner,
        idle: Option<Duration>,
        timer: Option<Pin<Box<Sleep>>>,
        guard: Option<ActiveGuard>,
        log: Option<Box<AccessLog>>,
        bytes: u64,
        // The route, for the stream-failure metric (upstream bodies only).
        route: Option<Arc<str>>,
        // A model call's meter.
        meter: Option<Box<Meter>>,
        // The request's limit reservations, settled with the call's usage when it ends
        // (`.1`: the response is an error, so unreported usage is refunded).
        admission: Option<(Box<Admission>, bool)>,
        // Trailers that wait for the bytes the meter held to be sent first.
        trailers: Option<Box<http::HeaderMap>>,
        // The failure to report once its error event has been handed to the connection
        // (`true`: the connection has had a turn to write it).
        failing: Option<Box<(BoxError, bool)>>,
        // The last frame has been sent.
        ended: bool,
        // A first frame read ahead (`first_frame`), sent before the rest.
        pending: Option<Box<Frame<Bytes>>>,
        // The request id to write after an upstream head kept as it came.
        raw_request_id: Option<HeaderValue>,
    }
    impl PinnedDrop for State {
        fn drop(this: Pin<&mut Self>) {
            let complete = this.ended || this.is_end_stream();
            let mut this = this.project();
            if let InnerProj::Switched { tunnel, admission } = this.inner.as_mut().project() {
                // No access-log record (logging off): the reservations still go.
                if let (Some(tunnel), Some(admission)) = (tunnel.take(), admission.take()) {
                    let _ = tunnel.send(Handover { log: None, admission: Some(admission) });
                }
            }
            let end = if complete { End::Complete } else { End::ClientGone };
            finish_call(this.meter, this.log, this.admission, end);
            if let Some(log) = this.log.take() {
                log.emit(*this.bytes, None);
            }
        }
    }
}

/// What the gateway sends back (see [`State`]), boxed: a response is moved whole through
/// every layer of the request path on its way to the connection (the try's answer, the
/// forward, the phases, the finish, the in-flight count, the server's wait), ~15 moves in
/// all. With the body inline a response was 272 bytes and each move a `memcpy` call; with
/// the body a pointer it is 120, moved inline, for one allocation per response.
pub struct ResponseBody(Box<State>);

impl std::ops::Deref for ResponseBody {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl std::ops::DerefMut for ResponseBody {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody(super::boxed_with(|| State::full(bytes)))
    }

    /// See [`State::switched`].
    pub fn switched(tunnel: oneshot::Sender<Handover>) -> Self {
        ResponseBody(super::boxed_with(|| State::switched(tunnel)))
    }

    pub fn upstream(body: PooledBody, idle: Duration, guard: ActiveGuard, route: Arc<str>) -> Self {
        ResponseBody(super::boxed_with(|| {
            State::upstream(body, idle, guard, route)
        }))
    }
}

impl State {
    /// The upstream's response head as it came, if it was kept so
    /// ([`crate::upstream::h1::RawHead`]), and the request id to write after its lines:
    /// taken by the connection that writes them.
    pub fn take_raw_head(&mut self) -> Option<(crate::upstream::h1::RawHead, Option<HeaderValue>)> {
        match &mut self.inner {
            Inner::Upstream { body } => {
                let raw = body.take_raw_head()?;
                Some((raw, self.raw_request_id.take()))
            }
            _ => None,
        }
    }

    /// Gives a response head kept as it came its `X-Request-Id`, to be written after its
    /// lines (its map is not filled: an insert hashes and probes); gives the id back if
    /// the head was not kept so.
    pub fn set_raw_request_id(&mut self, id: HeaderValue) -> Result<(), HeaderValue> {
        match &self.inner {
            Inner::Upstream { body } if body.has_raw_head() => {
                self.raw_request_id = Some(id);
                Ok(())
            }
            _ => Err(id),
        }
    }

    fn full(bytes: Bytes) -> Self {
        Self::new(
            Inner::Full {
                body: Full::new(bytes),
            },
            None,
            None,
            None,
        )
    }

    /// The (empty) body of a switched-protocols answer: its access-log record and
    /// reservations go to the tunnel behind `tunnel`.
    fn switched(tunnel: oneshot::Sender<Handover>) -> Self {
        Self::new(
            Inner::Switched {
                tunnel: Some(tunnel),
                admission: None,
            },
            None,
            None,
            None,
        )
    }

    fn upstream(body: PooledBody, idle: Duration, guard: ActiveGuard, route: Arc<str>) -> Self {
        Self::new(
            Inner::Upstream { body },
            Some(idle),
            Some(guard),
            Some(route),
        )
    }

    fn new(
        inner: Inner,
        idle: Option<Duration>,
        guard: Option<ActiveGuard>,
        route: Option<Arc<str>>,
    ) -> Self {
        State {
            inner,
            idle,
            timer: None,
            guard,
            log: None,
            bytes: 0,
            route,
            meter: None,
            admission: None,
            trailers: None,
            failing: None,
            ended: false,
            pending: None,
            raw_request_id: None,
        }
    }

    /// Waits for the upstream body's first frame and keeps it to be sent first (a fallback
    /// chain's `first_token_timeout` bounds this wait). `Ok` also when the body is empty.
    pub async fn first_frame(&mut self) -> Result<(), BoxError> {
        let frame = std::future::poll_fn(|cx| match &mut self.inner {
            Inner::Full { .. } | Inner::Switched { .. } | Inner::Events { .. } => Poll::Ready(None),
            Inner::Upstream { body } => Pin::new(body).poll_frame(cx),
        })
        .await;
        match frame {
            Some(Ok(f)) => {
                self.pending = Some(Box::new(f));
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    }

    pub fn set_log(&mut self, log: Box<AccessLog>) {
        match &mut self.inner {
            // A tunnel already gone (the client left) writes no line; nor does this.
            Inner::Switched { tunnel, admission } => {
                if let Some(tunnel) = tunnel.take() {
                    let _ = tunnel.send(Handover {
                        log: Some(log),
                        admission: admission.take(),
                    });
                }
            }
            _ => self.log = Some(log),
        }
    }

    /// Whether this is the upstream's body (not the gateway's own).
    pub fn is_upstream(&self) -> bool {
        matches!(self.inner, Inner::Upstream { .. })
    }

    /// Reads the upstream's body through the event stage `stage` makes of it (and of the
    /// frame read ahead, if any). Only for an upstream body.
    pub fn set_events(
        &mut self,
        stage: impl FnOnce(PooledBody, Option<Frame<Bytes>>) -> Box<EventStage>,
    ) {
        let Inner::Upstream { body } = std::mem::replace(
            &mut self.inner,
            Inner::Switched {
                tunnel: None,
                admission: None,
            },
        ) else {
            unreachable!("set_events on a body that is not the upstream's");
        };
        let first = self.pending.take().map(|f| *f);
        self.inner = Inner::Events {
            stage: stage(body, first),
        };
    }

    pub fn set_meter(&mut self, meter: Box<Meter>) {
        self.meter = Some(meter);
    }

    /// Settles `admission` when the body ends; `error`: the response is an error. A
    /// switched protocol's are held until its tunnel closes (a `concurrent` limit counts
    /// the open connection); set before the access-log record, which carries them there.
    pub fn set_admission(&mut self, admission: Box<Admission>, error: bool) {
        match &mut self.inner {
            Inner::Switched {
                admission: held, ..
            } => *held = Some(admission),
            _ => self.admission = Some((admission, error)),
        }
    }
}

/// What a switched protocol's answer hands to its tunnel once the answer is made.
pub struct Handover {
    pub log: Option<Box<AccessLog>>,
    pub admission: Option<Box<Admission>>,
}

/// The call ended: its meter (if any) records it in the metrics and the access log, and
/// the request's reservations (if any) are settled with the usage it reported.
fn finish_call(
    meter: &mut Option<Box<Meter>>,
    log: &mut Option<Box<AccessLog>>,
    admission: &mut Option<(Box<Admission>, bool)>,
    end: End,
) {
    let mut usage = (None, None);
    if let Some(mut m) = meter.take() {
        let call = m.finish(end);
        usage = (call.input_tokens, call.output_tokens);
        if let Some(log) = log.as_mut() {
            log.call = Some(call);
        }
    }
    if let Some((admission, error)) = admission.take() {
        admission.settle(Outcome::new(usage.0, usage.1, error));
    }
}

impl<'a> StateProj<'a> {
    /// The upstream's body failed with `e` after the head was sent (`code` says how).
    fn fail(
        &mut self,
        e: BoxError,
        code: &'static str,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.guard.take();
        *self.ended = true;
        if let Some(route) = self.route.as_deref() {
            crate::metrics::get()
                .stream_failures
                .with_label_values(&[route, code])
                .inc();
        }
        if let Some(log) = self.log.as_mut() {
            log.error = Some(code);
        }
        let event = match self.inner.as_mut().project() {
            // Cut into events: the client is at an event boundary.
            InnerProj::Events { stage } => stage.error_event(self.meter.as_deref(), code, &e),
            _ => self.meter.as_mut().and_then(|meter| {
                meter.error_event(code, &format!("the upstream failed mid-stream: {e}"))
            }),
        };
        finish_call(self.meter, self.log, self.admission, End::Failed(code));
        match event {
            Some(event) => {
                *self.bytes += event.len() as u64;
                *self.failing = Some(Box::new((e, false)));
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
            None => Poll::Ready(Some(Err(e))),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut *self.get_mut().0).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

impl Body for State {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(failing) = this.failing.as_mut() {
            let turned = &mut failing.1;
            // The error event was just handed over: give the connection a turn to write
            // it before the failure tears the response down.
            if !*turned {
                *turned = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let (e, _) = *this.failing.take().expect("checked above");
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(t) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(*t))));
        }
        if *this.ended {
            finish_call(this.meter, this.log, this.admission, End::Complete);
            return Poll::Ready(None);
        }
        loop {
            let polled = match (this.pending.take(), this.inner.as_mut().project()) {
                // A frame read ahead goes out first, through the same path as the rest.
                (Some(first), _) => Poll::Ready(Some(Ok(*first))),
                (None, InnerProj::Full { body }) => {
                    body.poll_frame(cx).map_err(|never| match never {})
                }
                (None, InnerProj::Upstream { body }) => Pin::new(body).poll_frame(cx),
                (None, InnerProj::Switched { .. }) => Poll::Ready(None),
                (None, InnerProj::Events { stage }) => {
                    let polled = stage.poll_frame(cx, this.meter, this.log);
                    if std::mem::take(&mut stage.upstream_active) {
                        if let (Some(timer), Some(idle)) = (this.timer.as_mut(), *this.idle) {
                            timer.as_mut().reset(Instant::now() + idle);
                        }
                    }
                    match polled {
                        // Already through the meter and the plugins.
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Some(d) = frame.data_ref() {
                                *this.bytes += d.len() as u64;
                            }
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        // The stage flushed the meter itself (or a plugin ended the
                        // stream, and what the meter holds must not be sent).
                        Poll::Ready(None) => {
                            this.guard.take();
                            *this.ended = true;
                            finish_call(this.meter, this.log, this.admission, End::Complete);
                            return Poll::Ready(None);
                        }
                        other => other,
                    }
                }
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(timer), Some(idle)) = (this.timer.as_mut(), *this.idle) {
                        timer.as_mut().reset(Instant::now() + idle);
                    }
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            let data = match this.meter.as_mut().and_then(|m| m.observe(&data)) {
                                None => data,
                                // The meter took the whole piece (it holds an event).
                                Some(edited) if edited.is_empty() => continue,
                                Some(edited) => edited,
                            };
                            *this.bytes += data.len() as u64;
                            Frame::data(data)
                        }
                        Err(frame) => match (frame.into_trailers(), this.meter.as_mut()) {
                            (Ok(t), Some(m)) => match m.flush() {
                                Some(held) => {
                                    *this.trailers = Some(Box::new(t));
                                    *this.bytes += held.len() as u64;
                                    Frame::data(held)
                                }
                                None => Frame::trailers(t),
                            },
                            (Ok(t), None) => Frame::trailers(t),
                            // Neither data nor trailers: nothing to send.
                            (Err(_), _) => continue,
                        },
                    };
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(None) => {
                    // Finished: stop counting this request against the endpoint.
                    this.guard.take();
                    *this.ended = true;
                    if let Some(held) = this.meter.as_mut().and_then(|m| m.flush()) {
                        *this.bytes += held.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(held))));
                    }
                    finish_call(this.meter, this.log, this.admission, End::Complete);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    let code = if e.is::<StreamAborted>() {
                        "plugin_failed_mid_stream"
                    } else {
                        "upstream_reset_mid_stream"
                    };
                    return this.fail(e, code);
                }
                Poll::Pending => {
                    let Some(idle) = *this.idle else {
                        return Poll::Pending;
                    };
                    // The idle timer is armed only once the stream actually waits, so
                    // bodies that arrive with their head never allocate one.
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return this.fail(Box::new(IdleTimeout), "upstream_timeout_mid_stream");
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.failing.is_some() || self.trailers.is_some() || self.pending.is_some() {
            return false;
        }
        if self.ended {
            return self.meter.is_none();
        }
        let inner = match &self.inner {
            Inner::Full { body } => body.is_end_stream(),
            Inner::Upstream { body } => body.is_end_stream(),
            Inner::Switched { .. } => true,
            Inner::Events { .. } => false,
        };
        // A meter that edits may still hold bytes to send at the end.
        inner && !self.meter.as_ref().is_some_and(|m| m.edits())
    }

    fn size_hint(&self) -> SizeHint {
        if self.meter.as_ref().is_some_and(|m| m.edits()) {
            return SizeHint::default();
        }
        let mut hint = match &self.inner {
            Inner::Full { body } => body.size_hint(),
            Inner::Upstream { body } => body.size_hint(),
            Inner::Switched { .. } => SizeHint::with_exact(0),
            Inner::Events { .. } => return SizeHint::default(),
        };
        // What the inner body has left, plus the frame read ahead.
        if let Some(n) = self
            .pending
            .as_ref()
            .and_then(|f| f.data_ref())
            .map(|d| d.len() as u64)
        {
            hint.set_lower(hint.lower() + n);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
        }
        hint
    }
}
