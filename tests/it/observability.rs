//! The access log (text and JSON) and the admin listener.

use crate::support::*;
use http_body_util::Full;

const ROUTE: &str = "[[routes]]\nname = \"chat\"\npath_prefix = \"/v1\"\nupstream = \"up\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn json_access_log_has_one_line_per_request() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start_logging(&config("", &[up.addr], ROUTE), &["--log-format", "json"]);
    let r = send(
        &client(),
        req("POST", &gw.url("/v1/./x"))
            .header("x-request-id", "rid-77")
            .body(Full::from("abc"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let line = tokio::task::block_in_place(|| gw.wait_log(&["\"target\":\"access\"", "rid-77"]));
    let j: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/v1/x", "the normalized path is logged");
    assert_eq!(j["route"], "chat");
    assert_eq!(j["upstream"], up.addr.to_string());
    assert_eq!(j["status"], 200);
    assert_eq!(j["bytes"].as_u64(), Some(r.body.len() as u64));
    assert!(j["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(j["request_id"], "rid-77");
    // Gateway-made responses are logged with their error code.
    let r = get(&gw.url("/nope")).await;
    let rid = r.header("x-request-id").unwrap().to_string();
    let line = tokio::task::block_in_place(|| gw.wait_log(&["\"target\":\"access\"", &rid]));
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (j["status"].as_u64(), j["error"].as_str()),
        (Some(404), Some("route_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn text_access_log() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start_logging(&config("", &[up.addr], ROUTE), &[]);
    let r = get(&gw.url("/v1/models")).await;
    let rid = r.header("x-request-id").unwrap().to_string();
    let line = tokio::task::block_in_place(|| gw.wait_log(&["access", &rid]));
    for field in [
        "method=GET",
        "path=/v1/models",
        "route=\"chat\"",
        "status=200",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}

#[tokio::test]
async fn admin_healthz() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&config("", &[up.addr], ROUTE).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
    ));
    let admin = gw.admin.expect("admin listener announced");
    let r = get(&format!("http://{admin}/healthz")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(get(&format!("http://{admin}/nope")).await.status, 404);
    // The admin port does not proxy.
    assert_eq!(up.hits(), 0);
}

/// The 32-hex trace id and the 16-hex parent id of a version-00 traceparent.
fn trace_parts(tp: &str) -> (&str, &str) {
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
    (&tp[3..35], &tp[36..52])
}

#[tokio::test(flavor = "multi_thread")]
async fn traceparent_is_propagated_or_started_and_logged() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start_logging(&config("", &[up.addr], ROUTE), &["--log-format", "json"]);
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send(
        &client(),
        req("GET", &gw.url("/v1/traced"))
            .header("x-request-id", "rid-traced")
            .header("traceparent", incoming)
            .header("tracestate", "congo=t61rcWkgMzE")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let seen = &r.json()["headers"];
    let (trace, parent) = trace_parts(seen["traceparent"].as_str().unwrap());
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(parent, "00f067aa0ba902b7", "the gateway's own span");
    assert_eq!(seen["tracestate"], "congo=t61rcWkgMzE");
    let line =
        tokio::task::block_in_place(|| gw.wait_log(&["\"target\":\"access\"", "rid-traced"]));
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    // No traceparent (or an invalid one): a new trace starts here.
    for (rid, tp) in [
        ("rid-new", None),
        (
            "rid-bad",
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ),
    ] {
        let mut b = req("GET", &gw.url("/v1/new")).header("x-request-id", rid);
        if let Some(tp) = tp {
            b = b.header("traceparent", tp).header("tracestate", "congo=x");
        }
        let r = send(&client(), b.body(Full::default()).unwrap()).await;
        let seen = &r.json()["headers"];
        let (trace, parent) = trace_parts(seen["traceparent"].as_str().unwrap());
        assert!(trace != "0".repeat(32) && parent != "0".repeat(16));
        assert!(
            seen.get("tracestate").is_none(),
            "no tracestate on a new trace"
        );
        let line = tokio::task::block_in_place(|| gw.wait_log(&["\"target\":\"access\"", rid]));
        let j: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            j["trace_id"], trace,
            "the logged trace id is the one sent upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_file_has_trace_consumer_plugin_and_upstream_latency() {
    let up = Upstream::echo("up").await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = {{ path = \"access.log\", format = \"json\" }}\n\
         plugin_cache_dir = \"{cache}\"\n\n\
         [[plugins]]\nname = \"api-key\"\npath = \"{plugin}\"\n\n\
         [[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"chat\"\npath_prefix = \"/v1\"\nupstream = \"up\"\n\
         plugins = [ {{ name = \"api-key\", config = {{ keys = [ {{ key = \"k-123\", consumer = \"alice\" }} ] }} }} ]\n",
        up.addr,
        cache = std::env::temp_dir().join("portcullis-test-wasm-cache").display(),
        plugin = plugin("api-key"),
    );
    let gw = Gateway::start(&text);
    let file = gw.dir.0.join("access.log");
    let r = keyed_get(&gw, "k-123", "rid-file-1").await;
    assert_eq!(r.status, 200);
    let sent = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    let r = keyed_get(&gw, "wrong", "rid-file-2").await;
    assert_eq!(r.status, 401);

    let ok = wait_file_line(&file, "rid-file-1").await;
    assert_eq!(ok["target"], "access");
    assert_eq!(ok["trace_id"], trace_parts(&sent).0);
    assert_eq!(ok["consumer"], "alice");
    assert_eq!(ok["plugin"], "-");
    assert_eq!(ok["status"], 200);
    assert!(ok["upstream_ms"].as_f64().unwrap() > 0.0, "{ok}");
    let denied = wait_file_line(&file, "rid-file-2").await;
    assert_eq!(denied["plugin"], "api-key:deny");
    assert_eq!(denied["status"], 401);
    assert_eq!(denied["upstream_ms"], -1.0, "never reached the upstream");
    assert_eq!(denied["trace_id"].as_str().unwrap().len(), 32);
}

async fn keyed_get(gw: &Gateway, key: &str, request_id: &str) -> Reply {
    send(
        &client(),
        req("GET", &gw.url("/v1/models"))
            .header("x-api-key", key)
            .header("x-request-id", request_id)
            .body(Full::default())
            .unwrap(),
    )
    .await
}

/// The JSON line of the access-log file that mentions `needle`, once it is written (the
/// file is appended by a background thread).
async fn wait_file_line(path: &std::path::Path, needle: &str) -> serde_json::Value {
    let line = wait_file_text(path, needle).await;
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn access_log_file_in_a_missing_folder_is_a_config_error() {
    let dir = TempDir::new();
    let path = dir.write(
        "p.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = { path = \"no/such/dir/access.log\" }\n",
    );
    let (ok, out) = validate(&path);
    assert!(!ok);
    assert!(
        out.contains("p.toml:3:23: key `server.access_log.path`")
            && out.contains("folder of the access-log file does not exist"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_names_a_failed_plugin_and_its_policy() {
    let up = Upstream::echo("up").await;
    let trap = plugin("trap");
    let route = |name: &str| {
        format!("[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\nupstream = \"up\"\nplugins = [ {{ name = \"trap-{name}\" }} ]\n")
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplugin_cache_dir = \"{cache}\"\n\n\
         [[plugins]]\nname = \"trap-deny\"\npath = \"{trap}\"\n\n\
         [[plugins]]\nname = \"trap-allow\"\npath = \"{trap}\"\non_error = \"allow\"\n\n\
         [[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"{}\" }}]\n\n{}\n{}",
        up.addr,
        route("deny"),
        route("allow"),
        cache = std::env::temp_dir()
            .join("portcullis-test-wasm-cache")
            .display(),
    );
    let gw = Gateway::start_logging(&text, &["--log-format", "json"]);
    for (path, status, outcome) in [
        ("/deny", 500, "trap-deny:error"),
        ("/allow", 200, "trap-allow:error_allowed"),
    ] {
        let r = get(&gw.url(path)).await;
        assert_eq!(r.status, status, "{path}");
        let rid = r.header("x-request-id").unwrap().to_string();
        let line = tokio::task::block_in_place(|| gw.wait_log(&["\"target\":\"access\"", &rid]));
        let j: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(j["plugin"], outcome, "{line}");
    }
}

/// The echo upstream behind `/v1` (with `[routes.ai]`: the request's model is logged), and
/// `server.access_log` in `format` (`None`: the access log on stderr).
fn file_log_config(up: &Upstream, format: Option<&str>) -> String {
    let file = format.map_or(String::new(), |f| {
        format!("access_log = {{ path = \"access.log\", format = \"{f}\" }}\n")
    });
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{file}\n\
         [[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"{}\" }}]\n\n{ROUTE}\n[routes.ai]\n",
        up.addr
    )
}

/// The line of the access-log file that mentions `needle`, once it is written (the file
/// is appended by a background thread).
async fn wait_file_text(path: &std::path::Path, needle: &str) -> String {
    let what = format!("a line with {needle} in {}", path.display());
    until_ok(
        &what,
        WAIT,
        std::time::Duration::from_millis(20),
        async || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let line = text
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string);
            line.ok_or("not written yet")
        },
    )
    .await
}

/// One request and then nothing: the line is written while the gateway idles (the writer's
/// timer, not more traffic or the exit, takes it out of the worker's batch), in text.
#[tokio::test(flavor = "multi_thread")]
async fn a_lone_request_reaches_a_text_access_log_file_while_the_gateway_idles() {
    let up = Upstream::echo("up").await;
    let gw = Gateway::start(&file_log_config(&up, Some("text")));
    let r = send(
        &client(),
        req("GET", &gw.url("/v1/models"))
            .header("x-request-id", "rid-lone")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let line = wait_file_text(&gw.dir.0.join("access.log"), "rid-lone").await;
    assert!(
        line.split(' ').next().unwrap().ends_with('Z') && line.contains("  INFO access: "),
        "{line}"
    );
    for field in [
        "method=GET",
        "path=/v1/models",
        "route=\"chat\"",
        "status=200",
        &format!("upstream=\"{}\"", up.addr),
        "request_id=\"rid-lone\"",
        "ttft_ms=-1.0",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(!line.contains('\u{1b}'), "no ANSI codes: {line:?}");
}

/// SIGTERM: the gateway drains, and every line still in a worker's batch is written before
/// it exits.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_writes_every_buffered_line_before_exit() {
    const N: usize = 300;
    let up = Upstream::echo("up").await;
    let mut gw = Gateway::start(&file_log_config(&up, Some("json")));
    let c = client();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..N {
        let (c, url) = (c.clone(), gw.url("/v1/models"));
        requests.spawn(async move {
            let r = send(
                &c,
                req("GET", &url)
                    .header("x-request-id", format!("rid-term-{i}"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
            assert_eq!(r.status, 200);
        });
    }
    while let Some(done) = requests.join_next().await {
        done.unwrap();
    }
    gw.terminate();
    let status = tokio::task::block_in_place(|| gw.child.wait()).unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(gw.dir.0.join("access.log")).unwrap();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        let j: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(j["target"], "access", "{line}");
        seen.insert(j["request_id"].as_str().unwrap().to_string());
    }
    let missing: Vec<usize> = (0..N)
        .filter(|i| !seen.contains(&format!("rid-term-{i}")))
        .collect();
    assert!(missing.is_empty(), "lines lost at exit: {missing:?}");
    assert_eq!(text.lines().count(), N, "one line per request");
}

/// Sends `head` and `body` on a new connection and reads the answer to its end.
async fn raw_exchange(addr: std::net::SocketAddr, head: &[u8], body: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    answer
}

/// A path with a quote, a backslash, U+0085 and U+2028 (the gateway lets them through) and
/// a model name with a newline, a quote and an escape sequence (decoded from the JSON
/// body), sent over a raw socket: the line stays one line, the JSON parses to the same
/// values, the text quotes and escapes them, and no control character reaches the log.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_path_and_model_cannot_forge_or_break_a_line() {
    const PATH: &str = "/v1/a\"b\\c\u{85}d\u{2028}e/chat/completions";
    const MODEL: &str =
        "m\n2026-01-01T00:00:00.000000Z  INFO access: status=200 \"forged\u{1b}[31m";
    let up = Upstream::echo("up").await;
    let body = serde_json::json!({ "model": MODEL, "messages": [] }).to_string();
    let exchange = |addr, rid: &str| {
        let head = format!(
            "POST {PATH} HTTP/1.1\r\nHost: x\r\nx-request-id: {rid}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let body = body.clone();
        async move { raw_exchange(addr, head.as_bytes(), body.as_bytes()).await }
    };

    // JSON, to the file.
    let gw = Gateway::start(&file_log_config(&up, Some("json")));
    let answer = exchange(gw.addr, "rid-hostile-json").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let file = gw.dir.0.join("access.log");
    let j = wait_file_line(&file, "rid-hostile-json").await;
    assert_eq!(j["path"], PATH);
    assert_eq!(j["model"], MODEL);
    assert_eq!(j["status"], 200);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(!text.contains(['\u{1b}', '\u{85}', '\u{2028}']), "{text:?}");

    // Text, on stderr.
    let gw = Gateway::start_logging(&file_log_config(&up, None), &[]);
    let answer = exchange(gw.addr, "rid-hostile-text").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let line = tokio::task::block_in_place(|| gw.wait_log(&["access:", "rid-hostile-text"]));
    assert!(!line.contains(['\u{1b}', '\u{85}', '\u{2028}']), "{line:?}");
    for field in [
        r#" path="/v1/a\"b\\c\u{85}d\u{2028}e/chat/completions" "#,
        r#" model="m\n2026-01-01T00:00:00.000000Z  INFO access: status=200 \"forged\u{1b}[31m" "#,
        " status=200 ",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    // The forged text is inside the model's quotes, not a field of its own.
    let keys = text_keys(line.split_once(" access: ").unwrap().1);
    assert_eq!(
        keys.iter().filter(|k| *k == "status").count(),
        1,
        "{keys:?}"
    );
    assert!(keys.iter().all(|k| !k.contains(['"', ' '])), "{keys:?}");
}

/// The keys of a text line's `key=value key="quoted \" value"` fields, in order.
fn text_keys(mut fields: &str) -> Vec<String> {
    let mut keys = Vec::new();
    while let Some((key, rest)) = fields.split_once('=') {
        keys.push(key.to_string());
        let end = if let Some(quoted) = rest.strip_prefix('"') {
            let mut escaped = false;
            let close = quoted
                .char_indices()
                .find(|&(_, c)| {
                    let end = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    end
                })
                .map(|(i, _)| i + 1)
                .expect("a closing quote");
            close + 1
        } else {
            rest.find(' ').unwrap_or(rest.len())
        };
        fields = rest[end..].trim_start_matches(' ');
    }
    keys
}
