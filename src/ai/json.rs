//! An incremental JSON scanner that pulls the few values usage accounting needs (the
//! model, the token counts, whether `choices` is empty, whether it is an error) out of one
//! JSON document fed in pieces of any size. It keeps a fixed-size state and nothing of
//! the document, so a body or event of any length is scanned in constant memory, and a
//! piece boundary may fall anywhere: inside a key, a number, an escape or a UTF-8
//! character.
//!
//! The paths it reads (`.` is the document's top-level object):
//!
//! | path | what |
//! |---|---|
//! | `.model`, `.message.model`, `.response.model` | the response's model |
//! | `.usage.K`, `.message.usage.K`, `.response.usage.K` | token counts (see [`Tokens`]) |
//! | `.usage` = `null` / object | usage announced absent (OpenAI chunks with `include_usage`) |
//! | `.choices` = `[]` | the usage-only chunk of an OpenAI stream |
//! | `.error` = object, `.type` = `"error"` | the document is an error |
//!
//! Speed: every other container (the contents of `choices`, `content` arrays, `*_details`
//! objects…) is skipped whole — its brackets counted, not matched, its strings jumped over
//! with `memchr` — and runs of whitespace, digits and literal letters are taken at once.

/// The longest model name kept; a longer one is not reported.
pub const MAX_MODEL: usize = 256;

/// The deepest nesting followed; a deeper document is abandoned (nothing more is read).
const MAX_DEPTH: u8 = 64;

/// A key the scanner knows; every other key is `Other`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Key {
    Model,
    Usage,
    Message,
    Response,
    Choices,
    Error,
    Type,
    Token(Tokens),
    Other,
}

/// The token counts a `usage` object may carry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tokens {
    /// `prompt_tokens` (OpenAI chat, completions, embeddings) or `input_tokens` (OpenAI
    /// responses, Anthropic).
    Input,
    /// `completion_tokens` or `output_tokens`.
    Output,
    /// Anthropic's `cache_creation_input_tokens` (not part of its `input_tokens`).
    CacheCreation,
    /// Anthropic's `cache_read_input_tokens` (not part of its `input_tokens`).
    CacheRead,
}

impl Key {
    fn of(name: &[u8]) -> Key {
        match name {
            b"model" => Key::Model,
            b"usage" => Key::Usage,
            b"message" => Key::Message,
            b"response" => Key::Response,
            b"choices" => Key::Choices,
            b"error" => Key::Error,
            b"type" => Key::Type,
            b"prompt_tokens" | b"input_tokens" => Key::Token(Tokens::Input),
            b"completion_tokens" | b"output_tokens" => Key::Token(Tokens::Output),
            b"cache_creation_input_tokens" => Key::Token(Tokens::CacheCreation),
            b"cache_read_input_tokens" => Key::Token(Tokens::CacheRead),
            _ => Key::Other,
        }
    }
}

/// The longest key recognized; a longer one is `Other`.
const MAX_KEY: usize = 28;

/// What one document said. Token counts are `None` when absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_creation: Option<u64>,
    pub cache_read: Option<u64>,
    /// `.usage` was `null`.
    pub usage_null: bool,
    /// `.usage` was an object.
    pub usage_object: bool,
    /// `.choices` was `[]`.
    pub choices_empty: bool,
    /// `.error` was an object, or `.type` was `"error"`.
    pub error: bool,
}

impl Found {
    fn set(&mut self, t: Tokens, v: u64) {
        let slot = match t {
            Tokens::Input => &mut self.input,
            Tokens::Output => &mut self.output,
            Tokens::CacheCreation => &mut self.cache_creation,
            Tokens::CacheRead => &mut self.cache_read,
        };
        *slot = Some(v);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Expecting a value (the document's, a member's or an element's).
    Value,
    /// Just after `[`: a value or `]`.
    ArrayStart,
    /// Just after `{`: a key or `}`.
    ObjectStart,
    /// After `,` in an object: a key.
    Key,
    /// Inside a key's quotes.
    InKey,
    /// After a key: `:`.
    Colon,
    /// Inside a string value's quotes.
    InString,
    /// Inside a number.
    Number,
    /// Inside `true`, `false` or `null`.
    Literal,
    /// After a value: `,`, `}` or `]`.
    AfterValue,
    /// The document is complete (only whitespace may follow).
    Done,
    /// Inside a container nothing is captured from (see [`Scanner::live`]): its
    /// brackets are counted (not matched) and its strings skipped, nothing else is read.
    Dead,
    /// Not JSON, or deeper than followed: nothing more is read.
    Invalid,
}

/// What the value being read is captured as.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Capture {
    None,
    Model,
    Tokens(Tokens),
    /// `.usage`: `null` or an object.
    Usage,
    /// `.choices`: is it `[]`?
    Choices,
    /// `.type`: is it `"error"`?
    Type,
}

/// The scanner of one document; [`Scanner::reset`] starts the next.
pub struct Scanner {
    state: State,
    /// Open containers.
    depth: u8,
    /// Bit `i` set: the container at depth `i + 1` is an object.
    objects: u64,
    /// The key at depths 1 to 3 (valid where the container there is an object).
    path: [Key; 3],
    /// The key being read.
    key: [u8; MAX_KEY],
    key_len: usize,
    /// Inside a string, the last byte was a backslash.
    escaped: bool,
    /// In a dead container: how many are open (it included), and whether in a string.
    dead: u8,
    dead_string: bool,
    capture: Capture,
    number: Option<u64>,
    /// The first byte of a literal (`t`, `f`, `n`).
    literal: u8,
    /// `.type` so far (compared with `error`).
    type_matched: usize,
    model: [u8; MAX_MODEL],
    model_len: usize,
    /// The model string is too long, or escaped in a way not decoded here.
    model_bad: bool,
    /// A model string was read whole.
    model_seen: bool,
    pub found: Found,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Value,
            depth: 0,
            objects: 0,
            path: [Key::Other; 3],
            key: [0; MAX_KEY],
            key_len: 0,
            escaped: false,
            dead: 0,
            dead_string: false,
            capture: Capture::None,
            number: None,
            literal: 0,
            type_matched: 0,
            model: [0; MAX_MODEL],
            model_len: 0,
            model_bad: false,
            model_seen: false,
            found: Found::default(),
        }
    }
}

/// The bytes a dead container's skip stops at: quotes and brackets.
static DEAD_STOPS: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 5 {
        t[b"\"{}[]"[i] as usize] = true;
        i += 1;
    }
    t
};

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Scanner {
    /// Starts a new document.
    pub fn reset(&mut self) {
        self.state = State::Value;
        self.depth = 0;
        self.objects = 0;
        self.key_len = 0;
        self.escaped = false;
        self.dead = 0;
        self.dead_string = false;
        self.capture = Capture::None;
        self.number = None;
        self.model_len = 0;
        self.model_bad = false;
        self.model_seen = false;
        self.found = Found::default();
    }

    /// Whether the document so far is not JSON (or too deep to follow).
    pub fn invalid(&self) -> bool {
        self.state == State::Invalid
    }

    /// The model the document named, as its raw string contents (escapes undecoded),
    /// if it was read whole.
    pub fn model_raw(&self) -> Option<&[u8]> {
        (self.model_seen && !self.model_bad).then(|| &self.model[..self.model_len])
    }

    /// Ends the document: a number at the very end of the input is complete now.
    pub fn finish(&mut self) {
        if self.state == State::Number {
            self.end_number();
            self.state = if self.depth == 0 {
                State::Done
            } else {
                State::Invalid
            };
        }
    }

    /// The key of the member at `depth` (1-based), if the container there is an object.
    fn key_at(&self, depth: u8) -> Key {
        if depth == 0 || depth > 3 || self.objects & (1 << (depth - 1)) == 0 {
            return Key::Other;
        }
        self.path[depth as usize - 1]
    }

    /// What a value starting now is captured as.
    fn capture_here(&self) -> Capture {
        let k = |d| self.key_at(d);
        match self.depth {
            1 => match k(1) {
                Key::Model => Capture::Model,
                Key::Usage => Capture::Usage,
                Key::Choices => Capture::Choices,
                Key::Type => Capture::Type,
                _ => Capture::None,
            },
            2 => match (k(1), k(2)) {
                (Key::Message | Key::Response, Key::Model) => Capture::Model,
                (Key::Usage, Key::Token(t)) => Capture::Tokens(t),
                _ => Capture::None,
            },
            3 => match (k(1), k(2), k(3)) {
                (Key::Message | Key::Response, Key::Usage, Key::Token(t)) => Capture::Tokens(t),
                _ => Capture::None,
            },
            _ => Capture::None,
        }
    }

    /// Whether a container opening now (an object when `object`) can hold anything
    /// captured: the document itself, `.usage`, `.message`, `.response` and their
    /// `.usage`. `.choices` is followed only to tell `[]` (see `State::ArrayStart`).
    /// Every other container is skipped whole.
    fn live(&self, object: bool) -> bool {
        match self.depth {
            0 => true,
            1 => object && matches!(self.key_at(1), Key::Usage | Key::Message | Key::Response),
            2 => {
                object
                    && matches!(self.key_at(1), Key::Message | Key::Response)
                    && self.key_at(2) == Key::Usage
            }
            _ => false,
        }
    }

    /// A dead container opened (its bracket read).
    fn enter_dead(&mut self) {
        if self.depth >= MAX_DEPTH {
            self.state = State::Invalid;
            return;
        }
        self.dead = 1;
        self.dead_string = false;
        self.escaped = false;
        self.state = State::Dead;
    }

    fn open(&mut self, object: bool) {
        if self.depth >= MAX_DEPTH {
            self.state = State::Invalid;
            return;
        }
        if object {
            self.objects |= 1 << self.depth;
        } else {
            self.objects &= !(1 << self.depth);
        }
        self.depth += 1;
        self.state = if object {
            State::ObjectStart
        } else {
            State::ArrayStart
        };
    }

    /// A container closes with `c`.
    fn close(&mut self, c: u8) {
        let object = self.depth > 0 && self.objects & (1 << (self.depth - 1)) != 0;
        if self.depth == 0 || object != (c == b'}') {
            self.state = State::Invalid;
            return;
        }
        self.depth -= 1;
        self.value_done();
    }

    fn value_done(&mut self) {
        self.capture = Capture::None;
        self.state = if self.depth == 0 {
            State::Done
        } else {
            State::AfterValue
        };
    }

    fn end_number(&mut self) {
        if let (Capture::Tokens(t), Some(n)) = (self.capture, self.number) {
            self.found.set(t, n);
        }
        self.number = None;
    }

    /// Starts a value at byte `b` (not whitespace).
    fn start_value(&mut self, b: u8) {
        self.capture = match self.capture_here() {
            // The first model named is the one reported.
            Capture::Model if self.model_seen => Capture::None,
            c => c,
        };
        match b {
            b'{' => {
                match self.capture {
                    Capture::Usage => self.found.usage_object = true,
                    _ if self.depth == 1 && self.key_at(1) == Key::Error => self.found.error = true,
                    _ => {}
                }
                self.capture = Capture::None;
                if self.live(true) {
                    self.open(true);
                } else {
                    self.enter_dead();
                }
            }
            b'[' => {
                let choices = self.capture == Capture::Choices;
                if !choices && !self.live(false) {
                    self.capture = Capture::None;
                    self.enter_dead();
                    return;
                }
                self.open(false);
                // Kept through ArrayStart to tell `[]` apart.
                self.capture = if choices {
                    Capture::Choices
                } else {
                    Capture::None
                };
            }
            b'"' => {
                self.escaped = false;
                self.type_matched = 0;
                if self.capture == Capture::Model {
                    self.model_len = 0;
                    self.model_bad = false;
                }
                self.state = State::InString;
            }
            b'-' | b'0'..=b'9' => {
                self.number = if b == b'-' {
                    None
                } else {
                    Some(u64::from(b - b'0'))
                };
                self.state = State::Number;
            }
            b't' | b'f' | b'n' => {
                if b == b'n' && self.capture == Capture::Usage {
                    self.found.usage_null = true;
                }
                self.literal = b;
                self.state = State::Literal;
            }
            _ => self.state = State::Invalid,
        }
    }

    /// Feeds the next piece of the document.
    pub fn feed(&mut self, mut s: &[u8]) {
        while let Some((&b, rest)) = s.split_first() {
            match self.state {
                State::Invalid => return,
                State::Dead => {
                    s = self.skip_dead(s);
                    continue;
                }
                State::InString => {
                    // The bulk of a document is strings: skip to the next quote or
                    // backslash at once.
                    if !self.escaped {
                        let n = memchr::memchr2(b'"', b'\\', s).unwrap_or(s.len());
                        self.string_bytes(&s[..n]);
                        s = &s[n..];
                        let Some((&q, rest)) = s.split_first() else {
                            return;
                        };
                        if q == b'"' {
                            self.end_string();
                        } else {
                            self.escaped = true;
                            self.string_bytes(b"\\");
                        }
                        s = rest;
                    } else {
                        self.escaped = false;
                        self.string_bytes(&[b]);
                        s = rest;
                    }
                    continue;
                }
                State::InKey => {
                    if self.escaped {
                        self.escaped = false;
                        // An escaped key is never one of ours.
                        self.key_len = MAX_KEY + 1;
                        s = rest;
                        continue;
                    }
                    // As with string values, the key's plain bytes are taken at once (its
                    // first MAX_KEY kept; a longer key is never one of ours).
                    let n = memchr::memchr2(b'"', b'\\', s).unwrap_or(s.len());
                    let room = MAX_KEY.saturating_sub(self.key_len).min(n);
                    if room > 0 {
                        self.key[self.key_len..self.key_len + room].copy_from_slice(&s[..room]);
                    }
                    self.key_len = self.key_len.saturating_add(n);
                    s = &s[n..];
                    let Some((&q, rest)) = s.split_first() else {
                        return;
                    };
                    if q == b'"' {
                        let key = if self.key_len <= MAX_KEY {
                            Key::of(&self.key[..self.key_len])
                        } else {
                            Key::Other
                        };
                        if (1..=3).contains(&self.depth) {
                            self.path[self.depth as usize - 1] = key;
                        }
                        self.state = State::Colon;
                    } else {
                        self.escaped = true;
                        self.key_len = MAX_KEY + 1;
                    }
                    s = rest;
                    continue;
                }
                State::Number => {
                    let n = s
                        .iter()
                        .position(|&c| !matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
                        .unwrap_or(s.len());
                    if let Capture::Tokens(_) = self.capture {
                        for &c in &s[..n] {
                            self.number = match c {
                                b'0'..=b'9' => self
                                    .number
                                    .and_then(|n| n.checked_mul(10))
                                    .and_then(|n| n.checked_add(u64::from(c - b'0'))),
                                _ => None,
                            };
                        }
                    }
                    s = &s[n..];
                    if !s.is_empty() {
                        self.end_number();
                        self.value_done();
                    }
                    continue; // the byte after the number is read in the state after it
                }
                State::Literal => {
                    // `true`, `false`, `null`: the letters are not checked one by one;
                    // whatever follows must still be a separator.
                    let n = s
                        .iter()
                        .position(|c| !c.is_ascii_lowercase())
                        .unwrap_or(s.len());
                    s = &s[n..];
                    if !s.is_empty() {
                        self.value_done();
                    }
                    continue;
                }
                _ if is_ws(b) => {
                    let n = s.iter().position(|&c| !is_ws(c)).unwrap_or(s.len());
                    s = &s[n..];
                    continue;
                }
                State::Value => self.start_value(b),
                State::ArrayStart => {
                    if b == b']' {
                        if self.capture == Capture::Choices && self.depth == 2 {
                            self.found.choices_empty = true;
                        }
                        self.close(b']');
                    } else if self.capture == Capture::Choices {
                        // `.choices` is not empty; nothing in it is read: skip the rest
                        // of it as a dead container (`b` is read again there).
                        self.depth -= 1;
                        self.capture = Capture::None;
                        self.enter_dead();
                        continue;
                    } else {
                        self.start_value(b);
                    }
                }
                State::ObjectStart | State::Key => {
                    if b == b'"' {
                        self.key_len = 0;
                        self.escaped = false;
                        self.state = State::InKey;
                    } else if b == b'}' && self.state == State::ObjectStart {
                        self.close(b'}');
                    } else {
                        self.state = State::Invalid;
                    }
                }
                State::Colon => {
                    self.state = if b == b':' {
                        State::Value
                    } else {
                        State::Invalid
                    };
                }
                State::AfterValue => match b {
                    b',' => {
                        let object = self.objects & (1 << (self.depth - 1)) != 0;
                        self.state = if object { State::Key } else { State::Value };
                    }
                    b'}' | b']' => self.close(b),
                    _ => self.state = State::Invalid,
                },
                State::Done => self.state = State::Invalid,
            }
            s = rest;
        }
    }

    /// Skips through a dead container: returns what is left of `s` after the container's
    /// end (then the state is the one after a value) or empty.
    fn skip_dead<'s>(&mut self, mut s: &'s [u8]) -> &'s [u8] {
        loop {
            if self.dead_string {
                if self.escaped {
                    let Some((_, rest)) = s.split_first() else {
                        return s;
                    };
                    self.escaped = false;
                    s = rest;
                }
                let Some(n) = memchr::memchr2(b'"', b'\\', s) else {
                    return &[];
                };
                if s[n] == b'"' {
                    self.dead_string = false;
                } else {
                    self.escaped = true;
                }
                s = &s[n + 1..];
                continue;
            }
            let Some(n) = s.iter().position(|&c| DEAD_STOPS[usize::from(c)]) else {
                return &[];
            };
            let c = s[n];
            s = &s[n + 1..];
            match c {
                b'"' => self.dead_string = true,
                b'{' | b'[' => {
                    if self.depth + self.dead >= MAX_DEPTH {
                        self.state = State::Invalid;
                        return &[];
                    }
                    self.dead += 1;
                }
                _ => {
                    self.dead -= 1;
                    if self.dead == 0 {
                        self.value_done();
                        return s;
                    }
                }
            }
        }
    }

    /// Bytes of a string value, as they are between its quotes.
    fn string_bytes(&mut self, bytes: &[u8]) {
        match self.capture {
            Capture::Model => {
                let end = self.model_len + bytes.len();
                if end > MAX_MODEL {
                    self.model_bad = true;
                } else {
                    self.model[self.model_len..end].copy_from_slice(bytes);
                    self.model_len = end;
                }
            }
            Capture::Type => {
                const ERROR: &[u8] = b"error";
                let at = self.type_matched;
                if at <= ERROR.len() && ERROR[at.min(ERROR.len())..].starts_with(bytes) {
                    self.type_matched += bytes.len();
                } else {
                    self.type_matched = usize::MAX / 2;
                }
            }
            _ => {}
        }
    }

    fn end_string(&mut self) {
        match self.capture {
            Capture::Model if !self.model_seen => self.model_seen = true,
            Capture::Type if self.type_matched == 5 => self.found.error = true,
            _ => {}
        }
        self.value_done();
    }
}

/// Decodes a raw model string (as between its quotes) to text; `None` when it is not
/// valid JSON string content.
pub fn decode_model(raw: &[u8]) -> Option<String> {
    if !raw.contains(&b'\\') {
        return std::str::from_utf8(raw).ok().map(str::to_string);
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_pieces(doc: &[u8], cut: usize) -> (Found, Option<String>, bool) {
        let mut s = Scanner::default();
        let cut = cut.min(doc.len());
        s.feed(&doc[..cut]);
        s.feed(&doc[cut..]);
        s.finish();
        let model = s.model_raw().and_then(decode_model);
        (s.found.clone(), model, s.invalid())
    }

    /// Every single cut gives the same result as the whole.
    fn scan(doc: &str) -> (Found, Option<String>, bool) {
        let doc = doc.as_bytes();
        let whole = scan_pieces(doc, doc.len());
        for cut in 0..doc.len() {
            assert_eq!(scan_pieces(doc, cut), whole, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn openai_chat_completion() {
        let (f, model, invalid) = scan(
            r#"{"id":"x","model":"gpt-4o-2024","choices":[{"message":{"content":"hi \"q\" {"}}],
               "usage":{"prompt_tokens":12,"completion_tokens":345,"total_tokens":357,
               "prompt_tokens_details":{"cached_tokens":3}}}"#,
        );
        assert!(!invalid);
        assert_eq!(model.as_deref(), Some("gpt-4o-2024"));
        assert_eq!((f.input, f.output), (Some(12), Some(345)));
        assert!(f.usage_object && !f.choices_empty && !f.error);
    }

    #[test]
    fn usage_only_chunk_and_null_usage() {
        let (f, _, _) =
            scan(r#"{"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#);
        assert!(f.choices_empty && f.usage_object);
        let (f, _, _) = scan(r#"{"model":"m","choices":[{"index":0,"delta":{}}],"usage":null}"#);
        assert!(f.usage_null && !f.choices_empty && !f.usage_object);
        // A nested empty array named choices is not the top-level one.
        let (f, _, _) = scan(r#"{"x":{"choices":[]},"choices":[1]}"#);
        assert!(!f.choices_empty);
    }

    #[test]
    fn anthropic_events() {
        let (f, model, _) = scan(
            r#"{"type":"message_start","message":{"id":"m","model":"claude-x","usage":{"input_tokens":25,"output_tokens":1,"cache_read_input_tokens":7}}}"#,
        );
        assert_eq!(model.as_deref(), Some("claude-x"));
        assert_eq!(
            (f.input, f.output, f.cache_read),
            (Some(25), Some(1), Some(7))
        );
        let (f, model, _) = scan(
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
        );
        assert_eq!(model, None);
        assert_eq!((f.input, f.output), (None, Some(15)));
        let (f, _, _) = scan(r#"{"type":"error","error":{"type":"overloaded_error"}}"#);
        assert!(f.error);
        let (f, _, _) = scan(r#"{"type":"errors"}"#);
        assert!(!f.error);
    }

    #[test]
    fn responses_api_completed() {
        let (f, model, _) = scan(
            r#"{"type":"response.completed","response":{"id":"r","model":"gpt-5","output":[{"content":[{"text":"a\\b"}]}],"usage":{"input_tokens":9,"output_tokens":4,"input_tokens_details":{"cached_tokens":0}}}}"#,
        );
        assert_eq!(model.as_deref(), Some("gpt-5"));
        assert_eq!((f.input, f.output), (Some(9), Some(4)));
    }

    #[test]
    fn escaped_and_unicode_model_and_odd_numbers() {
        let (_, model, _) = scan(r#"{"model":"mod\u00e9l-\"x\"-ü"}"#);
        assert_eq!(model.as_deref(), Some("modél-\"x\"-ü"));
        let (f, _, _) =
            scan(r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":-2,"total_tokens":3e2}}"#);
        assert_eq!((f.input, f.output), (None, None));
        let (f, _, _) = scan(r#"{"usage":{"prompt_tokens":99999999999999999999999}}"#);
        assert_eq!(f.input, None, "overflow is no count");
        let (f, _, _) = scan(r#"{"usage":{"prompt_tokens":7}}"#);
        assert_eq!(f.input, Some(7));
    }

    /// `scan` of a document serde_json accepts.
    fn scan_valid(doc: &str) -> (Found, Option<String>, bool) {
        serde_json::from_str::<serde_json::Value>(doc).expect("valid JSON");
        scan(doc)
    }

    #[test]
    fn skipped_containers_hide_nothing_and_show_nothing() {
        // Brackets, quotes and escapes inside skipped containers' strings.
        let (f, model, _) = scan_valid(
            r#"{"choices":[{"delta":{"content":"]}\"[{\\"},"x":[[{}],"}"]}],"model":"m","usage":{"prompt_tokens":3,"d":{"a":[1,{"b":"]"}]},"completion_tokens":4}}"#,
        );
        assert_eq!(
            (f.input, f.output, model.as_deref()),
            (Some(3), Some(4), Some("m"))
        );
        assert!(!f.choices_empty);
        // Look-alike keys inside other containers are not read.
        let (f, model, _) = scan_valid(
            r#"{"choices":[{"usage":{"prompt_tokens":99},"model":"no"}],"x":{"usage":{"prompt_tokens":5},"model":"no"},"message":{"content":[{"usage":{"output_tokens":7}}],"usage":{"output_tokens":2}},"usage":{"prompt_tokens":1}}"#,
        );
        assert_eq!((f.input, f.output, model), (Some(1), Some(2), None));
        let (f, _, _) = scan_valid(r#"{"error":{"message":"x","type":"e","param":[null]},"y":1}"#);
        assert!(f.error);
    }

    #[test]
    fn not_json_and_too_deep() {
        assert!(scan("[DONE]").2);
        assert!(scan(r#"{"a":1}}"#).2);
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(scan(&deep).2);
        let ok = "[".repeat(60) + &"]".repeat(60);
        assert!(!scan(&ok).2);
        // Inside a skipped container, too.
        let deep = format!(r#"{{"choices":{}}}"#, "[".repeat(100) + &"]".repeat(100));
        assert!(scan(&deep).2);
    }
}
