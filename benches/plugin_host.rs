//! One request through the plugin host: the api-key plugin's allow path (a warm pooled
//! instance, the request lent as a resource, one header read by the guest), against a
//! baseline that builds and hands back the same request without a plugin call. The same
//! for the C api-key plugin when it has been built.
//!
//!     cargo bench --bench plugin_host
//!
//! The Rust guest is built from `plugins/` by `plugins/build.sh`; the C one
//! (`plugins/c/api-key`) by `plugins/build-polyglot.sh c`, which this does not run (it
//! needs clang and wasi-libc): without `plugins/target/components/c-api-key.wasm` that
//! benchmark is left out, and says so.

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::config::{OnError, PluginConfig};
use portcullis::plugin::host::RequestRes;
use portcullis::plugin::{Bound, PluginHost, WorkerPools};
use std::sync::Arc;
use std::time::Duration;

fn request() -> RequestRes {
    let mut headers = http::HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("x-api-key", "k-123"),
        ("x-request-id", "0123456789abcdef"),
        ("accept-encoding", "gzip"),
        ("x-forwarded-for", "10.0.0.1"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("authorization", "Bearer nope"),
        ("cookie", "a=b"),
    ] {
        headers.insert(k, v.parse().unwrap());
    }
    RequestRes {
        method: http::Method::POST,
        scheme: "http",
        authority: Some("api.example.com".into()),
        path: "/v1/chat/completions".into(),
        query: None,
        headers,
        client: "127.0.0.1".parse().unwrap(),
        body: None,
        read_only: false,
    }
}

fn bench(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new("bash")
        .arg(root.join("plugins/build.sh"))
        .status()
        .unwrap();
    assert!(status.success());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = PluginHost::new(Some(&std::env::temp_dir().join("portcullis-bench-cache"))).unwrap();
    let pool = |name: &str, file: &str| {
        let config = PluginConfig {
            name: name.into(),
            path: root.join("plugins/target/components").join(file),
            memory_limit: 64 << 20,
            timeout: Duration::from_millis(20),
            on_error: OnError::Deny,
            pool_size: 8,
            max_warm: 16,
            idle_timeout: Duration::from_secs(60),
            capabilities: Default::default(),
        };
        let plugin = Arc::new(host.load(&config).unwrap());
        let bound = rt
            .block_on(Bound::new(
                &host,
                plugin,
                "bench",
                r#"{"keys":[{"key":"k-123","consumer":"alice"}]}"#,
            ))
            .unwrap();
        WorkerPools::default().pool(&Arc::new(bound))
    };
    let rust = pool("api-key", "api-key.wasm");
    let c_built = root
        .join("plugins/target/components/c-api-key.wasm")
        .is_file();
    let c_plugin = c_built.then(|| pool("c-api-key", "c-api-key.wasm"));
    if !c_built {
        eprintln!("plugin_host: no c-api-key.wasm (bash plugins/build-polyglot.sh c): c_api_key_allow left out");
    }

    let mut g = c.benchmark_group("plugin_host");
    g.bench_function("baseline_no_plugin", |b| {
        b.iter(|| rt.block_on(async { std::hint::black_box(request()) }))
    });
    for (name, pool) in [
        ("api_key_allow", Some(&rust)),
        ("c_api_key_allow", c_plugin.as_ref()),
    ] {
        let Some(pool) = pool else { continue };
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let (req, r) = pool.authenticate(request()).await;
                    assert!(r.is_ok());
                    std::hint::black_box(req)
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
