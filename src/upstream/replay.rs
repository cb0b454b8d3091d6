//! The request body as it can be sent again on a retry (linkerd's `replay` idea, without
//! its buffering): bytes already in memory are resent as they are; the client's stream can
//! only be resent if no try has started reading it — a try that never polled it (the
//! connection could not be made) hands it back.

use super::body::{RequestBody, UpstreamBody};
use bytes::Bytes;
use http_body::Body;
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::oneshot;

pub enum Replay<B = Incoming> {
    /// Empty or buffered: every try sends the same bytes.
    Bytes(Bytes),
    /// The client's stream: only sendable while no try has started reading it.
    Stream(Option<B>),
}

impl<B: Body> Replay<B> {
    /// The body for one try; with `keep`, a stream is sent so that it comes back on the
    /// returned channel if the try never reads it (give that to [`Replay::recover`]).
    pub fn take(
        &mut self,
        limit: u64,
        keep: bool,
    ) -> (UpstreamBody<B>, Option<oneshot::Receiver<B>>) {
        match self {
            Replay::Bytes(b) => (UpstreamBody::Buffered(Full::new(b.clone())), None),
            Replay::Stream(s) => {
                let inner = s.take().expect("stream body present when replayable");
                if inner.is_end_stream() {
                    // Nothing to lose: later tries send an empty body.
                    *self = Replay::Bytes(Bytes::new());
                } else if keep {
                    let (body, rx) = RequestBody::recoverable(inner, limit);
                    return (UpstreamBody::Stream(body), Some(rx));
                }
                (UpstreamBody::Stream(RequestBody::new(inner, limit)), None)
            }
        }
    }

    /// Takes the stream back after a try that never read it.
    pub fn recover(&mut self, mut rx: oneshot::Receiver<B>) {
        if let (Replay::Stream(slot), Ok(b)) = (&mut *self, rx.try_recv()) {
            *slot = Some(b);
        }
    }

    /// Whether another try can still be sent with the request's body.
    pub fn replayable(&self) -> bool {
        !matches!(self, Replay::Stream(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// A streamed body that is not at its end until its chunks are read.
    struct Stream(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Stream {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    fn stream(chunks: &[&'static str]) -> Stream {
        let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(Bytes::from_static(c.as_bytes())).unwrap();
        }
        Stream(rx)
    }

    async fn read<B2: Body<Data = Bytes>>(b: B2) -> Bytes
    where
        B2::Error: std::fmt::Debug,
    {
        b.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn bytes_are_sent_again_on_every_try() {
        let mut r: Replay<Stream> = Replay::Bytes(Bytes::from_static(b"hello"));
        for _ in 0..3 {
            let (body, back) = r.take(100, true);
            assert!(back.is_none());
            assert_eq!(read(body).await, "hello");
            assert!(r.replayable());
        }
    }

    #[tokio::test]
    async fn a_stream_no_try_read_comes_back_for_the_next_try() {
        let mut r = Replay::Stream(Some(stream(&["a", "b"])));
        let (body, back) = r.take(100, true);
        assert!(!r.replayable(), "the stream is out with the try");
        drop(body); // the connection could not be made: never polled
        r.recover(back.expect("kept"));
        assert!(r.replayable());
        let (body, back) = r.take(100, false);
        assert!(back.is_none(), "the last try does not keep it");
        drop(body);
        assert!(!r.replayable());
    }

    #[tokio::test]
    async fn a_stream_a_try_started_reading_is_never_sent_again() {
        let mut r = Replay::Stream(Some(stream(&["a", "b"])));
        let (mut body, back) = r.take(100, true);
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().unwrap(), "a");
        drop(body);
        r.recover(back.expect("kept"));
        assert!(!r.replayable(), "bytes may have left: no second try");
    }

    #[tokio::test]
    async fn the_limit_applies_to_every_try() {
        let mut r: Replay<Stream> = Replay::Bytes(Bytes::from_static(b"0123456789"));
        let (body, _) = r.take(4, true);
        // Buffered bytes were checked against the limit when they were buffered.
        assert_eq!(read(body).await.len(), 10);
        let mut r = Replay::Stream(Some(stream(&["0123", "4567"])));
        let (body, _) = r.take(4, true);
        let err = body.collect().await.expect_err("over the limit");
        assert!(err.is::<super::super::body::BodyTooLarge>());
    }
}
