//! Host bindings generated from `wit/` — one module per world. Exports are called
//! asynchronously: wasmtime-wasi's host functions are async, and a synchronous call from
//! inside the gateway's tokio runtime would have to block it. The `types` and `host`
//! interfaces are generated once (in `auth`) and shared by the other two worlds. The
//! capability interfaces (`wasi:keyvalue`, `keyvalue-ext`) are generated from the
//! `capabilities` world (`wasi:http` and `wasi:io` are wasmtime-wasi-http's and
//! wasmtime-wasi's own); the `*-with-capabilities` worlds have the same exports as their
//! roles, so the role bindings below run them.

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

pub mod capabilities {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "capabilities",
        imports: {
            "wasi:keyvalue": async,
            "portcullis:plugin/keyvalue-ext": async,
        },
        with: {
            "wasi:keyvalue/store.bucket": crate::plugin::keyvalue::Bucket,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

pub use auth::portcullis::plugin::host::LogLevel;
pub use auth::portcullis::plugin::types::{AuthDecision, Hooks, Reply, RequestAction};
