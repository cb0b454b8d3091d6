//! gRPC end to end: a real grpcio server (tests/it/grpc/server.py) behind the
//! gateway, driven by a real grpcio client (tests/it/grpc/client.py), both
//! plaintext HTTP/2 (h2c).
//!
//! Needs `python3` with `grpcio` (`pip install -r tests/it/grpc/requirements.txt`).
//! Without it the test prints a skip reason and passes, except when the `CI`
//! environment variable is set: there it must run, so it fails.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::poll_blocking;

const PYTHON: &str = "python3";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

fn grpc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/grpc")
}

/// A scratch directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("portcullis-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process that is killed and reaped on drop. Its stdout lines arrive
/// on `lines` (read by a background thread, so the pipe never fills); its
/// stderr goes to `stderr_path`.
struct Proc {
    name: &'static str,
    child: Child,
    // Held open: server.py exits when its stdin reaches EOF, so it also goes
    // away if this test process dies without running destructors.
    _stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr_path: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, stderr_path: PathBuf) -> Proc {
        let stderr = File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", stderr_path.display()));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Keep draining even when nobody listens any more.
                let _ = tx.send(line);
            }
        });
        Proc {
            name,
            child,
            _stdin: stdin,
            lines: rx,
            stderr_path,
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Reads stdout lines until `pick` returns `Some`, or panics (with what
    /// was seen, and the process's stderr) on exit or timeout.
    fn wait_for_line<T>(&mut self, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = pick(&line) {
                        return v;
                    }
                    seen.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    let status = self.exit_status();
                    panic!(
                        "{}: no {what} on stdout within {STARTUP_TIMEOUT:?} (exit status: {status:?})\n\
                         stdout so far:\n{}\nstderr:\n{}",
                        self.name,
                        seen.join("\n"),
                        self.stderr()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the process is exiting; wait (a little) for its status.
                    let status = poll_blocking(Duration::from_secs(5), || self.exit_status());
                    panic!(
                        "{}: stdout closed before {what} (exit status: {status:?})\n\
                         stdout:\n{}\nstderr:\n{}",
                        self.name,
                        seen.join("\n"),
                        self.stderr()
                    )
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails the test unless python3 can import grpc.
fn require_python_grpc() {
    let probe = Command::new(PYTHON)
        .args(["-c", "import grpc"])
        .stdin(Stdio::null())
        .output();
    let reason = match probe {
        Ok(out) if out.status.success() => return,
        Ok(out) => format!(
            "`{PYTHON} -c 'import grpc'` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run {PYTHON}: {e}"),
    };
    panic!("{reason}\ninstall it with: pip install -r tests/it/grpc/requirements.txt (.ci/run does this)");
}

/// Runs client.py against `addr` and returns its parsed JSON, panicking with
/// everything useful (labelled by `side`) when it does not exit 0.
fn run_client(side: &str, addr: &str, context: &dyn Fn() -> String) -> serde_json::Value {
    let out = Command::new(PYTHON)
        .arg(grpc_dir().join("client.py"))
        .arg(addr)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("[{side}] spawn client.py: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!(
            "[{side}] client.py {addr} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
            out.status,
            context()
        );
    }
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("[{side}] client.py printed no JSON ({e})\nstdout:\n{stdout}\nstderr:\n{stderr}")
    })
}

/// Asserts every field of client.py's report.
fn check_results(side: &str, v: &serde_json::Value, context: &dyn Fn() -> String) {
    let expect = |field: &str, want: serde_json::Value| {
        assert_eq!(
            v[field],
            want,
            "[{side}] field {field:?}: got {}, want {want}\nfull result: {v}\n{}",
            v[field],
            context()
        );
    };
    expect("errors", serde_json::json!({}));
    expect("echo", serde_json::json!("echo:hello"));
    expect("initial_x_model", serde_json::json!("demo"));
    expect("trailer_x_model", serde_json::json!("demo"));
    expect("stream", serde_json::json!(["tok-0", "tok-1", "tok-2"]));
    expect("stream_code", serde_json::json!("OK"));
    expect("fail_code", serde_json::json!("NOT_FOUND"));
    expect("fail_details", serde_json::json!("no such model"));
    expect("echo_large_len", serde_json::json!(256 * 1024 + 5));
    expect("echo_large_ok", serde_json::json!(true));
}

/// The address in a gateway line `listening on http://127.0.0.1:PORT`.
/// Anchored at the start, so `admin listening on http://...` does not match.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("listening on http://")?;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '/')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[test]
#[ignore = "needs python3 grpcio (pip install -r tests/it/grpc/requirements.txt; .ci/run installs it)"]
fn grpc_through_gateway() {
    require_python_grpc();
    let tmp = TempDir::new("grpc");

    // 1. The upstream gRPC server.
    let mut cmd = Command::new(PYTHON);
    cmd.arg(grpc_dir().join("server.py"));
    let mut server = Proc::spawn("server.py", cmd, tmp.0.join("server.stderr"));
    let server_port: u16 = server.wait_for_line("`PORT <n>` line", |l| {
        l.strip_prefix("PORT ").and_then(|p| p.trim().parse().ok())
    });
    let server_addr = format!("127.0.0.1:{server_port}");

    // 2. Client straight to the server: if this fails, the harness or the
    //    Python side is broken, not the gateway.
    let server_ctx = || format!("server.py stderr:\n{}", server.stderr());
    let direct = run_client("direct to server.py", &server_addr, &server_ctx);
    check_results("direct to server.py", &direct, &server_ctx);

    // 3. The gateway in front of it.
    let config = tmp.0.join("portcullis.toml");
    fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "grpc"
protocol = "h2"
targets = [ {{ address = "{server_addr}" }} ]

[[routes]]
name = "grpc"
path_prefix = "/demo.Models/"
upstream = "grpc"
"#
        ),
    )
    .expect("write gateway config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("run").arg("--config").arg(&config);
    let mut gateway = Proc::spawn("portcullis", cmd, tmp.0.join("gateway.stderr"));
    let gw_addr =
        gateway.wait_for_line("`listening on http://127.0.0.1:PORT` line", listening_addr);

    // 4. The same client through the gateway.
    let gw_ctx = || {
        format!(
            "gateway stderr:\n{}\nserver.py stderr:\n{}",
            gateway.stderr(),
            server.stderr()
        )
    };
    let via = run_client("through gateway", &gw_addr.to_string(), &gw_ctx);
    check_results("through gateway", &via, &gw_ctx);
}

#[test]
fn listening_line_parses() {
    assert_eq!(
        listening_addr("listening on http://127.0.0.1:8080"),
        Some("127.0.0.1:8080".parse().unwrap())
    );
    assert_eq!(
        listening_addr("listening on http://127.0.0.1:41234/\r"),
        Some("127.0.0.1:41234".parse().unwrap())
    );
    assert_eq!(
        listening_addr("admin listening on http://127.0.0.1:9000"),
        None
    );
    assert_eq!(listening_addr("listening on http://nope"), None);
    assert_eq!(listening_addr("starting"), None);
}
