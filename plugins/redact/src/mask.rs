//! The masking itself, plain Rust (unit-tested on the host).

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::start;
use regex_automata::{Anchored, meta};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

const EMAIL: &str = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}";
const API_KEYS: &[&str] = &[
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}",
    r"AKIA[0-9A-Z]{16}",
    r"gh[pousr]_[A-Za-z0-9]{36,}",
    r"github_pat_[A-Za-z0-9_]{22,}",
    r"xox[abpr]-[A-Za-z0-9\-]{10,}",
    r"AIza[0-9A-Za-z_\-]{35}",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    email: Option<bool>,
    api_keys: Option<bool>,
    #[serde(default)]
    patterns: Vec<String>,
    mask: Option<String>,
    max_tail: Option<usize>,
}

/// The configured patterns.
pub struct Redactor {
    find: meta::Regex,
    dfa: DFA,
    mask: String,
    max_tail: usize,
}

impl Redactor {
    pub fn from_json(json: &str) -> Result<Self, String> {
        let raw: Raw = support::parse_config(json)?;
        let mut patterns: Vec<String> = Vec::new();
        if raw.email.unwrap_or(true) {
            patterns.push(EMAIL.into());
        }
        if raw.api_keys.unwrap_or(true) {
            patterns.extend(API_KEYS.iter().map(|p| p.to_string()));
        }
        for (i, p) in raw.patterns.iter().enumerate() {
            regex_automata::util::syntax::parse(p)
                .map_err(|e| format!("invalid config: patterns[{i}]: {e}"))?;
            patterns.push(p.clone());
        }
        if patterns.is_empty() {
            return Err(
                "invalid config: nothing to redact (email, api_keys and patterns are all off)"
                    .into(),
            );
        }
        let max_tail = raw.max_tail.unwrap_or(256);
        if !(1..=65536).contains(&max_tail) {
            return Err("invalid config: max_tail must be between 1 and 65536".into());
        }
        let find = meta::Regex::new_many(&patterns).map_err(|e| format!("invalid config: {e}"))?;
        let dfa = DFA::new_many(&patterns).map_err(|e| format!("invalid config: {e}"))?;
        Ok(Redactor {
            find,
            dfa,
            mask: raw.mask.unwrap_or_else(|| "[REDACTED]".into()),
            max_tail,
        })
    }

    /// Where the tail to hold back starts in `text`: the first position from which the
    /// patterns could still match if more text came (bounded by `max_tail`).
    fn tail_start(&self, cache: &mut Cache, text: &str) -> usize {
        let bytes = text.as_bytes();
        let floor = floor_char_boundary(text, text.len().saturating_sub(self.max_tail));
        for (i, _) in text.char_indices().filter(|(i, _)| *i >= floor) {
            let cfg = start::Config::new()
                .anchored(Anchored::Yes)
                .look_behind(i.checked_sub(1).map(|j| bytes[j]));
            let Ok(mut s) = self.dfa.start_state(cache, &cfg) else {
                return i;
            };
            let mut live = true;
            for &b in &bytes[i..] {
                match self.dfa.next_state(cache, s, b) {
                    Ok(n) if n.is_dead() => {
                        live = false;
                        break;
                    }
                    Ok(n) => s = n,
                    // The lazy DFA gave up: hold from here, to be safe.
                    Err(_) => break,
                }
            }
            if live {
                return i;
            }
        }
        text.len()
    }

    /// `text` (the held tail plus new content) masked up to where a tail must be held
    /// back (none when `finish`): (what to send, the new tail).
    pub fn process(&self, cache: &mut Cache, text: &str, finish: bool) -> (String, String) {
        let mut cut = if finish {
            text.len()
        } else {
            self.tail_start(cache, text)
        };
        let matches: Vec<(usize, usize)> = self
            .find
            .find_iter(text)
            .map(|m| (m.start(), m.end()))
            .collect();
        // A whole match that reaches into the tail is held with it (unless it is longer
        // than the tail bound: it is then masked now).
        for &(s, e) in &matches {
            if s < cut && e > cut && text.len() - s <= self.max_tail {
                cut = s;
            }
        }
        let mut out = String::with_capacity(cut);
        let mut last = 0;
        for &(s, e) in &matches {
            if s >= cut {
                break;
            }
            out.push_str(&text[last..s]);
            out.push_str(&self.mask);
            last = e.min(text.len());
        }
        if last < cut {
            out.push_str(&text[last..cut]);
        }
        // A match longer than the tail bound may end past the cut: the tail is what follows it.
        (out, text[last.max(cut)..].to_string())
    }

    pub fn cache(&self) -> Cache {
        self.dfa.create_cache()
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One stream's state: the tail held per choice index.
pub struct Stream {
    tails: BTreeMap<u64, String>,
    cache: Cache,
}

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Replace(String),
}

impl Stream {
    pub fn new(r: &Redactor) -> Self {
        Stream {
            tails: BTreeMap::new(),
            cache: r.cache(),
        }
    }

    /// Bytes held back right now (all choices).
    pub fn held(&self) -> usize {
        self.tails.values().map(String::len).sum()
    }

    /// One event's data.
    pub fn event(&mut self, r: &Redactor, data: &str) -> Outcome {
        let Ok(mut v) = serde_json::from_str::<Value>(data) else {
            return Outcome::Pass;
        };
        let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
            return Outcome::Pass;
        };
        let mut changed = false;
        for (n, choice) in choices.iter_mut().enumerate() {
            let index = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(n as u64);
            let finish = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
                continue;
            };
            let content = delta.get("content").and_then(Value::as_str);
            let tail = self.tails.remove(&index).unwrap_or_default();
            if content.is_none() && tail.is_empty() {
                continue;
            }
            let mut text = tail;
            let had_tail = !text.is_empty();
            text.push_str(content.unwrap_or(""));
            let (out, tail) = r.process(&mut self.cache, &text, finish);
            if !tail.is_empty() {
                self.tails.insert(index, tail);
            }
            if (had_tail || content != Some(out.as_str())) && (content.is_some() || !out.is_empty())
            {
                delta.insert("content".into(), Value::String(out));
                changed = true;
            }
        }
        if changed {
            Outcome::Replace(v.to_string())
        } else {
            Outcome::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(content: &str) -> String {
        serde_json::json!({"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]}).to_string()
    }

    fn content(data: &str) -> String {
        let v: Value = serde_json::from_str(data).unwrap();
        v["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn run(r: &Redactor, parts: &[&str]) -> String {
        let mut s = Stream::new(r);
        let mut out = String::new();
        for p in parts {
            let d = chunk(p);
            match s.event(r, &d) {
                Outcome::Pass => out.push_str(p),
                Outcome::Replace(d) => out.push_str(&content(&d)),
            }
        }
        let fin = serde_json::json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
            .to_string();
        if let Outcome::Replace(d) = s.event(r, &fin) {
            out.push_str(&content(&d));
        }
        assert_eq!(s.held(), 0);
        out
    }

    #[test]
    fn email_split_across_events_is_masked() {
        let r = Redactor::from_json("{}").unwrap();
        assert_eq!(
            run(&r, &["Write to jo", "hn.doe@exam", "ple.com today."]),
            "Write to [REDACTED] today."
        );
        // Cut at every byte.
        let text = "mail a.b@c.io or sk-abcdefghijklmnopqrstuvwx now";
        for i in 1..text.len() {
            for j in i..text.len() {
                let out = run(&r, &[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!(out, "mail [REDACTED] or [REDACTED] now", "cuts {i} {j}");
            }
        }
    }

    #[test]
    fn unrelated_text_passes_and_the_tail_is_minimal() {
        let r = Redactor::from_json("{}").unwrap();
        let mut s = Stream::new(&r);
        assert_eq!(s.event(&r, &chunk("Hello, world. ")), Outcome::Pass);
        assert_eq!(s.held(), 0);
        // "wor" could start an address: held, nothing else.
        match s.event(&r, &chunk("Hi wor")) {
            Outcome::Replace(d) => assert_eq!(content(&d), "Hi "),
            o => panic!("{o:?}"),
        }
        assert_eq!(s.held(), 3);
        // Non-chat events pass.
        assert_eq!(s.event(&r, "[DONE]"), Outcome::Pass);
        assert_eq!(s.event(&r, "{\"type\":\"ping\"}"), Outcome::Pass);
    }

    #[test]
    fn tail_is_bounded() {
        let r = Redactor::from_json(r#"{"max_tail": 8}"#).unwrap();
        let mut s = Stream::new(&r);
        s.event(&r, &chunk("aaaaaaaaaaaaaaaaaaaa"));
        assert!(s.held() <= 8);
    }

    #[test]
    fn custom_patterns_and_bad_config() {
        let r = Redactor::from_json(
            r#"{"email": false, "api_keys": false, "patterns": ["secret-[0-9]+"], "mask": "***"}"#,
        )
        .unwrap();
        assert_eq!(run(&r, &["the secret-", "42 is out"]), "the *** is out");
        let err = |j: &str| Redactor::from_json(j).err().expect("an error");
        assert!(err(r#"{"patterns": ["("]}"#).contains("patterns[0]"));
        assert!(err(r#"{"emails": true}"#).contains("emails"));
        assert!(err(r#"{"email": false, "api_keys": false}"#).contains("nothing"));
    }
}
