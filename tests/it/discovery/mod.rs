//! Service discovery through the gateway binary, against real servers: dnsmasq, etcd,
//! ZooKeeper, a watched file, and a Consul health-API responder (no Consul binary can be
//! installed here; `consul_api.rs` follows Consul's documented API). Each test starts its
//! own servers on free ports in a temp dir and stops them when it ends. The tests that
//! need a server are `#[ignore = "needs …"]`: `cargo test` reports them ignored, and
//! `cargo test -- --include-ignored` (what `.ci/run` runs, after installing them) fails if
//! one is missing.
//!
//! Every wait is for an event: traffic reaching exactly the expected replicas (polled with
//! `support::until_ok`), or a log line — never a fixed sleep.

mod consul;
mod consul_api;
mod dns;
mod etcd;
mod file;
mod zookeeper;

use crate::support::{self, client, send, Gateway};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any one awaited change may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(45);

/// A config with one upstream `up` fed by `discovery` (TOML inline table) and one route.
pub fn config(balance: &str, discovery: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"up\"\nbalance = \"{balance}\"\ndiscovery = {discovery}\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"up\"\n"
    )
}

/// Echo upstreams answering with their names (`x-upstream`).
pub async fn echoes<const N: usize>(names: [&'static str; N]) -> [support::Upstream; N] {
    let mut ups = Vec::with_capacity(N);
    for name in names {
        ups.push(support::Upstream::echo(name).await);
    }
    ups.try_into().ok().expect("N upstreams")
}

/// Sends `n` requests; counts who answered (`x-upstream`), or `status N` for other replies.
pub async fn tally(gw: &Gateway, n: usize) -> BTreeMap<String, usize> {
    let c = client();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = send(
            &c,
            http::Request::get(gw.url("/"))
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await;
        let who = match (r.status, r.header("x-upstream")) {
            (200, Some(name)) => name.to_string(),
            (status, _) => format!("status {status}"),
        };
        *seen.entry(who).or_default() += 1;
    }
    seen
}

/// Polls the gateway until traffic reaches exactly the replicas `want` (round robin: a
/// few rounds of requests touch every endpoint); returns how long that took.
pub async fn wait_for(gw: &Gateway, want: &[&str]) -> Duration {
    let start = Instant::now();
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let what = format!("traffic to reach exactly {want:?}");
    support::until_ok(&what, DEADLINE, Duration::from_millis(20), async || {
        let seen = tally(gw, 3 * want.len() + 3).await;
        let got: BTreeSet<String> = seen.keys().cloned().collect();
        if got == want {
            Ok(())
        } else {
            Err(seen)
        }
    })
    .await;
    start.elapsed()
}

/// Asserts that (still) exactly `want` answer.
pub async fn assert_serving(gw: &Gateway, want: &[&str]) {
    let seen = tally(gw, 4 * want.len()).await;
    let got: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(got, want, "{seen:?}");
}

/// A port that was free a moment ago on 127.0.0.1, for a server to listen on (not
/// `support::closed_addr`, which keeps its port bound).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Fails the test when the server program `path` is missing. The tests that need one are
/// `#[ignore]`d, so they run only when asked for (`cargo test -- --include-ignored`, as
/// `.ci/run` does after installing the Debian packages): then a missing one is an error.
pub fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is not installed: apt-get install {package} (.ci/run does this)"
    );
}

/// A server process, killed and reaped on drop.
pub struct Server {
    pub child: Child,
    what: &'static str,
}

impl Server {
    /// Starts `cmd` with its output in `log` (a file, read when a test fails).
    pub fn start(what: &'static str, mut cmd: Command, log: &Path) -> Server {
        let out = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Server { child, what }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} {}", self.what);
    }

    /// Kills the server and waits until it is gone.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Panics (with the server's log) if it has exited.
    pub fn assert_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}):\n{}",
                self.what,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `ready` until it holds (a server accepting requests), with the deadline.
pub async fn until_ready<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let what = format!("{what} to become ready");
    support::until_ok(&what, DEADLINE, Duration::from_millis(50), async || {
        if ready().await {
            Ok(())
        } else {
            Err("not ready")
        }
    })
    .await
}

/// Writes `text` to `path` atomically (a temp file renamed over it), as the README advises.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
