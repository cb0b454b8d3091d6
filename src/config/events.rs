//! `[routes.events]`: how the route's `stream-transform` plugins see its event streams —
//! the largest event handed to a plugin, and whether newline-delimited JSON responses are
//! event streams too (SSE always is).

use super::error::ConfigError;
use super::section::Section;
use super::units::Size;
use serde::Deserialize;
use toml::Spanned;

/// `[routes.events]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    /// `max_event_size = "1MiB"`: the most of one event held for a plugin (its bytes as
    /// sent, line ends included); a larger event follows the plugin's `on_error`.
    max_event_size: Option<Spanned<Size>>,
    /// `ndjson = false`: also cut `application/x-ndjson`, `application/ndjson` and
    /// `application/jsonl` responses into events, one per line.
    ndjson: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    pub max_event_size: usize,
    pub ndjson: bool,
}

/// The default `max_event_size`.
pub const DEFAULT_MAX_EVENT_SIZE: u64 = 1 << 20;

/// The bounds of `max_event_size`: an event is held whole in memory while its plugins run.
const EVENT_SIZES: std::ops::RangeInclusive<u64> = 64..=(64 << 20);

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_event_size: DEFAULT_MAX_EVENT_SIZE as usize,
            ndjson: false,
        }
    }
}

pub(super) fn validate(
    cx: &Section<'_>,
    raw: Option<Spanned<RawEvents>>,
) -> Result<EventsConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(EventsConfig::default());
    };
    let cx = cx.table("events", raw.span());
    let raw = raw.into_inner();
    let max = raw
        .max_event_size
        .map(|s| Spanned::new(s.span(), s.into_inner().0));
    let max_event_size = cx
        .range(&max, "max_event_size", EVENT_SIZES)?
        .unwrap_or(DEFAULT_MAX_EVENT_SIZE);
    Ok(EventsConfig {
        max_event_size: max_event_size as usize,
        ndjson: raw.ndjson.unwrap_or(false),
    })
}
