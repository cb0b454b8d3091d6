//! `{{name}}`: a Portcullis auth plugin (the `auth` world of wit/plugin.wit).
//!
//! Route config (the route's `config` table, handed over as JSON):
//!
//! ```toml
//! plugins = [ { name = "{{name}}", config = { keys = { "k-123" = "alice" }, header = "x-api-key" } } ]
//! ```
//!
//! A request whose `header` holds one of the keys is allowed, with the key's consumer as its
//! identity; anything else gets 401.

use std::sync::Mutex;

wit_bindgen::generate!({ world: "auth", path: "wit" });

use portcullis::plugin::host::{log, LogLevel};
use portcullis::plugin::types::Reply;

struct Config {
    header: String,
    /// (key, consumer)
    keys: Vec<(String, String)>,
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn parse(config: &str) -> Result<Config, String> {
    let v: serde_json::Value = serde_json::from_str(config).map_err(|e| format!("config is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("config must be a table")?;
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "keys" | "header")) {
        return Err(format!("unknown config key `{k}` (expected: keys, header)"));
    }
    let header = match obj.get("header") {
        None => "x-api-key".to_string(),
        Some(h) => h.as_str().filter(|h| !h.is_empty()).ok_or("`header` must be a non-empty string")?.to_ascii_lowercase(),
    };
    let table = obj.get("keys").and_then(|k| k.as_object()).ok_or("`keys` is required: a table of key = consumer")?;
    if table.is_empty() {
        return Err("`keys` must list at least one key".into());
    }
    let mut keys = Vec::new();
    for (key, consumer) in table {
        let consumer = consumer.as_str().ok_or_else(|| format!("the consumer of key `{}…` must be a string", &key[..key.len().min(3)]))?;
        keys.push((key.clone(), consumer.to_string()));
    }
    Ok(Config { header, keys })
}

/// Compares in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn deny(message: &str) -> AuthDecision {
    AuthDecision::Deny(Reply {
        status: 401,
        headers: vec![("content-type".into(), "application/json".into())],
        body: format!(r#"{{"error":{{"code":"unauthorized","message":"{message}"}}}}"#).into_bytes(),
    })
}

struct Plugin;

impl Guest for Plugin {
    fn configure(config: String) -> Result<(), String> {
        *CONFIG.lock().unwrap() = Some(parse(&config)?);
        Ok(())
    }

    fn authenticate(req: &Request) -> AuthDecision {
        let guard = CONFIG.lock().unwrap();
        let cfg = guard.as_ref().expect("configure runs first");
        let Some(given) = req.header(&cfg.header) else {
            return deny("missing API key");
        };
        let mut consumer = None;
        for (key, who) in &cfg.keys {
            if same(key.as_bytes(), given.as_bytes()) {
                consumer = Some(who.clone());
            }
        }
        match consumer {
            Some(c) => AuthDecision::Allow(Some(c)),
            None => {
                log(LogLevel::Debug, "invalid API key");
                deny("invalid API key")
            }
        }
    }
}

export!(Plugin);
