//! What the host gives a guest: the store's state (sandboxed WASI, resource table, memory
//! limits), the `request`/`response` resources backed by the gateway's own header maps
//! (nothing is copied into the guest unless it asks), and `log`. The capabilities
//! (`wasi:http`, `wasi:keyvalue`) live in `outbound.rs` and `keyvalue.rs`.

use super::bindings::auth::portcullis::plugin::{host, types};
use super::bindings::LogLevel;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The request as lent to a plugin for one call.
pub struct RequestRes {
    pub method: Method,
    pub scheme: &'static str,
    pub authority: Option<String>,
    /// The normalized path (what the router matched).
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub client: IpAddr,
    /// Present only when the route buffers request bodies.
    pub body: Option<Bytes>,
    pub read_only: bool,
}

/// The response as lent to a transform's `on-response`.
pub struct ResponseRes {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Present only when a transform on the route asked for the response body.
    pub body: Option<Bytes>,
}

/// The state of one instance's store.
pub struct HostState {
    pub table: ResourceTable,
    pub wasi: WasiCtx,
    pub memory: MemoryLimit,
    pub plugin: Arc<str>,
    pub route: Arc<str>,
    /// The CPU deadline of one call, in epoch ticks.
    pub ticks: u64,
    /// The id of the request being handled, for log lines.
    pub request_id: Option<HeaderValue>,
    /// `wasi:http`: its context and the hooks that police and send outbound calls.
    pub http: wasmtime_wasi_http::WasiHttpCtx,
    pub outbound: super::outbound::Outbound,
    /// `wasi:keyvalue`: the plugin's grant, if any.
    pub kv: Option<super::keyvalue::Grant>,
    /// Where the current call's time went (used by plugins with capabilities).
    pub budget: super::budget::Budget,
    /// The plugin was granted a capability (so it may wait: its calls keep the accounts
    /// above; the others' calls skip them).
    pub granted: bool,
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// The store's memory limit (`memory_limit`). A growth past it traps the call, and the
/// limiter remembers that it did, so the failure is reported as out-of-memory by this
/// flag rather than by reading the trap's text.
pub struct MemoryLimit {
    bytes: usize,
    exceeded: bool,
}

impl MemoryLimit {
    pub fn new(bytes: usize) -> Self {
        MemoryLimit {
            bytes,
            exceeded: false,
        }
    }

    /// Whether a memory growth was refused in this store.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.bytes || maximum.is_some_and(|max| desired > max) {
            self.exceeded = true;
            wasmtime::bail!(
                "memory limit of {} bytes reached (asked for {desired})",
                self.bytes
            );
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.exceeded = true;
        Err(error)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A header name a plugin may set: valid, and not one the gateway manages.
pub(crate) fn header_name(name: &str) -> Result<HeaderName, String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))?;
    // Plugins may read the headers the gateway manages, not change them.
    if crate::FRAMING_HEADERS.contains(&n.as_str()) {
        return Err(format!("header `{n}` is managed by the gateway"));
    }
    Ok(n)
}

pub(crate) fn header_value(value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|_| "header value holds a control character".to_string())
}

fn get_header(h: &HeaderMap, name: &str) -> Option<String> {
    let n = HeaderName::from_bytes(name.as_bytes()).ok()?;
    let sep = if n == http::header::COOKIE {
        "; "
    } else {
        ", "
    };
    let mut out: Option<String> = None;
    for v in h.get_all(&n) {
        let Ok(v) = v.to_str() else { continue };
        match &mut out {
            None => out = Some(v.to_string()),
            Some(o) => {
                o.push_str(sep);
                o.push_str(v);
            }
        }
    }
    out
}

fn all_headers(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .filter_map(|(n, v)| {
            v.to_str()
                .ok()
                .map(|v| (n.as_str().to_string(), v.to_string()))
        })
        .collect()
}

fn set_header(h: &mut HeaderMap, name: &str, value: &str, append: bool) -> Result<(), String> {
    let (n, v) = (header_name(name)?, header_value(value)?);
    if append {
        h.append(n, v);
    } else {
        h.insert(n, v);
    }
    Ok(())
}

fn valid_uri_chars(s: &str, allow_question: bool) -> bool {
    s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || b"-._~!$&'()*+,;=:@/%".contains(&b)
            || (allow_question && b == b'?')
    })
}

impl HostState {
    fn req(&self, r: &Resource<RequestRes>) -> &RequestRes {
        self.table
            .get(r)
            .expect("request handle is live during the call")
    }

    fn req_mut(&mut self, r: &Resource<RequestRes>) -> Result<&mut RequestRes, String> {
        let req = self
            .table
            .get_mut(r)
            .expect("request handle is live during the call");
        if req.read_only {
            return Err("read-only".into());
        }
        Ok(req)
    }

    fn resp(&self, r: &Resource<ResponseRes>) -> &ResponseRes {
        self.table
            .get(r)
            .expect("response handle is live during the call")
    }

    fn resp_mut(&mut self, r: &Resource<ResponseRes>) -> &mut ResponseRes {
        self.table
            .get_mut(r)
            .expect("response handle is live during the call")
    }
}

impl types::Host for HostState {}

impl types::HostRequest for HostState {
    fn method(&mut self, r: Resource<RequestRes>) -> String {
        self.req(&r).method.as_str().to_string()
    }
    fn scheme(&mut self, r: Resource<RequestRes>) -> String {
        self.req(&r).scheme.to_string()
    }
    fn authority(&mut self, r: Resource<RequestRes>) -> Option<String> {
        self.req(&r).authority.clone()
    }
    fn path(&mut self, r: Resource<RequestRes>) -> String {
        self.req(&r).path.clone()
    }
    fn query(&mut self, r: Resource<RequestRes>) -> Option<String> {
        self.req(&r).query.clone()
    }
    fn header(&mut self, r: Resource<RequestRes>, name: String) -> Option<String> {
        get_header(&self.req(&r).headers, &name)
    }
    fn headers(&mut self, r: Resource<RequestRes>) -> Vec<(String, String)> {
        all_headers(&self.req(&r).headers)
    }
    fn client_addr(&mut self, r: Resource<RequestRes>) -> String {
        self.req(&r).client.to_string()
    }
    fn set_header(
        &mut self,
        r: Resource<RequestRes>,
        name: String,
        value: String,
    ) -> Result<(), String> {
        set_header(&mut self.req_mut(&r)?.headers, &name, &value, false)
    }
    fn append_header(
        &mut self,
        r: Resource<RequestRes>,
        name: String,
        value: String,
    ) -> Result<(), String> {
        set_header(&mut self.req_mut(&r)?.headers, &name, &value, true)
    }
    fn remove_header(&mut self, r: Resource<RequestRes>, name: String) -> Result<(), String> {
        let n = header_name(&name)?;
        self.req_mut(&r)?.headers.remove(n);
        Ok(())
    }
    fn set_path(&mut self, r: Resource<RequestRes>, path: String) -> Result<(), String> {
        if !path.starts_with('/') || !valid_uri_chars(&path, false) {
            return Err(format!("`{path}` is not a valid absolute path"));
        }
        self.req_mut(&r)?.path = path;
        Ok(())
    }
    fn set_query(&mut self, r: Resource<RequestRes>, query: Option<String>) -> Result<(), String> {
        if let Some(q) = &query {
            if !valid_uri_chars(q, true) {
                return Err(format!("`{q}` is not a valid query"));
            }
        }
        self.req_mut(&r)?.query = query;
        Ok(())
    }
    fn body(&mut self, r: Resource<RequestRes>) -> Option<Vec<u8>> {
        self.req(&r).body.as_ref().map(|b| b.to_vec())
    }
    fn set_body(&mut self, r: Resource<RequestRes>, body: Vec<u8>) -> Result<(), String> {
        let req = self.req_mut(&r)?;
        if req.body.is_none() {
            return Err(
                "the route does not buffer request bodies (set buffer_request_body)".into(),
            );
        }
        req.body = Some(Bytes::from(body));
        Ok(())
    }
    fn drop(&mut self, _r: Resource<RequestRes>) -> wasmtime::Result<()> {
        // The host owns requests; a guest can only hold borrows, so there is nothing to drop.
        Ok(())
    }
}

impl types::HostResponse for HostState {
    fn status(&mut self, r: Resource<ResponseRes>) -> u16 {
        self.resp(&r).status.as_u16()
    }
    fn header(&mut self, r: Resource<ResponseRes>, name: String) -> Option<String> {
        get_header(&self.resp(&r).headers, &name)
    }
    fn headers(&mut self, r: Resource<ResponseRes>) -> Vec<(String, String)> {
        all_headers(&self.resp(&r).headers)
    }
    fn set_status(&mut self, r: Resource<ResponseRes>, status: u16) -> Result<(), String> {
        let s = StatusCode::from_u16(status)
            .ok()
            .filter(|_| (200..=599).contains(&status))
            .ok_or(format!("status {status} is not in 200..=599"))?;
        self.resp_mut(&r).status = s;
        Ok(())
    }
    fn set_header(
        &mut self,
        r: Resource<ResponseRes>,
        name: String,
        value: String,
    ) -> Result<(), String> {
        set_header(&mut self.resp_mut(&r).headers, &name, &value, false)
    }
    fn append_header(
        &mut self,
        r: Resource<ResponseRes>,
        name: String,
        value: String,
    ) -> Result<(), String> {
        set_header(&mut self.resp_mut(&r).headers, &name, &value, true)
    }
    fn remove_header(&mut self, r: Resource<ResponseRes>, name: String) -> Result<(), String> {
        let n = header_name(&name)?;
        self.resp_mut(&r).headers.remove(n);
        Ok(())
    }
    fn body(&mut self, r: Resource<ResponseRes>) -> Option<Vec<u8>> {
        self.resp(&r).body.as_ref().map(|b| b.to_vec())
    }
    fn set_body(&mut self, r: Resource<ResponseRes>, body: Vec<u8>) -> Result<(), String> {
        let resp = self.resp_mut(&r);
        if resp.body.is_none() {
            return Err(
                "the response body is not buffered (declare the response-body hook)".into(),
            );
        }
        resp.body = Some(Bytes::from(body));
        Ok(())
    }
    fn drop(&mut self, _r: Resource<ResponseRes>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        let (plugin, route) = (&*self.plugin, &*self.route);
        let request_id = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        match level {
            LogLevel::Trace => {
                tracing::trace!(target: "plugin", plugin, route, request_id, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "plugin", plugin, route, request_id, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "plugin", plugin, route, request_id, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "plugin", plugin, route, request_id, "{message}")
            }
            LogLevel::Error => {
                tracing::error!(target: "plugin", plugin, route, request_id, "{message}")
            }
        }
    }
}

/// A guest's stdout or stderr: each line becomes a log event tagged with the plugin.
#[derive(Clone)]
pub struct GuestOutput {
    pub plugin: Arc<str>,
    pub stream: &'static str,
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            out: self.clone(),
            line: Vec::new(),
        })
    }
}

/// Longest line kept before it is logged in pieces.
const MAX_LINE: usize = 4096;

struct LineLogger {
    out: GuestOutput,
    line: Vec<u8>,
}

impl LineLogger {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        tracing::info!(target: "plugin", plugin = &*self.out.plugin, stream = self.out.stream, "{}", text.trim_end());
        self.line.clear();
    }
}

impl tokio::io::AsyncWrite for LineLogger {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        for &b in buf {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.emit();
        std::task::Poll::Ready(Ok(()))
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        self.emit();
    }
}
