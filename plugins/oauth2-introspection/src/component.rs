//! The component glue: WIT bindings, the cache in `wasi:keyvalue`, the IdP call through
//! `wasi:http`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Config, OnIdpError, Verdict};

wit_bindgen::generate!({ world: "auth-with-capabilities", path: "../../wit", generate_all });

use portcullis::plugin::host::{LogLevel, log};
use portcullis::plugin::keyvalue_ext;
use portcullis::plugin::types::Reply;
use wasi::keyvalue::store;

struct State {
    config: Config,
    /// The cache bucket; None when the namespace is not granted (said once in the log).
    cache: Option<store::Bucket>,
    cache_tried: bool,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn reply(status: u16, code: &str, message: &str) -> AuthDecision {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if status == 401 {
        headers.push((
            "www-authenticate".into(),
            format!("Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{message}\""),
        ));
    }
    AuthDecision::Deny(Reply {
        status,
        headers,
        body: support::error_body(code, message),
    })
}

fn idp_failed(cfg: &Config, why: &str) -> AuthDecision {
    log(LogLevel::Warn, &format!("introspection failed: {why}"));
    match cfg.on_idp_error {
        OnIdpError::Allow => AuthDecision::Allow(None),
        OnIdpError::Deny => reply(
            503,
            "idp_unavailable",
            "the identity provider did not answer",
        ),
    }
}

/// The cached consumer of a token (`""` for an active token without one).
fn cached(bucket: &store::Bucket, key: &str) -> Option<Option<String>> {
    let v = bucket.get(key).ok()??;
    let v: serde_json::Value = serde_json::from_slice(&v).ok()?;
    if v.get("exp")
        .and_then(|e| e.as_u64())
        .is_some_and(|e| e <= now())
    {
        return None;
    }
    Some(
        v.get("consumer")
            .and_then(|c| c.as_str())
            .map(str::to_string),
    )
}

fn introspect(cfg: &Config, token: &str) -> Result<Verdict, String> {
    let body = format!(
        "token={}&token_type_hint=access_token",
        crate::form_encode(token)
    );
    let auth = cfg.basic_auth();
    let resp = fetch::send(
        "POST",
        &cfg.introspection_url,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
            ("authorization", &auth),
        ],
        Some(body.as_bytes()),
        Some(Duration::from_millis(cfg.timeout_ms)),
    )
    .map_err(|e| e.to_string())?;
    if resp.status != 200 {
        return Err(format!("the IdP answered {}", resp.status));
    }
    crate::verdict(&resp.body, now())
}

struct Plugin;

impl Guest for Plugin {
    fn configure(config: String) -> Result<(), String> {
        let config = Config::from_json(&config)?;
        *STATE.lock().unwrap() = Some(State {
            config,
            cache: None,
            cache_tried: false,
        });
        Ok(())
    }

    fn authenticate(req: &Request) -> AuthDecision {
        let mut guard = STATE.lock().unwrap();
        let state = guard.as_mut().expect("configured");
        let Some(token) = req.header("authorization") else {
            return reply(401, "unauthorized", "missing bearer token");
        };
        let Some(token) = crate::bearer(&token) else {
            return reply(401, "unauthorized", "missing bearer token");
        };
        if !state.cache_tried && state.config.max_cache_ttl > 0 {
            state.cache_tried = true;
            match store::open(&state.config.cache) {
                Ok(b) => state.cache = Some(b),
                Err(e) => log(
                    LogLevel::Warn,
                    &format!(
                        "no cache: key-value namespace `{}` not available ({e:?}); every request is introspected",
                        state.config.cache
                    ),
                ),
            }
        }
        let key = crate::cache_key(token);
        if let Some(b) = &state.cache {
            if let Some(consumer) = cached(b, &key) {
                return AuthDecision::Allow(consumer);
            }
        }
        let cfg = &state.config;
        match introspect(cfg, token) {
            Err(why) => idp_failed(cfg, &why),
            Ok(Verdict::Inactive) => reply(401, "unauthorized", "the token is not active"),
            Ok(Verdict::Expired) => reply(401, "unauthorized", "the token has expired"),
            Ok(Verdict::Active { consumer, exp }) => {
                let ttl = crate::cache_ttl_ms(exp, now(), cfg.max_cache_ttl);
                if let (Some(b), true) = (&state.cache, ttl > 0) {
                    let v = serde_json::json!({ "consumer": consumer, "exp": exp });
                    let v = serde_json::to_vec(&v).unwrap();
                    if let Err(e) = keyvalue_ext::set_with_ttl(b, &key, &v, ttl) {
                        log(LogLevel::Warn, &format!("cannot cache: {e:?}"));
                    }
                }
                AuthDecision::Allow(consumer)
            }
        }
    }
}

export!(Plugin);
