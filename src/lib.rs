//! Portcullis: an API gateway for AI systems. A native core (this crate) listens,
//! normalizes, routes, balances and forwards; docs/architecture.md describes the request
//! path phase by phase, the threads, who owns what state, and the module map.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod ai;
pub mod app;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod hash;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod normalize;
pub mod plugin;
pub mod proxy;
pub mod router;
pub mod scaffold;
pub mod server;
pub mod spares;
pub mod tls;
pub mod upstream;

/// The header names that frame a message or hold for one hop only. The gateway manages
/// them itself: plugins cannot set them (`plugin::host`), a client cannot send them as
/// trailers (`upstream::body`). (The plugin support crate keeps its own copy: it is built
/// for the guests.)
pub const FRAMING_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// The boxed error of body and connector types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
