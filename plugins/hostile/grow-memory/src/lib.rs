//! `grow-memory`: a hostile auth plugin that allocates without bound (1 MiB at a time,
//! touching every page and never freeing) until the allocator fails, which aborts (traps).
//! For tests of the host's `memory_limit`: the request must be answered 500 and the gateway
//! must stay up with its own memory in check.
//!
//! Config: `{"phase": "request" | "configure", "trigger_header": "x-hostile"}` — as for
//! `loop-forever`.

#[cfg(target_arch = "wasm32")]
mod component {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use support::hostile::{Config, Phase};

    wit_bindgen::generate!({ world: "auth", path: "../../../wit" });

    use portcullis::plugin::host::{LogLevel, log};

    static CONFIG: Mutex<Option<Config>> = Mutex::new(None);
    static CALLS: AtomicU64 = AtomicU64::new(0);

    fn grow() -> ! {
        log(LogLevel::Info, "grow-memory: allocating without bound");
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            for page in chunk.chunks_mut(4096) {
                page[0] = 1;
            }
            hoard.push(std::hint::black_box(chunk));
        }
    }

    struct Plugin;

    impl Guest for Plugin {
        fn configure(config: String) -> Result<(), String> {
            let cfg = Config::from_json(&config, &[])?;
            if cfg.phase == Phase::Configure {
                grow();
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
                grow();
            }
            let _ = req.set_header("x-hostile-instance-calls", &calls.to_string());
            AuthDecision::Allow(None)
        }
    }

    export!(Plugin);
}
