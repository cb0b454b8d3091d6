//! Config parsing: keys (HMAC secrets, RSA public keys as PEM or JWK, a JWKS document) and
//! claim requirements. No bindings; unit-tested natively.

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use rsa::BoxedUint;
use rsa::PublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use serde_json::Value;

/// Smallest accepted HMAC secret: RFC 7518 §3.2 wants at least the hash size (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;
/// Accepted RSA modulus sizes, in bits.
pub const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;
/// Largest accepted leeway, in seconds.
pub const MAX_LEEWAY: u64 = 86_400;
/// Leeway when the config gives none, in seconds.
pub const DEFAULT_LEEWAY: u64 = 30;

/// base64url that accepts input with or without padding (JWK members, `secret_base64`).
const B64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const B64STD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// Unpadded base64url, as JWS compact serialisation requires.
pub const B64URL: GeneralPurpose = general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Rs256,
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
        })
    }
}

impl Alg {
    pub fn parse(s: &str) -> Option<Alg> {
        match s {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            _ => None,
        }
    }
}

pub enum Material {
    Hmac(Vec<u8>),
    Rsa(Box<PublicKey>),
}

pub struct Key {
    pub kid: Option<String>,
    pub material: Material,
}

impl Key {
    pub fn alg(&self) -> Alg {
        match self.material {
            Material::Hmac(_) => Alg::Hs256,
            Material::Rsa(_) => Alg::Rs256,
        }
    }
}

/// A validated configuration.
pub struct Config {
    pub keys: Vec<Key>,
    /// Accepted `iss` values; empty: not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (any one suffices); empty: not checked.
    pub audiences: Vec<String>,
    pub leeway: u64,
    pub require_exp: bool,
    /// Lower-case header name.
    pub header: String,
    pub query: Option<String>,
    pub consumer_claim: String,
    pub hide_credentials: bool,
    /// Where to fetch more keys (a JWKS document) through `wasi:http`.
    pub jwks_uri: Option<String>,
    /// The fewest seconds between two fetches of `jwks_uri`.
    pub jwks_refresh: u64,
}

/// The least `jwks_refresh_seconds`.
pub const MIN_JWKS_REFRESH: u64 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    issuer: Option<Value>,
    #[serde(default)]
    audience: Option<Value>,
    #[serde(default)]
    leeway: Option<u64>,
    #[serde(default)]
    require_exp: Option<bool>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    consumer_claim: Option<String>,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    jwks_refresh_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    kid: Option<String>,
    alg: Option<String>,
    secret: Option<String>,
    secret_base64: Option<String>,
    pem: Option<String>,
    jwk: Option<Value>,
}

/// One string or a list of non-empty strings.
fn strings(field: &str, v: Option<Value>) -> Result<Vec<String>, String> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![Value::String(s)],
        Some(Value::Array(a)) => a,
        Some(_) => return Err(format!("`{field}` must be a string or a list of strings")),
    };
    list.into_iter()
        .map(|v| match v {
            Value::String(s) if !s.is_empty() => Ok(s),
            _ => Err(format!(
                "`{field}` must be a string or a list of non-empty strings"
            )),
        })
        .collect()
}

fn hmac_key(kid: Option<String>, secret: Vec<u8>, what: &str) -> Result<Key, String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{what}: the HS256 secret is {} bytes; at least {MIN_SECRET_BYTES} are required",
            secret.len()
        ));
    }
    Ok(Key {
        kid,
        material: Material::Hmac(secret),
    })
}

fn rsa_key(kid: Option<String>, key: PublicKey, what: &str) -> Result<Key, String> {
    let bits = key.size() * 8;
    if !RSA_BITS.contains(&bits) {
        return Err(format!(
            "{what}: RSA key of {bits} bits; {} to {} bits are accepted",
            RSA_BITS.start(),
            RSA_BITS.end()
        ));
    }
    Ok(Key {
        kid,
        material: Material::Rsa(Box::new(key)),
    })
}

fn b64_member(
    jwk: &serde_json::Map<String, Value>,
    name: &str,
    what: &str,
) -> Result<Vec<u8>, String> {
    let s = jwk.get(name).and_then(Value::as_str).ok_or(format!(
        "{what}: member `{name}` (base64url string) is required"
    ))?;
    B64URL_LENIENT
        .decode(s)
        .map_err(|e| format!("{what}: member `{name}` is not base64url: {e}"))
}

/// Parses one JWK. With `strict`, an unsupported key is an error; otherwise (keys from a
/// JWKS document) it is skipped with `Ok(None)`.
fn jwk_key(
    v: &Value,
    kid_override: Option<String>,
    strict: bool,
    what: &str,
) -> Result<Option<Key>, String> {
    let jwk = v
        .as_object()
        .ok_or(format!("{what}: a JWK must be a JSON object"))?;
    let unsupported = |why: String| {
        if strict {
            Err(format!("{what}: {why}"))
        } else {
            Ok(None)
        }
    };
    let kid = match jwk.get("kid") {
        None | Some(Value::Null) => kid_override,
        Some(Value::String(k)) => Some(kid_override.unwrap_or_else(|| k.clone())),
        Some(_) => return Err(format!("{what}: `kid` must be a string")),
    };
    if let Some(u) = jwk.get("use").and_then(Value::as_str)
        && u != "sig"
    {
        return unsupported(format!("key use {u:?} is not \"sig\""));
    }
    let alg = jwk.get("alg").and_then(Value::as_str);
    match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => {
            if alg.is_some_and(|a| a != "RS256") {
                return unsupported(format!(
                    "RSA key with alg {:?}; only RS256 is supported",
                    alg.unwrap_or_default()
                ));
            }
            let n = BoxedUint::from_be_slice_vartime(&b64_member(jwk, "n", what)?);
            let e = BoxedUint::from_be_slice_vartime(&b64_member(jwk, "e", what)?);
            let key = PublicKey::new_with_size_limits(n, e, RSA_BITS).map_err(|e| {
                format!(
                    "{what}: not a usable RSA public key ({e}); {} to {} bits are accepted",
                    RSA_BITS.start(),
                    RSA_BITS.end()
                )
            })?;
            rsa_key(kid, key, what).map(Some)
        }
        Some("oct") => {
            if alg.is_some_and(|a| a != "HS256") {
                return unsupported(format!(
                    "symmetric key with alg {:?}; only HS256 is supported",
                    alg.unwrap_or_default()
                ));
            }
            hmac_key(kid, b64_member(jwk, "k", what)?, what).map(Some)
        }
        Some(other) => unsupported(format!(
            "key type {other:?} is not supported (RSA and oct are)"
        )),
        None => Err(format!("{what}: member `kty` is required")),
    }
}

fn raw_key(i: usize, raw: RawKey) -> Result<Key, String> {
    let what = match &raw.kid {
        Some(k) => format!("keys[{i}] (kid {k:?})"),
        None => format!("keys[{i}]"),
    };
    let given = [
        raw.secret.is_some(),
        raw.secret_base64.is_some(),
        raw.pem.is_some(),
        raw.jwk.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(format!(
            "{what}: give exactly one of `secret`, `secret_base64`, `pem`, `jwk`"
        ));
    }
    if raw.kid.as_deref() == Some("") {
        return Err(format!("{what}: `kid` is empty"));
    }
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(a) => Some(Alg::parse(a).ok_or(format!(
            "{what}: alg {a:?} is not supported (HS256 and RS256 are)"
        ))?),
    };
    let key = if let Some(s) = raw.secret {
        hmac_key(raw.kid, s.into_bytes(), &what)?
    } else if let Some(s) = raw.secret_base64 {
        let bytes = B64URL_LENIENT
            .decode(s.trim())
            .or_else(|_| B64STD_LENIENT.decode(s.trim()))
            .map_err(|e| format!("{what}: `secret_base64` is not base64: {e}"))?;
        hmac_key(raw.kid, bytes, &what)?
    } else if let Some(pem) = raw.pem {
        let key = PublicKey::from_public_key_pem(pem.trim())
            .or_else(|_| PublicKey::from_pkcs1_pem(pem.trim()))
            .map_err(|e| {
                format!("{what}: `pem` is not an RSA public key (\"BEGIN PUBLIC KEY\" or \"BEGIN RSA PUBLIC KEY\"): {e}")
            })?;
        rsa_key(raw.kid, key, &what)?
    } else {
        jwk_key(
            raw.jwk.as_ref().expect("one of four is set"),
            raw.kid,
            true,
            &what,
        )?
        .expect("strict")
    };
    if let Some(a) = alg
        && a != key.alg()
    {
        return Err(format!(
            "{what}: `alg` {a} does not fit the key, which is for {}",
            key.alg()
        ));
    }
    Ok(key)
}

/// The usable keys of a JWKS document (`{"keys": [...]}`); `what` names it in errors.
pub fn jwks_keys(doc: &Value, what: &str) -> Result<Vec<Key>, String> {
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{what}` must be a JWKS document: {{\"keys\": [...]}}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in list.iter().enumerate() {
        if let Some(k) = jwk_key(jwk, None, false, &format!("{what}.keys[{i}]"))? {
            keys.push(k);
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "`{what}` holds no usable key (RSA for RS256 or oct for HS256, use \"sig\")"
        ));
    }
    Ok(keys)
}

impl Config {
    pub fn from_json(json: &str) -> Result<Config, String> {
        let raw: RawConfig = support::parse_config(json)?;
        let mut keys = Vec::new();
        for (i, k) in raw.keys.into_iter().enumerate() {
            keys.push(raw_key(i, k)?);
        }
        if let Some(jwks) = raw.jwks {
            let doc = match jwks {
                Value::String(s) => {
                    serde_json::from_str(&s).map_err(|e| format!("`jwks` is not JSON: {e}"))?
                }
                v => v,
            };
            keys.extend(jwks_keys(&doc, "jwks")?);
        }
        let jwks_uri = match raw.jwks_uri {
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => Some(u),
            Some(_) => return Err("`jwks_uri` must be an http:// or https:// URL".into()),
            None => None,
        };
        let jwks_refresh = raw.jwks_refresh_seconds.unwrap_or(300);
        if jwks_refresh < MIN_JWKS_REFRESH {
            return Err(format!(
                "`jwks_refresh_seconds` must be at least {MIN_JWKS_REFRESH}"
            ));
        }
        if keys.is_empty() && jwks_uri.is_none() {
            return Err(
                "no keys: give `keys` (secret, secret_base64, pem or jwk entries), `jwks` and/or `jwks_uri`"
                    .into(),
            );
        }
        let leeway = raw.leeway.unwrap_or(DEFAULT_LEEWAY);
        if leeway > MAX_LEEWAY {
            return Err(format!(
                "`leeway` is {leeway} seconds; at most {MAX_LEEWAY}"
            ));
        }
        let header = support::config_header_name(
            "`header`",
            raw.header.as_deref().unwrap_or("authorization"),
        )?;
        if support::is_managed_header(&header) {
            return Err(format!("`header`: {header:?} is managed by the gateway"));
        }
        if raw.query.as_deref() == Some("") {
            return Err("`query` must be a non-empty parameter name".into());
        }
        let consumer_claim = raw.consumer_claim.unwrap_or_else(|| "sub".into());
        if consumer_claim.is_empty() {
            return Err("`consumer_claim` must be a non-empty claim name".into());
        }
        Ok(Config {
            keys,
            issuers: strings("issuer", raw.issuer)?,
            audiences: strings("audience", raw.audience)?,
            leeway,
            require_exp: raw.require_exp.unwrap_or(true),
            header,
            query: raw.query,
            consumer_claim,
            hide_credentials: raw.hide_credentials,
            jwks_uri,
            jwks_refresh,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const PEM: &str = include_str!("../testdata/rsa-public.pem");
    pub const PEM_PKCS1: &str = include_str!("../testdata/rsa-public-pkcs1.pem");
    pub const JWKS: &str = include_str!("../testdata/jwks.json");
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn err(json: &str) -> String {
        Config::from_json(json)
            .err()
            .expect("config should be refused")
    }

    #[test]
    fn accepts_every_key_form() {
        let jwks: Value = serde_json::from_str(JWKS).unwrap();
        let cfg = serde_json::json!({
            "keys": [
                {"kid": "h1", "secret": SECRET},
                {"secret_base64": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="},
                {"kid": "r1", "pem": PEM},
                {"kid": "r2", "alg": "RS256", "pem": PEM_PKCS1},
                {"jwk": jwks["keys"][0]},
                {"jwk": {"kty": "oct", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}},
            ],
            "jwks": jwks,
            "issuer": "https://id.example.com",
            "audience": ["a", "b"],
        });
        let c = Config::from_json(&cfg.to_string()).unwrap();
        // Six explicit keys plus the JWKS's RSA key (its EC key is skipped).
        assert_eq!(c.keys.len(), 7);
        assert_eq!(c.keys[4].kid.as_deref(), Some("test-rsa"));
        assert_eq!(c.keys[4].alg(), Alg::Rs256);
        assert_eq!(c.keys[5].alg(), Alg::Hs256);
        assert_eq!(c.issuers, vec!["https://id.example.com"]);
        assert_eq!(c.audiences, vec!["a", "b"]);
        assert_eq!(c.leeway, DEFAULT_LEEWAY);
        assert!(c.require_exp);
        assert_eq!(c.header, "authorization");
        assert_eq!(c.consumer_claim, "sub");
        // A JWKS given as a string works too.
        let c = Config::from_json(&serde_json::json!({ "jwks": JWKS }).to_string()).unwrap();
        assert_eq!(c.keys.len(), 1);
    }

    #[test]
    fn refuses_bad_configs_with_reasons() {
        assert!(err("{}").contains("no keys"));
        assert!(err(r#"{"keys": [{"secret": "short"}]}"#).contains("at least 32"));
        assert!(err(r#"{"keys": [{"pem": "nope"}]}"#).contains("not an RSA public key"));
        assert!(
            err(&format!(
                r#"{{"keys": [{{"secret": "{SECRET}", "pem": "x"}}]}}"#
            ))
            .contains("exactly one")
        );
        assert!(
            err(&format!(
                r#"{{"keys": [{{"alg": "RS256", "secret": "{SECRET}"}}]}}"#
            ))
            .contains("does not fit")
        );
        assert!(
            err(&format!(
                r#"{{"keys": [{{"alg": "ES256", "secret": "{SECRET}"}}]}}"#
            ))
            .contains("not supported")
        );
        assert!(err(r#"{"keys": [{"jwk": {"kty": "EC"}}]}"#).contains("not supported"));
        assert!(
            err(r#"{"keys": [{"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}]}"#).contains("RSA")
        );
        assert!(err(r#"{"jwks": {"keys": [{"kty": "EC"}]}}"#).contains("no usable key"));
        assert!(err(r#"{"jwks": [1]}"#).contains("JWKS document"));
        assert!(
            err(&format!(
                r#"{{"keys": [{{"secret": "{SECRET}"}}], "leeway": -1}}"#
            ))
            .contains("invalid")
        );
        assert!(
            err(&format!(
                r#"{{"keys": [{{"secret": "{SECRET}"}}], "leeway": 999999}}"#
            ))
            .contains("at most")
        );
        assert!(
            err(&format!(
                r#"{{"keys": [{{"secret": "{SECRET}"}}], "audience": 3}}"#
            ))
            .contains("`audience`")
        );
        assert!(
            err(&format!(
                r#"{{"keys": [{{"secret": "{SECRET}"}}], "issuer": [""]}}"#
            ))
            .contains("`issuer`")
        );
        assert!(
            err(&format!(
                r#"{{"keys": [{{"secret": "{SECRET}"}}], "audiences": "a"}}"#
            ))
            .contains("unknown field `audiences`")
        );
        assert!(
            err(&format!(
                r#"{{"keys": [{{"secret": "{SECRET}"}}], "header": "a b"}}"#
            ))
            .contains("header")
        );
    }
}
