//! `[[upstreams]]`: where requests go (static targets or a discovery source), how they are
//! balanced, connection timeouts and pools, TLS to the targets, and the resilience
//! sections (validated in [`super::resilience`]).

use super::discovery::{self, DiscoveryConfig, RawDiscovery};
use super::error::{ConfigError, Source};
use super::resilience::{self, BreakerConfig, HealthCheckConfig, OutlierConfig, RetryConfig};
use super::section::Section;
use super::units::Dur;
use crate::tls::TlsFileError;
use http::HeaderName;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

// ---------------------------------------------------------------------------------------
// As written.
// ---------------------------------------------------------------------------------------

/// `[[upstreams]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    /// `name = "chat"`: unique among upstreams; routes name it.
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
    discovery: Option<Spanned<RawDiscovery>>,
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
    /// `address = "127.0.0.1:9001"`: `HOST:PORT`.
    address: Spanned<String>,
    /// `weight = 1`: 1..=1000, for the weighted algorithms.
    #[serde(default = "one")]
    weight: Spanned<u32>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

// ---------------------------------------------------------------------------------------
// Validated.
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
    pub circuit_breaker: Option<BreakerConfig>,
    pub health_check: Option<HealthCheckConfig>,
    pub outlier_detection: Option<OutlierConfig>,
    pub retry: Option<RetryConfig>,
    pub tls: Option<UpstreamTls>,
}

#[derive(Clone, Debug)]
pub struct TargetConfig {
    /// `host:port`, as written (a name is resolved when connecting).
    pub address: String,
    pub weight: u32,
}

/// Upper bound of a target weight; keeps the smooth-WRR schedule small.
pub const MAX_WEIGHT: u32 = 1000;

// ---------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------

/// Validates `[[upstreams]]`; their names must be unique.
pub(super) fn validate(
    src: &Source<'_>,
    raw: Vec<Spanned<RawUpstream>>,
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let mut upstreams: Vec<UpstreamConfig> = Vec::with_capacity(raw.len());
    for (i, u) in raw.into_iter().enumerate() {
        let cx = Section::new(src, format!("upstreams[{i}]"), u.span());
        let u = u.into_inner();
        let name = cx.name(
            &u.name,
            "upstream",
            upstreams.iter().map(|v| v.name.as_str()),
        )?;
        upstreams.push(upstream(&cx, name, u)?);
    }
    Ok(upstreams)
}

/// One upstream, its name already checked.
fn upstream(
    cx: &Section<'_>,
    name: String,
    mut u: RawUpstream,
) -> Result<UpstreamConfig, ConfigError> {
    let (targets, discovery) = match (&u.targets, u.discovery.take()) {
        (Some(_), Some(d)) => {
            return Err(cx.error(
                d.span(),
                "discovery",
                format!("upstream `{name}` has both `targets` and `discovery`; use one"),
            ))
        }
        (None, None) => {
            return Err(cx.error_at_table(
                "targets",
                format!("upstream `{name}` has no `targets` (or `discovery`)"),
            ))
        }
        (None, Some(d)) => {
            let table = cx.table("discovery", d.span());
            (
                Vec::new(),
                Some(discovery::validate(&table, d.into_inner())?),
            )
        }
        (Some(t), None) => (static_targets(cx, &name, t)?, None),
    };
    let hash_key = match &u.hash_key {
        None => HashKey::ClientAddr,
        Some(k) => parse_hash_key(k.get_ref()).map_err(|m| cx.error(k.span(), "hash_key", m))?,
    };
    if let Some(k) = u
        .hash_key
        .as_ref()
        .filter(|_| u.balance != BalanceKind::ConsistentHash)
    {
        return Err(cx.error(
            k.span(),
            "hash_key",
            "only applies to balance = \"consistent_hash\"",
        ));
    }
    let tls = upstream_tls(cx, &u, &targets)?;
    Ok(UpstreamConfig {
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
        circuit_breaker: u
            .circuit_breaker
            .as_ref()
            .map(|b| resilience::breaker(cx, b))
            .transpose()?,
        health_check: u
            .health_check
            .as_ref()
            .map(|h| resilience::health_check(cx, h))
            .transpose()?,
        // On when absent: an endpoint that refuses connections is taken out, and a
        // connection that could not be made is tried again elsewhere, for any method.
        outlier_detection: match &u.outlier_detection {
            None => Some(OutlierConfig::default()),
            Some(o) => resilience::outlier(cx, o)?,
        },
        retry: match &u.retry {
            None => Some(RetryConfig::default()),
            Some(r) => resilience::retry(cx, r)?,
        },
    })
}

/// `targets = [...]` of upstream `name`: at least one, each a valid address and weight.
fn static_targets(
    cx: &Section<'_>,
    name: &str,
    raw: &Spanned<Vec<RawTarget>>,
) -> Result<Vec<TargetConfig>, ConfigError> {
    if raw.get_ref().is_empty() {
        return Err(cx.error(
            raw.span(),
            "targets",
            format!("upstream `{name}` has an empty target list"),
        ));
    }
    let mut targets = Vec::new();
    for (j, t) in raw.get_ref().iter().enumerate() {
        let addr = t.address.get_ref();
        check_address(addr)
            .map_err(|m| cx.error(t.address.span(), &format!("targets[{j}].address"), m))?;
        let w = *t.weight.get_ref();
        check_weight(w)
            .map_err(|m| cx.error(t.weight.span(), &format!("targets[{j}].weight"), m))?;
        targets.push(TargetConfig {
            address: addr.clone(),
            weight: w,
        });
    }
    Ok(targets)
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

/// An upstream's `tls`, `ca_file`, `sni`, `client_cert` and `client_key`.
fn upstream_tls(
    cx: &Section<'_>,
    u: &RawUpstream,
    targets: &[TargetConfig],
) -> Result<Option<UpstreamTls>, ConfigError> {
    let base = cx.src.file.parent().unwrap_or(Path::new("."));
    if !u.tls {
        let set = [
            (&u.ca_file, "ca_file"),
            (&u.sni, "sni"),
            (&u.client_cert, "client_cert"),
            (&u.client_key, "client_key"),
        ];
        if let Some((Some(v), k)) = set.into_iter().find(|(v, _)| v.is_some()) {
            return Err(cx.error(v.span(), k, "only applies with `tls = true`"));
        }
        return Ok(None);
    }
    let server_name = match &u.sni {
        Some(n) => Some(ServerName::try_from(n.get_ref().clone()).map_err(|_| {
            cx.error(
                n.span(),
                "sni",
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
                    return Err(cx.error(
                        span,
                        &format!("targets[{j}].address"),
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
            return Err(cx.error(c.span(), "client_key", "`client_cert` needs a `client_key`"))
        }
        (None, Some(k)) => {
            return Err(cx.error(
                k.span(),
                "client_cert",
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
        cx.error(at.as_ref().map_or(0..0, |s| s.span()), k, message)
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
