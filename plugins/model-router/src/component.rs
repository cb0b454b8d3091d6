//! The component glue: WIT bindings and the `predicate` world's exports.

use std::sync::Mutex;

use crate::router::{Config, Miss};

wit_bindgen::generate!({ world: "predicate", path: "../../wit" });

use portcullis::plugin::host::{LogLevel, log};

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

struct Plugin;

impl Guest for Plugin {
    fn configure(config: String) -> Result<(), String> {
        let cfg = Config::from_json(&config)?;
        *CONFIG.lock().unwrap() = Some(cfg);
        Ok(())
    }

    fn matches(req: &Request) -> bool {
        let guard = CONFIG.lock().unwrap();
        let cfg = guard
            .as_ref()
            .expect("model-router: matches called before configure");
        let Some(body) = req.body() else {
            log(
                LogLevel::Warn,
                "no request body: set `buffer_request_body` on this route; not matching",
            );
            return false;
        };
        match cfg.check(&body) {
            Ok(()) => true,
            Err(miss) => {
                let why = match miss {
                    Miss::NotJson => "the body is not a JSON object".to_string(),
                    Miss::NoField => format!("the body has no string `{}`", cfg.field),
                    Miss::NoMatch(m) => format!("model {m:?} matches no pattern"),
                };
                log(LogLevel::Debug, &format!("not matching: {why}"));
                false
            }
        }
    }
}

export!(Plugin);
