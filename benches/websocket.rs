//! WebSocket echo benchmark (not a test; run by `bench/websocket.sh`): round trips per
//! second and p99 latency through Portcullis and through nginx, against the same echo
//! server, in the same run, and the ratios.
//!
//! Everything is on 127.0.0.1 with ports picked at run time; it stops by itself. It starts
//! a tokio-tungstenite echo server in this process, a private nginx (`proxy_http_version
//! 1.1` + the `Upgrade`/`Connection` headers, its own prefix in a temp dir) and the
//! gateway binary, then for `ROUNDS` rounds runs `CONNECTIONS` clients that each send a
//! `MESSAGE`-byte binary message and wait for its echo, for `DURATION` seconds per target
//! (targets interleaved, the order alternating per round). Env: `PORTCULLIS_BIN`
//! (default `target/release/portcullis`), `NGINX` (`/usr/sbin/nginx`), `DURATION` (10),
//! `ROUNDS` (3), `CONNECTIONS` (32), `MESSAGE` (64).

use futures_util::{SinkExt as _, StreamExt as _};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_binary() || m.is_text()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nginx(dir: &std::path::Path, upstream: SocketAddr) -> (Proc, SocketAddr) {
    let port = free_port();
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  upstream ws {{ server {upstream}; keepalive 64; }}\n\
           map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
               proxy_pass http://ws;\n      proxy_http_version 1.1;\n\
               proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection $connection_upgrade;\n\
               proxy_read_timeout 300s;\n    }}\n  }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx: String = env("NGINX", "/usr/sbin/nginx".to_string());
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start nginx");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nginx did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), addr)
}

fn start_portcullis(dir: &std::path::Path, upstream: SocketAddr) -> (Proc, SocketAddr) {
    let conf = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n\n[[upstreams]]\nname = \"ws\"\ntargets = [{{ address = \"{upstream}\" }}]\n\n[[routes]]\nname = \"ws\"\npath_prefix = \"/\"\nupstream = \"ws\"\n"
    );
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, conf).unwrap();
    let bin: String = env("PORTCULLIS_BIN", "target/release/portcullis".to_string());
    let mut child = Command::new(&bin)
        .args(["run", "--log-level", "warn", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let out = BufReader::new(child.stdout.take().unwrap());
    let addr = out
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on http://").map(str::to_string))
        .expect("the gateway announces its listener");
    (Proc(child), addr.parse().unwrap())
}

/// One measurement: `connections` clients echoing for `duration`. Round trips per second
/// and the p99 latency in microseconds.
async fn run(
    target: SocketAddr,
    connections: usize,
    duration: Duration,
    size: usize,
) -> (f64, u64) {
    let mut clients = Vec::new();
    for _ in 0..connections {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{target}/echo"))
            .await
            .expect("handshake");
        clients.push(ws);
    }
    let payload = bytes::Bytes::from(vec![7u8; size]);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    ws.send(Message::Binary(payload.clone())).await.unwrap();
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Binary(_))) => break,
                            Some(Ok(_)) => continue,
                            other => panic!("echo failed: {other:?}"),
                        }
                    }
                    lat.push(t.elapsed().as_micros() as u64);
                }
                let _ = ws.close(None).await;
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let p99 = all
        .get((all.len() as f64 * 0.99) as usize)
        .copied()
        .unwrap_or(0);
    (all.len() as f64 / secs, p99)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let duration = Duration::from_secs(env("DURATION", 10));
    let rounds: usize = env("ROUNDS", 3);
    let connections: usize = env("CONNECTIONS", 32);
    let size: usize = env("MESSAGE", 64);
    let dir: PathBuf =
        std::env::temp_dir().join(format!("portcullis-ws-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).unwrap();

    let upstream = echo_server().await;
    let (_nginx, nginx) = start_nginx(&dir, upstream);
    let (_gw, gw) = start_portcullis(&dir, upstream);
    println!(
        "WebSocket echo: {connections} connections, {size}-byte messages, {rounds} rounds of {}s per target",
        duration.as_secs()
    );
    let targets = [("direct", upstream), ("nginx", nginx), ("portcullis", gw)];
    // Warm-up: connections, pools, caches.
    for (_, t) in &targets {
        run(*t, connections, Duration::from_secs(1), size).await;
    }
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); targets.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (rps, p99) = run(targets[i].1, connections, duration, size).await;
            println!(
                "round {round} {:>10}: {rps:>10.0} round trips/s  p99 {:>8.3} ms",
                targets[i].0,
                p99 as f64 / 1e3
            );
            results[i].0.push(rps);
            results[i].1.push(p99 as f64);
        }
    }
    println!("\nmedian over rounds:");
    let mut med = Vec::new();
    for (i, (name, _)) in targets.iter().enumerate() {
        let rps = median(&mut results[i].0);
        let p99 = median(&mut results[i].1) / 1e3;
        println!("{name:>10}: {rps:>10.0} round trips/s  p99 {p99:>8.3} ms");
        med.push((rps, p99));
    }
    let (n, p) = (med[1], med[2]);
    println!(
        "\nportcullis/nginx: round trips/s {:.2}, p99 {:.2}",
        p.0 / n.0,
        p.1 / n.1
    );
    let _ = std::fs::remove_dir_all(&dir);
}
