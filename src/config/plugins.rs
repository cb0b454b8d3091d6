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
    /// `max_warm = 16`: warm instances kept per worker over all the routes that use the
    /// plugin; past it the least recently used one is dropped (default: 16, or `pool_size`
    /// when that is larger).
    max_warm: Option<Spanned<usize>>,
    /// `idle_timeout = "60s"`: a warm instance unused this long is dropped.
    idle_timeout: Option<Spanned<Dur>>,
    /// `allowed_hosts = ["https://idp.example.com", "http://10.0.0.7:8080"]`: where the
    /// plugin may send requests through `wasi:http/outgoing-handler` (scheme, host and
    /// optional port; the scheme's default port when none). Nothing by default.
    allowed_hosts: Option<Vec<Spanned<String>>>,
    /// `io_timeout = "5s"`: the wall-clock limit of one hook call of a plugin with a
    /// capability, time spent waiting on the network and the key-value store included;
    /// every outbound request is bounded by what is left of it. (`timeout` stays the CPU
    /// deadline: waiting does not count against it.)
    io_timeout: Option<Spanned<Dur>>,
    /// `max_response_size = "1MiB"`: the largest response body an outbound request may
    /// read; past it the body fails with `http-response-body-size`.
    max_response_size: Option<Spanned<Size>>,
    /// `keyvalue = { backend = "local", namespace = "sessions" }`: grants `wasi:keyvalue`
    /// on one namespace (default: the plugin's name), in this gateway's memory (`"local"`,
    /// shared by all workers) or in Redis (`"redis"`, the `[redis]` connection settings,
    /// shared by every gateway using that Redis).
    keyvalue: Option<Spanned<RawKeyValue>>,
}

/// `keyvalue = { ... }` of a `[[plugins]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyValue {
    /// `backend = "local" | "redis"`
    backend: Option<Spanned<String>>,
    /// `namespace = "sessions"`: the one bucket name `wasi:keyvalue/store.open` accepts.
    namespace: Option<Spanned<String>>,
}

/// Where a plugin's key-value namespace lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyValueBackend {
    /// This gateway's memory, shared by its workers.
    Local,
    /// Redis (`[redis]`), shared by every gateway that uses it.
    Redis,
}

/// The key-value grant of a plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValueGrant {
    pub namespace: String,
    pub backend: KeyValueBackend,
}

/// One entry of `allowed_hosts`: an origin the plugin may call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    /// `http` or `https`.
    pub https: bool,
    /// Lower-cased host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl AllowedHost {
    /// Parses `scheme://host[:port]` (nothing after it but an optional `/`).
    pub fn parse(s: &str) -> Result<AllowedHost, String> {
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{s}` must start with http:// or https://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', '*']) {
            return Err(format!(
                "`{s}` must be scheme://host[:port] (no path, user or wildcard)"
            ));
        }
        let auth: http::uri::Authority = rest
            .parse()
            .map_err(|_| format!("`{s}` does not hold a valid host[:port]"))?;
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        // The port as written (`Authority::port` hides one that is out of range).
        let written = auth
            .as_str()
            .rsplit_once(':')
            .map(|(_, p)| p)
            .filter(|p| !p.contains(']'));
        let port = match written {
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("`{s}`: the port must be 1 to 65535")),
                Ok(p) => p,
            },
            None if https => 443,
            None => 80,
        };
        Ok(AllowedHost {
            https,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// `scheme://host:port`, as logs and errors name it.
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// What a plugin may use beyond its request: none of it unless granted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub allowed_hosts: Vec<AllowedHost>,
    pub keyvalue: Option<KeyValueGrant>,
    /// Wall-clock limit of one hook call (see `io_timeout`).
    pub io_timeout: Duration,
    /// Largest outbound response body.
    pub max_response_size: u64,
}

impl Capabilities {
    /// Whether the plugin was granted anything (a plugin with nothing granted runs
    /// exactly as before capabilities existed: no call hooks, no wall-clock bound).
    pub fn any(&self) -> bool {
        !self.allowed_hosts.is_empty() || self.keyvalue.is_some()
    }
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
    pub max_warm: usize,
    pub idle_timeout: Duration,
    pub capabilities: Capabilities,
}

/// Validates `[[plugins]]`; their names must be unique and their files exist.
pub(super) fn validate(
    src: &Source<'_>,
    raw: Vec<Spanned<RawPlugin>>,
    have_redis: bool,
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
        let max_warm = cx
            .between(&p.max_warm, "max_warm", 1..=4096)?
            .unwrap_or(pool_size.max(16));
        let idle_timeout = cx
            .positive(&p.idle_timeout, "idle_timeout")?
            .unwrap_or(Duration::from_secs(60));
        let capabilities = capabilities(&cx, &name, &p, have_redis)?;
        plugins.push(PluginConfig {
            name,
            path,
            memory_limit: p.memory_limit.map_or(64 << 20, |v| v.0),
            timeout: p.timeout.map_or(Duration::from_millis(20), |d| d.0),
            on_error: p.on_error,
            pool_size,
            max_warm,
            idle_timeout,
            capabilities,
        });
    }
    Ok(plugins)
}

/// The grants of one `[[plugins]]` entry.
fn capabilities(
    cx: &Section<'_>,
    name: &str,
    p: &RawPlugin,
    have_redis: bool,
) -> Result<Capabilities, ConfigError> {
    let mut allowed_hosts = Vec::new();
    for h in p.allowed_hosts.iter().flatten() {
        let a =
            AllowedHost::parse(h.get_ref()).map_err(|e| cx.error(h.span(), "allowed_hosts", e))?;
        if !allowed_hosts.contains(&a) {
            allowed_hosts.push(a);
        }
    }
    let io_timeout = cx
        .positive(&p.io_timeout, "io_timeout")?
        .unwrap_or(Duration::from_secs(5));
    let max_response_size = match &p.max_response_size {
        Some(s) if s.get_ref().0 == 0 => {
            return Err(cx.error(s.span(), "max_response_size", "must be more than 0"))
        }
        Some(s) => s.get_ref().0,
        None => 1 << 20,
    };
    let keyvalue = match &p.keyvalue {
        None => None,
        Some(kv) => {
            let kcx = cx.table("keyvalue", kv.span());
            let backend = kcx.choice(
                &kv.get_ref().backend,
                "backend",
                "key-value backend",
                &[
                    ("local", KeyValueBackend::Local),
                    ("redis", KeyValueBackend::Redis),
                ],
                KeyValueBackend::Local,
            )?;
            if backend == KeyValueBackend::Redis && !have_redis {
                let span = super::section::span_or(&kv.get_ref().backend, &kv.span());
                return Err(kcx.error(span, "backend", "`redis` needs a `[redis]` table"));
            }
            let namespace = match &kv.get_ref().namespace {
                None => name.to_string(),
                Some(n) => {
                    let v = n.get_ref();
                    if v.is_empty()
                        || v.len() > 128
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    {
                        return Err(kcx.error(
                            n.span(),
                            "namespace",
                            "must be 1 to 128 characters of A-Z, a-z, 0-9, `-`, `_` or `.`",
                        ));
                    }
                    v.clone()
                }
            };
            Some(KeyValueGrant { namespace, backend })
        }
    };
    Ok(Capabilities {
        allowed_hosts,
        keyvalue,
        io_timeout,
        max_response_size,
    })
}

#[cfg(test)]
mod tests {
    use super::AllowedHost;

    #[test]
    fn allowed_hosts_parse_scheme_host_and_port() {
        let a = AllowedHost::parse("https://IdP.example.com").unwrap();
        assert_eq!(
            (a.https, a.host.as_str(), a.port),
            (true, "idp.example.com", 443)
        );
        let a = AllowedHost::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (a.https, a.host.as_str(), a.port),
            (false, "127.0.0.1", 8080)
        );
        let a = AllowedHost::parse("http://[::1]:9").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 9));
        assert_eq!(a.origin(), "http://[::1]:9");
        for bad in [
            "idp.example.com",
            "ftp://x",
            "https://",
            "https://x/path",
            "https://u@x",
            "https://*.example.com",
            "https://x:0",
            "https://x:99999",
            "https://x:",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }
}
