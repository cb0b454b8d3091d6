//! `[routes.ai]`: the route serves model APIs, so the gateway reads each call's model and
//! token usage (see `ai/`), may ask a streamed OpenAI chat completion for its usage, and
//! ends a failed event stream with the API's own error event.

use super::error::ConfigError;
use super::section::Section;
use super::units::Size;
use serde::Deserialize;
use toml::Spanned;

/// `[routes.ai]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAi {
    /// `api = "auto"`: `"openai"`, `"anthropic"`, or `"auto"` (by the request path).
    api: Option<Spanned<String>>,
    /// `include_usage = true`: ask streamed OpenAI chat completions and completions for
    /// their usage when the client did not, and remove it from what the client receives.
    include_usage: Option<bool>,
    /// `stream_error_event = true`: when an event stream fails after it started, send the
    /// API's error event before aborting the stream.
    stream_error_event: Option<bool>,
    /// `max_request_body = "1MiB"`: request bodies up to this size are read for their
    /// `model` (and rewritten for `include_usage`); larger ones stream through unread.
    max_request_body: Option<Spanned<Size>>,
    /// `default_max_tokens = 4096`: the output tokens a token limit reserves for a request
    /// that does not say (`max_tokens`, `max_completion_tokens`, `max_output_tokens`).
    default_max_tokens: Option<Spanned<i64>>,
    /// `tokenizer = "o200k_base"`: a token limit counts the prompt's tokens with this
    /// encoding (`"o200k_base"` or `"cl100k_base"`) instead of estimating them from the
    /// body's length (see `ai::prompt`).
    tokenizer: Option<Spanned<String>>,
}

/// Which API the route's calls speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiChoice {
    /// By the request path: `…/messages` is Anthropic; `…/chat/completions`,
    /// `…/completions`, `…/embeddings`, `…/responses` are OpenAI; any other path is not
    /// a model call.
    Auto,
    OpenAi,
    Anthropic,
}

/// The BPE encoding a route counts prompt tokens with (`tokenizer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    /// GPT-4o, GPT-4.1, GPT-5 and the o-series.
    O200kBase,
    /// GPT-4, GPT-3.5-turbo, the text-embedding-3 models.
    Cl100kBase,
}

#[derive(Clone, Debug)]
pub struct AiConfig {
    pub api: ApiChoice,
    pub include_usage: bool,
    pub stream_error_event: bool,
    pub max_request_body: u64,
    pub default_max_tokens: u64,
    /// `None`: the prompt's tokens are estimated from the body's length.
    pub tokenizer: Option<Tokenizer>,
}

/// The default `max_request_body`.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 1 << 20;

/// The default `default_max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The largest `max_request_body`: the body is held in memory while it is read.
const MAX_REQUEST_BODY: u64 = 64 << 20;

pub(super) fn validate(cx: &Section<'_>, raw: Spanned<RawAi>) -> Result<AiConfig, ConfigError> {
    let cx = cx.table("ai", raw.span());
    let raw = raw.into_inner();
    let api = cx.choice(
        &raw.api,
        "api",
        "api",
        &[
            ("openai", ApiChoice::OpenAi),
            ("anthropic", ApiChoice::Anthropic),
            ("auto", ApiChoice::Auto),
        ],
        ApiChoice::Auto,
    )?;
    let max = raw
        .max_request_body
        .map(|s| Spanned::new(s.span(), s.into_inner().0));
    let max_request_body = cx
        .range(&max, "max_request_body", 0..=MAX_REQUEST_BODY)?
        .unwrap_or(DEFAULT_MAX_REQUEST_BODY);
    let default_max_tokens = cx
        .range(
            &raw.default_max_tokens,
            "default_max_tokens",
            1..=10_000_000,
        )?
        .map_or(DEFAULT_MAX_TOKENS, |n| n as u64);
    let tokenizer = cx.choice(
        &raw.tokenizer,
        "tokenizer",
        "tokenizer",
        &[
            ("o200k_base", Some(Tokenizer::O200kBase)),
            ("cl100k_base", Some(Tokenizer::Cl100kBase)),
        ],
        None,
    )?;
    Ok(AiConfig {
        api,
        include_usage: raw.include_usage.unwrap_or(true),
        stream_error_event: raw.stream_error_event.unwrap_or(true),
        max_request_body,
        default_max_tokens,
        tokenizer,
    })
}
