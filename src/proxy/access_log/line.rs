//! One access-log line, formatted straight into a byte buffer: text (`key=value` after a
//! timestamp, `INFO` and `access:`, as the gateway's other log lines look) or a JSON object
//! (`timestamp`, `level`, the fields, `target`). Numbers go through `itoa`/`ryu`, strings are
//! copied with their escapes: a value a client controls (the path, the request id, a model
//! name) can neither end the line, nor break the JSON, nor carry a terminal escape sequence.
//! No ANSI colouring: the line is data.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// A field's name as each format writes it before the value: `,"name":` and ` name=`
/// (one copy per field); made by [`key!`](crate::access_key).
#[derive(Clone, Copy)]
pub struct Key {
    pub json: &'static str,
    pub text: &'static str,
}

/// The [`Key`] of a field name given as a literal.
#[macro_export]
macro_rules! access_key {
    ($name:literal) => {
        $crate::proxy::access_log::line::Key {
            json: concat!(",\"", $name, "\":"),
            text: concat!(" ", $name, "="),
        }
    };
}
pub use access_key as key;

/// A line being written into `buf`, in JSON or in text ([`Line::finish`] ends it with its
/// newline). The format is a type parameter, so that each field's name is a constant the
/// compiler copies inline, and each format's line is one straight run of code.
pub struct Line<'a, const JSON: bool> {
    buf: &'a mut Vec<u8>,
}

impl<'a, const JSON: bool> Line<'a, JSON> {
    /// Starts a line at `now`: its timestamp and level (and, in text, its target).
    pub fn start(buf: &'a mut Vec<u8>, now: SystemTime) -> Self {
        // Room for a whole usual line (~560 bytes in JSON): no growth check grows it.
        buf.reserve(768);
        if JSON {
            buf.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(buf, now);
            buf.extend_from_slice(b"\",\"level\":\"INFO\"");
        } else {
            timestamp(buf, now);
            buf.extend_from_slice(b"  INFO access:");
        }
        Line { buf }
    }

    #[inline(always)]
    fn key(&mut self, key: Key) {
        let k = if JSON { key.json } else { key.text };
        self.buf.extend_from_slice(k.as_bytes());
    }

    /// A string, quoted in both formats: `route="chat"`, `"route":"chat"`.
    #[inline(always)]
    pub fn str(&mut self, key: Key, value: &str) {
        self.key(key);
        if JSON {
            json_string(self.buf, &[value]);
        } else {
            text_quoted(self.buf, &[value]);
        }
    }

    /// [`Line::str`], or `"-"` when there is no value.
    #[inline(always)]
    pub fn str_or_dash(&mut self, key: Key, value: Option<&str>) {
        match value {
            Some(v) => self.str(key, v),
            None => {
                self.key(key);
                self.buf.extend_from_slice(b"\"-\"");
            }
        }
    }

    /// A string made of `parts`, bare in text unless it needs quotes (`path=/v1/x`,
    /// `plugin=api-key:deny`; a value with a space, a quote, a backslash or a control
    /// character is quoted and escaped), a JSON string in JSON.
    #[inline(always)]
    pub fn bare(&mut self, key: Key, parts: &[&str]) {
        self.key(key);
        if JSON {
            json_string(self.buf, parts);
        } else {
            text_bare(self.buf, parts);
        }
    }

    /// The absent value of a [`Line::bare`] field: `-` (`"-"` in JSON).
    #[inline(always)]
    pub fn bare_dash(&mut self, key: Key) {
        self.key(key);
        self.buf
            .extend_from_slice(if JSON { b"\"-\"" } else { b"-" });
    }

    /// ASCII known to need no escaping (a socket address, hex digits), written as a
    /// bare word in text and between quotes in JSON.
    #[inline(always)]
    pub fn ascii(&mut self, key: Key, value: &[u8]) {
        debug_assert!(value
            .iter()
            .all(|b| b.is_ascii_graphic() && !b"\"\\".contains(b)));
        self.key(key);
        if JSON {
            self.buf.push(b'"');
            self.buf.extend_from_slice(value);
            self.buf.push(b'"');
        } else {
            self.buf.extend_from_slice(value);
        }
    }

    #[inline(always)]
    pub fn u64(&mut self, key: Key, value: u64) {
        self.key(key);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    #[inline(always)]
    pub fn i64(&mut self, key: Key, value: i64) {
        self.key(key);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Milliseconds to the nanosecond (`0.204868`, `1.5`, `12.0`), the way `f64` would
    /// write them without `ryu`'s cost (a third of the line's); `-1.0` (absent) as
    /// itself. Anything not in 0..10^12 ms goes to [`Line::f64`].
    #[inline(always)]
    pub fn ms(&mut self, key: Key, value: f64) {
        if !(0.0..1e12).contains(&value) {
            return self.f64(key, value);
        }
        self.key(key);
        milliseconds(self.buf, value);
    }

    /// The shortest decimal that reads back as `value` (`1.25`, `-1.0`); JSON has no
    /// NaN or infinity, so those are `null` there.
    pub fn f64(&mut self, key: Key, value: f64) {
        self.key(key);
        if value == -1.0 {
            self.buf.extend_from_slice(b"-1.0");
        } else if JSON && !value.is_finite() {
            self.buf.extend_from_slice(b"null");
        } else {
            self.buf
                .extend_from_slice(ryu::Buffer::new().format(value).as_bytes());
        }
    }

    /// Ends the line (in JSON with its `"target":"access"`) and its newline.
    pub fn finish(self) {
        if JSON {
            self.buf.extend_from_slice(b",\"target\":\"access\"}\n");
        } else {
            self.buf.push(b'\n');
        }
    }
}

/// `ms` in 0..10^12 to the nanosecond: the whole milliseconds, a point, and at least one
/// and at most six digits of fraction (no trailing zeros but one: `12.0`).
fn milliseconds(buf: &mut Vec<u8>, ms: f64) {
    let ns = ms * 1e6;
    // `round` without libm's call: below 2^52 adding a half is exact; above it every
    // f64 is a whole number already.
    let ns = if ns < 4_503_599_627_370_496.0 {
        (ns + 0.5) as u64
    } else {
        ns as u64
    };
    let whole = ns / 1_000_000;
    if whole < 10 {
        buf.push(b'0' + whole as u8);
    } else {
        buf.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes());
    }
    let digits = point_six((ns % 1_000_000) as u32);
    let end = digits.iter().rposition(|&d| d != b'0').unwrap_or(0).max(1) + 1;
    // All seven (a copy of known length), then the trailing zeros cut off.
    buf.extend_from_slice(&digits);
    buf.truncate(buf.len() - (digits.len() - end));
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds), as the other log lines have it.
/// The date and time up to the second are formatted once per second per thread.
fn timestamp(buf: &mut Vec<u8>, now: SystemTime) {
    thread_local! {
        /// The second last formatted, and its `YYYY-MM-DDTHH:MM:SS.`.
        static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let prefix = match SECOND.get() {
        (cached, prefix) if cached == secs => prefix,
        _ => {
            let prefix = second(secs);
            SECOND.set((secs, prefix));
            prefix
        }
    };
    let mut out = [0u8; 27];
    out[..20].copy_from_slice(&prefix);
    out[19..26].copy_from_slice(&point_six(since.subsec_micros()));
    out[26] = b'Z';
    buf.extend_from_slice(&out);
}

/// `.dddddd`: a point and `n` (below 10^6) in six digits with its leading zeros (`n +
/// 10^6` written, its leading `1` made the point).
fn point_six(n: u32) -> [u8; 7] {
    debug_assert!(n < 1_000_000);
    let mut out = [0u8; 7];
    out.copy_from_slice(itoa::Buffer::new().format(n + 1_000_000).as_bytes());
    out[0] = b'.';
    out
}

/// `YYYY-MM-DDTHH:MM:SS.` of `secs` since the epoch.
fn second(secs: u64) -> [u8; 20] {
    let (year, month, day) = civil_date((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    let mut out = *b"0000-00-00T00:00:00.";
    let mut put = |end: usize, width: usize, n: u64| {
        let mut n = n;
        for slot in out[end - width..end].iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(4, 4, year.clamp(0, 9999) as u64);
    put(7, 2, month.into());
    put(10, 2, day.into());
    put(13, 2, of_day / 3600);
    put(16, 2, of_day / 60 % 60);
    put(19, 2, of_day % 60);
    out
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether a character must be escaped: ASCII and C1 control characters and the Unicode
/// line and paragraph separators (some viewers break lines on them).
fn is_control(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Whether `s` can stand unquoted in a text line: no space, quote, backslash or control.
fn is_bare(s: &str) -> bool {
    !has_special(s.as_bytes(), b'!')
        || (!s.is_ascii()
            && !s
                .chars()
                .any(|c| c == ' ' || c == '"' || c == '\\' || is_control(c)))
}

/// Copies `s`, escaping what `is_special` flags (a byte below 0x80) or what needs a look
/// at the whole character (any byte from 0x80), with `escape`.
fn escaped(
    buf: &mut Vec<u8>,
    s: &str,
    is_special: impl Fn(u8) -> bool,
    escape: impl Fn(&mut Vec<u8>, char),
) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 && !is_special(b) {
            i += 1;
            continue;
        }
        let c = s[i..].chars().next().expect("a char starts here");
        let len = c.len_utf8();
        if b < 0x80 || is_control(c) {
            buf.extend_from_slice(&bytes[start..i]);
            escape(buf, c);
            start = i + len;
        }
        i += len;
    }
    buf.extend_from_slice(&bytes[start..]);
}

/// A Rust-style quoted string, as the text log writes string fields: `"a\"b\n\u{1b}"`.
fn text_quoted(buf: &mut Vec<u8>, parts: &[&str]) {
    quoted(buf, parts, |buf, c| {
        use std::io::Write as _;
        let _ = match c {
            '\0' => buf.write_all(b"\\0"),
            c => write!(buf, "\\u{{{:x}}}", c as u32),
        };
    });
}

/// A JSON string: `"a\"b\n\u001b"`.
fn json_string(buf: &mut Vec<u8>, parts: &[&str]) {
    quoted(buf, parts, |buf, c| {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = c as u32;
        buf.extend_from_slice(b"\\u");
        for shift in [12, 8, 4, 0] {
            buf.push(HEX[((n >> shift) & 0xf) as usize]);
        }
    });
}

/// The bytes `quoted` may have to escape: ASCII controls, DEL, a quote, a backslash,
/// and every byte of a non-ASCII character (which is looked at whole).
static QUOTED_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b < 0x20 || b >= 0x7f || b == b'"' as usize || b == b'\\' as usize;
        b += 1;
    }
    t
};

/// Whether `s` has a byte [`QUOTED_SPECIAL`] flags or one below `plain` (`b' '` adds
/// nothing to the table, `b'!'` adds the space); eight bytes at a time.
fn has_special(s: &[u8], plain: u8) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // Sets the high bit of some byte iff a byte of `x` is below `n` (n <= 0x80).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let equal = |x: u64, b: u8| below(x ^ (ONES * u64::from(b)), 1);
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if (below(x, plain) | (x & HIGH) | equal(x, 0x7f) | equal(x, b'"') | equal(x, b'\\')) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < plain || QUOTED_SPECIAL[usize::from(b)])
}

/// `parts` as a bare word in a text line, or quoted when they need it.
fn text_bare(buf: &mut Vec<u8>, parts: &[&str]) {
    if parts.iter().any(|p| !p.is_empty()) && parts.iter().all(|p| is_bare(p)) {
        for p in parts {
            buf.extend_from_slice(p.as_bytes());
        }
    } else {
        text_quoted(buf, parts);
    }
}

/// `parts` between quotes: a quote, a backslash, `\n`, `\r` and `\t` escaped as both
/// formats write them, any other control character with `control`.
fn quoted(buf: &mut Vec<u8>, parts: &[&str], control: impl Fn(&mut Vec<u8>, char)) {
    buf.push(b'"');
    for part in parts {
        // Most values (route names, paths, ids) have nothing to escape: one look per eight
        // bytes, then one copy.
        if !has_special(part.as_bytes(), b' ') {
            buf.extend_from_slice(part.as_bytes());
            continue;
        }
        escaped(
            buf,
            part,
            |b| b < 0x20 || b == 0x7f || b == b'"' || b == b'\\',
            |buf, c| match c {
                '"' => buf.extend_from_slice(b"\\\""),
                '\\' => buf.extend_from_slice(b"\\\\"),
                '\n' => buf.extend_from_slice(b"\\n"),
                '\r' => buf.extend_from_slice(b"\\r"),
                '\t' => buf.extend_from_slice(b"\\t"),
                c => control(buf, c),
            },
        );
    }
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const AT: u64 = 1_764_660_741_790_799;

    fn line<const JSON: bool>(fill: impl FnOnce(&mut Line<'_, JSON>)) -> String {
        let mut buf = Vec::new();
        let mut l = Line::<JSON>::start(&mut buf, UNIX_EPOCH + Duration::from_micros(AT));
        fill(&mut l);
        l.finish();
        String::from_utf8(buf).unwrap()
    }

    fn text(fill: impl FnOnce(&mut Line<'_, false>)) -> String {
        line(fill)
    }

    fn json(fill: impl FnOnce(&mut Line<'_, true>)) -> String {
        line(fill)
    }

    const HOSTILE: &str = "a\"b\\c\nd\re\tf\u{1b}[31mg\u{7f}h\u{85}i\u{2028}j\0k é";

    #[test]
    fn text_line() {
        let l = text(|l| {
            l.ascii(key!("client"), b"127.0.0.1:5");
            l.bare(key!("path"), &["/v1/a=b"]);
            l.str(key!("route"), "chat");
            l.u64(key!("status"), 200);
            l.f64(key!("duration_ms"), 1.5);
            l.f64(key!("upstream_ms"), -1.0);
            l.i64(key!("input_tokens"), -1);
            l.bare(key!("plugin"), &["api-key", ":", "deny"]);
        });
        assert_eq!(
            l,
            "2025-12-02T07:32:21.790799Z  INFO access: client=127.0.0.1:5 path=/v1/a=b \
             route=\"chat\" status=200 duration_ms=1.5 upstream_ms=-1.0 input_tokens=-1 \
             plugin=api-key:deny\n"
        );
    }

    #[test]
    fn json_line() {
        let l = json(|l| {
            l.ascii(key!("client"), b"127.0.0.1:5");
            l.bare(key!("path"), &["/v1/x"]);
            l.u64(key!("status"), 200);
            l.f64(key!("ttft_ms"), f64::NAN);
            l.bare(key!("plugin"), &["-"]);
        });
        assert_eq!(
            l,
            "{\"timestamp\":\"2025-12-02T07:32:21.790799Z\",\"level\":\"INFO\",\
             \"client\":\"127.0.0.1:5\",\"path\":\"/v1/x\",\"status\":200,\"ttft_ms\":null,\
             \"plugin\":\"-\",\"target\":\"access\"}\n"
        );
    }

    #[test]
    fn hostile_values_stay_on_one_line_and_in_their_field() {
        let text = text(|l| {
            l.str(key!("model"), HOSTILE);
            l.bare(key!("path"), &[HOSTILE]);
            l.bare(key!("p"), &["with space"]);
            l.bare(key!("e"), &[""]);
        });
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\u{85}') && !text.contains('\u{2028}'));
        let want = "\"a\\\"b\\\\c\\nd\\re\\tf\\u{1b}[31mg\\u{7f}h\\u{85}i\\u{2028}j\\0k é\"";
        assert!(
            text.contains(&format!(" model={want} path={want} ")),
            "{text}"
        );
        assert!(text.ends_with(" p=\"with space\" e=\"\"\n"), "{text}");

        let json = json(|l| {
            l.str(key!("model"), HOSTILE);
            l.bare(key!("path"), &[HOSTILE]);
        });
        assert_eq!(json.matches('\n').count(), 1, "{json}");
        assert!(!json.contains('\u{1b}') && !json.contains('\u{2028}'));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["model"], HOSTILE);
        assert_eq!(v["path"], HOSTILE);
        assert_eq!(v["target"], "access");
    }

    /// `ms` writes what `ryu` writes for a duration measured in nanoseconds (up to a
    /// few hours' worth), reads back as the same nanoseconds, and leaves the absent
    /// `-1.0` and what is not a duration to `f64`.
    #[test]
    fn milliseconds_to_the_nanosecond() {
        let ms = |v: f64| json(|l| l.ms(key!("t"), v));
        let f64 = |v: f64| json(|l| l.f64(key!("t"), v));
        let mut ns: u64 = 0;
        while ns < 20_000_000_000_000 {
            let d = std::time::Duration::from_nanos(ns);
            for v in [d.as_secs_f64() * 1e3, ns as f64 / 1e6] {
                let (got, want) = (ms(v), f64(v));
                let value = |l: &str| -> String {
                    let at = l.find("\"t\":").unwrap() + 4;
                    l[at..l.len() - ",\"target\":\"access\"}\n".len()].to_string()
                };
                let written: f64 = value(&got).parse().unwrap();
                assert_eq!((written * 1e6).round() as u64, ns, "{got}");
                if value(&want).split('.').nth(1).is_some_and(|f| f.len() <= 6) {
                    assert_eq!(got, want, "{ns} ns");
                }
            }
            ns = ns * 3 + 7;
        }
        for v in [-1.0, f64::NAN, f64::INFINITY, -0.5, 2e12] {
            assert_eq!(ms(v), f64(v));
        }
        assert!(ms(12.0).contains("\"t\":12.0,") && ms(0.0).contains("\"t\":0.0,"));
    }

    #[test]
    fn bare_values_that_need_no_quotes() {
        assert!(is_bare("/v1/chat/completions") && is_bare("/ünïcode") && is_bare("a=b"));
        for quoted in ["", "a b", "a\"", "a\\", "a\u{85}", "ü\u{2028}", "ü b"] {
            assert!(!is_bare(quoted) || quoted.is_empty(), "{quoted:?}");
        }
    }

    /// The eight-at-a-time scan flags exactly what the table flags, wherever the byte is.
    #[test]
    fn special_bytes_found_at_every_position() {
        for len in 1..=19 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert_eq!(
                        has_special(&s, b' '),
                        QUOTED_SPECIAL[usize::from(b)],
                        "{b:#x} at {at} of {len}"
                    );
                    assert_eq!(
                        has_special(&s, b'!'),
                        QUOTED_SPECIAL[usize::from(b)] || b == b' ',
                        "{b:#x} at {at} of {len}, space flagged"
                    );
                }
            }
        }
        assert!(!has_special(b"", b' ') && !has_special(b"/v1/chat/completions?x=~1", b' '));
    }

    /// Lines in the same second share its formatting; the next second gets its own.
    #[test]
    fn timestamps_within_and_across_seconds() {
        let at = |micros: u64| {
            let mut buf = Vec::new();
            timestamp(&mut buf, UNIX_EPOCH + Duration::from_micros(micros));
            String::from_utf8(buf).unwrap()
        };
        assert_eq!(at(AT), "2025-12-02T07:32:21.790799Z");
        assert_eq!(at(AT + 7), "2025-12-02T07:32:21.790806Z");
        assert_eq!(at(AT - 790_799), "2025-12-02T07:32:21.000000Z");
        assert_eq!(at(AT + 209_201), "2025-12-02T07:32:22.000000Z");
        assert_eq!(at(AT + 209_200), "2025-12-02T07:32:21.999999Z");
    }

    /// Every hour of a few centuries against `httpdate`'s formatting of the same instant.
    #[test]
    fn timestamps_match_httpdate() {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let mut secs = 0u64;
        while secs < 8_000_000_000 {
            let at = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(42);
            let mut buf = Vec::new();
            timestamp(&mut buf, at);
            let ours = String::from_utf8(buf).unwrap();
            // `Thu, 01 Jan 1970 00:00:00 GMT`
            let http = httpdate::fmt_http_date(at);
            let f: Vec<&str> = http.split([' ', ',']).filter(|s| !s.is_empty()).collect();
            let month = MONTHS.iter().position(|m| *m == f[2]).unwrap() + 1;
            let want = format!("{}-{month:02}-{}T{}.000042Z", f[3], f[1], f[4]);
            assert_eq!(ours, want, "at {secs}");
            secs += 3_599 * 7;
        }
    }
}
