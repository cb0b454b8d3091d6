//! File discovery: the gateway follows a TOML or JSON endpoint file as it changes, and a
//! broken or missing file keeps the last good set.

use super::*;
use crate::support::{get, Gateway, TempDir, Upstream};

fn toml_file(ups: &[&Upstream]) -> String {
    ups.iter()
        .map(|u| format!("[[endpoints]]\naddress = \"{}\"\nweight = 1\n\n", u.addr))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_follows_changes_and_survives_a_broken_file() {
    let [a, b, c] = echoes(["a", "b", "c"]).await;
    let dir = TempDir::new();
    let path = dir.0.join("endpoints.toml");
    replace_file(&path, &toml_file(&[&a, &b]));
    let gw = Gateway::start_logging(
        &config(
            "round_robin",
            &format!(
                "{{ kind = \"file\", path = \"{}\", interval = \"50ms\" }}",
                path.display()
            ),
        ),
        &[],
    );
    gw.wait_log(&["discovery updated", "upstream=up", "endpoints=2"]);
    wait_for(&gw, &["a", "b"]).await;

    replace_file(&path, &toml_file(&[&a, &b, &c]));
    let took = wait_for(&gw, &["a", "b", "c"]).await;
    eprintln!("file: an added endpoint took {took:?} to get traffic");

    replace_file(&path, &toml_file(&[&b, &c]));
    wait_for(&gw, &["b", "c"]).await;

    // Half-written: the last good set stays, and the log says why.
    std::fs::write(&path, "[[endpoints]]\naddress = \"127.0.0.1:").unwrap();
    let line = gw.wait_log(&["discovery failed", "upstream=up", "endpoints.toml"]);
    assert!(line.contains("kept_endpoints=2"), "{line}");
    assert_serving(&gw, &["b", "c"]).await;

    // Gone altogether: still the last good set.
    std::fs::remove_file(&path).unwrap();
    assert_serving(&gw, &["b", "c"]).await;

    // Back, with one entry that is not an endpoint: it is skipped, the rest applies.
    replace_file(
        &path,
        &format!("{}[[endpoints]]\naddress = \"nowhere\"\n", toml_file(&[&c])),
    );
    gw.wait_log(&["discovery recovered", "upstream=up"]);
    wait_for(&gw, &["c"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_file_with_weights() {
    let [a, b] = echoes(["a", "b"]).await;
    let dir = TempDir::new();
    let path = dir.write(
        "endpoints.json",
        &format!(
            r#"{{"endpoints": [{{"address": "{}", "weight": 1, "metadata": {{"zone": "x"}}}},
                              {{"address": "{}", "weight": 3}}]}}"#,
            a.addr, b.addr
        ),
    );
    let gw = Gateway::start(&config(
        "weighted_round_robin",
        &format!("{{ kind = \"file\", path = \"{}\" }}", path.display()),
    ));
    wait_for(&gw, &["a", "b"]).await;
    let seen = tally(&gw, 40).await;
    assert_eq!((seen["a"], seen["b"]), (10, 30), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_yet_is_a_clear_503() {
    let dir = TempDir::new();
    let gw = Gateway::start(&config(
        "round_robin",
        &format!(
            "{{ kind = \"file\", path = \"{}\" }}",
            dir.0.join("not-there-yet.json").display()
        ),
    ));
    let r = get(&gw.url("/v1/chat")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "no_endpoints");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("upstream `up` has no endpoints yet")
            && msg.contains("has not produced any")
            && msg.contains("not-there-yet.json"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_last_good_set_and_restarts_discovery() {
    let [a, b, c] = echoes(["a", "b", "c"]).await;
    let dir = TempDir::new();
    let path = dir.0.join("endpoints.toml");
    replace_file(&path, &toml_file(&[&a, &b]));
    let discovery = format!(
        "{{ kind = \"file\", path = \"{}\", interval = \"50ms\" }}",
        path.display()
    );
    let gw = Gateway::start_logging(
        &config("round_robin", &discovery).replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
        ),
        &[],
    );
    wait_for(&gw, &["a", "b"]).await;

    // The source breaks, then the config is reloaded: the new tables start from the last
    // good set instead of empty, and their own discovery task takes over.
    std::fs::remove_file(&path).unwrap();
    gw.wait_log(&["discovery failed", "upstream=up"]);
    let hup = Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    gw.wait_log(&["config reloaded"]);
    assert_serving(&gw, &["a", "b"]).await;
    replace_file(&path, &toml_file(&[&c]));
    wait_for(&gw, &["c"]).await;

    let m = super::support::get(&format!("http://{}/metrics", gw.admin.unwrap())).await;
    let text = String::from_utf8_lossy(&m.body);
    for want in [
        "portcullis_discovery_updates_total{source=\"file\",upstream=\"up\"}",
        "portcullis_discovery_errors_total{source=\"file\",upstream=\"up\"}",
        "portcullis_upstream_endpoints{upstream=\"up\"} 1",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
}
