//! rustls glue shared by both ends: PEM files read into certificates and keys with
//! messages that say which file and what is wrong with it, and the rustls configs built
//! from them — the listeners' server config (ALPN `h2`, `http/1.1`) and the upstreams'
//! client config (trusted roots, optional client certificate, ALPN per protocol).
//!
//! The crypto provider is *ring*, passed explicitly to every config (no process-wide
//! default to install or race on).

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} `{}`: {e}", path.display()))
}

/// Every certificate in a PEM file (a chain, or a CA bundle); at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, "certificate file")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}` is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "`{}` holds no certificate (expected a `-----BEGIN CERTIFICATE-----` block)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path, "key file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "`{}` holds no private key (expected a `-----BEGIN PRIVATE KEY-----`, \
             `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)",
            path.display()
        ),
        e => format!("`{}` is not valid PEM: {e}", path.display()),
    })
}

/// A listener's TLS config: the certificate chain and its key, ALPN `h2` then `http/1.1`.
/// Fails when the files cannot be read or parsed, or the key does not match the
/// certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsFileError> {
    let certs = load_certs(cert).map_err(TlsFileError::Cert)?;
    let key_der = load_key(key).map_err(TlsFileError::Key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            TlsFileError::Key(format!(
                "`{}` does not fit the certificate in `{}`: {e}",
                key.display(),
                cert.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Which file of a pair a TLS error is about, so config errors point at the right key.
#[derive(Debug)]
pub enum TlsFileError {
    Cert(String),
    Key(String),
    Ca(String),
}

/// The roots an upstream's certificate must chain to: the PEM bundle `ca_file`, or else
/// the Mozilla root program's roots compiled in (webpki-roots).
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsFileError> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let mut store = RootCertStore::empty();
    for cert in load_certs(path).map_err(TlsFileError::Ca)? {
        store.add(cert).map_err(|e| {
            TlsFileError::Ca(format!(
                "`{}` holds a certificate that cannot be a trust anchor: {e}",
                path.display()
            ))
        })?;
    }
    Ok(store)
}

/// An upstream's TLS client config. `alpn` is offered as is (`h2` for `protocol = "h2"`,
/// else `http/1.1`); `client` is the certificate and key for mutual TLS.
pub fn client_config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsFileError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots(ca_file)?);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = load_certs(cert).map_err(TlsFileError::Cert)?;
            let key_der = load_key(key).map_err(TlsFileError::Key)?;
            builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                TlsFileError::Key(format!(
                    "`{}` does not fit the certificate in `{}`: {e}",
                    key.display(),
                    cert.display()
                ))
            })?
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}
