//! The running configuration and hot reload.
//!
//! Each worker thread reads its gateway from its own slot (an `ArcSwap`) once per
//! request. A reload loads, validates and compiles the new config and plugins off to the
//! side (plugins on a thread of their own), builds the new tables, starts their background
//! tasks (health checks, discovery) and then stores a new gateway in every slot at once.
//! Requests in flight keep the `Arc` of the gateway they started on and finish there;
//! connections are untouched. A config that fails to load changes nothing. Limits whose
//! definition did not change keep their in-process counters (and an unchanged `[redis]`
//! its connection) across the reload.

use crate::config::{self, Config, ServerConfig};
use crate::plugin::PluginSet;
use crate::proxy::Gateway;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;

pub struct Live {
    /// One slot per worker thread.
    workers: Vec<Arc<ArcSwap<Gateway>>>,
    /// The admin listener's view.
    admin: ArcSwap<Gateway>,
    source: PathBuf,
    /// What cannot change without a restart (listeners, workers).
    started: ServerConfig,
    hash: AtomicU64,
    background: Mutex<Vec<JoinHandle<()>>>,
    reloading: tokio::sync::Mutex<()>,
}

/// What a successful reload loaded.
#[derive(Debug)]
pub struct Reloaded {
    pub hash: u64,
    pub routes: usize,
    pub upstreams: usize,
    pub plugins: usize,
}

impl Live {
    /// Installs the first gateway. Must run inside the tokio runtime that runs background
    /// tasks.
    pub fn new(source: PathBuf, started: ServerConfig, gateway: Gateway, hash: u64) -> Self {
        let workers = (0..started.workers)
            .map(|_| Arc::new(ArcSwap::from_pointee(gateway.for_worker())))
            .collect();
        let live = Live {
            workers,
            admin: ArcSwap::from_pointee(gateway.for_worker()),
            source,
            started,
            hash: AtomicU64::new(hash),
            background: Mutex::new(Vec::new()),
            reloading: tokio::sync::Mutex::new(()),
        };
        live.start_background(&gateway);
        set_config_hash(hash);
        live
    }

    /// Every worker's slot (the admin API sums their plugin pools).
    pub fn workers(&self) -> &[Arc<ArcSwap<Gateway>>] {
        &self.workers
    }

    /// The gateway the admin API describes.
    pub fn current(&self) -> Arc<Gateway> {
        self.admin.load_full()
    }

    pub fn hash(&self) -> u64 {
        self.hash.load(Ordering::Relaxed)
    }

    pub fn source(&self) -> &std::path::Path {
        &self.source
    }

    fn start_background(&self, gateway: &Gateway) {
        let tasks = background_tasks(&gateway.upstreams);
        let old = std::mem::replace(&mut *self.background.lock().expect("lock"), tasks);
        for t in old {
            t.abort();
        }
    }

    /// Ends the background tasks (at shutdown).
    pub fn stop_background(&self) {
        for t in self.background.lock().expect("lock").drain(..) {
            t.abort();
        }
    }

    /// Reloads the config file (and its plugins). On error nothing changes and the error
    /// (with file, line, column and key for config errors) is returned.
    pub async fn reload(&self) -> Result<Reloaded, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let m = crate::metrics::get();
        match self.load().await {
            Ok((gateway, r)) => {
                // Discovered upstreams whose source is unchanged start from the endpoints
                // the running tables know, not empty (their new tasks refresh them).
                crate::discovery::carry_over(&self.admin.load().upstreams, &gateway.upstreams);
                self.start_background(&gateway);
                for slot in &self.workers {
                    slot.store(Arc::new(gateway.for_worker()));
                }
                self.admin.store(Arc::new(gateway));
                self.hash.store(r.hash, Ordering::Relaxed);
                set_config_hash(r.hash);
                m.reloads.with_label_values(&["success"]).inc();
                tracing::info!(
                    config = %self.source.display(),
                    hash = %format!("{:016x}", r.hash),
                    routes = r.routes,
                    upstreams = r.upstreams,
                    plugins = r.plugins,
                    "config reloaded"
                );
                Ok(r)
            }
            Err(e) => {
                m.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(config = %self.source.display(), error = %e, "config reload failed; the running config stays");
                Err(e)
            }
        }
    }

    async fn load(&self) -> Result<(Gateway, Reloaded), String> {
        let config = config::load(&self.source).map_err(|e| e.to_string())?;
        let s = &config.server;
        for (what, same) in [
            (
                "server.listen",
                s.listen
                    .iter()
                    .map(|l| (l.address, l.tls.is_some()))
                    .eq(self
                        .started
                        .listen
                        .iter()
                        .map(|l| (l.address, l.tls.is_some()))),
            ),
            (
                "server.admin_listen",
                s.admin_listen == self.started.admin_listen,
            ),
            ("server.workers", s.workers == self.started.workers),
        ] {
            if !same {
                return Err(format!(
                    "{}: key `{what}`: cannot change on reload; restart the gateway to change it",
                    self.source.display()
                ));
            }
        }
        // Compiling plugins is CPU work and blocks on a runtime of its own: a plain thread.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("portcullis-reload".into())
            .spawn(move || {
                let plugins = PluginSet::for_config(&config).map_err(|e| format!("{e:#}"));
                // So is building a tokenizer's encoder (the first time a config names it).
                for t in config
                    .routes
                    .iter()
                    .filter_map(|r| r.ai.as_ref()?.tokenizer)
                {
                    crate::ai::prompt::warm(t);
                }
                let _ = tx.send(plugins.map(|p| (config, p)));
            })
            .map_err(|e| format!("cannot start the reload thread: {e}"))?;
        let (config, plugins) = rx
            .await
            .map_err(|_| "the reload thread panicked".to_string())??;
        log_warnings(&config, &plugins);
        let r = Reloaded {
            hash: config.hash,
            routes: config.routes.len(),
            upstreams: config.upstreams.len(),
            plugins: config.plugins.len(),
        };
        // Limits whose definition is unchanged keep their counters.
        Ok((Gateway::reloaded(config, plugins, &self.admin.load()), r))
    }
}

/// Logs what `portcullis validate` warns about a config (at start and on each reload).
pub fn log_warnings(config: &Config, plugins: &PluginSet) {
    for w in crate::router::bare_prefix::warnings(config, &plugins.authenticated()) {
        tracing::warn!(warning = %w, "a route without auth comes before an authenticated route's bare prefix");
    }
}

/// Starts the background tasks of a set of upstreams (active health checks, service
/// discovery) on the current runtime. They hold the upstreams weakly: they end when the
/// tables are dropped, or when aborted (shutdown, reload).
fn background_tasks(upstreams: &[Arc<Upstream>]) -> Vec<JoinHandle<()>> {
    let mut tasks: Vec<_> = upstreams
        .iter()
        .filter_map(crate::upstream::health_check::spawn)
        .collect();
    tasks.extend(crate::discovery::spawn(upstreams));
    tasks
}

fn set_config_hash(hash: u64) {
    let g = &crate::metrics::get().config_info;
    g.reset();
    g.with_label_values(&[&format!("{hash:016x}")]).set(1);
}

/// Reloads on every SIGHUP.
pub async fn reload_on_sighup(live: Arc<Live>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; reload with POST /reload");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading");
        let _ = live.reload().await;
    }
}

/// Size and modification time of each file the config consists of.
fn fingerprint(source: &std::path::Path) -> Vec<(PathBuf, Option<(u64, SystemTime)>)> {
    let stat = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
    };
    let mut files = vec![(source.to_path_buf(), stat(source))];
    if let Ok(c) = config::load(source) {
        for p in c.plugins {
            let s = stat(&p.path);
            files.push((p.path, s));
        }
    }
    files
}

/// `server.watch_config`: polls the config file and the plugin files it names once a
/// second and reloads when any of them changed.
pub async fn watch_files(live: Arc<Live>) {
    let mut last = fingerprint(live.source());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let source = live.source().to_path_buf();
        let now = tokio::task::spawn_blocking(move || fingerprint(&source))
            .await
            .unwrap_or_default();
        if now != last {
            last = now;
            tracing::info!(config = %live.source().display(), "config or plugin file changed: reloading");
            let _ = live.reload().await;
        }
    }
}
