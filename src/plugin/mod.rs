//! The WebAssembly plugin host (DESIGN §4): one wasmtime engine, each component file
//! compiled once per config (and cached on disk across restarts), linked and type-checked
//! once per plugin, and per (plugin, worker) pools of warm instances, each configured for
//! one route, sized by demand and shrunk when idle ([`idle`]). Every call runs under the
//! plugin's CPU deadline (epoch interruption) and memory limit; a failed call discards its
//! instance.

pub mod bindings;
pub mod budget;
pub mod host;
pub mod idle;
pub mod keyvalue;
pub mod outbound;
pub mod stream;

use crate::config::{Config, OnError, PluginConfig};
use bindings::auth::{Auth, AuthPre};
use bindings::predicate::{Predicate, PredicatePre};
use bindings::transform::{Transform, TransformPre};
use bindings::{AuthDecision, Hooks, RequestAction};
use host::{HostState, RequestRes, ResponseRes};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};

/// How often the epoch advances: the resolution of plugin timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// What a plugin is for, read from the world its component implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Auth,
    Predicate,
    Transform,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Auth => "auth",
            Role::Predicate => "predicate",
            Role::Transform => "transform",
        }
    }
}

enum RolePre {
    Auth(AuthPre<HostState>),
    Predicate(PredicatePre<HostState>),
    Transform(TransformPre<HostState>),
}

enum RoleInstance {
    Auth(Auth),
    Predicate(Predicate),
    Transform(Transform),
}

/// The engine and linker shared by every plugin.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<HostState>,
    /// The pool every plugin's outbound calls go through.
    outbound: Arc<outbound::OutboundClient>,
}

/// What a plugin was granted, resolved once at load.
struct Granted {
    /// Whether anything was (the plugin then runs with [`budget`] and a wall-clock bound).
    any: bool,
    allowed: Arc<[crate::config::AllowedHost]>,
    kv: Option<keyvalue::Grant>,
    io_timeout: Duration,
    max_response: u64,
}

/// A compiled, linked plugin.
pub struct LoadedPlugin {
    pub config: PluginConfig,
    pub name: Arc<str>,
    pub role: Role,
    pre: RolePre,
    ticks: u64,
    /// A `stream-transform`: its `open-stream` and `on-event` exports (see [`stream`]).
    stream: Option<stream::Indices>,
    granted: Granted,
}

/// Why a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFailure {
    #[error("plugin exceeded its timeout")]
    Timeout,
    #[error("plugin exceeded its memory limit")]
    OutOfMemory,
    #[error("plugin trapped: {0}")]
    Trap(String),
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("portcullis")
        .join("wasm")
}

impl PluginHost {
    /// Builds the engine (epoch interruption on, compiled artifacts cached under
    /// `cache_dir`) and starts the epoch ticker.
    pub fn new(cache_dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true);
        let mut cache = wasmtime::CacheConfig::new();
        cache.with_directory(cache_dir.map_or_else(default_cache_dir, Path::to_path_buf));
        cfg.cache(Some(wasmtime::Cache::new(cache)?));
        let engine = Engine::new(&cfg)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("portcullis-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
            })?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::auth::portcullis::plugin::types::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )?;
        bindings::auth::portcullis::plugin::host::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )?;
        // Capabilities: linked for every plugin, usable only as its config grants.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        bindings::capabilities::wasi::keyvalue::store::add_to_linker::<
            HostState,
            HasSelf<HostState>,
        >(&mut linker, |s| s)?;
        bindings::capabilities::wasi::keyvalue::atomics::add_to_linker::<
            HostState,
            HasSelf<HostState>,
        >(&mut linker, |s| s)?;
        bindings::capabilities::portcullis::plugin::keyvalue_ext::add_to_linker::<
            HostState,
            HasSelf<HostState>,
        >(&mut linker, |s| s)?;
        let outbound = Arc::new(outbound::OutboundClient::new().map_err(anyhow::Error::msg)?);
        Ok(PluginHost {
            engine,
            linker,
            outbound,
        })
    }

    /// Compiles (or loads from the cache) and links one plugin, finding its role.
    pub fn load(&self, config: &PluginConfig) -> anyhow::Result<LoadedPlugin> {
        self.load_granted(config, None)
    }

    /// Compiles (or loads from the cache) the component at `path`.
    pub fn compile(&self, path: &Path) -> anyhow::Result<Component> {
        let component = Component::from_file(&self.engine, path)
            .map_err(|e| anyhow::anyhow!("cannot compile `{}`: {e:#}", path.display()))?;
        tracing::debug!(path = %path.display(), "plugin component compiled");
        Ok(component)
    }

    /// As [`Self::load`], with the Redis of the config's `[redis]` for a key-value grant
    /// with `backend = "redis"`.
    pub fn load_granted(
        &self,
        config: &PluginConfig,
        redis: Option<&Arc<keyvalue::RedisKv>>,
    ) -> anyhow::Result<LoadedPlugin> {
        let component = self.compile(&config.path)?;
        self.link(config, &component, redis)
    }

    /// Links a compiled component as the plugin `config` describes, finding its role.
    fn link(
        &self,
        config: &PluginConfig,
        component: &Component,
        redis: Option<&Arc<keyvalue::RedisKv>>,
    ) -> anyhow::Result<LoadedPlugin> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            anyhow::anyhow!(
                "cannot link `{}` (it may import something the sandbox does not grant): {e:#}",
                config.path.display()
            )
        })?;
        let stream = stream::Indices::new(&pre);
        let (role, pre) = if let Ok(p) = AuthPre::new(pre.clone()) {
            (Role::Auth, RolePre::Auth(p))
        } else if let Ok(p) = TransformPre::new(pre.clone()) {
            (Role::Transform, RolePre::Transform(p))
        } else if let Ok(p) = PredicatePre::new(pre) {
            (Role::Predicate, RolePre::Predicate(p))
        } else {
            anyhow::bail!("`{}` implements none of the worlds auth, transform, predicate of portcullis:plugin@0.1.0", config.path.display());
        };
        let ticks = (config.timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1;
        let caps = &config.capabilities;
        let granted = Granted {
            any: caps.any(),
            allowed: caps.allowed_hosts.clone().into(),
            kv: caps
                .keyvalue
                .as_ref()
                .and_then(|g| keyvalue::Grant::new(g, redis)),
            io_timeout: caps.io_timeout,
            max_response: caps.max_response_size,
        };
        Ok(LoadedPlugin {
            config: config.clone(),
            name: Arc::from(config.name.as_str()),
            role,
            pre,
            ticks,
            stream,
            granted,
        })
    }
}

/// A plugin bound to one route's config.
pub struct Bound {
    pub plugin: Arc<LoadedPlugin>,
    pub route: Arc<str>,
    config_json: Arc<str>,
    /// For transforms: the hooks it declared.
    pub hooks: Hooks,
    engine: Engine,
    outbound: Arc<outbound::OutboundClient>,
    metrics: PluginMetrics,
}

/// A plugin's metric handles, resolved once per binding.
struct PluginMetrics {
    /// By [`Hook`].
    duration: [prometheus::Histogram; 6],
    /// By kind: trap, timeout, memory.
    failures: [prometheus::IntCounter; 3],
    /// Instances made for calls that found none warm.
    created: prometheus::IntCounter,
}

#[derive(Clone, Copy)]
enum Hook {
    Authenticate = 0,
    Matches = 1,
    OnRequest = 2,
    OnResponse = 3,
    OpenStream = 4,
    OnEvent = 5,
}

impl PluginMetrics {
    fn new(plugin: &str) -> Self {
        let m = crate::metrics::get();
        let d = |hook| m.plugin_duration.with_label_values(&[plugin, hook]);
        let f = |kind| m.plugin_failures.with_label_values(&[plugin, kind]);
        PluginMetrics {
            duration: [
                d("authenticate"),
                d("matches"),
                d("on_request"),
                d("on_response"),
                d("open_stream"),
                d("on_event"),
            ],
            failures: [f("trap"), f("timeout"), f("memory")],
            created: m.plugin_instances_created.with_label_values(&[plugin]),
        }
    }

    fn observe<R>(
        &self,
        hook: Hook,
        started: std::time::Instant,
        result: &Result<R, PluginFailure>,
    ) {
        self.duration[hook as usize].observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            let kind = match e {
                PluginFailure::Trap(_) => 0,
                PluginFailure::Timeout => 1,
                PluginFailure::OutOfMemory => 2,
            };
            self.failures[kind].inc();
        }
    }
}

struct Warm {
    store: Store<HostState>,
    instance: RoleInstance,
    /// A `stream-transform`'s stream exports.
    stream: Option<stream::Exports>,
}

impl Bound {
    /// Binds `plugin` to a route: instantiates it once and runs `configure` (and, for a
    /// transform, `declare-hooks`), so a bad config fails here with the plugin's words.
    pub async fn new(
        host: &PluginHost,
        plugin: Arc<LoadedPlugin>,
        route: &str,
        config_json: &str,
    ) -> Result<Self, String> {
        let mut b = Bound {
            metrics: PluginMetrics::new(&plugin.name),
            plugin,
            route: Arc::from(route),
            config_json: Arc::from(config_json),
            hooks: Hooks::empty(),
            engine: host.engine.clone(),
            outbound: host.outbound.clone(),
        };
        let mut warm = b
            .instantiate(b.plugin.granted.kv.clone())
            .await
            .map_err(|e| e.to_string())?;
        if let RoleInstance::Transform(t) = &warm.instance {
            warm.store.set_epoch_deadline(b.plugin.ticks);
            begin_call(&mut warm.store);
            b.hooks = t
                .call_declare_hooks(&mut warm.store)
                .await
                .map_err(|e| format!("declare-hooks failed: {}", classify(&e, &warm.store)))?;
            if b.hooks.contains(Hooks::RESPONSE_BODY) {
                b.hooks |= Hooks::ON_RESPONSE;
            }
        }
        Ok(b)
    }

    /// A fresh configured instance, its key-value grant through `kv`'s connection.
    async fn instantiate(&self, kv: Option<keyvalue::Grant>) -> Result<Warm, ConfigureError> {
        let p = &self.plugin;
        // The sandbox: no args, env, preopened dirs, sockets or stdin.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stdout(host::GuestOutput {
                plugin: p.name.clone(),
                stream: "stdout",
            })
            .stderr(host::GuestOutput {
                plugin: p.name.clone(),
                stream: "stderr",
            })
            .build();
        let state = HostState {
            table: ResourceTable::new(),
            wasi,
            memory: host::MemoryLimit::new(p.config.memory_limit as usize),
            plugin: p.name.clone(),
            route: self.route.clone(),
            ticks: p.ticks,
            request_id: None,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            outbound: outbound::Outbound {
                plugin: p.name.clone(),
                allowed: p.granted.allowed.clone(),
                client: self.outbound.clone(),
                max_response: p.granted.max_response,
                io_timeout: p.granted.io_timeout,
                deadline: tokio::time::Instant::now() + p.granted.io_timeout,
            },
            kv,
            budget: budget::Budget::new(p.config.timeout, EPOCH_TICK),
            granted: p.granted.any,
        };
        let mut stream = None;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        if p.granted.any {
            budget::install(&mut store);
        }
        store.set_epoch_deadline(p.ticks);
        let instance = match &p.pre {
            RolePre::Auth(pre) => pre
                .instantiate_async(&mut store)
                .await
                .map(RoleInstance::Auth),
            RolePre::Predicate(pre) => pre
                .instantiate_async(&mut store)
                .await
                .map(RoleInstance::Predicate),
            RolePre::Transform(pre) if p.stream.is_none() => pre
                .instantiate_async(&mut store)
                .await
                .map(RoleInstance::Transform),
            RolePre::Transform(pre) => {
                stream::instantiate(pre, p.stream.as_ref(), &mut store, &mut stream).await
            }
        };
        let instance = instance.map_err(|e| ConfigureError::Failed(classify(&e, &store)))?;
        store.set_epoch_deadline(p.ticks);
        begin_call(&mut store);
        let configured = match &instance {
            RoleInstance::Auth(i) => i.call_configure(&mut store, &self.config_json).await,
            RoleInstance::Predicate(i) => i.call_configure(&mut store, &self.config_json).await,
            RoleInstance::Transform(i) => i.call_configure(&mut store, &self.config_json).await,
        };
        match configured {
            Ok(Ok(())) => Ok(Warm {
                store,
                instance,
                stream,
            }),
            Ok(Err(msg)) => Err(ConfigureError::Rejected(msg)),
            Err(e) => Err(ConfigureError::Failed(classify(&e, &store))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConfigureError {
    #[error("rejected its config: {0}")]
    Rejected(String),
    #[error("failed while configuring: {0}")]
    Failed(PluginFailure),
}

/// What a failed call was: the memory limiter's flag says out-of-memory, an epoch
/// interrupt is the CPU deadline, anything else a trap.
fn classify(e: &wasmtime::Error, store: &Store<HostState>) -> PluginFailure {
    match e.downcast_ref::<wasmtime::Trap>() {
        _ if store.data().memory.exceeded() => PluginFailure::OutOfMemory,
        Some(wasmtime::Trap::Interrupt) => PluginFailure::Timeout,
        Some(t) => PluginFailure::Trap(t.to_string()),
        None => PluginFailure::Trap(format!("{e}")),
    }
}

/// One call that lends the request to a warm instance of the pool's role: check out,
/// lend, call `$method`, take the request back, return or discard the instance.
macro_rules! lent_call {
    ($pool:ident, $req:ident, $role:ident, $method:ident, $hook:expr) => {{
        let started = std::time::Instant::now();
        let mut warm = match $pool.checkout().await {
            Ok(w) => w,
            Err(e) => return ($req, $pool.observed($hook, started, Err(e))),
        };
        let rq = lend(&mut warm, $req);
        let bound = $pool.wall_bound();
        let r = match &warm.instance {
            RoleInstance::$role(i) => {
                bounded(
                    bound,
                    i.$method(&mut warm.store, Resource::new_borrow(rq.rep())),
                )
                .await
            }
            _ => unreachable!("a pool only holds instances of its plugin's role"),
        };
        let req = warm
            .store
            .data_mut()
            .table
            .delete(rq)
            .expect("request handle");
        (req, $pool.observed($hook, started, $pool.finish(warm, r)))
    }};
}

/// One worker's idle instances of one plugin, over the routes that use it.
type IdleStore = Arc<Mutex<idle::Idle<Warm>>>;

/// One worker's warm instances of a [`Bound`] plugin: its route's share of the worker's
/// [`IdleStore`] of the plugin. The mutex is only ever taken by the worker thread that owns
/// the pool (and its sweeper task, on the same thread), so it is never contended.
pub struct Pool {
    pub bound: Arc<Bound>,
    /// Shared with the worker's other routes that use the plugin, and with the streams that
    /// hold an instance, which give it back when they end.
    idle: IdleStore,
    /// This pool's instances in the store: those configured with the route's config, which
    /// routes with the same plugin config share.
    key: usize,
    /// Whether this pool is the first of its key in the worker (it reports the key's idle
    /// instances; the others report none, so that sums count each once).
    first: bool,
    /// The plugin's key-value grant, through this worker's connection.
    kv: Option<keyvalue::Grant>,
}

/// One plugin's store in a worker and the configs its routes gave it.
struct PluginStore {
    plugin: Arc<LoadedPlugin>,
    idle: IdleStore,
    kv: Option<keyvalue::Grant>,
    /// A key per distinct config: the address of the first binding with that config
    /// (unique while it lives, and the worker's pool of it holds it).
    configs: Vec<(Arc<str>, usize)>,
}

/// Builds one worker's [`Pool`]s: one [`IdleStore`] per plugin, shared by its routes, and
/// the worker's own Redis connections for their key-value grants.
#[derive(Default)]
pub struct WorkerPools {
    stores: Vec<PluginStore>,
    redis: keyvalue::WorkerRedis,
}

impl WorkerPools {
    /// The pool of `bound` in this worker. Starts empty: instances are made on demand.
    pub fn pool(&mut self, bound: &Arc<Bound>) -> Pool {
        let plugin = &bound.plugin;
        let at = match self
            .stores
            .iter()
            .position(|s| Arc::ptr_eq(&s.plugin, plugin))
        {
            Some(at) => at,
            None => {
                let kv = plugin
                    .granted
                    .kv
                    .as_ref()
                    .map(|g| g.on_worker(&mut self.redis));
                self.stores.push(PluginStore {
                    plugin: plugin.clone(),
                    kv,
                    idle: Arc::new(Mutex::new(idle::Idle::new(
                        plugin.config.max_warm,
                        plugin.config.pool_size,
                    ))),
                    configs: Vec::new(),
                });
                self.stores.len() - 1
            }
        };
        let store = &mut self.stores[at];
        let (key, first) = match store.configs.iter().find(|(c, _)| *c == bound.config_json) {
            Some(&(_, key)) => (key, false),
            None => {
                let key = Arc::as_ptr(bound) as usize;
                store.configs.push((bound.config_json.clone(), key));
                (key, true)
            }
        };
        Pool {
            bound: bound.clone(),
            idle: store.idle.clone(),
            key,
            first,
            kv: store.kv.clone(),
        }
    }
}

/// Gives a healthy instance of `key` back to its worker's store; what the store evicts is
/// dropped after the lock is released.
fn give_back(idle: &IdleStore, key: usize, warm: Warm) {
    let dropped = idle.lock().expect("pool lock").put(key, warm);
    drop(dropped);
}

impl Pool {
    pub fn on_error(&self) -> OnError {
        self.bound.plugin.config.on_error
    }

    fn wall_bound(&self) -> Option<Duration> {
        self.bound.plugin.wall_bound()
    }

    /// A warm instance: from the pool, or a new configured one.
    async fn checkout(&self) -> Result<Warm, PluginFailure> {
        let warm = self.idle.lock().expect("pool lock").take(self.key);
        match warm {
            Some(mut w) => {
                // It may have served another route with the same config: its log lines
                // name this one now.
                let route = &mut w.store.data_mut().route;
                if !Arc::ptr_eq(route, &self.bound.route) {
                    *route = self.bound.route.clone();
                }
                Ok(w)
            }
            None => {
                idle::ensure_sweeper(&self.idle, self.bound.plugin.config.idle_timeout);
                self.instantiate().await
            }
        }
    }

    async fn instantiate(&self) -> Result<Warm, PluginFailure> {
        self.bound.metrics.created.inc();
        self.bound
            .instantiate(self.kv.clone())
            .await
            .map_err(|e| match e {
                ConfigureError::Failed(f) => f,
                ConfigureError::Rejected(m) => {
                    PluginFailure::Trap(format!("configure rejected: {m}"))
                }
            })
    }

    /// Returns a healthy instance to the pool; a failed one is dropped.
    fn finish<R>(&self, warm: Warm, result: wasmtime::Result<R>) -> Result<R, PluginFailure> {
        match result {
            Ok(r) => {
                give_back(&self.idle, self.key, warm);
                Ok(r)
            }
            Err(e) => {
                let failure = classify(&e, &warm.store);
                tracing::warn!(plugin = &*self.bound.plugin.name, route = &*self.bound.route, error = %failure, "plugin call failed; instance discarded");
                Err(failure)
            }
        }
    }

    /// Counts a finished call in the plugin's metrics.
    fn observed<R>(
        &self,
        hook: Hook,
        started: std::time::Instant,
        result: Result<R, PluginFailure>,
    ) -> Result<R, PluginFailure> {
        self.bound.metrics.observe(hook, started, &result);
        result
    }

    /// Warm instances of this route's config pooled right now (reported by the first
    /// route with that config; the others report 0).
    pub fn idle(&self) -> usize {
        if !self.first {
            return 0;
        }
        self.idle.lock().expect("pool lock").count(self.key)
    }

    pub async fn authenticate(
        &self,
        req: RequestRes,
    ) -> (RequestRes, Result<AuthDecision, PluginFailure>) {
        lent_call!(self, req, Auth, call_authenticate, Hook::Authenticate)
    }

    pub async fn matches(&self, req: RequestRes) -> (RequestRes, Result<bool, PluginFailure>) {
        lent_call!(self, req, Predicate, call_matches, Hook::Matches)
    }

    pub async fn on_request(
        &self,
        req: RequestRes,
    ) -> (RequestRes, Result<RequestAction, PluginFailure>) {
        lent_call!(self, req, Transform, call_on_request, Hook::OnRequest)
    }

    pub async fn on_response(
        &self,
        req: RequestRes,
        resp: ResponseRes,
    ) -> (RequestRes, ResponseRes, Result<(), PluginFailure>) {
        let started = std::time::Instant::now();
        let mut warm = match self.checkout().await {
            Ok(w) => w,
            Err(e) => return (req, resp, self.observed(Hook::OnResponse, started, Err(e))),
        };
        let rq = lend(&mut warm, req);
        let rs = warm
            .store
            .data_mut()
            .table
            .push(resp)
            .expect("resource table has room");
        let bound = self.wall_bound();
        let r = match &warm.instance {
            RoleInstance::Transform(t) => {
                bounded(
                    bound,
                    t.call_on_response(
                        &mut warm.store,
                        Resource::new_borrow(rq.rep()),
                        Resource::new_borrow(rs.rep()),
                    ),
                )
                .await
            }
            _ => unreachable!("transform pool holds transform instances"),
        };
        let table = &mut warm.store.data_mut().table;
        let resp = table.delete(rs).expect("response handle");
        let req = table.delete(rq).expect("request handle");
        let r = self.finish(warm, r);
        (req, resp, self.observed(Hook::OnResponse, started, r))
    }
}

impl LoadedPlugin {
    /// The wall-clock limit of one call of a plugin that may wait: its `io_timeout`
    /// plus its CPU `timeout` (to act on what the wait gave it). None for the others,
    /// which cannot wait: their CPU deadline is their limit.
    fn wall_bound(&self) -> Option<Duration> {
        self.granted
            .any
            .then(|| self.granted.io_timeout + self.config.timeout)
    }
}

/// Runs one export call, within `bound` of wall-clock time when there is one. A call cut
/// off there is reported as the epoch interrupt it stands in for (a timeout), and the
/// instance is discarded like any failed one.
pub(super) async fn bounded<R>(
    bound: Option<Duration>,
    call: impl std::future::Future<Output = wasmtime::Result<R>>,
) -> wasmtime::Result<R> {
    match bound {
        None => call.await,
        Some(d) => match tokio::time::timeout(d, call).await {
            Ok(r) => r,
            Err(_) => Err(wasmtime::Trap::Interrupt.into()),
        },
    }
}

/// A hook call begins: its CPU account and its outbound deadline start now (for a plugin
/// with a capability: the others cannot wait, and their epoch deadline is their limit).
pub(super) fn begin_call(store: &mut Store<HostState>) {
    let s = store.data_mut();
    if !s.granted {
        return;
    }
    s.budget.start();
    s.outbound.deadline = tokio::time::Instant::now() + s.outbound.io_timeout;
}

/// Puts the request in the instance's resource table for one call and arms the deadline.
fn lend(warm: &mut Warm, req: RequestRes) -> Resource<RequestRes> {
    let ticks = warm.store.data().ticks;
    warm.store.set_epoch_deadline(ticks);
    begin_call(&mut warm.store);
    warm.store.data_mut().request_id = req.headers.get("x-request-id").cloned();
    warm.store
        .data_mut()
        .table
        .push(req)
        .expect("resource table has room")
}

/// Every plugin of a config loaded and bound to its routes: `routes[i]` lists the route's
/// plugins in order. A bad component or a plugin that rejects its config is an error that
/// names the file position of the route's plugin entry.
pub struct PluginSet {
    pub routes: Vec<Vec<Arc<Bound>>>,
    /// Component files compiled (or read from the disk cache): one per distinct path,
    /// however many `[[plugins]]` entries and routes use it.
    pub components: usize,
}

impl PluginSet {
    /// Loads the plugins of `config`, starting an engine only when there are any.
    pub fn for_config(config: &Config) -> anyhow::Result<Self> {
        if config.plugins.is_empty() {
            return Ok(Self::none(config.routes.len()));
        }
        let host = PluginHost::new(config.server.plugin_cache_dir.as_deref())?;
        // Instances are async (wasmtime-wasi's host side is); loading runs on a small
        // runtime of its own, before the gateway's starts.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(Self::load(&host, config))
    }

    pub async fn load(host: &PluginHost, config: &Config) -> anyhow::Result<Self> {
        let mut loaded = Vec::with_capacity(config.plugins.len());
        // The Redis settings of this config's plugins' key-value grants (each worker
        // connects on its own: `WorkerPools`).
        let redis = config
            .redis
            .clone()
            .map(|c| Arc::new(keyvalue::RedisKv::new(c)));
        // Entries naming the same file share its compiled code.
        let mut components: HashMap<&Path, Component> = HashMap::new();
        for p in &config.plugins {
            let l = match components.get(p.path.as_path()) {
                Some(c) => host.link(p, c, redis.as_ref()),
                None => host.compile(&p.path).and_then(|c| {
                    let l = host.link(p, &c, redis.as_ref());
                    components.insert(&p.path, c);
                    l
                }),
            }
            .map_err(|e| {
                anyhow::anyhow!("{}: plugin `{}`: {e}", config.source.display(), p.name)
            })?;
            loaded.push(Arc::new(l));
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let mut bound = Vec::with_capacity(r.plugins.len());
            for rp in &r.plugins {
                let plugin = loaded[rp.plugin].clone();
                let b = Bound::new(host, plugin.clone(), &r.name, &rp.config_json)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "{}:{}:{}: key `{}`: plugin `{}` on route `{}` {e}",
                            config.source.display(),
                            rp.position.0,
                            rp.position.1,
                            rp.key,
                            plugin.name,
                            r.name
                        )
                    })?;
                bound.push(Arc::new(b));
            }
            routes.push(bound);
        }
        Ok(PluginSet {
            routes,
            components: components.len(),
        })
    }

    /// No plugins on any of `routes` routes.
    pub fn none(routes: usize) -> Self {
        PluginSet {
            routes: (0..routes).map(|_| Vec::new()).collect(),
            components: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.iter().all(Vec::is_empty)
    }

    /// For each route, whether it runs an auth plugin.
    pub fn authenticated(&self) -> Vec<bool> {
        self.routes
            .iter()
            .map(|chain| chain.iter().any(|b| b.plugin.role == Role::Auth))
            .collect()
    }
}
