//! Shared pieces of the integration tests: the real gateway binary started on a config,
//! real upstream servers on 127.0.0.1:0, a plain hyper client, and waits on conditions
//! (never a fixed sleep where an event can be awaited).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

pub use portcullis::demo::ChannelBody;

/// How long a test waits for something to happen before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(5);

/// Polls `check` every `every` until it returns `Ok`; after `deadline` it panics, naming
/// `what` and the last `Err`.
pub async fn until_ok<T, E: std::fmt::Debug>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() >= deadline => {
                panic!("timed out after {deadline:?} waiting for {what} (last check: {e:?})")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Polls `cond` every few milliseconds until it holds; panics naming `what` after
/// `deadline`.
pub async fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let check = async || if cond() { Ok(()) } else { Err("false") };
    until_ok(what, deadline, POLL, check).await
}

/// Blocks, polling `check` every few milliseconds, until it returns `Some` or `deadline`
/// has passed (`None`): for a thread outside the tokio runtime.
pub fn poll_blocking<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

pub type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A body of the given frames (data and trailers), in order.
pub struct FramesBody(pub std::collections::VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for FramesBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

pub fn frames(f: Vec<http_body::Frame<Bytes>>) -> TestBody {
    FramesBody(f.into()).boxed()
}

pub fn stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> TestBody {
    ChannelBody(rx).boxed()
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "portcullis-test-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// The gateway binary running on a config; killed on drop.
pub struct Gateway {
    pub child: Child,
    /// The first plain listener (or the first TLS one when there is none).
    pub addr: SocketAddr,
    /// The first TLS listener (`listening on https://…`), if the config has one.
    pub tls_addr: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub dir: TempDir,
    /// Further stdout lines, read by a thread so the pipe never fills.
    pub stdout: std::sync::mpsc::Receiver<String>,
    /// Stderr lines (the log), when started with [`Gateway::start_logging`].
    pub stderr: Option<std::sync::mpsc::Receiver<String>>,
}

fn line_reader(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Gateway {
    /// Starts `portcullis run --config FILE` with `config` (use `127.0.0.1:0` to listen)
    /// and waits for its `listening on` announcement.
    pub fn start(config: &str) -> Gateway {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &str, extra_args: &[&str]) -> Gateway {
        Self::spawn(config, &["--log-level", "warn"], extra_args, false)
    }

    /// Starts with the log (stderr) captured line by line, at `info` with `extra_args`.
    pub fn start_logging(config: &str, extra_args: &[&str]) -> Gateway {
        Self::spawn(config, &["--log-level", "info"], extra_args, true)
    }

    fn spawn(config: &str, level: &[&str], extra_args: &[&str], capture: bool) -> Gateway {
        let dir = TempDir::new();
        let path = dir.write("portcullis.toml", config);
        let mut child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&path)
            .args(level)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if capture {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("spawn gateway");
        let rx = line_reader(child.stdout.take().unwrap());
        let stderr = child.stderr.take().map(line_reader);
        let mut addr = None;
        let mut tls_addr = None;
        let mut admin = None;
        let want_admin = config.contains("admin_listen");
        // A listener table with a certificate (`{ address = …, cert = … }`).
        let want_tls = config.contains(" cert = ");
        while (addr.is_none() && tls_addr.is_none())
            || (want_admin && admin.is_none())
            || (want_tls && tls_addr.is_none())
        {
            let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
                panic!(
                    "gateway did not announce its listener (exit: {:?})",
                    child.try_wait()
                )
            });
            if let Some(a) = line.strip_prefix("listening on http://") {
                addr = addr.or(Some(a.parse().unwrap()));
            } else if let Some(a) = line.strip_prefix("listening on https://") {
                tls_addr = tls_addr.or(Some(a.parse().unwrap()));
            } else if let Some(a) = line.strip_prefix("admin listening on http://") {
                admin = Some(a.parse().unwrap());
            }
        }
        Gateway {
            child,
            addr: addr.or(tls_addr).unwrap(),
            tls_addr,
            admin,
            dir,
            stdout: rx,
            stderr,
        }
    }

    /// Waits for a log line containing all of `needles`.
    pub fn wait_log(&self, needles: &[&str]) -> String {
        let rx = self.stderr.as_ref().expect("started with start_logging");
        loop {
            let line = rx
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no log line with {needles:?}"));
            if needles.iter().all(|n| line.contains(n)) {
                return line;
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real HTTP server (HTTP/1.1 and h2c) on 127.0.0.1:0 running `handler`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler)
    }

    pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let h2 = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let hits = h2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Upstream { addr, hits, task }
    }

    /// An upstream that answers every request with a JSON echo of what it received:
    /// `{"upstream": NAME, "method", "path", "query", "headers": {..}, "body": TEXT}`.
    pub async fn echo(name: &'static str) -> Upstream {
        Self::start(move |req| echo_response(name, req)).await
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream whose every response (with `content_type`, if any) sends `first`, then
/// waits for a message on the returned sender before it sends `rest`: a test sees whether
/// `first` reached it before the rest was sent (nothing buffered on the way).
pub async fn held_stream(
    content_type: Option<&'static str>,
    first: &'static [u8],
    rest: &'static [&'static [u8]],
) -> (Upstream, tokio::sync::mpsc::Sender<()>) {
    let (release_tx, release_rx) = tokio::sync::mpsc::channel::<()>(1);
    let release_rx = Arc::new(tokio::sync::Mutex::new(release_rx));
    let up = Upstream::start(move |_req| {
        let release_rx = release_rx.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                tx.send(Bytes::from_static(first)).await.unwrap();
                release_rx.lock().await.recv().await;
                for piece in rest {
                    tx.send(Bytes::from_static(piece)).await.unwrap();
                }
            });
            let mut resp = Response::builder();
            if let Some(t) = content_type {
                resp = resp.header("content-type", t);
            }
            resp.body(stream(rx)).unwrap()
        }
    })
    .await;
    (up, release_tx)
}

pub async fn echo_response(name: &'static str, req: Request<Incoming>) -> Response<TestBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        headers.insert(
            k.as_str().to_string(),
            serde_json::Value::String(v.to_str().unwrap_or("?").to_string()),
        );
    }
    let j = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    Response::builder()
        .header("x-upstream", name)
        .header("connection", "keep-alive, x-upstream-secret")
        .header("x-upstream-secret", "must-not-leak")
        .header("keep-alive", "timeout=5")
        .body(full(j.to_string()))
        .unwrap()
}

pub fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into()).boxed()
}

/// A response from the gateway, collected.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// For an error reply: the JSON `error.code`.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

pub async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    let resp = c.request(req).await.expect("request through the gateway");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// The value of the Prometheus line starting with `prefix` (0 when absent).
pub async fn metric(gw: &Gateway, prefix: &str) -> f64 {
    let r = get(&format!("http://{}/metrics", gw.admin.unwrap())).await;
    String::from_utf8_lossy(&r.body)
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub async fn get(url: &str) -> Reply {
    send(&client(), Request::get(url).body(Full::default()).unwrap()).await
}

pub fn req(method: &str, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

/// Minimal config with one upstream over `targets` and the given extra TOML.
pub fn config(upstream_extra: &str, targets: &[SocketAddr], routes: &str) -> String {
    let t: Vec<String> = targets
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"up\"\n{upstream_extra}\ntargets = [{}]\n\n{routes}",
        t.join(", ")
    )
}

/// The path of a guest plugin component built from `plugins/` (by `plugins/build.sh`,
/// run once per test process; cargo makes repeated builds cheap).
pub fn plugin(name: &str) -> String {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    BUILT.get_or_init(|| {
        let status = Command::new("bash")
            .arg(root.join("plugins/build.sh"))
            .status()
            .expect("run plugins/build.sh");
        assert!(status.success(), "plugins/build.sh failed");
    });
    let p = root
        .join("plugins/target/components")
        .join(format!("{name}.wasm"));
    assert!(p.is_file(), "{} was not built", p.display());
    p.display().to_string()
}

/// Runs `plugins/build-polyglot.sh LANG` (`python`, `js` or `c`) once per language and test
/// process: the scaffold and polyglot tests both need what it installs, and two runs at
/// once would race on its venv, node_modules and tools (so runs are serialized). `Err`
/// carries the reason when the language's toolchain cannot be had (exit 2).
pub fn build_polyglot(lang: &'static str) -> Result<(), String> {
    static BUILT: Mutex<Vec<(&str, Result<(), String>)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = built.iter().find(|(l, _)| *l == lang) {
        return r.clone();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("plugins/build-polyglot.sh"))
        .arg(lang)
        .output()
        .expect("run plugins/build-polyglot.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result = match out.status.code() {
        Some(0) => Ok(()),
        // The script's code for "toolchain not installed and cannot be installed".
        Some(2) => {
            let reason = stderr
                .lines()
                .find_map(|l| l.split_once("toolchain unavailable: ").map(|(_, r)| r))
                .unwrap_or(stderr.trim());
            Err(reason.to_string())
        }
        _ => panic!(
            "plugins/build-polyglot.sh {lang} failed ({}):\n{stderr}",
            out.status
        ),
    };
    built.push((lang, result.clone()));
    result
}

/// Runs `portcullis validate PATH`; returns whether it accepted and its stdout + stderr.
pub fn validate(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin())
        .arg("validate")
        .arg(path)
        .output()
        .expect("run portcullis validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Asserts that `portcullis validate PATH` accepts the file (compiling and caching its
/// plugins on the way).
pub fn assert_valid(path: &std::path::Path) {
    let (ok, text) = validate(path);
    assert!(
        ok,
        "portcullis validate refused {}:\n{text}",
        path.display()
    );
}

/// An address nobody listens on: connecting to it is refused at once.
///
/// The port stays bound (by a socket that never listens, kept for the rest of the test
/// process), so no test running beside this one can listen on it: a port freed at once
/// was once taken by another test's listener that never answers, and a connection the
/// test expected refused timed out.
pub fn closed_addr() -> SocketAddr {
    static KEPT: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    KEPT.lock().unwrap().push(socket);
    addr
}

/// A listener that never accepts, with its accept queue already full: the kernel drops
/// further SYNs, so a connect to it hangs until the connecting side gives up. Keep the
/// returned listener and sockets alive while it is in use.
pub async fn black_hole() -> (
    tokio::net::TcpListener,
    Vec<tokio::net::TcpStream>,
    SocketAddr,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        match tokio::time::timeout(std::time::Duration::from_millis(200), s.connect(addr)).await {
            Ok(Ok(c)) => fillers.push(c),
            _ => break, // the queue is full
        }
    }
    (listener, fillers, addr)
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/2: frames written and read by hand, for clients no HTTP/2 library would be.
// ---------------------------------------------------------------------------------------

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types and flags (RFC 9113 §6).
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 1;
pub const ACK: u8 = 1;
pub const END_HEADERS: u8 = 4;

// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0;
pub const CANCEL: u32 = 8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A frame: length, type, flags, stream id, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// A frame as read (its stream id left out: no test needed it yet).
#[derive(Debug, Clone)]
pub struct H2Frame {
    pub kind: u8,
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl H2Frame {
    /// A GOAWAY's last stream id and error code.
    pub fn goaway(&self) -> Option<(u32, u32)> {
        let p = &self.payload;
        (self.kind == GOAWAY && p.len() >= 8).then(|| {
            let word = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
            (word(0) & 0x7fff_ffff, word(4))
        })
    }
}

/// The frames in `bytes`, a run of whole frames (a trailing partial one ignored).
pub fn h2_frames(mut bytes: &[u8]) -> Vec<H2Frame> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let end = (9 + len).min(bytes.len());
        out.push(H2Frame {
            kind: bytes[3],
            flags: bytes[4],
            payload: bytes[9..end].to_vec(),
        });
        bytes = &bytes[end..];
    }
    out
}

/// The frame types in `bytes`.
pub fn frame_types(bytes: &[u8]) -> Vec<u8> {
    h2_frames(bytes).iter().map(|f| f.kind).collect()
}

/// The first GOAWAY in `bytes`: its last stream id and error code.
pub fn goaway(bytes: &[u8]) -> Option<(u32, u32)> {
    h2_frames(bytes).iter().find_map(H2Frame::goaway)
}

/// Reads the next whole frame (`None` at the end of the stream or on an error).
pub async fn next_frame(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<H2Frame> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).await.ok()?;
    Some(H2Frame {
        kind: head[3],
        flags: head[4],
        payload,
    })
}

/// A connection to `addr` that has sent the HTTP/2 preface and an empty SETTINGS frame.
pub async fn h2_connection(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn hpack_string(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 128);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s.as_bytes());
}

/// The header block of `GET path` with `:authority`, from the static table and literals
/// that are not indexed (so it leaves the peer's dynamic table as it was).
pub fn hpack_get(path: &str, authority: &str) -> Vec<u8> {
    // :method GET (static 2), :scheme http (static 6).
    let mut b = vec![0x82, 0x86];
    // :path (static name 4) and :authority (static name 1), literal without indexing.
    b.push(0x04);
    hpack_string(&mut b, path);
    b.push(0x01);
    hpack_string(&mut b, authority);
    b
}

/// A header field literal without indexing, with a new name (RFC 7541 §6.2.2).
pub fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00];
    hpack_string(&mut b, name);
    hpack_string(&mut b, value);
    b
}

/// A header field literal that the peer adds to its dynamic table (RFC 7541 §6.2.1): the
/// first one a connection sends is then index 62, [`HPACK_FIRST_DYNAMIC`] on the wire.
pub fn hpack_literal_indexed(name: &str, value: &str) -> Vec<u8> {
    let mut b = hpack_literal(name, value);
    b[0] = 0x40;
    b
}

/// The indexed field of dynamic table entry 62 (RFC 7541 §6.1): one byte.
pub const HPACK_FIRST_DYNAMIC: u8 = 0x80 | 62;

/// Reads until the gateway closes the connection (end of stream or a reset), returning
/// what it sent; panics if that does not happen within `WAIT`.
pub async fn closed_by_gateway(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the gateway did not close the connection");
    out
}

/// The resident memory of process `pid`, in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Opens an HTTP/2 connection to `addr` and sends a WebSocket extended CONNECT (RFC 8441)
/// for `path`, retried until the server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) have
/// arrived; returns the answer.
pub async fn h2_websocket_connect(addr: SocketAddr, path: &str) -> Response<Incoming> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    until_ok(
        "an extended CONNECT answered",
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || {
            let req = Request::builder()
                .method("CONNECT")
                .uri(format!("http://{addr}{path}"))
                .header("sec-websocket-version", "13")
                .extension(hyper::ext::Protocol::from_static("websocket"))
                .body(Full::<Bytes>::default())
                .unwrap();
            sender.send_request(req).await
        },
    )
    .await
}
