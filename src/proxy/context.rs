//! What the phases of one request share: the per-request context ([`RequestCtx`]: id,
//! start, trace id, the chosen route, the consumer, what the access log will say) and the
//! client's request as the phases read and rewrite it ([`ClientRequest`]).

use super::access_log::AccessLog;
use super::error::ProxyError;
use super::headers::{self, ClientInfo};
use super::trace_context::{self, TraceId};
use super::RouteEntry;
use crate::config::ServerConfig;
use crate::upstream::call::AddedFields;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Uri};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

/// One request's context, from its arrival to its access-log line.
pub struct RequestCtx<'g> {
    pub client: &'g ClientInfo,
    pub request_id: HeaderValue,
    pub start: Instant,
    pub method: Method,
    pub trace_id: TraceId,
    /// The route the request took, once routing chose one.
    pub route: Option<&'g RouteEntry>,
    /// The consumer an auth plugin named.
    pub consumer: Option<String>,
    /// The endpoint of the last try, and the time to its response head.
    pub endpoint: Option<Arc<str>>,
    pub upstream_ms: Option<f64>,
    /// The synthetic error the gateway answered with.
    pub error: Option<&'static str>,
    /// The plugin that decided the request's fate other than by passing it on, and how.
    pub plugin: Option<(Arc<str>, &'static str)>,
    /// On a route with fallbacks: the upstream (and `:model`, when rewritten) that served.
    pub served_by: Option<HeaderValue>,
    /// On a composite route: its parts' statuses and times, for the access log.
    pub parts: Option<String>,
    /// The model call this request is (routes with `[routes.ai]`). Boxed, as `upgrade`
    /// is: what only some requests have does not make every request's future larger.
    pub ai: Option<Box<crate::ai::Exchange>>,
    /// The upgrade the client asked for, until `forward` takes it.
    pub upgrade: Option<Box<super::upgrade::Requested>>,
    /// The reservations the route's `[[limits]]` admitted the request with.
    pub limits: Option<Box<crate::limits::Admission>>,
    /// The client's connection writes a response head kept as it came
    /// ([`crate::upstream::h1::RawHead`]): the own HTTP/1.1 server's does, hyper's
    /// reads only the response's map.
    pub raw_heads: bool,
    /// The path for the access log (`None`: access logging is off).
    log_path: Option<String>,
    /// The names the cleaned head has (`headers::clean_request`); `ClientRequest::read`
    /// removes a client's `X-Portcullis-Consumer` only if it has one.
    present: headers::Present,
    /// The `traceparent` the request goes upstream with, until it is put in the request's
    /// head with the gateway's `X-Request-Id` (when the client sent none): there for
    /// plugins to see ([`RequestCtx::settle_own`]), or with the fields written as the
    /// head is sent ([`RequestCtx::own_fields`]), which saves two inserts into its map
    /// (~240 instructions each: callgrind). Taken, not copied: a copy of a value made
    /// from a `Vec` allocates.
    traceparent: Option<HeaderValue>,
}

impl<'g> RequestCtx<'g> {
    /// Starts the context: takes the request id (the client's, if sane) and moves the
    /// trace context on to this hop, so plugins and the upstream see both.
    ///
    /// `present`: the names the cleaned head has (`headers::clean_request`).
    pub fn new(
        req: &mut Request<Incoming>,
        client: &'g ClientInfo,
        present: headers::Present,
    ) -> Self {
        let (trace_id, traceparent) = trace_context::propagate(req.headers_mut(), present);
        let (request_id, traceparent) = own_values(req.headers(), present, traceparent);
        RequestCtx {
            client,
            request_id,
            start: Instant::now(),
            method: req.method().clone(),
            trace_id,
            route: None,
            consumer: None,
            endpoint: None,
            upstream_ms: None,
            error: None,
            plugin: None,
            served_by: None,
            parts: None,
            ai: None,
            upgrade: None,
            limits: None,
            raw_heads: false,
            log_path: AccessLog::enabled().then(|| req.uri().path().to_string()),
            present,
            traceparent: Some(traceparent),
        }
    }

    /// The names the request head has, of those the gateway reads or replaces.
    pub fn present(&self) -> headers::Present {
        self.present
    }

    /// Puts the gateway's own fields (`traceparent`, `X-Request-Id`) in the request's
    /// head `h`, for plugins to see: before the first plugin reads the request. They are
    /// then sent from the head.
    ///
    /// Also before a request goes to more than one upstream (a composite route's parts,
    /// a fallback's steps): each is sent a copy of the head.
    pub fn settle_own(&mut self, h: &mut http::HeaderMap) {
        let Some(traceparent) = self.traceparent.take() else {
            return;
        };
        h.insert(trace_context::TRACEPARENT, traceparent);
        if !self.present.request_id() {
            h.insert(headers::X_REQUEST_ID, self.request_id.clone());
        }
    }

    /// Adds the gateway's own fields to the fields an upstream request adds as its head
    /// is sent, unless they are in the head already.
    pub fn own_fields(&mut self, added: &mut AddedFields) {
        let Some(traceparent) = self.traceparent.take() else {
            return;
        };
        added.push(&trace_context::TRACEPARENT_NAME, traceparent);
        if !self.present.request_id() {
            added.push(&headers::X_REQUEST_ID_NAME, self.request_id.clone());
        }
    }

    /// Notes the names of a head plugins gave back (they may have added any).
    pub fn headers_replaced(&mut self, h: &http::HeaderMap) {
        self.present = headers::Present::of(h);
    }

    /// Notes in the access log which plugin did what to the request.
    pub fn note_plugin(&mut self, plugin: &Arc<str>, outcome: &'static str) {
        self.plugin = Some((plugin.clone(), outcome));
    }

    /// The access-log record, if access logging is on.
    pub(super) fn access_log(&mut self, status: http::StatusCode) -> Option<Box<AccessLog>> {
        let path = self.log_path.take()?;
        Some(super::boxed_with(|| AccessLog {
            start: self.start,
            client: self.client.addr,
            method: self.method.clone(),
            path,
            route: self.route.map(|r| r.name.clone()),
            endpoint: self.endpoint.take(),
            status,
            request_id: self.request_id.clone(),
            upstream_ms: self.upstream_ms,
            error: self.error,
            consumer: self.consumer.take(),
            trace_id: self.trace_id,
            plugin: self.plugin.take(),
            stream_plugin: None,
            served_by: self.served_by.take(),
            call: None,
            parts: self.parts.take(),
        }))
    }
}

/// The request id (the client's, if sane, else a new one) and the `traceparent` as header
/// values. Both are cloned or taken whole, never copied (a value copied into a
/// `Vec`-backed `Bytes` allocates again on its first clone to become shared), and a new id
/// shares one allocation with the `traceparent` (`Bytes::from_owner` of both, sliced):
/// one malloc and free per request fewer than one each.
fn own_values(
    h: &http::HeaderMap,
    present: headers::Present,
    traceparent: trace_context::Traceparent,
) -> (HeaderValue, HeaderValue) {
    let value = |b: Bytes| HeaderValue::from_maybe_shared(b).expect("hex is a valid header value");
    if let Some(id) = headers::client_request_id(h, present) {
        return (id, value(Bytes::from_owner(traceparent)));
    }
    let id = headers::new_request_id();
    let mut both = [0u8; size_of::<headers::RequestId>() + size_of::<trace_context::Traceparent>()];
    both[..id.len()].copy_from_slice(&id);
    both[id.len()..].copy_from_slice(&traceparent);
    let both = Bytes::from_owner(both);
    (value(both.slice(..id.len())), value(both.slice(id.len()..)))
}

/// The client's request as the phases see it: its head (which becomes the upstream
/// request's), where it is going ([`Target`]), and its body — streamed, or buffered when
/// a plugin needs it.
pub struct ClientRequest {
    pub head: http::request::Parts,
    pub target: Target,
    pub body: ClientBody,
    /// The path and query a plugin rewrote the request to.
    pub rewritten: Option<(String, Option<String>)>,
}

/// Where the client's request is going: the URI as received, the normalized path and
/// the request's one authority.
#[derive(Clone)]
pub struct Target {
    /// The client's URI, unchanged (the head's is replaced per try).
    pub uri: Uri,
    /// The normalized path when normalizing changed it (else it is `uri.path()`).
    normalized: Option<String>,
    /// The request's one authority (`host[:port]`): the absolute-form URI's or HTTP/2
    /// `:authority`, else the Host header; validated, host lowercased, a trailing dot
    /// removed. It is what routes match, what plugins see (as Host too), what
    /// `preserve_host` forwards and what `X-Forwarded-Host` says.
    pub authority: Option<HeaderValue>,
    /// Where the host ends in `authority` (the port, if any, follows).
    host_end: usize,
}

/// The client's request body.
pub struct ClientBody {
    /// The stream, until a phase buffers or forwards it.
    pub stream: Option<Incoming>,
    /// The body read whole for plugins.
    pub buffered: Option<Bytes>,
}

/// The header carrying the consumer an auth plugin named.
pub const X_CONSUMER: header::HeaderName = header::HeaderName::from_static("x-portcullis-consumer");

impl ClientRequest {
    /// Reads the request head: its size, the normalized path (what is matched *and*
    /// forwarded), the host. A client cannot name the consumer; the request id it will be
    /// answered with goes upstream too.
    ///
    /// Boxed (it is 504 bytes): it is handed from phase to phase by value, and each phase's
    /// future keeps room for what it was handed (`Gateway::process`, `forward`,
    /// `forward_to`); unboxed, the request was three times in the future the worker boxes
    /// for every request, and each hand-over was a `memcpy` call.
    pub fn read(
        req: Request<Incoming>,
        ctx: &mut RequestCtx<'_>,
        server: &ServerConfig,
    ) -> Result<Box<Self>, ProxyError> {
        let (mut head, body) = req.into_parts();
        if header_bytes(&head) > server.max_header_size {
            return Err(ProxyError::HeadersTooLarge);
        }
        let uri = head.uri.clone();
        let normalized = match crate::normalize::normalize_path(uri.path()) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(p)) => Some(p),
            Err(e) => return Err(ProxyError::BadPath(e)),
        };
        if let (Some(p), Some(log)) = (&normalized, ctx.log_path.as_mut()) {
            log.clone_from(p);
        }
        let (authority, host_end, as_sent) = match request_authority(&head)? {
            Some((a, end, as_sent)) => (Some(a), end, as_sent),
            None => (None, 0, false),
        };
        // RFC 9112 §3.2.2: the Host a proxy passes on is the target's authority. Most
        // requests' one Host is it already, as sent: nothing to replace (~230
        // instructions saved).
        match &authority {
            Some(_) if as_sent => {}
            Some(a) => {
                head.headers.insert(header::HOST, a.clone());
            }
            None => {
                head.headers.remove(header::HOST);
            }
        }
        if ctx.present.consumer() {
            head.headers.remove(X_CONSUMER);
        }
        // The client's own id is the request's when sane, else replaced; a new one is
        // added as the head is sent (`RequestCtx::own_fields`).
        if ctx.present.request_id() {
            head.headers
                .insert(headers::X_REQUEST_ID, ctx.request_id.clone());
        }
        Ok(super::boxed_with(|| ClientRequest {
            head,
            target: Target {
                uri,
                normalized,
                authority,
                host_end,
            },
            body: ClientBody {
                stream: Some(body),
                buffered: None,
            },
            rewritten: None,
        }))
    }
}

impl ClientRequest {
    /// A copy to send to one more upstream (a fallback): the head, the target, the
    /// buffered body (shared, not copied). The stream, if any, stays here.
    pub fn replica(&self) -> Box<ClientRequest> {
        Box::new(ClientRequest {
            head: crate::upstream::call::clone_head(&self.head),
            target: self.target.clone(),
            body: ClientBody {
                stream: None,
                buffered: self.body.buffered.clone(),
            },
            rewritten: self.rewritten.clone(),
        })
    }
}

impl Target {
    /// The normalized path.
    pub fn path(&self) -> &str {
        self.normalized.as_deref().unwrap_or(self.uri.path())
    }

    /// Whether the normalized path is the client's own bytes.
    pub fn path_unchanged(&self) -> bool {
        self.normalized.is_none()
    }

    /// The request's host, lowercase, without port or trailing dot: what routes match.
    pub fn host(&self) -> Option<&str> {
        let a = self.authority.as_ref()?;
        std::str::from_utf8(&a.as_bytes()[..self.host_end]).ok()
    }
}

impl ClientBody {
    /// Reads the stream whole (once) for plugins that need it, within `limit`.
    pub async fn buffer(&mut self, limit: u64) -> Result<(), ProxyError> {
        if self.buffered.is_some() {
            return Ok(());
        }
        let body = self.stream.take().expect("body not yet consumed");
        self.buffered = Some(buffer_body(body, limit).await?);
        Ok(())
    }
}

async fn buffer_body(body: Incoming, limit: u64) -> Result<Bytes, ProxyError> {
    use http_body_util::BodyExt as _;
    use hyper::body::Body as _;
    if body.size_hint().lower() > limit {
        return Err(ProxyError::BodyTooLarge(limit));
    }
    match http_body_util::Limited::new(body, limit as usize)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge(limit))
        }
        Err(e) => Err(crate::upstream::body::ClientBodyFailed::new(e).fault.into()),
    }
}

/// Size of the request head as received (name + value + separators per header).
fn header_bytes(head: &http::request::Parts) -> usize {
    head.headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + head.uri.path_and_query().map_or(0, |p| p.as_str().len())
}

/// The request's one authority and where its host ends (RFC 9112 §3.2, §3.2.2;
/// RFC 9113 §8.3.1): the URI's (absolute form, HTTP/2 `:authority`) replaces Host; over
/// HTTP/2 a `host` that differs from `:authority` is malformed; HTTP/1.1 needs exactly one
/// Host, and no request may carry two. The value must be a `host[:port]`. The flag says
/// the value is the request's one Host header as it came (not a copy made lower case or
/// taken from the URI).
fn request_authority(
    head: &http::request::Parts,
) -> Result<Option<(HeaderValue, usize, bool)>, ProxyError> {
    let mut hosts = head.headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadHost("more than one Host header"));
    }
    if host_header.is_none() && head.version == http::Version::HTTP_11 {
        return Err(ProxyError::BadHost(
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    let raw: &[u8] = match (head.uri.authority(), host_header) {
        (Some(a), Some(h))
            if head.version == http::Version::HTTP_2
                && !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) =>
        {
            return Err(ProxyError::BadHost(":authority and host differ"));
        }
        (Some(a), _) => a.as_str().as_bytes(),
        (None, Some(h)) => h.as_bytes(),
        (None, None) => return Ok(None),
    };
    let bad = || ProxyError::BadHost("the request's host is not a valid host[:port]");
    let (host_len, port_at) = split_authority(raw).ok_or_else(bad)?;
    let mut host = &raw[..host_len];
    if host.len() > 1 && host.ends_with(b".") && !host.starts_with(b"[") {
        host = &host[..host.len() - 1];
    }
    if host.ends_with(b".") {
        return Err(bad());
    }
    let port = port_at.map_or(&b""[..], |p| &raw[p..]);
    let unchanged = host.len() == host_len && !host.iter().any(u8::is_ascii_uppercase);
    let (value, as_sent) = match (unchanged, head.uri.authority(), host_header) {
        // The Host header as it came: share its bytes, no copy.
        (true, None, Some(h)) => (h.clone(), true),
        _ => {
            let mut v = host.to_ascii_lowercase();
            v.extend_from_slice(port);
            (HeaderValue::from_bytes(&v).map_err(|_| bad())?, false)
        }
    };
    Ok(Some((value, host.len(), as_sent)))
}

/// Splits a `host[:port]` (a reg-name of letters, digits, `-`, `.`, `_`, or an IP
/// literal in brackets; a port of 1–5 digits): the host's length and where the `:port`
/// starts. `None` when it is not one (`a:80:80`, `u@a`, `a,b`, empty).
pub fn split_authority(a: &[u8]) -> Option<(usize, Option<usize>)> {
    let host_len = if a.first() == Some(&b'[') {
        let close = a.iter().position(|&b| b == b']')?;
        let inside = &a[1..close];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        close + 1
    } else {
        let end = a.iter().position(|&b| b == b':').unwrap_or(a.len());
        let host = &a[..end];
        if host.is_empty()
            || !host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return None;
        }
        end
    };
    match &a[host_len..] {
        [] => Some((host_len, None)),
        [b':', port @ ..]
            if (1..=5).contains(&port.len())
                && port.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(port).ok()?.parse::<u16>().is_ok() =>
        {
            Some((host_len, Some(host_len)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: http::Version, uri: &str, hosts: &[&str]) -> http::request::Parts {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn authority(version: http::Version, uri: &str, hosts: &[&str]) -> Result<String, String> {
        match request_authority(&head(version, uri, hosts)) {
            Ok(Some((v, end, as_sent))) => {
                let v = v.to_str().unwrap().to_string();
                let sent = if as_sent { "|as sent" } else { "" };
                Ok(format!("{}|{}{sent}", &v[..end], v))
            }
            Ok(None) => Ok("none".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn one_authority_per_request() {
        use http::Version as V;
        // Absolute form: the URI's authority replaces Host.
        assert_eq!(
            authority(V::HTTP_11, "http://other.example/h", &["secure.example"]).unwrap(),
            "other.example|other.example"
        );
        assert_eq!(
            authority(V::HTTP_11, "/h", &["Secure.Example.:8080"]).unwrap(),
            "secure.example|secure.example:8080"
        );
        assert_eq!(
            authority(V::HTTP_11, "/h", &["[::1]:80"]).unwrap(),
            "[::1]|[::1]:80|as sent"
        );
        assert_eq!(
            authority(V::HTTP_11, "/h", &["a.example:8080"]).unwrap(),
            "a.example|a.example:8080|as sent"
        );
        assert_eq!(
            authority(V::HTTP_11, "/h", &["a.example."]).unwrap(),
            "a.example|a.example",
            "the trailing dot taken off: a new value"
        );
        assert_eq!(authority(V::HTTP_10, "/h", &[]).unwrap(), "none");
        assert!(authority(V::HTTP_11, "/h", &[]).is_err(), "1.1 needs Host");
        assert!(authority(V::HTTP_11, "http://a/h", &[]).is_err());
        assert!(authority(V::HTTP_11, "/h", &["a", "b"]).is_err());
        assert!(authority(V::HTTP_10, "/h", &["a", "a"]).is_err());
        assert!(authority(V::HTTP_2, "http://a/h", &["b"]).is_err());
        assert_eq!(authority(V::HTTP_2, "http://a/h", &["A"]).unwrap(), "a|a");
        for bad in [
            "a:80:80", "u@a", "a,b", "", ".", "a:", "a:99999", "a b", "[zz]", "a/b",
        ] {
            assert!(authority(V::HTTP_11, "/h", &[bad]).is_err(), "{bad:?}");
        }
        assert!(authority(V::HTTP_11, "http://u@a/h", &["a"]).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// What `request_authority` makes of one Host header over HTTP/1.1.
        fn of_host(value: &[u8]) -> Option<Result<(String, usize), ProxyError>> {
            let v = HeaderValue::from_bytes(value).ok()?;
            let mut h = head(http::Version::HTTP_11, "/h", &[]);
            h.headers.insert(header::HOST, v);
            Some(request_authority(&h).map(|a| {
                let (v, end, _) = a.expect("a Host was given");
                (v.to_str().expect("ASCII").to_string(), end)
            }))
        }

        /// A valid `host[:port]`: a reg-name (any case, maybe one trailing dot) or a
        /// bracketed literal, and a port.
        fn authority() -> impl Strategy<Value = String> {
            let reg = "[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,8}\\.){0,3}[a-zA-Z0-9_-]{1,8}\\.?";
            let literal = "\\[[0-9a-fA-F:.]{1,20}\\]";
            (
                prop_oneof![reg, literal],
                proptest::option::of(any::<u16>()),
            )
                .prop_map(|(host, port)| match port {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                })
        }

        proptest! {
            /// Whatever the bytes, no panic; what is accepted is a lowercase authority
            /// without a trailing dot, that is accepted again unchanged.
            #[test]
            fn any_host_value_is_refused_or_normal(value in proptest::collection::vec(any::<u8>(), 0..40)) {
                let Some(r) = of_host(&value) else { return Ok(()) };
                if let Ok((v, end)) = r {
                    prop_assert!(v.parse::<http::uri::Authority>().is_ok(), "{v}");
                    prop_assert!(!v.bytes().any(|b| b.is_ascii_uppercase()), "{v}");
                    prop_assert!(!v[..end].ends_with('.') || v[..end].starts_with('['), "{v}");
                    let again = of_host(v.as_bytes()).unwrap();
                    prop_assert_eq!(again.ok(), Some((v.clone(), end)));
                }
            }

            /// A valid authority is accepted as itself, lowercased, one trailing dot of
            /// the host dropped.
            #[test]
            fn valid_authorities_are_accepted(a in authority()) {
                let (v, end) = of_host(a.as_bytes()).unwrap().map_err(|e| TestCaseError::fail(format!("{a}: {e}")))?;
                let (host, port) = match a.rfind(':').filter(|&i| !a[i..].contains(']')) {
                    Some(i) => (&a[..i], &a[i..]),
                    None => (a.as_str(), ""),
                };
                let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
                prop_assert_eq!(&v[..end], host.as_str());
                prop_assert_eq!(v, format!("{host}{port}"));
            }

            /// Userinfo, lists, whitespace and a second colon outside brackets are never
            /// an authority, wherever they are put into a valid one.
            #[test]
            fn smuggling_characters_are_refused(
                a in authority(),
                at in any::<prop::sample::Index>(),
                bad in prop::sample::select(vec!["@", ",", " ", "\t", ":"]),
            ) {
                let mut chars: Vec<char> = a.chars().collect();
                let at = at.index(chars.len() + 1);
                // A colon inside the brackets of an IP literal is part of it.
                let in_brackets = a.starts_with('[') && at > 0 && at <= a.find(']').unwrap();
                prop_assume!(!(bad == ":" && in_brackets));
                if bad == ":" && !a.starts_with('[') && !a.contains(':') {
                    // Make sure there are two: one is a port separator.
                    chars.push(':');
                    chars.push('1');
                }
                chars.splice(at..at, bad.chars());
                let value: String = chars.into_iter().collect();
                let r = of_host(value.as_bytes()).unwrap();
                prop_assert!(r.is_err(), "{value:?} was accepted: {r:?}");
            }
        }
    }
}
