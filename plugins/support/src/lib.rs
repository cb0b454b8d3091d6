//! Helpers shared by the Portcullis guest plugins.
//!
//! Everything here is plain Rust with no WIT bindings, so it compiles (and is unit-tested)
//! on the host target as well as on `wasm32-wasip2`.

use serde::de::DeserializeOwned;

/// Headers the gateway manages itself; the host refuses to let a plugin set or remove them.
pub const MANAGED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Parses a plugin's JSON config into `T`, turning serde's error into a message that
/// names the problem and where it is (serde_json reports line and column).
pub fn parse_config<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    serde_json::from_str(json).map_err(|e| format!("invalid config: {e}"))
}

/// The gateway's error body: `{"error": {"code": CODE, "message": MESSAGE}}`.
pub fn error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": { "code": code, "message": message } }))
        .expect("a JSON value always serialises")
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `name` is a valid header field name (a non-empty token).
pub fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_tchar)
}

/// Whether `value` is acceptable as a header value: visible ASCII/UTF-8, spaces and tabs,
/// no CR, LF, NUL or other control characters, and no leading or trailing whitespace.
pub fn is_valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || b == b' ' || (b >= 0x21 && b != 0x7f))
        && value.trim_matches([' ', '\t']) == value
}

pub fn is_managed_header(name: &str) -> bool {
    MANAGED_HEADERS.iter().any(|m| m.eq_ignore_ascii_case(name))
}

/// Checks a header name from a config (any case) and returns it lower-cased, or an error
/// naming `what` (for example "`header`").
pub fn config_header_name(what: &str, name: &str) -> Result<String, String> {
    if !is_valid_header_name(name) {
        return Err(format!("{what}: {name:?} is not a valid header name"));
    }
    Ok(name.to_ascii_lowercase())
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits is kept as is. `+` is kept
/// (it is not decoded to a space).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The decoded value of the first query parameter named `name` (compared after decoding),
/// or None. A parameter without `=` has the empty value.
pub fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name.as_bytes()).then(|| percent_decode(v))
    })
}

/// The query without any parameter named `name`; other parameters are kept byte for byte
/// and in order. None when nothing is left.
pub fn remove_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_decode(k) != name.as_bytes()
        })
        .collect();
    let joined = kept.join("&");
    (!joined.is_empty()).then_some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_and_values() {
        assert!(is_valid_header_name("x-api-key"));
        assert!(!is_valid_header_name(""));
        assert!(!is_valid_header_name("x api"));
        assert!(!is_valid_header_name("x:y"));
        assert!(is_valid_header_value("Bearer abc"));
        assert!(is_valid_header_value(""));
        assert!(!is_valid_header_value("a\r\nb"));
        assert!(!is_valid_header_value("a\0"));
        assert!(!is_valid_header_value(" a"));
        assert!(is_managed_header("Content-Length"));
        assert!(!is_managed_header("x-foo"));
        assert_eq!(config_header_name("h", "X-Api-Key").unwrap(), "x-api-key");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b"), b"a b");
        assert_eq!(percent_decode("a+b"), b"a+b");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
        assert_eq!(percent_decode("%41%"), b"A%");
        assert_eq!(percent_decode("%4"), b"%4");
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("a=1&api_key=k%2D1&b", "api_key").unwrap(),
            b"k-1"
        );
        assert_eq!(query_param("a=1&b", "b").unwrap(), b"");
        assert_eq!(query_param("api%5Fkey=x", "api_key").unwrap(), b"x");
        assert!(query_param("a=1", "api_key").is_none());
        assert_eq!(
            remove_query_param("a=1&api_key=x&b=%20", "api_key").unwrap(),
            "a=1&b=%20"
        );
        assert_eq!(remove_query_param("api_key=x", "api_key"), None);
        assert_eq!(
            remove_query_param("api_key=x&api_key=y&c", "api_key").unwrap(),
            "c"
        );
    }

    #[test]
    fn config_errors_are_readable() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct C {
            a: u32,
        }
        let e = parse_config::<C>(r#"{"b": 1}"#).unwrap_err();
        assert!(e.contains("unknown field `b`"), "{e}");
        assert!(parse_config::<C>(r#"{"a": 1}"#).is_ok());
    }

    #[test]
    fn error_body_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&error_body("unauthorized", "no \"key\"")).unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
        assert_eq!(v["error"]["message"], "no \"key\"");
    }
}

/// Config shared by the hostile test plugins (`plugins/hostile/*`).
pub mod hostile {
    use serde::Deserialize;

    /// When a hostile plugin misbehaves.
    #[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
    #[serde(rename_all = "lowercase")]
    pub enum Phase {
        /// In `authenticate` (the default).
        #[default]
        Request,
        /// Already in `configure`, so loading the config misbehaves.
        Configure,
    }

    /// `{"phase": "request" | "configure", "trigger_header": "x-hostile", "mode": "..."}`;
    /// `mode` is read only by `trap`.
    #[derive(Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        #[serde(default)]
        pub phase: Phase,
        /// When set, misbehave only on requests that carry this header; other requests are
        /// allowed. When unset, misbehave on every request.
        #[serde(default)]
        pub trigger_header: Option<String>,
        #[serde(default)]
        pub mode: Option<String>,
    }

    impl Config {
        pub fn from_json(json: &str, modes: &[&str]) -> Result<Config, String> {
            let c: Config = crate::parse_config(json)?;
            if let Some(h) = &c.trigger_header {
                crate::config_header_name("`trigger_header`", h)?;
            }
            match (&c.mode, modes) {
                (Some(m), []) => return Err(format!("`mode` {m:?}: this plugin has no modes")),
                (Some(m), modes) if !modes.contains(&m.as_str()) => {
                    return Err(format!("`mode` {m:?}: expected one of {modes:?}"));
                }
                _ => {}
            }
            Ok(c)
        }

        /// Whether a request misbehaves, given the value of the trigger header.
        pub fn triggered(&self, header_present: bool) -> bool {
            self.phase == Phase::Request && (self.trigger_header.is_none() || header_present)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn configs() {
            let c = Config::from_json("{}", &[]).unwrap();
            assert!(c.triggered(false));
            let c = Config::from_json(r#"{"trigger_header": "X-Boom"}"#, &[]).unwrap();
            assert!(!c.triggered(false) && c.triggered(true));
            let c = Config::from_json(r#"{"phase": "configure"}"#, &[]).unwrap();
            assert!(!c.triggered(true));
            assert!(Config::from_json(r#"{"phase": "later"}"#, &[]).is_err());
            assert!(
                Config::from_json(r#"{"mode": "x"}"#, &[])
                    .unwrap_err()
                    .contains("no modes")
            );
            assert!(
                Config::from_json(r#"{"mode": "x"}"#, &["panic"])
                    .unwrap_err()
                    .contains("expected one of")
            );
            assert!(Config::from_json(r#"{"mode": "panic"}"#, &["panic"]).is_ok());
            assert!(Config::from_json(r#"{"trigger_header": "a b"}"#, &[]).is_err());
        }
    }
}
