//! The integration tests: one test binary, so the gateway library and wasmtime are linked
//! once for all of them. Each module starts the real `portcullis` binary on
//! `127.0.0.1:0` in front of real servers; `support` holds what they share. Run one area
//! with `cargo test --test it MODULE::` (for example `cargo test --test it discovery::`).

mod support;

mod admin;
mod ai;
mod balance;
mod capabilities;
mod composite;
mod config_errors;
mod connections;
mod dashboard;
mod discovery;
mod events;
mod examples;
mod fallback;
mod grpc;
mod h1_server;
mod hostile;
mod lifecycle;
mod limits;
mod observability;
mod plugins;
mod polyglot;
mod proxy;
mod rate_limits;
mod resilience;
mod scaffold;
mod streaming;
mod tls;
mod websocket;
