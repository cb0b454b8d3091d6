//! `[[routes]]`: which requests a route takes (path, methods, hosts, headers, query), the
//! upstream it sends them to, the Host it sends, its limits, its plugin chain, and the
//! upgrades (WebSocket) it forwards with their bounds (`upgrades`, `[routes.tunnel]`).

use super::error::{ConfigError, Source};
use super::limits::{LimitConfig, LimitKind};
use super::plugins::PluginConfig;
use super::resilience::{self, Condition, Conditions};
use super::section::Section;
use super::units::{Dur, Size};
use super::upstreams::{Protocol, UpstreamConfig};
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

// ---------------------------------------------------------------------------------------
// As written.
// ---------------------------------------------------------------------------------------

/// `[[routes]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    /// `name = "chat"`: unique among routes (metrics and logs use it).
    name: Spanned<String>,
    /// `path = "/v1/models"`: exactly this path (one of `path`, `path_prefix`, `path_regex`).
    path: Option<Spanned<String>>,
    /// `path_prefix = "/v1"`: this path and everything below it.
    path_prefix: Option<Spanned<String>>,
    /// `path_regex = "^/v[0-9]+/models"`: searched, so anchor it.
    path_regex: Option<Spanned<String>>,
    /// `methods = ["GET", "POST"]` (default: every method).
    methods: Option<Vec<Spanned<String>>>,
    /// `hosts = ["api.example.com", "*.example.com"]` (default: any host).
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    /// `headers = { "x-tenant" = "acme" }`: headers the request must carry with these values.
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    /// `query = { plan = "pro" }`: query parameters the request must carry.
    #[serde(default)]
    query: BTreeMap<String, String>,
    /// `strip_prefix = false`: forward the path without `path_prefix`.
    #[serde(default)]
    strip_prefix: bool,
    /// `upstream = "chat"`: the `[[upstreams]]` name requests go to (a route with `parts`
    /// has none).
    upstream: Option<Spanned<String>>,
    /// `preserve_host = false`: send the client's Host instead of the target's address.
    #[serde(default)]
    preserve_host: bool,
    /// `host_rewrite = "api.internal"`: send this Host to the upstream.
    host_rewrite: Option<Spanned<String>>,
    /// `max_body_size = "10MiB"` (default: `server.max_body_size`; 413 beyond).
    max_body_size: Option<Size>,
    /// `request_timeout = "60s"` (default: the upstream's).
    request_timeout: Option<Dur>,
    /// `plugins = [{ name = "api-key", config = { ... } }]`, run in this order.
    #[serde(default)]
    plugins: Vec<Spanned<RawRoutePlugin>>,
    /// `buffer_request_body = "1MiB"`: buffer request bodies up to this size so plugins
    /// can read them (larger bodies get 413).
    buffer_request_body: Option<Size>,
    /// `fallback = [{ upstream = "self-hosted", model = "llama-3-70b" }]`: tried in order
    /// when the route's upstream fails before anything was sent to the client.
    #[serde(default)]
    fallback: Vec<Spanned<RawFallback>>,
    /// `fallback_on = ["connect", "timeout", "reset", "5xx", 429]`: what falls back.
    fallback_on: Option<Spanned<Vec<Spanned<Condition>>>>,
    /// `first_token_timeout = "10s"`: a 2xx whose body sends nothing within this falls
    /// back too (the response is held until its first bytes).
    first_token_timeout: Option<Spanned<Dur>>,
    /// `[routes.ai]`: the route serves model APIs (usage accounting; see `config/ai.rs`).
    ai: Option<Spanned<super::ai::RawAi>>,
    /// `[routes.events]`: how `stream-transform` plugins see event streams.
    events: Option<Spanned<super::events::RawEvents>>,
    /// `upgrades = ["websocket"]`: the `Upgrade` protocols forwarded as upgrades (default
    /// `["websocket"]`; `[]` forwards upgrade requests as plain requests). HTTP/1.1
    /// upstreams only.
    upgrades: Option<Spanned<Vec<Spanned<String>>>>,
    /// `[routes.tunnel]`: the bounds of this route's upgraded connections.
    tunnel: Option<Spanned<RawTunnel>>,
    /// `limits = ["consumer-tokens", "model-concurrency"]`: `[[limits]]` names, all applied.
    #[serde(default)]
    limits: Vec<Spanned<String>>,
    /// `[[routes.parts]]`: a composite route (see `config/composite.rs`).
    #[serde(default)]
    parts: Vec<Spanned<super::composite::RawPart>>,
    /// `max_response_size = "4MiB"`: a composite route's parts' bodies together (502
    /// beyond).
    max_response_size: Option<Spanned<Size>>,
}

/// One entry of a route's `fallback = [...]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    /// `upstream = "self-hosted"`: a `[[upstreams]]` name.
    upstream: Spanned<String>,
    /// `model = "llama-3-70b"`: put in the JSON request body's `model` for this upstream.
    model: Option<Spanned<String>>,
}

/// `[routes.tunnel]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    /// `idle_timeout = "5m"`: closed after this long with no byte either way.
    idle_timeout: Option<Spanned<Dur>>,
    /// `max_duration = "24h"`: closed this long after the upgrade, busy or not.
    max_duration: Option<Spanned<Dur>>,
    /// `max_connections = 10000`: upgraded connections open at once on this route; one
    /// more is answered 503.
    max_connections: Option<Spanned<usize>>,
}

/// One entry of a route's `plugins = [...]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutePlugin {
    /// `name = "api-key"`: a `[[plugins]]` name.
    name: Spanned<String>,
    /// `config = { header = "x-api-key" }`: handed to the plugin's `configure` as JSON text.
    config: Option<toml::Table>,
}

// ---------------------------------------------------------------------------------------
// Validated.
// ---------------------------------------------------------------------------------------

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
    /// Where the route's table is in the file (line, column), for messages about it.
    pub position: (usize, usize),
    pub path: PathMatch,
    pub methods: Option<Vec<Method>>,
    /// Lowercase host names; `*.example.com` matches any subdomain.
    pub hosts: Vec<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub query: Vec<(String, String)>,
    pub strip_prefix: bool,
    /// Index into [`Config::upstreams`] (a composite route: its first part's).
    pub upstream: usize,
    pub host: HostPolicy,
    pub max_body_size: u64,
    pub request_timeout: Option<Duration>,
    pub plugins: Vec<RoutePlugin>,
    /// Request bodies are buffered (up to this size) for plugins, or to be sent again to
    /// a fallback.
    pub buffer_request_body: Option<u64>,
    /// Tried in order when the upstream fails before the response began.
    pub fallback: Vec<Fallback>,
    /// The failures that fall back (connect covers "no endpoint available" too).
    pub fallback_on: Conditions,
    /// A 2xx answer with no body bytes within this falls back too.
    pub first_token_timeout: Option<Duration>,
    /// The route serves model APIs.
    pub ai: Option<super::ai::AiConfig>,
    /// How `stream-transform` plugins see the route's event streams.
    pub events: super::events::EventsConfig,
    /// The `Upgrade` protocols forwarded as upgrades, lowercase (`websocket`).
    pub upgrades: Vec<String>,
    pub tunnel: TunnelConfig,
    /// Indices into [`Config::limits`].
    pub limits: Vec<usize>,
    /// The parts of a composite route (`[[routes.parts]]`).
    pub composite: Option<super::composite::CompositeConfig>,
}

/// The bounds of a route's upgraded connections (`[routes.tunnel]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    /// No byte either way for this long closes the tunnel.
    pub idle_timeout: Duration,
    /// The tunnel is closed this long after the upgrade.
    pub max_duration: Duration,
    /// Upgraded connections open at once on the route.
    pub max_connections: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            idle_timeout: Duration::from_secs(300),
            max_duration: Duration::from_secs(24 * 3600),
            max_connections: 10_000,
        }
    }
}

impl RouteConfig {
    /// Whether the route forwards an upgrade to `protocol` (a token of `Upgrade`, e.g.
    /// `websocket` or `foo/2`; its name before `/` is what `upgrades` lists).
    pub fn allows_upgrade(&self, protocol: &[u8]) -> bool {
        let name = protocol.split(|&b| b == b'/').next().unwrap_or(protocol);
        self.upgrades
            .iter()
            .any(|u| u.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// An upstream a route falls back to, and the model it is asked for.
#[derive(Clone, Debug)]
pub struct Fallback {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub model: Option<String>,
}

/// What a route's body is buffered up to, to be sent again to a fallback, unless
/// `buffer_request_body` says otherwise.
pub const FALLBACK_BODY: u64 = 1 << 20;

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

// ---------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------

/// Validates `[[routes]]` against the upstreams and plugins they name; route names must
/// be unique. `default_body` is `server.max_body_size`.
pub(super) fn validate(
    src: &Source<'_>,
    raw: Vec<Spanned<RawRoute>>,
    upstreams: &[UpstreamConfig],
    plugins: &[PluginConfig],
    limits: &[LimitConfig],
    default_body: u64,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut routes: Vec<RouteConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let cx = Section::new(src, format!("routes[{i}]"), r.span());
        let r = r.into_inner();
        let name = cx.name(&r.name, "route", routes.iter().map(|q| q.name.as_str()))?;
        routes.push(route(
            &cx,
            name,
            r,
            upstreams,
            plugins,
            limits,
            default_body,
        )?);
    }
    Ok(routes)
}

/// One route, its name already checked.
fn route(
    cx: &Section<'_>,
    name: String,
    r: RawRoute,
    upstreams: &[UpstreamConfig],
    plugins: &[PluginConfig],
    limits: &[LimitConfig],
    default_body: u64,
) -> Result<RouteConfig, ConfigError> {
    let path = match (&r.path, &r.path_prefix, &r.path_regex) {
        (Some(p), None, None) => PathMatch::Exact(check_path(cx, p, "path")?),
        (None, Some(p), None) => PathMatch::Prefix(check_path(cx, p, "path_prefix")?),
        (None, None, Some(p)) => PathMatch::Regex(
            Regex::new(p.get_ref())
                .map_err(|e| cx.error(p.span(), "path_regex", format!("invalid regex: {e}")))?,
        ),
        (None, None, None) => {
            return Err(cx.error_at_table(
                "path",
                format!("route `{name}` needs one of `path`, `path_prefix` or `path_regex`"),
            ))
        }
        _ => {
            return Err(cx.error_at_table(
                "path",
                format!(
                    "route `{name}` may have only one of `path`, `path_prefix` and `path_regex`"
                ),
            ))
        }
    };
    if r.strip_prefix && !matches!(path, PathMatch::Prefix(_)) {
        return Err(cx.error_at_table("strip_prefix", "needs `path_prefix`"));
    }
    let (methods, hosts, headers) = matchers(cx, &r)?;
    let composite = super::composite::validate(
        cx,
        &name,
        &r.parts,
        &r.max_response_size,
        r.request_timeout.map(|d| d.0),
        super::composite::Incompatible {
            upstream: r.upstream.as_ref(),
            fallback: !r.fallback.is_empty(),
            ai: r.ai.as_ref().map(Spanned::span),
            preserve_host: r.preserve_host,
            upgrades: r.upgrades.as_ref().map(Spanned::span),
        },
        upstreams,
    )?;
    let upstream = match (&r.upstream, &composite) {
        (Some(u), _) => upstream_index(cx, &name, u, "upstream", upstreams)?,
        (None, Some(c)) => c.parts[0].upstream,
        (None, None) => {
            return Err(cx.error_at_table(
                "upstream",
                format!("route `{name}` needs `upstream` (or `[[routes.parts]]`)"),
            ))
        }
    };
    let fallback = r
        .fallback
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let key = format!("fallback[{i}]");
            let f = f.get_ref();
            let model = match &f.model {
                Some(m) if m.get_ref().trim().is_empty() => {
                    return Err(cx.error(m.span(), &format!("{key}.model"), "must not be empty"))
                }
                m => m.as_ref().map(|m| m.get_ref().clone()),
            };
            Ok(Fallback {
                upstream: upstream_index(
                    cx,
                    &name,
                    &f.upstream,
                    &format!("{key}.upstream"),
                    upstreams,
                )?,
                model,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fallback_on = match &r.fallback_on {
        None => Conditions {
            connect: true,
            timeout: true,
            reset: true,
            any_5xx: true,
            statuses: vec![429],
        },
        Some(_) if fallback.is_empty() => {
            return Err(cx.error_at_table("fallback_on", "needs `fallback`"))
        }
        Some(l) => resilience::conditions(cx, l, "fallback_on", resilience::FAILURE_WORDS)?,
    };
    let first_token_timeout = match &r.first_token_timeout {
        Some(t) if fallback.is_empty() => {
            return Err(cx.error(t.span(), "first_token_timeout", "needs `fallback`"))
        }
        t => cx.positive(t, "first_token_timeout")?,
    };
    let max_body_size = r.max_body_size.map_or(default_body, |v| v.0);
    let buffer_request_body = match r.buffer_request_body {
        Some(v) => Some(v.0),
        None if !fallback.is_empty() => Some(FALLBACK_BODY.min(max_body_size)),
        None if composite.is_some() => Some(super::composite::COMPOSITE_BODY.min(max_body_size)),
        None => None,
    };
    let host = match (&r.host_rewrite, r.preserve_host) {
        (Some(h), false) => HostPolicy::Rewrite(
            HeaderValue::from_str(h.get_ref())
                .ok()
                .filter(|_| h.get_ref().parse::<http::uri::Authority>().is_ok())
                .ok_or_else(|| {
                    cx.error(
                        h.span(),
                        "host_rewrite",
                        format!("`{}` is not a host", h.get_ref()),
                    )
                })?,
        ),
        (Some(h), true) => {
            return Err(cx.error(
                h.span(),
                "host_rewrite",
                "cannot be combined with preserve_host = true",
            ))
        }
        (None, true) => HostPolicy::Preserve,
        (None, false) => HostPolicy::Target,
    };
    let route_plugins = plugin_chain(cx, &name, &r.plugins, plugins)?;
    let ai = r.ai.map(|a| super::ai::validate(cx, a)).transpose()?;
    let events = super::events::validate(cx, r.events)?;
    let upgrades = match composite {
        Some(_) => Vec::new(),
        None => upgrades(cx, &r.upgrades, upstreams[upstream].protocol)?,
    };
    let tunnel = match &r.tunnel {
        None => TunnelConfig::default(),
        Some(t) => tunnel(&cx.table("tunnel", t.span()), t.get_ref())?,
    };
    let limits = route_limits(cx, &r.limits, limits, ai.is_some())?;
    Ok(RouteConfig {
        name,
        position: cx.src.line_col(cx.span.start),
        path,
        methods,
        hosts,
        headers,
        query: r.query.into_iter().collect(),
        strip_prefix: r.strip_prefix,
        upstream,
        host,
        max_body_size,
        request_timeout: r.request_timeout.map(|d| d.0),
        plugins: route_plugins,
        buffer_request_body,
        fallback,
        fallback_on,
        first_token_timeout,
        ai,
        events,
        upgrades,
        tunnel,
        limits,
        composite,
    })
}

/// `upgrades = [...]`: protocol names (HTTP tokens, compared without case). Upgrades are
/// forwarded to HTTP/1.1 upstreams only, so a route to an `h2` upstream forwards none, and
/// naming one there is an error.
fn upgrades(
    cx: &Section<'_>,
    raw: &Option<Spanned<Vec<Spanned<String>>>>,
    protocol: Protocol,
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = raw else {
        return Ok(match protocol {
            Protocol::Http1 => vec!["websocket".to_string()],
            Protocol::H2 => Vec::new(),
        });
    };
    if protocol == Protocol::H2 && !list.get_ref().is_empty() {
        return Err(cx.error(
            list.span(),
            "upgrades",
            "upgrades are forwarded to HTTP/1.1 upstreams only; this route's upstream has protocol = \"h2\"",
        ));
    }
    let mut out = Vec::new();
    for p in list.get_ref() {
        let v = p.get_ref();
        let token = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(cx.error(
                p.span(),
                "upgrades",
                format!("`{v}` is not a protocol name (an HTTP token, e.g. \"websocket\")"),
            ));
        }
        out.push(v.to_ascii_lowercase());
    }
    Ok(out)
}

/// `[routes.tunnel]`, over the defaults.
fn tunnel(cx: &Section<'_>, t: &RawTunnel) -> Result<TunnelConfig, ConfigError> {
    let d = TunnelConfig::default();
    Ok(TunnelConfig {
        idle_timeout: cx
            .positive(&t.idle_timeout, "idle_timeout")?
            .unwrap_or(d.idle_timeout),
        max_duration: cx
            .positive(&t.max_duration, "max_duration")?
            .unwrap_or(d.max_duration),
        max_connections: cx
            .between(&t.max_connections, "max_connections", 1..=10_000_000)?
            .unwrap_or(d.max_connections),
    })
}

/// The indices of the limits a route applies; a `tokens` limit needs `[routes.ai]`.
fn route_limits(
    cx: &Section<'_>,
    names: &[Spanned<String>],
    limits: &[LimitConfig],
    ai: bool,
) -> Result<Vec<usize>, ConfigError> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let Some(i) = limits.iter().position(|l| l.name == *n.get_ref()) else {
            let known: Vec<&str> = limits.iter().map(|l| l.name.as_str()).collect();
            return Err(cx.error(
                n.span(),
                "limits",
                format!("unknown limit `{}` (known: {known:?})", n.get_ref()),
            ));
        };
        if out.contains(&i) {
            return Err(cx.error(
                n.span(),
                "limits",
                format!("`{}` is named twice", n.get_ref()),
            ));
        }
        if !ai && matches!(limits[i].kind, LimitKind::Tokens { .. }) {
            return Err(cx.error(
                n.span(),
                "limits",
                format!(
                    "`{}` counts tokens: the route needs `[routes.ai]`",
                    n.get_ref()
                ),
            ));
        }
        out.push(i);
    }
    Ok(out)
}

/// The index of the upstream `value` names, for `key` of route `route`.
fn upstream_index(
    cx: &Section<'_>,
    route: &str,
    value: &Spanned<String>,
    key: &str,
    upstreams: &[UpstreamConfig],
) -> Result<usize, ConfigError> {
    upstreams
        .iter()
        .position(|u| u.name == *value.get_ref())
        .ok_or_else(|| {
            let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
            cx.error(
                value.span(),
                key,
                format!(
                    "route `{route}` names unknown upstream `{}` (known: {})",
                    value.get_ref(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
}

/// What a request must carry besides its path: `methods`, `hosts`, `headers`.
type Matchers = (
    Option<Vec<Method>>,
    Vec<String>,
    Vec<(HeaderName, HeaderValue)>,
);

fn matchers(cx: &Section<'_>, r: &RawRoute) -> Result<Matchers, ConfigError> {
    let methods = match &r.methods {
        None => None,
        Some(ms) => {
            if ms.is_empty() {
                return Err(cx.error_at_table(
                    "methods",
                    "must not be empty (leave it out to allow every method)",
                ));
            }
            let mut out = Vec::new();
            for m in ms {
                let up = m.get_ref().to_ascii_uppercase();
                let method = Method::from_bytes(up.as_bytes()).map_err(|_| {
                    cx.error(
                        m.span(),
                        "methods",
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
        if bare.is_empty() || bare.parse::<http::uri::Authority>().is_err() || bare.contains('*') {
            return Err(cx.error(
                h.span(),
                "hosts",
                format!("`{}` is not a host name (or `*.domain`)", h.get_ref()),
            ));
        }
        hosts.push(v);
    }
    let mut headers = Vec::new();
    for (n, v) in &r.headers {
        let hn = HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
            cx.error(
                v.span(),
                &format!("headers.{n}"),
                format!("`{n}` is not a header name"),
            )
        })?;
        let hv = HeaderValue::from_str(v.get_ref()).map_err(|_| {
            cx.error(
                v.span(),
                &format!("headers.{n}"),
                "not a valid header value",
            )
        })?;
        headers.push((hn, hv));
    }
    Ok((methods, hosts, headers))
}

/// `plugins = [...]` of route `name`: each names a `[[plugins]]` entry.
fn plugin_chain(
    cx: &Section<'_>,
    name: &str,
    raw: &[Spanned<RawRoutePlugin>],
    plugins: &[PluginConfig],
) -> Result<Vec<RoutePlugin>, ConfigError> {
    let mut route_plugins = Vec::new();
    for (j, rp) in raw.iter().enumerate() {
        let span = rp.span();
        let rp = rp.get_ref();
        let k = format!("plugins[{j}]");
        let Some(plugin) = plugins.iter().position(|p| p.name == *rp.name.get_ref()) else {
            return Err(cx.error(
                rp.name.span(),
                &format!("{k}.name"),
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
            position: cx.src.line_col(span.start),
            key: cx.key(&k),
        });
    }
    Ok(route_plugins)
}

pub(super) fn check_path(
    cx: &Section<'_>,
    p: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let v = p.get_ref();
    if !v.starts_with('/') {
        return Err(cx.error(p.span(), key, format!("`{v}` must start with `/`")));
    }
    // Routes match normalized paths, so a route written un-normalized could never match.
    match crate::normalize::normalize_path(v) {
        Ok(n) if n == v.as_str() => Ok(v.clone()),
        Ok(n) => Err(cx.error(
            p.span(),
            key,
            format!("`{v}` is not in normal form; write `{n}`"),
        )),
        Err(e) => Err(cx.error(p.span(), key, format!("`{v}`: {e}"))),
    }
}
