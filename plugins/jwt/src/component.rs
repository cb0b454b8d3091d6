//! The component glue: WIT bindings and the `auth` world's exports.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::token::{self, Source};

wit_bindgen::generate!({ world: "auth", path: "../../wit" });

use portcullis::plugin::host::{LogLevel, log};
use portcullis::plugin::types::Reply;

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

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
        match token::verify(cfg, &jwt, now) {
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
