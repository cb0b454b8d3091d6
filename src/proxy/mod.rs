//! The per-request pipeline (DESIGN §1): normalize → route → pick an endpoint → forward
//! → stream the response back. Failures become synthetic responses in [`error`].

pub mod access_log;
pub mod body;
pub mod connector;
pub mod error;
pub mod forward;
pub mod headers;
pub mod trace_context;

use crate::config::{Config, HashKey, HostPolicy, OnError, ServerConfig};
use crate::hash::hash_bytes;
use crate::normalize;
use crate::plugin::bindings::{AuthDecision, Hooks, Reply, RequestAction};
use crate::plugin::host::{self as plugin_host, RequestRes, ResponseRes};
use crate::plugin::{PluginSet, Pool, Role};
use crate::router::{self, Match, Router};
use crate::upstream::{retry, ActiveGuard, Endpoint, NoPick, Outcome, Picked, Upstream};
use access_log::AccessLog;
use body::{RequestBody, ResponseBody, UpstreamBody};
use bytes::Bytes;
use error::ProxyError;
use forward::UpstreamClient;
pub use headers::ClientInfo;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Incoming};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Everything one loaded config needs on the request path; immutable once built and
/// shared by all workers.
pub struct Tables {
    pub server: ServerConfig,
    /// The config text these tables were built from, and its hash.
    pub config_text: Arc<str>,
    pub config_hash: u64,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    route_names: Vec<Arc<str>>,
    /// `route_metrics[i]`: route `i`'s request counters and histogram; the last entry
    /// counts requests no route took (404, 405, 400).
    route_metrics: Vec<crate::metrics::RouteMetrics>,
    /// `plugins.routes[i]`: the plugins of route `i`, in order.
    plugins: PluginSet,
}

/// One worker's view of the gateway: the shared tables plus this worker's own upstream
/// connection pools and plugin instance pools, so pooled connections and instances are
/// always used by the thread that owns them.
pub struct Gateway {
    tables: Arc<Tables>,
    clients: Vec<UpstreamClient>,
    /// `pools[i][k]`: warm instances of route `i`'s `k`-th plugin.
    pools: Vec<Vec<Pool>>,
}

impl std::ops::Deref for Gateway {
    type Target = Tables;
    fn deref(&self) -> &Tables {
        &self.tables
    }
}

/// Whether the last chain step let the request through, and the consumer it named.
enum ChainOutcome {
    Proceed,
    Reply(Response<ResponseBody>),
}

impl Gateway {
    pub fn new(config: Config, plugins: PluginSet) -> Self {
        let upstreams = config
            .upstreams
            .into_iter()
            .map(|u| Arc::new(Upstream::new(u)))
            .collect();
        let route_names: Vec<Arc<str>> = config
            .routes
            .iter()
            .map(|r| Arc::from(r.name.as_str()))
            .collect();
        let route_metrics = route_names
            .iter()
            .map(|n| crate::metrics::RouteMetrics::new(n))
            .chain([crate::metrics::RouteMetrics::new("")])
            .collect();
        let tables = Arc::new(Tables {
            config_text: config.text,
            config_hash: config.hash,
            server: config.server,
            router: Router::new(config.routes),
            upstreams,
            route_names,
            route_metrics,
            plugins,
        });
        Self::with_tables(tables)
    }

    fn with_tables(tables: Arc<Tables>) -> Self {
        let clients = tables
            .upstreams
            .iter()
            .map(|u| forward::build_client(&u.config))
            .collect();
        let pools = tables
            .plugins
            .routes
            .iter()
            .map(|r| r.iter().map(|b| Pool::new(b.clone())).collect())
            .collect();
        Gateway {
            tables,
            clients,
            pools,
        }
    }

    /// Starts the tables' background tasks (active health checks, service discovery) on
    /// the current runtime. They hold the upstreams weakly: they end when these tables are
    /// dropped, or when the caller aborts them (shutdown, reload).
    pub fn start_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<_> = self
            .upstreams
            .iter()
            .filter_map(crate::upstream::health_check::spawn)
            .collect();
        tasks.extend(crate::discovery::spawn(&self.upstreams));
        tasks
    }

    /// This worker's plugin instance pools: `plugin_pools()[route][k]`.
    pub fn plugin_pools(&self) -> &[Vec<Pool>] {
        &self.pools
    }

    pub fn route_metrics(&self, i: usize) -> &crate::metrics::RouteMetrics {
        &self.route_metrics[i]
    }

    pub fn route_name(&self, i: usize) -> &str {
        &self.route_names[i]
    }

    /// The same tables (balancer state included) with fresh connection and instance
    /// pools, for another worker thread.
    pub fn for_worker(&self) -> Self {
        Self::with_tables(self.tables.clone())
    }

    /// Serves one request. Never fails: errors become synthetic responses.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        client: &ClientInfo,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let method = req.method().clone();
        let request_id = headers::request_id(req.headers());
        // Plugins and the upstream see the traceparent of the gateway's hop.
        let trace_id = trace_context::propagate(req.headers_mut());
        let mut log = AccessLog::enabled().then(|| {
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
                consumer: None,
                trace_id,
                plugin: None,
            })
        });
        let mut route_idx = None;
        let mut resp = match self
            .proxy(req, client, &request_id, &mut log, &mut route_idx)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if let Some(l) = log.as_mut() {
                    l.error = Some(e.code());
                }
                e.to_response(&request_id)
            }
        };
        resp.headers_mut().insert(headers::X_REQUEST_ID, request_id);
        let metrics =
            route_idx.map_or_else(|| self.route_metrics.last(), |i| self.route_metrics.get(i));
        if let Some(m) = metrics {
            m.observe(
                &method,
                resp.status().as_u16(),
                start.elapsed().as_secs_f64(),
            );
        }
        if let Some(mut log) = log {
            log.status = resp.status();
            resp.body_mut().set_log(log);
        }
        resp
    }

    async fn proxy(
        &self,
        req: Request<Incoming>,
        client: &ClientInfo,
        request_id: &HeaderValue,
        log: &mut Option<Box<AccessLog>>,
        route_out: &mut Option<usize>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        if header_bytes(&parts) > self.server.max_header_size {
            return Err(ProxyError::HeadersTooLarge);
        }
        // The client's URI stays readable while `parts` becomes the upstream request.
        let uri = parts.uri.clone();
        let path = normalize::normalize_path(uri.path()).map_err(ProxyError::BadPath)?;
        if let (Some(l), Cow::Owned(p)) = (log.as_mut(), &path) {
            l.path.clone_from(p);
        }
        let host_header = parts.headers.get(header::HOST).cloned();
        let host = request_host(&uri, host_header.as_ref());
        // Only an auth plugin may name the consumer; never the client.
        parts.headers.remove(X_CONSUMER);
        // Plugins and the upstream see the request id the response will carry.
        parts
            .headers
            .insert(headers::X_REQUEST_ID, request_id.clone());

        // Route: native match, then the route's predicate plugins.
        let mut body = Some(body);
        let mut buffered: Option<Bytes> = None;
        let mut route_idx = None;
        // The predicates' read-only view of the request, built once if any route has them.
        let mut view: Option<RequestRes> = None;
        'routes: for i in self.router.candidates(&parts, &path, host.as_deref()) {
            let route = self.router.route(i);
            for pool in self.pools[i]
                .iter()
                .filter(|p| p.bound.plugin.role == Role::Predicate)
            {
                if let (Some(limit), None) = (route.buffer_request_body, &buffered) {
                    buffered = Some(
                        buffer_body(body.take().expect("body not yet consumed"), limit).await?,
                    );
                }
                let mut res = view.take().unwrap_or_else(|| {
                    plugin_request(&parts, &path, uri.query(), client, None, true)
                });
                res.body.clone_from(&buffered);
                let (back, verdict) = pool.matches(res).await;
                view = Some(back);
                match verdict {
                    Ok(true) => {}
                    Ok(false) => continue 'routes,
                    Err(e) if pool.on_error() == OnError::Allow => {
                        tracing::warn!(plugin = &*pool.bound.plugin.name, error = %e, "predicate failed; on_error = allow treats it as matching");
                        log_plugin(log, pool, "error_allowed");
                    }
                    Err(_) => {
                        log_plugin(log, pool, "error");
                        return Err(ProxyError::PluginFailed(pool.bound.plugin.name.to_string()));
                    }
                }
            }
            route_idx = Some(i);
            break;
        }
        let Some(route_idx) = route_idx else {
            return Err(match self.router.no_match(&parts, &path, host.as_deref()) {
                Match::MethodNotAllowed(ms) => ProxyError::MethodNotAllowed(
                    ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
                ),
                _ => ProxyError::NotFound,
            });
        };
        let route = self.router.route(route_idx);
        *route_out = Some(route_idx);
        if let Some(l) = log.as_mut() {
            l.route = Some(self.route_names[route_idx].clone());
        }
        // A body is refused up front when its declared length is over what this route
        // will take (or buffer).
        let limit = route
            .max_body_size
            .min(route.buffer_request_body.unwrap_or(u64::MAX));
        if body.as_ref().is_some_and(|b| b.size_hint().lower() > limit) {
            return Err(ProxyError::BodyTooLarge(limit));
        }

        // Request plugins (auth, transform) in route order.
        let pools = &self.pools[route_idx];
        let mut new_path: Option<(String, Option<String>)> = None;
        let mut passed: Vec<&Pool> = Vec::new();
        let mut for_response: Option<RequestRes> = None;
        if pools.iter().any(|p| p.bound.plugin.role != Role::Predicate) {
            if let (Some(limit), None) = (route.buffer_request_body, &buffered) {
                buffered =
                    Some(buffer_body(body.take().expect("body not yet consumed"), limit).await?);
            }
            let mut res =
                plugin_request(&parts, &path, uri.query(), client, buffered.take(), false);
            res.headers = std::mem::take(&mut parts.headers);
            let outcome = self.request_chain(pools, &mut res, &mut passed, log).await;
            parts.headers = std::mem::take(&mut res.headers);
            buffered = res.body.take();
            // Response hooks get a read-only copy of the request as it was forwarded.
            if passed
                .iter()
                .any(|p| p.bound.hooks.contains(Hooks::ON_RESPONSE))
            {
                let mut copy = plugin_request(&parts, &path, uri.query(), client, None, true);
                copy.path.clone_from(&res.path);
                copy.query.clone_from(&res.query);
                for_response = Some(copy);
            }
            if res.path != *path || res.query.as_deref() != uri.query() {
                new_path = Some((std::mem::take(&mut res.path), res.query.take()));
            }
            if let ChainOutcome::Reply(reply) = outcome? {
                return Ok(self
                    .response_chain(&passed, for_response, reply, request_id, log)
                    .await);
            }
        }

        let result = self
            .forward(
                route_idx,
                parts,
                &uri,
                &path,
                new_path,
                host.as_deref(),
                host_header.as_ref(),
                client,
                body,
                buffered,
                log,
            )
            .await;
        if for_response.is_some() {
            let resp = result.unwrap_or_else(|e| {
                if let Some(l) = log.as_mut() {
                    l.error = Some(e.code());
                }
                e.to_response(request_id)
            });
            return Ok(self
                .response_chain(&passed, for_response, resp, request_id, log)
                .await);
        }
        result
    }

    /// Runs the route's auth and transform plugins on the request, in order.
    async fn request_chain<'a>(
        &self,
        pools: &'a [Pool],
        res: &mut RequestRes,
        passed: &mut Vec<&'a Pool>,
        log: &mut Option<Box<AccessLog>>,
    ) -> Result<ChainOutcome, ProxyError> {
        for pool in pools {
            let name = &pool.bound.plugin.name;
            match pool.bound.plugin.role {
                Role::Predicate => continue,
                Role::Auth => {
                    let (back, decision) = pool.authenticate(take_request(res)).await;
                    *res = back;
                    match decision {
                        Ok(AuthDecision::Allow(consumer)) => {
                            if let Some(c) = consumer {
                                if let Ok(v) = HeaderValue::from_str(&c) {
                                    res.headers.insert(X_CONSUMER, v);
                                }
                                if let Some(l) = log.as_mut() {
                                    l.consumer = Some(c);
                                }
                            }
                        }
                        Ok(AuthDecision::Deny(reply)) => {
                            log_plugin(log, pool, "deny");
                            return Ok(ChainOutcome::Reply(reply_response(reply)));
                        }
                        Err(e) => plugin_failed(pool, &e, log)?,
                    }
                }
                Role::Transform => {
                    if pool.bound.hooks.contains(Hooks::ON_REQUEST) {
                        let (back, action) = pool.on_request(take_request(res)).await;
                        *res = back;
                        match action {
                            Ok(RequestAction::Proceed) => {}
                            Ok(RequestAction::Respond(reply)) => {
                                log_plugin(log, pool, "respond");
                                return Ok(ChainOutcome::Reply(reply_response(reply)));
                            }
                            Err(e) => {
                                plugin_failed(pool, &e, log)?;
                                continue;
                            }
                        }
                    }
                    passed.push(pool);
                }
            }
            tracing::trace!(plugin = &**name, "plugin passed");
        }
        Ok(ChainOutcome::Proceed)
    }

    /// Runs `on-response` of the transforms the request got past, in reverse order.
    async fn response_chain(
        &self,
        passed: &[&Pool],
        req: Option<RequestRes>,
        resp: Response<ResponseBody>,
        request_id: &HeaderValue,
        access: &mut Option<Box<AccessLog>>,
    ) -> Response<ResponseBody> {
        let hooked: Vec<&&Pool> = passed
            .iter()
            .rev()
            .filter(|p| p.bound.hooks.contains(Hooks::ON_RESPONSE))
            .collect();
        let Some(mut req) = req else { return resp };
        if hooked.is_empty() {
            return resp;
        }
        let wants_body = hooked
            .iter()
            .any(|p| p.bound.hooks.contains(Hooks::RESPONSE_BODY));
        let (parts, mut body) = resp.into_parts();
        let mut log = None;
        let (body_bytes, mut keep_body) = if wants_body {
            log = body.take_log();
            match http_body_util::Limited::new(body, MAX_BUFFERED_RESPONSE)
                .collect()
                .await
            {
                Ok(c) => (Some(c.to_bytes()), None),
                Err(_) => {
                    return ProxyError::Upstream(
                        "response body too large to buffer for plugins".into(),
                    )
                    .to_response(request_id)
                }
            }
        } else {
            (None, Some(body))
        };
        let mut res = ResponseRes {
            status: parts.status,
            headers: parts.headers,
            body: body_bytes,
        };
        for pool in hooked {
            let (rq, rs, r) = pool.on_response(req, res).await;
            req = rq;
            res = rs;
            if let Err(e) = r {
                if pool.on_error() == OnError::Deny {
                    let err = ProxyError::PluginFailed(pool.bound.plugin.name.to_string());
                    log_plugin(access, pool, "error");
                    if let Some(l) = access.as_mut() {
                        l.error = Some(err.code());
                    }
                    return err.to_response(request_id);
                }
                log_plugin(access, pool, "error_allowed");
                tracing::warn!(plugin = &*pool.bound.plugin.name, error = %e, "on-response failed; on_error = allow keeps the response");
            }
        }
        let mut out = match (res.body.take(), keep_body.take()) {
            (Some(bytes), _) => {
                res.headers.remove(header::CONTENT_LENGTH);
                res.headers.remove(header::TRANSFER_ENCODING);
                let mut b = ResponseBody::full(bytes);
                if let Some(l) = log {
                    b.set_log(l);
                }
                Response::new(b)
            }
            (None, Some(b)) => Response::new(b),
            (None, None) => Response::new(ResponseBody::full(Bytes::new())),
        };
        *out.status_mut() = res.status;
        *out.headers_mut() = res.headers;
        out
    }

    // `path` stays a Cow: whether normalization changed it decides if the client's own
    // path bytes can be forwarded without a copy.
    #[allow(clippy::too_many_arguments, clippy::ptr_arg)]
    async fn forward(
        &self,
        route_idx: usize,
        mut parts: http::request::Parts,
        uri: &http::Uri,
        path: &Cow<'_, str>,
        new_path: Option<(String, Option<String>)>,
        host: Option<&str>,
        host_header: Option<&HeaderValue>,
        client: &ClientInfo,
        body: Option<Incoming>,
        buffered: Option<Bytes>,
        log: &mut Option<Box<AccessLog>>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let route = self.router.route(route_idx);
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
        // The parts of the upstream request that do not depend on the endpoint.
        let pq = match &new_path {
            Some((p, q)) => forward::path_and_query(router::upstream_path(route, p), q.as_deref()),
            None => {
                let up_path = router::upstream_path(route, path);
                // An unchanged path is forwarded with the client's own bytes, no copy.
                let same_path = matches!(path, Cow::Borrowed(_)) && up_path.len() == path.len();
                match uri.path_and_query() {
                    Some(pq) if same_path => Ok(pq.clone()),
                    _ => forward::path_and_query(up_path, uri.query()),
                }
            }
        }?;
        parts.version = forward::version_for(upstream.config.protocol);
        let h = &mut parts.headers;
        headers::strip_hop_by_hop(h);
        headers::set_forwarded(h, client, host_header, self.server.trust_forwarded_headers);
        let is_h2 = upstream.config.protocol == crate::config::Protocol::H2;
        // `None`: the Host header is the endpoint's own, set per try.
        let fixed_host = match &route.host {
            HostPolicy::Target => None,
            HostPolicy::Preserve => host_header
                .cloned()
                .or_else(|| host.and_then(|a| HeaderValue::from_str(a).ok())),
            HostPolicy::Rewrite(v) => Some(v.clone()),
        };
        match &fixed_host {
            Some(v) => {
                h.insert(header::HOST, v.clone());
            }
            None if is_h2 => {
                h.remove(header::HOST);
            }
            None => {}
        }
        let mut body = match (buffered, body) {
            (Some(bytes), _) => {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                parts.headers.remove(header::TRANSFER_ENCODING);
                Replay::Bytes(bytes)
            }
            (None, None) => Replay::Bytes(Bytes::new()),
            (None, Some(b)) => Replay::Stream(Some(b)),
        };

        let scheme = self.clients[route.upstream].scheme();
        let retry = upstream.config.retry.as_ref();
        let attempts = retry.map_or(1, |r| r.attempts);
        let overall = route
            .request_timeout
            .unwrap_or(upstream.config.request_timeout);
        let deadline = tokio::time::Instant::now() + overall;
        if let Some(b) = &upstream.budget {
            b.deposit(upstream.clock.now());
        }
        let idempotent = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        let mut template = Some(parts);
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut last_err: Option<ProxyError> = None;
        for try_no in 1..=attempts {
            // A retry goes to an endpoint not tried yet; if none is left, any usable one.
            let picked = match upstream.pick_excluding(key, &tried) {
                Err(NoPick::Unavailable) if !tried.is_empty() => upstream.pick_excluding(key, &[]),
                other => other,
            };
            let Picked {
                endpoint,
                admission,
            } = match picked {
                Ok(p) => p,
                Err(_) if last_err.is_some() => break,
                Err(NoPick::Empty) => {
                    return Err(ProxyError::NoEndpoint(upstream.unavailable_reason()))
                }
                Err(NoPick::Unavailable) => {
                    return Err(ProxyError::Unavailable(upstream.name().to_string()))
                }
            };
            if let Some(l) = log.as_mut() {
                l.endpoint = Some(endpoint.address.clone());
            }
            let guard = ActiveGuard::new(endpoint.clone());

            // The last possible try takes the template; earlier ones send a copy.
            let mut parts = if try_no == attempts {
                template.take().expect("template kept for the last try")
            } else {
                clone_parts(template.as_ref().expect("template kept until the last try"))
            };
            parts.uri = forward::upstream_uri(scheme.clone(), &endpoint.authority, pq.clone())?;
            if fixed_host.is_none() && !is_h2 {
                parts
                    .headers
                    .insert(header::HOST, endpoint.host_header.clone());
            }
            let (up_body, give_back) = body.take(route.max_body_size, try_no < attempts);
            let up_req = Request::from_parts(parts, up_body);

            let now = tokio::time::Instant::now();
            let left = deadline.saturating_duration_since(now);
            let per_try = retry
                .and_then(|r| r.per_try_timeout)
                .map_or(left, |t| t.min(left));
            let result =
                tokio::time::timeout(per_try, self.clients[route.upstream].request(up_req)).await;
            if let Some(rx) = give_back {
                body.recover(rx);
            }
            let (outcome, attempt) = match result {
                Err(_) => (Outcome::Timeout, Err(ProxyError::UpstreamTimeout)),
                Ok(Err(e)) => {
                    let err = forward::classify(&e);
                    let outcome = match err {
                        ProxyError::BodyTooLarge(_) => {
                            // The client's fault: no endpoint is blamed, no retry.
                            upstream.release(&endpoint, admission);
                            return Err(ProxyError::BodyTooLarge(route.max_body_size));
                        }
                        ProxyError::ConnectFailed(_) | ProxyError::ConnectTimeout => {
                            Outcome::Connect
                        }
                        _ => Outcome::Reset,
                    };
                    tracing::warn!(upstream = upstream.name(), endpoint = &*endpoint.address, error = %e, code = err.code(), try_no, "upstream request failed");
                    (outcome, Err(err))
                }
                Ok(Ok(resp)) => (Outcome::Status(resp.status().as_u16()), Ok(resp)),
            };
            upstream.record(&endpoint, admission, outcome);
            // Failures before the request was sent may be retried for any method; after,
            // only for idempotent ones.
            let wanted = retry.is_some_and(|r| match outcome {
                Outcome::Connect => r.on.connect,
                Outcome::Timeout => r.on.timeout && idempotent,
                Outcome::Reset => r.on.reset && idempotent,
                Outcome::Status(s) => r.on.status(s) && idempotent,
            });
            let status;
            let reason = match &attempt {
                Ok(resp) => {
                    status = resp.status();
                    status.as_str()
                }
                Err(e) => e.code(),
            };
            let retrying = wanted
                && body.replayable()
                && self
                    .may_retry(
                        upstream,
                        try_no,
                        attempts,
                        deadline,
                        &endpoint.address,
                        reason,
                    )
                    .await;
            match attempt {
                Ok(resp) if !retrying => {
                    let rtt = now.elapsed();
                    endpoint.observe_latency(rtt);
                    if let Some(l) = log.as_mut() {
                        l.upstream_ms = Some(rtt.as_secs_f64() * 1e3);
                    }
                    let (mut rparts, rbody) = resp.into_parts();
                    headers::strip_hop_by_hop(&mut rparts.headers);
                    let body = ResponseBody::upstream(rbody, upstream.config.idle_timeout, guard);
                    return Ok(Response::from_parts(rparts, body));
                }
                Err(err) if !retrying => return Err(err),
                Err(err) => last_err = Some(err),
                Ok(_) => {}
            }
            tried.push(endpoint);
        }
        Err(last_err.unwrap_or(ProxyError::Unavailable(upstream.name().to_string())))
    }

    /// Whether one more try fits: tries left, time left, and the retry budget agrees.
    /// Waits out the backoff before saying yes.
    async fn may_retry(
        &self,
        upstream: &Upstream,
        try_no: u32,
        attempts: u32,
        deadline: tokio::time::Instant,
        endpoint: &str,
        reason: &str,
    ) -> bool {
        let Some(cfg) = upstream.config.retry.as_ref() else {
            return false;
        };
        if try_no >= attempts || tokio::time::Instant::now() >= deadline {
            return false;
        }
        let budget = upstream.budget.as_ref().expect("retry has a budget");
        if !budget.withdraw(upstream.clock.now()) {
            tracing::warn!(
                upstream = upstream.name(),
                endpoint,
                reason,
                "retry budget exhausted; not retrying"
            );
            return false;
        }
        let pause = retry::backoff(cfg, try_no);
        tracing::debug!(
            upstream = upstream.name(),
            endpoint,
            reason,
            try_no,
            ?pause,
            "retrying"
        );
        if !pause.is_zero() {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
        }
        tokio::time::Instant::now() < deadline
    }
}

/// The request body as it can be sent again on a retry.
enum Replay {
    /// Empty or buffered: every try sends the same bytes.
    Bytes(Bytes),
    /// The client's stream: only sendable while no try has started reading it.
    Stream(Option<Incoming>),
}

impl Replay {
    /// The body for one try; with `keep`, a stream is sent so that it comes back on the
    /// returned channel if the try never reads it.
    fn take(
        &mut self,
        limit: u64,
        keep: bool,
    ) -> (
        UpstreamBody,
        Option<tokio::sync::oneshot::Receiver<Incoming>>,
    ) {
        match self {
            Replay::Bytes(b) => (
                UpstreamBody::Buffered {
                    body: Full::new(b.clone()),
                },
                None,
            ),
            Replay::Stream(s) => {
                let inner = s.take().expect("stream body present when replayable");
                if inner.is_end_stream() {
                    // Nothing to lose: later tries send an empty body.
                    *self = Replay::Bytes(Bytes::new());
                } else if keep {
                    let (body, rx) = RequestBody::recoverable(inner, limit);
                    return (UpstreamBody::Stream { body }, Some(rx));
                }
                let body = RequestBody::new(inner, limit);
                (UpstreamBody::Stream { body }, None)
            }
        }
    }

    /// Takes the stream back after a try that never read it.
    fn recover(&mut self, mut rx: tokio::sync::oneshot::Receiver<Incoming>) {
        if let (Replay::Stream(slot), Ok(b)) = (&mut *self, rx.try_recv()) {
            *slot = Some(b);
        }
    }

    fn replayable(&self) -> bool {
        !matches!(self, Replay::Stream(None))
    }
}

/// A copy of a request head for one try (extensions are not carried upstream anyway).
fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

/// Responses buffered for `response-body` transforms may not exceed this.
const MAX_BUFFERED_RESPONSE: usize = 16 << 20;

/// The header carrying the consumer an auth plugin named.
const X_CONSUMER: header::HeaderName = header::HeaderName::from_static("x-portcullis-consumer");

async fn buffer_body(body: Incoming, limit: u64) -> Result<Bytes, ProxyError> {
    if body.size_hint().lower() > limit {
        return Err(ProxyError::BodyTooLarge(limit));
    }
    match http_body_util::Limited::new(body, limit as usize)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge(limit))
        }
        Err(_) => Err(ProxyError::BadRequest("request body could not be read")),
    }
}

/// The request as a plugin sees it (headers are moved in by the caller when they may change).
fn plugin_request(
    parts: &http::request::Parts,
    path: &str,
    query: Option<&str>,
    client: &ClientInfo,
    body: Option<Bytes>,
    read_only: bool,
) -> RequestRes {
    RequestRes {
        method: parts.method.clone(),
        scheme: client.scheme(),
        authority: parts.uri.authority().map(|a| a.to_string()).or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        }),
        path: path.to_string(),
        query: query.map(str::to_string),
        headers: if read_only {
            parts.headers.clone()
        } else {
            http::HeaderMap::new()
        },
        client: client.addr.ip(),
        body,
        read_only,
    }
}

/// Moves the request out to lend it to a plugin call (the call gives it back).
fn take_request(res: &mut RequestRes) -> RequestRes {
    std::mem::replace(
        res,
        RequestRes {
            method: http::Method::GET,
            scheme: "http",
            authority: None,
            path: String::new(),
            query: None,
            headers: http::HeaderMap::new(),
            client: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            body: None,
            read_only: true,
        },
    )
}

fn plugin_failed(
    pool: &Pool,
    e: &crate::plugin::PluginFailure,
    log: &mut Option<Box<AccessLog>>,
) -> Result<(), ProxyError> {
    match pool.on_error() {
        OnError::Allow => {
            tracing::warn!(plugin = &*pool.bound.plugin.name, route = &*pool.bound.route, error = %e, "plugin failed; on_error = allow lets the request through");
            log_plugin(log, pool, "error_allowed");
            Ok(())
        }
        OnError::Deny => {
            log_plugin(log, pool, "error");
            Err(ProxyError::PluginFailed(pool.bound.plugin.name.to_string()))
        }
    }
}

/// Records in the access log which plugin did what to the request.
fn log_plugin(log: &mut Option<Box<AccessLog>>, pool: &Pool, outcome: &'static str) {
    if let Some(l) = log.as_mut() {
        l.plugin = Some((pool.bound.plugin.name.clone(), outcome));
    }
}

/// A plugin's own reply (auth deny, transform respond) as a response.
fn reply_response(reply: Reply) -> Response<ResponseBody> {
    let status = http::StatusCode::from_u16(reply.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(ResponseBody::full(Bytes::from(reply.body)));
    *resp.status_mut() = status;
    // The same rules as the plugin's own header setters: gateway-managed headers are dropped.
    for (n, v) in reply.headers {
        if let (Ok(n), Ok(v)) = (plugin_host::header_name(&n), plugin_host::header_value(&v)) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
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
