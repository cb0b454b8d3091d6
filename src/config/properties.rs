//! Property tests of the loader: whatever the text — TOML-ish lines made of the config's
//! own keys and values, or a valid config mutated at random — `parse` returns, never
//! panics, and an error names the file, and the line and column when it has a place, a
//! place that is inside the text. A TOML syntax error always has a place.

use super::*;
use proptest::prelude::*;

/// The examples, as valid configs to mutate (their relative paths resolve from
/// `examples/`, so plugin files and the discovery file exist when they are built).
const VALID: &[&str] = &[
    include_str!("../../examples/ai-gateway.toml"),
    include_str!("../../examples/grpc.toml"),
    include_str!("../../examples/discovery-dns.toml"),
    include_str!("../../examples/discovery-file.toml"),
    include_str!("../../examples/hot-reload.toml"),
    include_str!("../../examples/tls.toml"),
];

fn path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fuzzed.toml")
}

/// Checks the invariants of one parse of `text`.
fn check(text: &str) -> Result<(), TestCaseError> {
    let path = path();
    let Err(e) = parse(text, &path) else {
        return Ok(());
    };
    prop_assert_eq!(&e.file, &path);
    prop_assert!(!e.message.is_empty());
    let shown = e.to_string();
    match e.position {
        Some((line, col)) => {
            prop_assert!(line >= 1 && col >= 1, "{shown}");
            prop_assert!(
                line <= text.split('\n').count(),
                "line past the end: {shown}"
            );
            let prefix = format!("{}:{line}:{col}: ", path.display());
            prop_assert!(shown.starts_with(&prefix), "{shown}");
        }
        None => {
            let prefix = format!("{}: ", path.display());
            prop_assert!(shown.starts_with(&prefix), "{shown}");
            prop_assert!(
                toml::from_str::<toml::Table>(text).is_ok(),
                "a syntax error without a place: {shown}"
            );
        }
    }
    Ok(())
}

/// Table headers, keys and values the config uses, and some it does not.
const HEADERS: &[&str] = &[
    "[server]",
    "[[upstreams]]",
    "[[routes]]",
    "[[plugins]]",
    "[upstreams.retry]",
    "[upstreams.circuit_breaker]",
    "[upstreams.health_check]",
    "[upstreams.outlier_detection]",
    "[upstreams.tls]",
    "[server.access_log]",
    "[routes.headers]",
    "[nope]",
    "[[server]]",
];
const KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "admin_token",
    "workers",
    "max_connections",
    "max_header_size",
    "max_body_size",
    "keep_alive_timeout",
    "first_byte_timeout",
    "header_read_timeout",
    "http2_keep_alive_interval",
    "http2_keep_alive_timeout",
    "drain_timeout",
    "access_log",
    "name",
    "targets",
    "balance",
    "hash_key",
    "protocol",
    "request_timeout",
    "connect_timeout",
    "idle_timeout",
    "discovery",
    "attempts",
    "on",
    "budget_percent",
    "consecutive_failures",
    "open_time",
    "failure_on",
    "interval",
    "timeout",
    "kind",
    "path",
    "path_prefix",
    "path_regex",
    "methods",
    "hosts",
    "headers",
    "query",
    "upstream",
    "strip_prefix",
    "preserve_host",
    "host_rewrite",
    "plugins",
    "buffer_request_body",
    "pool_size",
    "max_warm",
    "memory_limit",
    "on_error",
    "address",
    "weight",
    "sni",
    "tls",
    "cert",
    "key",
    "x",
];
const VALUES: &[&str] = &[
    "\"127.0.0.1:0\"",
    "\"[::1]:0\"",
    "\"up\"",
    "\"/\"",
    "\"/v1/\"",
    "\"/a/../b\"",
    "\"^(\"",
    "\"10s\"",
    "\"0ms\"",
    "\"1e400s\"",
    "\"99999999999999999999h\"",
    "\"1.5us\"",
    "\"-1s\"",
    "\"16MiB\"",
    "\"0\"",
    "\"1e30GiB\"",
    "\"0.5B\"",
    "0",
    "1",
    "-1",
    "9223372036854775807",
    "1e308",
    "nan",
    "inf",
    "true",
    "false",
    "[]",
    "[\"GET\"]",
    "[\"\"]",
    "[{ address = \"127.0.0.1:1\" }]",
    "[{ address = \"127.0.0.1:1\", weight = 0 }]",
    "{ kind = \"dns\", name = \"a\", port = 0 }",
    "{ kind = \"file\", path = \"\" }",
    "{ kind = \"nope\" }",
    "{ path = \"/dev/null\" }",
    "[{ name = \"api-key\" }]",
    "{ \"x-a\" = \"b\" }",
    "\"*.example.com\"",
    "[\"*.\", \"a b\"]",
    "\"é\"",
    "''",
    "\"\"\"",
];

/// One TOML-ish line: a header, `key = value` from the lists, or anything.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(HEADERS).prop_map(str::to_string),
        6 => (prop::sample::select(KEYS), prop::sample::select(VALUES))
            .prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "\\PC{0,30}",
        1 => "[a-z_]{1,10} ?= ?[\\[\\]{}\"'0-9a-z.,:= -]{0,20}",
    ]
}

/// One edit of a text.
#[derive(Debug, Clone)]
enum Mutation {
    /// Remove `len` bytes at (a place derived from) `at`.
    Delete(prop::sample::Index, usize),
    Insert(prop::sample::Index, String),
    /// Replace a line with another.
    Replace(prop::sample::Index, String),
    /// Repeat a line right after itself.
    Duplicate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let piece = prop_oneof![
        line().prop_map(|l| format!("\n{l}\n")),
        prop::sample::select(VALUES).prop_map(str::to_string),
        "[\\[\\]{}\"'=,#\\\\\n.0-9]{1,3}",
    ];
    prop_oneof![
        any::<prop::sample::Index>()
            .prop_flat_map(|i| (Just(i), 1usize..12))
            .prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<prop::sample::Index>(), piece).prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<prop::sample::Index>(), line()).prop_map(|(i, l)| Mutation::Replace(i, l)),
        any::<prop::sample::Index>().prop_map(Mutation::Duplicate),
    ]
}

/// The char boundary at or before byte `i`.
fn boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &mut String, m: &Mutation) {
    match m {
        Mutation::Delete(at, len) => {
            let start = boundary(text, at.index(text.len() + 1));
            let end = boundary(text, (start + len).min(text.len()));
            text.replace_range(start..end, "");
        }
        Mutation::Insert(at, s) => {
            let at = boundary(text, at.index(text.len() + 1));
            text.insert_str(at, s);
        }
        Mutation::Replace(at, l) => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let i = at.index(lines.len());
            lines[i] = l;
            *text = lines.join("\n");
        }
        Mutation::Duplicate(at) => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let i = at.index(lines.len());
            lines.insert(i, lines[i]);
            *text = lines.join("\n");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Lines made of the config's own vocabulary, in any order.
    #[test]
    fn toml_ish_text_never_panics(lines in prop::collection::vec(line(), 0..40)) {
        check(&lines.join("\n"))?;
    }

    /// A valid config with a few random edits.
    #[test]
    fn mutated_configs_never_panic(
        base in 0..VALID.len(),
        edits in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut text = VALID[base].to_string();
        for m in &edits {
            apply(&mut text, m);
        }
        check(&text)?;
    }
}

/// Found by `mutated_configs_never_panic`: the key of an error was cut inside a
/// character that is more than one byte long.
#[test]
fn an_error_after_a_multibyte_character_names_its_key() {
    let e = parse("[server]\nlisten = \"127.0.0.1:0\"\nཉ==", &path()).unwrap_err();
    assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
}

#[test]
fn the_examples_parse() {
    // The bases of the mutations are valid, but for the files they name that are made
    // elsewhere (plugins by plugins/build.sh, certificates by tests/it/examples.rs).
    for text in VALID {
        if !text.contains("[[plugins]]") && !text.contains("cert =") {
            if let Err(e) = parse(text, &path()) {
                panic!("{e}");
            }
        }
    }
}
