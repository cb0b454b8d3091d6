//! `model-router`: a predicate plugin that matches the request body's `model` field (as in
//! OpenAI-style `{"model": "gpt-4o", ...}` bodies) against glob patterns, so requests for
//! different models on the same path can go to different upstreams.
//!
//! Config (the route's `config` table, as JSON):
//!
//! ```json
//! {"models": ["gpt-*", "o1*"], "field": "model", "case_insensitive": false}
//! ```
//!
//! - `models` (required, non-empty): glob patterns. `*` matches any run of characters
//!   (including none), `?` exactly one character, `\` makes the next character literal.
//! - `field` (default `"model"`): the top-level member of the JSON body to read.
//! - `case_insensitive` (default false): compare ASCII letters without case.
//!
//! The route must buffer request bodies (`buffer_request_body`); without a body, with a
//! body that is not a JSON object, or without the field as a string, the predicate says
//! false (and the route does not match).

pub mod glob;
pub mod router;

#[cfg(target_arch = "wasm32")]
mod component;
