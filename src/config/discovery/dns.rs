//! `discovery = { kind = "dns", … }`: the keys as written and their validation into
//! [`DnsConfig`].

use crate::config::discovery::source_keys;
use crate::config::section::Section;
use crate::config::units::Dur;
use crate::config::ConfigError;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use toml::Spanned;

source_keys! {
    /// `kind = "dns"`, as written.
    struct RawDns {
        /// `name = "api.internal"`: resolve A and AAAA records of this name (with `port`).
        name: String,
        /// `port = 8080`: the port of every address `name` resolves to.
        port: i64,
        /// `srv = "_http._tcp.api.internal"`: resolve SRV records instead of `name`.
        srv: String,
        /// `family = "any" | "ipv4" | "ipv6"`: which of A/AAAA `name` is resolved to.
        family: String,
        /// `resolver = "127.0.0.1:53"` (default: the system's, from /etc/resolv.conf).
        resolver: String,
        /// `min_refresh = "1s"`: lower bound of the TTL-driven refresh.
        min_refresh: Dur,
        /// `max_refresh = "60s"`: upper bound of the TTL-driven refresh.
        max_refresh: Dur,
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

impl DnsConfig {
    /// What is asked, for logs and error messages.
    pub fn describe(&self) -> String {
        match &self.query {
            DnsQuery::Host { name, port, .. } => format!("dns {name}:{port}"),
            DnsQuery::Srv { name } => format!("dns SRV {name}"),
        }
    }
}

pub(crate) fn validate(cx: &Section<'_>, r: RawDns) -> Result<DnsConfig, ConfigError> {
    let query = match (r.name, r.srv) {
        (Some(name), None) => {
            let Some(port) = r.port else {
                return Err(cx.error(
                    name.span(),
                    "port",
                    "discovery kind `dns` with `name` needs `port` (SRV records carry their own: use `srv`)",
                ));
            };
            let port = cx
                .between(&Some(port), "port", 1..=i64::from(u16::MAX))?
                .map_or(0, |p| p as u16);
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
                port,
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
            return Err(cx.error_at_table(
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
    let bounds = Dur::millis(10)..=Dur::secs(86400);
    let min_refresh = cx
        .between(&r.min_refresh, "min_refresh", bounds.clone())?
        .map_or(Duration::from_secs(1), |d| d.0);
    let max_refresh = cx
        .between(&r.max_refresh, "max_refresh", bounds)?
        .map_or(Duration::from_secs(60), |d| d.0);
    if min_refresh > max_refresh {
        return Err(cx.error(
            crate::config::section::span_or(&r.max_refresh, &cx.span),
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

fn dns_name(cx: &Section<'_>, v: Spanned<String>, key: &str) -> Result<String, ConfigError> {
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
