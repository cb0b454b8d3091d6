//! `[[plugins]]`: the WebAssembly components routes may enable by name, with the limits
//! every call of theirs runs under.

use super::error::{ConfigError, Source};
use super::section::Section;
use super::units::{Dur, Size};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// `[[plugins]]`: a WebAssembly component, enabled per route by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    /// `name = "api-key"`: unique among plugins; routes enable it by this name.
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

/// Validates `[[plugins]]`; their names must be unique and their files exist.
pub(super) fn validate(
    src: &Source<'_>,
    raw: Vec<Spanned<RawPlugin>>,
) -> Result<Vec<PluginConfig>, ConfigError> {
    let base = src.file.parent().unwrap_or(Path::new("."));
    let mut plugins: Vec<PluginConfig> = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let cx = Section::new(src, format!("plugins[{i}]"), p.span());
        let p = p.into_inner();
        let name = cx.name(&p.name, "plugin", plugins.iter().map(|q| q.name.as_str()))?;
        let path = base.join(p.path.get_ref());
        if !path.is_file() {
            return Err(cx.error(
                p.path.span(),
                "path",
                format!("plugin file `{}` does not exist", path.display()),
            ));
        }
        // `pool_size` has no span of its own: an error about it points at the name.
        let pool_size = p.pool_size.map(|n| Spanned::new(p.name.span(), n));
        let pool_size = cx.between(&pool_size, "pool_size", 1..=1024)?.unwrap_or(8);
        plugins.push(PluginConfig {
            name,
            path,
            memory_limit: p.memory_limit.map_or(64 << 20, |v| v.0),
            timeout: p.timeout.map_or(Duration::from_millis(20), |d| d.0),
            on_error: p.on_error,
            pool_size,
        });
    }
    Ok(plugins)
}
