//! Finding the token in a request and verifying it: signature, then `exp`, `nbf`, `iss`,
//! `aud`. Pure functions of the config, the token and the current time.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rsa::Pkcs1v15Sign;
use rsa::sha2::{Digest, Sha256};
use serde_json::Value;

use crate::config::{Alg, B64URL, Config, Material};

/// Tokens longer than this are refused without further work.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where the token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Header,
    Query,
}

/// Finds the token: in the configured header (for `authorization`, after the `Bearer`
/// scheme; for any other header the whole value, a `Bearer ` prefix being dropped), else in
/// the configured query parameter.
pub fn extract(
    cfg: &Config,
    header: Option<&str>,
    query: Option<&str>,
) -> Option<(String, Source)> {
    if let Some(h) = header {
        let h = h.trim();
        let bearer = h
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .map(|_| h[7..].trim());
        let token = if cfg.header == "authorization" {
            bearer?
        } else {
            bearer.unwrap_or(h)
        };
        return (!token.is_empty()).then(|| (token.to_string(), Source::Header));
    }
    let (name, q) = (cfg.query.as_deref()?, query?);
    let v = String::from_utf8(support::query_param(q, name)?).ok()?;
    (!v.is_empty()).then_some((v, Source::Query))
}

fn json_segment(seg: &str, what: &str) -> Result<serde_json::Map<String, Value>, String> {
    let bytes = B64URL
        .decode(seg)
        .map_err(|_| format!("malformed token: {what} is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(format!("malformed token: {what} is not a JSON object")),
    }
}

fn numeric(claims: &serde_json::Map<String, Value>, name: &str) -> Result<Option<f64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or(format!("malformed token: `{name}` is not a number")),
    }
}

fn signature_ok(material: &Material, input: &[u8], sig: &[u8]) -> bool {
    match material {
        Material::Hmac(secret) => {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
                .expect("HMAC takes any key length");
            mac.update(input);
            mac.verify_slice(sig).is_ok()
        }
        Material::Rsa(key) => key
            .verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input), sig)
            .is_ok(),
    }
}

/// Verifies `token` at time `now` (seconds since the Unix epoch). `Ok` carries the consumer
/// (the `consumer_claim` claim, when it is a string); `Err` a short reason fit for the
/// client.
pub fn verify(cfg: &Config, token: &str, now: u64) -> Result<Option<String>, String> {
    verify_with(cfg, &[], token, now)
}

/// Whether a refusal of [`verify_with`] was for want of a key (no key of the token's
/// algorithm, or none with its `kid`): the one a fresh JWKS could cure.
pub fn wants_key(reason: &str) -> bool {
    reason.starts_with("no ") && reason.contains(" key")
}

/// As [`verify`], with `fetched` (the keys of `jwks_uri`) tried after the config's own.
pub fn verify_with(
    cfg: &Config,
    fetched: &[crate::config::Key],
    token: &str,
    now: u64,
) -> Result<Option<String>, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("token too large".into());
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed token: expected three dot-separated parts".into());
    };
    let header = json_segment(h, "header")?;
    if header.contains_key("crit") {
        return Err("token has critical header parameters, which are not supported".into());
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or("malformed token: no `alg`")?;
    let alg = Alg::parse(alg).ok_or_else(|| format!("algorithm {alg:?} is not accepted"))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err("malformed token: `kid` is not a string".into()),
    };
    let sig = B64URL
        .decode(s)
        .map_err(|_| "malformed token: signature is not base64url")?;
    let input = &token.as_bytes()[..h.len() + 1 + p.len()];

    // Candidate keys: the algorithm must match the key (no HS256 with an RSA key); a token
    // naming a kid is tried against keys with that kid, then keys without one.
    let mut candidates = cfg
        .keys
        .iter()
        .chain(fetched)
        .filter(|k| k.alg() == alg && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid))
        .peekable();
    if candidates.peek().is_none() {
        return Err(match kid {
            Some(k) => format!("no {alg} key with kid {k:?}"),
            None => format!("no {alg} key"),
        });
    }
    if !candidates.any(|k| signature_ok(&k.material, input, &sig)) {
        return Err("invalid signature".into());
    }

    let claims = json_segment(p, "payload")?;
    let now = now as f64;
    let leeway = cfg.leeway as f64;
    match numeric(&claims, "exp")? {
        Some(exp) if now >= exp + leeway => return Err("token expired".into()),
        None if cfg.require_exp => return Err("token has no `exp` claim".into()),
        _ => {}
    }
    if let Some(nbf) = numeric(&claims, "nbf")?
        && now + leeway < nbf
    {
        return Err("token not valid yet".into());
    }
    if !cfg.issuers.is_empty() {
        let iss = claims.get("iss").and_then(Value::as_str);
        if !iss.is_some_and(|i| cfg.issuers.iter().any(|x| x == i)) {
            return Err("issuer not accepted".into());
        }
    }
    if !cfg.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => cfg.audiences.contains(a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| cfg.audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err("audience not accepted".into());
        }
    }
    Ok(claims
        .get(&cfg.consumer_claim)
        .and_then(Value::as_str)
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use rsa::PrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const PEM: &str = include_str!("../testdata/rsa-public.pem");
    const PRIVATE: &str = include_str!("../testdata/rsa-private.pem");
    const OTHER_PRIVATE: &str = include_str!("../testdata/other-private.pem");
    const JWKS: &str = include_str!("../testdata/jwks.json");
    const NOW: u64 = 1_700_000_000;

    fn b64(bytes: &[u8]) -> String {
        B64URL.encode(bytes)
    }

    fn hs256(header: Value, claims: Value, secret: &str) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    }

    fn rs256(header: Value, claims: Value, private_pem: &str) -> String {
        let key = PrivateKey::from_pkcs8_pem(private_pem).unwrap();
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = key
            .sign(
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(input.as_bytes()),
            )
            .unwrap();
        format!("{input}.{}", b64(&sig))
    }

    fn cfg(extra: Value) -> Config {
        let mut c = json!({
            "keys": [{"kid": "h1", "secret": SECRET}, {"kid": "r1", "pem": PEM}],
            "issuer": "https://id.example.com",
            "audience": "my-api",
            "leeway": 30,
        });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Config::from_json(&c.to_string()).unwrap()
    }

    fn good_claims() -> Value {
        json!({"sub": "alice", "iss": "https://id.example.com", "aud": "my-api", "exp": NOW + 60, "nbf": NOW - 60})
    }

    fn with(mut claims: Value, k: &str, v: Value) -> Value {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v;
        }
        claims
    }

    #[test]
    fn hs256_and_rs256_allow_with_consumer() {
        let c = cfg(json!({}));
        let t = hs256(json!({"alg": "HS256", "typ": "JWT"}), good_claims(), SECRET);
        assert_eq!(verify(&c, &t, NOW), Ok(Some("alice".into())));
        let t = rs256(json!({"alg": "RS256", "kid": "r1"}), good_claims(), PRIVATE);
        assert_eq!(verify(&c, &t, NOW), Ok(Some("alice".into())));
        // Without a kid every RS256 key is tried.
        let t = rs256(json!({"alg": "RS256"}), good_claims(), PRIVATE);
        assert_eq!(verify(&c, &t, NOW), Ok(Some("alice".into())));
        // No sub: allowed, no consumer.
        let t = hs256(
            json!({"alg": "HS256"}),
            with(good_claims(), "sub", Value::Null),
            SECRET,
        );
        assert_eq!(verify(&c, &t, NOW), Ok(None));
    }

    #[test]
    fn jwks_keys_verify() {
        let c = Config::from_json(
            &json!({ "jwks": serde_json::from_str::<Value>(JWKS).unwrap() }).to_string(),
        )
        .unwrap();
        let t = rs256(
            json!({"alg": "RS256", "kid": "test-rsa"}),
            good_claims(),
            PRIVATE,
        );
        assert_eq!(verify(&c, &t, NOW), Ok(Some("alice".into())));
        let t = rs256(
            json!({"alg": "RS256", "kid": "other"}),
            good_claims(),
            PRIVATE,
        );
        assert_eq!(
            verify(&c, &t, NOW).unwrap_err(),
            "no RS256 key with kid \"other\""
        );
    }

    #[test]
    fn wrong_signatures_are_refused() {
        let c = cfg(json!({}));
        let t = hs256(
            json!({"alg": "HS256"}),
            good_claims(),
            "another-secret-another-secret-123",
        );
        assert_eq!(verify(&c, &t, NOW).unwrap_err(), "invalid signature");
        let t = rs256(json!({"alg": "RS256"}), good_claims(), OTHER_PRIVATE);
        assert_eq!(verify(&c, &t, NOW).unwrap_err(), "invalid signature");
        // A payload swapped under a valid signature.
        let good = hs256(json!({"alg": "HS256"}), good_claims(), SECRET);
        let evil = b64(with(good_claims(), "sub", json!("root"))
            .to_string()
            .as_bytes());
        let parts: Vec<&str> = good.split('.').collect();
        assert_eq!(
            verify(&c, &format!("{}.{evil}.{}", parts[0], parts[2]), NOW).unwrap_err(),
            "invalid signature"
        );
    }

    #[test]
    fn algorithm_confusion_and_none_are_refused() {
        let c = cfg(json!({}));
        // HS256 signed with the RSA public key's PEM as the secret.
        let t = hs256(json!({"alg": "HS256", "kid": "r1"}), good_claims(), PEM);
        assert!(
            verify(&c, &t, NOW)
                .unwrap_err()
                .contains("no HS256 key with kid")
        );
        let unsigned = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(good_claims().to_string().as_bytes())
        );
        assert_eq!(
            verify(&c, &unsigned, NOW).unwrap_err(),
            "algorithm \"none\" is not accepted"
        );
        let t = hs256(json!({"alg": "HS512"}), good_claims(), SECRET);
        assert!(verify(&c, &t, NOW).unwrap_err().contains("not accepted"));
        let t = hs256(
            json!({"alg": "HS256", "crit": ["exp"]}),
            good_claims(),
            SECRET,
        );
        assert!(verify(&c, &t, NOW).unwrap_err().contains("critical"));
    }

    #[test]
    fn time_claims_with_leeway() {
        let c = cfg(json!({}));
        let tok = |claims| hs256(json!({"alg": "HS256"}), claims, SECRET);
        // exp 10 s ago is inside the 30 s leeway; 31 s ago is not.
        assert!(verify(&c, &tok(with(good_claims(), "exp", json!(NOW - 10))), NOW).is_ok());
        assert_eq!(
            verify(&c, &tok(with(good_claims(), "exp", json!(NOW - 31))), NOW).unwrap_err(),
            "token expired"
        );
        assert!(verify(&c, &tok(with(good_claims(), "nbf", json!(NOW + 10))), NOW).is_ok());
        assert_eq!(
            verify(&c, &tok(with(good_claims(), "nbf", json!(NOW + 31))), NOW).unwrap_err(),
            "token not valid yet"
        );
        assert_eq!(
            verify(&c, &tok(with(good_claims(), "exp", Value::Null)), NOW).unwrap_err(),
            "token has no `exp` claim"
        );
        assert!(
            verify(&c, &tok(with(good_claims(), "exp", json!("soon"))), NOW)
                .unwrap_err()
                .contains("not a number")
        );
        let lax = cfg(json!({"require_exp": false, "leeway": 0}));
        assert!(verify(&lax, &tok(with(good_claims(), "exp", Value::Null)), NOW).is_ok());
        assert_eq!(
            verify(&lax, &tok(with(good_claims(), "exp", json!(NOW))), NOW).unwrap_err(),
            "token expired"
        );
        assert!(verify(&lax, &tok(with(good_claims(), "exp", json!(NOW + 1))), NOW).is_ok());
    }

    #[test]
    fn issuer_and_audience() {
        let c = cfg(json!({"audience": ["x", "my-api"]}));
        let tok = |claims| hs256(json!({"alg": "HS256"}), claims, SECRET);
        assert_eq!(
            verify(
                &c,
                &tok(with(good_claims(), "iss", json!("https://evil"))),
                NOW
            )
            .unwrap_err(),
            "issuer not accepted"
        );
        assert_eq!(
            verify(&c, &tok(with(good_claims(), "iss", Value::Null)), NOW).unwrap_err(),
            "issuer not accepted"
        );
        assert_eq!(
            verify(&c, &tok(with(good_claims(), "aud", json!("other"))), NOW).unwrap_err(),
            "audience not accepted"
        );
        assert_eq!(
            verify(&c, &tok(with(good_claims(), "aud", Value::Null)), NOW).unwrap_err(),
            "audience not accepted"
        );
        assert!(
            verify(
                &c,
                &tok(with(good_claims(), "aud", json!(["z", "my-api"]))),
                NOW
            )
            .is_ok()
        );
        assert!(verify(&c, &tok(with(good_claims(), "aud", json!("x"))), NOW).is_ok());
        let open = Config::from_json(&json!({"keys": [{"secret": SECRET}]}).to_string()).unwrap();
        assert!(
            verify(
                &open,
                &tok(with(good_claims(), "aud", json!("anything"))),
                NOW
            )
            .is_ok()
        );
    }

    #[test]
    fn malformed_tokens() {
        let c = cfg(json!({}));
        for t in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.b.c",
            &format!("{}.x.y", b64(b"[1]")),
        ] {
            assert!(
                verify(&c, t, NOW)
                    .unwrap_err()
                    .starts_with("malformed token"),
                "{t:?}"
            );
        }
        assert_eq!(
            verify(&c, &"a".repeat(MAX_TOKEN_BYTES + 1), NOW).unwrap_err(),
            "token too large"
        );
    }

    #[test]
    fn extraction() {
        let c = cfg(json!({"query": "access_token"}));
        assert_eq!(
            extract(&c, Some("Bearer abc"), None),
            Some(("abc".into(), Source::Header))
        );
        assert_eq!(
            extract(&c, Some("bearer  abc "), None),
            Some(("abc".into(), Source::Header))
        );
        assert_eq!(extract(&c, Some("Basic abc"), Some("access_token=t")), None);
        assert_eq!(extract(&c, Some("Bearer "), None), None);
        assert_eq!(
            extract(&c, None, Some("a=1&access_token=t%2Eu")),
            Some(("t.u".into(), Source::Query))
        );
        assert_eq!(extract(&c, None, None), None);
        let c = cfg(json!({"header": "X-Token"}));
        assert_eq!(
            extract(&c, Some("abc"), None),
            Some(("abc".into(), Source::Header))
        );
        assert_eq!(
            extract(&c, Some("Bearer abc"), None),
            Some(("abc".into(), Source::Header))
        );
        assert_eq!(extract(&c, None, Some("access_token=t")), None);
    }
}
