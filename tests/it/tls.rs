//! TLS at both ends, over real sockets with certificates made here by rcgen: the gateway
//! terminating TLS (ALPN h2 and http/1.1 next to a plain listener), HTTPS upstreams with
//! a private CA and SNI, mutual TLS to an upstream, and bad certificate files as config
//! errors.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

/// A private CA and the files of the certificates it issued, in a scratch directory.
pub(crate) struct Pki {
    pub(crate) dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portcullis test CA");
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let dir = TempDir::new();
        dir.write("ca.pem", &ca_pem);
        Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// Issues a certificate for `names` (DNS names or IPs) and writes `NAME.pem` and
    /// `NAME.key`; `client` makes it a client-authentication certificate.
    pub(crate) fn issue(&self, name: &str, names: &[&str], client: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            self.dir.write(&format!("{name}.pem"), &cert.pem()),
            self.dir.write(&format!("{name}.key"), &key.serialize_pem()),
        )
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A response over TLS: the HTTP version, status and the echo upstream's JSON.
struct TlsReply {
    version: Version,
    status: u16,
    json: serde_json::Value,
}

/// One request to the gateway's TLS listener with the given ALPN offer.
async fn https_get(pki: &Pki, addr: SocketAddr, alpn: &[u8], path: &str) -> TlsReply {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the gateway");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(alpn),
        "the gateway agreed to the offered protocol"
    );
    let io = TokioIo::new(tls);
    let resp = if alpn == b"h2" {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://localhost{path}"))
            .body(Full::<Bytes>::default())
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Full::<Bytes>::default())
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    TlsReply {
        version: parts.version,
        status: parts.status.as_u16(),
        json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    }
}

/// An HTTPS upstream (HTTP/1.1 and h2 by ALPN) answering with the JSON echo; it records
/// the SNI of every handshake. With `client_ca` it demands a client certificate that
/// chains to it.
struct TlsUpstream {
    addr: SocketAddr,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    async fn start(pki: &Pki, cert: &(PathBuf, PathBuf), require_client_cert: bool) -> Self {
        let config = if require_client_cert {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(pki.roots()),
                provider(),
            )
            .build()
            .unwrap();
            let mut c = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    portcullis::tls::load_certs(&cert.0).unwrap(),
                    portcullis::tls::load_key(&cert.1).unwrap(),
                )
                .unwrap();
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(c)
        } else {
            portcullis::tls::server_config(&cert.0, &cert.1).unwrap()
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sni = Arc::new(Mutex::new(Vec::new()));
        let seen = sni.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    seen.lock()
                        .unwrap()
                        .push(tls.get_ref().1.server_name().map(str::to_string));
                    let svc = service_fn(|req| async move {
                        Ok::<_, Infallible>(echo_response("tls-up", req).await)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsUpstream { addr, sni, task }
    }

    fn sni(&self) -> Vec<Option<String>> {
        self.sni.lock().unwrap().clone()
    }
}

const ROUTE: &str = "[[routes]]\nname = \"r\"\npath_prefix = \"/v1\"\nupstream = \"up\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn tls_listener_serves_h2_and_http1_next_to_a_plain_one() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("gateway", &["localhost"], false);
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\", {{ address = \"127.0.0.1:0\", cert = \"{}\", key = \"{}\" }}]\n\n\
         [[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"{}\" }}]\n\n{ROUTE}",
        cert.display(),
        key.display(),
        up.addr
    ));
    let tls_addr = gw.tls_addr.expect("`listening on https://` announced");
    assert_ne!(tls_addr, gw.addr);

    let h2 = https_get(&pki, tls_addr, b"h2", "/v1/a").await;
    assert_eq!((h2.status, h2.version), (200, Version::HTTP_2));
    assert_eq!(h2.json["headers"]["x-forwarded-proto"], "https");
    assert_eq!(h2.json["path"], "/v1/a");

    let h1 = https_get(&pki, tls_addr, b"http/1.1", "/v1/b").await;
    assert_eq!((h1.status, h1.version), (200, Version::HTTP_11));
    assert_eq!(h1.json["headers"]["x-forwarded-proto"], "https");

    // The plain listener is still plain.
    let plain = get(&gw.url("/v1/c")).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"], "http");
}

/// Responses larger than the socket takes at once reach an HTTP/1.1 client over TLS
/// whole, one after the other on one connection (the own HTTP/1 server writes them and
/// flushes; bytes left in TLS's buffer would leave the client waiting).
#[tokio::test(flavor = "multi_thread")]
async fn a_large_http1_response_over_tls_arrives_whole() {
    const SIZE: usize = 8 << 20;
    let pki = Pki::new();
    let (cert, key) = pki.issue("gateway", &["localhost"], false);
    let up = Upstream::start(|_req| async { http::Response::new(full(vec![b'x'; SIZE])) }).await;
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [{{ address = \"127.0.0.1:0\", cert = \"{}\", key = \"{}\" }}]\n\n\
         [[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"{}\" }}]\n\n{ROUTE}",
        cert.display(),
        key.display(),
        up.addr
    ));
    let tls_addr = gw.tls_addr.expect("`listening on https://` announced");
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = Request::get("/v1/big")
            .header("host", "localhost")
            .body(Full::<Bytes>::default())
            .unwrap();
        let body = tokio::time::timeout(WAIT, async {
            send.ready().await.unwrap();
            let resp = send.send_request(req).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        })
        .await
        .expect("the response did not arrive whole");
        assert_eq!(body.len(), SIZE);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unfinished_tls_handshakes_are_cut_after_the_timeout() {
    use tokio::io::AsyncReadExt as _;
    let pki = Pki::new();
    let (cert, key) = pki.issue("gateway", &["localhost"], false);
    let gw = Gateway::start(&format!(
        "[server]\nlisten = {{ address = \"127.0.0.1:0\", cert = \"{}\", key = \"{}\" }}\n\
         tls_handshake_timeout = \"200ms\"\n\n\
         [[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"127.0.0.1:9\" }}]\n\n{ROUTE}",
        cert.display(),
        key.display(),
    ));
    assert_eq!(gw.tls_addr, Some(gw.addr), "a TLS-only gateway");
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the gateway closes a connection that never says hello");
    assert_eq!(n.unwrap_or(0), 0);
    // Handshakes that do finish are served.
    assert_eq!(https_get(&pki, gw.addr, b"h2", "/nope").await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstreams_with_a_private_ca_and_sni() {
    let pki = Pki::new();
    let named = TlsUpstream::start(
        &pki,
        &pki.issue("named", &["models.internal"], false),
        false,
    )
    .await;
    let local = TlsUpstream::start(&pki, &pki.issue("local", &["localhost"], false), false).await;
    let ca = pki.path("ca.pem");
    let upstream = |name: &str, target: String, extra: &str| {
        format!(
            "[[upstreams]]\nname = \"{name}\"\ntargets = [{{ address = \"{target}\" }}]\ntls = true\n{extra}\n"
        )
    };
    let route = |name: &str| {
        format!("[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"{name}\"\n")
    };
    let ca_line = format!("ca_file = \"{}\"", ca.display());
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n{}{}{}{}{}{}{}{}",
        // SNI override: the target is an IP, the certificate names models.internal.
        upstream(
            "sni",
            named.addr.to_string(),
            &format!("{ca_line}\nsni = \"models.internal\"")
        ),
        // The same over HTTP/2 (ALPN h2).
        upstream(
            "sni-h2",
            named.addr.to_string(),
            &format!("{ca_line}\nsni = \"models.internal\"\nprotocol = \"h2\"")
        ),
        // Default SNI: the target's host name.
        upstream("host", format!("localhost:{}", local.addr.port()), &ca_line),
        // Default roots (webpki-roots) do not know the private CA.
        upstream(
            "public-roots",
            format!("localhost:{}", local.addr.port()),
            ""
        ),
        route("sni"),
        route("sni-h2"),
        route("host"),
        route("public-roots"),
    ));

    let r = get(&gw.url("/sni/x")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert_eq!(r.json()["path"], "/sni/x");
    let r = get(&gw.url("/sni-h2/x")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(
        named.sni(),
        vec![Some("models.internal".to_string()); 2],
        "one handshake per upstream, both with the sni override"
    );

    let r = get(&gw.url("/host/y")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(local.sni(), vec![Some("localhost".to_string())]);

    let r = get(&gw.url("/public-roots/z")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_connect_failed");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("certificate"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_to_an_upstream() {
    let pki = Pki::new();
    let up = TlsUpstream::start(&pki, &pki.issue("mtls", &["localhost"], false), true).await;
    let (client_cert, client_key) = pki.issue("gateway-client", &["gateway"], true);
    let target = format!("localhost:{}", up.addr.port());
    let ca = pki.path("ca.pem");
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nname = \"anon\"\ntargets = [{{ address = \"{target}\" }}]\ntls = true\nca_file = \"{ca}\"\n\n\
         [[upstreams]]\nname = \"mtls\"\ntargets = [{{ address = \"{target}\" }}]\ntls = true\nca_file = \"{ca}\"\n\
         client_cert = \"{}\"\nclient_key = \"{}\"\n\n\
         [[routes]]\nname = \"anon\"\npath_prefix = \"/anon\"\nupstream = \"anon\"\n\n\
         [[routes]]\nname = \"mtls\"\npath_prefix = \"/mtls\"\nupstream = \"mtls\"\n",
        client_cert.display(),
        client_key.display(),
        ca = ca.display(),
    ));
    let r = get(&gw.url("/anon")).await;
    assert_eq!(r.status, 502, "no client certificate: {:?}", r.body);
    let r = get(&gw.url("/mtls")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["upstream"], "tls-up");
}

/// `portcullis validate` on `text` refuses it with `key` and `needle` in the message.
fn refuses(dir: &TempDir, text: &str, key: &str, needle: &str) -> String {
    let path = dir.write("bad.toml", text);
    let (ok, out) = validate(&path);
    assert!(!ok, "accepted:\n{text}");
    assert!(
        out.contains(&format!("key `{key}`")) && out.contains(needle),
        "expected `{key}` and {needle:?} in: {out}"
    );
    out
}

#[test]
fn bad_tls_files_are_config_errors() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("gateway", &["localhost"], false);
    let (other_cert, _) = pki.issue("other", &["localhost"], false);
    let garbage = pki.dir.write("garbage.pem", "not a pem file\n");
    let dir = TempDir::new();
    let listen = |c: &std::path::Path, k: &std::path::Path| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\", {{ address = \"127.0.0.1:0\", cert = \"{}\", key = \"{}\" }}]\n\n\
             [[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"127.0.0.1:9\" }}]\n",
            c.display(),
            k.display()
        )
    };
    // Good files pass.
    let ok = dir.write("ok.toml", &listen(&cert, &key));
    assert_valid(&ok);

    let out = refuses(
        &dir,
        &listen(&pki.path("missing.pem"), &key),
        "server.listen[1].cert",
        "cannot read certificate file",
    );
    assert!(
        out.contains("missing.pem") && out.contains("bad.toml:2:"),
        "{out}"
    );
    refuses(
        &dir,
        &listen(&garbage, &key),
        "server.listen[1].cert",
        "holds no certificate",
    );
    refuses(
        &dir,
        &listen(&cert, &garbage),
        "server.listen[1].key",
        "holds no private key",
    );
    refuses(
        &dir,
        &listen(&cert, &pki.path("missing.key")),
        "server.listen[1].key",
        "cannot read key file",
    );
    // A key that is not the certificate's.
    refuses(
        &dir,
        &listen(&other_cert, &key),
        "server.listen[1].key",
        "does not fit the certificate",
    );
    refuses(
        &dir,
        "[server]\nlisten = { address = \"127.0.0.1:0\", cert = \"c.pem\" }\n",
        "server.listen.key",
        "`cert` needs a `key`",
    );
    // An unknown key in a listener table is pointed at (the key path is the text
    // heuristic's, which does not descend into inline tables).
    let out = refuses(
        &dir,
        "[server]\nlisten = [{ address = \"127.0.0.1:0\", certificate = \"c.pem\" }]\n",
        "server.certificate",
        "unknown field `certificate`, expected one of `address`, `cert`, `key`",
    );
    assert!(out.contains("bad.toml:2:38:"), "{out}");

    let up = |extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"127.0.0.1:9\" }}]\n{extra}\n"
        )
    };
    refuses(
        &dir,
        &up(&format!(
            "tls = true\nca_file = \"{}\"",
            pki.path("nope.pem").display()
        )),
        "upstreams[0].ca_file",
        "cannot read certificate file",
    );
    refuses(
        &dir,
        &up(&format!(
            "tls = true\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            cert.display(),
            garbage.display()
        )),
        "upstreams[0].client_key",
        "holds no private key",
    );
    refuses(
        &dir,
        &up(&format!("tls = true\nclient_cert = \"{}\"", cert.display())),
        "upstreams[0].client_key",
        "`client_cert` needs a `client_key`",
    );
    refuses(
        &dir,
        &up("ca_file = \"ca.pem\""),
        "upstreams[0].ca_file",
        "only applies with `tls = true`",
    );
    refuses(
        &dir,
        &up("tls = true\nsni = \"not a name\""),
        "upstreams[0].sni",
        "not a DNS name",
    );
}
