//! `api-key`: an auth plugin that admits requests carrying one of the configured API keys.
//!
//! Config (the route's `config` table, as JSON):
//!
//! ```json
//! {
//!   "keys": [ {"key": "k-123", "consumer": "alice"}, "k-anonymous" ],
//!   "header": "x-api-key",
//!   "query": "api_key",
//!   "hide_credentials": false
//! }
//! ```
//!
//! - `keys` (required, non-empty): each a string, or `{key, consumer?}`. Keys are unique.
//!   An allowed request's consumer is the matching key's `consumer` (none for a bare
//!   string).
//! - `header` (default `"x-api-key"`): the request header holding the key.
//! - `query` (default: none, so query parameters are not looked at): a query parameter
//!   holding the key, used when the header is absent. Its value is percent-decoded.
//! - `hide_credentials` (default false): remove the header / query parameter before the
//!   request is forwarded.
//!
//! A missing or unknown key is denied with 401 and a JSON error body. Keys are compared in
//! constant time: the presented key's SHA-256 is compared with every configured key's
//! SHA-256 using `subtle`, always scanning the whole list.

pub mod keys;

#[cfg(target_arch = "wasm32")]
mod component;
