//! The request path (docs/architecture.md §"The request path"), phase by phase:
//! [`context`] reads the request (normalized path, host), [`route`] chooses the route
//! (native match, then predicate plugins), [`chain`] runs the auth and transform plugins,
//! [`forward`] builds the upstream request and hands it to the upstream's try loop
//! (`upstream::call`), the response chain runs on the way back, and [`respond`] turns a
//! failure into its response (the only place that does) and finishes metrics and the
//! access log. An upgrade (WebSocket) takes the same path up to the upstream's 101;
//! [`upgrade`] forwards the handshake and [`tunnel`] copies the bytes after it.

pub mod access_log;
pub mod body;
mod chain;
mod composite;
pub mod context;
pub mod error;
mod events;
mod fallback;
mod forward;
pub mod headers;
mod model;
mod respond;
mod route;
pub mod trace_context;
pub mod tunnel;
pub mod upgrade;

use crate::config::{Config, RouteConfig, ServerConfig};
use crate::metrics::RouteMetrics;
use crate::plugin::{Bound, PluginSet, Pool, WorkerPools};
use crate::router::Router;
use crate::upstream::client::UpstreamClient;
use crate::upstream::Upstream;
use body::ResponseBody;
use chain::Chain;
use context::{ClientRequest, RequestCtx};
use error::ProxyError;
pub use headers::ClientInfo;
use http::{Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;

/// One route as the request path uses it: its config, name, metric handles and plugin
/// chain.
pub struct RouteEntry {
    /// The route's position in the config (and in each worker's [`WorkerRoute`]s).
    pub index: usize,
    pub config: RouteConfig,
    pub name: Arc<str>,
    pub metrics: RouteMetrics,
    /// The route's plugins, in order.
    pub plugins: Vec<Arc<Bound>>,
    /// The `[[limits]]` the route applies (empty: the request path skips admission).
    pub limits: crate::limits::RouteLimits,
    /// `x-portcullis-served-by` for each step of its fallback chain (empty without one).
    pub served_by: Vec<http::HeaderValue>,
    /// A composite route's per-part metrics, in part order (empty for other routes).
    pub parts: Vec<crate::metrics::PartMetrics>,
    /// Nothing on the route reads or changes a response's fields but the gateway's own
    /// (no plugins, model calls, limits, fallback or composite): its upstream's response
    /// head may be written on to the client as it came.
    pub plain: bool,
}

impl RouteEntry {
    /// The most body this route takes (or buffers for plugins).
    pub fn body_limit(&self) -> u64 {
        self.config
            .max_body_size
            .min(self.config.buffer_request_body.unwrap_or(u64::MAX))
    }
}

impl std::borrow::Borrow<RouteConfig> for RouteEntry {
    fn borrow(&self) -> &RouteConfig {
        &self.config
    }
}

/// Everything one loaded config needs on the request path; immutable once built and
/// shared by all workers.
pub struct Tables {
    pub server: ServerConfig,
    /// The config text these tables were built from, and its hash.
    pub config_text: Arc<str>,
    pub config_hash: u64,
    pub router: Router<RouteEntry>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Every `[[limits]]` definition with its counters.
    pub limits: crate::limits::Limits,
    /// Counts requests no route took (404, 405, 400).
    unrouted: RouteMetrics,
}

/// One worker's state of a route: its warm plugin instances.
pub struct WorkerRoute {
    /// `pools[k]`: warm instances of the route's `k`-th plugin (the route's share of the
    /// worker's instances of that plugin).
    pub pools: Vec<Pool>,
}

/// One worker's state of an upstream: the upstream and this worker's connection pool to it.
pub struct WorkerUpstream {
    pub upstream: Arc<Upstream>,
    pub client: UpstreamClient,
}

/// One worker's view of the gateway: the shared tables plus this worker's own upstream
/// connection pools and plugin instance pools, so pooled connections and instances are
/// always used by the thread that owns them.
pub struct Gateway {
    tables: Arc<Tables>,
    /// By route index.
    routes: Vec<WorkerRoute>,
    /// By upstream index.
    upstreams: Vec<WorkerUpstream>,
}

impl std::ops::Deref for Gateway {
    type Target = Tables;
    fn deref(&self) -> &Tables {
        &self.tables
    }
}

impl Gateway {
    pub fn new(config: Config, plugins: PluginSet) -> Self {
        Self::build(config, plugins, None)
    }

    /// The gateway of a reloaded config: limits whose definition did not change keep the
    /// counters they have in `previous` (and an unchanged `[redis]` its connection).
    pub fn reloaded(config: Config, plugins: PluginSet, previous: &Tables) -> Self {
        Self::build(config, plugins, Some(&previous.limits))
    }

    fn build(config: Config, plugins: PluginSet, previous: Option<&crate::limits::Limits>) -> Self {
        let limits = crate::limits::Limits::build(&config.limits, config.redis.as_ref(), previous);
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .into_iter()
            .map(|u| Arc::new(Upstream::new(u)))
            .collect();
        let routes = config
            .routes
            .into_iter()
            .zip(plugins.routes)
            .enumerate()
            .map(|(index, (config, plugins))| {
                // A tokenizer's encoder is built here (or by the reload thread), once
                // per process, not on a request.
                if let Some(t) = config.ai.as_ref().and_then(|a| a.tokenizer) {
                    crate::ai::prompt::warm(t);
                }
                let limits = limits.for_route(&config.limits);
                let plain = plugins.is_empty()
                    && limits.is_empty()
                    && config.ai.is_none()
                    && config.composite.is_none()
                    && config.fallback.is_empty();
                RouteEntry {
                    index,
                    plain,
                    name: Arc::from(config.name.as_str()),
                    metrics: RouteMetrics::new(&config.name),
                    limits,
                    served_by: fallback::served_by(&config, &upstreams),
                    parts: composite::part_metrics(&config),
                    config,
                    plugins,
                }
            })
            .collect();
        let tables = Arc::new(Tables {
            config_text: config.text,
            config_hash: config.hash,
            server: config.server,
            router: Router::new(routes),
            upstreams,
            limits,
            unrouted: RouteMetrics::new(""),
        });
        Self::with_tables(tables)
    }

    fn with_tables(tables: Arc<Tables>) -> Self {
        let upstreams = tables
            .upstreams
            .iter()
            .map(|u| WorkerUpstream {
                upstream: u.clone(),
                client: UpstreamClient::new(&u.config),
            })
            .collect();
        // One store of idle instances per plugin, shared by the routes that use it.
        let mut pools = WorkerPools::default();
        let routes = tables
            .routes()
            .iter()
            .map(|r| WorkerRoute {
                pools: r.plugins.iter().map(|b| pools.pool(b)).collect(),
            })
            .collect();
        Gateway {
            tables,
            routes,
            upstreams,
        }
    }

    /// The same tables (balancer state included) with fresh connection and instance
    /// pools, for another worker thread.
    pub fn for_worker(&self) -> Self {
        Self::with_tables(self.tables.clone())
    }

    /// This worker's plugin instance pools of `route`.
    pub fn pools(&self, route: &RouteEntry) -> &[Pool] {
        &self.routes[route.index].pools
    }

    /// The upstream of `route`, with this worker's connection pool to it.
    fn upstream(&self, route: &RouteEntry) -> &WorkerUpstream {
        &self.upstreams[route.config.upstream]
    }

    /// Serves one request. Never fails: errors become synthetic responses.
    ///
    /// What needs no waiting (cleaning the head, the context, reading the head into its
    /// box) is done when the future is made, not in it: a future keeps room for whatever
    /// it captured for its whole life, and the request (264 bytes) was held by this
    /// future and by `process`'s besides the worker's. The worker's box for a request
    /// was 1,584 bytes, too large for glibc's per-thread cache of freed blocks (1,032);
    /// it is 944 (`-Zprint-type-sizes`). Inline, so that the future is built where the
    /// worker keeps it rather than copied there.
    ///
    /// `raw_heads`: the connection writes a response head kept as the upstream sent it
    /// ([`RequestCtx::raw_heads`]).
    #[inline(always)]
    pub fn handle<'a>(
        &'a self,
        mut req: Request<Incoming>,
        client: &'a ClientInfo,
        raw_heads: bool,
    ) -> impl std::future::Future<Output = Response<ResponseBody>> + use<'a> {
        // An upgrade is noted before its headers go with the other hop-by-hop ones.
        let upgrade = upgrade::requested(&mut req);
        // The client's hop-by-hop headers go first, so nothing they name can remove what
        // the gateway adds (request id, trace context, consumer).
        let allow = self.server.allow_underscores_in_headers;
        let bodiless = http_body::Body::is_end_stream(req.body());
        let (present, clean) = headers::clean_request(req.headers_mut(), allow, bodiless);
        let mut ctx = RequestCtx::new(&mut req, client, present);
        ctx.upgrade = upgrade;
        ctx.raw_heads = raw_heads;
        let read = clean.and_then(|()| ClientRequest::read(req, &mut ctx, &self.server));
        async move {
            let result = match read {
                Ok(req) => self.process(req, &mut ctx).await,
                Err(e) => Err(e),
            };
            ctx.finish(&self.unrouted, result)
        }
    }

    /// The phases, in order; the first failure ends the request.
    async fn process<'g>(
        &'g self,
        mut req: Box<ClientRequest>,
        ctx: &mut RequestCtx<'g>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let route = self.route(&mut req, ctx).await?;
        // A route without plugins has nothing to run around the forward. The plugin
        // phases are boxed, and entered only by routes that have plugins: a future holds
        // room for its largest state, and this one is moved into place for every request
        // and kept by every connection, so what only some routes use must not make it
        // larger (or move more) for all of them.
        if self.pools(route).is_empty() {
            return self.forward(route, req, ctx).await;
        }
        boxed(|| self.plugin_phases(route, req, ctx)).await
    }

    /// The phases of a route with plugins: the request chain, the forward (unless a plugin
    /// answered), then the response and event chains when a plugin hooks them.
    async fn plugin_phases<'g>(
        &'g self,
        route: &'g RouteEntry,
        mut req: Box<ClientRequest>,
        ctx: &mut RequestCtx<'g>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (mut passed, response, path) = match self.request_chain(route, &mut req, ctx).await? {
            Chain::Reply(passed, reply) => (passed, Ok(*reply), String::new()),
            Chain::Proceed(passed) => {
                // Stream plugins are told the path (`open-stream`), once the head is back.
                let path = if passed.streaming.is_empty() {
                    String::new()
                } else {
                    req.target.path().to_string()
                };
                (passed, self.forward(route, req, ctx).await, path)
            }
        };
        if !passed.has_response_hooks() {
            return response;
        }
        // Response hooks see the gateway's own error responses too.
        let response = response.unwrap_or_else(|e| ctx.fail(e));
        let streaming = std::mem::take(&mut passed.streaming);
        let response = boxed(|| self.response_chain(passed, response, ctx)).await;
        if streaming.is_empty() {
            return Ok(response);
        }
        Ok(boxed(|| self.event_chain(&streaming, route, path, response, ctx)).await)
    }
}

impl Tables {
    /// The routes, in config order.
    pub fn routes(&self) -> &[RouteEntry] {
        self.router.routes()
    }
}

/// `Box::new(make())`, with the box allocated before the value is made, so that the
/// compiler can make it in place: `Box::new(value)` makes the value on the stack first and
/// then copies it into the new box. For a future not yet started that copy is of its whole
/// size (its largest state), though it holds only its arguments: ~3 KB for the try loop.
#[inline(always)]
pub fn boxed_with<T>(make: impl FnOnce() -> T) -> Box<T> {
    Box::write(Box::new_uninit(), make())
}

/// `Box::pin(make())`, made in place as [`boxed_with`] makes it.
#[inline(always)]
pub fn boxed<T>(make: impl FnOnce() -> T) -> std::pin::Pin<Box<T>> {
    Box::into_pin(boxed_with(make))
}
