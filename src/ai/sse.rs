//! An incremental parser of `text/event-stream` (WHATWG HTML §9.2.6, "Interpreting an
//! event stream"), fed the body in pieces of any size: line ends LF, CRLF or CR (a CR at
//! the end of one piece and the LF at the start of the next are one line end), a leading
//! BOM, comments, `event:` and `data:` fields (several `data:` lines joined with `\n`),
//! `id:` (reported to sinks that ask, for `proxy::events`), other fields ignored. It holds
//! no bytes: an event's data goes to the [`Sink`] piece by piece as it passes, and the
//! parser keeps only its position in the grammar. [`Parser::feed_event`] stops after the
//! first event boundary, for a reader that handles one event at a time.

/// What the parser reports.
pub trait Sink {
    /// The next piece of the current event's data (its `data:` values joined by `\n`).
    fn data(&mut self, piece: &[u8]);
    /// The current event's data, all of it: its only `data:` line, whose blank line
    /// follows in the same piece. Nothing else of the event's data comes.
    fn whole_data(&mut self, data: &[u8]) {
        self.data(data);
    }
    /// The current event has `event: error`.
    fn error_event(&mut self) {}
    /// An `event:` or `id:` field starts in the current event; its value follows through
    /// [`Sink::field_value`] (replacing an earlier one of the same name).
    fn field_start(&mut self, _field: NamedField) {}
    /// The next piece of the value of the field that [`Sink::field_start`] announced.
    fn field_value(&mut self, _piece: &[u8]) {}
    /// A blank line ended an event that had data: dispatch it.
    fn dispatch(&mut self);
    /// A blank line ended at `end` (an offset in the piece being fed): the bytes before it
    /// are whole events. Called after [`Sink::dispatch`] when there was one. `continued`:
    /// this is only the LF of a blank line's CRLF whose CR ended the previous piece (and
    /// was reported as a boundary then).
    fn boundary(&mut self, _end: usize, _continued: bool) {}
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Line {
    /// At the start of a line.
    Start,
    /// In a field name.
    Name,
    /// In a field's value.
    Value,
    /// In a comment or a line not read (its field name is too long to be ours).
    Skip,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
    Data,
    Event,
    Id,
    Other,
}

/// The fields other than `data` a sink may read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NamedField {
    Event,
    Id,
}

/// Whether `s`, which starts with a line end, goes on with a blank line (so the line
/// before ends an event). A CR last in `s` may be half of a CRLF: not known yet.
fn ends_event(s: &[u8]) -> bool {
    let line_end = match s {
        [b'\r', b'\n', ..] => 2,
        [b'\r' | b'\n', _, ..] => 1,
        _ => return false,
    };
    matches!(s.get(line_end), Some(b'\r' | b'\n'))
}

/// The longest field name looked at (`event`, `data`, `retry`, `id`).
const MAX_NAME: usize = 8;

pub struct Parser {
    /// Bytes of a UTF-8 BOM matched at the very start (3: past it, or none there).
    bom: u8,
    /// The last byte was a CR: an LF now is the rest of that line end.
    after_cr: bool,
    /// ... and the line it ended was blank.
    cr_blank: bool,
    line: Line,
    name: [u8; MAX_NAME],
    name_len: usize,
    field: Field,
    /// The value's first byte is still to come (one leading space is dropped).
    value_start: bool,
    /// `data:` lines in the current event.
    data_lines: u32,
    /// The current event has a field line (so it is not at an event boundary).
    in_event: bool,
    /// Bytes of the `event:` value matched against `error` (`usize::MAX`: not it).
    event_matched: usize,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            bom: 0,
            after_cr: false,
            cr_blank: false,
            line: Line::Start,
            name: [0; MAX_NAME],
            name_len: 0,
            field: Field::Other,
            value_start: false,
            data_lines: 0,
            in_event: false,
            event_matched: 0,
        }
    }
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

impl Parser {
    /// What must be written to end whatever the stream stopped in, so that a further
    /// event is read on its own: nothing at an event boundary, else line ends (a partial
    /// event is then dispatched as it stands).
    pub fn terminator(&self) -> &'static [u8] {
        // A CR just written swallows an LF that follows it.
        match (self.after_cr, self.line, self.in_event) {
            (false, Line::Start, false) => b"",
            (false, Line::Start, true) => b"\n",
            (false, _, _) => b"\n\n",
            (true, Line::Start, false) => b"\n",
            (true, _, _) => b"\n\n",
        }
    }

    /// Whether the stream is at an event boundary (nothing of an event pending).
    pub fn at_boundary(&self) -> bool {
        self.line == Line::Start && !self.in_event
    }

    /// Whether the stream is at an event boundary with nothing at all pending: past the
    /// BOM check and not after a CR. Whole events may then be read by a caller without
    /// the parser, which goes on after them in the same state.
    pub fn at_clean_boundary(&self) -> bool {
        self.at_boundary() && self.bom == 3 && !self.after_cr
    }

    /// Feeds the next piece of the stream.
    pub fn feed(&mut self, chunk: &[u8], sink: &mut impl Sink) {
        self.feed_until::<false>(chunk, sink);
    }

    /// Feeds the piece up to and including the first blank line that ends an event (the
    /// LF of a CRLF whose CR ended the previous piece is not such an end): returns the
    /// bytes consumed, `chunk.len()` when no event ended in it.
    pub fn feed_event(&mut self, chunk: &[u8], sink: &mut impl Sink) -> usize {
        self.feed_until::<true>(chunk, sink)
    }

    fn feed_until<const ONE: bool>(&mut self, chunk: &[u8], sink: &mut impl Sink) -> usize {
        let mut i = 0;
        while self.bom < 3 && i < chunk.len() {
            if chunk[i] == BOM[self.bom as usize] {
                self.bom += 1;
                i += 1;
            } else {
                if self.bom > 0 {
                    // Part of a BOM and then something else: the line is not one we read.
                    self.line = Line::Skip;
                    self.in_event = true;
                }
                self.bom = 3;
            }
        }
        if self.after_cr && i < chunk.len() {
            self.after_cr = false;
            if chunk[i] == b'\n' {
                i += 1;
                if self.cr_blank {
                    sink.boundary(i, true);
                }
            }
        }
        while i < chunk.len() {
            let rest = &chunk[i..];
            match self.line {
                Line::Start => {
                    let b = rest[0];
                    if b == b'\r' || b == b'\n' {
                        i += self.line_end(rest, i, true, sink);
                        if ONE {
                            return i;
                        }
                        continue;
                    }
                    self.in_event = true;
                    if b == b':' {
                        self.line = Line::Skip;
                        i += 1;
                    } else {
                        self.line = Line::Name;
                        self.name_len = 0;
                    }
                }
                Line::Name => {
                    let n = memchr::memchr3(b':', b'\r', b'\n', rest).unwrap_or(rest.len());
                    let end = self.name_len + n;
                    if end > MAX_NAME {
                        self.name_len = MAX_NAME + 1;
                    } else {
                        self.name[self.name_len..end].copy_from_slice(&rest[..n]);
                        self.name_len = end;
                    }
                    i += n;
                    if n == rest.len() {
                        break;
                    }
                    self.start_field(sink);
                    if rest[n] == b':' {
                        self.line = Line::Value;
                        self.value_start = true;
                        i += 1;
                    } else {
                        // A field with no colon: its value is empty.
                        i += self.line_end(&rest[n..], i, false, sink);
                    }
                }
                Line::Value => {
                    let n = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    // Nothing of this line's value was reported before.
                    let entire = self.value_start;
                    let mut value = &rest[..n];
                    if self.value_start && !value.is_empty() {
                        self.value_start = false;
                        if value[0] == b' ' {
                            value = &value[1..];
                        }
                    }
                    match self.field {
                        // The first data line, read from its start, and a blank line
                        // right after its line end: the event's whole data is here.
                        Field::Data if entire && self.data_lines == 1 && ends_event(&rest[n..]) => {
                            sink.whole_data(value)
                        }
                        Field::Data => sink.data(value),
                        Field::Event => {
                            self.match_event(value);
                            sink.field_value(value);
                        }
                        Field::Id => sink.field_value(value),
                        Field::Other => {}
                    }
                    i += n;
                    if n < rest.len() {
                        i += self.line_end(&rest[n..], i, false, sink);
                    }
                }
                Line::Skip => {
                    let n = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    i += n;
                    if n < rest.len() {
                        i += self.line_end(&rest[n..], i, false, sink);
                    }
                }
            }
        }
        i
    }

    /// The field named so far starts (at its colon, or at its line's end).
    fn start_field(&mut self, sink: &mut impl Sink) {
        let name = &self.name[..self.name_len.min(MAX_NAME)];
        self.field = match (self.name_len <= MAX_NAME, name) {
            (true, b"data") => {
                if self.data_lines > 0 {
                    sink.data(b"\n");
                }
                self.data_lines += 1;
                Field::Data
            }
            (true, b"event") => {
                self.event_matched = 0;
                sink.field_start(NamedField::Event);
                Field::Event
            }
            (true, b"id") => {
                sink.field_start(NamedField::Id);
                Field::Id
            }
            _ => Field::Other,
        };
    }

    fn match_event(&mut self, v: &[u8]) {
        const ERROR: &[u8] = b"error";
        let at = self.event_matched;
        if at <= ERROR.len() && ERROR[at..].starts_with(v) {
            self.event_matched += v.len();
        } else {
            self.event_matched = usize::MAX;
        }
    }

    /// A line ends at `s[0]` (CR or LF; `at` is its offset in the piece): returns the
    /// bytes of the line end consumed. `blank`: the line was empty, so an event ends.
    fn line_end(&mut self, s: &[u8], at: usize, blank: bool, sink: &mut impl Sink) -> usize {
        if self.field == Field::Event && self.line == Line::Value && self.event_matched == 5 {
            sink.error_event();
        }
        self.field = Field::Other;
        self.line = Line::Start;
        let len = match s {
            [b'\r', b'\n', ..] => 2,
            [b'\r'] => {
                // The LF, if any, is in the next piece.
                self.after_cr = true;
                self.cr_blank = blank;
                1
            }
            _ => 1,
        };
        if blank {
            if self.data_lines > 0 {
                sink.dispatch();
            }
            self.data_lines = 0;
            self.in_event = false;
            self.event_matched = 0;
            sink.boundary(at + len, false);
        }
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects events as (data, error) and boundaries as absolute offsets.
    #[derive(Default)]
    struct Events {
        data: Vec<u8>,
        error: bool,
        events: Vec<(String, bool)>,
        boundaries: Vec<usize>,
        base: usize,
    }

    impl Sink for Events {
        fn data(&mut self, piece: &[u8]) {
            self.data.extend_from_slice(piece);
        }
        fn error_event(&mut self) {
            self.error = true;
        }
        fn dispatch(&mut self) {
            let d = String::from_utf8(std::mem::take(&mut self.data)).unwrap();
            self.events.push((d, std::mem::take(&mut self.error)));
        }
        fn boundary(&mut self, end: usize, _continued: bool) {
            self.error = false;
            self.data.clear();
            self.boundaries.push(self.base + end);
        }
    }

    fn parse_cuts(s: &[u8], cuts: &[usize]) -> Events {
        let mut p = Parser::default();
        let mut e = Events::default();
        let mut last = 0;
        for &c in cuts.iter().chain([&s.len()]) {
            e.base = last;
            p.feed(&s[last..c], &mut e);
            last = c;
        }
        e
    }

    /// Parsed whole and cut at every byte (and at every pair of bytes for short inputs),
    /// the same events and boundaries.
    fn parse(s: &str) -> (Vec<(String, bool)>, Vec<usize>) {
        let s = s.as_bytes();
        let whole = parse_cuts(s, &[]);
        for a in 0..=s.len() {
            let e = parse_cuts(s, &[a]);
            assert_eq!(e.events, whole.events, "cut at {a}");
            // A cut between the CR and LF of a blank line's CRLF reports the boundary
            // after each.
            let extra: Vec<usize> = e
                .boundaries
                .iter()
                .copied()
                .filter(|b| !whole.boundaries.contains(b))
                .collect();
            assert!(
                extra
                    .iter()
                    .all(|&b| b == a && s[b - 1] == b'\r' && s.get(b) == Some(&b'\n')),
                "cut at {a}: {extra:?}"
            );
            assert!(
                whole.boundaries.iter().all(|b| e.boundaries.contains(b)),
                "cut at {a}"
            );
            if s.len() <= 40 {
                for b in a..=s.len() {
                    let e = parse_cuts(s, &[a, b]);
                    assert_eq!(e.events, whole.events, "cuts at {a}, {b}");
                }
            }
        }
        (whole.events, whole.boundaries)
    }

    fn data(events: &[(String, bool)]) -> Vec<&str> {
        events.iter().map(|(d, _)| d.as_str()).collect()
    }

    #[test]
    fn line_ends_of_every_kind() {
        for nl in ["\n", "\r\n", "\r"] {
            let s = format!("data: a{nl}{nl}data:b{nl}data:  c{nl}{nl}data{nl}{nl}");
            let (ev, _) = parse(&s);
            assert_eq!(data(&ev), ["a", "b\n c", ""], "{nl:?}");
        }
        // Mixed within one stream.
        let (ev, _) = parse("data: x\r\n\rdata: y\n\r\n");
        assert_eq!(data(&ev), ["x", "y"]);
    }

    #[test]
    fn comments_fields_bom_and_unfinished_events() {
        let (ev, b) = parse("\u{feff}: hello\nid: 7\nretry: 10\nevent: ping\n\n:c\n\ndata: 1\nfoo: bar\n\ndata: tail");
        assert_eq!(
            data(&ev),
            ["1"],
            "comment-only and data-less blocks dispatch nothing; a tail is dropped"
        );
        assert_eq!(b.len(), 3);
        let (ev, _) = parse("event: error\ndata: {}\n\nevent: errors\ndata: x\n\n");
        assert_eq!(ev, [("{}".into(), true), ("x".into(), false)]);
        // A BOM only at the very start.
        let (ev, _) = parse("data: a\n\n\u{feff}data: b\n\n");
        assert_eq!(data(&ev), ["a"]);
        // A long unknown field name is skipped, not kept.
        let long = format!("{}: v\ndata: ok\n\n", "x".repeat(10_000));
        let (ev, _) = parse(&long);
        assert_eq!(data(&ev), ["ok"]);
    }

    #[test]
    fn boundaries_fall_after_the_blank_line() {
        let s = "data: a\r\n\r\ndata: b\r\r";
        let (_, b) = parse(s);
        assert_eq!(b, [11, 20]);
        // CR CR at a piece end and the LF of a CRLF at the next piece's start.
        // (the boundary is reported after the CR, and again after the LF).
        let e = parse_cuts(b"data: a\r\n\r\n", &[10]);
        assert_eq!(e.boundaries, [10, 11]);
    }

    #[test]
    fn terminators() {
        let mut p = Parser::default();
        let mut e = Events::default();
        assert_eq!(p.terminator(), b"");
        p.feed(b"data: a\n", &mut e);
        assert_eq!(p.terminator(), b"\n");
        p.feed(b"data: b", &mut e);
        assert_eq!(p.terminator(), b"\n\n");
        p.feed(b"\r", &mut e);
        assert_eq!(p.terminator(), b"\n\n");
        p.feed(b"\r", &mut e);
        assert!(p.at_boundary());
        assert_eq!(
            p.terminator(),
            b"\n",
            "the LF is swallowed by the CR before it"
        );
    }

    /// Records which events came whole (data and blank line in one piece).
    #[derive(Default)]
    struct Whole {
        data: Vec<u8>,
        whole: bool,
        events: Vec<(String, bool)>,
    }

    impl Sink for Whole {
        fn data(&mut self, piece: &[u8]) {
            self.data.extend_from_slice(piece);
        }
        fn whole_data(&mut self, data: &[u8]) {
            assert!(
                self.data.is_empty() && !self.whole,
                "whole data after a piece"
            );
            self.whole = true;
            self.data.extend_from_slice(data);
        }
        fn dispatch(&mut self) {
            let d = String::from_utf8(std::mem::take(&mut self.data)).unwrap();
            self.events.push((d, std::mem::take(&mut self.whole)));
        }
        fn boundary(&mut self, _end: usize, _continued: bool) {
            self.data.clear();
            self.whole = false;
        }
    }

    #[test]
    fn whole_data_only_when_the_event_ends_in_the_piece() {
        for eol in ["\n", "\r\n", "\r"] {
            let s =
                format!("data: a{eol}{eol}data:b{eol}data: c{eol}{eol}: x{eol}data: d{eol}{eol}");
            let mut p = Parser::default();
            let mut w = Whole::default();
            p.feed(s.as_bytes(), &mut w);
            let expect = [("a", true), ("b\nc", false), ("d", true)];
            let got: Vec<(&str, bool)> = w.events.iter().map(|(d, w)| (d.as_str(), *w)).collect();
            assert_eq!(got, expect, "{eol:?}");
            // Cut anywhere, the data is the same, and an event is whole only when its
            // data line and the blank line after it were in one piece.
            for cut in 0..=s.len() {
                let mut p = Parser::default();
                let mut w = Whole::default();
                p.feed(&s.as_bytes()[..cut], &mut w);
                p.feed(&s.as_bytes()[cut..], &mut w);
                let data: Vec<&str> = w.events.iter().map(|(d, _)| d.as_str()).collect();
                assert_eq!(data, ["a", "b\nc", "d"], "{eol:?} cut at {cut}");
                assert!(!w.events[1].1, "{eol:?} cut at {cut}");
            }
        }
    }
}
