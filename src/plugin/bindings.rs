//! Host bindings generated from `wit/` — one module per world. The `types` and `host`
//! interfaces are generated once (in `auth`) and shared by the other two worlds.

pub mod auth {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "auth",
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
        with: {
            "portcullis:plugin/types": super::auth::portcullis::plugin::types,
            "portcullis:plugin/host": super::auth::portcullis::plugin::host,
        },
    });
}

pub use auth::portcullis::plugin::host::LogLevel;
pub use auth::portcullis::plugin::types::{AuthDecision, Hooks, Reply, RequestAction};
