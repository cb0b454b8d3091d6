//! The response body of the request path: a synthetic one, or the upstream's streamed
//! through untouched (with the upstream's `idle_timeout` between frames), that writes the
//! access-log line once it has been sent — or, for a switched protocol (101), hands the
//! access-log record to the connection's tunnel, which writes it when it closes. (Request
//! bodies going upstream are in `upstream::body`.)

use super::access_log::AccessLog;
use crate::upstream::ActiveGuard;
use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
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
        Upstream { #[pin] body: Incoming },
        // A switched protocol's empty body; the tunnel takes the access-log record.
        Switched { tunnel: Option<oneshot::Sender<Box<AccessLog>>> },
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
                log.emit(*this.bytes, None);
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

    /// The (empty) body of a switched-protocols answer: its access-log record goes to
    /// the tunnel behind `tunnel`.
    pub fn switched(tunnel: oneshot::Sender<Box<AccessLog>>) -> Self {
        ResponseBody {
            inner: Inner::Switched {
                tunnel: Some(tunnel),
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
        match &mut self.inner {
            // A tunnel already gone (the client left) writes no line; nor does this.
            Inner::Switched { tunnel } => {
                if let Some(tunnel) = tunnel.take() {
                    let _ = tunnel.send(log);
                }
            }
            _ => self.log = Some(log),
        }
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
            InnerProj::Switched { .. } => Poll::Ready(None),
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
            Inner::Switched { .. } => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full { body } => body.size_hint(),
            Inner::Upstream { body } => body.size_hint(),
            Inner::Switched { .. } => SizeHint::with_exact(0),
        }
    }
}
