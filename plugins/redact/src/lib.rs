//! `redact`: a `stream-transform` plugin that masks e-mail addresses, API-key shapes and
//! custom regular expressions in the `choices[].delta.content` of streamed OpenAI chat
//! completions — also when a match is split across events.
//!
//! Config (the route's `config` table, as JSON):
//!
//! ```json
//! {
//!   "email": true,
//!   "api_keys": true,
//!   "patterns": ["\\b[0-9]{3}-[0-9]{2}-[0-9]{4}\\b"],
//!   "mask": "[REDACTED]",
//!   "max_tail": 256
//! }
//! ```
//!
//! All optional; the defaults are shown (`patterns` defaults to none). `api_keys` covers
//! `sk-…`/`sk-proj-…` (OpenAI, Anthropic), `AKIA…` (AWS), `ghp_…`/`github_pat_…` (GitHub),
//! `xox[abpr]-…` (Slack) and `AIza…` (Google).
//!
//! Split matches: the text of each choice is scanned as one text across events. The end
//! of what has arrived is held back while it could still be the start (or a growing end)
//! of a match — the shortest such tail, found by running the patterns' DFA from each
//! position: `…write to jo` holds `jo`, `…write to ` holds nothing. The held tail goes out
//! with the next event of that choice (masked, if it completed a match) or, at the latest,
//! with the choice's chunk that carries a `finish_reason`. The tail is bounded by
//! `max_tail` bytes: a longer candidate is released from its start, so a match longer
//! than `max_tail` may escape the mask. A stream that ends without a finishing chunk drops
//! the tail (never sends it unmasked). Events this plugin does not change pass with their
//! bytes unchanged.

pub mod mask;

#[cfg(target_arch = "wasm32")]
mod component;
