//! The worker's own HTTP/1.1 client for plain upstreams, for every request that asks for
//! no upgrade. It runs on the request's own task: the head is written with a body in
//! memory in one `writev` (a streamed body follows frame by frame, under the client's
//! `Content-Length` or chunked, while a response that begins early ends the sending), the
//! response head is read and parsed (`httparse`) where the request waits for it, and the
//! response body is read from the socket by whoever polls it (the client connection's
//! task), so an exchange costs no task, no channel and no wake-up of its own. hyper's
//! HTTP/1 client (`hyper::client::conn::http1`) carries upgrades (WebSocket: a 101 hands
//! its connection to the tunnel) and CONNECT, in `upstream::pool`.
//!
//! Response framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; a
//! `Transfer-Encoding` whose last coding is `chunked` is decoded (any other ends at the
//! close), and wins over a `Content-Length`, which is then removed and the connection not
//! reused; a `Content-Length` must be one valid number (repeated values must agree);
//! without either the body ends at the close. A connection is reused only when the
//! response said it may be (`Connection: close`, HTTP/1.0 without `keep-alive`), its body
//! was read to its exact end and nothing followed it.

use super::body::{ClientBodyFailed, UpstreamBody};
use super::call::Added;
use super::pool::Return;
use crate::BoxError;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Frame, SizeHint};
use hyper::ext::RecentNames;
use std::future::Future as _;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::net::TcpStream;

/// The largest response head read (hyper's client default: 8 KiB + 100 × 4 KiB).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The most header fields in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// The most bytes of chunk extensions and trailers in one body (hyper's limits).
const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// What a read asks room for: at first, and at most (a read that fills its room doubles
/// it, as hyper's adaptive reads do, so a large body is not read 8 KiB at a time).
const READ_ROOM: usize = 8192;
const MAX_READ_ROOM: usize = 128 * 1024;

/// One connection to an endpoint, idle between exchanges.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The request head being written, and where a response head's fields are: kept
    /// between exchanges for their room.
    head: Vec<u8>,
    fields: Vec<Field>,
    /// The field names of the last response heads, by place (`hyper::ext::RecentNames`,
    /// which hyper's server keeps for request heads).
    names: RecentNames,
    /// What a read of a body asks room for (see `READ_ROOM`).
    room: usize,
    /// What bounds an exchange (see [`Conn::exchange`]): made by the first one, then kept
    /// (and left set) from one to the next.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A response head, and how its body is framed.
pub struct Head {
    parts: http::response::Parts,
    /// The head as it came, when the caller writes it on so (`Added::raw_head`); the
    /// map in `parts` is then empty.
    raw: Option<RawHead>,
    framing: Framing,
    keep_alive: bool,
}

/// How an exchange failed; `received`: some of a response had come (so the request was
/// certainly taken).
#[derive(Debug)]
pub struct ExchangeError {
    pub error: BoxError,
    pub received: bool,
}

impl ExchangeError {
    fn sending(error: impl Into<BoxError>) -> Self {
        ExchangeError {
            error: error.into(),
            received: false,
        }
    }
}

/// A request body as this client sends it.
pub enum Outgoing {
    /// In memory: written with the head (with its `content-length`), and written again
    /// if the request must go again on another connection.
    Whole(Bytes),
    /// The client's stream, sent as it comes: framed by the head's `content-length`
    /// (which it must match exactly), or chunked when the head has none.
    Stream(UpstreamBody),
}

impl Outgoing {
    /// Whether the same body can go again after a try that wrote some of it.
    pub fn resendable(&self) -> bool {
        matches!(self, Outgoing::Whole(_))
    }
}

/// How the head frames the body.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// In memory, this long: a `content-length` is added if the head has none.
    Whole(usize),
    /// Streamed under the head's own `content-length` of this many bytes.
    Declared(u64),
    /// Streamed chunked: `transfer-encoding: chunked` is added.
    Chunked,
}

impl Conn {
    /// Boxed: a connection is moved from the pool to a request, into its response's body
    /// and back at each request; a box moves as one pointer (at 160 bytes inline, each
    /// move was a `memcpy` call).
    pub fn new(io: TcpStream) -> Box<Self> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            fields: Vec::new(),
            names: RecentNames::default(),
            room: READ_ROOM,
            timer: None,
        })
    }

    /// Whether the connection is fit to carry a request: the upstream has sent nothing
    /// since the last response (neither bytes nor its close). Asked without a waker of
    /// the caller's; a system call only when tokio last saw the socket readable.
    pub fn is_idle(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        // Nothing is read while tokio has not seen the socket readable since the last
        // read drained it; else a read that would block clears the readiness and says
        // there is nothing. (Not `poll_read_ready`: its cooperative budget and waker
        // cost ~110 instructions, callgrind.)
        matches!(
            self.io.try_read_buf(&mut self.buf),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }

    /// Sends a request (its target in origin form) and reads the response head. Once a
    /// response head has come, the response's fields are put in the request's header
    /// map (emptied: it is not needed any more, and its room is already made, as hyper's
    /// client does) — unless `keep`: a later try may send the head again, which is then
    /// only read, and the response's fields get a map of their own. A response that
    /// begins before a streamed body has all been sent ends the sending (an upstream
    /// refusing a large body early); its connection is then not reused.
    ///
    /// `None` when `until` passed first. The connection's timer bounds it, kept from one
    /// exchange to the next instead of a timer made, registered in tokio's timer wheel
    /// and taken out of it again for each (~500 instructions: callgrind). It is moved
    /// only when it is set later than `until` (an exchange with a shorter deadline) or
    /// fires before it (set for an earlier exchange's): on a connection whose requests
    /// share a timeout, about once per timeout instead of once per request. An idle
    /// pooled connection's timer stays set: it may wake the task of its last exchange
    /// once, for nothing (and keeps that task's memory until then, or until the
    /// connection is used or closed).
    pub async fn exchange(
        &mut self,
        head: &mut http::request::Parts,
        added: Added<'_>,
        body: &mut Outgoing,
        keep: bool,
        until: tokio::time::Instant,
    ) -> Option<Result<Head, ExchangeError>> {
        let mut timer = match self.timer.take() {
            Some(mut timer) => {
                if timer.deadline() > until {
                    timer.as_mut().reset(until);
                }
                timer
            }
            None => Box::pin(tokio::time::sleep_until(until)),
        };
        let exchanged = {
            let mut exchange = std::pin::pin!(self.exchange_unbounded(head, added, body, keep));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                // Polled outside tokio's task budget, as `tokio::time::timeout` polls its
                // timer when the future it bounds used the budget up: else an exchange
                // that used it up would leave the timer saying pending.
                while Pin::new(&mut tokio::task::coop::unconstrained(timer.as_mut()))
                    .poll(cx)
                    .is_ready()
                {
                    if tokio::time::Instant::now() >= until {
                        return Poll::Ready(None);
                    }
                    timer.as_mut().reset(until);
                }
                Poll::Pending
            })
            .await
        };
        self.timer = Some(timer);
        exchanged
    }

    async fn exchange_unbounded(
        &mut self,
        head: &mut http::request::Parts,
        added: Added<'_>,
        body: &mut Outgoing,
        keep: bool,
    ) -> Result<Head, ExchangeError> {
        // Written after the worker's other ready tasks have run (and its events been
        // polled), not at once: the requests of one turn go to the upstreams together,
        // so an upstream on the same machine is woken once for them rather than once
        // each, as when hyper's connection tasks wrote them. Measured (release, two
        // workers, wrk -c64 to nginx on this 2-core box, two alternating runs): writing
        // at once 165-170k requests in 5 s, 0.67 context switches per request; after
        // the turn 186-187k, 0.49 (hyper's client: 181-183k, 0.53).
        tokio::task::yield_now().await;
        let mut finished = true;
        match body {
            Outgoing::Whole(b) => {
                encode(&mut self.head, head, added, Sending::Whole(b.len()));
                write_all(&mut self.io, &[&self.head, b])
                    .await
                    .map_err(ExchangeError::sending)?;
            }
            Outgoing::Stream(b) => {
                let sending = match declared_length(&head.headers) {
                    Some(n) => Sending::Declared(n),
                    None => Sending::Chunked,
                };
                encode(&mut self.head, head, added, sending);
                finished = self.send_stream(b, sending).await?;
            }
        }
        // An interim response came: the upstream has the request.
        let mut had_interim = false;
        loop {
            let parsed = read_head(&mut self.io, &mut self.buf, &mut self.fields)
                .await
                .map_err(|(error, received)| ExchangeError {
                    error: error.into(),
                    received: received || had_interim,
                })?;
            let received = |error: io::Error| ExchangeError {
                error: error.into(),
                received: true,
            };
            let headers = match keep {
                // A spare map (`crate::spares`; the try loop gives the request's back when
                // the call ends), which `into_parts` makes room in for the response's
                // fields: a map made per request cost ~1k instructions (callgrind).
                true => crate::spares::map(),
                false => {
                    let mut map = std::mem::take(&mut head.headers);
                    map.clear();
                    map
                }
            };
            let (mut parts, facts, raw) = parsed
                .into_parts(
                    &mut self.buf,
                    &self.fields,
                    &mut self.names,
                    headers,
                    added.raw_head,
                )
                .map_err(received)?;
            if interim(parts.status.as_u16()) {
                had_interim = true;
                continue;
            }
            let (framing, keep_alive) = framing(
                &head.method,
                parts.status,
                parts.version,
                &facts,
                &mut parts.headers,
            )
            .map_err(received)?;
            return Ok(Head {
                parts,
                raw,
                framing,
                keep_alive: keep_alive && finished,
            });
        }
    }

    /// Takes the interim responses at the front of what has been read while a body is
    /// sent; `false` when a final response (or a switch) has begun. An incomplete head
    /// is left to be read on (`true`): the body goes on meanwhile.
    fn interim_heads(&mut self) -> io::Result<bool> {
        while let Some(parsed) = parse(&self.buf, &mut self.fields)? {
            if !interim(parsed.status) {
                return Ok(false);
            }
            let _ = self.buf.split_to(parsed.len);
        }
        Ok(true)
    }

    /// Sends the head (in `self.head`, emptied once written) and a streamed body as its
    /// frames come; `false` if a response began first. The head waits for the body's
    /// first frame and goes with it: a client whose body fails at once (bad framing)
    /// sends nothing upstream, and a small body goes in the head's write.
    async fn send_stream(
        &mut self,
        body: &mut UpstreamBody,
        sending: Sending,
    ) -> Result<bool, ExchangeError> {
        let mut left = match sending {
            Sending::Declared(n) => Some(n),
            _ => None,
        };
        // The client's body, not the endpoint, is at fault.
        let mismatch = || {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                "request body does not match its content-length",
            );
            ExchangeError::sending(ClientBodyFailed::new(Box::new(e)))
        };
        loop {
            // Until the head has gone, no response can have begun.
            let frame = if !self.head.is_empty() {
                next_frame(body).await
            } else {
                tokio::select! {
                    biased;
                    ready = self.io.readable() => {
                        ready.map_err(ExchangeError::sending)?;
                        // Readiness can be spurious: only bytes (or the close) say the
                        // response began.
                        match self.io.try_read_buf(&mut self.buf) {
                            Ok(0) => return Err(ExchangeError::sending(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "upstream closed the connection while the request body was sent",
                            ))),
                            // An interim answer (100 Continue to an `Expect`, 103) is
                            // taken and the body goes on; a final one ends the sending.
                            Ok(_) => match self.interim_heads() {
                                Ok(true) => continue,
                                Ok(false) => return Ok(false),
                                Err(e) => return Err(ExchangeError { error: e.into(), received: true }),
                            },
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(e) => return Err(ExchangeError::sending(e)),
                        }
                    }
                    frame = next_frame(body) => frame,
                }
            };
            let frame = match frame {
                None => break,
                Some(Err(e)) => return Err(ExchangeError::sending(e)),
                Some(Ok(frame)) => frame,
            };
            let head = &self.head;
            match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => {
                    let written = match &mut left {
                        Some(left) => {
                            *left = left.checked_sub(data.len() as u64).ok_or_else(mismatch)?;
                            write_all(&mut self.io, &[head, &data]).await
                        }
                        None => {
                            let mut size = [0u8; 18];
                            let n = chunk_size_line(&mut size, data.len());
                            write_all(&mut self.io, &[head, &size[..n], &data, b"\r\n"]).await
                        }
                    };
                    written.map_err(ExchangeError::sending)?;
                    self.head.clear();
                }
                // Trailers end the body; they have no place without chunked framing.
                Err(frame) => {
                    if let (Ok(trailers), None) = (frame.into_trailers(), left) {
                        let mut last = b"0\r\n".to_vec();
                        put_fields(&mut last, &trailers);
                        last.extend_from_slice(b"\r\n");
                        write_all(&mut self.io, &[head, &last])
                            .await
                            .map_err(ExchangeError::sending)?;
                        return Ok(true);
                    }
                    break;
                }
            }
        }
        let last: &[u8] = match left {
            Some(0) => b"",
            Some(_) => return Err(mismatch()),
            None => b"0\r\n\r\n",
        };
        write_all(&mut self.io, &[&self.head, last])
            .await
            .map_err(ExchangeError::sending)?;
        Ok(true)
    }
}

/// Whether a response with this status is an interim one (100 Continue, 103 Early
/// Hints), which is not passed on: a 1xx other than 101 (after which the connection
/// speaks another protocol).
fn interim(status: u16) -> bool {
    (100..200).contains(&status) && status != 101
}

/// The body's next frame.
fn next_frame(
    body: &mut UpstreamBody,
) -> impl std::future::Future<Output = Option<Result<Frame<Bytes>, BoxError>>> + '_ {
    use http_body::Body as _;
    std::future::poll_fn(move |cx| Pin::new(&mut *body).poll_frame(cx))
}

/// `SIZE\r\n` of a chunk of `len` bytes, in hex, into `out`; its length.
fn chunk_size_line(out: &mut [u8; 18], len: usize) -> usize {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in out[..digits].iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// The head's one `content-length`, if it has one (`fits` checked it is one number).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::CONTENT_LENGTH)?;
    parse_length(v.as_bytes())
}

/// The request head, as hyper's client writes it: `METHOD TARGET HTTP/1.1`, the fields
/// in order, names in lower case, and a `content-length` for a body in memory when the
/// head has none (the caller checked that one it has is the body's), or
/// `transfer-encoding: chunked` for a streamed body without one. The try's `added`
/// fields go in as they would have been inserted: its `Host` first, in place of the
/// head's (RFC 9112 §3.2: a client sends it first), the others after the head's own.
fn encode(out: &mut Vec<u8>, head: &http::request::Parts, added: Added<'_>, sending: Sending) {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = added.host {
        put_field(out, &header::HOST, host);
    }
    for (name, value) in &head.headers {
        if added.host.is_none() || name != header::HOST {
            put_field(out, name, value);
        }
    }
    for (name, value) in added.fields.iter() {
        put_field(out, name, value);
    }
    match sending {
        Sending::Whole(len) if len > 0 && !head.headers.contains_key(header::CONTENT_LENGTH) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Sending::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// `name: value` lines, one per field, as hyper writes them (names in lower case).
fn put_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        put_field(out, name, value);
    }
}

/// One `name: value` line.
pub(crate) fn put_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Whether a request can go by this client: it asks for no upgrade (`Upgrade`, CONNECT),
/// has no `Transfer-Encoding` (the gateway removes the client's), and at most one
/// `Content-Length` — which, for a body in memory (`whole`: its length), must be the
/// body's, and for a streamed one a number (the stream must then match it).
pub fn fits(method: &Method, headers: &HeaderMap, whole: Option<u64>) -> bool {
    if *method == Method::CONNECT {
        return false;
    }
    // One walk over the fields (see `framing`), not three lookups.
    let mut length = None;
    for (name, v) in headers.iter() {
        if *name == header::UPGRADE || *name == header::TRANSFER_ENCODING {
            return false;
        }
        if *name == header::CONTENT_LENGTH {
            if length.is_some() {
                return false;
            }
            length = Some(v);
        }
    }
    match (length, whole) {
        (None, _) => true,
        (Some(v), Some(len)) => v.as_bytes() == itoa::Buffer::new().format(len).as_bytes(),
        (Some(v), None) => parse_length(v.as_bytes()).is_some(),
    }
}

/// Writes `parts` in order, as few writes (`writev`) as the socket takes.
pub(crate) async fn write_all<IO: WriteNow>(io: &mut IO, parts: &[&[u8]]) -> io::Result<()> {
    // `parts[at][offset..]` is what is left; written (and empty) parts are passed.
    let (mut at, mut offset) = (0, 0);
    loop {
        while at < parts.len() && offset >= parts[at].len() {
            offset -= parts[at].len();
            at += 1;
        }
        if at == parts.len() {
            return Ok(());
        }
        // The slices are made where they are written, not kept across the wait: the
        // futures that write (a connection's among them) stay as small as before.
        let now = {
            let (s, len) = slices(&parts[at..], offset);
            match io.write_now(&s[..len]) {
                Some(Err(e)) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                Some(Ok(n)) => Some(n),
                _ => None,
            }
        };
        let n = match now {
            Some(n) => n,
            None => {
                std::future::poll_fn(|cx| {
                    let (s, len) = slices(&parts[at..], offset);
                    Pin::new(&mut *io).poll_write_vectored(cx, &s[..len])
                })
                .await?
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += n;
    }
}

/// Up to four of `rest`, the first from `offset`, as slices for one `writev`, and how
/// many.
fn slices<'a>(rest: &[&'a [u8]], offset: usize) -> ([IoSlice<'a>; 4], usize) {
    let mut slices = [IoSlice::new(&[]); 4];
    let len = rest.len().min(slices.len());
    slices[0] = IoSlice::new(&rest[0][offset..]);
    for i in 1..len {
        slices[i] = IoSlice::new(rest[i]);
    }
    (slices, len)
}

/// A stream [`write_all`] writes to: where it can, at once, without tokio's
/// `AsyncWrite`, which asks the task's cooperative budget first and readies a waker,
/// ~60 instructions a write (callgrind) that a socket with room does not need.
pub(crate) trait WriteNow: tokio::io::AsyncWrite + Unpin {
    /// Writes what the stream takes at once, without waiting (`WouldBlock`: nothing);
    /// `None` when it writes only through `AsyncWrite` (TLS). A socket takes a head at
    /// once nearly always.
    fn write_now(&mut self, _bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        None
    }
}

impl WriteNow for TcpStream {
    /// A write shorter than what it was given filled the socket: it clears the
    /// readiness ([`at_once`]), so the next write waits for room without a wasted
    /// `EAGAIN` first.
    fn write_now(&mut self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        let io: &TcpStream = self;
        Some(at_once(io, tokio::io::Interest::WRITABLE, len, || {
            io.try_write_vectored(bufs)
        }))
    }
}

impl WriteNow for tokio_rustls::server::TlsStream<TcpStream> {}

/// Reads more of the connection into `buf`; `Ok(0)` at its close.
fn poll_read(
    io: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    room: &mut usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < *room / 2 {
        buf.reserve(*room);
    }
    let spare = buf.capacity() - buf.len();
    let n = loop {
        match try_read(io, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(io.poll_read_ready(cx))?;
            }
            r => break r?,
        }
    };
    if n == spare && *room < MAX_READ_ROOM {
        *room *= 2;
    }
    Poll::Ready(Ok(n))
}

/// Reads what the socket has into the room `buf` has (some); or `WouldBlock` at once
/// when tokio has not seen the socket readable since it last drained it.
///
/// tokio's `AsyncRead` asks its cooperative budget first and readies a waker, ~100
/// instructions a read (callgrind) that a socket with data to read does not need.
fn try_read(io: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.capacity() - buf.len();
    at_once(io, tokio::io::Interest::READABLE, spare, || {
        io.try_read_buf(buf)
    })
}

/// Runs `op`, a read or write of at most `room` bytes on `io`, if tokio has seen the
/// socket ready for `interest` (else `WouldBlock`, no system call).
///
/// `try_io` alone leaves the readiness set after a read or write shorter than its room,
/// so the next one would end in a wasted `EAGAIN`. A short one drained the socket or
/// filled it (with epoll; tokio's own read and write assume the same): it is said to
/// have blocked to [`TcpStream::try_io`], which clears the readiness as tokio's own do,
/// and its length kept. Nothing done (0: the end of a stream) keeps the readiness.
fn at_once(
    io: &TcpStream,
    interest: tokio::io::Interest,
    room: usize,
    op: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut done = None;
    let r = io.try_io(interest, || {
        let n = op()?;
        done = Some(n);
        match n > 0 && n < room {
            true => Err(io::ErrorKind::WouldBlock.into()),
            false => Ok(()),
        }
    });
    match (r, done) {
        (_, Some(n)) => Ok(n),
        (Err(e), None) => Err(e),
        (Ok(()), None) => unreachable!("an operation that succeeds says its length"),
    }
}

/// Where a field's name and value are in the buffer.
type Field = ((usize, usize), (usize, usize));

/// Where a parsed head's parts are in the buffer (its fields: see `parse`).
struct Parsed {
    len: usize,
    status: u16,
    version: Version,
    reason: (usize, usize),
}

impl Parsed {
    /// Takes the head out of `buf` and makes its parts, with what its fields say
    /// ([`Facts`]). With `raw` (the caller writes the head on as it came, see
    /// [`RawHead`]) a head that can be is kept as it is, and `headers` stays empty for
    /// the fields the gateway adds; else the fields go in `headers`: values share the
    /// head's bytes, names come from `names` where they can.
    ///
    /// A `Connection: keep-alive` field is not put in the map: it is hop-by-hop, so the
    /// proxy would take it out again, and what it says is in the facts. Most upstreams
    /// send it with every response (nginx does); its insertion and removal cost ~500
    /// instructions (callgrind). Any other `Connection` field goes in the map, for the
    /// proxy to remove with the fields it names.
    fn into_parts(
        self,
        buf: &mut BytesMut,
        fields: &[Field],
        names: &mut RecentNames,
        mut headers: HeaderMap,
        raw: bool,
    ) -> io::Result<(http::response::Parts, Facts, Option<RawHead>)> {
        let head = buf.split_to(self.len).freeze();
        let status = StatusCode::from_u16(self.status).map_err(|_| invalid("status code"))?;
        let facts = Facts::of(&head, fields);
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        parts.version = self.version;
        let reason = &head[self.reason.0..self.reason.1];
        let plain_reason =
            reason.is_empty() || status.canonical_reason().map(str::as_bytes) == Some(reason);
        if raw && plain_reason && RawHead::can_keep(status, &facts) {
            parts.headers = headers;
            let raw = RawHead::new(head, &facts);
            return Ok((parts, facts, Some(raw)));
        }
        headers.reserve(fields.len());
        for (i, &((ns, ne), (vs, ve))) in fields.iter().enumerate() {
            let name = names
                .get(i, &head[ns..ne])
                .map_err(|_| invalid("field name"))?;
            if name == header::CONNECTION && is_lower(&head[vs..ve], b"keep-alive") {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| invalid("field value"))?;
            headers.append(name, value);
        }
        parts.headers = headers;
        if !plain_reason {
            if let Ok(r) =
                hyper::ext::ReasonPhrase::try_from(head.slice(self.reason.0..self.reason.1))
            {
                parts.extensions.insert(r);
            }
        }
        Ok((parts, facts, None))
    }
}

/// Most runs of field lines a [`RawHead`] keeps; a head whose kept fields are cut into
/// more (by the fields taken out) goes into a map.
const RAW_RUNS: usize = 4;

/// What a response head's fields say, read in one walk over them (comparing a name's
/// length first, then its bytes: each lookup by name in a map hashes and probes, ~85–110
/// instructions, and a response took three): the body's framing, whether the connection
/// may be reused, and which of its field lines a [`RawHead`] keeps.
struct Facts {
    /// `Connection` said `close`, `keep-alive`, or named another field.
    close: bool,
    keep: bool,
    names_fields: bool,
    /// A `Transfer-Encoding` came; the last non-empty coding of all of them, in order,
    /// is `chunked`.
    coded: bool,
    chunked: bool,
    /// The `Content-Length` values agree on this number (`Err`: they do not, or one is
    /// not a number), and how many such fields came.
    length: Result<Option<u64>, &'static str>,
    lengths: usize,
    date: bool,
    /// A `TE` field (meaningless in a response), or a kept line not written as
    /// `name: value` CRLF: the head is not written on as it came.
    odd: bool,
    /// The kept field lines (all but the hop-by-hop ones and `X-Request-Id`), as runs
    /// of the head's bytes; `n` of them, `n > RAW_RUNS` when they did not fit.
    runs: [(u32, u32); RAW_RUNS],
    n: usize,
}

/// What a field's name makes it, for [`Facts`].
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Connection,
    TransferEncoding,
    ContentLength,
    Date,
    Te,
    /// Taken out of a head written on as it came: hop-by-hop (RFC 9110 §7.6.1), or
    /// `X-Request-Id`, which the gateway sets on every response.
    Dropped,
    Other,
}

impl Kind {
    fn of(name: &[u8]) -> Kind {
        let is = |s: &[u8]| is_lower(name, s);
        match name.len() {
            2 if is(b"te") => Kind::Te,
            4 if is(b"date") => Kind::Date,
            7 if is(b"upgrade") => Kind::Dropped,
            10 if is(b"connection") => Kind::Connection,
            10 if is(b"keep-alive") => Kind::Dropped,
            12 if is(b"x-request-id") => Kind::Dropped,
            14 if is(b"content-length") => Kind::ContentLength,
            16 if is(b"proxy-connection") => Kind::Dropped,
            17 if is(b"transfer-encoding") => Kind::TransferEncoding,
            18 if is(b"proxy-authenticate") => Kind::Dropped,
            19 if is(b"proxy-authorization") => Kind::Dropped,
            _ => Kind::Other,
        }
    }
}

/// Whether `b`, a field name or a token of a field value as httparse passed it, is
/// `lower` in any case. `lower` is lower-case letters, digits and `-`, which have the
/// 0x20 bit set: a byte with that bit set to 1 is one of them only if it is it or, for
/// a letter, its upper case (the others, CR and controls, are in no name or value).
///
/// Compared eight bytes at a time (the last word overlapping the one before it):
/// `eq_ignore_ascii_case` lowers both sides a byte at a time, and a response's walk
/// ([`Facts::of`]) cost ~300 instructions in it for nginx's five fields (callgrind).
#[inline(always)]
fn is_lower(b: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let n = lower.len();
    if b.len() != n {
        return false;
    }
    let w8 = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    let w4 = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4"));
    match n {
        0..4 => b.iter().zip(lower).all(|(&x, &l)| x | 0x20 == l),
        4..8 => {
            (w4(b, 0) | FOLD as u32) == w4(lower, 0)
                && (w4(b, n - 4) | FOLD as u32) == w4(lower, n - 4)
        }
        _ => {
            let mut at = 0;
            while at + 8 < n {
                if w8(b, at) | FOLD != w8(lower, at) {
                    return false;
                }
                at += 8;
            }
            w8(b, n - 8) | FOLD == w8(lower, n - 8)
        }
    }
}

impl Facts {
    fn of(head: &[u8], fields: &[Field]) -> Facts {
        let mut f = Facts {
            close: false,
            keep: false,
            names_fields: false,
            coded: false,
            chunked: false,
            length: Ok(None),
            lengths: 0,
            date: false,
            odd: false,
            runs: [(0, 0); RAW_RUNS],
            n: 0,
        };
        // Where the last kept line ended.
        let mut end = usize::MAX;
        for &((ns, ne), (vs, ve)) in fields {
            let value = &head[vs..ve];
            let tokens = || value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
            match Kind::of(&head[ns..ne]) {
                // A value of one token, as most are, is not split (~200 instructions
                // for nginx's `keep-alive`, callgrind).
                Kind::Connection if is_lower(value, b"keep-alive") => {
                    f.keep = true;
                    continue;
                }
                Kind::Connection => {
                    for t in tokens() {
                        if is_lower(t, b"close") {
                            f.close = true;
                        } else if is_lower(t, b"keep-alive") {
                            f.keep = true;
                        } else if !t.is_empty() {
                            f.names_fields = true;
                        }
                    }
                    continue;
                }
                Kind::TransferEncoding => {
                    f.coded = true;
                    if let Some(t) = tokens().rfind(|t| !t.is_empty()) {
                        f.chunked = is_lower(t, b"chunked");
                    }
                    continue;
                }
                Kind::ContentLength => {
                    f.lengths += 1;
                    let agree = |length, t| match (length, t) {
                        (Err(e), _) => Err(e),
                        (_, None) => Err("content-length"),
                        (Ok(Some(l)), Some(n)) if l != n => Err("content-length values disagree"),
                        (Ok(_), Some(n)) => Ok(Some(n)),
                    };
                    // One number, as most are, is not split.
                    match parse_length(value) {
                        Some(n) => f.length = agree(f.length, Some(n)),
                        None => {
                            for t in tokens() {
                                f.length = agree(f.length, parse_length(t));
                            }
                        }
                    }
                }
                Kind::Date => f.date = true,
                Kind::Te => f.odd = true,
                Kind::Dropped => continue,
                Kind::Other => {}
            }
            // Kept as it came only when written `name: value` CRLF (httparse also takes
            // a bare LF, and trims the value).
            let line_end = ve + 2;
            if vs != ne + 2
                || head[ne..vs] != *b": "
                || head.get(ve..line_end) != Some(&b"\r\n"[..])
            {
                f.odd = true;
                continue;
            }
            if ns == end {
                // `end` is a kept line's: a run was begun.
                if let Some(run) = f.runs.get_mut(f.n - 1) {
                    run.1 = line_end as u32;
                }
            } else {
                if f.n < RAW_RUNS {
                    f.runs[f.n] = (ns as u32, line_end as u32);
                }
                f.n += 1;
            }
            end = line_end;
        }
        f
    }
}

/// A response head the client's connection writes on as it came: the upstream's field
/// lines, less the hop-by-hop ones (RFC 9110 §7.6.1) and `X-Request-Id` (the gateway
/// sets its own), copied as runs of the head's bytes rather than parsed into a map and
/// written again field by field.
///
/// Only a plain head is kept so: every kept line `name: value` CRLF, a status that has a
/// body and its own reason phrase (or none), no `Transfer-Encoding` beside a
/// `Content-Length` and at most one of those, no `TE`, a `Connection` naming no field,
/// the kept lines in at most [`RAW_RUNS`] runs. Any other goes into a map, as every head
/// did before. A field name keeps the upstream's spelling (HTTP/1.1 names are
/// case-insensitive); the map would have written it in lower case.
#[derive(Debug)]
pub struct RawHead {
    head: Bytes,
    runs: [(u32, u32); RAW_RUNS],
    n: u8,
    /// The kept `Content-Length`'s value.
    length: Option<u64>,
    date: bool,
}

impl RawHead {
    /// Whether a head with this status and these fields is plain (see [`RawHead`]).
    fn can_keep(status: StatusCode, f: &Facts) -> bool {
        let bodiless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framed_once = match f.length {
            Ok(l) => f.lengths <= 1 && !(f.coded && l.is_some()),
            Err(_) => false,
        };
        !bodiless && framed_once && !f.odd && !f.names_fields && f.n <= RAW_RUNS
    }

    /// The kept head: `head`'s bytes (taken, not shared again) and its kept runs.
    fn new(head: Bytes, f: &Facts) -> RawHead {
        RawHead {
            head,
            runs: f.runs,
            n: f.n as u8,
            length: f.length.ok().flatten(),
            date: f.date,
        }
    }

    /// The kept field lines, each run whole lines with their CRLF.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.runs[..usize::from(self.n)]
            .iter()
            .map(|&(s, e)| &self.head[s as usize..e as usize])
    }

    /// The value of its `Content-Length` line, if it has one.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// Whether it has a `Date` line.
    pub fn has_date(&self) -> bool {
        self.date
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("upstream sent a malformed response head ({what})"),
    )
}

/// Reads until a whole response head is in `buf`. The error says whether any of a
/// response had come.
async fn read_head(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    fields: &mut Vec<Field>,
) -> Result<Parsed, (io::Error, bool)> {
    let mut room = READ_ROOM;
    loop {
        if !buf.is_empty() {
            if let Some(parsed) = parse(buf, fields).map_err(|e| (e, true))? {
                return Ok(parsed);
            }
            if buf.len() >= MAX_HEAD {
                return Err((invalid("too large"), true));
            }
        }
        let n = std::future::poll_fn(|cx| poll_read(io, cx, buf, &mut room))
            .await
            .map_err(|e| (e, !buf.is_empty()))?;
        if n == 0 {
            let received = !buf.is_empty();
            let what = if received {
                "upstream closed the connection in the middle of the response head"
            } else {
                "upstream closed the connection without a response"
            };
            return Err((io::Error::new(io::ErrorKind::UnexpectedEof, what), received));
        }
    }
}

/// Parses a response head at the start of `buf`, its fields into `found`; `None` while
/// it is incomplete.
fn parse(buf: &[u8], found: &mut Vec<Field>) -> io::Result<Option<Parsed>> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&e.to_string())),
    };
    // Where `s`, a slice of `buf`, is in it. httparse gives a reason phrase it did not
    // take from `buf` (an empty static one for a missing or non-ASCII reason): that is
    // (0, 0), no reason.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| match (s.as_ptr() as usize).checked_sub(base) {
        Some(start) if start + s.len() <= buf.len() => (start, start + s.len()),
        _ => (0, 0),
    };
    let version = match res.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    found.clear();
    found.extend(
        res.headers
            .iter()
            .map(|h| (at(h.name.as_bytes()), at(h.value))),
    );
    Ok(Some(Parsed {
        len,
        status: res.code.unwrap_or(0),
        version,
        reason: res.reason.map_or((0, 0), |r| at(r.as_bytes())),
    }))
}

/// How a response body is framed.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// Until the connection closes.
    Close,
}

/// The body's framing and whether the connection may carry another request (RFC 9112
/// §6.3, §9.3), from what the head's fields said. Removes
/// from `headers` a `Content-Length` that a `Transfer-Encoding` overrides.
fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    facts: &Facts,
    headers: &mut HeaderMap,
) -> io::Result<(Framing, bool)> {
    let mut keep_alive = match version {
        Version::HTTP_10 => facts.keep,
        _ => !facts.close,
    };
    // After a 101 the connection speaks another protocol (never asked for here: the
    // proxy refuses the answer), so it is not reused.
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Framing::Length(0), false));
    }
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Length(0), keep_alive));
    }
    if facts.coded {
        if facts.lengths > 0 {
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        return Ok(match facts.chunked && version == Version::HTTP_11 {
            true => (Framing::Chunked(Chunked::default()), keep_alive),
            false => (Framing::Close, false),
        });
    }
    Ok(match facts.length.map_err(invalid)? {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::Close, false),
    })
}

fn parse_length(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    t.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The chunked decoder's place.
#[derive(Debug, Default, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line: the size so far and its digit count.
    #[default]
    Size,
    /// Whitespace after the size, before `;` or the CR.
    SizeSpace,
    /// In its extensions (after `;`), up to the CR.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// In a chunk's data: bytes left.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// After the last chunk: the trailer section.
    Trailers,
    Done,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Chunked {
    at: Chunk,
    size: u64,
    digits: u8,
    extensions: usize,
}

/// What decoding gave.
#[derive(Debug)]
enum Decoded {
    Data(Bytes),
    /// The body's end, with its trailers if it had any.
    End(Option<HeaderMap>),
    /// More bytes are needed.
    More,
}

impl Chunked {
    /// Decodes from the front of `buf`, taking what it decodes.
    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Decoded> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("upstream sent a malformed chunked body ({what})"),
            )
        };
        loop {
            if let Chunk::Data(left) = self.at {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = left.min(buf.len() as u64);
                let data = buf.split_to(n as usize).freeze();
                self.at = if n == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - n)
                };
                return Ok(Decoded::Data(data));
            }
            if self.at == Chunk::Trailers {
                return self.trailers(buf);
            }
            if self.at == Chunk::Done {
                return Ok(Decoded::End(None));
            }
            let Some(&b) = buf.first() else {
                return Ok(Decoded::More);
            };
            let _ = buf.split_to(1);
            self.at = match (&self.at, b) {
                (Chunk::Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 16 {
                        return Err(bad("chunk size too large"));
                    }
                    self.digits += 1;
                    let d = (b as char).to_digit(16).expect("a hex digit") as u64;
                    self.size = self.size * 16 + d;
                    Chunk::Size
                }
                (Chunk::Size, b' ' | b'\t') if self.digits > 0 => Chunk::SizeSpace,
                (Chunk::Size | Chunk::SizeSpace, b';') if self.digits > 0 => Chunk::Extension,
                (Chunk::SizeSpace, b' ' | b'\t') => Chunk::SizeSpace,
                (Chunk::SizeSpace, b'\r') => Chunk::SizeLf,
                (Chunk::Size, b'\r') if self.digits > 0 => Chunk::SizeLf,
                (Chunk::Extension, b'\r') => Chunk::SizeLf,
                (Chunk::Extension, b'\n') => return Err(bad("bare LF in a chunk extension")),
                (Chunk::Extension, _) => {
                    self.extensions += 1;
                    if self.extensions > MAX_CHUNK_EXTENSIONS {
                        return Err(bad("chunk extensions too large"));
                    }
                    Chunk::Extension
                }
                (Chunk::SizeLf, b'\n') => {
                    let size = std::mem::take(&mut self.size);
                    self.digits = 0;
                    match size {
                        0 => Chunk::Trailers,
                        n => Chunk::Data(n),
                    }
                }
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size,
                _ => return Err(bad("unexpected byte")),
            };
        }
    }

    /// The trailer section: an empty line, or fields up to one.
    fn trailers(&mut self, buf: &mut BytesMut) -> io::Result<Decoded> {
        if buf.starts_with(b"\r\n") {
            let _ = buf.split_to(2);
            self.at = Chunk::Done;
            return Ok(Decoded::End(None));
        }
        let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
            return match buf.len() > MAX_TRAILERS {
                true => Err(invalid("trailers too large")),
                false => Ok(Decoded::More),
            };
        };
        if end > MAX_TRAILERS {
            return Err(invalid("trailers too large"));
        }
        let section = buf.split_to(end + 4);
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let parsed = match httparse::parse_headers(&section, &mut fields) {
            Ok(httparse::Status::Complete((_, fields))) => fields,
            _ => return Err(invalid("trailers")),
        };
        let mut trailers = HeaderMap::with_capacity(parsed.len());
        for f in parsed {
            let name =
                HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| invalid("trailer name"))?;
            let value = HeaderValue::from_bytes(f.value).map_err(|_| invalid("trailer value"))?;
            trailers.append(name, value);
        }
        self.at = Chunk::Done;
        Ok(Decoded::End(Some(trailers)))
    }
}

/// A response body read from its connection by whoever polls it; at its exact end the
/// connection goes back to the pool if it may carry another request.
pub struct Body {
    conn: Option<Box<Conn>>,
    /// The response's head as it came, for the client's connection to write.
    raw: Option<RawHead>,
    framing: Framing,
    keep_alive: bool,
    /// Taken when the body has ended (`finish`); still there after a failure.
    back: Option<Return<Box<Conn>>>,
}

impl Body {
    /// The body of `head`, read from `conn`; `back` takes the connection at its end.
    pub fn new(
        conn: Box<Conn>,
        head: Head,
        back: Return<Box<Conn>>,
    ) -> (http::response::Parts, Self) {
        let body = Body {
            conn: Some(conn),
            raw: head.raw,
            framing: head.framing,
            keep_alive: head.keep_alive,
            back: Some(back),
        };
        (head.parts, body)
    }

    /// The response's head as it came, if it was kept so ([`RawHead`]).
    pub fn take_raw_head(&mut self) -> Option<RawHead> {
        self.raw.take()
    }

    pub fn has_raw_head(&self) -> bool {
        self.raw.is_some()
    }

    /// The body has been read to its end: the connection goes back if it can.
    fn finish(&mut self) {
        let (Some(conn), Some(back)) = (self.conn.take(), self.back.take()) else {
            return;
        };
        if self.keep_alive && conn.buf.is_empty() {
            back.put_back(conn);
        }
    }

    /// The body failed: its connection is closed, never reused.
    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // An empty body is often dropped unpolled.
        if self.framing == Framing::Length(0) {
            self.finish();
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let n = (*left).min(conn.buf.len() as u64);
                    *left -= n;
                    let data = conn.buf.split_to(n as usize).freeze();
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(c) => match c.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End(trailers)) => {
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::More) => {}
                    Err(e) => return this.fail(e),
                },
                Framing::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Length(_) | Framing::Close => {}
            }
            match ready!(poll_read(&mut conn.io, cx, &mut conn.buf, &mut conn.room)) {
                // The end of a body that ends at the close (`keep_alive` is false).
                Ok(0) if this.framing == Framing::Close => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before the end of the response body",
                    ))
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.back.is_none() || self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::call::AddedFields;

    fn request(method: &str, target: &str, fields: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(target);
        for (n, v) in fields {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_head_is_written_as_hyper_writes_it() {
        let mut out = Vec::new();
        let head = request(
            "POST",
            "http://10.0.0.1:8080/v1/chat?x=1",
            &[("Host", "models"), ("x-a", "1"), ("x-a", "2")],
        );
        let none = AddedFields::default();
        let nothing = Added {
            host: None,
            fields: &none,
            raw_head: false,
        };
        encode(&mut out, &head, nothing, Sending::Whole(12));
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /v1/chat?x=1 HTTP/1.1\r\nhost: models\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 12\r\n\r\n"
        );
        let head = request("GET", "http://10.0.0.1/", &[("content-length", "0")]);
        encode(&mut out, &head, nothing, Sending::Whole(0));
        assert_eq!(out, b"GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let head = request("POST", "http://10.0.0.1/up", &[]);
        encode(&mut out, &head, nothing, Sending::Chunked);
        assert_eq!(
            out,
            b"POST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let mut line = [0u8; 18];
        for (len, hex) in [
            (0, "0"),
            (1, "1"),
            (15, "f"),
            (16, "10"),
            (0x1234ab, "1234ab"),
        ] {
            let n = chunk_size_line(&mut line, len);
            assert_eq!(&line[..n], format!("{hex}\r\n").as_bytes());
        }
    }

    #[test]
    fn a_tries_fields_are_written_with_the_head_its_host_first_in_place_of_the_heads() {
        let head = request(
            "GET",
            "http://10.0.0.1:8080/a",
            &[("x-a", "1"), ("Host", "client.example"), ("x-b", "2")],
        );
        static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
        static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
        let mut fields = AddedFields::default();
        fields.push(&XFF, HeaderValue::from_static("10.1.2.3"));
        fields.push(&XFP, HeaderValue::from_static("http"));
        let written = |host| {
            let mut out = Vec::new();
            let fields = &fields;
            encode(
                &mut out,
                &head,
                Added {
                    host,
                    fields,
                    raw_head: false,
                },
                Sending::Whole(0),
            );
            String::from_utf8(out).unwrap()
        };
        let endpoint = HeaderValue::from_static("10.0.0.1:8080");
        assert_eq!(
            written(Some(&endpoint)),
            "GET /a HTTP/1.1\r\nhost: 10.0.0.1:8080\r\nx-a: 1\r\nx-b: 2\r\n\
             x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n\r\n"
        );
        // Without a Host of the try's, the head's stays where it is.
        assert_eq!(
            written(None),
            "GET /a HTTP/1.1\r\nx-a: 1\r\nhost: client.example\r\nx-b: 2\r\n\
             x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn what_goes_by_hyper_instead() {
        let fits = |method: &str, fields: &[(&str, &str)], len| {
            let head = request(method, "/", fields);
            super::fits(&head.method, &head.headers, len)
        };
        assert!(fits("GET", &[], Some(0)));
        assert!(fits("POST", &[("content-length", "3")], Some(3)));
        let not_the_bodys = fits("POST", &[("content-length", "4")], Some(3));
        assert!(!not_the_bodys);
        let two = [("content-length", "3"), ("content-length", "3")];
        assert!(!fits("POST", &two, Some(3)));
        assert!(!fits("POST", &two, None));
        assert!(!fits("POST", &[("transfer-encoding", "chunked")], Some(3)));
        assert!(!fits("GET", &[("upgrade", "websocket")], Some(0)));
        let late = [("host", "a"), ("x-a", "1"), ("upgrade", "websocket")];
        assert!(!fits("GET", &late, Some(0)), "found wherever it is");
        assert!(!fits("CONNECT", &[], Some(0)));
        // Streamed: framed by the head's one length, or chunked.
        assert!(fits("POST", &[], None));
        assert!(fits("POST", &[("content-length", "1000")], None));
        assert!(!fits("POST", &[("content-length", "x")], None));
        assert!(!fits("POST", &[("transfer-encoding", "chunked")], None));
    }

    fn framing_of(method: &str, raw: &str) -> (io::Result<(Framing, bool)>, HeaderMap) {
        let mut fields = Vec::new();
        let parsed = parse(raw.as_bytes(), &mut fields)
            .unwrap()
            .expect("a whole head");
        let mut buf = BytesMut::from(raw);
        let (mut parts, facts, _) = parsed
            .into_parts(
                &mut buf,
                &fields,
                &mut RecentNames::default(),
                HeaderMap::new(),
                false,
            )
            .unwrap();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let f = framing(
            &method,
            parts.status,
            parts.version,
            &facts,
            &mut parts.headers,
        );
        (f, parts.headers)
    }

    #[test]
    fn a_connection_keep_alive_field_is_read_not_kept_and_any_other_is_kept() {
        // Kept out of the map (the proxy would remove it), and still read.
        for raw in [
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n",
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nx-a: 1\r\ncontent-length: 1\r\n\r\n",
        ] {
            let (f, headers) = framing_of("GET", raw);
            assert_eq!(f.unwrap(), (Framing::Length(1), true), "{raw:?}");
            assert!(!headers.contains_key(header::CONNECTION), "{raw:?}");
            assert_eq!(headers[header::CONTENT_LENGTH], "1");
        }
        // Another value stays for the proxy, which removes the fields it names.
        let (f, headers) = framing_of(
            "GET",
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, x-a\r\nx-a: 1\r\n\
             Connection: keep-alive\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
        );
        assert_eq!(f.unwrap(), (Framing::Length(1), false), "close still read");
        let kept: Vec<_> = headers.get_all(header::CONNECTION).iter().collect();
        assert_eq!(kept, ["keep-alive, x-a", "close"]);
    }

    #[test]
    fn names_are_kept_by_place_and_compared_by_spelling() {
        let mut names = RecentNames::default();
        let take = |names: &mut RecentNames, raw: &[&str]| -> Vec<String> {
            let raw: Vec<&[u8]> = raw.iter().map(|r| r.as_bytes()).collect();
            (0..raw.len())
                .map(|i| names.get(i, raw[i]).unwrap().as_str().to_owned())
                .collect()
        };
        let first = ["Content-Type", "X-Model", "content-length"];
        assert_eq!(
            take(&mut names, &first),
            ["content-type", "x-model", "content-length"]
        );
        assert_eq!(
            take(&mut names, &first),
            take(&mut RecentNames::default(), &first)
        );
        // Another spelling, another name, or another order in a place: parsed again.
        assert_eq!(
            take(&mut names, &["content-type", "X-Other", "X-Model"]),
            ["content-type", "x-other", "x-model"]
        );
        assert_eq!(
            names.kept(1).unwrap().as_str(),
            "x-other",
            "the place now holds the new name"
        );
        assert!(names.get(0, b"bad name").is_err(), "checked as a new name");
        assert!(names.get(1, b"").is_err());
        // More fields than places: all parsed, the first `PLACES` kept.
        let many: Vec<String> = (0..RecentNames::PLACES + 5)
            .map(|i| format!("X-F{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let lower: Vec<String> = many.iter().map(|n| n.to_ascii_lowercase()).collect();
        assert_eq!(take(&mut names, &many), lower);
        assert_eq!(take(&mut names, &many), lower);
        assert_eq!(names.len(), RecentNames::PLACES);
    }

    /// The lines a head keeps as it came (`None`: it goes into a map), its length and
    /// whether it has a date.
    fn raw_of(raw: &str) -> Option<(Vec<String>, Option<u64>, bool)> {
        let mut fields = Vec::new();
        let parsed = parse(raw.as_bytes(), &mut fields).unwrap().unwrap();
        let mut buf = BytesMut::from(raw);
        let (parts, _, kept) = parsed
            .into_parts(
                &mut buf,
                &fields,
                &mut RecentNames::default(),
                HeaderMap::new(),
                true,
            )
            .unwrap();
        let kept = kept?;
        assert!(parts.headers.is_empty(), "{raw:?}");
        let lines = kept
            .lines()
            .map(|l| String::from_utf8(l.to_vec()).unwrap())
            .collect();
        Some((lines, kept.length(), kept.has_date()))
    }

    #[test]
    fn field_kinds_are_told_by_name_in_any_case_and_only_by_it() {
        let named = [
            ("te", Kind::Te),
            ("date", Kind::Date),
            ("upgrade", Kind::Dropped),
            ("connection", Kind::Connection),
            ("keep-alive", Kind::Dropped),
            ("x-request-id", Kind::Dropped),
            ("content-length", Kind::ContentLength),
            ("proxy-connection", Kind::Dropped),
            ("transfer-encoding", Kind::TransferEncoding),
            ("proxy-authenticate", Kind::Dropped),
            ("proxy-authorization", Kind::Dropped),
        ];
        for (name, kind) in named {
            let upper = name.to_ascii_uppercase();
            for n in [name, upper.as_str()] {
                assert!(Kind::of(n.as_bytes()) == kind, "{n}");
            }
            // One byte changed to another token byte, at each place: another name.
            for i in 0..name.len() {
                for other in [b'_', b'~', b'^', b'z', b'0', b'|', b'`'] {
                    let mut n = name.as_bytes().to_vec();
                    if n[i] | 0x20 == other | 0x20 {
                        continue;
                    }
                    n[i] = other;
                    assert!(Kind::of(&n) == Kind::Other, "{:?}", String::from_utf8(n));
                }
            }
        }
        for other in ["", "t", "content-type", "server", "etag", "x-request-ids"] {
            assert!(Kind::of(other.as_bytes()) == Kind::Other, "{other}");
        }
    }

    #[test]
    fn is_lower_is_the_word_in_any_case_and_no_other_byte_string_a_head_can_hold() {
        // Every byte httparse lets into a field value (names are a subset): HTAB, SP,
        // the visible ones and obs-text.
        let allowed: Vec<u8> = (0..=255u8)
            .filter(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
            .collect();
        let words = [
            "te",
            "date",
            "close",
            "chunked",
            "upgrade",
            "keep-alive",
            "connection",
            "x-request-id",
            "content-length",
            "proxy-connection",
            "transfer-encoding",
            "proxy-authorization",
        ];
        for word in words {
            let w = word.as_bytes();
            assert!(is_lower(w, w), "{word}");
            assert!(is_lower(word.to_ascii_uppercase().as_bytes(), w), "{word}");
            // Mixed case: every other byte upper.
            let mixed: Vec<u8> = w
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if i % 2 == 0 {
                        b.to_ascii_uppercase()
                    } else {
                        *b
                    }
                })
                .collect();
            assert!(is_lower(&mixed, w), "{word}");
            for i in 0..w.len() {
                for &b in &allowed {
                    let mut other = w.to_vec();
                    other[i] = b;
                    let same = b.eq_ignore_ascii_case(&w[i]);
                    assert_eq!(is_lower(&other, w), same, "{word} with {b:#x} at {i}");
                }
            }
            // Longer and shorter ones never are.
            assert!(
                !is_lower(&w[1..], w) && !is_lower(&[w, b"x"].concat(), w),
                "{word}"
            );
        }
    }

    #[test]
    fn a_plain_head_is_kept_as_runs_of_its_lines_less_the_hop_by_hop_ones() {
        let nginx = "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: d\r\nContent-Length: 5\r\n\
                     Connection: keep-alive\r\nETag: \"a\"\r\nAccept-Ranges: bytes\r\n\r\n";
        assert_eq!(
            raw_of(nginx),
            Some((
                vec![
                    "Server: nginx\r\nDate: d\r\nContent-Length: 5\r\n".into(),
                    "ETag: \"a\"\r\nAccept-Ranges: bytes\r\n".into()
                ],
                Some(5),
                true
            ))
        );
        // Chunked: the coding is hop-by-hop; an empty value is a plain line.
        assert_eq!(
            raw_of(
                "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\
                 x-empty: \r\nX-Request-Id: up\r\nkeep-alive: timeout=5\r\n\r\n"
            ),
            Some((vec!["x-a: 1\r\nx-empty: \r\n".into()], None, false))
        );
        assert_eq!(
            raw_of("HTTP/1.0 200 \r\n\r\n"),
            Some((vec![], None, false)),
            "no reason, no fields"
        );
        // Each of these goes into a map.
        for raw in [
            "HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nx-a: 1\r\n\r\n",
            "HTTP/1.1 200 Fine\r\ncontent-length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nte: trailers\r\ncontent-length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: close, x-a\r\nx-a: 1\r\n\r\n",
            "HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 1\n\n",
            "HTTP/1.1 200 OK\r\nx-a:1\r\ncontent-length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: 1\r\nupgrade: a\r\nx-b: 1\r\nupgrade: b\r\nx-c: 1\r\n\
             upgrade: c\r\nx-d: 1\r\nupgrade: d\r\nx-e: 1\r\n\r\n",
        ] {
            assert_eq!(raw_of(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let ok = |m, raw| framing_of(m, raw).0.unwrap();
        assert_eq!(
            ok("GET", "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Length(5), true)
        );
        assert_eq!(
            ok("HEAD", "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Length(0), true)
        );
        assert_eq!(
            ok(
                "GET",
                "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"
            ),
            (Framing::Length(0), true)
        );
        assert_eq!(
            ok("GET", "HTTP/1.1 304 Not Modified\r\n\r\n"),
            (Framing::Length(0), true)
        );
        assert_eq!(
            ok(
                "GET",
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"
            ),
            (Framing::Length(0), false)
        );
        assert_eq!(
            ok("GET", "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"),
            (Framing::Length(5), true)
        );
        assert_eq!(
            ok("GET", "HTTP/1.1 200 OK\r\n\r\n"),
            (Framing::Close, false)
        );
        assert_eq!(
            ok(
                "GET",
                "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 1\r\n\r\n"
            ),
            (Framing::Length(1), false)
        );
        assert_eq!(
            ok("GET", "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"),
            (Framing::Length(1), false)
        );
        assert_eq!(
            ok(
                "GET",
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n"
            ),
            (Framing::Length(1), true)
        );
        assert_eq!(
            ok(
                "GET",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
            ),
            (Framing::Chunked(Chunked::default()), true)
        );
        assert_eq!(
            ok(
                "GET",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"
            ),
            (Framing::Close, false)
        );
        // Both: the transfer coding wins, the length goes, the connection is not reused.
        let (f, headers) = framing_of(
            "GET",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        assert_eq!(f.unwrap(), (Framing::Chunked(Chunked::default()), false));
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
        // Several fields of one name are one list, in order.
        for (codings, framed) in [
            ("gzip\r\ntransfer-encoding: chunked", true),
            ("chunked\r\ntransfer-encoding: gzip", false),
            ("chunked\r\ntransfer-encoding: , ", true),
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {codings}\r\n\r\n");
            let expected = match framed {
                true => (Framing::Chunked(Chunked::default()), true),
                false => (Framing::Close, false),
            };
            assert_eq!(framing_of("GET", &raw).0.unwrap(), expected, "{codings:?}");
        }
        assert_eq!(
            ok(
                "GET",
                "HTTP/1.1 200 OK\r\nconnection: x\r\ncontent-length: 1\r\nconnection: y, close\r\n\r\n"
            ),
            (Framing::Length(1), false)
        );
        // A length a transfer coding overrides is not read: it goes, unread.
        let (f, headers) = framing_of(
            "GET",
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        assert_eq!(f.unwrap(), (Framing::Chunked(Chunked::default()), false));
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
        for bad in ["5, 6", "+5", "-1", "5 5", "", "0x5", "99999999999999999999"] {
            let raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert!(framing_of("GET", &raw).0.is_err(), "content-length: {bad}");
        }
        let (f, _) = framing_of(
            "GET",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        );
        assert!(f.is_err());
        // A number alone and a list, either way round: all must agree.
        for (a, b, agree) in [
            ("5", "5, 5", true),
            ("5, 5", "5", true),
            ("5", "5, 6", false),
        ] {
            let raw =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {a}\r\ncontent-length: {b}\r\n\r\n");
            let (f, _) = framing_of("GET", &raw);
            assert_eq!(f.is_ok(), agree, "{a:?} then {b:?}");
            if agree {
                assert_eq!(f.unwrap().0, Framing::Length(5));
            }
        }
    }

    #[test]
    fn a_head_keeps_a_reason_phrase_only_when_it_is_not_the_usual_one() {
        for (raw, kept) in [
            ("HTTP/1.1 200 OK\r\n\r\n", None),
            ("HTTP/1.1 200 Fine Thanks\r\n\r\n", Some("Fine Thanks")),
        ] {
            let mut fields = Vec::new();
            let parsed = parse(raw.as_bytes(), &mut fields).unwrap().unwrap();
            let (parts, _, _) = parsed
                .into_parts(
                    &mut BytesMut::from(raw),
                    &fields,
                    &mut RecentNames::default(),
                    HeaderMap::new(),
                    false,
                )
                .unwrap();
            let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
            assert_eq!(reason.map(|r| r.as_bytes()), kept.map(str::as_bytes));
        }
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-le", &mut Vec::new())
            .unwrap()
            .is_none());
        assert!(parse(b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n", &mut Vec::new()).is_err());
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nfolded: a\r\n b\r\n\r\n",
            &mut Vec::new()
        )
        .is_err());
    }

    #[test]
    fn a_status_line_without_a_usable_reason_has_none() {
        for raw in [&b"HTTP/1.1 204\r\n\r\n"[..], b"HTTP/1.1 200 Ok\xe9\r\n\r\n"] {
            let mut fields = Vec::new();
            let parsed = parse(raw, &mut fields).unwrap().unwrap();
            let (parts, _, _) = parsed
                .into_parts(
                    &mut BytesMut::from(raw),
                    &fields,
                    &mut RecentNames::default(),
                    HeaderMap::new(),
                    false,
                )
                .unwrap();
            assert!(parts.extensions.get::<hyper::ext::ReasonPhrase>().is_none());
        }
    }

    /// Decodes `raw` fed `step` bytes at a time: the data, the trailers, or the error.
    fn decode_by(raw: &[u8], step: usize) -> io::Result<(Vec<u8>, Option<HeaderMap>)> {
        let mut c = Chunked::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match c.decode(&mut buf)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::End(t) => {
                    assert!(buf.is_empty(), "nothing after the end was taken");
                    return Ok((data, t));
                }
                Decoded::More => {
                    if fed == raw.len() {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let n = step.min(raw.len() - fed);
                    buf.extend_from_slice(&raw[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_the_same_however_they_arrive() {
        let raw = b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\nA\r\n0123456789\r\n0\r\nx-trailer: t\r\n\r\n";
        for step in [1, 2, 3, 7, raw.len()] {
            let (data, trailers) = decode_by(raw, step).unwrap();
            assert_eq!(data, b"hello world0123456789", "step {step}");
            assert_eq!(trailers.unwrap()["x-trailer"], "t");
        }
        let (data, _) = decode_by(b"3 \t ;x\r\nabc\r\n2  \r\nde\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(data, b"abcde");
        let mut big = b"0\r\n".to_vec();
        for name in ["x-a", "x-b"] {
            big.extend_from_slice(format!("{name}: {}\r\n", "v".repeat(10_000)).as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        let e = decode_by(&big, big.len()).expect_err("trailers past the limit");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let (data, trailers) = decode_by(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((&data[..], trailers), (&b"abc"[..], None));
    }

    #[test]
    fn malformed_chunked_bodies_fail() {
        for raw in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"g\r\n",
            b"10000000000000000\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"5 6\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
        ] {
            let e = decode_by(raw, 1).expect_err(&String::from_utf8_lossy(raw));
            assert_eq!(
                e.kind(),
                io::ErrorKind::InvalidData,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
