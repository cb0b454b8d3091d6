//! Portcullis patch: each thread's spare buffers for HTTP/1 server connections.
//!
//! An idle keep-alive server connection gives back its read buffer, its head buffer and
//! the header map kept for the next request (`Conn::poll_read_head`), so that it holds a
//! few KB instead of ~20 KB while it waits. What it gives back waits here, up to [`MAX`]
//! of each per thread, for the next connection that reads or writes a message: a busy
//! connection that goes idle between two requests takes its buffers back from here
//! instead of from the allocator.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderMap;

use super::io::INIT_BUFFER_SIZE;

/// Spares kept per thread, of each kind: about 1.1 MB at most.
const MAX: usize = 64;

thread_local! {
    static READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static HEAD: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static HEADERS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

fn put<T>(pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>, spare: T) {
    // A thread being torn down drops it instead.
    let _ = pool.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX {
            p.push(spare);
        }
    });
}

fn take<T>(pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>) -> Option<T> {
    pool.try_with(|p| p.borrow_mut().pop()).ok().flatten()
}

/// An empty read buffer; kept only when it is whole again (no part of it still lent out
/// to a message's bytes).
pub(super) fn put_read(mut buf: BytesMut) {
    buf.clear();
    if buf.try_reclaim(INIT_BUFFER_SIZE) {
        put(&READ, buf);
    }
}

pub(super) fn take_read() -> Option<BytesMut> {
    take(&READ)
}

/// An emptied head buffer.
pub(super) fn put_head(mut buf: Vec<u8>) {
    if buf.capacity() >= INIT_BUFFER_SIZE {
        buf.clear();
        put(&HEAD, buf);
    }
}

/// A head buffer: a spare, or a new one of the usual size.
pub(super) fn take_head() -> Vec<u8> {
    take(&HEAD).unwrap_or_else(|| Vec::with_capacity(INIT_BUFFER_SIZE))
}

/// A header map kept for the next message (hyper's encoder leaves it empty).
pub(super) fn put_headers(mut headers: HeaderMap) {
    headers.clear();
    put(&HEADERS, headers);
}

pub(super) fn take_headers() -> Option<HeaderMap> {
    take(&HEADERS)
}
