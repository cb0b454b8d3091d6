//! The per-request pipeline (DESIGN §1): normalize → route → pick an endpoint → forward
//! → stream the response back. Failures become synthetic responses in [`error`].

pub mod access_log;
pub mod body;
pub mod error;
pub mod forward;
pub mod headers;
pub mod normalize;

use crate::config::{Config, HashKey, HostPolicy, ServerConfig};
use crate::router::{self, Match, Router};
use crate::upstream::balance::hash_bytes;
use crate::upstream::{ActiveGuard, Upstream};
use access_log::AccessLog;
use body::{RequestBody, ResponseBody};
use error::ProxyError;
use forward::UpstreamClient;
pub use headers::ClientInfo;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::{Body as _, Incoming};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Everything one loaded config needs on the request path; immutable once built and
/// shared by all workers.
pub struct Tables {
    pub server: ServerConfig,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    route_names: Vec<Arc<str>>,
}

/// One worker's view of the gateway: the shared tables plus this worker's own upstream
/// connection pools, so a pooled connection is always driven by the thread that uses it.
pub struct Gateway {
    tables: Arc<Tables>,
    clients: Vec<UpstreamClient>,
}

impl std::ops::Deref for Gateway {
    type Target = Tables;
    fn deref(&self) -> &Tables {
        &self.tables
    }
}

impl Gateway {
    pub fn new(config: Config) -> Self {
        let upstreams = config
            .upstreams
            .into_iter()
            .map(|u| Arc::new(Upstream::new(u)))
            .collect();
        let route_names = config
            .routes
            .iter()
            .map(|r| Arc::from(r.name.as_str()))
            .collect();
        let tables = Arc::new(Tables {
            server: config.server,
            router: Router::new(config.routes),
            upstreams,
            route_names,
        });
        Self::with_tables(tables)
    }

    fn with_tables(tables: Arc<Tables>) -> Self {
        let clients = tables
            .upstreams
            .iter()
            .map(|u| forward::build_client(&u.config))
            .collect();
        Gateway { tables, clients }
    }

    /// The same tables (balancer state included) with fresh connection pools, for
    /// another worker thread.
    pub fn for_worker(&self) -> Self {
        Self::with_tables(self.tables.clone())
    }

    /// Serves one request. Never fails: errors become synthetic responses.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: &ClientInfo,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let request_id = headers::request_id(req.headers());
        let log = AccessLog::enabled().then(|| {
            Box::new(AccessLog {
                start,
                client: client.addr,
                method: req.method().clone(),
                path: req.uri().path().to_string(),
                route: None,
                endpoint: None,
                status: http::StatusCode::OK,
                request_id: request_id.clone(),
                upstream_ms: None,
                error: None,
            })
        });
        let (mut resp, log) = match self.proxy(req, client, &request_id, log).await {
            Ok(ok) => ok,
            Err((e, log)) => (e.to_response(&request_id), log),
        };
        resp.headers_mut().insert(headers::X_REQUEST_ID, request_id);
        if let Some(mut log) = log {
            log.status = resp.status();
            resp.body_mut().set_log(log);
        }
        resp
    }

    #[allow(clippy::type_complexity)]
    async fn proxy(
        &self,
        req: Request<Incoming>,
        client: &ClientInfo,
        request_id: &HeaderValue,
        mut log: Option<Box<AccessLog>>,
    ) -> Result<
        (Response<ResponseBody>, Option<Box<AccessLog>>),
        (ProxyError, Option<Box<AccessLog>>),
    > {
        macro_rules! fail {
            ($e:expr) => {{
                let e = $e;
                if let Some(l) = log.as_mut() {
                    l.error = Some(e.code());
                }
                return Err((e, log));
            }};
        }
        let (mut parts, body) = req.into_parts();

        if header_bytes(&parts) > self.server.max_header_size {
            fail!(ProxyError::HeadersTooLarge);
        }
        // The client's URI stays readable while `parts` becomes the upstream request.
        let uri = parts.uri.clone();
        let path = match normalize::normalize_path(uri.path()) {
            Ok(p) => p,
            Err(e) => fail!(ProxyError::BadPath(e)),
        };
        if let (Some(l), Cow::Owned(p)) = (log.as_mut(), &path) {
            l.path.clone_from(p);
        }
        let host_header = parts.headers.get(header::HOST).cloned();
        let host = request_host(&uri, host_header.as_ref());
        let route_idx = match self.router.find(&parts, &path, host.as_deref()) {
            Match::Route(i) => i,
            Match::NotFound => fail!(ProxyError::NotFound),
            Match::MethodNotAllowed(ms) => {
                let allow = ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ");
                fail!(ProxyError::MethodNotAllowed(allow))
            }
        };
        let route = self.router.route(route_idx);
        if let Some(l) = log.as_mut() {
            l.route = Some(self.route_names[route_idx].clone());
        }
        if body.size_hint().lower() > route.max_body_size {
            fail!(ProxyError::BodyTooLarge(route.max_body_size));
        }

        let upstream = &self.upstreams[route.upstream];
        let key = match upstream.hash_key() {
            _ if upstream.balance() != crate::config::BalanceKind::ConsistentHash => 0,
            HashKey::Header(name) => match parts.headers.get(name) {
                Some(v) => hash_bytes(v.as_bytes()),
                None => hash_ip(client.addr),
            },
            HashKey::Cookie(name) => cookie(&parts.headers, name)
                .map_or_else(|| hash_ip(client.addr), |c| hash_bytes(c.as_bytes())),
            HashKey::ClientAddr => hash_ip(client.addr),
        };
        let Some(endpoint) = upstream.pick(key) else {
            fail!(ProxyError::NoEndpoint(upstream.name().to_string()))
        };
        if let Some(l) = log.as_mut() {
            l.endpoint = Some(endpoint.address.clone());
        }
        let guard = ActiveGuard::new(endpoint.clone());

        // Build the upstream request in place.
        let up_path = router::upstream_path(route, &path);
        // An unchanged path is forwarded with the client's own bytes, no copy.
        let same_path = matches!(path, Cow::Borrowed(_)) && up_path.len() == path.len();
        let pq = match uri.path_and_query() {
            Some(pq) if same_path => Ok(pq.clone()),
            _ => forward::path_and_query(up_path, uri.query()),
        };
        parts.uri = match pq.and_then(|pq| forward::upstream_uri(&endpoint.authority, pq)) {
            Ok(u) => u,
            Err(e) => fail!(e),
        };
        parts.version = forward::version_for(upstream.config.protocol);
        let h = &mut parts.headers;
        headers::strip_hop_by_hop(h);
        headers::set_forwarded(
            h,
            client,
            host_header.as_ref(),
            self.server.trust_forwarded_headers,
        );
        h.insert(headers::X_REQUEST_ID, request_id.clone());
        let is_h2 = upstream.config.protocol == crate::config::Protocol::H2;
        match &route.host {
            HostPolicy::Target if is_h2 => {
                h.remove(header::HOST);
            }
            HostPolicy::Target => {
                h.insert(header::HOST, endpoint.host_header.clone());
            }
            HostPolicy::Preserve => {
                if let Some(v) = &host_header {
                    h.insert(header::HOST, v.clone());
                } else if let Some(a) = host.as_deref().and_then(|a| HeaderValue::from_str(a).ok())
                {
                    h.insert(header::HOST, a);
                }
            }
            HostPolicy::Rewrite(v) => {
                h.insert(header::HOST, v.clone());
            }
        }
        let up_req = Request::from_parts(parts, RequestBody::new(body, route.max_body_size));

        let timeout = route
            .request_timeout
            .unwrap_or(upstream.config.request_timeout);
        let sent = Instant::now();
        let result =
            tokio::time::timeout(timeout, self.clients[route.upstream].request(up_req)).await;
        let resp = match result {
            Err(_) => fail!(ProxyError::UpstreamTimeout),
            Ok(Err(e)) => {
                let mut err = forward::classify(&e);
                if let ProxyError::BodyTooLarge(_) = err {
                    err = ProxyError::BodyTooLarge(route.max_body_size);
                }
                tracing::warn!(upstream = upstream.name(), endpoint = &*endpoint.address, error = %e, code = err.code(), "upstream request failed");
                fail!(err)
            }
            Ok(Ok(r)) => r,
        };
        let rtt = sent.elapsed();
        endpoint.observe_latency(rtt);
        if let Some(l) = log.as_mut() {
            l.upstream_ms = Some(rtt.as_secs_f64() * 1e3);
        }
        let (mut rparts, rbody) = resp.into_parts();
        headers::strip_hop_by_hop(&mut rparts.headers);
        let body = ResponseBody::upstream(rbody, upstream.config.idle_timeout, guard);
        Ok((Response::from_parts(rparts, body), log))
    }
}

/// Size of the request head as received (name + value + separators per header).
fn header_bytes(parts: &http::request::Parts) -> usize {
    parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + parts.uri.path_and_query().map_or(0, |p| p.as_str().len())
}

/// The request's host, lowercase and without port: from the URI (HTTP/2, absolute
/// form) or the Host header.
fn request_host<'a>(
    uri: &'a http::Uri,
    host_header: Option<&'a HeaderValue>,
) -> Option<Cow<'a, str>> {
    let raw = match uri.authority() {
        Some(a) => a.host(),
        None => {
            let v = host_header?.to_str().ok()?;
            match v.rfind(':') {
                Some(i) if !v.ends_with(']') => &v[..i],
                _ => v,
            }
        }
    };
    Some(if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(raw.to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    })
}

fn hash_ip(client: SocketAddr) -> u64 {
    match client.ip() {
        std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
        std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
    }
}

fn cookie<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';').find_map(|kv| {
                let (k, val) = kv.trim().split_once('=')?;
                (k == name).then_some(val)
            })
        })
}
