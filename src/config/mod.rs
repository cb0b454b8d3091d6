//! The TOML config: the serde model (unknown keys are errors) and its validation into the
//! runtime [`Config`]. Every error names the file, line, column and key.
//!
//! Each section is read and validated by its own file — [`server`], [`upstreams`] (with
//! [`resilience`] and [`discovery`], one file per source), [`plugins`], [`limits`], [`routes`]
//! (with [`composite`] for a route's parts) —
//! all wording their errors through one [`section::Section`].

mod ai;
pub mod composite;
pub mod discovery;
pub(crate) mod error;
mod events;
pub mod limits;
mod plugins;
pub mod resilience;
mod routes;
pub(crate) mod section;
mod server;
pub mod units;
mod upstreams;

pub use ai::{AiConfig, ApiChoice, Tokenizer};
pub use composite::{CompositeConfig, PartConfig};
pub use discovery::DiscoveryConfig;
pub use error::ConfigError;
pub use events::EventsConfig;
pub use limits::{
    KeyPart, LimitBackend, LimitConfig, LimitKind, OnBackendError, RedisConfig, TokenCount,
};
pub use plugins::{
    AllowedHost, Capabilities, KeyValueBackend, KeyValueGrant, OnError, PluginConfig,
};
pub use routes::{
    Fallback, HostPolicy, PathMatch, RouteConfig, RoutePlugin, TunnelConfig, FALLBACK_BODY,
};
pub use server::{AccessLogFile, AccessLogFormat, ListenConfig, ServerConfig};
pub use upstreams::{
    check_address, check_weight, target_server_name, BalanceKind, HashKey, Protocol, TargetConfig,
    UpstreamConfig, UpstreamTls, MAX_WEIGHT,
};

use error::Source;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// `[server]`
    server: Spanned<server::RawServer>,
    /// `[[upstreams]]`
    #[serde(default)]
    upstreams: Vec<Spanned<upstreams::RawUpstream>>,
    /// `[[routes]]`
    #[serde(default)]
    routes: Vec<Spanned<routes::RawRoute>>,
    /// `[[plugins]]`
    #[serde(default)]
    plugins: Vec<Spanned<plugins::RawPlugin>>,
    /// `[[limits]]`
    #[serde(default)]
    limits: Vec<Spanned<limits::RawLimit>>,
    /// `[redis]`: where limits with `backend = "redis"` count.
    redis: Option<Spanned<limits::RawRedis>>,
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
    pub limits: Vec<LimitConfig>,
    pub redis: Option<RedisConfig>,
}

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

/// Validates section by section, in an order that lets routes name upstreams and plugins.
fn validate(raw: RawConfig, src: &Source<'_>) -> Result<Config, ConfigError> {
    let (server, default_body) = server::validate(src, raw.server)?;
    let upstreams = upstreams::validate(src, raw.upstreams)?;
    let plugins = plugins::validate(src, raw.plugins, raw.redis.is_some())?;
    let (limits, redis) = limits::validate(src, raw.limits, raw.redis)?;
    let routes = routes::validate(src, raw.routes, &upstreams, &plugins, &limits, default_body)?;
    Ok(Config {
        source: src.file.to_path_buf(),
        hash: crate::hash::hash_bytes(src.text.as_bytes()),
        text: src.text.into(),
        server,
        upstreams,
        routes,
        plugins,
        limits,
        redis,
    })
}

#[cfg(test)]
mod properties;
