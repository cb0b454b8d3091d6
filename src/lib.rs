//! Portcullis: an API gateway for AI systems. A native core (this crate) listens,
//! normalizes, routes, balances and forwards; see DESIGN.md §1 for the request path.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod hash;
pub mod metrics;
pub mod normalize;
pub mod plugin;
pub mod proxy;
pub mod router;
pub mod scaffold;
pub mod server;
pub mod tls;
pub mod upstream;
