//! The request body on its way upstream: the client's stream with the route's size limit
//! applied as it passes, or bytes buffered for plugins. Generic over the client's body
//! type (hyper's `Incoming` in the gateway) so it can be tested with any body.

use crate::BoxError;
use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// The request body grew past the route's `max_body_size`.
#[derive(Debug, thiserror::Error)]
#[error("request body too large")]
pub struct BodyTooLarge;

/// The client's request body stream failed while it was being sent upstream: the
/// client's fault, never the endpoint's (see `classify::client_error`).
#[derive(Debug, thiserror::Error)]
#[error("client request body failed: {cause}")]
pub struct ClientBodyFailed {
    pub fault: ClientBodyFault,
    cause: String,
}

/// How the client's body failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientBodyFault {
    /// Its framing was malformed (a bad chunk size line, a bad chunk end…).
    Malformed,
    /// The client went away (or reset the stream) before the body was complete.
    Gone,
}

impl ClientBodyFailed {
    /// Tells a malformed body (the decoder's `InvalidInput`/`InvalidData`) from a client
    /// that went away (EOF mid-body, reset, anything else).
    pub fn new(err: BoxError) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
        let mut fault = ClientBodyFault::Gone;
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                ) {
                    fault = ClientBodyFault::Malformed;
                }
            }
            source = e.source();
        }
        ClientBodyFailed {
            fault,
            cause: err.to_string(),
        }
    }
}

/// The client's request body on its way upstream, failing once it passes `limit`.
///
/// With [`RequestBody::recoverable`], a body that is dropped before it was ever polled
/// (the connection to the upstream could not be made) is handed back through a channel,
/// so the request can be retried on another endpoint with the same body. Once polled,
/// bytes may have left and it is never handed back.
pub struct RequestBody<B = Incoming> {
    inner: Option<B>,
    remaining: u64,
    give_back: Option<tokio::sync::oneshot::Sender<B>>,
}

impl<B> RequestBody<B> {
    pub fn new(inner: B, limit: u64) -> Self {
        RequestBody {
            inner: Some(inner),
            remaining: limit,
            give_back: None,
        }
    }

    /// A body that comes back on the returned channel if it is dropped unpolled.
    pub fn recoverable(inner: B, limit: u64) -> (Self, tokio::sync::oneshot::Receiver<B>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut body = Self::new(inner, limit);
        body.give_back = Some(tx);
        (body, rx)
    }
}

impl<B> Drop for RequestBody<B> {
    fn drop(&mut self) {
        if let (Some(tx), Some(body)) = (self.give_back.take(), self.inner.take()) {
            let _ = tx.send(body);
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
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
            Some(Ok(mut frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    clean_trailers(trailers);
                }
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(ClientBodyFailed::new(e.into()))))),
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

/// Fields a client may not send as trailers: those the gateway manages in the head
/// (request id, trace context, consumer, forwarding, host, framing, hop-by-hop) and
/// credentials — an upstream that merges trailers into headers would otherwise take
/// them as the gateway's — besides [`crate::FRAMING_HEADERS`]. Names with `_` are dropped
/// too (CGI-style frameworks read `_` as `-`), whatever `server.allow_underscores_in_headers`
/// says for the head.
const NOT_TRAILERS: &[&str] = &[
    "x-portcullis-consumer",
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "host",
    "authorization",
    "proxy-authorization",
    "cookie",
    "content-type",
    "content-encoding",
];

/// Removes from a client's trailers what may not arrive as a trailer.
pub fn clean_trailers(trailers: &mut HeaderMap) {
    let drop: Vec<HeaderName> = trailers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            NOT_TRAILERS.contains(&n) || crate::FRAMING_HEADERS.contains(&n) || n.contains('_')
        })
        .cloned()
        .collect();
    for n in drop {
        trailers.remove(n);
    }
}

/// The body sent upstream: the client's, streamed, or one buffered for plugins.
pub enum UpstreamBody<B = Incoming> {
    Stream(RequestBody<B>),
    Buffered(Full<Bytes>),
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            UpstreamBody::Stream(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Buffered(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Stream(body) => body.is_end_stream(),
            UpstreamBody::Buffered(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Stream(body) => body.size_hint(),
            UpstreamBody::Buffered(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn a_body_past_its_limit_fails_as_it_streams() {
        let body = RequestBody::new(Full::new(Bytes::from_static(b"0123456789")), 4);
        let err = body.collect().await.expect_err("over the limit");
        assert!(err.is::<BodyTooLarge>(), "{err}");
        let body = RequestBody::new(Full::new(Bytes::from_static(b"0123")), 4);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "0123");
    }

    /// A client body of these frames, popped from the end.
    struct Frames(Vec<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop().map(Ok))
        }
    }

    /// A client body whose stream fails with `err` after one frame.
    struct Failing(Option<std::io::Error>);

    impl Body for Failing {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.take().map(Err))
        }
    }

    #[tokio::test]
    async fn client_trailers_cannot_carry_gateway_managed_headers() {
        let mut t = HeaderMap::new();
        t.insert("x-portcullis-consumer", "admin".parse().unwrap());
        t.insert("x-request-id", "forged".parse().unwrap());
        t.insert("x_portcullis_consumer", "admin".parse().unwrap());
        t.insert("grpc-status", "0".parse().unwrap());
        let body = Frames(vec![
            Frame::trailers(t),
            Frame::data(Bytes::from_static(b"x")),
        ]);
        let got = RequestBody::new(body, 10).collect().await.unwrap();
        let trailers = got.trailers().expect("trailers kept").clone();
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(trailers["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_failing_client_stream_is_marked_as_the_clients_fault() {
        use std::io::{Error, ErrorKind};
        for (kind, fault) in [
            (ErrorKind::InvalidInput, ClientBodyFault::Malformed),
            (ErrorKind::UnexpectedEof, ClientBodyFault::Gone),
            (ErrorKind::ConnectionReset, ClientBodyFault::Gone),
        ] {
            let body = RequestBody::new(Failing(Some(Error::new(kind, "x"))), 10);
            let err = body.collect().await.expect_err("the stream failed");
            let failed = err.downcast_ref::<ClientBodyFailed>().expect("marked");
            assert_eq!(failed.fault, fault, "{kind:?}");
        }
    }

    #[tokio::test]
    async fn an_unpolled_recoverable_body_comes_back_a_polled_one_does_not() {
        let (body, mut rx) = RequestBody::recoverable(Full::new(Bytes::from_static(b"x")), 10);
        drop(body);
        assert!(rx.try_recv().is_ok());
        let (mut body, mut rx) = RequestBody::recoverable(Full::new(Bytes::from_static(b"x")), 10);
        let _ = body.frame().await;
        drop(body);
        assert!(rx.try_recv().is_err());
    }
}
