//! Builds the plugins `portcullis demo` shows (the API-key auth plugin and the model
//! router, from `plugins/`) as WebAssembly components and puts them in `OUT_DIR`, where
//! `src/demo.rs` embeds them: `cargo run --release -- demo` needs no other step.
//!
//! The nested build is `plugins/build.sh` (its own workspace and target directory, so it
//! never waits on this build's lock); when `.ci/run` or a developer built the plugins
//! already it finds nothing to do. If it cannot run (no `wasm32-wasip2` target, no bash),
//! the gateway still builds: the demo then says why it has no plugins and how to fix it.

use std::path::Path;
use std::process::Command;

const PLUGINS: [&str; 2] = ["api-key", "model-router"];

fn main() {
    for p in [
        "plugins/build.sh",
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
        "plugins/support",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    for p in PLUGINS {
        println!("cargo:rerun-if-changed=plugins/{p}");
    }
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let failure = match Command::new("bash")
        .arg("plugins/build.sh")
        .args(PLUGINS)
        // Cargo reads a build script's stdout for instructions: the build talks on stderr.
        .stdout(std::io::stderr())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!(
            "plugins/build.sh {} exited with {s}",
            PLUGINS.join(" ")
        )),
        Err(e) => Some(format!("could not run plugins/build.sh: {e}")),
    };
    for p in PLUGINS {
        let built = Path::new("plugins/target/components").join(format!("{p}.wasm"));
        let embedded = Path::new(&out).join(format!("{p}.wasm"));
        let copied = failure.is_none() && std::fs::copy(&built, &embedded).is_ok();
        if !copied {
            // An empty file: the demo reports the reason below instead of a plugin.
            std::fs::write(&embedded, b"").expect("OUT_DIR is writable");
        }
    }
    let reason = failure.unwrap_or_default();
    if !reason.is_empty() {
        println!("cargo:warning=the demo's plugins were not built: {reason}");
    }
    println!("cargo:rustc-env=PORTCULLIS_DEMO_PLUGINS_ERROR={reason}");
}
