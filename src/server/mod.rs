//! Listeners and connections: HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on the same
//! port, keep-alive, header size and header-read-time limits, and graceful shutdown on
//! SIGINT/SIGTERM (stop accepting, drain in-flight requests up to `drain_timeout`).

use crate::admin;
use crate::config::Config;
use crate::proxy::Gateway;
use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Binds every listener of `config`, announces each on stdout as
/// `listening on http://ADDR` (tests and scripts read this), then serves until `shutdown`
/// resolves and in-flight requests have drained.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let gateway = Arc::new(Gateway::new(config));
    let server = gateway.server.clone();
    let (tx, mut rx) = mpsc::channel::<(TcpStream, SocketAddr, Kind)>(1024);
    let mut acceptors = Vec::new();
    let mut bound = Vec::new();
    for addr in &server.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        bound.push((l, Kind::Proxy));
    }
    if let Some(addr) = server.admin_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on admin address {addr}"))?;
        bound.push((l, Kind::Admin));
    }
    {
        let mut out = std::io::stdout().lock();
        for (l, kind) in &bound {
            let a = l.local_addr()?;
            match kind {
                Kind::Proxy => writeln!(out, "listening on http://{a}")?,
                Kind::Admin => writeln!(out, "admin listening on http://{a}")?,
            }
            tracing::info!(address = %a, admin = matches!(kind, Kind::Admin), "listening");
        }
        out.flush()?;
    }
    for (l, kind) in bound {
        let tx = tx.clone();
        acceptors.push(tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, peer)) => {
                        if tx.send((s, peer, kind)).await.is_err() {
                            return;
                        }
                    }
                    // Out of file descriptors and the like: log and keep accepting.
                    Err(e) => {
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    drop(tx);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_size.max(8192) + 1024)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(server.max_header_size as u32);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = rx.recv() => {
                let Some((stream, peer, kind)) = accepted else { break };
                let _ = stream.set_nodelay(true);
                let io = TokioIo::new(stream);
                match kind {
                    Kind::Proxy => {
                        let gw = gateway.clone();
                        let svc = service_fn(move |req| {
                            let gw = gw.clone();
                            async move { Ok::<_, Infallible>(gw.handle(req, peer).await) }
                        });
                        let conn = graceful.watch(builder.serve_connection(io, svc).into_owned());
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(peer = %peer, error = %e, "connection ended with error");
                            }
                        });
                    }
                    Kind::Admin => {
                        let gw = gateway.clone();
                        let svc = service_fn(move |req| {
                            let gw = gw.clone();
                            async move { Ok::<_, Infallible>(admin::handle(&gw, req).await) }
                        });
                        let conn = graceful.watch(builder.serve_connection(io, svc).into_owned());
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    for a in &acceptors {
        a.abort();
    }
    for a in acceptors {
        // Wait until each listener is really closed before saying so.
        let _ = a.await;
    }
    drop(rx);
    println!("shutting down: listeners closed, draining in-flight requests");
    tracing::info!(drain_timeout = ?server.drain_timeout, "shutting down: no new connections, draining in-flight requests");
    match tokio::time::timeout(server.drain_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!("drain timeout passed; closing remaining connections"),
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Proxy,
    Admin,
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
