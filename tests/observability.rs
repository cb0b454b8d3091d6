//! The access log (text and JSON) and the admin listener.

mod support;
use http_body_util::Full;
use support::*;

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
