//! `portcullis plugin new`: each language's scaffold builds into a component that the
//! gateway runs as an auth plugin (right key 200 with its consumer, anything else 401).

use crate::support::*;
use http_body_util::Full;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `portcullis plugin new`, then `prepare` on the new project, then its build.sh;
/// returns the component.
fn scaffold(
    lang: &str,
    name: &str,
    dir: &TempDir,
    env: &[(&str, String)],
    prepare: impl FnOnce(&Path),
) -> PathBuf {
    let out = Command::new(bin())
        .args(["plugin", "new", "--lang", lang, name, "--dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project = dir.0.join(name);
    prepare(&project);
    let mut build = Command::new("bash");
    build.arg(project.join("build.sh"));
    // A cargo running these tests sets variables meant for itself, not for the scaffold.
    for v in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_MANIFEST_DIR",
    ] {
        build.env_remove(v);
    }
    for (k, v) in env {
        build.env(k, v);
    }
    let status = build.status().unwrap();
    assert!(status.success(), "{lang} scaffold did not build");
    let wasm = project.join(format!("{name}.wasm"));
    assert!(wasm.is_file());
    wasm
}

/// A language's toolchain, installed by `plugins/build-polyglot.sh LANG`; the test fails
/// without it.
fn require_toolchain(lang: &'static str) {
    if let Err(reason) = build_polyglot(lang) {
        panic!("the {lang} plugin toolchain is unavailable: {reason}");
    }
}

async fn check(wasm: &Path, config: &str, good: (&str, &str), consumer: &str) {
    let up = Upstream::echo("up").await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplugin_cache_dir = \"{cache}\"\n\n[[plugins]]\nname = \"p\"\npath = \"{wasm}\"\ntimeout = \"500ms\"\nmemory_limit = \"256MiB\"\n\n[[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"{up}\" }}]\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\nplugins = [ {{ name = \"p\", config = {config} }} ]\n",
        cache = std::env::temp_dir().join("portcullis-test-wasm-cache").display(),
        wasm = wasm.display(),
        up = up.addr,
    );
    // Compile (and cache) before starting, so startup is quick.
    let dir = TempDir::new();
    let path = dir.write("c.toml", &text);
    assert_valid(&path);
    let gw = Gateway::start(&text);
    let c = client();
    let r = send(
        &c,
        req("GET", &gw.url("/x"))
            .header(good.0, good.1)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["headers"]["x-portcullis-consumer"], consumer);
    let r = send(
        &c,
        req("GET", &gw.url("/x"))
            .header(good.0, "wrong")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = send(&c, req("GET", &gw.url("/x")).body(Full::default()).unwrap()).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_scaffold_builds_and_authenticates() {
    let dir = TempDir::new();
    let wasm = scaffold("rust", "my-auth", &dir, &[], |_| {});
    check(
        &wasm,
        "{ keys = { \"k-123\" = \"alice\" } }",
        ("x-api-key", "k-123"),
        "alice",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs componentize-py (plugins/build-polyglot.sh installs it; .ci/run runs it)"]
async fn python_scaffold_builds_and_authenticates() {
    require_toolchain("python");
    let dir = TempDir::new();
    let cpy = root()
        .join("plugins/target/venv/bin/componentize-py")
        .display()
        .to_string();
    let wasm = scaffold(
        "python",
        "py-auth",
        &dir,
        &[("COMPONENTIZE_PY", cpy)],
        |_| {},
    );
    check(
        &wasm,
        "{ keys = [ { key = \"k-9\", consumer = \"bob\" } ] }",
        ("x-api-key", "k-9"),
        "bob",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs componentize-js (plugins/build-polyglot.sh installs it; .ci/run runs it)"]
async fn js_scaffold_builds_and_authenticates() {
    require_toolchain("js");
    let dir = TempDir::new();
    // Reuse the pinned componentize-js install instead of downloading it again.
    let wasm = scaffold("js", "js-auth", &dir, &[], |project| {
        std::os::unix::fs::symlink(
            root().join("plugins/js/bearer/node_modules"),
            project.join("node_modules"),
        )
        .unwrap();
    });
    check(
        &wasm,
        "{ tokens = { \"t-1\" = \"carol\" } }",
        ("authorization", "Bearer t-1"),
        "carol",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs clang, wasi-libc, wit-bindgen, wasm-tools (see .ci/run)"]
async fn c_scaffold_builds_and_authenticates() {
    require_toolchain("c");
    let dir = TempDir::new();
    // wit-bindgen and wasm-tools on PATH, as a C author would have them; clang and the
    // WASI sysroot are the system's; the adapter is the one the scaffold wrote.
    let path = format!(
        "{}:{}",
        root().join("plugins/target/c/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let wasm = scaffold("c", "c-auth", &dir, &[("PATH", path)], |project| {
        assert!(project
            .join("wasi_snapshot_preview1.reactor.wasm")
            .is_file());
    });
    check(
        &wasm,
        "{ keys = [ { key = \"k-7\", consumer = \"dana\" } ] }",
        ("x-api-key", "k-7"),
        "dana",
    )
    .await;
}
