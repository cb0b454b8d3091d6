//! What `[routes.ai] tokenizer` adds to a request (not a test; prints same-run numbers):
//! `ai::request::read` of a chat completion body — the one pass the gateway makes over a
//! model call's body — without a tokenizer (the length estimate) and with each encoding,
//! for prompts of about 100 B, 4 KiB, 64 KiB and 1 MiB of English text; and how long
//! each encoder takes to build (once per process).
//!
//! `cargo run --example tokenizer-bench [SECONDS_PER_CASE]` (dev profile: the tokenizer is
//! a dependency, built at opt-level 2; `--release` gives the shipped numbers).

use portcullis::ai::request::read;
use portcullis::ai::{prompt, Api, Operation};
use portcullis::config::Tokenizer;
use std::time::{Duration, Instant};

fn body(text_len: usize) -> Vec<u8> {
    let sentence = "The quick brown fox jumps over the lazy dog, then asks why. ";
    let text: String = sentence.chars().cycle().take(text_len).collect();
    serde_json::json!({"model": "gpt-4o", "max_tokens": 256, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text},
    ]})
    .to_string()
    .into_bytes()
}

/// Mean time of one read, over `budget` of repetitions.
fn time(budget: Duration, f: impl Fn() -> Option<u64>) -> (Duration, Option<u64>) {
    let start = Instant::now();
    let (mut n, mut out) = (0u32, None);
    while start.elapsed() < budget || n == 0 {
        out = std::hint::black_box(f());
        n += 1;
    }
    (start.elapsed() / n, out)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1.0);
    let budget = Duration::from_secs_f64(secs);
    for (name, t) in [
        ("o200k_base", Tokenizer::O200kBase),
        ("cl100k_base", Tokenizer::Cl100kBase),
    ] {
        let start = Instant::now();
        prompt::warm(t);
        println!("{name}: encoder built in {:.0?}", start.elapsed());
    }
    println!(
        "{:>8} {:>9} {:>12} {:>22} {:>22}",
        "text", "body", "estimate", "o200k_base", "cl100k_base"
    );
    for len in [100, 4 << 10, 64 << 10, (1 << 20) - 200] {
        let b = body(len);
        let run = |t| {
            time(budget, || {
                read(&b, Api::OpenAi, Operation::Chat, false, t).prompt_tokens
            })
        };
        let (plain, _) = run(None);
        let (o, on) = run(Some(Tokenizer::O200kBase));
        let (c, cn) = run(Some(Tokenizer::Cl100kBase));
        let cell = |d: Duration, n: Option<u64>| {
            format!(
                "{:.1?} ({} tok)",
                d,
                n.map_or("-".into(), |n| n.to_string())
            )
        };
        println!(
            "{:>8} {:>9} {:>12} {:>22} {:>22}",
            len,
            b.len(),
            format!("{plain:.1?}"),
            cell(o, on),
            cell(c, cn)
        );
    }
}
