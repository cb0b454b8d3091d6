//! `discovery = { kind = "etcd", … }`: the keys as written and their validation into
//! [`EtcdConfig`].

use crate::config::discovery::{http_base, source_keys};
use crate::config::section::Section;
use crate::config::ConfigError;
use toml::Spanned;

source_keys! {
    /// `kind = "etcd"`, as written.
    struct RawEtcd {
        /// `endpoints = ["http://127.0.0.1:2379"]`
        endpoints: Vec<String>,
        /// `prefix = "/services/chat/"`
        prefix: String,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` of each etcd member, tried in turn.
    pub endpoints: Vec<http::Uri>,
    pub prefix: String,
}

impl EtcdConfig {
    /// What is watched, for logs and error messages.
    pub fn describe(&self) -> String {
        format!("etcd prefix {}", self.prefix)
    }
}

pub(crate) fn validate(cx: &Section<'_>, r: RawEtcd) -> Result<EtcdConfig, ConfigError> {
    let eps = cx.required(r.endpoints, "endpoints", "discovery kind `etcd`")?;
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
        .map(|e| http_base(cx, &Spanned::new(eps.span(), e.clone()), "endpoints"))
        .collect::<Result<_, _>>()?;
    let prefix = cx.required(r.prefix, "prefix", "discovery kind `etcd`")?;
    Ok(EtcdConfig {
        endpoints,
        prefix: cx.non_empty(prefix, "prefix")?,
    })
}
