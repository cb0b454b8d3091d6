//! TLS to upstreams: a hyper-util connector that dials TCP with the same `HttpConnector`
//! as plain upstreams (nodelay, connect timeout) and then runs a rustls client handshake
//! with the upstream's roots, SNI and ALPN. A connection whose ALPN came out `h2` is
//! reported as such, so the pool speaks HTTP/2 on it.

use crate::config::UpstreamTls;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::BoxError;

#[derive(Clone)]
pub struct TlsConnector {
    tcp: HttpConnector,
    tls: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    handshake_timeout: Duration,
}

impl TlsConnector {
    /// `tcp` must accept `https` URIs (`enforce_http(false)`). The handshake is bounded
    /// by `handshake_timeout` (the upstream's connect timeout) on top of the TCP connect.
    pub fn new(mut tcp: HttpConnector, tls: &UpstreamTls, handshake_timeout: Duration) -> Self {
        tcp.enforce_http(false);
        TlsConnector {
            tcp,
            tls: tokio_rustls::TlsConnector::from(tls.client.clone()),
            server_name: tls.server_name.clone(),
            handshake_timeout,
        }
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TlsConnection;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConnection, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let name = self.server_name.clone().or_else(|| {
            dst.authority()
                .and_then(|a| crate::config::target_server_name(a.as_str()))
        });
        let tcp = self.tcp.call(dst);
        let tls = self.tls.clone();
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            let name = name.ok_or("the target has no host usable as a TLS server name")?;
            let tcp = tcp.await?.into_inner();
            let stream = tokio::time::timeout(timeout, tls.connect(name, tcp))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(TlsConnection(TokioIo::new(stream)))
        })
    }
}

/// An established TLS connection to an upstream.
pub struct TlsConnection(TokioIo<TlsStream<TcpStream>>);

impl Connection for TlsConnection {
    fn connected(&self) -> Connected {
        let (tcp, tls) = self.0.inner().get_ref();
        let connected = tcp.connected();
        if tls.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}
