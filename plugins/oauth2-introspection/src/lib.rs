//! OAuth2 token introspection (RFC 7662) as an auth plugin.
//!
//! A request's bearer token is sent to the identity provider's introspection endpoint
//! (`POST token=…`, the client credentials as HTTP Basic). An active token lets the
//! request through as the consumer named by its `sub` (else `client_id`); an inactive or
//! expired one is answered 401; an IdP that fails, answers something else than 200 with
//! JSON, or does not answer within `timeout_ms` is answered 503 (`on_idp_error = "allow"`
//! lets the request through without a consumer instead).
//!
//! Active results are cached in the plugin's key-value namespace (`cache`, granted by the
//! gateway's `keyvalue`) under the SHA-256 of the token, until the token's `exp` or
//! `max_cache_ttl` seconds, whichever comes first — so a second request with the same
//! token does not reach the IdP, on any gateway sharing the store. Without a grant the
//! plugin works uncached (and says so once in the log).
//!
//! The gateway must grant the endpoint's origin in `allowed_hosts`.

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The route's `config` table.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `introspection_url = "https://idp.example.com/oauth2/introspect"`
    pub introspection_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// The key-value namespace of the cache (the one the gateway granted).
    #[serde(default = "default_cache")]
    pub cache: String,
    /// Longest a result is cached, in seconds (0: no cache).
    #[serde(default = "default_max_ttl")]
    pub max_cache_ttl: u64,
    /// Longest wait for the IdP, in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// `"deny"` (503) or `"allow"` when the IdP fails.
    #[serde(default)]
    pub on_idp_error: OnIdpError,
}

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnIdpError {
    #[default]
    Deny,
    Allow,
}

fn default_cache() -> String {
    "oauth2-introspection".into()
}
fn default_max_ttl() -> u64 {
    300
}
fn default_timeout() -> u64 {
    2000
}

impl Config {
    pub fn from_json(json: &str) -> Result<Config, String> {
        let c: Config = support::parse_config(json)?;
        if !(c.introspection_url.starts_with("https://")
            || c.introspection_url.starts_with("http://"))
        {
            return Err("introspection_url must be an http:// or https:// URL".into());
        }
        if c.timeout_ms == 0 {
            return Err("timeout_ms must be more than 0".into());
        }
        Ok(c)
    }

    /// `Basic base64(client_id:client_secret)`, each part form-encoded (RFC 6749 §2.3.1).
    pub fn basic_auth(&self) -> String {
        use base64::Engine;
        let pair = format!(
            "{}:{}",
            form_encode(&self.client_id),
            form_encode(&self.client_secret)
        );
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._*".contains(&b) {
            o.push(b as char);
        } else if b == b' ' {
            o.push('+');
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// The cache key of a token: its SHA-256 in hex (tokens themselves are never stored).
pub fn cache_key(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the IdP said about a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Active, for this consumer, until this Unix time (if the IdP said).
    Active {
        consumer: Option<String>,
        exp: Option<u64>,
    },
    Inactive,
    Expired,
}

/// Reads an introspection response body (RFC 7662 §2.2).
pub fn verdict(body: &[u8], now: u64) -> Result<Verdict, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let active = v
        .get("active")
        .and_then(|a| a.as_bool())
        .ok_or("no boolean `active`")?;
    if !active {
        return Ok(Verdict::Inactive);
    }
    let exp = v.get("exp").and_then(|e| e.as_u64());
    if exp.is_some_and(|e| e <= now) {
        return Ok(Verdict::Expired);
    }
    let consumer = ["sub", "client_id"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|s| s.as_str()))
        .map(str::to_string);
    Ok(Verdict::Active { consumer, exp })
}

/// How long to cache an active result, in ms: until `exp`, at most `max_ttl` seconds.
pub fn cache_ttl_ms(exp: Option<u64>, now: u64, max_ttl: u64) -> u64 {
    let max = max_ttl.saturating_mul(1000);
    match exp {
        Some(e) => max.min(e.saturating_sub(now).saturating_mul(1000)),
        None => max,
    }
}

/// The bearer token of an `Authorization` value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(target_arch = "wasm32")]
mod component;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let now = 1000;
        assert_eq!(
            verdict(br#"{"active":true,"sub":"alice","exp":2000}"#, now).unwrap(),
            Verdict::Active {
                consumer: Some("alice".into()),
                exp: Some(2000)
            }
        );
        assert_eq!(
            verdict(br#"{"active":true,"client_id":"svc"}"#, now).unwrap(),
            Verdict::Active {
                consumer: Some("svc".into()),
                exp: None
            }
        );
        assert_eq!(
            verdict(br#"{"active":false}"#, now).unwrap(),
            Verdict::Inactive
        );
        assert_eq!(
            verdict(br#"{"active":true,"exp":999}"#, now).unwrap(),
            Verdict::Expired
        );
        assert!(verdict(b"<html>", now).is_err());
        assert!(verdict(br#"{"active":"yes"}"#, now).is_err());
    }

    #[test]
    fn ttl_and_encoding() {
        assert_eq!(cache_ttl_ms(Some(1010), 1000, 300), 10_000);
        assert_eq!(cache_ttl_ms(Some(9999), 1000, 300), 300_000);
        assert_eq!(cache_ttl_ms(None, 1000, 60), 60_000);
        assert_eq!(form_encode("a b+c/é"), "a+b%2Bc%2F%C3%A9");
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("basic abc"), None);
        assert_eq!(cache_key("x").len(), 64);
    }
}
