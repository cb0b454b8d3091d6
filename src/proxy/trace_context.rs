//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the gateway takes part in
//! the client's trace. A valid `traceparent` keeps its trace id and sampled flag and gets
//! the gateway's own parent id (the span of this hop); `tracestate` goes along unchanged
//! (several fields joined into one). A missing or invalid `traceparent` restarts the
//! trace — new random trace id and parent id, flags `01` — and any `tracestate` is
//! dropped, as the spec asks on restart. The trace id goes into the access log.

use super::headers::Present;
use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `traceparent` as a static (`upstream::call::AddedFields` keeps a reference).
pub static TRACEPARENT_NAME: HeaderName = TRACEPARENT;
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The sampled flag; the only trace flag of version 00 (other bits are sent as zero).
const SAMPLED: u8 = 0x01;
/// The spec's list-member limit of `tracestate`.
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A trace id: 16 bytes, never all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    /// The 32 lowercase hex digits.
    pub fn hex(&self) -> [u8; 32] {
        let mut buf = [0u8; 32];
        hex_into(&self.0, &mut buf);
        buf
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).expect("hex is ASCII"))
    }
}

/// What a valid incoming `traceparent` carries forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// A `traceparent` value's bytes (valid as a header value: lowercase hex and `-`).
pub type Traceparent = [u8; 55];

/// Moves the request's trace context on to this hop: rewrites its `tracestate` in `h`,
/// removes the client's `traceparent`, and returns the trace id of this request and the
/// `traceparent` it goes upstream with (the caller makes it a value and adds it:
/// `RequestCtx::new`, `RequestCtx::own_fields`).
///
/// `present` says which of the two the head has (a name it lacks is not looked up).
pub fn propagate(h: &mut HeaderMap, present: Present) -> (TraceId, Traceparent) {
    let parent = match present.traceparent() {
        true => {
            let mut values = h.get_all(&TRACEPARENT).iter();
            // More than one traceparent field cannot be one valid value.
            match (values.next(), values.next()) {
                (Some(v), None) => parse_traceparent(v.as_bytes()),
                _ => None,
            }
        }
        false => None,
    };
    if present.traceparent() {
        h.remove(&TRACEPARENT);
    }
    let (trace_id, flags) = match parent {
        Some(p) => {
            let state = match present.tracestate() {
                true => tracestate(h),
                false => TraceState::Keep,
            };
            match state {
                TraceState::Keep => {}
                TraceState::Joined(state) => {
                    h.insert(TRACESTATE, state);
                }
                TraceState::Drop => {
                    h.remove(&TRACESTATE);
                }
            }
            (p.trace_id, p.flags & SAMPLED)
        }
        None => {
            if present.tracestate() {
                h.remove(&TRACESTATE);
            }
            (random_nonzero(), SAMPLED)
        }
    };
    let traceparent = format_traceparent(&trace_id, &random_nonzero(), flags);
    (TraceId(trace_id), traceparent)
}

/// Parses a `traceparent` value. Version 00 must be exactly `00-<32 hex>-<16 hex>-<2 hex>`
/// in lowercase; a higher version (not `ff`) is read by the version-00 layout and may go
/// on after the flags only behind a `-`. All-zero ids are invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    match version {
        0xff => return None,
        0x00 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    for (i, b) in parent_id.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        parent_id,
        flags,
    })
}

/// What becomes of the request's `tracestate` under a valid `traceparent`.
enum TraceState {
    /// One valid field (or none): forwarded as it is.
    Keep,
    /// Several fields, joined into one valid list.
    Joined(HeaderValue),
    /// Empty or invalid (bad keys or values, more than 32 members): not forwarded.
    Drop,
}

fn tracestate(h: &HeaderMap) -> TraceState {
    let mut values = h.get_all(&TRACESTATE).iter();
    let Some(first) = values.next() else {
        return TraceState::Keep;
    };
    let Some(second) = values.next() else {
        return match valid_tracestate(first.as_bytes()) {
            true => TraceState::Keep,
            false => TraceState::Drop,
        };
    };
    let mut buf = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(values) {
        buf.push(b',');
        buf.extend_from_slice(v.as_bytes());
    }
    match HeaderValue::from_bytes(&buf) {
        Ok(joined) if valid_tracestate(&buf) => TraceState::Joined(joined),
        _ => TraceState::Drop,
    }
}

/// Whether `v` is a non-empty, valid `tracestate` list.
pub fn valid_tracestate(v: &[u8]) -> bool {
    let mut members = 0;
    let mut keys: [&[u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
    for member in v.split(|&b| b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            continue;
        }
        let Some(eq) = member.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        if members == MAX_TRACESTATE_MEMBERS
            || !valid_key(key)
            || !valid_value(value)
            || keys[..members].contains(&key)
        {
            return false;
        }
        keys[members] = key;
        members += 1;
    }
    members > 0
}

/// `key = (lcalpha / DIGIT) 0*255(keychar)`, `keychar = lcalpha / DIGIT / "_" / "-" / "*"
/// / "/" / "@"` — the current grammar, which accepts every key of the 2021 one
/// (`tenant@system` included), so no vendor's entry is dropped for its spelling.
fn valid_key(key: &[u8]) -> bool {
    (1..=256).contains(&key.len())
        && matches!(key[0], b'a'..=b'z' | b'0'..=b'9')
        && key[1..]
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'))
}

/// `value = 0*255(chr) nblk-chr`: printable ASCII but `,` and `=`, not ending in a space.
fn valid_value(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && value.last() != Some(&b' ')
}

/// Random bytes from the thread's fast generator (`hash::fast_rand`, seeded per thread from
/// the standard library's random keys). Ids must be unique, not secret: OpenTelemetry's
/// SDKs make them with a small non-cryptographic generator too. `rand`'s ChaCha cost ~120
/// instructions per id, two ids per request (callgrind).
fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    while b == [0; N] {
        for chunk in b.chunks_mut(8) {
            chunk.copy_from_slice(&crate::hash::fast_rand().to_le_bytes()[..chunk.len()]);
        }
    }
    b
}

fn format_traceparent(trace_id: &[u8; 16], parent_id: &[u8; 8], flags: u8) -> Traceparent {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(trace_id, &mut buf[3..35]);
    hex_into(parent_id, &mut buf[36..52]);
    hex_into(&[flags], &mut buf[53..55]);
    buf
}

pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    /// Each byte's two lowercase hex digits: one look-up per byte.
    static HEX2: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0; 2]; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = [HEX[b >> 4], HEX[b & 0xf]];
            b += 1;
        }
        t
    };
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&HEX2[usize::from(*b)]);
    }
}

/// Two lowercase hex digits.
fn hex_byte(s: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(d(s[0])? << 4 | d(s[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// `super::propagate` with the names the head has, as `clean_request` notes them,
    /// and the `traceparent` it returns put in the head, as it goes upstream.
    fn propagate(h: &mut HeaderMap) -> TraceId {
        let present = Present::of(h);
        let (id, traceparent) = super::propagate(h, present);
        h.append(TRACEPARENT, HeaderValue::from_bytes(&traceparent).unwrap());
        id
    }

    #[test]
    fn hex_of_every_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 512];
        hex_into(&bytes, &mut out);
        let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    fn parse(s: &str) -> Option<Parent> {
        parse_traceparent(s.as_bytes())
    }

    #[test]
    fn parses_a_valid_traceparent() {
        let p = parse(VALID).unwrap();
        assert_eq!(
            TraceId(p.trace_id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            p.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(p.flags, 1);
        assert_eq!(parse(&VALID.replace("-01", "-00")).unwrap().flags, 0);
    }

    #[test]
    fn rejects_invalid_traceparents() {
        for bad in [
            "",
            "00",
            // all-zero trace id / parent id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // version ff is forbidden
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // uppercase hex anywhere
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            // non-hex, wrong separators, wrong lengths
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            // version 00 has nothing after the flags
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what",
            // a higher version may go on only behind a dash
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{bad:?} must be invalid");
        }
    }

    #[test]
    fn reads_higher_versions_by_the_00_layout() {
        let p = parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-future").unwrap();
        assert_eq!(p.flags, 0x09);
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
    }

    #[test]
    fn keeps_the_trace_id_and_sets_a_new_parent_id() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        h.append(
            TRACESTATE,
            HeaderValue::from_static("rojo=00f067aa0ba902b7"),
        );
        let id = propagate(&mut h);
        assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let out = h.get(&TRACEPARENT).unwrap().to_str().unwrap();
        let p = parse(out).unwrap();
        assert_eq!(p.trace_id, id.0);
        assert_ne!(
            &out[36..52],
            "00f067aa0ba902b7",
            "the gateway's own parent id"
        );
        assert_eq!(&out[53..], "01");
        assert_eq!(h.get_all(&TRACESTATE).iter().count(), 1);
        assert_eq!(
            h.get(&TRACESTATE).unwrap(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
    }

    #[test]
    fn downgrades_higher_versions_and_clears_unknown_flags() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe-x"),
        );
        propagate(&mut h);
        let out = h.get(&TRACEPARENT).unwrap().to_str().unwrap();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-00"), "only the sampled bit is kept: {out}");
        assert_eq!(out.len(), 55);
    }

    #[test]
    fn starts_a_trace_when_absent_or_invalid() {
        for incoming in [
            None,
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(v) = incoming {
                h.insert(TRACEPARENT, HeaderValue::from_static(v));
            }
            h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
            let id = propagate(&mut h);
            let out = h.get(&TRACEPARENT).unwrap().to_str().unwrap();
            let p = parse(out).expect("a valid new traceparent");
            assert_eq!((p.trace_id, p.flags), (id.0, 1));
            assert!(out.starts_with("00-"));
            assert!(
                h.get(&TRACESTATE).is_none(),
                "tracestate is dropped on restart"
            );
        }
        let mut a = HeaderMap::new();
        let mut b = HeaderMap::new();
        assert_ne!(propagate(&mut a), propagate(&mut b), "random trace ids");
    }

    #[test]
    fn two_traceparent_fields_restart_the_trace() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        h.append(TRACEPARENT, HeaderValue::from_static(VALID));
        let id = propagate(&mut h);
        assert_ne!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h.get_all(&TRACEPARENT).iter().count(), 1);
    }

    #[test]
    fn tracestate_validation() {
        for good in [
            "congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            " rojo=1 , , congo=2 ",
            "tenant1@vendor=x",
            "a=  leading spaces kept",
            "k/_-*=v",
            "1starts-with-digit=v",
        ] {
            assert!(valid_tracestate(good.as_bytes()), "{good:?} is valid");
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let too_long_key = format!("{}=v", "k".repeat(257));
        for bad in [
            "",
            " , ",
            "novalue",
            "Upper=v",
            "k=v=w",
            "k=",
            "k=a\tb",
            "dup=1,dup=2",
            "@vendor=x",
            "tenant@Vendor=x",
            &many.join(","),
            &too_long_key,
        ] {
            assert!(!valid_tracestate(bad.as_bytes()), "{bad:?} is invalid");
        }
        assert!(
            valid_tracestate(many[..32].join(",").as_bytes()),
            "32 members are allowed"
        );
    }

    #[test]
    fn invalid_tracestate_is_dropped_with_a_valid_parent() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        h.insert(TRACESTATE, HeaderValue::from_static("Bad Key=1"));
        propagate(&mut h);
        assert!(h.get(&TRACESTATE).is_none());
    }
}
