//! The TOML config: the serde model (unknown keys are errors) and its validation into the
//! runtime [`Config`]. Every error names the file, line, column and key.

pub mod discovery;
mod error;
pub mod resilience;
pub mod units;

pub use discovery::DiscoveryConfig;
pub use error::ConfigError;
use error::Source;

use crate::tls::TlsFileError;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;
use units::{Dur, Size};

// ---------------------------------------------------------------------------------------
// The file as written.
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Spanned<RawServer>,
    #[serde(default)]
    upstreams: Vec<Spanned<RawUpstream>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    plugins: Vec<Spanned<RawPlugin>>,
}

/// `[[plugins]]`: a WebAssembly component, enabled per route by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: Spanned<String>,
    /// `path = "plugins/api_key.wasm"`, relative to the config file.
    path: Spanned<String>,
    /// `memory_limit = "64MiB"`: the guest's linear memories may not grow past this.
    memory_limit: Option<Size>,
    /// `timeout = "20ms"`: CPU deadline of one hook call.
    timeout: Option<Dur>,
    /// `on_error = "deny" | "allow"`: a trapped, timed-out or out-of-memory call answers
    /// 500 (deny) or lets the request go on as if the plugin were not there (allow).
    #[serde(default)]
    on_error: OnError,
    /// `pool_size = 8`: warm instances kept per (route, worker).
    pool_size: Option<usize>,
}

/// One entry of a route's `plugins = [...]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutePlugin {
    name: Spanned<String>,
    /// Handed to the plugin's `configure` as JSON text.
    config: Option<toml::Table>,
}

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
struct RawServer {
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
    /// `max_header_size = "64KiB"`: larger request heads get 431.
    max_header_size: Option<Size>,
    /// `max_body_size = "10MiB"`: default request body limit of every route (413 beyond).
    max_body_size: Option<Size>,
    /// `trust_forwarded_headers = false`: append to an incoming X-Forwarded-For chain
    /// instead of replacing it (only behind a trusted proxy).
    #[serde(default)]
    trust_forwarded_headers: bool,
    /// `workers = 2`: worker threads, each with its own event loop and upstream
    /// connection pools (default: the number of CPUs).
    workers: Option<Spanned<usize>>,
    /// `plugin_cache_dir = "/var/cache/portcullis"`: where compiled plugins are cached
    /// (default: `$XDG_CACHE_HOME/portcullis/wasm` or `~/.cache/portcullis/wasm`).
    plugin_cache_dir: Option<String>,
}

/// `[[upstreams]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Spanned<String>,
    /// `balance = "round_robin"`
    #[serde(default)]
    balance: BalanceKind,
    /// `hash_key = "header:x-session-id" | "cookie:session" | "client_addr"` (consistent_hash)
    hash_key: Option<Spanned<String>>,
    /// `targets = [{ address = "127.0.0.1:9001", weight = 1 }]`
    targets: Option<Spanned<Vec<RawTarget>>>,
    /// `discovery = { kind = "dns", name = "api.internal", port = 8080 }`: endpoints from a
    /// discovery source instead of `targets`.
    discovery: Option<Spanned<discovery::RawDiscovery>>,
    /// `protocol = "http1" | "h2"` (h2 is prior-knowledge cleartext HTTP/2, for gRPC)
    #[serde(default)]
    protocol: Protocol,
    /// `connect_timeout = "2s"`
    connect_timeout: Option<Dur>,
    /// `request_timeout = "60s"`: until the upstream's response head arrives.
    request_timeout: Option<Dur>,
    /// `idle_timeout = "60s"`: longest silence inside a streamed response body.
    idle_timeout: Option<Dur>,
    /// `pool_idle_timeout = "90s"`: idle pooled connections are closed after this.
    pool_idle_timeout: Option<Dur>,
    /// `pool_max_idle_per_target = 256`
    pool_max_idle_per_target: Option<usize>,
    /// `[upstreams.circuit_breaker]`
    circuit_breaker: Option<Spanned<resilience::RawBreaker>>,
    /// `[upstreams.health_check]`
    health_check: Option<Spanned<resilience::RawHealthCheck>>,
    /// `[upstreams.outlier_detection]`
    outlier_detection: Option<Spanned<resilience::RawOutlier>>,
    /// `[upstreams.retry]`
    retry: Option<Spanned<resilience::RawRetry>>,
    /// `tls = true`: connect to the targets over TLS.
    #[serde(default)]
    tls: bool,
    /// `ca_file = "ca.pem"`: PEM bundle of the roots to trust (default: webpki-roots).
    ca_file: Option<Spanned<String>>,
    /// `sni = "models.internal"`: server name sent and verified (default: the target's host).
    sni: Option<Spanned<String>>,
    /// `client_cert = "client.pem"`, `client_key = "client.key"`: mutual TLS.
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    address: Spanned<String>,
    #[serde(default = "one")]
    weight: Spanned<u32>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

/// `[[routes]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    path: Option<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    path_regex: Option<Spanned<String>>,
    methods: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    query: BTreeMap<String, String>,
    #[serde(default)]
    strip_prefix: bool,
    upstream: Spanned<String>,
    /// `preserve_host = false`: send the client's Host instead of the target's address.
    #[serde(default)]
    preserve_host: bool,
    /// `host_rewrite = "api.internal"`: send this Host to the upstream.
    host_rewrite: Option<Spanned<String>>,
    max_body_size: Option<Size>,
    request_timeout: Option<Dur>,
    /// `plugins = [{ name = "api-key", config = { ... } }]`, run in this order.
    #[serde(default)]
    plugins: Vec<Spanned<RawRoutePlugin>>,
    /// `buffer_request_body = "1MiB"`: buffer request bodies up to this size so plugins
    /// can read them (larger bodies get 413).
    buffer_request_body: Option<Size>,
}

// ---------------------------------------------------------------------------------------
// The validated runtime config.
// ---------------------------------------------------------------------------------------

/// Load-balancing algorithm of an upstream (DESIGN §5).
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BalanceKind {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    WeightedLeastConnections,
    P2cEwma,
    ConsistentHash,
}

/// What a failed plugin call does to its request.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Deny,
    Allow,
}

#[derive(Clone, Debug)]
pub struct PluginConfig {
    pub name: String,
    /// Resolved against the config file's folder.
    pub path: PathBuf,
    pub memory_limit: u64,
    pub timeout: Duration,
    pub on_error: OnError,
    pub pool_size: usize,
}

/// A plugin enabled on a route.
#[derive(Clone, Debug)]
pub struct RoutePlugin {
    /// Index into [`Config::plugins`].
    pub plugin: usize,
    /// The route's `config` table as JSON text (`{}` when absent).
    pub config_json: String,
    /// Where the entry is in the file, for error messages: (line, column), key.
    pub position: (usize, usize),
    pub key: String,
}

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

/// How an upstream's targets are reached over TLS.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// Roots, client certificate and ALPN (`h2` or `http/1.1`, after `protocol`).
    pub client: Arc<rustls::ClientConfig>,
    /// `sni`: the name sent and verified for every target; `None` = each target's host.
    pub server_name: Option<ServerName<'static>>,
}

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http1,
    H2,
}

/// What consistent hashing hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(HeaderName),
    Cookie(String),
    ClientAddr,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub source: PathBuf,
    /// A hash of the config text (shown by the admin API and metrics).
    pub hash: u64,
    /// The config text as loaded (the admin API shows it, secrets redacted).
    pub text: std::sync::Arc<str>,
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub plugins: Vec<PluginConfig>,
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
    pub max_header_size: usize,
    pub trust_forwarded_headers: bool,
    pub workers: usize,
    pub plugin_cache_dir: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub name: String,
    pub balance: BalanceKind,
    pub hash_key: HashKey,
    /// Static endpoints; empty when `discovery` provides them.
    pub targets: Vec<TargetConfig>,
    pub discovery: Option<DiscoveryConfig>,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_target: usize,
    pub circuit_breaker: Option<resilience::BreakerConfig>,
    pub health_check: Option<resilience::HealthCheckConfig>,
    pub outlier_detection: Option<resilience::OutlierConfig>,
    pub retry: Option<resilience::RetryConfig>,
    pub tls: Option<UpstreamTls>,
}

#[derive(Clone, Debug)]
pub struct TargetConfig {
    /// `host:port`, as written (a name is resolved when connecting).
    pub address: String,
    pub weight: u32,
}

#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Clone, Debug)]
pub enum HostPolicy {
    /// Host = the target's address (default).
    Target,
    /// Host = the client's Host.
    Preserve,
    /// Host = this value.
    Rewrite(HeaderValue),
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub name: String,
    pub path: PathMatch,
    pub methods: Option<Vec<Method>>,
    /// Lowercase host names; `*.example.com` matches any subdomain.
    pub hosts: Vec<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub query: Vec<(String, String)>,
    pub strip_prefix: bool,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub host: HostPolicy,
    pub max_body_size: u64,
    pub request_timeout: Option<Duration>,
    pub plugins: Vec<RoutePlugin>,
    /// Request bodies are buffered (up to this size) for plugins.
    pub buffer_request_body: Option<u64>,
}

/// Upper bound of a target weight; keeps the smooth-WRR schedule small.
pub const MAX_WEIGHT: u32 = 1000;

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        position: None,
        key: String::new(),
        message: format!("cannot read config file: {e}"),
    })?;
    parse(&text, path)
}

/// Parses and validates config text; `path` is used for messages and relative paths.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let src = Source { file: path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    validate(raw, &src)
}

fn parse_addr(src: &Source<'_>, s: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
    s.get_ref().parse().map_err(|_| {
        src.error(
            s.span(),
            key,
            format!(
                "`{}` is not a socket address (expected IP:PORT, e.g. \"127.0.0.1:8080\")",
                s.get_ref()
            ),
        )
    })
}

fn validate(raw: RawConfig, src: &Source<'_>) -> Result<Config, ConfigError> {
    let server_span = raw.server.span();
    let s = raw.server.into_inner();
    let base = src.file.parent().unwrap_or(Path::new("."));
    let listen_span = s.listen.span();
    let entries = match s.listen.into_inner() {
        RawListen::One(e) => vec![(listen_span.clone(), "server.listen".to_string(), e)],
        RawListen::Many(v) => v
            .into_iter()
            .enumerate()
            .map(|(i, e)| (e.span(), format!("server.listen[{i}]"), e.into_inner()))
            .collect(),
    };
    if entries.is_empty() {
        return Err(src.error(listen_span, "server.listen", "needs at least one address"));
    }
    let listen = entries
        .into_iter()
        .map(|(span, key, e)| listen_entry(src, base, span, &key, e))
        .collect::<Result<Vec<_>, _>>()?;
    let access_log = match s.access_log {
        None => None,
        Some(a) => {
            let a = a.into_inner();
            let path = base.join(a.path.get_ref());
            // `access.log` next to a config given as a bare file name has the parent "".
            let folder = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if a.path.get_ref().is_empty() || !folder.is_dir() {
                return Err(src.error(
                    a.path.span(),
                    "server.access_log.path",
                    format!(
                        "`{}`: the folder of the access-log file does not exist",
                        path.display()
                    ),
                ));
            }
            Some(AccessLogFile {
                path,
                format: a.format,
            })
        }
    };
    let admin_listen = s
        .admin_listen
        .as_ref()
        .map(|a| parse_addr(src, a, "server.admin_listen"))
        .transpose()?;
    let max_header_size = s.max_header_size.map_or(64 * 1024, |v| v.0);
    if !(1024..=16 * 1024 * 1024).contains(&max_header_size) {
        return Err(src.error(
            server_span,
            "server.max_header_size",
            "must be between 1KiB and 16MiB",
        ));
    }
    let admin_token = match (&s.admin_token, admin_listen) {
        (Some(t), _) if t.get_ref().len() < 16 || t.get_ref().chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err(src.error(
                t.span(),
                "server.admin_token",
                "must be at least 16 characters, without spaces or control characters",
            ))
        }
        (Some(t), _) => Some(t.get_ref().clone()),
        (None, Some(a)) if !a.ip().is_loopback() => {
            return Err(src.error(
                s.admin_listen.as_ref().map_or(server_span.clone(), |a| a.span()),
                "server.admin_token",
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
        max_header_size: max_header_size as usize,
        trust_forwarded_headers: s.trust_forwarded_headers,
        plugin_cache_dir: s
            .plugin_cache_dir
            .as_ref()
            .map(|d| src.file.parent().unwrap_or(Path::new(".")).join(d)),
        workers: match &s.workers {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(w) if (1..=1024).contains(w.get_ref()) => *w.get_ref(),
            Some(w) => {
                return Err(src.error(w.span(), "server.workers", "must be between 1 and 1024"))
            }
        },
    };
    let default_body = s.max_body_size.map_or(10 << 20, |v| v.0);

    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    let mut upstream_index: HashMap<String, usize> = HashMap::new();
    for (i, u) in raw.upstreams.into_iter().enumerate() {
        let u_span = u.span();
        let mut u = u.into_inner();
        let key = |k: &str| format!("upstreams[{i}].{k}");
        let name = u.name.get_ref().clone();
        if name.is_empty() {
            return Err(src.error(u.name.span(), key("name"), "must not be empty"));
        }
        if upstream_index.insert(name.clone(), i).is_some() {
            return Err(src.error(
                u.name.span(),
                key("name"),
                format!("duplicate upstream name `{name}`"),
            ));
        }
        let mut targets = Vec::new();
        let discovery = match (&u.targets, u.discovery.take()) {
            (Some(_), Some(d)) => {
                return Err(src.error(
                    d.span(),
                    key("discovery"),
                    format!("upstream `{name}` has both `targets` and `discovery`; use one"),
                ))
            }
            (None, None) => {
                return Err(src.error(
                    u_span,
                    key("targets"),
                    format!("upstream `{name}` has no `targets` (or `discovery`)"),
                ))
            }
            (None, Some(d)) => Some(discovery::validate(src, d, i)?),
            (Some(targets_raw), None) => {
                if targets_raw.get_ref().is_empty() {
                    return Err(src.error(
                        targets_raw.span(),
                        key("targets"),
                        format!("upstream `{name}` has an empty target list"),
                    ));
                }
                for (j, t) in targets_raw.get_ref().iter().enumerate() {
                    let addr = t.address.get_ref();
                    check_address(addr).map_err(|m| {
                        src.error(
                            t.address.span(),
                            format!("upstreams[{i}].targets[{j}].address"),
                            m,
                        )
                    })?;
                    let w = *t.weight.get_ref();
                    check_weight(w).map_err(|m| {
                        src.error(
                            t.weight.span(),
                            format!("upstreams[{i}].targets[{j}].weight"),
                            m,
                        )
                    })?;
                    targets.push(TargetConfig {
                        address: addr.clone(),
                        weight: w,
                    });
                }
                None
            }
        };
        let hash_key = match &u.hash_key {
            None => HashKey::ClientAddr,
            Some(k) => {
                parse_hash_key(k.get_ref()).map_err(|m| src.error(k.span(), key("hash_key"), m))?
            }
        };
        if let Some(k) = u
            .hash_key
            .as_ref()
            .filter(|_| u.balance != BalanceKind::ConsistentHash)
        {
            return Err(src.error(
                k.span(),
                key("hash_key"),
                "only applies to balance = \"consistent_hash\"",
            ));
        }
        let tls = upstream_tls(src, base, i, &u, &targets)?;
        upstreams.push(UpstreamConfig {
            name,
            tls,
            balance: u.balance,
            hash_key,
            targets,
            discovery,
            protocol: u.protocol,
            connect_timeout: u.connect_timeout.map_or(Duration::from_secs(2), |d| d.0),
            request_timeout: u.request_timeout.map_or(Duration::from_secs(60), |d| d.0),
            idle_timeout: u.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
            pool_idle_timeout: u.pool_idle_timeout.map_or(Duration::from_secs(90), |d| d.0),
            pool_max_idle_per_target: u.pool_max_idle_per_target.unwrap_or(256),
            circuit_breaker: match &u.circuit_breaker {
                Some(b) => Some(resilience::breaker(src, b, &format!("upstreams[{i}]"))?),
                None => None,
            },
            health_check: match &u.health_check {
                Some(h) => Some(resilience::health_check(
                    src,
                    h,
                    &format!("upstreams[{i}]"),
                )?),
                None => None,
            },
            outlier_detection: match &u.outlier_detection {
                Some(o) => Some(resilience::outlier(src, o, &format!("upstreams[{i}]"))?),
                None => None,
            },
            retry: match &u.retry {
                Some(r) => Some(resilience::retry(src, r, &format!("upstreams[{i}]"))?),
                None => None,
            },
        });
    }

    let mut plugins = Vec::with_capacity(raw.plugins.len());
    let mut plugin_index: HashMap<String, usize> = HashMap::new();
    for (i, p) in raw.plugins.into_iter().enumerate() {
        let p = p.into_inner();
        let key = |k: &str| format!("plugins[{i}].{k}");
        let name = p.name.get_ref().clone();
        if name.is_empty() {
            return Err(src.error(p.name.span(), key("name"), "must not be empty"));
        }
        if plugin_index.insert(name.clone(), i).is_some() {
            return Err(src.error(
                p.name.span(),
                key("name"),
                format!("duplicate plugin name `{name}`"),
            ));
        }
        let path = base.join(p.path.get_ref());
        if !path.is_file() {
            return Err(src.error(
                p.path.span(),
                key("path"),
                format!("plugin file `{}` does not exist", path.display()),
            ));
        }
        let pool_size = p.pool_size.unwrap_or(8);
        if !(1..=1024).contains(&pool_size) {
            return Err(src.error(
                p.name.span(),
                key("pool_size"),
                "must be between 1 and 1024",
            ));
        }
        plugins.push(PluginConfig {
            name,
            path,
            memory_limit: p.memory_limit.map_or(64 << 20, |v| v.0),
            timeout: p.timeout.map_or(Duration::from_millis(20), |d| d.0),
            on_error: p.on_error,
            pool_size,
        });
    }

    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut route_names: HashMap<String, ()> = HashMap::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let r_span = r.span();
        let r = r.into_inner();
        let key = |k: &str| format!("routes[{i}].{k}");
        let name = r.name.get_ref().clone();
        if name.is_empty() {
            return Err(src.error(r.name.span(), key("name"), "must not be empty"));
        }
        if route_names.insert(name.clone(), ()).is_some() {
            return Err(src.error(
                r.name.span(),
                key("name"),
                format!("duplicate route name `{name}`"),
            ));
        }
        let path = match (&r.path, &r.path_prefix, &r.path_regex) {
            (Some(p), None, None) => PathMatch::Exact(check_path(src, p, &key("path"))?),
            (None, Some(p), None) => PathMatch::Prefix(check_path(src, p, &key("path_prefix"))?),
            (None, None, Some(p)) => PathMatch::Regex(Regex::new(p.get_ref()).map_err(|e| {
                src.error(p.span(), key("path_regex"), format!("invalid regex: {e}"))
            })?),
            (None, None, None) => {
                return Err(src.error(
                    r_span,
                    key("path"),
                    format!("route `{name}` needs one of `path`, `path_prefix` or `path_regex`"),
                ))
            }
            _ => {
                return Err(src.error(
                    r_span,
                    key("path"),
                    format!(
                    "route `{name}` may have only one of `path`, `path_prefix` and `path_regex`"
                ),
                ))
            }
        };
        if r.strip_prefix && !matches!(path, PathMatch::Prefix(_)) {
            return Err(src.error(r_span, key("strip_prefix"), "needs `path_prefix`"));
        }
        let methods = match &r.methods {
            None => None,
            Some(ms) => {
                if ms.is_empty() {
                    return Err(src.error(
                        r_span,
                        key("methods"),
                        "must not be empty (leave it out to allow every method)",
                    ));
                }
                let mut out = Vec::new();
                for m in ms {
                    let up = m.get_ref().to_ascii_uppercase();
                    let method = Method::from_bytes(up.as_bytes()).map_err(|_| {
                        src.error(
                            m.span(),
                            key("methods"),
                            format!("`{}` is not an HTTP method", m.get_ref()),
                        )
                    })?;
                    out.push(method);
                }
                Some(out)
            }
        };
        let mut hosts = Vec::new();
        for h in &r.hosts {
            let v = h.get_ref().to_ascii_lowercase();
            let bare = v.strip_prefix("*.").unwrap_or(&v);
            if bare.is_empty()
                || bare.parse::<http::uri::Authority>().is_err()
                || bare.contains('*')
            {
                return Err(src.error(
                    h.span(),
                    key("hosts"),
                    format!("`{}` is not a host name (or `*.domain`)", h.get_ref()),
                ));
            }
            hosts.push(v);
        }
        let mut headers = Vec::new();
        for (n, v) in &r.headers {
            let hn = HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                src.error(
                    v.span(),
                    format!("routes[{i}].headers.{n}"),
                    format!("`{n}` is not a header name"),
                )
            })?;
            let hv = HeaderValue::from_str(v.get_ref()).map_err(|_| {
                src.error(
                    v.span(),
                    format!("routes[{i}].headers.{n}"),
                    "not a valid header value",
                )
            })?;
            headers.push((hn, hv));
        }
        let Some(&upstream) = upstream_index.get(r.upstream.get_ref()) else {
            let known: Vec<&str> = upstream_index.keys().map(String::as_str).collect();
            return Err(src.error(
                r.upstream.span(),
                key("upstream"),
                format!(
                    "route `{name}` names unknown upstream `{}` (known: {})",
                    r.upstream.get_ref(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        let host = match (&r.host_rewrite, r.preserve_host) {
            (Some(h), false) => HostPolicy::Rewrite(
                HeaderValue::from_str(h.get_ref())
                    .ok()
                    .filter(|_| h.get_ref().parse::<http::uri::Authority>().is_ok())
                    .ok_or_else(|| {
                        src.error(
                            h.span(),
                            key("host_rewrite"),
                            format!("`{}` is not a host", h.get_ref()),
                        )
                    })?,
            ),
            (Some(h), true) => {
                return Err(src.error(
                    h.span(),
                    key("host_rewrite"),
                    "cannot be combined with preserve_host = true",
                ))
            }
            (None, true) => HostPolicy::Preserve,
            (None, false) => HostPolicy::Target,
        };
        let mut route_plugins = Vec::new();
        for (j, rp) in r.plugins.iter().enumerate() {
            let span = rp.span();
            let rp = rp.get_ref();
            let k = format!("routes[{i}].plugins[{j}]");
            let Some(&plugin) = plugin_index.get(rp.name.get_ref()) else {
                return Err(src.error(
                    rp.name.span(),
                    format!("{k}.name"),
                    format!(
                        "route `{name}` names unknown plugin `{}`",
                        rp.name.get_ref()
                    ),
                ));
            };
            let config_json = match &rp.config {
                Some(t) => serde_json::to_string(t).expect("a TOML table is valid JSON"),
                None => "{}".to_string(),
            };
            route_plugins.push(RoutePlugin {
                plugin,
                config_json,
                position: src.line_col(span.start),
                key: k,
            });
        }
        routes.push(RouteConfig {
            name,
            path,
            methods,
            hosts,
            headers,
            query: r.query.into_iter().collect(),
            strip_prefix: r.strip_prefix,
            upstream,
            host,
            max_body_size: r.max_body_size.map_or(default_body, |v| v.0),
            request_timeout: r.request_timeout.map(|d| d.0),
            plugins: route_plugins,
            buffer_request_body: r.buffer_request_body.map(|v| v.0),
        });
    }
    Ok(Config {
        source: src.file.to_path_buf(),
        hash: crate::hash::hash_bytes(src.text.as_bytes()),
        text: src.text.into(),
        server,
        upstreams,
        routes,
        plugins,
    })
}

/// Checks an endpoint address: `HOST:PORT` that is a valid URI authority, port 1..=65535.
/// Used for static targets and for every address a discovery source reports.
pub fn check_address(addr: &str) -> Result<(), String> {
    let valid = match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && addr.parse::<http::uri::Authority>().is_ok()
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{addr}` is not HOST:PORT (e.g. \"127.0.0.1:9001\")"
        ))
    }
}

/// Checks an endpoint weight against 1..=[`MAX_WEIGHT`].
pub fn check_weight(w: u32) -> Result<(), String> {
    if (1..=MAX_WEIGHT).contains(&w) {
        Ok(())
    } else {
        Err(format!("weight {w} is out of range 1..={MAX_WEIGHT}"))
    }
}

/// One `server.listen` entry: its address, and its TLS config when it has `cert`/`key`.
fn listen_entry(
    src: &Source<'_>,
    base: &Path,
    span: std::ops::Range<usize>,
    key: &str,
    entry: RawListenEntry,
) -> Result<ListenConfig, ConfigError> {
    let t = match entry {
        RawListenEntry::Plain(a) => {
            return Ok(ListenConfig {
                address: parse_addr(src, &Spanned::new(span, a), key)?,
                tls: None,
            })
        }
        RawListenEntry::Table(t) => t,
    };
    let address = parse_addr(src, &t.address, &format!("{key}.address"))?;
    let tls = match (&t.cert, &t.key) {
        (None, None) => None,
        (Some(cert), Some(k)) => Some(
            crate::tls::server_config(&base.join(cert.get_ref()), &base.join(k.get_ref()))
                .map_err(|e| match e {
                    TlsFileError::Key(m) => src.error(k.span(), format!("{key}.key"), m),
                    TlsFileError::Cert(m) | TlsFileError::Ca(m) => {
                        src.error(cert.span(), format!("{key}.cert"), m)
                    }
                })?,
        ),
        (Some(_), None) => {
            return Err(src.error(span, format!("{key}.key"), "`cert` needs a `key`"))
        }
        (None, Some(_)) => {
            return Err(src.error(span, format!("{key}.cert"), "`key` needs a `cert`"))
        }
    };
    Ok(ListenConfig { address, tls })
}

/// An upstream's `tls`, `ca_file`, `sni`, `client_cert` and `client_key`.
fn upstream_tls(
    src: &Source<'_>,
    base: &Path,
    i: usize,
    u: &RawUpstream,
    targets: &[TargetConfig],
) -> Result<Option<UpstreamTls>, ConfigError> {
    let key = |k: &str| format!("upstreams[{i}].{k}");
    if !u.tls {
        let set = [
            (&u.ca_file, "ca_file"),
            (&u.sni, "sni"),
            (&u.client_cert, "client_cert"),
            (&u.client_key, "client_key"),
        ];
        if let Some((Some(v), k)) = set.into_iter().find(|(v, _)| v.is_some()) {
            return Err(src.error(v.span(), key(k), "only applies with `tls = true`"));
        }
        return Ok(None);
    }
    let server_name = match &u.sni {
        Some(n) => Some(ServerName::try_from(n.get_ref().clone()).map_err(|_| {
            src.error(
                n.span(),
                key("sni"),
                format!("`{}` is not a DNS name or IP address", n.get_ref()),
            )
        })?),
        None => {
            // Each target's host is its server name: it must be one.
            for (j, t) in targets.iter().enumerate() {
                if target_server_name(&t.address).is_none() {
                    let span = u
                        .targets
                        .as_ref()
                        .map_or(0..0, |s| s.get_ref()[j].address.span());
                    return Err(src.error(
                        span,
                        format!("upstreams[{i}].targets[{j}].address"),
                        format!(
                            "`{}` has no host usable as a TLS server name; set `sni`",
                            t.address
                        ),
                    ));
                }
            }
            None
        }
    };
    let alpn: &[u8] = match u.protocol {
        Protocol::H2 => b"h2",
        Protocol::Http1 => b"http/1.1",
    };
    let client = match (&u.client_cert, &u.client_key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((base.join(c.get_ref()), base.join(k.get_ref()))),
        (Some(c), None) => {
            return Err(src.error(
                c.span(),
                key("client_key"),
                "`client_cert` needs a `client_key`",
            ))
        }
        (None, Some(k)) => {
            return Err(src.error(
                k.span(),
                key("client_cert"),
                "`client_key` needs a `client_cert`",
            ))
        }
    };
    let ca_path = u.ca_file.as_ref().map(|c| base.join(c.get_ref()));
    let config = crate::tls::client_config(
        ca_path.as_deref(),
        client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        alpn,
    )
    .map_err(|e| {
        let (at, k, message) = match e {
            TlsFileError::Ca(m) => (&u.ca_file, "ca_file", m),
            TlsFileError::Cert(m) => (&u.client_cert, "client_cert", m),
            TlsFileError::Key(m) => (&u.client_key, "client_key", m),
        };
        src.error(at.as_ref().map_or(0..0, |s| s.span()), key(k), message)
    })?;
    Ok(Some(UpstreamTls {
        client: config,
        server_name,
    }))
}

/// The TLS server name of a `host:port` target: its host (an IPv6 address without brackets).
pub fn target_server_name(address: &str) -> Option<ServerName<'static>> {
    let (host, _) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

fn check_path(src: &Source<'_>, p: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let v = p.get_ref();
    if !v.starts_with('/') {
        return Err(src.error(p.span(), key, format!("`{v}` must start with `/`")));
    }
    // Routes match normalized paths, so a route written un-normalized could never match.
    match crate::normalize::normalize_path(v) {
        Ok(n) if n == v.as_str() => Ok(v.clone()),
        Ok(n) => Err(src.error(
            p.span(),
            key,
            format!("`{v}` is not in normal form; write `{n}`"),
        )),
        Err(e) => Err(src.error(p.span(), key, format!("`{v}`: {e}"))),
    }
}

fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    if s == "client_addr" {
        return Ok(HashKey::ClientAddr);
    }
    if let Some(h) = s.strip_prefix("header:") {
        return HeaderName::from_bytes(h.as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("`{h}` is not a header name"));
    }
    if let Some(c) = s.strip_prefix("cookie:") {
        if !c.is_empty() {
            return Ok(HashKey::Cookie(c.to_string()));
        }
    }
    Err(format!(
        "`{s}`: expected \"header:NAME\", \"cookie:NAME\" or \"client_addr\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> Result<ServerConfig, ConfigError> {
        parse(&format!("[server]\n{text}\n"), Path::new("p.toml")).map(|c| c.server)
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

    #[test]
    fn target_server_names() {
        assert!(matches!(
            target_server_name("models.internal:443"),
            Some(ServerName::DnsName(_))
        ));
        assert!(matches!(
            target_server_name("10.0.0.1:443"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            target_server_name("[::1]:443"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(target_server_name("bad_host!:443").is_none());
    }
}
