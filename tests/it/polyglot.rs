//! Auth plugins written in Python (componentize-py), JavaScript (componentize-js) and C
//! (clang, wasi-libc, wit-bindgen), built from source by `plugins/build-polyglot.sh` and
//! run through the real gateway binary with no special case in the host.
//!
//! The tests that need the toolchains (componentize-py and componentize-js, which
//! `plugins/build-polyglot.sh` installs from PyPI and npm; for C the Debian packages that
//! `.ci/run` installs, and wit-bindgen and wasm-tools, which the script installs) are
//! `#[ignore]`d: they run with `cargo test -- --include-ignored`, as `.ci/run` does, and
//! fail if the build fails.

use crate::support::*;
use http_body_util::Full;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where compiled plugins are cached between test runs: the components are 12-18 MB and take
/// 10-20 s to compile the first time.
fn cache_dir() -> PathBuf {
    std::env::temp_dir().join("portcullis-test-wasm-cache")
}

/// The Python and JavaScript components.
#[derive(Clone)]
struct Components {
    py: PathBuf,
    py_hmac: PathBuf,
    js: PathBuf,
}

/// The plugin declarations (sized for these large guests).
fn polyglot_plugins(c: &Components) -> String {
    let mut text = String::new();
    for (name, path) in [
        ("py-api-key", &c.py),
        ("py-hmac", &c.py_hmac),
        ("js-bearer", &c.js),
    ] {
        text += &format!(
            "[[plugins]]\nname = \"{name}\"\npath = \"{}\"\ntimeout = \"200ms\"\nmemory_limit = \"256MiB\"\n\n",
            path.display()
        );
    }
    text
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

[[routes]]
name = "py-hmac"
path_prefix = "/sig"
upstream = "up"
plugins = [ { name = "py-hmac", config = { secret = "s3cret", consumer = "billing" } } ]
"#;

fn gateway_config(upstream: &str, c: &Components) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplugin_cache_dir = \"{}\"\n\n[[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"{upstream}\" }}]\n\n{}\n{ROUTES}",
        cache_dir().display(),
        polyglot_plugins(c)
    )
}

fn component(file: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins/target/components")
        .join(file);
    assert!(path.is_file(), "build-polyglot.sh did not build {file}");
    path
}

/// Builds the components once per test process, then compiles them into the on-disk cache
/// with `portcullis validate` (no listener timeout there), so that each gateway started
/// afterwards loads them in about a second.
fn components() -> Components {
    static BUILT: OnceLock<Result<Components, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        build_polyglot("python")?;
        build_polyglot("js")?;
        let c = Components {
            py: component("python-api-key.wasm"),
            py_hmac: component("python-hmac-signature.wasm"),
            js: component("js-bearer.wasm"),
        };
        let tmp = TempDir::new();
        let cfg = tmp.write("warm.toml", &gateway_config("127.0.0.1:9", &c));
        assert_valid(&cfg);
        Ok(c)
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
    let c = components();
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&gateway_config(&up.addr.to_string(), &c));
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

/// The HMAC-SHA256 signature the Python `hmac-signature` plugin expects for `message`.
fn signature(message: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(message.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// `hmac.new(secret, message, hashlib.sha256)` runs at request time in a Python plugin.
/// The standard library imports `warnings` inside that call; the plugin imports it at its
/// top so that componentize-py puts it in the component (without that line every request
/// here was a 500: ModuleNotFoundError).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs componentize-py (plugins/build-polyglot.sh installs it; .ci/run runs it)"]
async fn python_plugin_computes_an_hmac_per_request() {
    let (up, gw) = start().await;

    let path = "/sig/v1/models?limit=2";
    let ok = call(
        &gw,
        path,
        Some(("x-signature", &signature("GET /sig/v1/models?limit=2"))),
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.json()["headers"]["x-portcullis-consumer"], "billing");
    assert_eq!(up.hits(), 1);

    let other = signature("GET /sig/v1/models?limit=3");
    let r = call(&gw, path, Some(("x-signature", &other))).await;
    assert_denied(&r, "signature of another request");
    assert_eq!(r.json()["error"]["message"], "invalid signature");
    let r = call(&gw, path, None).await;
    assert_denied(&r, "no signature");
    assert_eq!(r.json()["error"]["message"], "missing signature");
    assert_eq!(up.hits(), 1, "denied requests never reach the upstream");
}

#[test]
#[ignore = "needs componentize-py and componentize-js (plugins/build-polyglot.sh installs them; .ci/run runs it)"]
fn bad_config_is_refused_with_the_plugins_words() {
    let c = components();
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
            polyglot_plugins(&c)
        );
        let path = dir.write("bad.toml", &cfg);
        let (ok, text) = validate(&path);
        assert!(!ok, "accepted: {routes}");
        assert!(text.contains(words), "expected {words:?} in: {text}");
    }
}

/// The C plugin, built once per test process (`plugins/build-polyglot.sh c`).
fn c_api_key() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        build_polyglot("c")?;
        Ok(component("c-api-key.wasm"))
    });
    match built {
        Ok(p) => p.clone(),
        Err(reason) => panic!(
            "the C plugin toolchain is unavailable ({reason}): install clang, lld, wasi-libc \
             and libclang-rt-14-dev-wasm32 and run `bash plugins/build-polyglot.sh c`"
        ),
    }
}

/// A gateway with the C plugin on `/c` (header `x-api-key`) and `/hide` (header `x-key`,
/// removed before forwarding). The plugin gets the default limits: it needs no more.
fn c_config(upstream: &str, wasm: &Path, config: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[plugins]]\nname = \"c-api-key\"\npath = \"{}\"\n\n\
         [[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"{upstream}\" }}]\n\n\
         [[routes]]\nname = \"c\"\npath_prefix = \"/c\"\nupstream = \"up\"\n\
         plugins = [ {{ name = \"c-api-key\", config = {config} }} ]\n\n\
         [[routes]]\nname = \"hide\"\npath_prefix = \"/hide\"\nupstream = \"up\"\n\
         plugins = [ {{ name = \"c-api-key\", config = {{ keys = [ {{ key = \"k-h\", consumer = \"frank\" }} ], header = \"X-Key\", hide_credentials = true }} }} ]\n",
        wasm.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs clang, wasi-libc, wit-bindgen, wasm-tools (see .ci/run)"]
async fn c_api_key_plugin_allows_the_right_key_and_denies_others() {
    let wasm = c_api_key();
    let up = Upstream::echo("up").await;
    let keys = r#"{ keys = [ { key = "k-c-123", consumer = "erin" }, "k-c-anon" ] }"#;
    let gw = Gateway::start(&c_config(&up.addr.to_string(), &wasm, keys));

    // `call` also sends a forged `x-portcullis-consumer: mallory`.
    let ok = call(&gw, "/c/x", Some(("x-api-key", "k-c-123"))).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let seen = ok.json();
    assert_eq!(
        seen["headers"]["x-portcullis-consumer"], "erin",
        "the consumer named by the C plugin reaches the upstream"
    );
    assert_eq!(
        seen["headers"]["x-api-key"], "k-c-123",
        "not hidden by default"
    );

    let anon = call(&gw, "/c/x", Some(("x-api-key", "k-c-anon"))).await;
    assert_eq!(anon.status, 200, "{:?}", anon.body);
    assert!(
        anon.json()["headers"]
            .get("x-portcullis-consumer")
            .is_none(),
        "a key without a consumer is anonymous, and the forged consumer is gone"
    );
    assert_eq!(up.hits(), 2);

    for (key, what) in [
        ("k-c-12", "shorter key"),
        ("k-c-1234", "longer key"),
        ("K-C-123", "other case"),
    ] {
        let r = call(&gw, "/c/x", Some(("x-api-key", key))).await;
        assert_denied(&r, what);
        assert_eq!(r.json()["error"]["message"], "invalid API key", "{what}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("ApiKey header=\"x-api-key\""),
            "{what}"
        );
    }
    let r = call(&gw, "/c/x", None).await;
    assert_denied(&r, "missing key");
    assert_eq!(r.json()["error"]["message"], "missing API key");
    assert_eq!(up.hits(), 2, "denied requests never reach the upstream");

    // hide_credentials: the plugin removes the header through the host.
    let hidden = call(&gw, "/hide/x", Some(("x-key", "k-h"))).await;
    assert_eq!(hidden.status, 200, "{:?}", hidden.body);
    let seen = hidden.json();
    assert_eq!(seen["headers"]["x-portcullis-consumer"], "frank");
    assert!(
        seen["headers"].get("x-key").is_none(),
        "hide_credentials removed the key: {seen}"
    );
    let r = call(&gw, "/hide/x", Some(("x-api-key", "k-h"))).await;
    assert_denied(&r, "key in the wrong header");
    assert_eq!(
        r.header("www-authenticate"),
        Some("ApiKey header=\"x-key\"")
    );

    // Warm instances keep working: every call hands back its borrow and frees what the
    // host gave it.
    for i in 0..300 {
        let (key, status) = if i % 3 == 0 {
            ("wrong", 401)
        } else {
            ("k-c-123", 200)
        };
        let r = call(&gw, "/c/x", Some(("x-api-key", key))).await;
        assert_eq!(r.status, status, "request {i}: {:?}", r.body);
    }
}

#[test]
#[ignore = "needs clang, wasi-libc, wit-bindgen, wasm-tools (see .ci/run)"]
fn c_api_key_plugin_refuses_bad_config_with_its_words() {
    let wasm = c_api_key();
    let dir = TempDir::new();
    for (config, words) in [
        ("{ }", "`keys` is required"),
        ("{ keys = [] }", "`keys` must list at least one key"),
        (r#"{ keys = ["a", "a"] }"#, "keys[1]: duplicate key"),
        (
            r#"{ keys = [ 3 ] }"#,
            "keys[0]: expected a string or a {key, consumer} table",
        ),
        (
            r#"{ keys = [ { key = "a", user = "x" } ] }"#,
            "keys[0]: unknown field `user`",
        ),
        (
            r#"{ keys = [ { consumer = "x" } ] }"#,
            "keys[0]: `key` (a string) is required",
        ),
        (
            r#"{ keys = [ " a" ] }"#,
            "keys[0]: the key holds whitespace",
        ),
        (
            r#"{ keys = ["a"], hedaer = "x" }"#,
            "unknown config key `hedaer`",
        ),
        (
            r#"{ keys = ["a"], header = "bad header" }"#,
            "is not a valid header name",
        ),
        (
            r#"{ keys = ["a"], header = "Content-Length" }"#,
            "is managed by the gateway",
        ),
        (
            r#"{ keys = ["a"], hide_credentials = "yes" }"#,
            "`hide_credentials` must be true or false",
        ),
    ] {
        let path = dir.write("bad.toml", &c_config("127.0.0.1:9", &wasm, config));
        let (ok, text) = validate(&path);
        assert!(!ok, "accepted: {config}");
        assert!(
            text.contains(words),
            "expected {words:?} for {config} in: {text}"
        );
    }
}
