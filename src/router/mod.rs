//! The route table: matches a normalized request against the configured routes.
//!
//! Precedence: routes with an exact `path` first, then `path_prefix` routes by descending
//! prefix length, then `path_regex` routes; within a class, file order. The first route
//! whose path, host, method, headers and query all match wins; a route that fails any of
//! them is passed over and matching goes on (as in Envoy and Kong). If no route matched
//! but some route matched everything except the method, the answer is 405 with `Allow`
//! listing the methods those routes accept; otherwise 404.
//!
//! A prefix matches on segment boundaries: `/v1/chat` matches `/v1/chat` and
//! `/v1/chat/completions` but not `/v1/chatty`; a prefix ending in `/` matches anything
//! below it and the bare prefix itself (`/secure/` takes `/secure`, which would otherwise
//! fall to a catch-all route, past the route's auth). What can still come before an
//! authenticated prefix route for its bare prefix is found by `bare_prefix`, which asks
//! this router.

pub mod bare_prefix;

use crate::config::{PathMatch, RouteConfig};
use http::request::Parts;
use http::Method;
use std::borrow::Borrow;

pub struct Router<R = RouteConfig> {
    /// Indices into `routes`, in precedence order.
    order: Vec<usize>,
    routes: Vec<R>,
}

/// The outcome of matching.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a, R> {
    Route(&'a R),
    MethodNotAllowed(Vec<&'a Method>),
    NotFound,
}

/// The router holds whatever the request path keeps per route (`R`), as long as it
/// carries the route's config.
impl<R: Borrow<RouteConfig>> Router<R> {
    pub fn new(routes: Vec<R>) -> Self {
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by_key(|&i| match &routes[i].borrow().path {
            PathMatch::Exact(_) => (0, 0, i),
            PathMatch::Prefix(p) => (1, usize::MAX - p.len(), i),
            PathMatch::Regex(_) => (2, 0, i),
        });
        Router { order, routes }
    }

    /// The routes, in config order.
    pub fn routes(&self) -> &[R] {
        &self.routes
    }

    /// Whether route `i` matches natively (path, host, headers, query, then method).
    fn check(&self, i: usize, parts: &Parts, path: &str, host: Option<&str>) -> Check {
        let r: &RouteConfig = self.routes[i].borrow();
        if !path_matches(&r.path, path)
            || !host_matches(&r.hosts, host)
            || !headers_match(r, parts)
            || !query_matches(r, parts.uri.query())
        {
            return Check::No;
        }
        match &r.methods {
            Some(ms) if !ms.contains(&parts.method) => Check::MethodOnly,
            _ => Check::Yes,
        }
    }

    /// The routes whose native conditions all hold, in precedence order. The proxy runs
    /// each one's predicate plugins on top and takes the first that accepts.
    pub fn candidates<'s: 'a, 'a>(
        &'s self,
        parts: &'a Parts,
        path: &'a str,
        host: Option<&'a str>,
    ) -> impl Iterator<Item = &'s R> + 'a {
        self.order
            .iter()
            .copied()
            .filter(move |&i| self.check(i, parts, path, host) == Check::Yes)
            .map(|i| &self.routes[i])
    }

    /// The answer when no candidate was taken: 405 with the methods of the routes that
    /// matched all but the method, else 404. Only the failure path pays for this.
    pub fn no_match(&self, parts: &Parts, path: &str, host: Option<&str>) -> Match<'_, R> {
        let mut allowed: Vec<&Method> = Vec::new();
        for &i in &self.order {
            if self.check(i, parts, path, host) == Check::MethodOnly {
                for m in self.routes[i].borrow().methods.as_deref().unwrap_or(&[]) {
                    if !allowed.contains(&m) {
                        allowed.push(m);
                    }
                }
            }
        }
        if allowed.is_empty() {
            Match::NotFound
        } else {
            Match::MethodNotAllowed(allowed)
        }
    }

    /// Matches a request whose path has already been normalized; `host` is lowercase
    /// without port. (Predicate plugins are applied by the proxy on top of this.)
    pub fn find(&self, parts: &Parts, path: &str, host: Option<&str>) -> Match<'_, R> {
        match self.candidates(parts, path, host).next() {
            Some(r) => Match::Route(r),
            None => self.no_match(parts, path, host),
        }
    }
}

/// Native match outcome of one route.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    Yes,
    /// Everything but the method matched.
    MethodOnly,
    No,
}

pub fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => {
            (path.starts_with(p.as_str())
                && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/'))
                // `/secure/` also takes `/secure`, so a catch-all cannot take the bare
                // prefix past the route's plugins.
                || p.strip_suffix('/').is_some_and(|bare| !bare.is_empty() && path == bare)
        }
        PathMatch::Regex(re) => re.is_match(path),
    }
}

fn host_matches(hosts: &[String], host: Option<&str>) -> bool {
    if hosts.is_empty() {
        return true;
    }
    let Some(host) = host else { return false };
    hosts.iter().any(|h| match h.strip_prefix("*.") {
        Some(domain) => {
            host.len() > domain.len() + 1
                && host.ends_with(domain)
                && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
        }
        None => h == host,
    })
}

fn headers_match(r: &RouteConfig, parts: &Parts) -> bool {
    r.headers
        .iter()
        .all(|(name, want)| parts.headers.get_all(name).iter().any(|v| v == want))
}

fn query_matches(r: &RouteConfig, query: Option<&str>) -> bool {
    if r.query.is_empty() {
        return true;
    }
    let Some(query) = query else { return false };
    r.query.iter().all(|(k, want)| {
        query.split('&').any(|pair| {
            let (pk, pv) = pair.split_once('=').unwrap_or((pair, ""));
            pk == k && pv == want
        })
    })
}

/// The path to forward: the normalized path, minus the route's prefix when `strip_prefix`.
pub fn upstream_path<'p>(r: &RouteConfig, path: &'p str) -> &'p str {
    match (&r.path, r.strip_prefix) {
        (PathMatch::Prefix(p), true) => {
            let keep = if p.ends_with('/') {
                p.len() - 1
            } else {
                p.len()
            };
            let rest = &path[keep..];
            if rest.is_empty() {
                "/"
            } else {
                rest
            }
        }
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    fn router(routes: &str) -> Router {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"u\"\ntargets = [{{ address = \"127.0.0.1:1\" }}]\n{routes}"
        );
        Router::new(config::parse(&text, Path::new("t.toml")).unwrap().routes)
    }

    fn find(r: &Router, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        let host = parts.headers.get("host").and_then(|h| h.to_str().ok());
        match r.find(&parts, parts.uri.path(), host) {
            Match::Route(route) => Some(route.name.clone()),
            Match::MethodNotAllowed(_) => Some("405".into()),
            Match::NotFound => None,
        }
    }

    #[test]
    fn precedence_exact_then_longest_prefix_then_regex_then_file_order() {
        let r = router(
            r#"
[[routes]]
name = "regex"
path_regex = "^/v1/"
upstream = "u"
[[routes]]
name = "short"
path_prefix = "/v1"
upstream = "u"
[[routes]]
name = "long"
path_prefix = "/v1/chat"
upstream = "u"
[[routes]]
name = "exact"
path = "/v1/chat/completions"
upstream = "u"
[[routes]]
name = "regex2"
path_regex = "^/other"
upstream = "u"
[[routes]]
name = "regex3"
path_regex = "^/oth"
upstream = "u"
"#,
        );
        assert_eq!(
            find(&r, "GET", "/v1/chat/completions", &[]).as_deref(),
            Some("exact")
        );
        assert_eq!(find(&r, "GET", "/v1/chat/x", &[]).as_deref(), Some("long"));
        assert_eq!(find(&r, "GET", "/v1/chatty", &[]).as_deref(), Some("short"));
        assert_eq!(find(&r, "GET", "/v1", &[]).as_deref(), Some("short"));
        assert_eq!(find(&r, "GET", "/other", &[]).as_deref(), Some("regex2"));
        assert_eq!(find(&r, "GET", "/nope", &[]), None);
    }

    #[test]
    fn methods_hosts_headers_query() {
        let r = router(
            r#"
[[routes]]
name = "post"
path = "/a"
methods = ["POST"]
upstream = "u"
[[routes]]
name = "host"
path = "/h"
hosts = ["*.example.com", "api.test"]
upstream = "u"
[[routes]]
name = "hdr"
path = "/x"
headers = { "x-tenant" = "acme" }
query = { v = "2" }
upstream = "u"
"#,
        );
        assert_eq!(find(&r, "POST", "/a", &[]).as_deref(), Some("post"));
        assert_eq!(find(&r, "GET", "/a", &[]).as_deref(), Some("405"));
        assert_eq!(
            find(&r, "GET", "/h", &[("host", "a.example.com")]).as_deref(),
            Some("host")
        );
        assert_eq!(
            find(&r, "GET", "/h", &[("host", "api.test")]).as_deref(),
            Some("host")
        );
        assert_eq!(find(&r, "GET", "/h", &[("host", "example.com")]), None);
        assert_eq!(find(&r, "GET", "/h", &[("host", "evilexample.com")]), None);
        assert_eq!(
            find(&r, "GET", "/x?a=1&v=2", &[("x-tenant", "acme")]).as_deref(),
            Some("hdr")
        );
        assert_eq!(find(&r, "GET", "/x?v=2", &[("x-tenant", "other")]), None);
        assert_eq!(find(&r, "GET", "/x?v=3", &[("x-tenant", "acme")]), None);
    }

    #[test]
    fn a_prefix_ending_in_slash_takes_its_bare_prefix_before_a_catch_all() {
        let r = router(
            "[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"u\"\n[[routes]]\nname = \"secure\"\npath_prefix = \"/secure/\"\nstrip_prefix = true\nupstream = \"u\"\n",
        );
        assert_eq!(find(&r, "GET", "/secure", &[]).as_deref(), Some("secure"));
        assert_eq!(find(&r, "GET", "/secure/x", &[]).as_deref(), Some("secure"));
        assert_eq!(find(&r, "GET", "/securex", &[]).as_deref(), Some("all"));
        assert_eq!(find(&r, "GET", "/", &[]).as_deref(), Some("all"));
        assert_eq!(upstream_path(&r.routes()[1], "/secure"), "/");
    }

    #[test]
    fn strip_prefix() {
        let r = router("[[routes]]\nname = \"s\"\npath_prefix = \"/api\"\nstrip_prefix = true\nupstream = \"u\"\n");
        let route = &r.routes()[0];
        assert_eq!(upstream_path(route, "/api/v1/x"), "/v1/x");
        assert_eq!(upstream_path(route, "/api"), "/");
    }
}
