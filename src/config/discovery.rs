//! `discovery = { kind = "…", … }` of an upstream: the keys as written (one flat table, so
//! every key keeps its position in the file) and their validation into
//! [`DiscoveryConfig`], per kind.

use super::error::Source;
use super::units::Dur;
use super::ConfigError;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// The discovery table as written. All kinds share one flat table so that serde keeps the
/// span of every key (an internally tagged enum would buffer the table and lose them);
/// which keys a kind accepts is checked in [`validate`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    /// `kind = "dns" | "file" | "etcd" | "zookeeper" | "consul"`
    kind: Option<Spanned<String>>,
    // dns
    /// `name = "api.internal"`: resolve A and AAAA records of this name (with `port`).
    name: Option<Spanned<String>>,
    /// `port = 8080`: the port of every address `name` resolves to.
    port: Option<Spanned<i64>>,
    /// `srv = "_http._tcp.api.internal"`: resolve SRV records instead of `name`.
    srv: Option<Spanned<String>>,
    /// `family = "any" | "ipv4" | "ipv6"`: which of A/AAAA `name` is resolved to.
    family: Option<Spanned<String>>,
    /// `resolver = "127.0.0.1:53"` (default: the system's, from /etc/resolv.conf).
    resolver: Option<Spanned<String>>,
    /// `min_refresh = "1s"`, `max_refresh = "60s"`: bounds of the TTL-driven refresh.
    min_refresh: Option<Spanned<Dur>>,
    max_refresh: Option<Spanned<Dur>>,
    // file; zookeeper (`path` is the znode there)
    /// `path = "endpoints.toml"` (relative to the config file), or the znode path.
    path: Option<Spanned<String>>,
    /// `format = "toml" | "json"` (default: from the file's extension).
    format: Option<Spanned<String>>,
    /// `interval = "1s"`: how often the file is checked for changes.
    interval: Option<Spanned<Dur>>,
    // etcd
    /// `endpoints = ["http://127.0.0.1:2379"]`
    endpoints: Option<Spanned<Vec<String>>>,
    /// `prefix = "/services/chat/"`
    prefix: Option<Spanned<String>>,
    // zookeeper
    /// `servers = "zk1:2181,zk2:2181"`: a ZooKeeper connect string.
    servers: Option<Spanned<String>>,
    /// `session_timeout = "10s"`
    session_timeout: Option<Spanned<Dur>>,
    // consul
    /// `address = "127.0.0.1:8500"`: the Consul agent's HTTP API.
    address: Option<Spanned<String>>,
    /// `service = "chat"`
    service: Option<Spanned<String>>,
    /// `tag = "v2"`: only instances with this tag.
    tag: Option<Spanned<String>>,
    /// `datacenter = "dc2"` (default: the agent's).
    datacenter: Option<Spanned<String>>,
    /// `token = "…"`: ACL token, sent as `X-Consul-Token`.
    token: Option<Spanned<String>>,
    /// `wait = "30s"`: how long one blocking query may wait for a change.
    wait: Option<Spanned<Dur>>,
    /// `passing = true`: only instances whose health checks all pass.
    passing: Option<Spanned<bool>>,
}

/// Where an upstream's endpoints come from, when not from static `targets`.
#[derive(Clone, Debug, PartialEq)]
pub enum DiscoveryConfig {
    Dns(DnsConfig),
    File(FileConfig),
    Etcd(EtcdConfig),
    Zookeeper(ZookeeperConfig),
    Consul(ConsulConfig),
}

impl DiscoveryConfig {
    /// `dns`, `file`, … as in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoveryConfig::Dns(_) => "dns",
            DiscoveryConfig::File(_) => "file",
            DiscoveryConfig::Etcd(_) => "etcd",
            DiscoveryConfig::Zookeeper(_) => "zookeeper",
            DiscoveryConfig::Consul(_) => "consul",
        }
    }

    /// What is asked of which server, for logs and error messages.
    pub fn describe(&self) -> String {
        match self {
            DiscoveryConfig::Dns(d) => match &d.query {
                DnsQuery::Host { name, port, .. } => format!("dns {name}:{port}"),
                DnsQuery::Srv { name } => format!("dns SRV {name}"),
            },
            DiscoveryConfig::File(f) => format!("file {}", f.path.display()),
            DiscoveryConfig::Etcd(e) => format!("etcd prefix {}", e.prefix),
            DiscoveryConfig::Zookeeper(z) => format!("zookeeper {}", z.path),
            DiscoveryConfig::Consul(c) => format!("consul service {}", c.service),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    pub query: DnsQuery,
    /// `None`: the system's resolvers.
    pub resolver: Option<SocketAddr>,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsQuery {
    /// A/AAAA records of `name`, each address with `port`.
    Host {
        name: String,
        port: u16,
        family: IpFamily,
    },
    /// SRV records of `name`: target, port, priority and weight.
    Srv { name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    Any,
    V4,
    V6,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileConfig {
    /// Resolved against the config file's folder.
    pub path: std::path::PathBuf,
    pub format: FileFormat,
    pub interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Toml,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` of each etcd member, tried in turn.
    pub endpoints: Vec<http::Uri>,
    pub prefix: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZookeeperConfig {
    /// Connect string, `host:port[,host:port…][/chroot]`.
    pub servers: String,
    /// The znode whose children are the endpoints.
    pub path: String,
    pub session_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulConfig {
    /// `http://host:port` of the agent.
    pub address: http::Uri,
    pub service: String,
    pub tag: Option<String>,
    pub datacenter: Option<String>,
    pub token: Option<String>,
    pub wait: Duration,
    pub passing: bool,
}

/// Keys each kind accepts besides `kind`.
const KEYS: &[(&str, &[&str])] = &[
    (
        "dns",
        &[
            "name",
            "port",
            "srv",
            "family",
            "resolver",
            "min_refresh",
            "max_refresh",
        ],
    ),
    ("file", &["path", "format", "interval"]),
    ("etcd", &["endpoints", "prefix"]),
    ("zookeeper", &["servers", "path", "session_timeout"]),
    (
        "consul",
        &[
            "address",
            "service",
            "tag",
            "datacenter",
            "token",
            "wait",
            "passing",
        ],
    ),
];

/// Context of one discovery table: where it is and how to word errors about it.
struct Ctx<'a, 'b> {
    src: &'a Source<'b>,
    /// `upstreams[3].discovery`
    key: String,
    span: Range<usize>,
}

impl Ctx<'_, '_> {
    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        self.src.error(span, format!("{}.{key}", self.key), message)
    }

    fn required<T>(
        &self,
        v: Option<Spanned<T>>,
        key: &str,
        kind: &str,
    ) -> Result<Spanned<T>, ConfigError> {
        v.ok_or_else(|| {
            self.src.error(
                self.span.clone(),
                format!("{}.{key}", self.key),
                format!("discovery kind `{kind}` needs `{key}`"),
            )
        })
    }

    fn non_empty(&self, v: Spanned<String>, key: &str) -> Result<String, ConfigError> {
        if v.get_ref().trim().is_empty() {
            return Err(self.error(v.span(), key, "must not be empty"));
        }
        Ok(v.into_inner())
    }

    fn duration(
        &self,
        v: Option<Spanned<Dur>>,
        key: &str,
        default: Duration,
        range: (Duration, Duration),
    ) -> Result<Duration, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let d = v.get_ref().0;
        if d < range.0 || d > range.1 {
            return Err(self.error(
                v.span(),
                key,
                format!("must be between {:?} and {:?}", range.0, range.1),
            ));
        }
        Ok(d)
    }

    /// An `http://host:port` base address; a bare `host:port` gets `http://`.
    fn http_base(&self, v: &Spanned<String>, key: &str) -> Result<http::Uri, ConfigError> {
        let s = v.get_ref().trim();
        let with_scheme = if s.contains("://") {
            s.to_string()
        } else {
            format!("http://{s}")
        };
        let bad = |why: &str| {
            self.error(
                v.span(),
                key,
                format!("`{s}` {why} (expected HOST:PORT or http://HOST:PORT)"),
            )
        };
        let uri: http::Uri = with_scheme.parse().map_err(|_| bad("is not an address"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("is not supported: only plain http"));
        }
        let Some(auth) = uri.authority() else {
            return Err(bad("has no host"));
        };
        if auth.port_u16().is_none() || !matches!(uri.path(), "" | "/") {
            return Err(bad("needs a port and no path"));
        }
        Ok(http::Uri::builder()
            .scheme("http")
            .authority(auth.clone())
            .path_and_query("/")
            .build()
            .expect("scheme and authority are valid"))
    }
}

/// Validates `discovery = {…}` of upstream `i`.
pub(super) fn validate(
    src: &Source<'_>,
    raw: Spanned<RawDiscovery>,
    i: usize,
) -> Result<DiscoveryConfig, ConfigError> {
    let span = raw.span();
    let mut r = raw.into_inner();
    let cx = Ctx {
        src,
        key: format!("upstreams[{i}].discovery"),
        span: span.clone(),
    };
    let kinds: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
    let Some(kind) = r.kind.take() else {
        return Err(cx.error(
            span,
            "kind",
            format!("discovery needs `kind` (one of {})", kinds.join(", ")),
        ));
    };
    let Some((_, allowed)) = KEYS.iter().find(|(k, _)| *k == kind.get_ref()) else {
        return Err(cx.error(
            kind.span(),
            "kind",
            format!(
                "unknown discovery kind `{}` (expected one of {})",
                kind.get_ref(),
                kinds.join(", ")
            ),
        ));
    };
    // Keys that belong to other kinds are errors, not silently ignored.
    let present = [
        ("name", r.name.as_ref().map(Spanned::span)),
        ("port", r.port.as_ref().map(Spanned::span)),
        ("srv", r.srv.as_ref().map(Spanned::span)),
        ("family", r.family.as_ref().map(Spanned::span)),
        ("resolver", r.resolver.as_ref().map(Spanned::span)),
        ("min_refresh", r.min_refresh.as_ref().map(Spanned::span)),
        ("max_refresh", r.max_refresh.as_ref().map(Spanned::span)),
        ("path", r.path.as_ref().map(Spanned::span)),
        ("format", r.format.as_ref().map(Spanned::span)),
        ("interval", r.interval.as_ref().map(Spanned::span)),
        ("endpoints", r.endpoints.as_ref().map(Spanned::span)),
        ("prefix", r.prefix.as_ref().map(Spanned::span)),
        ("servers", r.servers.as_ref().map(Spanned::span)),
        (
            "session_timeout",
            r.session_timeout.as_ref().map(Spanned::span),
        ),
        ("address", r.address.as_ref().map(Spanned::span)),
        ("service", r.service.as_ref().map(Spanned::span)),
        ("tag", r.tag.as_ref().map(Spanned::span)),
        ("datacenter", r.datacenter.as_ref().map(Spanned::span)),
        ("token", r.token.as_ref().map(Spanned::span)),
        ("wait", r.wait.as_ref().map(Spanned::span)),
        ("passing", r.passing.as_ref().map(Spanned::span)),
    ];
    for (key, span) in present {
        if let Some(span) = span {
            if !allowed.contains(&key) {
                return Err(cx.error(
                    span,
                    key,
                    format!(
                        "`{key}` does not apply to discovery kind `{}` (its keys: {})",
                        kind.get_ref(),
                        allowed.join(", ")
                    ),
                ));
            }
        }
    }
    let kind = kind.into_inner();
    Ok(match kind.as_str() {
        "dns" => DiscoveryConfig::Dns(dns(&cx, r)?),
        "file" => {
            let path = cx.required(r.path, "path", "file")?;
            let path_span = path.span();
            let rel = cx.non_empty(path, "path")?;
            let format = match (&r.format, Path::new(&rel).extension()) {
                (Some(f), _) => match f.get_ref().as_str() {
                    "toml" => FileFormat::Toml,
                    "json" => FileFormat::Json,
                    other => {
                        return Err(cx.error(
                            f.span(),
                            "format",
                            format!("unknown format `{other}` (expected \"toml\" or \"json\")"),
                        ))
                    }
                },
                (None, Some(e)) if e == "toml" => FileFormat::Toml,
                (None, Some(e)) if e == "json" => FileFormat::Json,
                (None, _) => {
                    return Err(cx.error(
                        path_span,
                        "path",
                        format!("cannot tell the format of `{rel}` from its extension; set format = \"toml\" or \"json\""),
                    ))
                }
            };
            FileConfig {
                path: src.file.parent().unwrap_or(Path::new(".")).join(rel),
                format,
                interval: cx.duration(
                    r.interval,
                    "interval",
                    Duration::from_secs(1),
                    (Duration::from_millis(10), Duration::from_secs(3600)),
                )?,
            }
            .into()
        }
        "etcd" => {
            let eps = cx.required(r.endpoints, "endpoints", "etcd")?;
            if eps.get_ref().is_empty() {
                return Err(cx.error(
                    eps.span(),
                    "endpoints",
                    "must list at least one etcd address",
                ));
            }
            let endpoints = eps
                .get_ref()
                .iter()
                .map(|e| cx.http_base(&Spanned::new(eps.span(), e.clone()), "endpoints"))
                .collect::<Result<_, _>>()?;
            let prefix = cx.required(r.prefix, "prefix", "etcd")?;
            EtcdConfig {
                endpoints,
                prefix: cx.non_empty(prefix, "prefix")?,
            }
            .into()
        }
        "zookeeper" => {
            let servers = cx.required(r.servers, "servers", "zookeeper")?;
            let servers = cx.non_empty(servers, "servers")?;
            let path = cx.required(r.path, "path", "zookeeper")?;
            let p = path.get_ref();
            if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) || p.contains("//") {
                return Err(cx.error(
                    path.span(),
                    "path",
                    format!("`{p}` is not a znode path (e.g. \"/services/chat\")"),
                ));
            }
            ZookeeperConfig {
                servers,
                path: path.into_inner(),
                session_timeout: cx.duration(
                    r.session_timeout,
                    "session_timeout",
                    Duration::from_secs(10),
                    (Duration::from_millis(100), Duration::from_secs(600)),
                )?,
            }
            .into()
        }
        "consul" => {
            let address = match &r.address {
                Some(a) => cx.http_base(a, "address")?,
                None => "http://127.0.0.1:8500/".parse().expect("valid URI"),
            };
            let service = cx.required(r.service, "service", "consul")?;
            let ok = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            };
            if !ok(service.get_ref()) {
                return Err(cx.error(
                    service.span(),
                    "service",
                    format!(
                        "`{}` is not a Consul service name (letters, digits, `-`, `_`, `.`)",
                        service.get_ref()
                    ),
                ));
            }
            let opt =
                |v: Option<Spanned<String>>, key: &str| -> Result<Option<String>, ConfigError> {
                    v.map(|v| cx.non_empty(v, key)).transpose()
                };
            ConsulConfig {
                address,
                service: service.into_inner(),
                tag: opt(r.tag, "tag")?,
                datacenter: opt(r.datacenter, "datacenter")?,
                token: opt(r.token, "token")?,
                wait: cx.duration(
                    r.wait,
                    "wait",
                    Duration::from_secs(30),
                    (Duration::from_secs(1), Duration::from_secs(600)),
                )?,
                passing: r.passing.is_none_or(|p| *p.get_ref()),
            }
            .into()
        }
        _ => unreachable!("kind checked against KEYS"),
    })
}

fn dns(cx: &Ctx<'_, '_>, r: RawDiscovery) -> Result<DnsConfig, ConfigError> {
    let query = match (r.name, r.srv) {
        (Some(name), None) => {
            let Some(port) = r.port else {
                return Err(cx.error(
                    name.span(),
                    "port",
                    "discovery kind `dns` with `name` needs `port` (SRV records carry their own: use `srv`)",
                ));
            };
            let Some(p) = u16::try_from(*port.get_ref()).ok().filter(|p| *p != 0) else {
                return Err(cx.error(port.span(), "port", "must be between 1 and 65535"));
            };
            let family = match r.family.as_ref().map(|f| f.get_ref().as_str()) {
                None | Some("any") => IpFamily::Any,
                Some("ipv4") => IpFamily::V4,
                Some("ipv6") => IpFamily::V6,
                Some(other) => {
                    return Err(cx.error(
                        r.family.as_ref().expect("matched Some").span(),
                        "family",
                        format!("unknown family `{other}` (expected \"any\", \"ipv4\" or \"ipv6\")"),
                    ))
                }
            };
            DnsQuery::Host {
                name: dns_name(cx, name, "name")?,
                port: p,
                family,
            }
        }
        (None, Some(srv)) => {
            if let Some(p) = &r.port {
                return Err(cx.error(
                    p.span(),
                    "port",
                    "does not apply to `srv`: SRV records carry their own ports",
                ));
            }
            if let Some(f) = &r.family {
                return Err(cx.error(
                    f.span(),
                    "family",
                    "does not apply to `srv`: SRV targets are resolved to all their addresses",
                ));
            }
            DnsQuery::Srv {
                name: dns_name(cx, srv, "srv")?,
            }
        }
        (Some(_), Some(srv)) => {
            return Err(cx.error(srv.span(), "srv", "use either `name` (A/AAAA) or `srv`, not both"))
        }
        (None, None) => {
            return Err(cx.error(
                cx.span.clone(),
                "name",
                "discovery kind `dns` needs `name` (A/AAAA records, with `port`) or `srv` (SRV records)",
            ))
        }
    };
    let resolver = match &r.resolver {
        None => None,
        Some(s) => {
            let v = s.get_ref();
            Some(
                v.parse::<SocketAddr>()
                    .or_else(|_| v.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        cx.error(
                            s.span(),
                            "resolver",
                            format!("`{v}` is not IP or IP:PORT (e.g. \"127.0.0.1:53\")"),
                        )
                    })?,
            )
        }
    };
    let bounds = (Duration::from_millis(10), Duration::from_secs(86400));
    let max_span = r.max_refresh.as_ref().map(Spanned::span);
    let min_refresh = cx.duration(r.min_refresh, "min_refresh", Duration::from_secs(1), bounds)?;
    let max_refresh = cx.duration(
        r.max_refresh,
        "max_refresh",
        Duration::from_secs(60),
        bounds,
    )?;
    if min_refresh > max_refresh {
        return Err(cx.error(
            max_span.unwrap_or_else(|| cx.span.clone()),
            "max_refresh",
            format!("max_refresh ({max_refresh:?}) is below min_refresh ({min_refresh:?})"),
        ));
    }
    Ok(DnsConfig {
        query,
        resolver,
        min_refresh,
        max_refresh,
    })
}

fn dns_name(cx: &Ctx<'_, '_>, v: Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let s = v.get_ref();
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        return Err(cx.error(v.span(), key, format!("`{s}` is not a DNS name")));
    }
    Ok(v.into_inner())
}

impl From<FileConfig> for DiscoveryConfig {
    fn from(c: FileConfig) -> Self {
        DiscoveryConfig::File(c)
    }
}

impl From<EtcdConfig> for DiscoveryConfig {
    fn from(c: EtcdConfig) -> Self {
        DiscoveryConfig::Etcd(c)
    }
}

impl From<ZookeeperConfig> for DiscoveryConfig {
    fn from(c: ZookeeperConfig) -> Self {
        DiscoveryConfig::Zookeeper(c)
    }
}

impl From<ConsulConfig> for DiscoveryConfig {
    fn from(c: ConsulConfig) -> Self {
        DiscoveryConfig::Consul(c)
    }
}
