//! Auth plugins written in Python (componentize-py) and JavaScript (componentize-js),
//! built from source by `plugins/build-polyglot.sh` and run through the real gateway binary
//! with no special case in the host.
//!
//! The tests that need the toolchains (componentize-py and componentize-js, which
//! `plugins/build-polyglot.sh` installs from PyPI and npm) are `#[ignore]`d: they run with
//! `cargo test -- --include-ignored`, as `.ci/run` does, and fail if the build fails.

use crate::support::*;
use http_body_util::Full;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where compiled plugins are cached between test runs: the components are 12-18 MB and take
/// 10-20 s to compile the first time.
fn cache_dir() -> PathBuf {
    std::env::temp_dir().join("portcullis-test-wasm-cache")
}

/// The plugin declarations (sized for these large guests).
fn polyglot_plugins(py: &Path, js: &Path) -> String {
    format!(
        "[[plugins]]\nname = \"py-api-key\"\npath = \"{}\"\ntimeout = \"200ms\"\nmemory_limit = \"256MiB\"\n\n\
         [[plugins]]\nname = \"js-bearer\"\npath = \"{}\"\ntimeout = \"200ms\"\nmemory_limit = \"256MiB\"\n",
        py.display(),
        js.display()
    )
}

const ROUTES: &str = r#"
[[routes]]
name = "py"
path_prefix = "/py"
upstream = "up"
plugins = [ { name = "py-api-key", config = { keys = [ { key = "k-py-123", consumer = "alice" } ], header = "x-api-key" } } ]

[[routes]]
name = "js"
path_prefix = "/js"
upstream = "up"
plugins = [ { name = "js-bearer", config = { tokens = { "t-abc" = "carol" } } } ]
"#;

fn gateway_config(upstream: &str, py: &Path, js: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplugin_cache_dir = \"{}\"\n\n[[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"{upstream}\" }}]\n\n{}\n{ROUTES}",
        cache_dir().display(),
        polyglot_plugins(py, js)
    )
}

/// Builds both components once per test process, then compiles them into the on-disk cache
/// with `portcullis validate` (no listener timeout there), so that each gateway started
/// afterwards loads them in about a second.
fn components() -> (PathBuf, PathBuf) {
    static BUILT: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        build_polyglot()?;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("plugins/target/components");
        let (py, js) = (dir.join("python-api-key.wasm"), dir.join("js-bearer.wasm"));
        assert!(
            py.is_file() && js.is_file(),
            "build-polyglot.sh built nothing"
        );

        let tmp = TempDir::new();
        let cfg = tmp.write("warm.toml", &gateway_config("127.0.0.1:9", &py, &js));
        assert_valid(&cfg);
        Ok((py, js))
    });
    match built {
        Ok(p) => p.clone(),
        Err(reason) => panic!(
            "the Python/JavaScript plugin toolchains are unavailable ({reason}): \
             run `bash plugins/build-polyglot.sh` with access to PyPI and npm"
        ),
    }
}

async fn start() -> (Upstream, Gateway) {
    let (py, js) = components();
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&gateway_config(&up.addr.to_string(), &py, &js));
    (up, gw)
}

async fn call(gw: &Gateway, path: &str, header: Option<(&str, &str)>) -> Reply {
    let mut b = req("GET", &gw.url(path)).header("x-portcullis-consumer", "mallory");
    if let Some((k, v)) = header {
        b = b.header(k, v);
    }
    send(&client(), b.body(Full::default()).unwrap()).await
}

fn assert_denied(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {:?}", r.body);
    assert_eq!(r.error_code(), "unauthorized", "{what}: JSON error body");
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs componentize-py (plugins/build-polyglot.sh installs it; .ci/run runs it)"]
async fn python_api_key_plugin_allows_the_right_key_and_denies_others() {
    let (up, gw) = start().await;

    let ok = call(&gw, "/py/x", Some(("x-api-key", "k-py-123"))).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(
        ok.json()["headers"]["x-portcullis-consumer"],
        "alice",
        "the consumer named by the Python plugin reaches the upstream"
    );
    assert_eq!(up.hits(), 1);

    assert_denied(
        &call(&gw, "/py/x", Some(("x-api-key", "k-py-12"))).await,
        "wrong key",
    );
    assert_denied(
        &call(&gw, "/py/x", Some(("x-api-key", "k-py-1234"))).await,
        "longer key",
    );
    assert_denied(&call(&gw, "/py/x", None).await, "missing key");
    assert_eq!(up.hits(), 1, "denied requests never reach the upstream");

    // Warm instances keep working.
    for _ in 0..20 {
        let r = call(&gw, "/py/x", Some(("x-api-key", "k-py-123"))).await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs componentize-js (plugins/build-polyglot.sh installs it; .ci/run runs it)"]
async fn js_bearer_plugin_allows_listed_tokens_and_denies_others() {
    let (up, gw) = start().await;

    let ok = call(&gw, "/js/x", Some(("authorization", "Bearer t-abc"))).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(
        ok.json()["headers"]["x-portcullis-consumer"],
        "carol",
        "the consumer named by the JavaScript plugin reaches the upstream"
    );
    assert_eq!(up.hits(), 1);

    assert_denied(
        &call(&gw, "/js/x", Some(("authorization", "Bearer t-abd"))).await,
        "wrong token",
    );
    assert_denied(
        &call(&gw, "/js/x", Some(("authorization", "Basic t-abc"))).await,
        "not bearer",
    );
    assert_denied(&call(&gw, "/js/x", None).await, "missing token");
    assert_eq!(up.hits(), 1, "denied requests never reach the upstream");

    for _ in 0..20 {
        let r = call(&gw, "/js/x", Some(("authorization", "bearer t-abc"))).await;
        assert_eq!(r.status, 200);
    }
}

#[test]
#[ignore = "needs componentize-py and componentize-js (plugins/build-polyglot.sh installs them; .ci/run runs it)"]
fn bad_config_is_refused_with_the_plugins_words() {
    let (py, js) = components();
    let dir = TempDir::new();
    for (routes, words) in [
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\nplugins = [ { name = \"py-api-key\", config = { keys = [], header = \"x-api-key\" } } ]\n",
            "`keys` is required",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\nplugins = [ { name = \"py-api-key\", config = { keys = [ { key = \"k\" } ], hedaer = \"x\" } } ]\n",
            "unknown config key `hedaer`",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\nplugins = [ { name = \"js-bearer\", config = { tokens = { } } } ]\n",
            "`tokens` is required",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\nplugins = [ { name = \"js-bearer\", config = { tokens = { t = \"x\" }, extra = 1 } } ]\n",
            "unknown config key `extra`",
        ),
    ] {
        let cfg = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nplugin_cache_dir = \"{}\"\n\n[[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"127.0.0.1:9\" }}]\n\n{}\n{routes}",
            cache_dir().display(),
            polyglot_plugins(&py, &js)
        );
        let path = dir.write("bad.toml", &cfg);
        let (ok, text) = validate(&path);
        assert!(!ok, "accepted: {routes}");
        assert!(text.contains(words), "expected {words:?} in: {text}");
    }
}
