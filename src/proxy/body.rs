//! Body types of the request path: the client's request body with the route's size limit
//! applied as it streams, and the response body (a synthetic one, or the upstream's
//! streamed through untouched) that writes the access-log line once it has been sent.

use super::access_log::AccessLog;
use crate::upstream::ActiveGuard;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past the route's `max_body_size`.
#[derive(Debug)]
pub struct BodyTooLarge;

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body too large")
    }
}

impl std::error::Error for BodyTooLarge {}

/// A streamed response body went silent for longer than the upstream's `idle_timeout`.
#[derive(Debug)]
pub struct IdleTimeout;

impl fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream response body idle timeout")
    }
}

impl std::error::Error for IdleTimeout {}

/// The client's request body on its way upstream, failing once it passes `limit`.
///
/// With [`RequestBody::recoverable`], a body that is dropped before it was ever polled
/// (the connection to the upstream could not be made) is handed back through a channel,
/// so the request can be retried on another endpoint with the same body. Once polled,
/// bytes may have left and it is never handed back.
pub struct RequestBody {
    inner: Option<Incoming>,
    remaining: u64,
    give_back: Option<tokio::sync::oneshot::Sender<Incoming>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64) -> Self {
        RequestBody {
            inner: Some(inner),
            remaining: limit,
            give_back: None,
        }
    }

    /// A body that comes back on the returned channel if it is dropped unpolled.
    pub fn recoverable(
        inner: Incoming,
        limit: u64,
    ) -> (Self, tokio::sync::oneshot::Receiver<Incoming>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut body = Self::new(inner, limit);
        body.give_back = Some(tx);
        (body, rx)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let (Some(tx), Some(body)) = (self.give_back.take(), self.inner.take()) {
            let _ = tx.send(body);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.give_back = None;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

pin_project! {
    /// The body sent upstream: the client's, streamed, or one buffered for plugins.
    #[project = UpBodyProj]
    pub enum UpstreamBody {
        Stream { body: RequestBody },
        Buffered { #[pin] body: Full<Bytes> },
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            UpBodyProj::Stream { body } => Pin::new(body).poll_frame(cx),
            UpBodyProj::Buffered { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Stream { body } => body.is_end_stream(),
            UpstreamBody::Buffered { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Stream { body } => body.size_hint(),
            UpstreamBody::Buffered { body } => body.size_hint(),
        }
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner {
        Full { #[pin] body: Full<Bytes> },
        Upstream { #[pin] body: Incoming },
    }
}

pin_project! {
    /// What the gateway sends back: a synthetic body or the upstream's, streamed.
    /// Dropping it (after the last frame, or when the client goes away) releases the
    /// endpoint's active-request count and writes the access-log line.
    pub struct ResponseBody {
        #[pin]
        inner: Inner,
        idle: Option<Duration>,
        timer: Option<Pin<Box<Sleep>>>,
        guard: Option<ActiveGuard>,
        log: Option<Box<AccessLog>>,
        bytes: u64,
    }
    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(log) = this.log.take() {
                log.emit(*this.bytes);
            }
        }
    }
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody {
            inner: Inner::Full {
                body: Full::new(bytes),
            },
            idle: None,
            timer: None,
            guard: None,
            log: None,
            bytes: 0,
        }
    }

    pub fn upstream(body: Incoming, idle: Duration, guard: ActiveGuard) -> Self {
        ResponseBody {
            inner: Inner::Upstream { body },
            idle: Some(idle),
            timer: None,
            guard: Some(guard),
            log: None,
            bytes: 0,
        }
    }

    pub fn set_log(&mut self, log: Box<AccessLog>) {
        self.log = Some(log);
    }

    pub fn take_log(&mut self) -> Option<Box<AccessLog>> {
        self.log.take()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = match this.inner.project() {
            InnerProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
            InnerProj::Upstream { body } => {
                body.poll_frame(cx).map_err(|e| Box::new(e) as BoxError)
            }
        };
        match polled {
            Poll::Ready(frame) => {
                if let Some(Ok(f)) = &frame {
                    if let Some(d) = f.data_ref() {
                        *this.bytes += d.len() as u64;
                    }
                    if let (Some(timer), Some(idle)) = (this.timer.as_mut(), this.idle) {
                        timer.as_mut().reset(Instant::now() + *idle);
                    }
                }
                if !matches!(frame, Some(Ok(_))) {
                    // Finished or failed: stop counting this request against the endpoint.
                    this.guard.take();
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let Some(idle) = *this.idle else {
                    return Poll::Pending;
                };
                // The idle timer is armed only once the stream actually waits, so bodies
                // that arrive with their head never allocate one.
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.guard.take();
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full { body } => body.is_end_stream(),
            Inner::Upstream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full { body } => body.size_hint(),
            Inner::Upstream { body } => body.size_hint(),
        }
    }
}
