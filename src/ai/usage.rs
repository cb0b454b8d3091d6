//! The model and token usage of one model response, read as its body passes: a JSON body
//! through the incremental [`json::Scanner`], an event stream through the [`sse::Parser`]
//! with each event's data fed to the scanner. Nothing of the body is kept.
//!
//! Where the numbers are, per API (last value wins, so cumulative counts come out right):
//!
//! | API | non-streamed JSON | streamed events |
//! |---|---|---|
//! | OpenAI chat, completions, embeddings | `usage.prompt_tokens`, `usage.completion_tokens` | the final chunk's `usage` (with `stream_options.include_usage`) |
//! | OpenAI responses | `usage.input_tokens`, `usage.output_tokens` | `response.completed`: `response.usage` |
//! | Anthropic Messages | `usage.input_tokens`, `usage.output_tokens` | `message_start`: `message.usage.input_tokens`; `message_delta`: `usage.output_tokens` |
//!
//! Anthropic's `cache_creation_input_tokens` and `cache_read_input_tokens` are added to its
//! input tokens (they are not part of its `input_tokens`; OpenAI's cached tokens are).
//!
//! With [`Observer::stripping`] (the gateway added `stream_options.include_usage` for a
//! client that did not ask), the observer also edits the stream back to what the client
//! asked for: the usage-only chunk (`"choices":[]` with a `usage` object) is removed, and
//! the `"usage":null` the upstream then adds to every other chunk is taken out. To do so it
//! holds the current incomplete event (at most [`MAX_HELD_EVENT`]; a larger event is passed
//! on as it comes, unedited) and passes events on whole.

use super::json::{self, Found};
use super::sse::{self, Parser};
use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use std::ops::Range;
use std::sync::LazyLock;
use std::time::Instant;

/// The most of one event held while stripping; a larger event passes unedited.
pub const MAX_HELD_EVENT: usize = 1 << 20;

/// Token counts; `None` where the response did not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: Option<u64>,
    pub output: Option<u64>,
}

/// What the response body said, once it has ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The model the response named.
    pub model: Option<String>,
    pub usage: Usage,
    /// When the first event with data arrived (event streams only).
    pub first_event: Option<Instant>,
    /// The upstream sent an error (an `error` event or object).
    pub upstream_error: bool,
}

/// How the body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/event-stream`.
    EventStream,
    /// One JSON document.
    Json,
}

/// What becomes of one event while stripping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Action {
    #[default]
    Keep,
    Drop,
    /// Take out its top-level `"usage":null`.
    StripNull,
    /// Take out the `"usage":null` its data ends with (the last member of its root
    /// object, found by [`ends_with_usage_null`]).
    StripLastNull,
}

impl Action {
    /// The bytes of `event` this action takes out; empty (at the end) when none.
    fn cut(self, event: &[u8]) -> Range<usize> {
        let none = event.len()..event.len();
        match self {
            Action::Keep => none,
            Action::Drop => 0..event.len(),
            Action::StripNull => usage_null_cut(event).unwrap_or(none),
            Action::StripLastNull => trailing_usage_null_cut(event)
                .or_else(|| usage_null_cut(event))
                .unwrap_or(none),
        }
    }
}

/// The event-level side: takes the parser's reports, scans each event's data.
#[derive(Default)]
struct Events {
    json: json::Scanner,
    error_event: bool,
    /// The current event was not scanned (see `whole_data`): the scanner is untouched.
    skipped: bool,
    /// While stripping: the current event was not scanned, and its one `"usage":null` is
    /// the last member of its document (see `whole_data`).
    usage_null_last: bool,
    /// The counts, last value of each wins.
    found: Found,
    report: Report,
    stripping: bool,
    /// The current event's fate, the last event's, and the boundaries found in the piece
    /// being fed.
    action: Action,
    last_action: Action,
    actions: Vec<(usize, Action)>,
}

impl Events {
    /// Takes what one document said.
    fn take_document(&mut self) {
        self.json.finish();
        let f = &self.json.found;
        let merged = &mut self.found;
        for (from, to) in [
            (f.input, &mut merged.input),
            (f.output, &mut merged.output),
            (f.cache_creation, &mut merged.cache_creation),
            (f.cache_read, &mut merged.cache_read),
        ] {
            if from.is_some() {
                *to = from;
            }
        }
        if f.error {
            self.report.upstream_error = true;
        }
        if self.report.model.is_none() {
            self.report.model = self.json.model_raw().and_then(json::decode_model);
        }
    }

    fn reset_event(&mut self) {
        if !std::mem::take(&mut self.skipped) {
            self.json.reset();
        }
        self.usage_null_last = false;
        self.error_event = false;
    }
}

impl sse::Sink for Events {
    fn data(&mut self, piece: &[u8]) {
        self.json.feed(piece);
    }

    fn whole_data(&mut self, data: &[u8]) {
        let model = self.report.model.is_none();
        // Stripping, a document that ends with the `"usage":null` the gateway's request
        // brought (every chunk of such a stream does) is scanned only if it names
        // something else: else it is what the scanner would say without scanning, as the
        // rest of a stream is (below).
        let usage_null_last = self.stripping && ends_with_usage_null(data);
        let stripping = self.stripping && !usage_null_last;
        if wanted(data, stripping, model) {
            self.data(data);
        } else {
            self.usage_null_last = usage_null_last;
            // Seen, not scanned: the event says nothing (`dispatch` takes no document).
            // `data: [DONE]` is one of these; one split across pieces is fed to the
            // scanner, which finds nothing in it.
            self.skipped = true;
        }
    }

    fn error_event(&mut self) {
        self.error_event = true;
    }

    fn dispatch(&mut self) {
        if self.report.first_event.is_none() {
            self.report.first_event = Some(Instant::now());
        }
        // A skipped event's scanner is as `reset` left it: nothing to take.
        if !self.skipped {
            self.take_document();
        }
        if self.error_event {
            self.report.upstream_error = true;
        }
        let f = &self.json.found;
        self.action = if self.usage_null_last {
            Action::StripLastNull
        } else if f.choices_empty && f.usage_object {
            Action::Drop
        } else if f.usage_null {
            Action::StripNull
        } else {
            Action::Keep
        };
        // The event's state is reset by the `boundary` that always follows.
    }

    fn boundary(&mut self, end: usize, continued: bool) {
        self.reset_event();
        if self.stripping {
            // The LF of a CRLF goes where its CR went.
            let action = if continued {
                self.last_action
            } else {
                std::mem::take(&mut self.action)
            };
            self.last_action = action;
            self.actions.push((end, action));
        }
    }
}

/// Where the next key the scanner captures under — or an `error`: the value of `.type`,
/// or the name of an `event: error` — starts in `s`. Most events of a stream are content
/// deltas that name nothing read here, and an event without one of these need not be
/// scanned: the scanner matches keys by their raw bytes, so a document it would take
/// something from always holds one.
///
/// Token counts are found by the end their keys share (`prompt_tokens`, `output_tokens`,
/// `cache_read_input_tokens`, … all end in `_tokens"`), not by `"usage"`: every chunk of a
/// stream with `include_usage` carries a `"usage":null` that says nothing, and a needle
/// that hits every event costs a search started again per event. Stripping, which edits
/// each `"usage"`, looks for that.
#[derive(Clone, Copy)]
enum Needle {
    Usage { stripping: bool },
    Error,
    Model,
}

impl Needle {
    /// The needles looked for: `model` only while the model is not known.
    fn all(stripping: bool, model: bool) -> [Option<Needle>; 3] {
        [
            Some(Needle::Usage { stripping }),
            Some(Needle::Error),
            model.then_some(Needle::Model),
        ]
    }

    fn find(self, s: &[u8]) -> Option<usize> {
        static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
        static TOKENS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"_tokens\""));
        static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"error"));
        static MODEL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"model\""));
        match self {
            Needle::Usage { stripping: true } => USAGE.find(s),
            Needle::Usage { stripping: false } => TOKENS.find(s),
            Needle::Error => ERROR.find(s),
            Needle::Model => MODEL.find(s),
        }
    }
}

/// Whether a document ends with a `"usage":null` member of its root object: it is the last
/// member before the document's last `}`, which (in a valid document) closes the root.
fn ends_with_usage_null(data: &[u8]) -> bool {
    last_usage_null(data).is_some()
}

/// Where the `,"usage":null` a document ends with is (see [`ends_with_usage_null`]).
fn last_usage_null(data: &[u8]) -> Option<Range<usize>> {
    const MEMBER: &[u8] = b",\"usage\":null";
    let json_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let last = data.iter().rposition(|b| !json_space(b))?;
    if data[last] != b'}' {
        return None;
    }
    let end = data[..last].iter().rposition(|b| !json_space(b))? + 1;
    data[..end]
        .ends_with(MEMBER)
        .then(|| end - MEMBER.len()..end)
}

/// The cut of [`Action::StripLastNull`]: the event's data was its only `data:` line, right
/// before the blank line that ends the event (what `whole_data` is given), so the member
/// is found from the event's end, past its line ends, without a search through the event.
fn trailing_usage_null_cut(event: &[u8]) -> Option<Range<usize>> {
    let data_end = event.iter().rposition(|b| !matches!(b, b'\r' | b'\n'))? + 1;
    last_usage_null(&event[..data_end])
}

/// Whether an event's data holds something the scanner reads (see [`Needle`]).
fn wanted(data: &[u8], stripping: bool, model: bool) -> bool {
    Needle::all(stripping, model)
        .into_iter()
        .flatten()
        .any(|n| n.find(data).is_some())
}

/// Where in one piece the needles are next, each searched for once per piece (so the
/// skim is linear however many hits there are): `None` not searched yet, `usize::MAX`
/// none left.
#[derive(Default)]
struct Hits([Option<usize>; 3]);

impl Hits {
    /// The first hit at or after `at`.
    fn next(&mut self, chunk: &[u8], at: usize, stripping: bool, model: bool) -> usize {
        let mut first = usize::MAX;
        for (cached, needle) in self.0.iter_mut().zip(Needle::all(stripping, model)) {
            let Some(needle) = needle else { continue };
            let p = match *cached {
                Some(p) if p >= at => p,
                _ => needle.find(&chunk[at..]).map_or(usize::MAX, |i| at + i),
            };
            *cached = Some(p);
            first = first.min(p);
        }
        first
    }
}

/// Reads one response body as it passes.
pub struct Observer {
    format: Format,
    sse: Parser,
    events: Events,
    /// While stripping: the incomplete event held, and whether the current event is too
    /// large and passing unedited.
    held: BytesMut,
    passing: bool,
    /// While stripping: room for the parts of the piece being edited, reused.
    pieces: Vec<Piece>,
}

impl Observer {
    pub fn new(format: Format) -> Self {
        Observer {
            format,
            sse: Parser::default(),
            events: Events::default(),
            held: BytesMut::new(),
            passing: false,
            pieces: Vec::new(),
        }
    }

    /// An observer that also strips the usage the gateway asked for (event streams).
    pub fn stripping(format: Format) -> Self {
        let mut o = Self::new(format);
        o.events.stripping = format == Format::EventStream;
        o
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Whether it may change the bytes (so the body's length is not known ahead).
    pub fn edits(&self) -> bool {
        self.events.stripping
    }

    /// Reads the next piece of the body. `None`: pass it on as it is; `Some`: pass these
    /// bytes on instead (possibly empty) — only while stripping.
    pub fn observe(&mut self, chunk: &Bytes) -> Option<Bytes> {
        match self.format {
            Format::Json => {
                self.events.json.feed(chunk);
                None
            }
            Format::EventStream if self.events.stripping => {
                self.sse.feed(chunk, &mut self.events);
                Some(self.strip(chunk))
            }
            Format::EventStream => {
                self.skim(chunk);
                None
            }
        }
    }

    /// Reads a piece of an event stream (not stripping, which must see every event).
    /// Whole events that say nothing read here (no [`Needle`] in them) are skimmed: the
    /// parser need not see their bytes — it would only walk their lines — and goes on
    /// after them at an event boundary, as it would have been. Such a run ends at the
    /// last blank line before the next hit; a blank line there is two LFs in a row (an
    /// LF always ends a line, so one right after it ends an empty line), which streams
    /// with CR line ends lack: the parser reads those. It also reads every event up to
    /// the first (whose time is taken), the event of each hit, and an incomplete last
    /// event.
    fn skim(&mut self, chunk: &[u8]) {
        let mut hits = Hits::default();
        let mut at = 0;
        while at < chunk.len() {
            let events = &mut self.events;
            if self.sse.at_clean_boundary() && events.report.first_event.is_some() {
                let model = events.report.model.is_none();
                let end = hits.next(chunk, at, false, model).min(chunk.len());
                match memchr::memmem::rfind(&chunk[at..end], b"\n\n") {
                    Some(blank) => at += blank + 2,
                    // No blank line of LFs before the hit: the parser reads up to it.
                    None => {
                        self.sse.feed(&chunk[at..end], events);
                        at = end;
                    }
                }
                if at == chunk.len() {
                    break;
                }
            }
            at += self.sse.feed_event(&chunk[at..], &mut self.events);
        }
    }

    /// What the events that ended in `chunk` become: `chunk` itself (shared, not copied)
    /// when every event in it passes unedited, else what is kept of it copied once.
    fn strip(&mut self, chunk: &Bytes) -> Bytes {
        let actions = std::mem::take(&mut self.events.actions);
        let mut out = Edit {
            chunk,
            pieces: &mut self.pieces,
        };
        let mut last = 0;
        for &(end, action) in &actions {
            if std::mem::take(&mut self.passing) {
                out.keep(last..end);
            } else if self.held.is_empty() {
                let cut = action.cut(&chunk[last..end]);
                out.keep(last..last + cut.start);
                out.keep(last + cut.end..end);
            } else {
                // An event that began in an earlier piece: held, then kept around its cut.
                self.held.extend_from_slice(&chunk[last..end]);
                let event = self.held.split().freeze();
                let cut = action.cut(&event);
                out.own(event.slice(..cut.start));
                out.own(event.slice(cut.end..));
            }
            last = end;
        }
        self.events.actions = actions;
        self.events.actions.clear();
        let rest = &chunk[last..];
        if self.passing {
            out.keep(last..chunk.len());
        } else if self.held.len() + rest.len() > MAX_HELD_EVENT {
            // Too large to hold: what is held and the rest of this event pass unedited.
            out.own(self.held.split().freeze());
            out.keep(last..chunk.len());
            self.passing = true;
        } else {
            self.held.extend_from_slice(rest);
        }
        out.finish()
    }

    /// At the end of the body: the bytes still held (an incomplete last event), which
    /// must still reach the client.
    pub fn flush(&mut self) -> Bytes {
        self.held.split().freeze()
    }

    /// What must go before a further event so that the client reads it on its own: the
    /// held bytes and line ends to close what the stream stopped in.
    pub fn terminator(&mut self) -> BytesMut {
        let mut out = self.held.split();
        out.extend_from_slice(self.sse.terminator());
        out
    }

    /// The tokens reported by the events read so far (event streams; a JSON body says
    /// nothing until it ends).
    pub fn usage_so_far(&self) -> Usage {
        usage_of(&self.events.found)
    }

    /// Ends the observation: what the body said.
    pub fn report(&mut self) -> Report {
        if self.format == Format::Json {
            self.events.take_document();
        }
        let mut report = std::mem::take(&mut self.events.report);
        report.usage = usage_of(&self.events.found);
        report
    }
}

/// The counts found, with Anthropic's cache tokens added to its input tokens.
fn usage_of(f: &Found) -> Usage {
    // Counts are the upstream's: a hostile one must not overflow them.
    let cached = f
        .cache_creation
        .unwrap_or(0)
        .saturating_add(f.cache_read.unwrap_or(0));
    Usage {
        input: match (f.input, cached) {
            (Some(i), c) => Some(i.saturating_add(c)),
            (None, 0) => None,
            (None, c) => Some(c),
        },
        output: f.output,
    }
}

/// Where an event's one `"usage":null` member is, with the comma that separated it;
/// `None` (left as it is) when it does not appear exactly once.
fn usage_null_cut(event: &[u8]) -> Option<Range<usize>> {
    const NEEDLE: &[u8] = b"\"usage\":null";
    static FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(NEEDLE));
    let mut found = FINDER.find_iter(event);
    let (Some(at), None) = (found.next(), found.next()) else {
        return None;
    };
    let end = at + NEEDLE.len();
    if at > 0 && event[at - 1] == b',' {
        Some(at - 1..end)
    } else if event.get(end) == Some(&b',') {
        Some(at..end + 1)
    } else {
        None
    }
}

/// What one piece of a stripped stream becomes, built as it is read: runs of the piece
/// (adjacent ones joined) and bytes of its own (an event that began in an earlier piece).
struct Edit<'a> {
    chunk: &'a Bytes,
    /// The observer's list, emptied when done (its room kept for the next piece).
    pieces: &'a mut Vec<Piece>,
}

enum Piece {
    Chunk(Range<usize>),
    Own(Bytes),
}

impl Edit<'_> {
    fn keep(&mut self, run: Range<usize>) {
        if run.is_empty() {
            return;
        }
        match self.pieces.last_mut() {
            Some(Piece::Chunk(last)) if last.end == run.start => last.end = run.end,
            _ => self.pieces.push(Piece::Chunk(run)),
        }
    }

    fn own(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.pieces.push(Piece::Own(bytes));
        }
    }

    fn finish(self) -> Bytes {
        let Edit { chunk, pieces } = self;
        let bytes = match pieces.as_mut_slice() {
            [] => Bytes::new(),
            [Piece::Chunk(run)] => chunk.slice(run.clone()),
            [Piece::Own(b)] => std::mem::take(b),
            all => {
                let len = all.iter().map(|p| p.len()).sum();
                let mut out = BytesMut::with_capacity(len);
                for p in all.iter() {
                    match p {
                        Piece::Chunk(run) => out.extend_from_slice(&chunk[run.clone()]),
                        Piece::Own(b) => out.extend_from_slice(b),
                    }
                }
                out.freeze()
            }
        };
        pieces.clear();
        bytes
    }
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Chunk(run) => run.len(),
            Piece::Own(b) => b.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: Format, strip: bool, chunks: &[&[u8]]) -> (Report, Vec<u8>) {
        let mut o = if strip {
            Observer::stripping(format)
        } else {
            Observer::new(format)
        };
        let mut out = Vec::new();
        for c in chunks {
            let c = Bytes::copy_from_slice(c);
            match o.observe(&c) {
                None => out.extend_from_slice(&c),
                Some(b) => out.extend_from_slice(&b),
            }
        }
        out.extend_from_slice(&o.flush());
        (o.report(), out)
    }

    #[test]
    fn anthropic_stream_with_cache_tokens() {
        let s = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-3\",\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let (r, out) = run(Format::EventStream, false, &[s]);
        assert_eq!(out, s);
        assert_eq!(r.model.as_deref(), Some("claude-3"));
        assert_eq!(
            r.usage,
            Usage {
                input: Some(15),
                output: Some(42)
            }
        );
        assert!(!r.upstream_error);
    }

    #[test]
    fn stripping_removes_what_the_gateway_asked_for() {
        let s: &[u8] = b"data: {\"id\":\"1\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\ndata: {\"id\":\"1\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        let want: &[u8] = b"data: {\"id\":\"1\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n";
        for cut in 0..s.len() {
            let (r, out) = run(Format::EventStream, true, &[&s[..cut], &s[cut..]]);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "cut {cut}"
            );
            assert_eq!(
                r.usage,
                Usage {
                    input: Some(3),
                    output: Some(4)
                }
            );
        }
        // Without stripping, every byte passes.
        let (_, out) = run(Format::EventStream, false, &[s]);
        assert_eq!(out, s);
    }

    #[test]
    fn stripping_passes_an_oversized_event_unedited() {
        let big = format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1}},\"pad\":\"{}\"}}\n\ndata: [DONE]\n\n",
            "x".repeat(2 * MAX_HELD_EVENT)
        );
        let chunks: Vec<&[u8]> = big.as_bytes().chunks(64 * 1024).collect();
        let (r, out) = run(Format::EventStream, true, &chunks);
        assert!(out == big.as_bytes(), "the oversized event passes whole");
        assert_eq!(r.usage.input, Some(1));
    }

    #[test]
    fn incomplete_tail_still_reaches_the_client() {
        let s: &[u8] = b"data: {\"choices\":[],\"usage\":{}}\n\ndata: {\"partial";
        let (_, out) = run(Format::EventStream, true, &[s]);
        assert_eq!(out, b"data: {\"partial");
    }

    #[test]
    fn json_body() {
        let s = br#"{"object":"list","data":[{"embedding":[0.1,0.2]}],"model":"text-embedding-3","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        let (r, out) = run(Format::Json, false, &[&s[..50], &s[50..]]);
        assert_eq!(out, s);
        assert_eq!(r.model.as_deref(), Some("text-embedding-3"));
        assert_eq!(
            r.usage,
            Usage {
                input: Some(8),
                output: None
            }
        );
    }

    /// Events of every shape the skim reads or leaves to the parser.
    const SHAPES: &[&str] = &[
        "data: {\"id\":\"c\",\"model\":\"m-1\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"x \\\"y\\\" 日本\"}}]}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"x\"}}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n",
        "data: [DONE]\n\n",
        "data:[DONE]\n\n",
        "data: [DONE] \n\n",
        "data: [DONE]\ndata: x\n\n",
        "data: {\"a\":\ndata: 1}\n\n",
        ": ping\n\n",
        "data: {\"x\":1}\r\n\r\n",
        "data: {\"x\":2}\r\r",
        "event: error\ndata: {\"message\":\"boom\"}\n\n",
        "event:error\n\n",
        "data: {\"error\":{\"message\":\"x\"}}\n\n",
        "event: ping\n\n",
        "\n",
        "id: 5\ndata: {}\n\n",
        "data:\n\n",
        "data\n\n",
        "retry: 10\ndata: {\"model\":\"late\"}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"z\"}}],\"usage\":null}\n\n",
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"c-2\",\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":2}}}\n\n",
        "data: {\"usage\":{}}\n\n",
    ];

    /// The parser alone, one byte at a time: what the skim must agree with.
    fn parsed(stream: &[u8]) -> Report {
        let (mut parser, mut events) = (Parser::default(), Events::default());
        for b in stream.chunks(1) {
            parser.feed(b, &mut events);
        }
        let mut report = std::mem::take(&mut events.report);
        report.usage = usage_of(&events.found);
        report
    }

    fn comparable(mut r: Report) -> (Report, bool) {
        let first = r.first_event.take().is_some();
        (r, first)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Whole events in a piece are skimmed, not parsed: the report is exactly the
        /// parser's, whatever the events and wherever the pieces end (at event
        /// boundaries, where the skim starts, or anywhere).
        #[test]
        fn skimming_reports_what_the_parser_does(
            shapes in proptest::collection::vec(0..SHAPES.len(), 1..30),
            at_events in proptest::collection::vec(proptest::prelude::any::<bool>(), 30),
            cuts in proptest::collection::vec(0..4000usize, 0..6),
        ) {
            let stream: String = shapes.iter().map(|&i| SHAPES[i]).collect();
            let mut ends: Vec<usize> = shapes
                .iter()
                .scan(0, |end, &i| { *end += SHAPES[i].len(); Some(*end) })
                .zip(&at_events)
                .filter_map(|(end, &cut)| cut.then_some(end))
                .collect();
            ends.extend(cuts.iter().map(|c| c % (stream.len() + 1)));
            ends.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for end in ends.into_iter().chain([stream.len()]) {
                pieces.push(&stream.as_bytes()[last..end]);
                last = end;
            }
            let (skimmed, out) = run(Format::EventStream, false, &pieces);
            proptest::prop_assert_eq!(out, stream.as_bytes());
            proptest::prop_assert_eq!(
                comparable(skimmed),
                comparable(parsed(stream.as_bytes()))
            );
        }
    }

    #[test]
    fn needles_and_their_next_hits() {
        let usage = Needle::Usage { stripping: false };
        assert_eq!(usage.find(br#"{"usage":null,"a":1}"#), None, "says nothing");
        assert_eq!(usage.find(br#"{"usage":{}}"#), None, "no count in it");
        assert_eq!(
            usage.find(br#"{"usage":null,"usage":{"input_tokens":1}}"#),
            Some(29)
        );
        let s = br#"{"usage":null}"#;
        assert_eq!(
            Needle::Usage { stripping: true }.find(s),
            Some(1),
            "stripping edits it"
        );
        assert!(wanted(b"event: error", false, false));
        assert!(!wanted(br#"{"model":"m"}"#, false, false), "model known");
        assert!(wanted(br#"{"model":"m"}"#, false, true));
        // Each needle is searched for once per piece, whatever the cursor does.
        let chunk = b"error.error.\"model\"._tokens\"";
        let mut hits = Hits::default();
        assert_eq!(hits.next(chunk, 0, false, true), 0);
        assert_eq!(hits.next(chunk, 1, false, true), 6);
        assert_eq!(hits.next(chunk, 7, false, true), 12);
        assert_eq!(
            hits.next(chunk, 7, false, false),
            20,
            "model known: not looked for"
        );
        assert_eq!(hits.next(chunk, 21, false, false), usize::MAX);
    }

    #[test]
    fn strip_usage_null_cases() {
        let s = |x: &str| {
            let cut = Action::StripNull.cut(x.as_bytes());
            [&x[..cut.start], &x[cut.end..]].concat()
        };
        assert_eq!(s(r#"data: {"a":1,"usage":null}"#), r#"data: {"a":1}"#);
        assert_eq!(s(r#"data: {"usage":null,"a":1}"#), r#"data: {"a":1}"#);
        assert_eq!(s(r#"data: {"usage":null}"#), r#"data: {"usage":null}"#);
        let two = r#"data: {"x":{"usage":null},"usage":null}"#;
        assert_eq!(s(two), two);
    }

    #[test]
    fn only_a_roots_last_usage_null_is_taken_unscanned() {
        for (data, last) in [
            (r#"{"choices":[],"usage":null}"#, true),
            ("{\"a\":1,\"usage\":null }\r\n", true),
            (r#"{"a":{"b":1,"usage":null}}"#, false),
            (r#"{"usage":null,"a":1}"#, false),
            (r#"{"a":"\"usage\":null"}"#, false),
            (r#"{"a":1,"usage":null"#, false),
            (r#"[1,"usage":null]"#, false),
            ("", false),
        ] {
            assert_eq!(ends_with_usage_null(data.as_bytes()), last, "{data}");
        }
        // Taken unscanned or scanned (split across pieces), an event comes out the same.
        let event = b"data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n";
        let twice = [&event[..], &event[..]].concat();
        let want =
            b"data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n".repeat(2);
        let (_, whole) = run(Format::EventStream, true, &[&twice]);
        let (_, split) = run(Format::EventStream, true, &[&twice[..60], &twice[60..]]);
        assert_eq!(whole, want);
        assert_eq!(split, want);
        // Taken unscanned, its cut is found from the event's end whatever ends its lines,
        // and only the root's member goes: a nested one stays.
        for eol in ["\n", "\r\n", "\r"] {
            let event = format!(
                "event: chunk{eol}data: {{\"x\":{{\"usage\":null}},\"usage\":null }}{eol}{eol}"
            );
            let want = format!("event: chunk{eol}data: {{\"x\":{{\"usage\":null}} }}{eol}{eol}");
            let (_, out) = run(Format::EventStream, true, &[event.as_bytes()]);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
