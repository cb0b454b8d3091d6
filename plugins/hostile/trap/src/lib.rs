//! `trap`: a hostile auth plugin that traps. For tests of trap handling: the request must
//! be answered 500 (or let through with `on_error = "allow"`) and the instance replaced.
//!
//! Config: `{"mode": "panic" | "unreachable", "phase": "request" | "configure",
//! "trigger_header": "x-hostile"}`. `panic` (default) panics (a Rust panic aborts: the
//! message goes to stderr, then `unreachable`); `unreachable` executes the `unreachable`
//! instruction directly. With `trigger_header`, requests without the header are allowed and
//! get the request header `x-hostile-instance-calls` set to this instance's call count, so
//! a test can see that the instance after a trap is a fresh one (the count restarts at 1).

#[cfg(target_arch = "wasm32")]
mod component {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use support::hostile::{Config, Phase};

    wit_bindgen::generate!({ world: "auth", path: "../../../wit" });

    static CONFIG: Mutex<Option<Config>> = Mutex::new(None);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    const MODES: &[&str] = &["panic", "unreachable"];

    fn trap(mode: Option<&str>) -> ! {
        match mode {
            Some("unreachable") => core::arch::wasm32::unreachable(),
            _ => panic!("trap plugin: deliberate panic"),
        }
    }

    struct Plugin;

    impl Guest for Plugin {
        fn configure(config: String) -> Result<(), String> {
            let cfg = Config::from_json(&config, MODES)?;
            if cfg.phase == Phase::Configure {
                trap(cfg.mode.as_deref());
            }
            *CONFIG.lock().unwrap() = Some(cfg);
            Ok(())
        }

        fn authenticate(req: &Request) -> AuthDecision {
            let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
            let guard = CONFIG.lock().unwrap();
            let cfg = guard.as_ref().expect("configured");
            let present = cfg
                .trigger_header
                .as_deref()
                .is_some_and(|h| req.header(h).is_some());
            if cfg.triggered(present) {
                trap(cfg.mode.as_deref());
            }
            let _ = req.set_header("x-hostile-instance-calls", &calls.to_string());
            AuthDecision::Allow(None)
        }
    }

    export!(Plugin);
}
