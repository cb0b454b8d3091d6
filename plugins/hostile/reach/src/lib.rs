//! A test plugin (auth role) that reaches for one capability per request and answers with
//! what it got, as `200 {"outcome": ...}` (a deny with status 200, so the upstream is
//! never involved):
//!
//! - `{"fetch": URL}`: a GET of URL through `wasi:http`; the outcome is `"status N"` or
//!   the error (`"denied"`, `"timed out"`, …). Every request makes the call again.
//! - `{"kv": NAMESPACE, "key": KEY}`: opens the bucket NAMESPACE and increments KEY; the
//!   outcome is `"value N"` or the error (`"access-denied"`, …).
//!
//! For the gateway's capability tests only: never deploy.

use serde::Deserialize;

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub fetch: Option<String>,
    pub kv: Option<String>,
    #[serde(default)]
    pub key: String,
}

#[cfg(target_arch = "wasm32")]
mod component {
    use super::Config;
    use std::sync::Mutex;

    wit_bindgen::generate!({ world: "auth-with-capabilities", path: "../../../wit", generate_all });

    use portcullis::plugin::types::Reply;
    use wasi::keyvalue::{atomics, store};

    static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

    fn outcome(cfg: &Config) -> String {
        if let Some(url) = &cfg.fetch {
            return match fetch::send("GET", url, &[], None, None) {
                Ok(r) => format!("status {}", r.status),
                Err(fetch::FetchError::Denied) => "denied".into(),
                Err(fetch::FetchError::Timeout) => "timed out".into(),
                Err(e) => format!("error {e}"),
            };
        }
        if let Some(ns) = &cfg.kv {
            return match store::open(ns) {
                Err(store::Error::AccessDenied) => "access-denied".into(),
                Err(e) => format!("error {e:?}"),
                Ok(b) => match atomics::increment(&b, &cfg.key, 1) {
                    Ok(v) => format!("value {v}"),
                    Err(e) => format!("error {e:?}"),
                },
            };
        }
        "nothing to do".into()
    }

    struct Plugin;

    impl Guest for Plugin {
        fn configure(config: String) -> Result<(), String> {
            let cfg: Config = support::parse_config(&config)?;
            *CONFIG.lock().unwrap() = Some(cfg);
            Ok(())
        }

        fn authenticate(_req: &Request) -> AuthDecision {
            let cfg = CONFIG.lock().unwrap().clone().expect("configured");
            let body = serde_json::json!({ "outcome": outcome(&cfg) });
            AuthDecision::Deny(Reply {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: serde_json::to_vec(&body).unwrap(),
            })
        }
    }

    export!(Plugin);
}
