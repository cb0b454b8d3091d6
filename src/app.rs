//! The wiring at the top: builds the gateway from a loaded config and its plugins, puts it
//! in the hot-reload slots ([`Live`], which owns the background tasks: health checks and
//! discovery), starts the reload triggers (SIGHUP, `server.watch_config`), and runs the
//! server with the admin API as its admin service. `main` and the demo call [`run`].

use crate::config::Config;
use crate::live::{self, Live};
use crate::plugin::PluginSet;
use crate::proxy::Gateway;
use std::future::Future;
use std::sync::Arc;

/// Serves `config` until `shutdown` resolves and in-flight requests have drained.
pub async fn run(
    config: Config,
    plugins: PluginSet,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::live::log_warnings(&config, &plugins);
    let source = config.source.clone();
    let hash = config.hash;
    let gateway = Gateway::new(config, plugins);
    let server = gateway.server.clone();
    let live = Arc::new(Live::new(source, server.clone(), gateway, hash));

    // Reloads: SIGHUP, and (opt-in) changes to the config or plugin files.
    let mut triggers = vec![tokio::spawn(live::reload_on_sighup(live.clone()))];
    if server.watch_config {
        triggers.push(tokio::spawn(live::watch_files(live.clone())));
    }
    let admin = {
        let live = live.clone();
        move |req| {
            let live = live.clone();
            async move { crate::admin::handle(&live, req).await }
        }
    };
    let stopping = async {
        shutdown.await;
        for t in &triggers {
            t.abort();
        }
        live.stop_background();
    };
    crate::server::run(&server, live.workers(), admin, stopping).await
}
