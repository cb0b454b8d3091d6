//! The request side of a model call: which API and operation the path names, the
//! request's `model`, and — for a streamed OpenAI chat completion (or completion) whose
//! body lacks `stream_options.include_usage` — the body rewritten to ask for usage; on a
//! route with a tokenizer, the prompt's tokens (`prompt`), in the same pass over the body.

use super::json::MAX_MODEL;
use super::prompt;
use crate::config::{ApiChoice, Tokenizer};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The API family a call speaks (its error shape, where its usage is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
}

/// The operation a call is (`gen_ai.operation.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `…/chat/completions`
    Chat,
    /// `…/completions`
    Completions,
    /// `…/embeddings`
    Embeddings,
    /// `…/responses`
    Responses,
    /// `…/messages`
    Messages,
    /// A path of a route with an explicit `api` that names none of the above.
    Other,
}

impl Operation {
    /// Whether an OpenAI request of this kind takes `stream_options.include_usage`.
    fn takes_stream_options(self) -> bool {
        matches!(self, Operation::Chat | Operation::Completions)
    }
}

/// The API and operation of a request to `path` (the client's normalized path) on a
/// route with `choice`; `None`: not a model call.
pub fn classify(choice: ApiChoice, path: &str) -> Option<(Api, Operation)> {
    let path = path.trim_end_matches('/');
    let op = if path.ends_with("/chat/completions") {
        Operation::Chat
    } else if path.ends_with("/completions") {
        Operation::Completions
    } else if path.ends_with("/embeddings") {
        Operation::Embeddings
    } else if path.ends_with("/responses") {
        Operation::Responses
    } else if path.ends_with("/messages") {
        Operation::Messages
    } else {
        Operation::Other
    };
    match (choice, op) {
        (ApiChoice::Auto, Operation::Other) => None,
        (ApiChoice::Auto, Operation::Messages) | (ApiChoice::Anthropic, _) => {
            Some((Api::Anthropic, op))
        }
        (ApiChoice::Auto | ApiChoice::OpenAi, _) => Some((Api::OpenAi, op)),
    }
}

/// The fields of a request body the gateway reads; everything else is skipped.
#[derive(Deserialize)]
struct Fields<'a> {
    model: Option<serde_json::Value>,
    stream: Option<serde_json::Value>,
    /// `Some(Null)` when written as `null`: present all the same.
    #[serde(default, deserialize_with = "present")]
    stream_options: Option<serde_json::Value>,
    /// The output cap, by its name in each API (chat completions, its newer name, the
    /// responses API; Anthropic's `max_tokens` is required).
    max_tokens: Option<serde_json::Value>,
    max_completion_tokens: Option<serde_json::Value>,
    max_output_tokens: Option<serde_json::Value>,
    /// Where the prompt is (borrowed unparsed: skipped as cheaply as an unknown member).
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    system: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// What a request body says, and the body to send instead when usage was asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    pub model: Option<Box<str>>,
    pub stream: bool,
    /// The most output tokens the request asks for, if it says.
    pub max_tokens: Option<u64>,
    /// The body with `stream_options.include_usage = true`, when the gateway adds it.
    pub rewritten: Option<Bytes>,
    /// The prompt's tokens, counted with the tokenizer asked for, when its shape is known
    /// (see [`prompt`]).
    pub prompt_tokens: Option<u64>,
}

/// Reads a buffered request body; `include_usage`: add it where it is missing;
/// `tokenizer`: count the prompt's tokens with it.
pub fn read(
    body: &[u8],
    api: Api,
    op: Operation,
    include_usage: bool,
    tokenizer: Option<Tokenizer>,
) -> Read {
    let Ok(f) = serde_json::from_slice::<Fields<'_>>(body) else {
        return Read::default();
    };
    let model = f
        .model
        .as_ref()
        .and_then(|m| m.as_str())
        .filter(|m| m.len() <= MAX_MODEL)
        .map(Box::from);
    let stream = f.stream.as_ref().and_then(|s| s.as_bool()) == Some(true);
    let asked = f
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(|v| v.as_bool())
        == Some(true);
    let rewritten =
        (include_usage && api == Api::OpenAi && op.takes_stream_options() && stream && !asked)
            .then(|| ask_for_usage(body, f.stream_options.is_some()))
            .flatten();
    let max_tokens = [
        &f.max_completion_tokens,
        &f.max_tokens,
        &f.max_output_tokens,
    ]
    .into_iter()
    .find_map(|v| v.as_ref().and_then(|v| v.as_u64()));
    let members = prompt::Members {
        messages: f.messages,
        prompt: f.prompt,
        input: f.input,
        system: f.system,
    };
    let prompt_tokens = tokenizer.and_then(|t| prompt::count(t, api, op, &members));
    Read {
        model,
        stream,
        max_tokens,
        rewritten,
        prompt_tokens,
    }
}

/// `body` with `stream_options.include_usage = true`. Without `stream_options` the member
/// is inserted after the opening brace and every other byte is kept; with one (that does
/// not ask for usage) the body is re-serialized with it set.
fn ask_for_usage(body: &[u8], has_options: bool) -> Option<Bytes> {
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
    if !has_options {
        let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
        if body[open] != b'{' {
            return None;
        }
        let mut out = BytesMut::with_capacity(body.len() + MEMBER.len());
        out.extend_from_slice(&body[..=open]);
        out.extend_from_slice(MEMBER);
        out.extend_from_slice(&body[open + 1..]);
        return Some(out.freeze());
    }
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let options = v
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    if !options.is_object() {
        *options = serde_json::json!({});
    }
    options
        .as_object_mut()
        .expect("an object")
        .insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_path() {
        use ApiChoice::*;
        assert_eq!(
            classify(Auto, "/v1/chat/completions"),
            Some((Api::OpenAi, Operation::Chat))
        );
        assert_eq!(
            classify(Auto, "/openai/v1/completions"),
            Some((Api::OpenAi, Operation::Completions))
        );
        assert_eq!(
            classify(Auto, "/v1/embeddings"),
            Some((Api::OpenAi, Operation::Embeddings))
        );
        assert_eq!(
            classify(Auto, "/v1/responses"),
            Some((Api::OpenAi, Operation::Responses))
        );
        assert_eq!(
            classify(Auto, "/v1/messages"),
            Some((Api::Anthropic, Operation::Messages))
        );
        assert_eq!(classify(Auto, "/v1/models"), None);
        assert_eq!(
            classify(OpenAi, "/generate"),
            Some((Api::OpenAi, Operation::Other))
        );
        assert_eq!(
            classify(Anthropic, "/v1/complete"),
            Some((Api::Anthropic, Operation::Other))
        );
    }

    fn rewritten(body: &str) -> Option<String> {
        read(body.as_bytes(), Api::OpenAi, Operation::Chat, true, None)
            .rewritten
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn include_usage_is_added_only_where_missing() {
        assert_eq!(
            rewritten(r#" {"model":"m","stream":true,"messages":[]}"#).unwrap(),
            r#" {"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
        let v: serde_json::Value = serde_json::from_str(
            &rewritten(
                r#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_obfuscation": false, "include_usage": true})
        );
        let v: serde_json::Value =
            serde_json::from_str(&rewritten(r#"{"stream":true,"stream_options":null}"#).unwrap())
                .unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(
            rewritten(r#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            None
        );
        assert_eq!(rewritten(r#"{"stream":false}"#), None);
        for (body, want) in [
            (r#"{"max_tokens":7}"#, Some(7)),
            (r#"{"max_completion_tokens":9,"max_tokens":7}"#, Some(9)),
            (r#"{"max_output_tokens":5}"#, Some(5)),
            (r#"{"max_tokens":-1}"#, None),
            (r#"{"max_tokens":"7"}"#, None),
        ] {
            let r = read(body.as_bytes(), Api::OpenAi, Operation::Chat, true, None);
            assert_eq!(r.max_tokens, want, "{body}");
        }
        assert_eq!(rewritten(r#"{"messages":[]}"#), None);
        assert_eq!(rewritten("not json"), None);
        let r = read(
            br#"{"model":"claude","stream":true}"#,
            Api::Anthropic,
            Operation::Messages,
            true,
            None,
        );
        assert_eq!(
            (r.model.as_deref(), r.stream, r.rewritten),
            (Some("claude"), true, None)
        );
        let r = read(
            br#"{"model":"e","stream":true}"#,
            Api::OpenAi,
            Operation::Embeddings,
            true,
            None,
        );
        assert_eq!(r.rewritten, None);
        let r = read(
            br#"{"model":"m","stream":true}"#,
            Api::OpenAi,
            Operation::Chat,
            false,
            None,
        );
        assert_eq!(r.rewritten, None);
    }
}
