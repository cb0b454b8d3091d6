//! The dashboard in a real browser: Debian's headless chromium loads the admin page
//! against a running gateway; the rendered DOM must show the upstreams, their endpoints
//! and their live states. A screenshot is kept at `target/artifacts/dashboard.png`.

use crate::support::*;
use std::path::PathBuf;
use std::process::Command;

/// The chromium binary; the test fails without it.
fn chromium() -> PathBuf {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    found.expect("chromium is not installed: apt-get install chromium (.ci/run does this)")
}

/// Runs headless chromium on `url` with `args`, letting the page's scripts run for a
/// few (virtual) seconds first.
fn headless(browser: &PathBuf, url: &str, args: &[&str]) -> std::process::Output {
    let profile = TempDir::new();
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium")
}

#[tokio::test]
#[ignore = "needs chromium (apt-get install chromium; .ci/run installs it)"]
async fn dashboard_shows_upstreams_and_their_live_state_in_a_browser() {
    let browser = chromium();
    let alpha = Upstream::echo("alpha").await;
    let dead = closed_addr();
    let token = "dashboard-token-0123456789";
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{token}\"\n\n\
         [[upstreams]]\nname = \"chat-models\"\ntargets = [{{ address = \"{}\" }}]\n\n\
         [[upstreams]]\nname = \"embedding-models\"\ntargets = [{{ address = \"{dead}\" }}]\n\n\
         [upstreams.circuit_breaker]\nconsecutive_failures = 1\nopen_time = \"60s\"\n\n\
         [[routes]]\nname = \"chat\"\npath = \"/v1/chat\"\nupstream = \"chat-models\"\n\n\
         [[routes]]\nname = \"embeddings\"\npath = \"/v1/embeddings\"\nupstream = \"embedding-models\"\n",
        alpha.addr
    ));
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/v1/chat")).await.status, 200);
    }
    // One connect failure opens the dead endpoint's breaker.
    assert_eq!(get(&gw.url("/v1/embeddings")).await.status, 502);
    let url = format!("http://{}/#token={token}", gw.admin.unwrap());

    let dom = headless(&browser, &url, &["--dump-dom"]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page loaded its data:\n{dom}"
    );
    for needle in [
        r#"<div class="upstream" data-upstream="chat-models">"#.to_string(),
        r#"<div class="upstream" data-upstream="embedding-models">"#.to_string(),
        format!(
            r#"<tr class="endpoint" data-address="{}"><td>{}</td><td><span class="ok">available</span>"#,
            alpha.addr, alpha.addr
        ),
        format!(
            r#"<tr class="endpoint" data-address="{dead}"><td>{dead}</td><td><span class="bad">unavailable</span>"#
        ),
        r#"<span class="bad">open</span>"#.to_string(),
        "<td>chat</td><td>5</td>".to_string(),
        "<td>embeddings</td><td>1</td>".to_string(),
    ] {
        assert!(dom.contains(&needle), "missing {needle} in:\n{dom}");
    }

    // Without the token the page shows the API's refusal instead of data.
    let refused = headless(
        &browser,
        &format!("http://{}/", gw.admin.unwrap()),
        &["--dump-dom"],
    );
    let refused = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(!refused.contains(r#"data-loaded="true""#), "{refused}");
    assert!(refused.contains("HTTP 401"), "{refused}");

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let shot = headless(
        &browser,
        &url,
        &[
            "--window-size=1280,900",
            &format!("--screenshot={}", png.display()),
        ],
    );
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
}
