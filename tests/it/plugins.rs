//! Plugins through the real binary: auth, predicates, transforms, and hostile guests.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;

fn plugins_config(up: &Upstream, plugins: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplugin_cache_dir = \"{cache}\"\n\n[[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"{}\" }}]\n\n{plugins}\n{routes}",
        up.addr,
        cache = std::env::temp_dir().join("portcullis-test-wasm-cache").display(),
    )
}

fn api_key_plugin() -> String {
    format!(
        "[[plugins]]\nname = \"api-key\"\npath = \"{}\"\n",
        plugin("api-key")
    )
}

const PROTECTED: &str = r#"
[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "up"
plugins = [ { name = "api-key", config = { keys = [ { key = "k-123", consumer = "alice" } ] } } ]

[[routes]]
name = "public"
path_prefix = "/"
upstream = "up"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn api_key_allows_the_right_key_and_names_the_consumer() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&plugins_config(&up, &api_key_plugin(), PROTECTED));
    let c = client();
    let r = send(
        &c,
        req("GET", &gw.url("/admin/x"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let r = send(
        &c,
        req("GET", &gw.url("/admin/x"))
            .header("x-api-key", "wrong")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(up.hits(), 0, "denied requests never reach the upstream");
    let r = send(
        &c,
        req("GET", &gw.url("/admin/x"))
            .header("x-api-key", "k-123")
            .header("x-portcullis-consumer", "mallory")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["headers"]["x-portcullis-consumer"],
        "alice",
        "the consumer is the plugin's, not the client's"
    );
    // A route without the plugin is untouched.
    let r = send(
        &c,
        req("GET", &gw.url("/open"))
            .header("x-portcullis-consumer", "mallory")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-portcullis-consumer").is_none(),
        "a client cannot name itself a consumer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn respelled_paths_cannot_skip_auth() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&plugins_config(&up, &api_key_plugin(), PROTECTED));
    for path in [
        "/public/../admin/x",
        "/%2e%2e/admin/x",
        "//admin/x",
        "/./admin/x",
        "/%61dmin/x",
    ] {
        let r = send(
            &client(),
            req("GET", &format!("http://{}{path}", gw.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 401, "{path} reached the upstream without a key");
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn model_router_sends_models_to_different_upstreams() {
    let gpt = Upstream::echo("gpt").await;
    let llama = Upstream::echo("llama").await;
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
plugin_cache_dir = "{cache}"

[[plugins]]
name = "model-router"
path = "{router}"

[[upstreams]]
name = "openai"
targets = [ {{ address = "{gpt}" }} ]

[[upstreams]]
name = "local"
targets = [ {{ address = "{llama}" }} ]

[[routes]]
name = "gpt"
path = "/v1/chat/completions"
buffer_request_body = "1MiB"
upstream = "openai"
plugins = [ {{ name = "model-router", config = {{ models = ["gpt-*", "o1*"] }} }} ]

[[routes]]
name = "llama"
path = "/v1/chat/completions"
buffer_request_body = "1MiB"
upstream = "local"
plugins = [ {{ name = "model-router", config = {{ models = ["llama-*"] }} }} ]
"#,
        cache = std::env::temp_dir()
            .join("portcullis-test-wasm-cache")
            .display(),
        router = plugin("model-router"),
        gpt = gpt.addr,
        llama = llama.addr,
    );
    let gw = Gateway::start(&config);
    let c = client();
    let ask = |model: &str| {
        req("POST", &gw.url("/v1/chat/completions"))
            .body(Full::new(Bytes::from(format!(
                "{{\"model\":\"{model}\",\"messages\":[]}}"
            ))))
            .unwrap()
    };
    let r = send(&c, ask("gpt-4o")).await;
    assert_eq!(r.json()["upstream"], "gpt");
    assert_eq!(
        r.json()["body"],
        "{\"model\":\"gpt-4o\",\"messages\":[]}",
        "the buffered body is forwarded intact"
    );
    assert_eq!(send(&c, ask("llama-3")).await.json()["upstream"], "llama");
    assert_eq!(
        send(&c, ask("mistral-7b")).await.status,
        404,
        "no route's predicate holds"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_transform_changes_request_and_response() {
    let up = Upstream::echo("up").await;
    let plugins = format!(
        "[[plugins]]\nname = \"headers\"\npath = \"{}\"\n",
        plugin("headers")
    );
    let routes = r#"
[[routes]]
name = "all"
path_prefix = "/"
upstream = "up"
plugins = [ { name = "headers", config = { request = { set = { "x-env" = "prod" }, remove = ["x-internal"] }, response = { set = { "cache-control" = "no-store" }, remove = ["x-upstream"] } } } ]
"#;
    let gw = Gateway::start(&plugins_config(&up, &plugins, routes));
    let r = send(
        &client(),
        req("GET", &gw.url("/x"))
            .header("x-internal", "secret")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["headers"]["x-env"], "prod");
    assert!(j["headers"].get("x-internal").is_none());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("x-upstream").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_see_the_request_id_and_trace_context_the_gateway_adds() {
    // The gateway writes its own fields as the head is sent, unless plugins run: they
    // see them in the head (here a transform renames them, so the upstream gets what the
    // plugin saw under other names, and not the gateway's fields a second time).
    let up = Upstream::echo("up").await;
    let plugins = format!(
        "[[plugins]]\nname = \"headers\"\npath = \"{}\"\n",
        plugin("headers")
    );
    let routes = r#"
[[routes]]
name = "all"
path_prefix = "/"
upstream = "up"
plugins = [ { name = "headers", config = { request = { rename = { "x-request-id" = "x-saw-id", "traceparent" = "x-saw-trace" } } } } ]
"#;
    let gw = Gateway::start(&plugins_config(&up, &plugins, routes));
    let r = send(
        &client(),
        req("GET", &gw.url("/x")).body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    let h = &j["headers"];
    assert_eq!(h["x-saw-id"].as_str(), r.header("x-request-id"), "{h}");
    let trace = h["x-saw-trace"]
        .as_str()
        .expect("the plugin saw a traceparent");
    assert!(trace.starts_with("00-") && trace.len() == 55, "{trace}");
    assert!(h.get("x-request-id").is_none(), "{h}");
    assert!(h.get("traceparent").is_none(), "{h}");
}

fn hostile(name: &str, extra: &str) -> String {
    format!("[[plugins]]\nname = \"{name}\"\npath = \"{}\"\ntimeout = \"50ms\"\nmemory_limit = \"32MiB\"\n{extra}\n", plugin(name))
}

fn hostile_route(name: &str) -> String {
    format!(
        "[[routes]]\nname = \"hostile\"\npath_prefix = \"/h\"\nupstream = \"up\"\nplugins = [ {{ name = \"{name}\" }} ]\n\n[[routes]]\nname = \"ok\"\npath_prefix = \"/\"\nupstream = \"up\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_cost_one_request_not_the_process() {
    for name in ["loop-forever", "grow-memory", "trap"] {
        let up = Upstream::echo("up").await;
        let gw = Gateway::start(&plugins_config(
            &up,
            &hostile(name, ""),
            &hostile_route(name),
        ));
        for _ in 0..2 {
            let r = get(&gw.url("/h")).await;
            assert_eq!(r.status, 500, "{name}: {:?}", r.body);
            assert_eq!(r.error_code(), "plugin_failed", "{name}");
            // The gateway keeps serving other routes.
            assert_eq!(get(&gw.url("/fine")).await.status, 200, "{name}");
        }
        assert_eq!(
            up.hits(),
            2,
            "{name}: only the healthy route reached the upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_error_allow_lets_the_request_through() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&plugins_config(
        &up,
        &hostile("trap", "on_error = \"allow\""),
        &hostile_route("trap"),
    ));
    assert_eq!(get(&gw.url("/h")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_grants_no_files_env_or_sockets() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&plugins_config(
        &up,
        &hostile("escape", ""),
        &hostile_route("escape"),
    ));
    let r = get(&gw.url("/h")).await;
    assert_eq!(r.status, 403);
    let j = r.json();
    assert_eq!(j["escaped"], false, "{j}");
    for probe in ["read_file", "env_home"] {
        assert_eq!(j["probes"][probe]["leaked"], false, "{probe}: {j}");
    }
}

#[test]
fn validate_reports_a_plugin_config_error_with_the_plugins_words() {
    let dir = TempDir::new();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"127.0.0.1:9\" }}]\n\n{}\n[[routes]]\nname = \"admin\"\npath = \"/admin\"\nupstream = \"up\"\nplugins = [ {{ name = \"api-key\", config = {{ keys = [] }} }} ]\n",
        api_key_plugin()
    );
    let path = dir.write("p.toml", &config);
    let (ok, err) = validate(&path);
    assert!(!ok);
    assert!(err.contains(&format!("{}:16:13: key `routes[0].plugins[0]`: plugin `api-key` on route `admin` rejected its config:", path.display())), "{err}");
    assert!(err.contains("keys"), "the plugin's own message: {err}");
}

/// An HS256 JWT over `claims`.
fn hs256(secret: &[u8], claims: serde_json::Value) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
    let payload = b64.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        b64.encode(mac.finalize().into_bytes())
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_accepts_valid_tokens_and_refuses_expired_forged_or_misaddressed_ones() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef-secret";
    let up = Upstream::echo("up").await;
    let plugins = format!(
        "[[plugins]]\nname = \"jwt\"\npath = \"{}\"\n",
        plugin("jwt")
    );
    let routes = format!(
        r#"
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "up"
plugins = [ {{ name = "jwt", config = {{ keys = [ {{ kid = "k1", secret = "{SECRET}" }} ], issuer = "https://id.test", audience = ["my-api"], leeway = 5 }} }} ]
"#
    );
    let gw = Gateway::start(&plugins_config(&up, &plugins, &routes));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |exp: i64, aud: &str| serde_json::json!({"sub": "svc-42", "iss": "https://id.test", "aud": aud, "exp": exp, "iat": now});
    let call = |token: String| {
        let url = gw.url("/api/x");
        async move {
            send(
                &client(),
                req("GET", &url)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
        }
    };
    let ok = call(hs256(SECRET.as_bytes(), claims(now + 300, "my-api"))).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.json()["headers"]["x-portcullis-consumer"], "svc-42");
    let expired = call(hs256(SECRET.as_bytes(), claims(now - 300, "my-api"))).await;
    assert_eq!(expired.status, 401, "expired");
    let forged = call(hs256(
        b"another-secret-another-secret-another",
        claims(now + 300, "my-api"),
    ))
    .await;
    assert_eq!(forged.status, 401, "wrong signature");
    let elsewhere = call(hs256(SECRET.as_bytes(), claims(now + 300, "other-api"))).await;
    assert_eq!(elsewhere.status, 401, "wrong audience");
    let none = send(
        &client(),
        req("GET", &gw.url("/api/x")).body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(none.status, 401, "no token");
    assert_eq!(up.hits(), 1, "only the valid token reached the upstream");
}

#[test]
fn compiled_plugins_are_cached_on_disk_across_restarts() {
    let dir = TempDir::new();
    let cache = dir.0.join("cache");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplugin_cache_dir = \"{}\"\n\n[[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"127.0.0.1:9\" }}]\n\n{}\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"up\"\nplugins = [ {{ name = \"api-key\", config = {{ keys = [\"k\"] }} }} ]\n",
        cache.display(),
        api_key_plugin()
    );
    let path = dir.write("p.toml", &config);
    let artifacts = || -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
        let mut out = Vec::new();
        let mut stack = vec![cache.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_none()
                    && !p.file_name().unwrap().to_string_lossy().starts_with('.')
                {
                    out.push((p.clone(), e.metadata().unwrap().modified().unwrap()));
                }
            }
        }
        out.sort();
        out
    };
    assert_valid(&path);
    let first = artifacts();
    assert!(
        !first.is_empty(),
        "the first load writes a compiled artifact"
    );
    assert_valid(&path);
    // A miss would have compiled again and rewritten the artifact.
    assert_eq!(
        artifacts(),
        first,
        "the second load reused the cached artifact"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trapped_instance_is_replaced_by_a_fresh_one() {
    // The trap guest traps only on requests with the trigger header; others are allowed
    // and carry `x-hostile-instance-calls`, which counts calls on the current instance.
    let up = Upstream::echo("up").await;
    let plugins = hostile("trap", "pool_size = 1");
    let routes = "[[routes]]\nname = \"hostile\"\npath_prefix = \"/h\"\nupstream = \"up\"\nplugins = [ { name = \"trap\", config = { trigger_header = \"x-boom\" } } ]\n";
    let mut config = plugins_config(&up, &plugins, routes);
    config = config.replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nworkers = 1",
    );
    let gw = Gateway::start(&config);
    let c = client();
    let calls = |r: &Reply| {
        r.json()["headers"]["x-hostile-instance-calls"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a = send(&c, req("GET", &gw.url("/h")).body(Full::default()).unwrap()).await;
    let b = send(&c, req("GET", &gw.url("/h")).body(Full::default()).unwrap()).await;
    assert_eq!(
        (calls(&a), calls(&b)),
        ("1".to_string(), "2".to_string()),
        "one warm instance is reused"
    );
    let boom = send(
        &c,
        req("GET", &gw.url("/h"))
            .header("x-boom", "1")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(boom.status, 500);
    let after = send(&c, req("GET", &gw.url("/h")).body(Full::default()).unwrap()).await;
    assert_eq!(
        calls(&after),
        "1",
        "the trapped instance was discarded and a fresh one serves"
    );
}

/// Twelve routes use one plugin, each with a key and consumer of its own. Pools start
/// empty; each worker keeps at most `max_warm` instances over all of them (not one per
/// route), and whichever instance serves a call was configured for that call's route.
#[tokio::test(flavor = "multi_thread")]
async fn routes_share_a_bounded_pool_each_call_served_by_its_routes_config() {
    const ROUTES: usize = 12;
    let up = Upstream::echo("up").await;
    let mut routes = String::new();
    for i in 0..ROUTES {
        routes += &format!(
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"/r{i}/\"\nupstream = \"up\"\n\
             plugins = [ {{ name = \"api-key\", config = {{ keys = [ {{ key = \"k-{i}\", consumer = \"c-{i}\" }} ] }} }} ]\n\n"
        );
    }
    let config = plugins_config(&up, &format!("{}max_warm = 3\n", api_key_plugin()), &routes)
        .replacen(
            "[server]\n",
            "[server]\nadmin_listen = \"127.0.0.1:0\"\nworkers = 2\n",
            1,
        );
    let gw = Gateway::start(&config);
    let c = client();
    let idle = || async {
        let url = format!("http://{}/plugins", gw.admin.expect("admin listener"));
        let r = send(&client(), req("GET", &url).body(Full::default()).unwrap()).await;
        r.json()["plugins"][0]["idle_instances"].as_u64().unwrap()
    };
    assert_eq!(
        idle().await,
        0,
        "no instance is kept before a request needs one"
    );
    let call = |i: usize, key: usize| {
        req("GET", &gw.url(&format!("/r{i}/x")))
            .header("x-api-key", format!("k-{key}"))
            .body(Full::default())
            .unwrap()
    };
    // Three rounds over all the routes: more routes than warm instances, so instances
    // are evicted and made again along the way.
    for _ in 0..3 {
        for i in 0..ROUTES {
            let r = send(&c, call(i, i)).await;
            assert_eq!(r.status, 200, "route r{i} with its own key");
            assert_eq!(
                r.json()["headers"]["x-portcullis-consumer"],
                format!("c-{i}")
            );
            let other = (i + 1) % ROUTES;
            let r = send(&c, call(i, other)).await;
            assert_eq!(r.status, 401, "route r{i} with route r{other}'s key");
        }
    }
    let kept = idle().await;
    assert!(
        (1..=6).contains(&kept),
        "at most max_warm (3) per worker (2) over {ROUTES} routes, kept {kept}"
    );
    // Many calls at once on one route: each gets an instance.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (c, r) = (client(), call(5, 5));
        calls.spawn(async move { send(&c, r).await.status });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let kept = idle().await;
    assert!(
        (1..=6).contains(&kept),
        "still bounded after a burst, kept {kept}"
    );
}

/// Two `[[plugins]]` entries naming one file, on many routes: the file is compiled once.
#[test]
fn plugin_entries_naming_one_file_compile_it_once() {
    let dir = TempDir::new();
    let path = plugin("api-key");
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplugin_cache_dir = \"{cache}\"\n\n\
         [[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"127.0.0.1:9\" }}]\n\n\
         [[plugins]]\nname = \"a\"\npath = \"{path}\"\n\n[[plugins]]\nname = \"b\"\npath = \"{path}\"\n\n",
        cache = std::env::temp_dir()
            .join("portcullis-test-wasm-cache")
            .display(),
    );
    for i in 0..20 {
        let name = if i % 2 == 0 { "a" } else { "b" };
        text += &format!(
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"/r{i}/\"\nupstream = \"up\"\n\
             plugins = [ {{ name = \"{name}\", config = {{ keys = [ {{ key = \"k-{i}\" }} ] }} }} ]\n\n"
        );
    }
    let config = portcullis::config::load(&dir.write("portcullis.toml", &text)).unwrap();
    let set = portcullis::plugin::PluginSet::for_config(&config).unwrap();
    assert_eq!(set.components, 1, "one compiled component for both entries");
    assert_eq!(set.routes.iter().map(Vec::len).sum::<usize>(), 20);
}

/// A warm instance left unused for `idle_timeout` is dropped; the next call makes a fresh one.
#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_are_dropped_after_the_idle_timeout() {
    let up = Upstream::echo("up").await;
    let config = plugins_config(
        &up,
        &format!("{}idle_timeout = \"1s\"\n", api_key_plugin()),
        PROTECTED,
    )
    .replacen(
        "[server]\n",
        "[server]\nadmin_listen = \"127.0.0.1:0\"\n",
        1,
    );
    let gw = Gateway::start(&config);
    let url = format!("http://{}/plugins", gw.admin.expect("admin listener"));
    let idle = async || {
        let r = send(&client(), req("GET", &url).body(Full::default()).unwrap()).await;
        r.json()["plugins"][0]["idle_instances"].as_u64().unwrap()
    };
    let call = || {
        req("GET", &gw.url("/admin/x"))
            .header("x-api-key", "k-123")
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(send(&client(), call()).await.status, 200);
    until_ok(
        "the idle instance to be dropped",
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || match idle().await {
            0 => Ok(()),
            n => Err(n),
        },
    )
    .await;
    assert_eq!(
        send(&client(), call()).await.status,
        200,
        "a fresh instance serves"
    );
}

/// Routes that give a plugin the same config share its instances: ten such routes served
/// one after another by one worker leave one warm instance, not ten.
#[tokio::test(flavor = "multi_thread")]
async fn routes_with_the_same_plugin_config_share_instances() {
    let up = Upstream::echo("up").await;
    let mut routes = String::new();
    for i in 0..10 {
        routes += &format!(
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"/r{i}/\"\nupstream = \"up\"\n\
             plugins = [ {{ name = \"api-key\", config = {{ keys = [ {{ key = \"k-1\", consumer = \"alice\" }} ] }} }} ]\n\n"
        );
    }
    let config = plugins_config(&up, &api_key_plugin(), &routes).replacen(
        "[server]\n",
        "[server]\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n",
        1,
    );
    let gw = Gateway::start(&config);
    let c = client();
    for i in 0..10 {
        let r = send(
            &c,
            req("GET", &gw.url(&format!("/r{i}/x")))
                .header("x-api-key", "k-1")
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["headers"]["x-portcullis-consumer"], "alice");
    }
    let url = format!("http://{}/plugins", gw.admin.expect("admin listener"));
    let r = send(&client(), req("GET", &url).body(Full::default()).unwrap()).await;
    assert_eq!(r.json()["plugins"][0]["idle_instances"], 1);
}
