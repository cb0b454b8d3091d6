//! Header maps and head buffers kept per thread for the next request: a map made and
//! dropped per request costs ~700 instructions (callgrind). The own server reads each
//! request into a spare map and gives each response's back once written, and writes each
//! response head into a spare buffer; the own client reads a response into a spare map
//! when the request's map must stay for a later try, and the try loop gives the request's
//! back when the call ends. (hyper's server kept a connection's last response map for its
//! next request.)

use http::HeaderMap;
use std::cell::RefCell;
use std::thread::LocalKey;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static HEADS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Spares kept per thread, of each kind.
const KEPT: usize = 64;
/// A map with room for more fields is not kept.
const MAX_FIELDS: usize = 64;
/// A larger head buffer is not kept.
const MAX_HEAD_BYTES: usize = 4096;

/// An empty map with room for 16 fields or more.
pub fn map() -> HeaderMap {
    MAPS.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| HeaderMap::with_capacity(16))
}

/// Keeps `map`, emptied, for a later [`map`] on this thread.
pub fn give_map(mut map: HeaderMap) {
    // An unallocated map (`HeaderMap::new`) would be no spare.
    if map.capacity() != 0 && map.capacity() <= MAX_FIELDS {
        map.clear();
        keep(&MAPS, map);
    }
}

/// An empty buffer for a response head.
pub fn head() -> Vec<u8> {
    HEADS.with_borrow_mut(Vec::pop).unwrap_or_default()
}

/// Keeps `head`, emptied, for a later [`head`] on this thread.
pub fn give_head(mut head: Vec<u8>) {
    if head.capacity() <= MAX_HEAD_BYTES {
        head.clear();
        keep(&HEADS, head);
    }
}

fn keep<T>(spares: &'static LocalKey<RefCell<Vec<T>>>, spare: T) {
    spares.with_borrow_mut(|s| {
        if s.len() < KEPT {
            s.push(spare)
        }
    });
}
