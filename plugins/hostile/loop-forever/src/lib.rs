//! `loop-forever`: a hostile auth plugin that never returns (a busy loop). For tests of the
//! host's CPU deadline (`timeout`, epoch interruption): the request must be answered 500 in
//! about the plugin's timeout and the gateway must keep serving.
//!
//! Config: `{"phase": "request" | "configure", "trigger_header": "x-hostile"}` — loop in
//! `authenticate` (default) or already in `configure`; with `trigger_header`, loop only on
//! requests carrying that header and allow the others (setting the request header
//! `x-hostile-instance-calls` to this instance's call count).

#[cfg(target_arch = "wasm32")]
mod component {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use support::hostile::{Config, Phase};

    wit_bindgen::generate!({ world: "auth", path: "../../../wit" });

    static CONFIG: Mutex<Option<Config>> = Mutex::new(None);
    static CALLS: AtomicU64 = AtomicU64::new(0);

    /// Spins forever; `black_box` keeps the optimiser from reasoning about the loop.
    fn spin() -> ! {
        let mut i: u64 = 0;
        loop {
            i = std::hint::black_box(i.wrapping_add(1));
        }
    }

    struct Plugin;

    impl Guest for Plugin {
        fn configure(config: String) -> Result<(), String> {
            let cfg = Config::from_json(&config, &[])?;
            if cfg.phase == Phase::Configure {
                spin();
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
                spin();
            }
            let _ = req.set_header("x-hostile-instance-calls", &calls.to_string());
            AuthDecision::Allow(None)
        }
    }

    export!(Plugin);
}
