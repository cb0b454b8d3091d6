//! The gateway's own HTTP/1.1 server for the plainest requests, in front of hyper's.
//!
//! A keep-alive HTTP/1.1 request in origin form — `GET`, `POST`, `PUT`, `PATCH`, `DELETE`
//! or `OPTIONS`, with no body or a `Content-Length` one — whose head, and body, arrived
//! whole with the reads so far, and whose head names none of the fields that change how a
//! message is framed or the connection is used (`Transfer-Encoding`, `Expect`,
//! `Upgrade`, `TE`, a `Connection` other than `keep-alive`, more than one
//! `Content-Length`), is read, served and answered here; its body is handed over whole
//! (`Incoming::full`, a hyper patch). Anything else — another method, HTTP/1.0, a body
//! still coming, a head split across reads, a head hyper would refuse — hands the
//! connection, with every byte read from it and not yet served, to hyper's HTTP/1 server
//! for the rest of its life: hyper then answers it exactly as it did before this server
//! existed (its errors, its limits, upgrades, streamed bodies).
//!
//! What it keeps of hyper's behaviour for the requests it serves:
//! - the response head hyper writes: `HTTP/1.1` status line, the fields in the map's
//!   order (after the upstream's lines and the request id when its head was kept as it
//!   came, [`crate::upstream::h1::RawHead`]: hyper's server never gets such a response,
//!   so requests it serves are marked not to), a `content-length` from the body's exact
//!   size or else `transfer-encoding: chunked`, a `content-length: 0` for an empty body,
//!   no body for 1xx/204/304, and a `date` (hyper's per-thread cache) unless the
//!   response has one;
//! - a response `Connection: close` closes the connection after it; a body that fails
//!   mid-way, or ends short of its length, aborts the connection (never a clean end);
//! - the client going away (EOF or an error) while its request is served, or while its
//!   response body is awaited, drops the request's future or the body (and with it the
//!   upstream's), as hyper does; bytes it sends meanwhile (a pipelined request) wait for
//!   their turn (the socket is read with a waker of its own, [`Watch`], and read again
//!   only once that was woken);
//! - the head goes out as soon as the body is not ready (an event stream's status before
//!   its first event), and every write is flushed (TLS keeps written bytes until then);
//! - a response written after shutdown was asked says `connection: close`;
//! - an idle connection holds no read buffer of its own: a request's first read goes to
//!   the stack, and is then kept in the allocation it filled (at most the read's size,
//!   shared with the last request's head until that is gone).
//!
//! Why: hyper's server cost ~11.5k instructions per proxied keep-alive GET (callgrind,
//! one worker) — its dispatcher, body channel and encoder are built for every case; with
//! this server a GET costs 30.5k instead of 33.2k in all (README, "Benchmark").

use super::connection::{Counted, Prefixed};
use crate::proxy::body::ResponseBody;
use crate::upstream::h1::{put_field, write_all, WriteNow};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Wake, Waker};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

/// Most fields in a head the fast path parses; a head with more goes to hyper.
const MAX_FIELDS: usize = 64;
/// What one read takes at most while no request is in progress: a head larger than this
/// (rare) is finished by hyper.
const FIRST_READ: usize = 4096;

/// How the own server's part of a connection ended.
pub(super) enum Ended<IO> {
    /// Closed (by the client, after `Connection: close`, at shutdown, or on an error).
    Done,
    /// The next request is for hyper: the stream with the bytes read and not yet served
    /// put back in front.
    HandOff(Prefixed<IO>),
}

/// Serves requests on `io` until the connection ends or a request is not plain (see the
/// module); `serve_one` serves one request. `shut` asks it to stop once the current
/// response is written (at once if none is being served).
pub(super) async fn serve<IO, S, F>(
    mut io: Prefixed<IO>,
    serve_one: S,
    shut: &AtomicBool,
    max_head: usize,
) -> Ended<IO>
where
    IO: AsyncRead + WriteNow,
    S: Fn(Request<Incoming>) -> F,
    F: Future<Output = Result<Response<Counted<ResponseBody>>, Infallible>>,
{
    // Bytes read and not yet served (a pipelined request), kept between requests only
    // when there are some.
    let mut pending = BytesMut::new();
    // Made with the first request: a connection that never sends one holds none.
    let mut watch: Option<Watch> = None;
    loop {
        if pending.is_empty() {
            match read_first(&mut io, &mut pending, shut).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return Ended::Done,
            }
        }
        let watch = watch.get_or_insert_with(Watch::new);
        // `read_first` left the task's own waker with the socket.
        watch.armed = false;
        let req = match parse(&mut pending, max_head) {
            Ok(req) => req,
            Err(read) => {
                io.put_back(read);
                return Ended::HandOff(io);
            }
        };
        // The client going away drops the request's future.
        let Some(response) = watch_client(&mut io, &mut pending, watch, serve_one(req)).await
        else {
            return Ended::Done;
        };
        let closing = shut.load(Ordering::Acquire);
        match write_response(&mut io, &mut pending, watch, response, closing).await {
            // `pending`, emptied, keeps the allocation its last read filled (the head's
            // bytes, shared until the request is gone): the next read reuses it.
            Ok(true) if !shut.load(Ordering::Acquire) => {}
            _ => {
                let _ = io.shutdown().await;
                return Ended::Done;
            }
        }
    }
}

/// The first bytes of the next request: false if the client closed (or shutdown was
/// asked) before any. No buffer is held while waiting: a read into the stack, copied
/// once its bytes are there.
async fn read_first<IO: AsyncRead + Unpin>(
    io: &mut IO,
    into: &mut BytesMut,
    shut: &AtomicBool,
) -> io::Result<bool> {
    std::future::poll_fn(|cx| {
        if shut.load(Ordering::Acquire) {
            return Poll::Ready(Ok(false));
        }
        read_into::<FIRST_READ, _>(io, into, cx)
    })
    .await
}

/// One read of at most `N` bytes into the stack, appended to `into`: ready with true if
/// bytes came, false at EOF.
fn read_into<const N: usize, IO: AsyncRead + Unpin>(
    io: &mut IO,
    into: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> Poll<io::Result<bool>> {
    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); N];
    let mut buf = ReadBuf::uninit(&mut stack);
    std::task::ready!(Pin::new(io).poll_read(cx, &mut buf))?;
    into.extend_from_slice(buf.filled());
    Poll::Ready(Ok(!buf.filled().is_empty()))
}

/// Parses the head at the start of `buf` if it is a plain request (see the module); on
/// success the head's bytes (and the body's) leave `buf`, and the request's field values
/// and body share them. `Err`: everything read (`buf` is left empty), for hyper, to which
/// the connection is handed.
fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Request<Incoming>, Bytes> {
    // Everything read is frozen whole and parsed in place, so that the field values are
    // slices of it; `buf` keeps its allocation's unused tail for the next read.
    // Early returns rather than `Option` combinators: each step of those moved the
    // ~250-byte request again (a `memcpy` call each, callgrind).
    let all = buf.split().freeze();
    let Some((mut req, head, length)) = plain(&all, max_head) else {
        return Err(all);
    };
    // A body must be here whole: one that is still coming is hyper's to stream.
    let end = usize::try_from(length)
        .ok()
        .and_then(|n| head.checked_add(n))
        .filter(|&end| end <= all.len());
    let Some(end) = end else {
        return Err(all);
    };
    if end > head {
        *req.body_mut() = Incoming::full(all.slice(head..end));
    }
    // A pipelined request's bytes go back (rare: a copy).
    if end < all.len() {
        buf.extend_from_slice(&all[end..]);
    }
    Ok(req)
}

thread_local! {
    /// The field names of the last request heads this thread parsed, by place.
    static RECENT_NAMES: std::cell::RefCell<hyper::ext::RecentNames> =
        const { std::cell::RefCell::new(hyper::ext::RecentNames::new()) };
}

/// The request whose head starts `all` if it is plain, with the head's length and the
/// body's. The head must end with CRLF CRLF (one with bare LF line ends is hyper's) and be
/// at most `max_head` bytes.
fn plain(all: &Bytes, max_head: usize) -> Option<(Request<Incoming>, usize, u64)> {
    let mut fields = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let head = match req.parse_with_uninit_headers(all, &mut fields) {
        Ok(httparse::Status::Complete(n)) if n <= max_head && all[..n].ends_with(b"\r\n\r\n") => n,
        _ => return None,
    };
    let method = match req.method? {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        "OPTIONS" => Method::OPTIONS,
        _ => return None,
    };
    if req.version != Some(1) {
        return None;
    }
    let path = req.path.filter(|p| p.starts_with('/'))?;
    let uri = Uri::from_maybe_shared(all.slice_ref(path.as_bytes())).ok()?;
    let mut headers = crate::spares::map();
    let mut length = None;
    // A name spelled as the last request's at the same place is taken from it, not parsed
    // again (hyper's server keeps the same per thread).
    RECENT_NAMES.with_borrow_mut(|names| -> Option<()> {
        for (i, f) in req.headers.iter().enumerate() {
            let name = f.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                // One field of digits alone; anything else is hyper's to judge.
                if length.is_some() || f.value.is_empty() || f.value.len() > 18 {
                    return None;
                }
                if !f.value.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                length = Some(
                    f.value
                        .iter()
                        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
                );
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"upgrade")
                || name.eq_ignore_ascii_case(b"te")
                || (name.eq_ignore_ascii_case(b"connection")
                    && !f.value.eq_ignore_ascii_case(b"keep-alive"))
            {
                return None;
            }
            let name = names.get(i, name).ok()?;
            let value = HeaderValue::from_maybe_shared(all.slice_ref(f.value)).ok()?;
            headers.append(name, value);
        }
        Some(())
    })?;
    let mut req = Request::new(Incoming::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some((req, head, length.unwrap_or(0)))
}

/// Polls `served` to its response while reading the client: `None` if the client closed
/// first. Bytes the client sends meanwhile are kept in `pending` (hyper stops reading
/// once some are buffered; so does this).
async fn watch_client<IO, F>(
    io: &mut IO,
    pending: &mut BytesMut,
    watch: &mut Watch,
    served: F,
) -> Option<Response<Counted<ResponseBody>>>
where
    IO: AsyncRead + Unpin,
    F: Future<Output = Result<Response<Counted<ResponseBody>>, Infallible>>,
{
    let mut served = std::pin::pin!(served);
    let mut open = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(Ok(r)) = served.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if open {
            match poll_client(io, pending, watch, cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(None),
                // A read error: the connection is gone; its write will say so.
                Poll::Ready(Err(_)) => open = false,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Reads what the client sends while its request is served, into `pending` (a pipelined
/// request; hyper stops reading once some is buffered, and so does this): ready with
/// `Ok` when it closed, `Err` when the read failed, pending while it is still there.
///
/// The socket is read with `watch`'s waker, and once it said pending it is read again
/// only after that waker was woken (by the client's bytes or its close), not each time
/// the request's own work wakes the connection's task: twice a proxied GET, ~150
/// instructions each (callgrind).
fn poll_client<IO: AsyncRead + Unpin>(
    io: &mut IO,
    pending: &mut BytesMut,
    watch: &mut Watch,
    cx: &mut std::task::Context<'_>,
) -> Poll<io::Result<()>> {
    watch.wake.task.register(cx.waker());
    if watch.armed && !watch.wake.woken.swap(false, Ordering::AcqRel) {
        return Poll::Pending;
    }
    watch.armed = false;
    let mut wcx = std::task::Context::from_waker(&watch.waker);
    while pending.is_empty() {
        match read_into::<512, _>(io, pending, &mut wcx) {
            Poll::Ready(Ok(true)) => {}
            Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                watch.armed = true;
                break;
            }
        }
    }
    Poll::Pending
}

/// What [`poll_client`] reads the client's socket with while a request is served.
struct Watch {
    wake: Arc<WatchWake>,
    /// `wake` as a waker, made once.
    waker: Waker,
    /// The socket said pending to `waker` and holds it: until it is woken there is
    /// nothing to read. Whatever reads the socket with another waker clears this.
    armed: bool,
}

struct WatchWake {
    /// Woken since the socket was last read.
    woken: AtomicBool,
    /// The connection's task.
    task: futures_util::task::AtomicWaker,
}

impl Watch {
    fn new() -> Self {
        let wake = Arc::new(WatchWake {
            woken: AtomicBool::new(false),
            task: futures_util::task::AtomicWaker::new(),
        });
        Watch {
            waker: Waker::from(wake.clone()),
            wake,
            armed: false,
        }
    }
}

impl Wake for WatchWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// What the wait for a response body's next frame ended with.
enum Next<F> {
    Frame(Option<F>),
    /// The body is not ready and the head is not sent yet.
    Head,
    ClientGone,
}

/// How a response body is framed on the wire.
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
}

/// Writes `response`; true if the connection can carry another request. `closing`
/// (shutdown asked): the response says `connection: close`, as hyper's does. While the
/// body is awaited the client is read, as while the request was served: its EOF (or an
/// error) ends the response and drops the body, which cancels the upstream's.
async fn write_response<IO: AsyncRead + WriteNow>(
    io: &mut IO,
    pending: &mut BytesMut,
    watch: &mut Watch,
    response: Response<Counted<ResponseBody>>,
    closing: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let can_have_body = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    let mut head = crate::spares::head();
    if status.is_informational() {
        // As hyper: a 1xx cannot be a response here (an upgrade's 101 is hyper's), so the
        // client gets a 500 and the connection ends.
        head.extend_from_slice(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\ndate: ",
        );
        hyper::ext::extend_with_http_date(&mut head);
        head.extend_from_slice(b"\r\n\r\n");
        write_all(io, &[&head]).await?;
        return Ok(false);
    }
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if status == StatusCode::OK && reason.is_none() {
        head.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(status.as_str().as_bytes());
        head.push(b' ');
        match reason {
            Some(reason) => head.extend_from_slice(reason.as_bytes()),
            None => {
                head.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes())
            }
        }
        head.extend_from_slice(b"\r\n");
    }
    // As hyper's `encode_headers` (server, GET): the body's exact size, if known.
    let known = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    let mut framing = None;
    let mut keep = true;
    let mut wrote_date = false;
    // The upstream's head as it came (`RawHead`: its lines less the hop-by-hop ones),
    // then the map's fields, which are then the gateway's own.
    if let Some((raw, request_id)) = body.body_mut().take_raw_head() {
        for lines in raw.lines() {
            head.extend_from_slice(lines);
        }
        if let Some(n) = raw.length() {
            framing = Some(Framing::Length(known.unwrap_or(n)));
        }
        wrote_date = raw.has_date();
        if let Some(id) = request_id {
            put_field(&mut head, &crate::proxy::headers::X_REQUEST_ID, &id);
        }
    }
    for (name, value) in &parts.headers {
        match *name {
            header::CONTENT_LENGTH => {
                if framing.is_some() {
                    continue;
                }
                match known {
                    Some(n) => framing = Some(Framing::Length(n)),
                    None => match std::str::from_utf8(value.as_bytes())
                        .ok()
                        .and_then(|v| v.parse().ok())
                    {
                        Some(n) => framing = Some(Framing::Length(n)),
                        None => {
                            return Err(io::Error::other("illegal content-length in a response"))
                        }
                    },
                }
                if !can_have_body {
                    continue;
                }
            }
            header::TRANSFER_ENCODING => {
                if framing.is_some() || !can_have_body {
                    continue;
                }
                framing = Some(Framing::Chunked);
                head.extend_from_slice(b"transfer-encoding: ");
                head.extend_from_slice(value.as_bytes());
                if !is_chunked(value) {
                    head.extend_from_slice(b", chunked");
                }
                head.extend_from_slice(b"\r\n");
                continue;
            }
            header::CONNECTION if connection_close(value) => keep = false,
            header::DATE => wrote_date = true,
            _ => {}
        }
        put_field(&mut head, name, value);
    }
    let framing = match framing {
        _ if !can_have_body => Framing::Length(0),
        Some(f) => f,
        None => match known {
            Some(n) => {
                head.extend_from_slice(b"content-length: ");
                head.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                head.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
            None => {
                head.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        },
    };
    if closing && keep {
        head.extend_from_slice(b"connection: close\r\n");
        keep = false;
    }
    if !wrote_date {
        head.extend_from_slice(b"date: ");
        hyper::ext::extend_with_http_date(&mut head);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    crate::spares::give_map(parts.headers);
    if framing == Framing::Length(0) {
        write_all(io, &[&head]).await?;
        io.flush().await?;
        crate::spares::give_head(head);
        return Ok(keep);
    }
    let mut left = match framing {
        Framing::Length(n) => n,
        Framing::Chunked => u64::MAX,
    };
    let buffer = head;
    // The head until it is written (alone, or with the first frame).
    let mut head = Some(&buffer[..]);
    loop {
        let next = std::future::poll_fn(|cx| {
            // The client first, before each frame (as hyper reads before it writes): one
            // that went away ends the response even while the body is always ready.
            if poll_client(io, pending, watch, cx).is_ready() {
                return Poll::Ready(Next::ClientGone);
            }
            if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                return Poll::Ready(Next::Frame(frame));
            }
            // The body is not ready: the head goes now (an event stream's client sees
            // the status before the first event), as hyper flushes it.
            if head.is_some() {
                return Poll::Ready(Next::Head);
            }
            Poll::Pending
        })
        .await;
        let frame = match next {
            Next::Frame(frame) => frame,
            Next::Head => {
                write_all(io, &[head.unwrap_or_default()]).await?;
                io.flush().await?;
                head = None;
                continue;
            }
            Next::ClientGone => return Err(io::ErrorKind::ConnectionAborted.into()),
        };
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: hyper sends none unless the request had `TE: trailers`
                // (which goes to hyper).
                Err(_) => continue,
            },
            Some(Err(_)) => return Err(io::Error::other("response body failed")),
            None => break,
        };
        if data.is_empty() {
            continue;
        }
        let head_bytes = head.unwrap_or_default();
        match framing {
            Framing::Length(_) => {
                // As hyper: a body longer than its length aborts the connection.
                if data.len() as u64 > left {
                    return Err(io::Error::other("response body longer than its length"));
                }
                left -= data.len() as u64;
                // Not tokio's `write_all_buf`: its vectored write fills 64 slices
                // for every call (~190 instructions per response, callgrind).
                write_all(io, &[head_bytes, &data]).await?;
                if left == 0 && body.is_end_stream() {
                    io.flush().await?;
                    head = None;
                    break;
                }
            }
            Framing::Chunked => {
                let mut size = [0u8; 18];
                let size = chunk_size(&mut size, data.len());
                write_all(io, &[head_bytes, size, &data, b"\r\n"]).await?;
            }
        }
        io.flush().await?;
        head = None;
    }
    if let Some(head) = head {
        write_all(io, &[head]).await?;
    }
    crate::spares::give_head(buffer);
    match framing {
        Framing::Chunked => write_all(io, &[b"0\r\n\r\n"]).await?,
        Framing::Length(_) if left > 0 => {
            return Err(io::Error::other("response body ended short of its length"))
        }
        Framing::Length(_) => {}
    }
    io.flush().await?;
    // The body is done: the request is no longer in flight.
    drop(body);
    Ok(keep)
}

/// `{len:x}\r\n` into `buf`.
fn chunk_size(buf: &mut [u8; 18], len: usize) -> &[u8] {
    use std::io::Write as _;
    let mut w = &mut buf[..];
    let _ = write!(w, "{len:x}\r\n");
    let left = w.len();
    &buf[..18 - left]
}

fn is_chunked(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn connection_close(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_as_spelled_whatever_the_last_request_had_in_their_place() {
        // One thread: each head's names at the places the one before filled.
        let heads = [
            "GET / HTTP/1.1\r\nHost: a\r\nX-One: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nx-two: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nAccept: */*\r\n\r\n",
            "GET / HTTP/1.1\r\nAccept: */*\r\nX-On: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nX-One: 1\r\n\r\n",
        ];
        let want: [&[&str]; 5] = [
            &["host", "x-one"],
            &["host", "x-two"],
            &["host", "x-one", "accept"],
            &["accept", "x-on"],
            &["x-one"],
        ];
        for (head, want) in heads.iter().zip(want) {
            let all = Bytes::from_static(head.as_bytes());
            let (req, len, body) = plain(&all, 8192).expect("a plain head");
            assert_eq!((len, body), (head.len(), 0));
            let names: Vec<&str> = req.headers().keys().map(|n| n.as_str()).collect();
            assert_eq!(names, want, "{head:?}");
        }
    }
}
