//! The component glue: WIT bindings and the `transform` world's exports.

use std::sync::Mutex;

use crate::rules::{Config, Headers};

wit_bindgen::generate!({ world: "transform", path: "../../wit" });

use portcullis::plugin::host::{LogLevel, log};

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

struct Plugin;

impl Headers for Request {
    fn all(&self) -> Vec<(String, String)> {
        self.headers()
    }
    fn set(&self, name: &str, value: &str) -> Result<(), String> {
        self.set_header(name, value)
    }
    fn append(&self, name: &str, value: &str) -> Result<(), String> {
        self.append_header(name, value)
    }
    fn remove(&self, name: &str) -> Result<(), String> {
        self.remove_header(name)
    }
}

impl Headers for Response {
    fn all(&self) -> Vec<(String, String)> {
        self.headers()
    }
    fn set(&self, name: &str, value: &str) -> Result<(), String> {
        self.set_header(name, value)
    }
    fn append(&self, name: &str, value: &str) -> Result<(), String> {
        self.append_header(name, value)
    }
    fn remove(&self, name: &str) -> Result<(), String> {
        self.remove_header(name)
    }
}

fn warn(message: String) {
    log(LogLevel::Warn, &message);
}

impl Guest for Plugin {
    fn configure(config: String) -> Result<(), String> {
        let cfg = Config::from_json(&config)?;
        *CONFIG.lock().unwrap() = Some(cfg);
        Ok(())
    }

    fn declare_hooks() -> Hooks {
        let guard = CONFIG.lock().unwrap();
        let cfg = guard
            .as_ref()
            .expect("headers: declare-hooks called before configure");
        let mut hooks = Hooks::empty();
        if !cfg.request.is_empty() {
            hooks |= Hooks::ON_REQUEST;
        }
        if !cfg.response.is_empty() {
            hooks |= Hooks::ON_RESPONSE;
        }
        hooks
    }

    fn on_request(req: &Request) -> RequestAction {
        if let Some(cfg) = CONFIG.lock().unwrap().as_ref() {
            cfg.request.apply(req, &mut warn);
        }
        RequestAction::Proceed
    }

    fn on_response(_req: &Request, resp: &Response) {
        if let Some(cfg) = CONFIG.lock().unwrap().as_ref() {
            cfg.response.apply(resp, &mut warn);
        }
    }
}

export!(Plugin);
