//! `discovery = { kind = "consul", … }`: the keys as written and their validation into
//! [`ConsulConfig`].

use crate::config::discovery::{http_base, source_keys};
use crate::config::section::Section;
use crate::config::units::Dur;
use crate::config::ConfigError;
use std::time::Duration;
use toml::Spanned;

source_keys! {
    /// `kind = "consul"`, as written.
    struct RawConsul {
        /// `address = "127.0.0.1:8500"`: the Consul agent's HTTP API.
        address: String,
        /// `service = "chat"`
        service: String,
        /// `tag = "v2"`: only instances with this tag.
        tag: String,
        /// `datacenter = "dc2"` (default: the agent's).
        datacenter: String,
        /// `token = "…"`: ACL token, sent as `X-Consul-Token`.
        token: String,
        /// `wait = "30s"`: how long one blocking query may wait for a change.
        wait: Dur,
        /// `passing = true`: only instances whose health checks all pass.
        passing: bool,
    }
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

impl ConsulConfig {
    /// What is asked, for logs and error messages.
    pub fn describe(&self) -> String {
        format!("consul service {}", self.service)
    }
}

pub(crate) fn validate(cx: &Section<'_>, r: RawConsul) -> Result<ConsulConfig, ConfigError> {
    let address = match &r.address {
        Some(a) => http_base(cx, a, "address")?,
        None => "http://127.0.0.1:8500/".parse().expect("valid URI"),
    };
    let service = cx.required(r.service, "service", "discovery kind `consul`")?;
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
    let opt = |v: Option<Spanned<String>>, key: &str| -> Result<Option<String>, ConfigError> {
        v.map(|v| cx.non_empty(v, key)).transpose()
    };
    Ok(ConsulConfig {
        address,
        service: service.into_inner(),
        tag: opt(r.tag, "tag")?,
        datacenter: opt(r.datacenter, "datacenter")?,
        token: opt(r.token, "token")?,
        wait: cx
            .between(&r.wait, "wait", Dur::secs(1)..=Dur::secs(600))?
            .map_or(Duration::from_secs(30), |d| d.0),
        passing: r.passing.is_none_or(|p| *p.get_ref()),
    })
}
