//! `[server]`: listeners (TLS terminated on those with a certificate), the access log,
//! the admin API, timeouts and limits of client connections, worker threads.

use super::error::{ConfigError, Source};
use super::section::Section;
use super::units::{Dur, Size};
use crate::tls::TlsFileError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

// ---------------------------------------------------------------------------------------
// As written.
// ---------------------------------------------------------------------------------------

/// `server.listen`: one entry or a list of them, e.g.
/// `listen = ["127.0.0.1:8080", { address = "127.0.0.1:8443", cert = "server.pem", key = "server.key" }]`.
enum RawListen {
    One(RawListenEntry),
    Many(Vec<Spanned<RawListenEntry>>),
}

/// One listener: `"IP:PORT"`, or a table that may carry a certificate and key (PEM) to
/// terminate TLS on it.
enum RawListenEntry {
    Plain(String),
    Table(RawListenTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListenTable {
    address: Spanned<String>,
    /// `cert = "server.pem"`: the certificate chain, leaf first (relative to the config file).
    cert: Option<Spanned<String>>,
    /// `key = "server.key"`: its private key (PKCS#8, PKCS#1 or SEC1).
    key: Option<Spanned<String>>,
}

const LISTEN_EXPECTED: &str =
    "an address \"IP:PORT\", a table { address, cert, key } or a list of them";

impl<'de> Deserialize<'de> for RawListenEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawListenEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address \"IP:PORT\" or a table { address, cert, key }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RawListenEntry, E> {
                Ok(RawListenEntry::Plain(s.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawListenEntry, A::Error> {
                RawListenTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawListenEntry::Table)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawListen;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(LISTEN_EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RawListen, E> {
                Ok(RawListen::One(RawListenEntry::Plain(s.to_string())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawListen, A::Error> {
                RawListenTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawListen::One(RawListenEntry::Table(t)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawListen, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = seq.next_element()? {
                    v.push(e);
                }
                Ok(RawListen::Many(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `server.access_log = { path = "access.log", format = "json" }`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    /// Appended to (created when missing); relative to the config file.
    path: Spanned<String>,
    #[serde(default)]
    format: AccessLogFormat,
}

/// `[server]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    /// `listen = "127.0.0.1:8080"`, a list of addresses, or TLS listeners as tables:
    /// `listen = ["127.0.0.1:8080", { address = "127.0.0.1:8443", cert = "s.pem", key = "s.key" }]`
    listen: Spanned<RawListen>,
    /// `tls_handshake_timeout = "10s"`: a TLS client must finish its handshake in this time.
    tls_handshake_timeout: Option<Dur>,
    /// `access_log = { path = "access.log", format = "json" | "text" }`: access-log lines
    /// go to this file instead of stderr.
    access_log: Option<Spanned<RawAccessLog>>,
    /// `admin_listen = "127.0.0.1:9901"`: the admin API, metrics and dashboard.
    admin_listen: Option<Spanned<String>>,
    /// `admin_token = "…"`: bearer token the admin API requires (required when
    /// `admin_listen` is not a loopback address).
    admin_token: Option<Spanned<String>>,
    /// `watch_config = false`: reload when the config file or a plugin file changes.
    #[serde(default)]
    watch_config: bool,
    /// `drain_timeout = "30s"`: how long in-flight requests may run after SIGINT/SIGTERM.
    drain_timeout: Option<Dur>,
    /// `header_read_timeout = "10s"`: a client must send a request's whole head in this time.
    header_read_timeout: Option<Dur>,
    /// `first_byte_timeout = "10s"`: a new connection (after its TLS handshake) must send
    /// enough to tell HTTP/1 from the HTTP/2 preface in this time.
    first_byte_timeout: Option<Spanned<Dur>>,
    /// `keep_alive_timeout = "60s"`: a connection with no request in flight is closed
    /// after this long.
    keep_alive_timeout: Option<Spanned<Dur>>,
    /// `http2_keep_alive_interval = "20s"`: an HTTP/2 connection is pinged this often.
    http2_keep_alive_interval: Option<Spanned<Dur>>,
    /// `http2_keep_alive_timeout = "20s"`: an HTTP/2 connection whose ping is not
    /// answered in this time is closed.
    http2_keep_alive_timeout: Option<Spanned<Dur>>,
    /// `max_connections = 10000`: open client connections on the proxy listeners; at the
    /// cap the connection idle the longest is closed to make room.
    max_connections: Option<Spanned<usize>>,
    /// `max_header_size = "64KiB"`: larger request heads get 431.
    max_header_size: Option<Size>,
    /// `max_body_size = "10MiB"`: default request body limit of every route (413 beyond).
    max_body_size: Option<Size>,
    /// `trust_forwarded_headers = false`: append to an incoming X-Forwarded-For chain
    /// instead of replacing it (only behind a trusted proxy).
    #[serde(default)]
    trust_forwarded_headers: bool,
    /// `allow_underscores_in_headers = false`: pass request header names containing `_`
    /// on (by default they are dropped, as nginx does: CGI-style frameworks read
    /// `X_Portcullis_Consumer` as `X-Portcullis-Consumer`).
    #[serde(default)]
    allow_underscores_in_headers: bool,
    /// `workers = 2`: worker threads, each with its own event loop and upstream
    /// connection pools (default: the number of CPUs).
    workers: Option<Spanned<usize>>,
    /// `plugin_cache_dir = "/var/cache/portcullis"`: where compiled plugins are cached
    /// (default: `$XDG_CACHE_HOME/portcullis/wasm` or `~/.cache/portcullis/wasm`).
    plugin_cache_dir: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Validated.
// ---------------------------------------------------------------------------------------

/// Line format of an access-log file.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    #[default]
    Json,
    Text,
}

/// `server.access_log`: the access log goes to this file.
#[derive(Clone, Debug)]
pub struct AccessLogFile {
    /// Resolved against the config file's folder.
    pub path: PathBuf,
    pub format: AccessLogFormat,
}

/// One listener; `tls` set when it terminates TLS.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    pub address: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: Vec<ListenConfig>,
    pub tls_handshake_timeout: Duration,
    pub access_log: Option<AccessLogFile>,
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub watch_config: bool,
    pub drain_timeout: Duration,
    pub header_read_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    pub max_connections: usize,
    pub max_header_size: usize,
    pub trust_forwarded_headers: bool,
    pub allow_underscores_in_headers: bool,
    pub workers: usize,
    pub plugin_cache_dir: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------

/// Validates `[server]`. Returns it with the request body limit that routes default to
/// (`max_body_size`), which the server section sets for all of them.
pub(super) fn validate(
    src: &Source<'_>,
    raw: Spanned<RawServer>,
) -> Result<(ServerConfig, u64), ConfigError> {
    let cx = Section::new(src, "server", raw.span());
    let s = raw.into_inner();
    let base = src.file.parent().unwrap_or(Path::new("."));
    let listen_span = s.listen.span();
    let entries = match s.listen.into_inner() {
        RawListen::One(e) => vec![(listen_span.clone(), "listen".to_string(), e)],
        RawListen::Many(v) => v
            .into_iter()
            .enumerate()
            .map(|(i, e)| (e.span(), format!("listen[{i}]"), e.into_inner()))
            .collect(),
    };
    if entries.is_empty() {
        return Err(cx.error(listen_span, "listen", "needs at least one address"));
    }
    let listen = entries
        .into_iter()
        .map(|(span, key, e)| listen_entry(&cx, base, span, &key, e))
        .collect::<Result<Vec<_>, _>>()?;
    let access_log = match s.access_log {
        None => None,
        Some(a) => Some(access_log(&cx, base, a.into_inner())?),
    };
    let admin_listen = s
        .admin_listen
        .as_ref()
        .map(|a| parse_addr(&cx, a, "admin_listen"))
        .transpose()?;
    // `max_header_size` has no span of its own: an error about it points at `[server]`.
    let max_header_size = s.max_header_size.map(|v| Spanned::new(cx.span.clone(), v));
    let max_header_size = cx
        .between(
            &max_header_size,
            "max_header_size",
            Size(1024)..=Size(16 * 1024 * 1024),
        )?
        .map_or(64 * 1024, |v| v.0);
    let admin_token = match (&s.admin_token, admin_listen) {
        (Some(t), _) if t.get_ref().len() < 16 || t.get_ref().chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err(cx.error(
                t.span(),
                "admin_token",
                "must be at least 16 characters, without spaces or control characters",
            ))
        }
        (Some(t), _) => Some(t.get_ref().clone()),
        (None, Some(a)) if !a.ip().is_loopback() => {
            return Err(cx.error(
                s.admin_listen.as_ref().map_or(cx.span.clone(), |a| a.span()),
                "admin_token",
                format!("admin_listen {a} is not a loopback address: set admin_token so the admin API is not open to the network"),
            ))
        }
        (None, _) => None,
    };
    let server = ServerConfig {
        listen,
        tls_handshake_timeout: s
            .tls_handshake_timeout
            .map_or(Duration::from_secs(10), |d| d.0),
        access_log,
        admin_listen,
        admin_token,
        watch_config: s.watch_config,
        drain_timeout: s.drain_timeout.map_or(Duration::from_secs(30), |d| d.0),
        header_read_timeout: s
            .header_read_timeout
            .map_or(Duration::from_secs(10), |d| d.0),
        first_byte_timeout: cx
            .positive(&s.first_byte_timeout, "first_byte_timeout")?
            .unwrap_or(Duration::from_secs(10)),
        keep_alive_timeout: cx
            .positive(&s.keep_alive_timeout, "keep_alive_timeout")?
            .unwrap_or(Duration::from_secs(60)),
        http2_keep_alive_interval: cx
            .positive(&s.http2_keep_alive_interval, "http2_keep_alive_interval")?
            .unwrap_or(Duration::from_secs(20)),
        http2_keep_alive_timeout: cx
            .positive(&s.http2_keep_alive_timeout, "http2_keep_alive_timeout")?
            .unwrap_or(Duration::from_secs(20)),
        max_connections: cx
            .between(&s.max_connections, "max_connections", 1..=10_000_000)?
            .unwrap_or(10_000),
        max_header_size: max_header_size as usize,
        trust_forwarded_headers: s.trust_forwarded_headers,
        allow_underscores_in_headers: s.allow_underscores_in_headers,
        // Relative to the config file like every other path, and absolute (wasmtime's
        // cache refuses a relative directory).
        plugin_cache_dir: s.plugin_cache_dir.as_ref().map(|d| {
            let dir = base.join(d);
            std::path::absolute(&dir).unwrap_or(dir)
        }),
        workers: cx
            .between(&s.workers, "workers", 1..=1024)?
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    Ok((server, s.max_body_size.map_or(10 << 20, |v| v.0)))
}

/// `server.access_log`: its folder must exist.
fn access_log(
    cx: &Section<'_>,
    base: &Path,
    a: RawAccessLog,
) -> Result<AccessLogFile, ConfigError> {
    let path = base.join(a.path.get_ref());
    // `access.log` next to a config given as a bare file name has the parent "".
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if a.path.get_ref().is_empty() || !folder.is_dir() {
        return Err(cx.error(
            a.path.span(),
            "access_log.path",
            format!(
                "`{}`: the folder of the access-log file does not exist",
                path.display()
            ),
        ));
    }
    Ok(AccessLogFile {
        path,
        format: a.format,
    })
}

/// One `server.listen` entry: its address, and its TLS config when it has `cert`/`key`.
fn listen_entry(
    cx: &Section<'_>,
    base: &Path,
    span: std::ops::Range<usize>,
    key: &str,
    entry: RawListenEntry,
) -> Result<ListenConfig, ConfigError> {
    let t = match entry {
        RawListenEntry::Plain(a) => {
            return Ok(ListenConfig {
                address: parse_addr(cx, &Spanned::new(span, a), key)?,
                tls: None,
            })
        }
        RawListenEntry::Table(t) => t,
    };
    let address = parse_addr(cx, &t.address, &format!("{key}.address"))?;
    let tls = match (&t.cert, &t.key) {
        (None, None) => None,
        (Some(cert), Some(k)) => Some(
            crate::tls::server_config(&base.join(cert.get_ref()), &base.join(k.get_ref()))
                .map_err(|e| match e {
                    TlsFileError::Key(m) => cx.error(k.span(), &format!("{key}.key"), m),
                    TlsFileError::Cert(m) | TlsFileError::Ca(m) => {
                        cx.error(cert.span(), &format!("{key}.cert"), m)
                    }
                })?,
        ),
        (Some(_), None) => {
            return Err(cx.error(span, &format!("{key}.key"), "`cert` needs a `key`"))
        }
        (None, Some(_)) => {
            return Err(cx.error(span, &format!("{key}.cert"), "`key` needs a `cert`"))
        }
    };
    Ok(ListenConfig { address, tls })
}

fn parse_addr(cx: &Section<'_>, s: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
    s.get_ref().parse().map_err(|_| {
        cx.error(
            s.span(),
            key,
            format!(
                "`{}` is not a socket address (expected IP:PORT, e.g. \"127.0.0.1:8080\")",
                s.get_ref()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn server(text: &str) -> Result<ServerConfig, ConfigError> {
        parse(&format!("[server]\n{text}\n"), Path::new("p.toml")).map(|c| c.server)
    }

    #[test]
    fn a_relative_plugin_cache_dir_is_next_to_the_config_and_absolute() {
        let s = server("listen = \"127.0.0.1:0\"\nplugin_cache_dir = \"cache\"").unwrap();
        let dir = s.plugin_cache_dir.unwrap();
        assert!(dir.is_absolute(), "{}", dir.display());
        assert_eq!(dir, std::env::current_dir().unwrap().join("cache"));
    }

    #[test]
    fn listen_shapes() {
        let addrs = |s: ServerConfig| -> Vec<String> {
            s.listen.iter().map(|l| l.address.to_string()).collect()
        };
        let one = server("listen = \"127.0.0.1:1\"").unwrap();
        assert_eq!(addrs(one), ["127.0.0.1:1"]);
        let table = server("listen = { address = \"127.0.0.1:2\" }").unwrap();
        assert!(table.listen[0].tls.is_none());
        let list = server("listen = [\"127.0.0.1:1\", { address = \"[::1]:3\" }]").unwrap();
        assert_eq!(addrs(list), ["127.0.0.1:1", "[::1]:3"]);
        let err = server("listen = [\"127.0.0.1:1\", \"nope\"]").unwrap_err();
        assert_eq!(err.key, "server.listen[1]");
        assert_eq!(err.position, Some((2, 26)), "points at the entry");
        let err = server("listen = [{ address = \"nope\" }]").unwrap_err();
        assert_eq!(err.key, "server.listen[0].address");
        assert!(server("listen = []")
            .unwrap_err()
            .message
            .contains("at least one"));
        let err = server("listen = 5").unwrap_err();
        assert!(err.message.contains("expected an address"), "{err}");
    }

    #[test]
    fn connection_bounds() {
        let d = server("listen = \"127.0.0.1:1\"").unwrap();
        assert_eq!(
            (
                d.first_byte_timeout,
                d.keep_alive_timeout,
                d.max_connections
            ),
            (Duration::from_secs(10), Duration::from_secs(60), 10_000)
        );
        assert_eq!(
            (d.http2_keep_alive_interval, d.http2_keep_alive_timeout),
            (Duration::from_secs(20), Duration::from_secs(20))
        );
        let s = server("listen = \"127.0.0.1:1\"\nfirst_byte_timeout = \"2s\"\nkeep_alive_timeout = \"5s\"\nmax_connections = 3").unwrap();
        assert_eq!(
            (
                s.first_byte_timeout,
                s.keep_alive_timeout,
                s.max_connections
            ),
            (Duration::from_secs(2), Duration::from_secs(5), 3)
        );
        let err = server("listen = \"127.0.0.1:1\"\nkeep_alive_timeout = \"0s\"").unwrap_err();
        assert_eq!(err.key, "server.keep_alive_timeout");
        assert_eq!(err.position, Some((3, 22)));
        let err = server("listen = \"127.0.0.1:1\"\nmax_connections = 0").unwrap_err();
        assert_eq!(err.key, "server.max_connections");
    }

    #[test]
    fn access_log_next_to_a_bare_config_file_name() {
        let s = server("listen = \"127.0.0.1:1\"\naccess_log = { path = \"access.log\" }").unwrap();
        let file = s.access_log.unwrap();
        assert_eq!(
            (file.path.as_path(), file.format),
            (Path::new("access.log"), AccessLogFormat::Json)
        );
        let err =
            server("listen = \"127.0.0.1:1\"\naccess_log = { path = \"x.log\", format = \"xml\" }")
                .unwrap_err();
        assert!(err.message.contains("unknown variant `xml`"), "{err}");
    }
}
