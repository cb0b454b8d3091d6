//! `portcullis validate` and `run` on bad configs: each error names file, line, column
//! and key, and `run` refuses to start on the same errors.

use crate::support::{self, bin, TempDir};
use std::process::Command;

const BASE: &str = r#"[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "chat"
targets = [ { address = "127.0.0.1:9001", weight = 1 } ]

[[routes]]
name = "r"
path_prefix = "/v1"
upstream = "chat"
"#;

/// Runs `validate` on `text`; returns (exit ok, stdout+stderr, file path).
fn validate(text: &str) -> (bool, String, String) {
    let dir = TempDir::new();
    let path = dir.write("bad.toml", text);
    let (ok, all) = support::validate(&path);
    (ok, all, path.display().to_string())
}

/// Asserts that `text` is rejected with `file:LINE:COL: key `KEY`: ...MESSAGE...`.
fn rejects(text: &str, line: usize, col: usize, key: &str, message: &str) {
    let (ok, out, file) = validate(text);
    assert!(!ok, "config should be rejected:\n{text}");
    let want = format!("{file}:{line}:{col}: key `{key}`: ");
    assert!(out.contains(&want), "expected `{want}` in:\n{out}");
    assert!(out.contains(message), "expected `{message}` in:\n{out}");
}

#[test]
fn valid_config_passes() {
    let (ok, out, _) = validate(BASE);
    assert!(ok, "{out}");
    assert!(
        out.contains("ok (1 routes, 1 upstreams, 0 plugins)"),
        "{out}"
    );
}

#[test]
fn unknown_key() {
    rejects(
        &BASE.replace(
            "upstream = \"chat\"",
            "upstream = \"chat\"\nstrip_prefx = true",
        ),
        12,
        1,
        "routes.strip_prefx",
        "unknown field `strip_prefx`",
    );
}

#[test]
fn wrong_type() {
    rejects(
        &BASE.replace("weight = 1", "weight = \"heavy\""),
        6,
        52,
        "upstreams.weight",
        "invalid type",
    );
}

#[test]
fn unknown_upstream() {
    rejects(
        &BASE.replace("upstream = \"chat\"", "upstream = \"chatt\""),
        11,
        12,
        "routes[0].upstream",
        "unknown upstream `chatt`",
    );
}

#[test]
fn duplicate_names() {
    let dup = format!("{BASE}\n[[routes]]\nname = \"r\"\npath = \"/x\"\nupstream = \"chat\"\n");
    rejects(&dup, 14, 8, "routes[1].name", "duplicate route name `r`");
    let dup_up = BASE.replace(
        "[[routes]]",
        "[[upstreams]]\nname = \"chat\"\ntargets = [ { address = \"127.0.0.1:9002\" } ]\n\n[[routes]]",
    );
    rejects(
        &dup_up,
        9,
        8,
        "upstreams[1].name",
        "duplicate upstream name `chat`",
    );
}

#[test]
fn empty_targets() {
    rejects(
        &BASE.replace("[ { address = \"127.0.0.1:9001\", weight = 1 } ]", "[]"),
        6,
        11,
        "upstreams[0].targets",
        "empty target list",
    );
}

#[test]
fn bad_duration_and_size() {
    rejects(
        &BASE.replace(
            "name = \"chat\"",
            "name = \"chat\"\nconnect_timeout = \"5 parsecs\"",
        ),
        6,
        19,
        "upstreams.connect_timeout",
        "invalid duration `5 parsecs`",
    );
    rejects(
        &BASE.replace(
            "upstream = \"chat\"",
            "upstream = \"chat\"\nmax_body_size = \"12 elephants\"",
        ),
        12,
        17,
        "routes.max_body_size",
        "invalid size `12 elephants`",
    );
}

#[test]
fn invalid_regex() {
    rejects(
        &BASE.replace("path_prefix = \"/v1\"", "path_regex = \"^/v1/(\""),
        10,
        14,
        "routes[0].path_regex",
        "invalid regex",
    );
}

#[test]
fn bad_addresses_and_paths() {
    rejects(
        &BASE.replace("127.0.0.1:9001", "nowhere"),
        6,
        25,
        "upstreams[0].targets[0].address",
        "is not HOST:PORT",
    );
    rejects(
        &BASE.replace("listen = \"127.0.0.1:0\"", "listen = \"localhost\""),
        2,
        10,
        "server.listen",
        "not a socket address",
    );
    rejects(
        &BASE.replace("path_prefix = \"/v1\"", "path_prefix = \"/v1/../v2\""),
        10,
        15,
        "routes[0].path_prefix",
        "not in normal form; write `/v2`",
    );
    rejects(
        &BASE.replace(
            "path_prefix = \"/v1\"",
            "path = \"/a\"\npath_prefix = \"/v1\"",
        ),
        8,
        1,
        "routes[0].path",
        "only one of",
    );
}

#[test]
fn syntax_error_has_position() {
    let (ok, out, file) = validate("[server\nlisten = 1\n");
    assert!(!ok);
    assert!(out.contains(&format!("{file}:1:")), "{out}");
}

#[test]
fn missing_file() {
    let out = Command::new(bin())
        .args(["validate", "/nonexistent/portcullis.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn run_refuses_bad_config_with_same_error() {
    let dir = TempDir::new();
    let path = dir.write(
        "bad.toml",
        &BASE.replace("upstream = \"chat\"", "upstream = \"nope\""),
    );
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:11:12: key `routes[0].upstream`",
            path.display()
        )),
        "{err}"
    );
    // The top-level `--config` form behaves the same.
    let out = Command::new(bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// BASE with its `targets` line replaced by `line` (the upstream's line 6).
fn with_discovery(line: &str) -> String {
    BASE.replace(
        "targets = [ { address = \"127.0.0.1:9001\", weight = 1 } ]",
        line,
    )
}

#[test]
fn discovery_kind_errors() {
    rejects(
        &with_discovery("discovery = { kind = \"dnss\", name = \"x\" }"),
        6,
        22,
        "upstreams[0].discovery.kind",
        "unknown discovery kind `dnss` (expected one of dns, file, etcd, zookeeper, consul)",
    );
    rejects(
        &with_discovery("discovery = { name = \"api.internal\" }"),
        6,
        13,
        "upstreams[0].discovery.kind",
        "discovery needs `kind`",
    );
    rejects(
        &with_discovery(
            "targets = [ { address = \"127.0.0.1:9001\" } ]\ndiscovery = { kind = \"file\", path = \"e.json\" }",
        ),
        7,
        13,
        "upstreams[0].discovery",
        "upstream `chat` has both `targets` and `discovery`; use one",
    );
    rejects(
        &with_discovery(""),
        4,
        1,
        "upstreams[0].targets",
        "upstream `chat` has no `targets` (or `discovery`)",
    );
}

#[test]
fn discovery_key_errors() {
    rejects(
        &with_discovery("discovery = { kind = \"file\", path = \"e.json\", prefix = \"/x\" }"),
        6,
        56,
        "upstreams[0].discovery.prefix",
        "`prefix` does not apply to discovery kind `file` (its keys: path, format, interval)",
    );
    rejects(
        &with_discovery("discovery = { kind = \"file\", pth = \"e.json\" }"),
        6,
        30,
        "upstreams.pth",
        "unknown field `pth`",
    );
    rejects(
        &with_discovery("discovery = { kind = \"dns\", name = \"api.internal\" }"),
        6,
        36,
        "upstreams[0].discovery.port",
        "discovery kind `dns` with `name` needs `port`",
    );
    rejects(
        &with_discovery(
            "discovery = { kind = \"dns\", srv = \"_http._tcp.api\", min_refresh = \"10s\", max_refresh = \"1s\" }",
        ),
        6,
        88,
        "upstreams[0].discovery.max_refresh",
        "max_refresh (1s) is below min_refresh (10s)",
    );
    rejects(
        &with_discovery("discovery = { kind = \"file\", path = \"endpoints\" }"),
        6,
        37,
        "upstreams[0].discovery.path",
        "cannot tell the format of `endpoints`",
    );
    rejects(
        &with_discovery(
            "discovery = { kind = \"etcd\", endpoints = [\"https://etcd:2379\"], prefix = \"/s/\" }",
        ),
        6,
        42,
        "upstreams[0].discovery.endpoints",
        "`https://etcd:2379` is not supported: only plain http",
    );
    rejects(
        &with_discovery(
            "discovery = { kind = \"zookeeper\", servers = \"zk:2181\", path = \"services/chat\" }",
        ),
        6,
        63,
        "upstreams[0].discovery.path",
        "`services/chat` is not a znode path",
    );
    rejects(
        &with_discovery("discovery = { kind = \"consul\", service = \"chat\", wait = \"1h\" }"),
        6,
        57,
        "upstreams[0].discovery.wait",
        "must be between 1s and 600s",
    );
    rejects(
        &with_discovery("discovery = { kind = \"consul\", service = \"chat models\" }"),
        6,
        42,
        "upstreams[0].discovery.service",
        "`chat models` is not a Consul service name",
    );
}

#[test]
fn every_discovery_kind_validates() {
    let upstreams = [
        "discovery = { kind = \"dns\", name = \"api.internal\", port = 8080, resolver = \"127.0.0.1:53\", min_refresh = \"500ms\", max_refresh = \"30s\" }",
        "discovery = { kind = \"dns\", srv = \"_http._tcp.api.internal\" }",
        "discovery = { kind = \"file\", path = \"endpoints.toml\", interval = \"2s\" }",
        "discovery = { kind = \"etcd\", endpoints = [\"127.0.0.1:2379\", \"http://10.0.0.2:2379\"], prefix = \"/services/chat/\" }",
        "discovery = { kind = \"zookeeper\", servers = \"zk1:2181,zk2:2181\", path = \"/services/chat\", session_timeout = \"15s\" }",
        "discovery = { kind = \"consul\", address = \"127.0.0.1:8500\", service = \"chat\", tag = \"v2\", datacenter = \"dc1\", token = \"t\", wait = \"1m\", passing = true }",
    ];
    let mut text = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
    for (i, d) in upstreams.iter().enumerate() {
        text.push_str(&format!("\n[[upstreams]]\nname = \"u{i}\"\n{d}\n"));
    }
    let (ok, out, _) = validate(&text);
    assert!(ok, "{out}");
    assert!(
        out.contains("ok (0 routes, 6 upstreams, 0 plugins)"),
        "{out}"
    );
    // The table form works as well as the inline one.
    let (ok, out, _) = validate(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\n[upstreams.discovery]\nkind = \"file\"\npath = \"e.json\"\n",
    );
    assert!(ok, "{out}");
}

/// BASE with `section` (starting at line 7) inside the upstream.
fn with_section(section: &str) -> String {
    BASE.replace("\n[[routes]]", &format!("{section}\n\n[[routes]]"))
}

#[test]
fn resilience_sections_are_validated() {
    rejects(
        &with_section("[upstreams.circuit_breaker]\nerror_ratio = 1.5"),
        8,
        15,
        "upstreams[0].circuit_breaker.error_ratio",
        "1.5 is out of range 0..=1",
    );
    rejects(
        &with_section("[upstreams.circuit_breaker]\nopen_time = \"10s\"\nmax_open_time = \"1s\""),
        9,
        17,
        "upstreams[0].circuit_breaker.max_open_time",
        "must not be less than open_time",
    );
    rejects(
        &with_section("[upstreams.retry]\non = [\"connect\", \"sometimes\"]"),
        8,
        18,
        "upstreams[0].retry.on",
        "unknown condition `sometimes`",
    );
    rejects(
        &with_section("[upstreams.retry]\nattempts = 0"),
        8,
        12,
        "upstreams[0].retry.attempts",
        "0 is out of range 1..=10",
    );
    rejects(
        &with_section("[upstreams.health_check]\nkind = \"tcp\"\npath = \"/healthz\""),
        9,
        8,
        "upstreams[0].health_check.path",
        "only applies to kind = \"http\"",
    );
    rejects(
        &with_section("[upstreams.health_check]\nstatuses = [200, 999]"),
        8,
        18,
        "upstreams[0].health_check.statuses",
        "999 is not an HTTP status",
    );
    rejects(
        &with_section("[upstreams.outlier_detection]\nmax_ejection_percent = 150"),
        8,
        24,
        "upstreams[0].outlier_detection.max_ejection_percent",
        "150 is out of range 0..=100",
    );
    let (ok, out, _) = validate(&with_section(
        "[upstreams.outlier_detection]\nconsecutive_errors = 3",
    ));
    assert!(!ok);
    assert!(out.contains("unknown field `consecutive_errors`"), "{out}");
    assert!(out.contains("bad.toml:8:1"), "{out}");
}

#[test]
fn every_resilience_section_together_is_valid() {
    let text = with_section(
        "[upstreams.circuit_breaker]\nconsecutive_failures = 5\nerror_ratio = 0.5\nwindow = \"10s\"\nmin_requests = 20\nopen_time = \"5s\"\nmax_open_time = \"1m\"\nhalf_open_probes = 2\nfailure_on = [\"connect\", \"timeout\", \"reset\", \"gateway\", 429]\njitter = 0.1\n\
         [upstreams.health_check]\nkind = \"http\"\npath = \"/healthz\"\nhost = \"chat.internal\"\nstatuses = [\"2xx\", 301]\ninterval = \"5s\"\ntimeout = \"1s\"\nhealthy_threshold = 2\nunhealthy_threshold = 3\n\
         [upstreams.outlier_detection]\nconsecutive_5xx = 5\nconsecutive_gateway_errors = 5\nbase_ejection_time = \"30s\"\nmax_ejection_time = \"5m\"\nmax_ejection_percent = 50\n\
         [upstreams.retry]\nattempts = 3\non = [\"connect\", \"reset\", \"timeout\", 503]\nper_try_timeout = \"2s\"\nbackoff = \"25ms\"\nmax_backoff = \"250ms\"\nbudget_percent = 20.0\nbudget_min_per_second = 10\nbudget_window = \"10s\"",
    );
    let (ok, out, _) = validate(&text);
    assert!(ok, "{out}");
}

#[test]
fn model_route_settings() {
    // BASE has 11 lines; [routes.ai] is line 12, its first key line 13.
    let with = |ai: &str| format!("{BASE}[routes.ai]\n{ai}\n");
    let (ok, out, _) = validate(&with(
        "api = \"openai\"\ninclude_usage = false\nstream_error_event = true\nmax_request_body = \"2MiB\"\ntokenizer = \"cl100k_base\"",
    ));
    assert!(ok, "{out}");
    rejects(
        &with("tokenizer = \"gpt2\""),
        13,
        13,
        "routes[0].ai.tokenizer",
        "unknown tokenizer `gpt2` (expected \"o200k_base\" or \"cl100k_base\")",
    );
    rejects(
        &with("api = \"gemini\""),
        13,
        7,
        "routes[0].ai.api",
        "unknown api `gemini`",
    );
    rejects(
        &with("max_request_body = \"1GiB\""),
        13,
        20,
        "routes[0].ai.max_request_body",
        "out of range",
    );
    rejects(
        &with("include_usage = 1"),
        13,
        17,
        "routes.ai.include_usage",
        "invalid type",
    );
    rejects(
        &with("stream_errors = true"),
        13,
        1,
        "routes.ai.stream_errors",
        "unknown field",
    );
}

#[test]
fn upgrades_and_tunnel_bounds() {
    rejects(
        &format!("{BASE}upgrades = [\"web socket\"]\n"),
        12,
        13,
        "routes[0].upgrades",
        "is not a protocol name",
    );
    rejects(
        &format!("{BASE}[routes.tunnel]\nidle_timeout = \"0s\"\n"),
        13,
        16,
        "routes[0].tunnel.idle_timeout",
        "must be more than 0",
    );
    rejects(
        &format!("{BASE}[routes.tunnel]\nmax_connections = 0\n"),
        13,
        19,
        "routes[0].tunnel.max_connections",
        "must be between 1 and 10000000",
    );
    let h2 = BASE.replace("name = \"chat\"\n", "name = \"chat\"\nprotocol = \"h2\"\n");
    rejects(
        &format!("{h2}upgrades = [\"websocket\"]\n"),
        13,
        12,
        "routes[0].upgrades",
        "HTTP/1.1 upstreams only",
    );
    let (ok, out, _) = validate(&format!(
        "{h2}upgrades = []\n[routes.tunnel]\nidle_timeout = \"30s\"\nmax_duration = \"1h\"\nmax_connections = 5\n"
    ));
    assert!(ok, "{out}");
}

#[test]
fn limit_definitions_are_validated() {
    // BASE has 11 lines; `[[limits]]` is line 12, `name` line 13, the rest from line 14.
    let with = |limit: &str| format!("{BASE}[[limits]]\nname = \"l\"\n{limit}\n");
    rejects(
        &with("tokens = 100\nwindow = \"1m\"\nkey = [\"consumer\", \"tenant\"]"),
        16,
        20,
        "limits[0].key",
        "unknown key kind `tenant` (expected \"consumer\", \"route\", \"model\", \"client_address\" or \"header:NAME\")",
    );
    rejects(
        &with("tokens = -5\nwindow = \"1m\""),
        14,
        10,
        "limits[0].tokens",
        "must be more than 0",
    );
    rejects(
        &with("requests = 0\nwindow = \"1m\""),
        14,
        12,
        "limits[0].requests",
        "must be more than 0",
    );
    rejects(
        &with("concurrent = 4\nwindow = \"1m\""),
        15,
        10,
        "limits[0].window",
        "a `concurrent` limit has no window",
    );
    rejects(
        &with("requests = 5"),
        12,
        1,
        "limits[0].window",
        "a `requests` or `tokens` limit needs `window`",
    );
    rejects(
        &with("requests = 5\ntokens = 5\nwindow = \"1m\""),
        12,
        1,
        "limits[0].requests",
        "needs exactly one of `requests`, `tokens` or `concurrent`",
    );
    rejects(
        &with("requests = 5\nwindow = \"1m\"\nbackend = \"redis\""),
        16,
        11,
        "limits[0].backend",
        "`redis` needs a `[redis]` table",
    );
    rejects(
        &with("requests = 5\nwindow = \"1m\"\nsize = 3"),
        16,
        1,
        "limits.size",
        "unknown field `size`",
    );
    // A route names an unknown limit, or a token limit without `[routes.ai]`.
    let routed = |names: &str, limit: &str| {
        BASE.replace(
            "upstream = \"chat\"\n",
            &format!("upstream = \"chat\"\nlimits = {names}\n"),
        ) + &format!("[[limits]]\nname = \"l\"\n{limit}\n")
    };
    rejects(
        &routed("[\"nope\"]", "requests = 5\nwindow = \"1m\""),
        12,
        11,
        "routes[0].limits",
        "unknown limit `nope`",
    );
    rejects(
        &routed("[\"l\"]", "tokens = 5\nwindow = \"1m\""),
        12,
        11,
        "routes[0].limits",
        "`l` counts tokens: the route needs `[routes.ai]`",
    );
    // Every key kind, both backends, a route applying two limits: valid.
    let valid = BASE.replace(
        "upstream = \"chat\"\n",
        "upstream = \"chat\"\nlimits = [\"t\", \"c\"]\n\n[routes.ai]\ndefault_max_tokens = 100\n",
    ) + r#"
[redis]
url = "redis://127.0.0.1:1"
timeout = "50ms"

[[limits]]
name = "t"
tokens = 5
window = "1m"
count = "output"
key = ["consumer", "route", "model", "client_address", "header:x-tenant"]
backend = "redis"
on_backend_error = "local"

[[limits]]
name = "c"
concurrent = 2
key = ["model"]
"#;
    let (ok, out, _) = validate(&valid);
    assert!(ok, "{out}");
}

#[test]
fn stream_plugin_route_settings() {
    // BASE has 11 lines: the route's plugins are line 12, [routes.events] line 13.
    let redact = support::plugin("redact");
    let with = |plugin_config: &str, events: &str| {
        format!(
            "{BASE}plugins = [{{ name = \"redact\"{plugin_config} }}]\n[routes.events]\n{events}\n\n\
             [[plugins]]\nname = \"redact\"\npath = \"{redact}\"\n"
        )
    };
    let (ok, out, _) = validate(&with("", "max_event_size = \"64KiB\"\nndjson = true"));
    assert!(ok, "{out}");
    rejects(
        &with("", "max_event_size = \"16B\""),
        14,
        18,
        "routes[0].events.max_event_size",
        "out of range",
    );
    rejects(
        &with("", "ndjson = \"yes\""),
        14,
        10,
        "routes.events.ndjson",
        "invalid type",
    );
    // The plugin's own word on its config, at the route's plugin entry.
    rejects(
        &with(", config = { patterns = [\"(\"] }", ""),
        12,
        12,
        "routes[0].plugins[0]",
        "patterns[0]",
    );
}

/// BASE plus a composite route `v` (routes[1]) with parts `a` and `b`; `a_extra` is line
/// 20, `b_extra` line 24, `tail` from line 25.
fn composite(a_extra: &str, b_extra: &str, tail: &str) -> String {
    format!(
        "{BASE}\n[[routes]]\nname = \"v\"\npath = \"/v\"\n\n\
         [[routes.parts]]\nname = \"a\"\nupstream = \"chat\"\n{a_extra}\n\
         [[routes.parts]]\nname = \"b\"\nupstream = \"chat\"\n{b_extra}\n{tail}"
    )
}

#[test]
fn composite_routes_are_validated() {
    let (ok, out, _) = validate(&composite(
        "required = true\ntimeout = \"2s\"",
        "input = \"a\"\nmethod = \"post\"",
        "max_response_size = \"1MiB\"",
    ));
    assert!(
        !ok,
        "a route key after the parts belongs to the last part:\n{out}"
    );
    let (ok, out, _) = validate(&composite("path = \"/detect\"", "input = \"a\"", ""));
    assert!(ok, "{out}");
    rejects(
        &composite("", "input = \"c\"", ""),
        24,
        9,
        "routes[1].parts[1].input",
        "unknown part `c` (parts of route `v`: a, b)",
    );
    rejects(
        &composite("input = \"b\"", "input = \"a\"", ""),
        20,
        9,
        "routes[1].parts[0].input",
        "the parts' inputs form a cycle (a ← b ← a)",
    );
    rejects(
        &composite("input = \"a\"", "", ""),
        20,
        9,
        "routes[1].parts[0].input",
        "form a cycle (a ← a)",
    );
    rejects(
        &composite("stream = true", "", ""),
        20,
        10,
        "routes[1].parts[0].stream",
        "part `a` streams, but a composite route buffers its parts' answers",
    );
    rejects(
        &composite("", "", "").replace("name = \"b\"", "name = \"a\""),
        22,
        8,
        "routes[1].parts[1].name",
        "duplicate part name `a`",
    );
    let t = composite("", "", "");
    let at = t.rfind("upstream = \"chat\"").unwrap();
    rejects(
        &format!("{}upstream = \"nope\"{}", &t[..at], &t[at + 17..]),
        23,
        12,
        "routes[1].parts[1].upstream",
        "part `b` names unknown upstream `nope`",
    );
    rejects(
        &composite("", "", "[routes.ai]\n"),
        25,
        1,
        "routes[1].ai",
        "model calls stream",
    );
    rejects(
        &composite("", "", "").replace("path = \"/v\"\n", "path = \"/v\"\nupstream = \"chat\"\n"),
        16,
        12,
        "routes[1].upstream",
        "route `v` has `parts`: each part names its own upstream",
    );
    rejects(
        &format!("{BASE}max_response_size = \"1MiB\"\n"),
        12,
        21,
        "routes[0].max_response_size",
        "needs `parts`",
    );
    rejects(
        &BASE.replace("upstream = \"chat\"\n", ""),
        8,
        1,
        "routes[0].upstream",
        "route `r` needs `upstream` (or `[[routes.parts]]`)",
    );
}

#[test]
fn plugin_pool_settings() {
    // BASE has 11 lines: the plugin's extra line is line 16.
    let key = support::plugin("api-key");
    let with =
        |extra: &str| format!("{BASE}\n[[plugins]]\nname = \"k\"\npath = \"{key}\"\n{extra}\n");
    let (ok, out, _) = validate(&with("max_warm = 4\nidle_timeout = \"5m\""));
    assert!(ok, "{out}");
    rejects(
        &with("max_warm = 0"),
        16,
        12,
        "plugins[0].max_warm",
        "must be between 1 and 4096",
    );
    rejects(
        &with("idle_timeout = \"0s\""),
        16,
        16,
        "plugins[0].idle_timeout",
        "must be more than 0",
    );
}
