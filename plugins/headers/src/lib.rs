//! `headers`: a transform plugin that edits request and response headers.
//!
//! Config (the route's `config` table, as JSON):
//!
//! ```json
//! {
//!   "request": {
//!     "remove": ["x-internal"],
//!     "rename": {"x-old": "x-new"},
//!     "set": {"x-env": "prod"},
//!     "add": {"x-tag": ["a", "b"], "x-one": "1"}
//!   },
//!   "response": { "set": {"cache-control": "no-store"}, "remove": ["server"] }
//! }
//! ```
//!
//! Each side takes four optional operations, applied in this order: `remove` (every field
//! of those names), `rename` (fields of the old name become fields of the new name,
//! replacing any already there), `set` (replace every field of that name with one), `add`
//! (append a field, keeping existing ones; a list adds one field per value). Names are
//! case-insensitive. Gateway-managed headers (`content-length`, `transfer-encoding`,
//! `connection`, ...) cannot be touched. The plugin asks only for the hooks it needs and
//! never for the response body.

pub mod rules;

#[cfg(target_arch = "wasm32")]
mod component;
