//! Property tests of the observer over recorded-shape streams (OpenAI chat with tool calls
//! and usage, OpenAI responses, Anthropic Messages with tool use, each with LF, CRLF and
//! CR line ends): cut at every byte, one byte at a time, and at random, they give exactly
//! the same usage and pass exactly the same bytes.

use super::usage::{Format, Observer, Report, Usage};
use bytes::Bytes;
use proptest::prelude::*;

/// OpenAI chat completion, streamed with `stream_options.include_usage`, a tool call
/// whose arguments arrive in pieces, multi-byte text, and the usage chunk.
pub const OPENAI_CHAT: &str = concat!(
    "data: {\"id\":\"chatcmpl-B9\",\"object\":\"chat.completion.chunk\",\"created\":1727,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-B9\",\"object\":\"chat.completion.chunk\",\"created\":1727,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Voilà — 日本語 🚀 \\\"quoted\\\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-B9\",\"object\":\"chat.completion.chunk\",\"created\":1727,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_abc\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-B9\",\"object\":\"chat.completion.chunk\",\"created\":1727,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"location\\\":\\\"Z\u{fc}rich\\\", \\\"usage\\\":null}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    ": keep-alive comment\n\n",
    "data: {\"id\":\"chatcmpl-B9\",\"object\":\"chat.completion.chunk\",\"created\":1727,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-B9\",\"object\":\"chat.completion.chunk\",\"created\":1727,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_1\",\"choices\":[],\"usage\":{\"prompt_tokens\":1234,\"completion_tokens\":56789,\"total_tokens\":58023,\"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

/// Anthropic Messages, streamed: text and a tool use, a ping, usage in `message_start`
/// and `message_delta`.
pub const ANTHROPIC: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":100,\"output_tokens\":2}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay — ça marche, 東京 ☔\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"San Fra\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ncisco\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

/// OpenAI responses API, streamed, its data split over two `data:` lines in one event.
pub const OPENAI_RESPONSES: &str = concat!(
    "event: response.created\n",
    "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"model\":\"gpt-5-mini\",\"usage\":null}}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"delta\":\"Hi \u{e9}\"}\n\n",
    "event: response.completed\n",
    "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"model\":\"gpt-5-mini\",\n",
    "data: \"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi \u{e9}\"}]}],\"usage\":{\"input_tokens\":37,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":11,\"total_tokens\":48}}}\n\n",
);

/// The stream with its line ends replaced by `nl`.
fn with_line_ends(s: &str, nl: &str) -> String {
    s.replace('\n', nl)
}

/// Every recorded stream in every line-end variant, with the usage and model it holds.
fn cases() -> Vec<(String, Usage, &'static str)> {
    let base = [
        (
            OPENAI_CHAT,
            Usage {
                input: Some(1234),
                output: Some(56789),
            },
            "gpt-4o-2024-08-06",
        ),
        (
            ANTHROPIC,
            Usage {
                input: Some(572),
                output: Some(89),
            },
            "claude-sonnet-4-5",
        ),
        (
            OPENAI_RESPONSES,
            Usage {
                input: Some(37),
                output: Some(11),
            },
            "gpt-5-mini",
        ),
    ];
    let mut out = Vec::new();
    for (s, u, m) in base {
        for nl in ["\n", "\r\n", "\r"] {
            out.push((with_line_ends(s, nl), u, m));
        }
    }
    out
}

/// Feeds `s` cut at `cuts` (sorted offsets); returns the report and the bytes passed on.
fn run(s: &[u8], cuts: &[usize], strip: bool) -> (Report, Vec<u8>) {
    let mut o = if strip {
        Observer::stripping(Format::EventStream)
    } else {
        Observer::new(Format::EventStream)
    };
    let mut out = Vec::with_capacity(s.len());
    let mut last = 0;
    for &c in cuts.iter().chain([&s.len()]) {
        let c = c.clamp(last, s.len());
        let piece = Bytes::copy_from_slice(&s[last..c]);
        last = c;
        match o.observe(&piece) {
            None => out.extend_from_slice(&piece),
            Some(b) => out.extend_from_slice(&b),
        }
    }
    out.extend_from_slice(&o.flush());
    let mut r = o.report();
    r.first_event = None;
    (r, out)
}

#[test]
fn every_single_cut_and_every_byte_alone() {
    for (s, usage, model) in cases() {
        let s = s.as_bytes();
        let (whole, out) = run(s, &[], false);
        assert_eq!(out, s);
        assert_eq!(whole.usage, usage, "{}", String::from_utf8_lossy(&s[..40]));
        assert_eq!(whole.model.as_deref(), Some(model));
        let (stripped_whole, _) = run(s, &[], true);
        for cut in 0..=s.len() {
            assert_eq!(
                run(s, &[cut], false),
                (whole.clone(), s.to_vec()),
                "cut at {cut}"
            );
        }
        let bytes: Vec<usize> = (1..s.len()).collect();
        assert_eq!(
            run(s, &bytes, false),
            (whole.clone(), s.to_vec()),
            "byte by byte"
        );
        let (r, _) = run(s, &bytes, true);
        assert_eq!(r, stripped_whole, "byte by byte, stripping");
    }
}

#[test]
fn stripping_gives_the_stream_without_usage_whatever_the_cuts() {
    // What the upstream sends when the client did not ask for usage.
    let plain: String = OPENAI_CHAT
        .split_inclusive("\n\n")
        .filter(|e| !e.contains("\"choices\":[]"))
        .map(|e| e.replace(",\"usage\":null", ""))
        .collect();
    for nl in ["\n", "\r\n", "\r"] {
        let s = with_line_ends(OPENAI_CHAT, nl);
        let want = with_line_ends(&plain, nl);
        let s = s.as_bytes();
        for cut in 0..=s.len() {
            let (r, out) = run(s, &[cut], true);
            assert_eq!(String::from_utf8_lossy(&out), want, "cut at {cut}");
            assert_eq!(
                r.usage,
                Usage {
                    input: Some(1234),
                    output: Some(56789)
                }
            );
        }
    }
}

fn cuts_strategy() -> impl Strategy<Value = (usize, Vec<usize>)> {
    (0..9usize, proptest::collection::vec(0..3000usize, 0..40))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_cuts_same_usage_same_bytes((case, mut cuts) in cuts_strategy(), strip in any::<bool>()) {
        let (s, usage, model) = cases().swap_remove(case);
        let s = s.as_bytes();
        cuts.iter_mut().for_each(|c| *c %= s.len() + 1);
        cuts.sort_unstable();
        let whole = run(s, &[], strip);
        let cut = run(s, &cuts, strip);
        prop_assert_eq!(&cut, &whole);
        prop_assert_eq!(whole.0.usage, usage);
        prop_assert_eq!(whole.0.model.as_deref(), Some(model));
        if !strip {
            prop_assert_eq!(&cut.1[..], s);
        }
    }
}
