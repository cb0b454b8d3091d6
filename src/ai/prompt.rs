//! The exact token count of a model call's prompt, on a route with `[routes.ai]
//! tokenizer`: what a token limit reserves for the call's input instead of the body's
//! length / 4.
//!
//! Counted with the route's encoding (`o200k_base` or `cl100k_base`), as ordinary text (a
//! special token's spelling in a prompt is text to the model too):
//! - OpenAI chat completions (`messages`): for each message 3 tokens, its `role`, its
//!   `content` (a string, or the `text` of its `"type": "text"` parts), its `name` (and 1
//!   more), its `refusal`, and the `name` and `arguments` of its `function_call` and of
//!   each of its `tool_calls` (and 1 more each); then 3 for the reply's priming — OpenAI's
//!   cookbook (`num_tokens_from_messages`).
//! - OpenAI completions (`prompt`) and embeddings (`input`): a string or an array of
//!   strings; token ids (an array of them, or an array of such arrays) count one each.
//! - Anthropic messages: the text of `system` and of each message's `content` (a string,
//!   or its `"type": "text"` blocks), nothing more (Anthropic publishes no tokenizer: the
//!   route's encoding is an approximation there).
//!
//! Left out, so the count is below what the model bills: images, audio and files,
//! `tools` definitions and other parts and blocks — the settlement charges what the
//! upstream reports. Anything else gets `None`, and the reservation is the length
//! estimate: another operation (responses, a route's other paths), a body that is not
//! JSON or whose prompt is not of these shapes, or more than [`MAX_TEXT`] of text.
//!
//! The encoders are built once per process (`tiktoken_rs`'s singletons, `LazyLock`s
//! shared by every worker and every reload), when a config first names them
//! ([`warm`]), not on a request; each then holds its ranks for the life of the process
//! (about 44 MiB of memory for o200k_base, 23 MiB for cl100k_base).

use super::{Api, Operation};
use crate::config::Tokenizer;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use tiktoken_rs::CoreBPE;

/// The most prompt text counted (bytes, summed over its strings); beyond it, the length
/// estimate: 20–50 ms of one core (o200k_base counts about 45 MB/s, cl100k_base 20;
/// `cargo run --example tokenizer-bench`).
pub const MAX_TEXT: usize = 1 << 20;

/// The largest body read and counted on a worker thread; a larger one is read on the
/// blocking pool (at most 0.4–0.8 ms of counting stays on the worker).
pub const INLINE_BODY: usize = 16 << 10;

/// The members of a request body that hold its prompt, borrowed unparsed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Members<'a> {
    pub messages: Option<&'a RawValue>,
    pub prompt: Option<&'a RawValue>,
    pub input: Option<&'a RawValue>,
    pub system: Option<&'a RawValue>,
}

/// Builds `t`'s encoder now, if this process has not yet (100–220 ms).
pub fn warm(t: Tokenizer) {
    encoder(t);
}

fn encoder(t: Tokenizer) -> &'static CoreBPE {
    match t {
        Tokenizer::O200kBase => tiktoken_rs::o200k_base_singleton(),
        Tokenizer::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
    }
}

/// The prompt tokens of a call, counted with `t`; `None`: not countable (see the module).
pub fn count(t: Tokenizer, api: Api, op: Operation, m: &Members<'_>) -> Option<u64> {
    let mut p = Pieces::default();
    match (api, op) {
        (Api::OpenAi, Operation::Chat) => chat(&mut p, m.messages?)?,
        (Api::OpenAi, Operation::Completions) => strings_or_ids(&mut p, m.prompt?)?,
        (Api::OpenAi, Operation::Embeddings) => strings_or_ids(&mut p, m.input?)?,
        (Api::Anthropic, Operation::Messages) => anthropic(&mut p, m.system, m.messages?)?,
        _ => return None,
    }
    Some(p.count(encoder(t)))
}

/// The texts to encode and the tokens known without encoding.
#[derive(Default)]
struct Pieces<'a> {
    texts: Vec<Cow<'a, str>>,
    len: usize,
    fixed: u64,
}

impl<'a> Pieces<'a> {
    /// Adds a text; `None` past [`MAX_TEXT`].
    fn text(&mut self, t: Text<'a>) -> Option<()> {
        self.len += t.0.len();
        if self.len > MAX_TEXT {
            return None;
        }
        self.texts.push(t.0);
        Some(())
    }

    fn opt(&mut self, t: Option<Text<'a>>) -> Option<()> {
        t.map_or(Some(()), |t| self.text(t))
    }

    fn count(&self, bpe: &CoreBPE) -> u64 {
        let encoded: usize = self
            .texts
            .iter()
            .map(|t| bpe.encode_ordinary(t).len())
            .sum();
        self.fixed + encoded as u64
    }
}

/// A JSON string, borrowed from the body unless it has escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

fn parse<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    serde_json::from_str(raw.get()).ok()
}

/// What a raw value is, by its first byte (a raw value starts at its value).
fn first(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or(0)
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow)]
    role: Option<Text<'a>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    refusal: Option<Text<'a>>,
    #[serde(borrow)]
    function_call: Option<Call<'a>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow)]
    function: Option<Call<'a>>,
}

#[derive(Deserialize)]
struct Call<'a> {
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    arguments: Option<Text<'a>>,
}

/// A content part (OpenAI) or block (Anthropic).
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    text: Option<Text<'a>>,
}

/// Tokens of a chat message's frame, and of the reply's priming.
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;

fn chat<'a>(p: &mut Pieces<'a>, messages: &'a RawValue) -> Option<()> {
    let messages: Vec<ChatMessage<'a>> = parse(messages)?;
    for m in messages {
        p.fixed += PER_MESSAGE;
        p.opt(m.role)?;
        if let Some(c) = m.content {
            content(p, c)?;
        }
        if let Some(name) = m.name {
            p.text(name)?;
            p.fixed += 1;
        }
        p.opt(m.refusal)?;
        let calls = m
            .tool_calls
            .into_iter()
            .flatten()
            .filter_map(|t| t.function);
        for call in m.function_call.into_iter().chain(calls) {
            p.opt(call.name)?;
            p.opt(call.arguments)?;
            p.fixed += 1;
        }
    }
    p.fixed += REPLY_PRIMING;
    Some(())
}

/// A message's content: a string, or parts whose `"type": "text"` ones count.
fn content<'a>(p: &mut Pieces<'a>, raw: &'a RawValue) -> Option<()> {
    match first(raw) {
        b'"' => p.text(parse(raw)?),
        b'[' => {
            for part in parse::<Vec<Part<'a>>>(raw)? {
                if part.kind.as_ref().is_some_and(|k| k.0 == "text") {
                    p.opt(part.text)?;
                }
            }
            Some(())
        }
        b'n' => Some(()),
        _ => None,
    }
}

/// A completion's `prompt` or an embedding's `input`.
fn strings_or_ids<'a>(p: &mut Pieces<'a>, raw: &'a RawValue) -> Option<()> {
    match first(raw) {
        b'"' => p.text(parse(raw)?),
        b'[' => {
            for item in parse::<Vec<&'a RawValue>>(raw)? {
                match first(item) {
                    b'"' => p.text(parse(item)?)?,
                    b'[' => p.fixed += parse::<Vec<u32>>(item)?.len() as u64,
                    b'0'..=b'9' => p.fixed += 1,
                    _ => return None,
                }
            }
            Some(())
        }
        _ => None,
    }
}

#[derive(Deserialize)]
struct AnthropicMessage<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

fn anthropic<'a>(
    p: &mut Pieces<'a>,
    system: Option<&'a RawValue>,
    messages: &'a RawValue,
) -> Option<()> {
    if let Some(s) = system {
        content(p, s)?;
    }
    for m in parse::<Vec<AnthropicMessage<'a>>>(messages)? {
        if let Some(c) = m.content {
            content(p, c)?;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiktoken_rs::{ChatCompletionRequestMessage as Msg, FunctionCall};

    /// The count of a body's prompt, read as a model call's body is (`request::read`).
    fn counted(t: Tokenizer, api: Api, op: Operation, body: &serde_json::Value) -> Option<u64> {
        let body = body.to_string();
        super::super::request::read(body.as_bytes(), api, op, false, Some(t)).prompt_tokens
    }

    fn o200k(s: &str) -> u64 {
        tiktoken_rs::o200k_base_singleton().encode_ordinary(s).len() as u64
    }

    fn msg(role: &str, content: &str) -> Msg {
        Msg {
            role: role.into(),
            content: Some(content.into()),
            ..Default::default()
        }
    }

    #[test]
    fn chat_counts_as_the_cookbook_does() {
        use serde_json::json;
        let chat = |body| counted(Tokenizer::O200kBase, Api::OpenAi, Operation::Chat, &body);
        // The oracle: tiktoken-rs's own num_tokens_from_messages (gpt-4o is o200k_base).
        let oracle = |m: &[Msg]| tiktoken_rs::num_tokens_from_messages("gpt-4o", m).unwrap() as u64;
        let system = "You are a terse assistant. Answer in one line.";
        let user = "東京は日本の首都です。What is the capital of Japan? \n\"quoted\"";
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user, "name": "alice"},
        ]});
        let mut named = msg("user", user);
        named.name = Some("alice".into());
        assert_eq!(chat(body), Some(oracle(&[msg("system", system), named])));

        // Content parts: the text ones count, an image counts nothing.
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe this picture"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": " in detail."},
        ]}]});
        assert_eq!(
            chat(body),
            Some(3 + o200k("user") + o200k("Describe this picture") + o200k(" in detail.") + 3)
        );

        // An assistant's tool call and the tool's answer.
        let args = r#"{"city":"Paris","unit":"celsius"}"#;
        let body = json!({"messages": [
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": args}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "18 degrees"},
        ]});
        let call = Msg {
            role: "assistant".into(),
            tool_calls: vec![FunctionCall {
                name: "weather".into(),
                arguments: args.into(),
            }],
            ..Default::default()
        };
        assert_eq!(chat(body), Some(oracle(&[call, msg("tool", "18 degrees")])));

        // A special token's spelling is text.
        let body = json!({"messages": [{"role": "user", "content": "<|endoftext|>"}]});
        assert_eq!(
            chat(body),
            Some(3 + o200k("user") + o200k("<|endoftext|>") + 3)
        );
        assert!(o200k("<|endoftext|>") > 1);

        // Without a tokenizer, or not JSON: not counted.
        let body = json!({"messages": [{"role": "user", "content": "x"}]}).to_string();
        let read =
            |b: &[u8], t| super::super::request::read(b, Api::OpenAi, Operation::Chat, true, t);
        assert_eq!(read(body.as_bytes(), None).prompt_tokens, None);
        assert_eq!(read(b"x", Some(Tokenizer::O200kBase)).prompt_tokens, None);
        assert_eq!(
            read(body.as_bytes(), Some(Tokenizer::O200kBase)).prompt_tokens,
            Some(3 + o200k("user") + o200k("x") + 3)
        );

        // Shapes it does not know: the estimate.
        assert_eq!(chat(json!({"messages": "hi"})), None);
        assert_eq!(
            chat(json!({"messages": [{"role": "user", "content": 7}]})),
            None
        );
        assert_eq!(chat(json!({"model": "m"})), None);
    }

    #[test]
    fn completions_and_embeddings_count_strings_and_token_ids() {
        use serde_json::json;
        let c = |op, body| counted(Tokenizer::O200kBase, Api::OpenAi, op, &body);
        let p = "Once upon a time, in a land far away";
        assert_eq!(
            c(Operation::Completions, json!({"prompt": p})),
            Some(o200k(p))
        );
        assert_eq!(
            c(Operation::Completions, json!({"prompt": [p, "second"]})),
            Some(o200k(p) + o200k("second"))
        );
        assert_eq!(
            c(Operation::Completions, json!({"prompt": [1, 2, 3]})),
            Some(3)
        );
        assert_eq!(
            c(Operation::Embeddings, json!({"input": [[1, 2], [3, 4, 5]]})),
            Some(5)
        );
        assert_eq!(
            c(Operation::Embeddings, json!({"input": "hello world"})),
            Some(o200k("hello world"))
        );
        assert_eq!(c(Operation::Embeddings, json!({"input": {"a": 1}})), None);
        assert_eq!(c(Operation::Embeddings, json!({"input": [true]})), None);
        // The prompt of another operation is not counted.
        assert_eq!(c(Operation::Responses, json!({"input": "hello"})), None);
        assert_eq!(c(Operation::Other, json!({"prompt": "hello"})), None);
    }

    #[test]
    fn anthropic_counts_system_and_text_blocks() {
        use serde_json::json;
        let c = |body| {
            counted(
                Tokenizer::Cl100kBase,
                Api::Anthropic,
                Operation::Messages,
                &body,
            )
        };
        let cl = |s: &str| {
            tiktoken_rs::cl100k_base_singleton()
                .encode_ordinary(s)
                .len() as u64
        };
        let body = json!({"model": "claude", "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi!"},
                {"type": "tool_use", "id": "t", "name": "x", "input": {"q": "long"}}]},
        ]});
        assert_eq!(
            c(body),
            Some(cl("Be brief.") + cl("Hello there") + cl("Hi!"))
        );
        let body = json!({"system": "Sys", "messages": [{"role": "user", "content": "x"}]});
        assert_eq!(c(body), Some(cl("Sys") + cl("x")));
        // Anthropic's path with OpenAI's API is not a shape it knows.
        let body = json!({"messages": [{"role": "user", "content": "x"}]});
        assert_eq!(
            counted(
                Tokenizer::Cl100kBase,
                Api::OpenAi,
                Operation::Messages,
                &body
            ),
            None
        );
    }

    #[test]
    fn more_text_than_the_cap_is_estimated() {
        let c = |n: usize| {
            let body = serde_json::json!({"prompt": "a".repeat(n)});
            counted(
                Tokenizer::O200kBase,
                Api::OpenAi,
                Operation::Completions,
                &body,
            )
        };
        assert!(c(MAX_TEXT).is_some());
        assert_eq!(c(MAX_TEXT + 1), None);
        let half = "b".repeat(MAX_TEXT / 2 + 1);
        let body = serde_json::json!({"prompt": [half, half]});
        assert_eq!(
            counted(
                Tokenizer::O200kBase,
                Api::OpenAi,
                Operation::Completions,
                &body
            ),
            None
        );
    }
}
