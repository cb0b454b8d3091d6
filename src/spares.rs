//! Header maps kept per thread for the next request: a map made and dropped per request
//! costs ~700 instructions (callgrind). The own server reads each request into one and
//! gives each response's back once written; the own client reads a response into one
//! when the request's map must stay for a later try, and the try loop gives the request's
//! back when the call ends. (hyper's server kept a connection's last response map for its
//! next request.)

use http::HeaderMap;
use std::cell::RefCell;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Spare maps kept per thread.
const KEPT: usize = 64;
/// A map with room for more fields is not kept.
const MAX_FIELDS: usize = 64;

/// An empty map with room for 16 fields or more.
pub fn map() -> HeaderMap {
    MAPS.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| HeaderMap::with_capacity(16))
}

/// Keeps `map`, emptied, for a later [`map`] on this thread.
pub fn give_map(mut map: HeaderMap) {
    if map.capacity() <= MAX_FIELDS {
        map.clear();
        MAPS.with_borrow_mut(|s| {
            if s.len() < KEPT {
                s.push(map)
            }
        });
    }
}
