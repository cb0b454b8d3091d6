//! The component glue: WIT bindings and the `auth` world's exports.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::token::{self, Source};

// The capability world: `jwks_uri` is fetched through wasi:http.
wit_bindgen::generate!({ world: "auth-with-capabilities", path: "../../wit", generate_all });

use portcullis::plugin::host::{LogLevel, log};
use portcullis::plugin::types::Reply;

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

/// The keys of `jwks_uri` as last fetched, and when (Unix seconds) the last fetch was
/// tried. Fetched on the first request, then again only for a token whose key is
/// unknown, and at most once per `jwks_refresh_seconds`: a flood of tokens with forged
/// `kid`s costs the IdP one request per interval per instance.
struct Fetched {
    keys: Vec<crate::config::Key>,
    tried: Option<u64>,
}

static FETCHED: Mutex<Fetched> = Mutex::new(Fetched {
    keys: Vec::new(),
    tried: None,
});

/// Fetches `uri` into `f` if the interval allows; failures are logged and keep the old keys.
fn refresh(f: &mut Fetched, uri: &str, interval: u64, now: u64) {
    if f.tried.is_some_and(|t| now < t.saturating_add(interval)) {
        return;
    }
    f.tried = Some(now);
    let got = fetch::send("GET", uri, &[("accept", "application/json")], None, None)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            if r.status != 200 {
                return Err(format!("answered {}", r.status));
            }
            let doc: serde_json::Value =
                serde_json::from_slice(&r.body).map_err(|e| format!("not JSON: {e}"))?;
            crate::config::jwks_keys(&doc, "jwks_uri")
        });
    match got {
        Ok(keys) => f.keys = keys,
        Err(e) => log(LogLevel::Warn, &format!("jwks_uri {uri}: {e}")),
    }
}

struct Plugin;

fn deny(reason: Option<&str>) -> AuthDecision {
    let challenge = match reason {
        None => "Bearer realm=\"portcullis\"".to_string(),
        Some(r) => format!(
            "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{}\"",
            r.replace(['"', '\\'], "'")
        ),
    };
    AuthDecision::Deny(Reply {
        status: 401,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("www-authenticate".into(), challenge),
        ],
        body: support::error_body("unauthorized", reason.unwrap_or("missing bearer token")),
    })
}

impl Guest for Plugin {
    fn configure(config: String) -> Result<(), String> {
        let cfg = Config::from_json(&config)?;
        *CONFIG.lock().unwrap() = Some(cfg);
        // A new configuration: its jwks_uri is fetched afresh.
        *FETCHED.lock().unwrap() = Fetched {
            keys: Vec::new(),
            tried: None,
        };
        Ok(())
    }

    fn authenticate(req: &Request) -> AuthDecision {
        let guard = CONFIG.lock().unwrap();
        let cfg = guard
            .as_ref()
            .expect("jwt: authenticate called before configure");
        let header = req.header(&cfg.header);
        let query = if header.is_none() && cfg.query.is_some() {
            req.query()
        } else {
            None
        };
        let Some((jwt, source)) = token::extract(cfg, header.as_deref(), query.as_deref()) else {
            return deny(None);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut fetched = FETCHED.lock().unwrap();
        let mut verdict = token::verify_with(cfg, &fetched.keys, &jwt, now);
        if let (Some(uri), Err(reason)) = (&cfg.jwks_uri, &verdict) {
            if token::wants_key(reason) {
                let before = fetched.tried;
                refresh(&mut fetched, uri, cfg.jwks_refresh, now);
                if fetched.tried != before {
                    verdict = token::verify_with(cfg, &fetched.keys, &jwt, now);
                }
            }
        }
        drop(fetched);
        match verdict {
            Ok(consumer) => {
                if cfg.hide_credentials {
                    let hidden = match source {
                        Source::Header => req.remove_header(&cfg.header),
                        Source::Query => {
                            let name = cfg.query.as_deref().unwrap_or_default();
                            req.set_query(
                                support::remove_query_param(
                                    query.as_deref().unwrap_or_default(),
                                    name,
                                )
                                .as_deref(),
                            )
                        }
                    };
                    if let Err(e) = hidden {
                        log(LogLevel::Warn, &format!("could not hide the token: {e}"));
                    }
                }
                AuthDecision::Allow(consumer)
            }
            Err(reason) => {
                log(LogLevel::Debug, &format!("token refused: {reason}"));
                deny(Some(&reason))
            }
        }
    }
}

export!(Plugin);
