//! Header rules of forwarding: the client's hop-by-hop headers (and names with `_`) are
//! removed before anything else reads the request, hop-by-hop headers are stripped from
//! responses, the `X-Forwarded-*` headers are set, and every request carries an
//! `X-Request-Id`.

use super::error::ProxyError;
use super::trace_context::hex_into;
use super::tunnel::Lease;
use crate::upstream::call::AddedFields;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The names the gateway adds as a head is sent, as statics (`AddedFields` keeps a
/// reference).
pub static X_REQUEST_ID_NAME: HeaderName = X_REQUEST_ID;
static X_FORWARDED_FOR_NAME: HeaderName = X_FORWARDED_FOR;
static X_FORWARDED_PROTO_NAME: HeaderName = X_FORWARDED_PROTO;
static X_FORWARDED_HOST_NAME: HeaderName = X_FORWARDED_HOST;
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The client end of a connection, computed once per connection.
pub struct ClientInfo {
    pub addr: SocketAddr,
    /// The client IP as a header value, for `X-Forwarded-For`.
    pub ip_header: HeaderValue,
    /// The connection came through a TLS listener.
    pub tls: bool,
    /// Lends an upgraded connection (WebSocket) its hold on the client connection and
    /// the drain signal; set by the server.
    pub lease: Option<Box<dyn Fn() -> Lease + Send + Sync>>,
}

impl ClientInfo {
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_tls(addr, false)
    }

    pub fn with_tls(addr: SocketAddr, tls: bool) -> Self {
        ClientInfo {
            addr,
            ip_header: HeaderValue::from_str(&addr.ip().to_string())
                .expect("an IP is a valid header value"),
            tls,
            lease: None,
        }
    }

    /// With what the server lends an upgraded connection.
    pub fn with_lease(self, lend: impl Fn() -> Lease + Send + Sync + 'static) -> Self {
        ClientInfo {
            lease: Some(Box::new(lend)),
            ..self
        }
    }

    /// The scheme the client used: `https` on a TLS listener, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// Which of the names the gateway reads or replaces in a client's request head it has,
/// as the cleaning left it. A name the head lacks (the usual case) is then not looked up:
/// each lookup of a name that is not a standard one hashes it byte by byte, ~140
/// instructions, and there are five of them per request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Present(u8);

impl Present {
    const REQUEST_ID: u8 = 1;
    const TRACEPARENT: u8 = 2;
    const TRACESTATE: u8 = 4;
    const CONSUMER: u8 = 8;
    const FORWARDED_FOR: u8 = 16;
    const FORWARDED_PROTO: u8 = 32;
    const FORWARDED_HOST: u8 = 64;

    /// The names `h` has (one scan of its names, nothing hashed).
    pub fn of(h: &HeaderMap) -> Self {
        let mut p = Present::default();
        for n in h.keys() {
            p.note(n);
        }
        p
    }

    fn note(&mut self, n: &HeaderName) {
        self.0 |= match n.as_str() {
            "x-request-id" => Self::REQUEST_ID,
            "traceparent" => Self::TRACEPARENT,
            "tracestate" => Self::TRACESTATE,
            "x-portcullis-consumer" => Self::CONSUMER,
            "x-forwarded-for" => Self::FORWARDED_FOR,
            "x-forwarded-proto" => Self::FORWARDED_PROTO,
            "x-forwarded-host" => Self::FORWARDED_HOST,
            _ => 0,
        };
    }

    pub fn request_id(self) -> bool {
        self.0 & Self::REQUEST_ID != 0
    }

    pub fn traceparent(self) -> bool {
        self.0 & Self::TRACEPARENT != 0
    }

    pub fn tracestate(self) -> bool {
        self.0 & Self::TRACESTATE != 0
    }

    /// `X-Portcullis-Consumer`, which only the gateway may set.
    pub fn consumer(self) -> bool {
        self.0 & Self::CONSUMER != 0
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// The first thing done to a client's request head, before the gateway reads or adds
/// anything: its hop-by-hop headers and the headers its `Connection` names are removed
/// (so `Connection: x-request-id` cannot remove what the gateway adds later), and names
/// with `_` are dropped unless `allow_underscores`. A `Transfer-Encoding` other than
/// `chunked` alone is refused (RFC 9112 §6.1: 501), since only `chunked` is decoded.
/// A request whose body is known to be empty (`bodiless`) has none to check: hyper reads
/// a request with a `Transfer-Encoding` as chunked, so its body is not known empty.
///
/// Also says which of the names the gateway reads the cleaned head has ([`Present`]),
/// noted in the scan that looks for `_`.
pub fn clean_request(
    h: &mut HeaderMap,
    allow_underscores: bool,
    bodiless: bool,
) -> (Present, Result<(), ProxyError>) {
    let coding_ok = bodiless || chunked_alone(h);
    strip_hop_by_hop(h);
    let mut present = Present::default();
    let mut underscore = false;
    for n in h.keys() {
        present.note(n);
        underscore |= !allow_underscores && has_underscore(n.as_str().as_bytes());
    }
    if underscore {
        // None of `Present`'s names has a `_`, so what it noted stays true.
        let named: Vec<HeaderName> = h
            .keys()
            .filter(|n| n.as_str().contains('_'))
            .cloned()
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    let checked = match coding_ok {
        true => Ok(()),
        false => Err(ProxyError::UnsupportedTransferEncoding),
    };
    (present, checked)
}

/// Whether `b` has a `_`, looked for eight bytes at a time (a short name's
/// `str::contains('_')` goes through `memchr`: ~60 instructions, callgrind).
fn has_underscore(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // A byte of `w` is `_` if and only if that byte of `w ^ UNDERSCORES` is zero, and a
    // word has a zero byte if and only if `(v - ONES) & !v` has a high bit set.
    let has = |w: u64| {
        let v = w ^ (ONES * u64::from(b'_'));
        v.wrapping_sub(ONES) & !v & (ONES << 7) != 0
    };
    let n = b.len();
    let w4 = |at: usize| u64::from(u32::from_le_bytes(b[at..at + 4].try_into().expect("4")));
    let w8 = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    match n {
        0 => false,
        // First, middle and last: every byte of one to three (the other five are zero).
        1..4 => has(u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16),
        // The two halves overlap when `n` is under eight.
        4..8 => has(w4(0) | w4(n - 4) << 32),
        _ => {
            let mut at = 0;
            while at + 8 < n {
                if has(w8(at)) {
                    return true;
                }
                at += 8;
            }
            has(w8(n - 8))
        }
    }
}

/// Whether the request's `Transfer-Encoding`, if any, is `chunked` and nothing else.
fn chunked_alone(h: &HeaderMap) -> bool {
    let mut codings = h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|c| c.trim_ascii());
    match codings.next() {
        None => true,
        Some(first) => first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none(),
    }
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1: `Connection` and every header its
/// fields name (all of them: several `Connection` fields are one list), `Keep-Alive`,
/// `Proxy-*`, `TE` (kept as `te: trailers` when the client asked for trailers, which gRPC
/// needs), `Transfer-Encoding`, `Upgrade`.
///
/// Runs on every request and response: one scan of the head's names says which of them
/// it has, and only those are removed (a proxied response's `Connection: keep-alive` is
/// one removal, not nine lookups); nothing is allocated.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Bit i: `ALWAYS[i]` is in the head.
    let (mut always, mut connection, mut te) = (0u8, false, false);
    for n in h.keys() {
        if n == header::CONNECTION {
            connection = true;
        } else if n == header::TE {
            te = true;
        } else if let Some(i) = ALWAYS.iter().position(|a| a == n) {
            always |= 1 << i;
        }
    }
    if connection {
        let header::Entry::Occupied(e) = h.entry(header::CONNECTION) else {
            unreachable!("the scan saw it")
        };
        let mut fields = e.remove_entry_mult().1;
        let first = fields.next();
        // Empty unless the head has several `Connection` fields (no allocation then).
        let rest: Vec<HeaderValue> = fields.collect();
        for value in first.iter().chain(&rest) {
            for name in value.as_bytes().split(|&b| b == b',') {
                let name = name.trim_ascii();
                // `ALWAYS` goes below whatever `Connection` says; a name the head does
                // not have (`close`, mostly) is not looked up.
                let named = |n: &HeaderName| n.as_str().as_bytes().eq_ignore_ascii_case(name);
                if name.is_empty() || ALWAYS.iter().any(named) || !h.keys().any(named) {
                    continue;
                }
                if let Ok(name) = std::str::from_utf8(name) {
                    h.remove(name);
                }
            }
        }
    }
    if te {
        let wants_trailers = h.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        h.remove(header::TE);
        if wants_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    for (i, name) in ALWAYS.iter().enumerate() {
        if always & (1 << i) != 0 {
            h.remove(name);
        }
    }
}

/// The hop-by-hop headers removed whatever `Connection` says (`TE` may stay as
/// `te: trailers`).
const ALWAYS: [HeaderName; 6] = [
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Sets `X-Forwarded-For`/`-Proto`/`-Host`. With `trust` the client is a trusted proxy:
/// its `X-Forwarded-For` chain is extended and its `-Proto`/`-Host` kept; otherwise all
/// three are replaced, so a client cannot forge them.
///
/// The fields the gateway sets go in `added`, not into the head's map: the upstream
/// client writes them as it sends the head (`AddedFields`). The head's own are removed
/// when replaced; `present` (the names the head has) says whether it has any, so the
/// usual head is not looked up.
pub fn set_forwarded(
    h: &mut HeaderMap,
    added: &mut AddedFields,
    present: Present,
    client: &ClientInfo,
    host: Option<&HeaderValue>,
    trust: bool,
) {
    let prev = match present.has(Present::FORWARDED_FOR) {
        true => h.remove(X_FORWARDED_FOR),
        false => None,
    };
    let chain = match prev {
        Some(v) if trust => v
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .and_then(|p| HeaderValue::from_str(&format!("{p}, {}", client.addr.ip())).ok()),
        _ => None,
    };
    added.push(
        &X_FORWARDED_FOR_NAME,
        chain.unwrap_or_else(|| client.ip_header.clone()),
    );
    let (proto, fwd_host) = (
        present.has(Present::FORWARDED_PROTO),
        present.has(Present::FORWARDED_HOST),
    );
    if !(trust && proto) {
        if proto {
            h.remove(X_FORWARDED_PROTO);
        }
        added.push(
            &X_FORWARDED_PROTO_NAME,
            HeaderValue::from_static(client.scheme()),
        );
    }
    if !(trust && fwd_host) {
        if fwd_host {
            h.remove(X_FORWARDED_HOST);
        }
        if let Some(v) = host {
            added.push(&X_FORWARDED_HOST_NAME, v.clone());
        }
    }
}

/// The client's `X-Request-Id`, if it is sane (1–128 visible ASCII characters).
pub fn client_request_id(h: &HeaderMap, present: Present) -> Option<HeaderValue> {
    let v = present
        .request_id()
        .then(|| h.get(&X_REQUEST_ID))
        .flatten()?;
    let b = v.as_bytes();
    (!b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())).then(|| v.clone())
}

/// A generated request id's bytes (32 lowercase hex digits).
pub type RequestId = [u8; 32];

/// A new request id: a process-random prefix and a counter, 32 hex digits.
pub fn new_request_id() -> RequestId {
    // The prefix's hex digits are written once per process.
    static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut hex = [0u8; 16];
        hex_into(&crate::hash::fast_rand_seed().to_be_bytes(), &mut hex);
        hex
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    buf[..16].copy_from_slice(prefix);
    hex_into(&n.to_be_bytes(), &mut buf[16..]);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_underscore_finds_one_anywhere_and_nothing_else() {
        // Every length up to three words, a `_` at each place or none, among bytes next to
        // it and bytes whose difference from it borrows.
        for fill in [b'a', b'^', b'`', b'-', 0x5e, 0x60, 0xdf, 0x7f, 0x00, 0xff] {
            for n in 0..=24 {
                let mut b = vec![fill; n];
                assert_eq!(has_underscore(&b), fill == b'_', "{fill:#x} x {n}");
                for at in 0..n {
                    b[at] = b'_';
                    assert!(has_underscore(&b), "{fill:#x} x {n}, `_` at {at}");
                    b[at] = fill;
                }
            }
        }
        for name in [
            "x_a",
            "x-a",
            "user_agent",
            "user-agent",
            "x-request-id",
            "a_",
        ] {
            assert_eq!(
                has_underscore(name.as_bytes()),
                name.contains('_'),
                "{name}"
            );
        }
    }

    /// The request's id as `RequestCtx::new` makes it: the client's when sane, else new.
    fn request_id(h: &HeaderMap, present: Present) -> HeaderValue {
        client_request_id(h, present)
            .unwrap_or_else(|| HeaderValue::from_bytes(&new_request_id()).unwrap())
    }

    #[test]
    fn strips_connection_named_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(
            h.get("x-secret").is_none()
                && h.get("keep-alive").is_none()
                && h.get("upgrade").is_none()
        );
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn every_connection_field_counts_and_a_clean_head_is_untouched() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" X-One ,,x-two, bad name"),
        );
        for n in ["x-one", "x-two", "x-three"] {
            h.insert(n, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-one").is_none() && h.get("x-two").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get("x-three").unwrap(), "1");
        let mut clean = HeaderMap::new();
        clean.insert(header::HOST, HeaderValue::from_static("a"));
        clean.append("x-many", HeaderValue::from_static("1"));
        clean.append("x-many", HeaderValue::from_static("2"));
        let before = clean.clone();
        strip_hop_by_hop(&mut clean);
        assert_eq!(clean, before);
    }

    #[test]
    fn connection_can_name_te_and_close_and_the_always_names() {
        // `Connection: te` takes TE away whole (no `te: trailers` kept); a header named
        // by a common option (`close`) goes too; `Keep-Alive` named or not goes.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, TE, Keep-Alive"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("close", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get(header::CONTENT_TYPE).unwrap(), "text/plain");
    }

    #[test]
    fn a_clients_connection_header_cannot_name_what_the_gateway_adds_later() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-request-id, traceparent, x-portcullis-consumer"),
        );
        h.insert("x_portcullis_consumer", HeaderValue::from_static("admin"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        clean_request(&mut h, false, false).1.unwrap();
        assert!(h.get(header::CONNECTION).is_none());
        assert!(
            h.get("x_portcullis_consumer").is_none(),
            "underscores dropped"
        );
        assert_eq!(h.get("x-kept").unwrap(), "1");
        // Added after cleaning, the gateway's own headers stay.
        h.insert(X_REQUEST_ID, HeaderValue::from_static("id"));
        let mut with = HeaderMap::new();
        with.insert("x_legacy", HeaderValue::from_static("1"));
        clean_request(&mut with, true, false).1.unwrap();
        assert_eq!(with.get("x_legacy").unwrap(), "1", "allowed by the option");
    }

    #[test]
    fn only_chunked_alone_is_an_accepted_transfer_coding() {
        for (te, ok) in [
            (None, true),
            (Some("chunked"), true),
            (Some("Chunked"), true),
            (Some("gzip, chunked"), false),
            (Some("chunked, chunked"), false),
            (Some("identity"), false),
            (Some("gzip"), false),
        ] {
            let mut h = HeaderMap::new();
            if let Some(te) = te {
                h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static(te));
            }
            let r = clean_request(&mut h, false, false).1;
            assert_eq!(r.is_ok(), ok, "{te:?}");
            assert!(h.get(header::TRANSFER_ENCODING).is_none());
        }
    }

    /// The head as it goes upstream: `set_forwarded`'s added fields put in.
    fn forwarded(h: &mut HeaderMap, client: &ClientInfo, host: Option<&'static str>, trust: bool) {
        let mut added = AddedFields::default();
        let host = host.map(HeaderValue::from_static);
        set_forwarded(h, &mut added, Present::of(h), client, host.as_ref(), trust);
        let fields = &added;
        crate::upstream::call::Added {
            host: None,
            fields,
            raw_head: false,
        }
        .insert_into(h);
    }

    #[test]
    fn forwarded_for_trust() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        let client = ClientInfo::new("10.0.0.1:5".parse().unwrap());
        forwarded(&mut h, &client, None, false);
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1");
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        forwarded(&mut h, &client, None, true);
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "1.2.3.4, 10.0.0.1");
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static(" "));
        forwarded(&mut h, &client, None, true);
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1");
    }

    #[test]
    fn forwarded_fields_replace_the_heads_own_unless_trusted() {
        let client = ClientInfo::new("10.0.0.1:5".parse().unwrap());
        let forged = || {
            let mut h = HeaderMap::new();
            for n in [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST] {
                h.append(n.clone(), HeaderValue::from_static("forged"));
                h.append(n, HeaderValue::from_static("twice"));
            }
            h
        };
        let mut h = forged();
        forwarded(&mut h, &client, Some("api.example"), false);
        let all = |h: &HeaderMap, n| h.get_all(n).iter().cloned().collect::<Vec<_>>();
        assert_eq!(all(&h, X_FORWARDED_FOR), ["10.0.0.1"]);
        assert_eq!(all(&h, X_FORWARDED_PROTO), ["http"]);
        assert_eq!(all(&h, X_FORWARDED_HOST), ["api.example"]);
        // Without a host, none is sent.
        let mut h = forged();
        forwarded(&mut h, &client, None, false);
        assert!(h.get(X_FORWARDED_HOST).is_none());
        // A trusted proxy's `-Proto` and `-Host` stay as they are.
        let mut h = forged();
        forwarded(&mut h, &client, Some("api.example"), true);
        assert_eq!(all(&h, X_FORWARDED_FOR), ["forged, 10.0.0.1"]);
        assert_eq!(all(&h, X_FORWARDED_PROTO), ["forged", "twice"]);
        assert_eq!(all(&h, X_FORWARDED_HOST), ["forged", "twice"]);
        // What a head lacks, the gateway adds even for a trusted proxy.
        let mut h = HeaderMap::new();
        forwarded(&mut h, &client, Some("api.example"), true);
        assert_eq!(all(&h, X_FORWARDED_FOR), ["10.0.0.1"]);
        assert_eq!(all(&h, X_FORWARDED_PROTO), ["http"]);
        assert_eq!(all(&h, X_FORWARDED_HOST), ["api.example"]);
    }

    #[test]
    fn forwarded_proto_follows_the_listener() {
        let addr = "10.0.0.1:5".parse().unwrap();
        for (client, proto) in [
            (ClientInfo::new(addr), "http"),
            (ClientInfo::with_tls(addr, true), "https"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("forged"));
            forwarded(&mut h, &client, None, false);
            assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), proto);
            assert_eq!(client.scheme(), proto, "what plugins see as the scheme");
        }
    }

    #[test]
    fn present_says_which_of_its_names_the_cleaned_head_has() {
        let names = [
            X_REQUEST_ID,
            super::super::trace_context::TRACEPARENT,
            super::super::trace_context::TRACESTATE,
            super::super::context::X_CONSUMER,
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
        ];
        let has = |p: Present| {
            [
                p.request_id(),
                p.traceparent(),
                p.tracestate(),
                p.consumer(),
                p.has(Present::FORWARDED_FOR),
                p.has(Present::FORWARDED_PROTO),
                p.has(Present::FORWARDED_HOST),
            ]
        };
        // Every subset of the names, each also named by `Connection` or not.
        for set in 0..128u8 {
            for dropped in [false, true] {
                let mut h = HeaderMap::new();
                h.insert(header::HOST, HeaderValue::from_static("a"));
                h.insert("x-requestid", HeaderValue::from_static("look-alike"));
                for (i, n) in names.iter().enumerate() {
                    if set & (1 << i) != 0 {
                        h.insert(n.clone(), HeaderValue::from_static("v"));
                    }
                }
                if dropped {
                    let all = "x-request-id, traceparent, tracestate, x-portcullis-consumer, \
                               x-forwarded-for, x-forwarded-proto, x-forwarded-host";
                    h.insert(header::CONNECTION, HeaderValue::from_static(all));
                }
                let (present, ok) = clean_request(&mut h, false, false);
                ok.unwrap();
                let expected = names.each_ref().map(|n| h.contains_key(n));
                assert_eq!(has(present), expected, "set {set:07b}, dropped {dropped}");
                assert_eq!(present, Present::of(&h));
                assert_eq!(expected.contains(&true), set != 0 && !dropped);
            }
        }
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        let a = request_id(&h, Present::of(&h));
        let b = request_id(&h, Present::of(&h));
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(a[..16], b[..16], "same process prefix");
        assert_eq!(
            u64::from_str_radix(&b[16..], 16).unwrap(),
            u64::from_str_radix(&a[16..], 16).unwrap() + 1
        );
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, Present::of(&h)), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h, Present::of(&h)), "has space");
        // What the scan did not see is not looked up.
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_ne!(request_id(&h, Present::default()), "abc-123");
    }
}
