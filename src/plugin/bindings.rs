//! Host bindings generated from `wit/` — one module per world. Exports are called
//! asynchronously: wasmtime-wasi's host functions are async, and a synchronous call from
//! inside the gateway's tokio runtime would have to block it. The `types` and `host`
//! interfaces are generated once (in `auth`) and shared by the other two worlds.

pub mod auth {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "auth",
        exports: { default: async },
        with: {
            "portcullis:plugin/types.request": crate::plugin::host::RequestRes,
            "portcullis:plugin/types.response": crate::plugin::host::ResponseRes,
        },
    });
}

pub mod predicate {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "predicate",
        exports: { default: async },
        with: {
            "portcullis:plugin/types": super::auth::portcullis::plugin::types,
            "portcullis:plugin/host": super::auth::portcullis::plugin::host,
        },
    });
}

pub mod transform {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "transform",
        exports: { default: async },
        with: {
            "portcullis:plugin/types": super::auth::portcullis::plugin::types,
            "portcullis:plugin/host": super::auth::portcullis::plugin::host,
        },
    });
}

/// `stream-transform`: a transform with `open-stream` and `on-event` (its own world, so
/// transforms built before it still load; see `plugin::stream`).
pub mod stream_transform {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "stream-transform",
        exports: { default: async },
        with: {
            "portcullis:plugin/types": super::auth::portcullis::plugin::types,
            "portcullis:plugin/host": super::auth::portcullis::plugin::host,
        },
    });
}

pub use auth::portcullis::plugin::host::LogLevel;
pub use auth::portcullis::plugin::types::{AuthDecision, Hooks, Reply, RequestAction};
