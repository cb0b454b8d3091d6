//! Path normalization, done once before any route is matched: the normalized path is
//! what is matched *and* forwarded, so no spelling of a path can slip past a route rule.
//!
//! Rules: percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; other
//! escapes are kept with upper-case hex; an encoded `/` (`%2F`), `\` (`%5C`) or NUL (`%00`)
//! and malformed escapes are rejected (400); `//` collapses to `/`; `.` segments vanish
//! and `..` removes the segment before it (never climbing above `/`).

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NormalizeError {
    NotAbsolute,
    BadEscape,
    EncodedSlash,
    EncodedNul,
}

impl fmt::Display for NormalizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NormalizeError::NotAbsolute => "path must start with `/`",
            NormalizeError::BadEscape => "malformed percent-encoding in path",
            NormalizeError::EncodedSlash => "encoded `/` or `\\` in path is not allowed",
            NormalizeError::EncodedNul => "encoded NUL in path is not allowed",
        })
    }
}

impl std::error::Error for NormalizeError {}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes an absolute request path (no query). Borrows when the path is already normal.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, NormalizeError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(NormalizeError::NotAbsolute);
    }
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Decode unreserved escapes, validate the rest.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (h, l) = match (
                bytes.get(i + 1).and_then(|&c| hex(c)),
                bytes.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(NormalizeError::BadEscape),
            };
            let v = h * 16 + l;
            match v {
                b'/' | b'\\' => return Err(NormalizeError::EncodedSlash),
                0 => return Err(NormalizeError::EncodedNul),
                v if is_unreserved(v) => decoded.push(v),
                v => {
                    decoded.push(b'%');
                    decoded.extend_from_slice(format!("{v:02X}").as_bytes());
                }
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    // 2. Remove dot segments and empty segments.
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = decoded[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (idx, seg) in segments.iter().enumerate() {
        match *seg {
            b"." => trailing_slash = idx == last,
            b".." => {
                out.pop();
                trailing_slash = idx == last;
            }
            b"" => trailing_slash = idx == last,
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = Vec::with_capacity(decoded.len());
    for s in &out {
        result.push(b'/');
        result.extend_from_slice(s);
    }
    if trailing_slash || out.is_empty() {
        result.push(b'/');
    }
    // Only ASCII bytes were introduced; non-ASCII bytes came from the valid &str input.
    Ok(Cow::Owned(
        String::from_utf8(result).expect("normalized path stays UTF-8"),
    ))
}

/// Whether a path could change under normalization: an escape, `//`, or a dot segment.
fn needs_work(b: &[u8]) -> bool {
    let n = b.len();
    let mut i = 0;
    while i < n {
        match b[i] {
            b'%' => return true,
            b'/' if i + 1 < n => {
                let next = b[i + 1];
                if next == b'/' {
                    return true;
                }
                if next == b'.' {
                    let after = b.get(i + 2).copied();
                    if matches!(after, None | Some(b'/'))
                        || (after == Some(b'.') && matches!(b.get(i + 3), None | Some(b'/')))
                    {
                        return true;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> String {
        normalize_path(p).unwrap().into_owned()
    }

    #[test]
    fn examples() {
        assert_eq!(n("/"), "/");
        assert_eq!(n("/a/b"), "/a/b");
        assert!(matches!(normalize_path("/a/b").unwrap(), Cow::Borrowed(_)));
        assert_eq!(n("/a//b"), "/a/b");
        assert_eq!(n("//a///b//"), "/a/b/");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/../../../b"), "/b");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/public/%2e%2e/admin"), "/admin");
        assert_eq!(n("/public/%2E%2e/admin"), "/admin");
        assert_eq!(n("/%41%7a"), "/Az");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("/a%c3%a9"), "/a%C3%A9");
        assert_eq!(n("/a/.hidden/..x"), "/a/.hidden/..x");
    }

    #[test]
    fn rejects() {
        assert_eq!(normalize_path("/a%2fb"), Err(NormalizeError::EncodedSlash));
        assert_eq!(normalize_path("/a%2Fb"), Err(NormalizeError::EncodedSlash));
        assert_eq!(normalize_path("/a%5cb"), Err(NormalizeError::EncodedSlash));
        assert_eq!(normalize_path("/a%00"), Err(NormalizeError::EncodedNul));
        assert_eq!(normalize_path("/a%zz"), Err(NormalizeError::BadEscape));
        assert_eq!(normalize_path("/a%4"), Err(NormalizeError::BadEscape));
        assert_eq!(normalize_path("a"), Err(NormalizeError::NotAbsolute));
    }

    proptest! {
        /// Normalizing is idempotent, yields no dot segments or `//`, and stays absolute.
        #[test]
        fn idempotent_and_clean(p in "/[a-zA-Z0-9./%~_-]{0,40}") {
            if let Ok(once) = normalize_path(&p) {
                let once = once.into_owned();
                let twice = normalize_path(&once).unwrap().into_owned();
                prop_assert_eq!(&once, &twice);
                prop_assert!(once.starts_with('/'));
                prop_assert!(!once.contains("//"));
                prop_assert!(!once.split('/').any(|s| s == "." || s == ".."));
            }
        }
    }
}
