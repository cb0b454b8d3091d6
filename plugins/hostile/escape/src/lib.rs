//! `escape`: a hostile auth plugin that tries to reach outside its sandbox and reports what
//! it got. It always denies with 403 and a JSON report as the body (and logs the same
//! report at `warn`), so a test can assert that nothing leaked:
//!
//! ```json
//! {"escaped": false,
//!  "probes": {"read_file": {"leaked": false, "detail": "error: ..."}, "env_home": {...}, ...}}
//! ```
//!
//! Probes: read `/etc/passwd`, the env var `HOME`, the number of env vars, the program
//! arguments, list `/`, write `/tmp/portcullis-escape`, open a TCP connection to
//! 127.0.0.1:1. `escaped` is true when any probe got something it should not have. It also
//! prints `escape-plugin: stdout marker` to stdout and `escape-plugin: stderr marker` to
//! stderr, so a test can check that guest output reaches the gateway log.
//!
//! Config: `{"phase": "request" | "configure", "trigger_header": "x-hostile"}` — probe on
//! every request (default), or only on requests with the trigger header (others are
//! allowed), or already in `configure` (the report is then only logged).

use serde_json::{Value, json};

fn probe(leaked: bool, detail: String) -> Value {
    json!({ "leaked": leaked, "detail": detail })
}

/// Runs every probe and returns the report.
pub fn report() -> Value {
    let read_file = match std::fs::read_to_string("/etc/passwd") {
        Ok(s) => probe(
            true,
            format!(
                "read {} bytes; first line {:?}",
                s.len(),
                s.lines().next().unwrap_or("")
            ),
        ),
        Err(e) => probe(false, format!("error: {e}")),
    };
    let env_home = match std::env::var("HOME") {
        Ok(v) => probe(true, format!("HOME={v}")),
        Err(e) => probe(false, format!("error: {e}")),
    };
    let n = std::env::vars_os().count();
    let env_count = probe(n > 0, format!("{n} variables"));
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args = probe(!args.is_empty(), format!("{args:?}"));
    let list_root = match std::fs::read_dir("/") {
        Ok(rd) => probe(true, format!("{} entries", rd.count())),
        Err(e) => probe(false, format!("error: {e}")),
    };
    let write_file = match std::fs::write("/tmp/portcullis-escape", b"escaped") {
        Ok(()) => probe(true, "wrote /tmp/portcullis-escape".into()),
        Err(e) => probe(false, format!("error: {e}")),
    };
    let tcp = match std::net::TcpStream::connect("127.0.0.1:1") {
        Ok(_) => probe(true, "connected to 127.0.0.1:1".into()),
        // Refused means the socket was allowed to try: that is a leak too.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            probe(true, format!("connect attempted: {e}"))
        }
        Err(e) => probe(false, format!("error: {e}")),
    };
    let probes = json!({
        "read_file": read_file,
        "env_home": env_home,
        "env_count": env_count,
        "args": args,
        "list_root": list_root,
        "write_file": write_file,
        "tcp_connect": tcp,
    });
    let escaped = probes
        .as_object()
        .unwrap()
        .values()
        .any(|p| p["leaked"] == true);
    json!({ "escaped": escaped, "probes": probes })
}

#[cfg(test)]
mod tests {
    #[test]
    fn report_shape() {
        // Natively nothing is sandboxed, so at least the file read leaks (on Unix).
        let r = super::report();
        assert_eq!(r["probes"].as_object().unwrap().len(), 7);
        assert!(r["escaped"].is_boolean());
        for p in r["probes"].as_object().unwrap().values() {
            assert!(p["leaked"].is_boolean() && p["detail"].is_string());
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use support::hostile::{Config, Phase};

    wit_bindgen::generate!({ world: "auth", path: "../../../wit" });

    use portcullis::plugin::host::{LogLevel, log};
    use portcullis::plugin::types::Reply;

    static CONFIG: Mutex<Option<Config>> = Mutex::new(None);
    static CALLS: AtomicU64 = AtomicU64::new(0);

    fn run() -> serde_json::Value {
        println!("escape-plugin: stdout marker");
        eprintln!("escape-plugin: stderr marker");
        let r = super::report();
        log(LogLevel::Warn, &format!("escape report: {r}"));
        r
    }

    struct Plugin;

    impl Guest for Plugin {
        fn configure(config: String) -> Result<(), String> {
            let cfg = Config::from_json(&config, &[])?;
            if cfg.phase == Phase::Configure {
                run();
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
            if !cfg.triggered(present) {
                let _ = req.set_header("x-hostile-instance-calls", &calls.to_string());
                return AuthDecision::Allow(None);
            }
            let r = run();
            AuthDecision::Deny(Reply {
                status: 403,
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("x-escape-escaped".into(), r["escaped"].to_string()),
                ],
                body: r.to_string().into_bytes(),
            })
        }
    }

    export!(Plugin);
}
