//! `jwt`: an auth plugin that admits requests bearing a valid JSON Web Token (the OAuth2
//! bearer-token path). HS256 and RS256; `exp`, `nbf`, `iss`, `aud` checked with a leeway;
//! the consumer is the `sub` claim.
//!
//! Config (the route's `config` table, as JSON):
//!
//! ```json
//! {
//!   "keys": [
//!     {"kid": "hmac-1", "secret": "at-least-32-bytes-of-shared-secret!!"},
//!     {"kid": "hmac-2", "secret_base64": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
//!     {"kid": "rsa-1", "pem": "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"},
//!     {"jwk": {"kty": "RSA", "kid": "rsa-2", "n": "...", "e": "AQAB"}}
//!   ],
//!   "jwks": {"keys": [ ... ]},
//!   "issuer": "https://id.example.com",
//!   "audience": ["my-api"],
//!   "leeway": 30,
//!   "require_exp": true,
//!   "header": "authorization",
//!   "query": "access_token",
//!   "consumer_claim": "sub",
//!   "hide_credentials": false
//! }
//! ```
//!
//! See `docs/plugins.md` for the meaning of each key.

pub mod config;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod component;
