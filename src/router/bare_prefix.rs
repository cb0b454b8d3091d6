//! The bare-prefix check `portcullis validate` (and the gateway at start and reload)
//! warns with: a route without an auth plugin that the router would offer a request to
//! *before* an authenticated prefix route, for a request that the authenticated route is
//! there to guard, its bare prefix.
//!
//! Precisely: for every route A with an auth plugin and `path_prefix = P`, the probe
//! requests are P and (when P ends in `/`) P without its trailing slash, for each host A
//! takes (its own names, and the names other routes list that A's also match; any host
//! when A lists none) and each method A takes (its own, or GET and every method another
//! route lists), carrying every header and query pair any route requires (a client may
//! send them all). Each probe goes through the router's own matching
//! ([`Router::candidates`]); every route without an auth plugin that comes before A is
//! reported, once per pair of routes, with the first probe it took.

use super::{host_matches, Router};
use crate::config::{Config, PathMatch, RouteConfig};
use http::Method;
use std::borrow::Borrow;
use std::fmt;

/// A route without auth that the router prefers to an authenticated route for one of the
/// latter's bare-prefix requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// The route without auth (`routes[by]`).
    pub by: usize,
    /// The authenticated prefix route it comes before (`routes[guarded]`).
    pub guarded: usize,
    pub method: Method,
    pub host: Option<String>,
    pub path: String,
}

/// A route with its index, so the router's candidates say which route they are.
struct Indexed<'a>(usize, &'a RouteConfig);

impl Borrow<RouteConfig> for Indexed<'_> {
    fn borrow(&self) -> &RouteConfig {
        self.1
    }
}

/// The routes without auth that take a bare-prefix request of an authenticated prefix
/// route before it; `authenticated[i]` says whether `routes[i]` runs an auth plugin.
pub fn shadows(routes: &[RouteConfig], authenticated: &[bool]) -> Vec<Shadow> {
    let router = Router::new(
        routes
            .iter()
            .enumerate()
            .map(|(i, r)| Indexed(i, r))
            .collect(),
    );
    // Everything any route requires besides path, host and method: a hostile client
    // sends it all, and `headers_match` / `query_matches` accept any one of several values.
    let mut probe = http::Request::builder();
    let mut query = Vec::new();
    for r in routes {
        for (name, value) in &r.headers {
            probe = probe.header(name, value);
        }
        query.extend(r.query.iter().map(|(k, v)| format!("{k}={v}")));
    }
    let (mut parts, ()) = probe
        .body(())
        .expect("valid header names and values")
        .into_parts();
    let query = query.join("&");
    let mut out: Vec<Shadow> = Vec::new();
    for (guarded, a) in routes.iter().enumerate() {
        let PathMatch::Prefix(prefix) = &a.path else {
            continue;
        };
        if !authenticated[guarded] {
            continue;
        }
        let bare = prefix.strip_suffix('/').filter(|b| !b.is_empty());
        for path in std::iter::once(prefix.as_str()).chain(bare) {
            parts.uri = format!("{path}?{query}")
                .parse()
                .expect("a normalized path");
            for host in probe_hosts(a, routes) {
                for method in probe_methods(a, routes) {
                    parts.method = method.clone();
                    for c in router.candidates(&parts, path, host.as_deref()) {
                        if c.0 == guarded {
                            break;
                        }
                        if !authenticated[c.0]
                            && !out.iter().any(|s| s.by == c.0 && s.guarded == guarded)
                        {
                            out.push(Shadow {
                                by: c.0,
                                guarded,
                                method: method.clone(),
                                host: host.clone(),
                                path: path.to_string(),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// A host name a `hosts` entry matches: itself, or a name under a `*.domain`.
fn example_host(pattern: &str) -> String {
    match pattern.strip_prefix("*.") {
        Some(domain) => format!("any.{domain}"),
        None => pattern.to_string(),
    }
}

/// The hosts `a` takes that some route names (`None`: no Host, when `a` takes any).
fn probe_hosts(a: &RouteConfig, routes: &[RouteConfig]) -> Vec<Option<String>> {
    let mut hosts: Vec<Option<String>> = Vec::new();
    if a.hosts.is_empty() {
        hosts.push(None);
    }
    for h in routes
        .iter()
        .flat_map(|r| &r.hosts)
        .map(|h| example_host(h))
    {
        if host_matches(&a.hosts, Some(&h)) && !hosts.contains(&Some(h.clone())) {
            hosts.push(Some(h));
        }
    }
    hosts
}

/// The methods `a` takes that matter: its own, or GET and every method a route names.
fn probe_methods(a: &RouteConfig, routes: &[RouteConfig]) -> Vec<Method> {
    if let Some(ms) = &a.methods {
        return ms.clone();
    }
    let mut methods = vec![Method::GET];
    for m in routes.iter().flat_map(|r| r.methods.iter().flatten()) {
        if !methods.contains(m) {
            methods.push(m.clone());
        }
    }
    methods
}

/// A [`Shadow`] worded for `config`'s file: where the route without auth is, which
/// request it takes and which route it takes it from.
pub struct Warning<'a> {
    pub config: &'a Config,
    pub shadow: Shadow,
}

impl fmt::Display for Warning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shadow;
        let (by, guarded) = (&self.config.routes[s.by], &self.config.routes[s.guarded]);
        let PathMatch::Prefix(prefix) = &guarded.path else {
            unreachable!("only prefix routes are guarded")
        };
        write!(
            f,
            "{}:{}:{}: route `{}` (no auth plugin) takes {} {}",
            self.config.source.display(),
            by.position.0,
            by.position.1,
            by.name,
            s.method,
            s.path
        )?;
        if let Some(h) = &s.host {
            write!(f, " (Host {h})")?;
        }
        write!(
            f,
            " before route `{}` (line {}, path_prefix = \"{prefix}\") with its auth plugin",
            guarded.name, guarded.position.0
        )
    }
}

/// The bare-prefix warnings of a loaded config; `authenticated` as in [`shadows`].
pub fn warnings<'a>(config: &'a Config, authenticated: &[bool]) -> Vec<Warning<'a>> {
    shadows(&config.routes, authenticated)
        .into_iter()
        .map(|shadow| Warning { config, shadow })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The shadows of `routes` (TOML), the routes whose name starts with `auth` being the
    /// authenticated ones: `(by, guarded, "METHOD path")`.
    fn shadowed(routes: &str) -> Vec<(String, String, String)> {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"u\"\ntargets = [{{ address = \"127.0.0.1:1\" }}]\n{routes}"
        );
        let config = crate::config::parse(&text, Path::new("t.toml")).unwrap();
        let auth: Vec<bool> = config
            .routes
            .iter()
            .map(|r| r.name.starts_with("auth"))
            .collect();
        shadows(&config.routes, &auth)
            .into_iter()
            .map(|s| {
                (
                    config.routes[s.by].name.clone(),
                    config.routes[s.guarded].name.clone(),
                    format!("{} {}", s.method, s.path),
                )
            })
            .collect()
    }

    fn route(name: &str, rest: &str) -> String {
        format!("[[routes]]\nname = \"{name}\"\nupstream = \"u\"\n{rest}\n")
    }

    #[test]
    fn a_catch_all_does_not_shadow_a_longer_prefix() {
        let routes = route("all", "path_prefix = \"/\"")
            + &route("auth-secure", "path_prefix = \"/secure/\"")
            + &route("regex", "path_regex = \"^/secure\"");
        assert_eq!(shadowed(&routes), []);
    }

    #[test]
    fn an_exact_route_takes_the_bare_prefix() {
        let routes = route("auth-secure", "path_prefix = \"/secure/\"")
            + &route("open", "path = \"/secure\"");
        assert_eq!(
            shadowed(&routes),
            [("open".into(), "auth-secure".into(), "GET /secure".into())]
        );
    }

    #[test]
    fn a_same_prefix_earlier_in_the_file_for_any_host_or_some_method() {
        // Host-scoped auth, and an earlier route with the same prefix for every host.
        let routes = route("open", "path_prefix = \"/h/\"")
            + &route(
                "auth-h",
                "path_prefix = \"/h/\"\nhosts = [\"secure.example\"]",
            );
        assert_eq!(
            shadowed(&routes),
            [("open".into(), "auth-h".into(), "GET /h/".into())]
        );
        // Only for POST: still a way past the auth.
        let routes = route("open", "path_prefix = \"/h/\"\nmethods = [\"POST\"]")
            + &route("auth-h", "path_prefix = \"/h/\"");
        assert_eq!(
            shadowed(&routes),
            [("open".into(), "auth-h".into(), "POST /h/".into())]
        );
        // For another host only: no overlap.
        let routes = route("open", "path_prefix = \"/h/\"\nhosts = [\"other.example\"]")
            + &route(
                "auth-h",
                "path_prefix = \"/h/\"\nhosts = [\"secure.example\"]",
            );
        assert_eq!(shadowed(&routes), []);
        // A wildcard guarded route and an exact host under it.
        let routes = route("open", "path = \"/h\"\nhosts = [\"a.example\"]")
            + &route("auth-h", "path_prefix = \"/h/\"\nhosts = [\"*.example\"]");
        assert_eq!(
            shadowed(&routes),
            [("open".into(), "auth-h".into(), "GET /h".into())]
        );
    }

    #[test]
    fn headers_a_client_can_send_do_not_hide_a_shadow_and_auth_ahead_is_fine() {
        let routes = route("open", "path = \"/s\"\nheaders = { \"x-debug\" = \"1\" }")
            + &route("auth-s", "path_prefix = \"/s/\"");
        assert_eq!(
            shadowed(&routes),
            [("open".into(), "auth-s".into(), "GET /s".into())]
        );
        let routes =
            route("auth-exact", "path = \"/s\"") + &route("auth-s", "path_prefix = \"/s/\"");
        assert_eq!(shadowed(&routes), []);
    }
}
