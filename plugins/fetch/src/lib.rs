//! One outbound HTTP request from a guest plugin through `wasi:http/outgoing-handler`,
//! blocking the guest until the answer is in (the gateway keeps serving other requests
//! meanwhile: only this instance waits). Built on the `wasip2` crate's bindings, so a
//! plugin needs no async runtime. A request to a host the gateway's config does not grant
//! fails with [`FetchError::Denied`].

use std::time::Duration;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

/// An answer, its body read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The gateway refused it: the origin is not in the plugin's `allowed_hosts`.
    Denied,
    /// No answer in time (the plugin's `io_timeout`, or `timeout` given here).
    Timeout,
    /// The URL is not one this client can send.
    BadUrl(String),
    /// Anything else: connection refused, TLS, a body too large… (the WASI error code).
    Failed(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Denied => f.write_str("denied by the gateway (not in allowed_hosts)"),
            FetchError::Timeout => f.write_str("timed out"),
            FetchError::BadUrl(u) => write!(f, "bad URL: {u}"),
            FetchError::Failed(e) => f.write_str(e),
        }
    }
}

fn code(e: ErrorCode) -> FetchError {
    match e {
        ErrorCode::HttpRequestDenied => FetchError::Denied,
        ErrorCode::HttpResponseTimeout
        | ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout => FetchError::Timeout,
        other => FetchError::Failed(format!("{other:?}")),
    }
}

/// `scheme://authority/path?query` split.
fn split(url: &str) -> Result<(Scheme, &str, &str), FetchError> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        return Err(FetchError::BadUrl(url.into()));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(FetchError::BadUrl(url.into()));
    }
    Ok((scheme, authority, path))
}

/// Sends `method url` with `headers` and `body`, waiting at most `timeout` for the answer
/// to begin (the gateway's `io_timeout` bounds it in any case), and reads the whole body.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Option<Duration>,
) -> Result<Response, FetchError> {
    let (scheme, authority, path) = split(url)?;
    let list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
    let fields =
        Fields::from_list(&list).map_err(|e| FetchError::BadUrl(format!("header: {e:?}")))?;
    let req = OutgoingRequest::new(fields);
    let m = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        other => Method::Other(other.into()),
    };
    let bad = |what: &str| FetchError::BadUrl(format!("{what} of {url}"));
    req.set_method(&m).map_err(|_| bad("method"))?;
    req.set_scheme(Some(&scheme)).map_err(|_| bad("scheme"))?;
    req.set_authority(Some(authority))
        .map_err(|_| bad("authority"))?;
    req.set_path_with_query(Some(path))
        .map_err(|_| bad("path"))?;
    let out = req.body().map_err(|_| bad("body"))?;
    let options = timeout.map(|t| {
        let o = RequestOptions::new();
        let ns = t.as_nanos().min(u64::MAX as u128) as u64;
        let _ = o.set_connect_timeout(Some(ns));
        let _ = o.set_first_byte_timeout(Some(ns));
        o
    });
    let pending = outgoing_handler::handle(req, options).map_err(code)?;
    if let Some(b) = body {
        let stream = out.write().map_err(|_| bad("body stream"))?;
        // At most 4096 bytes per blocking write (the stream's contract).
        for chunk in b.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| FetchError::Failed(format!("writing the body: {e:?}")))?;
        }
        drop(stream);
    }
    OutgoingBody::finish(out, None).map_err(code)?;
    pending.subscribe().block();
    let resp = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(code(e)),
        _ => return Err(FetchError::Failed("the response was lost".into())),
    };
    let status = resp.status();
    let headers = resp.headers().entries();
    let incoming = resp
        .consume()
        .map_err(|_| FetchError::Failed("no body".into()))?;
    let body = read_all(&incoming)?;
    drop(resp);
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_all(incoming: &IncomingBody) -> Result<Vec<u8>, FetchError> {
    let stream = incoming
        .stream()
        .map_err(|_| FetchError::Failed("no body stream".into()))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(body),
            Err(StreamError::LastOperationFailed(e)) => {
                let detail = wasip2::http::types::http_error_code(&e)
                    .map(code)
                    .unwrap_or_else(|| FetchError::Failed(e.to_debug_string()));
                return Err(detail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        let (s, a, p) = split("https://idp.example.com:8443/oauth/introspect?x=1").unwrap();
        assert!(matches!(s, Scheme::Https));
        assert_eq!((a, p), ("idp.example.com:8443", "/oauth/introspect?x=1"));
        let (_, a, p) = split("http://127.0.0.1:9").unwrap();
        assert_eq!((a, p), ("127.0.0.1:9", "/"));
        assert!(split("ftp://x").is_err());
        assert!(split("https:///x").is_err());
    }
}
