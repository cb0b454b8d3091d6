//! The component glue: WIT bindings and the `auth` world's exports.

use std::sync::Mutex;

use crate::keys::{ApiKeys, Outcome, Source};

wit_bindgen::generate!({ world: "auth", path: "../../wit" });

use portcullis::plugin::host::{LogLevel, log};
use portcullis::plugin::types::Reply;

static CONFIG: Mutex<Option<ApiKeys>> = Mutex::new(None);

struct Plugin;

fn deny(keys: &ApiKeys, message: &str) -> AuthDecision {
    AuthDecision::Deny(Reply {
        status: 401,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "www-authenticate".into(),
                format!("ApiKey header=\"{}\"", keys.header),
            ),
        ],
        body: support::error_body("unauthorized", message),
    })
}

impl Guest for Plugin {
    fn configure(config: String) -> Result<(), String> {
        let keys = ApiKeys::from_json(&config)?;
        *CONFIG.lock().unwrap() = Some(keys);
        Ok(())
    }

    fn authenticate(req: &Request) -> AuthDecision {
        let guard = CONFIG.lock().unwrap();
        let keys = guard
            .as_ref()
            .expect("api-key: authenticate called before configure");
        let header = req.header(&keys.header);
        let query = if header.is_none() && keys.query.is_some() {
            req.query()
        } else {
            None
        };
        match keys.decide(header.as_deref(), query.as_deref()) {
            Outcome::Allow(consumer, source) => {
                if keys.hide_credentials {
                    match source {
                        Source::Header => {
                            let _ = req.remove_header(&keys.header);
                        }
                        Source::Query => {
                            let name = keys.query.as_deref().unwrap_or_default();
                            let rest = support::remove_query_param(
                                query.as_deref().unwrap_or_default(),
                                name,
                            );
                            if let Err(e) = req.set_query(rest.as_deref()) {
                                log(
                                    LogLevel::Warn,
                                    &format!("could not hide the API key in the query: {e}"),
                                );
                            }
                        }
                    }
                }
                AuthDecision::Allow(consumer)
            }
            Outcome::Missing => deny(keys, "missing API key"),
            Outcome::Invalid => deny(keys, "invalid API key"),
        }
    }
}

export!(Plugin);
