//! Consul discovery against [`ConsulApi`], a responder that follows Consul's documented
//! health API (no Consul binary is installable here): blocking queries woken by changes,
//! `passing` and `tag` filtering, datacenter and ACL token, and an agent that goes away
//! and comes back with a lower index.

use super::consul_api::{ConsulApi, Instance};
use super::*;
use crate::support::{client, get, send, Gateway, Upstream};
use http_body_util::Full;
use tokio::net::TcpListener;

fn instance(id: &str, up: &Upstream, tags: &[&str], status: &'static str) -> Instance {
    Instance {
        id: id.into(),
        service: "chat".into(),
        node: format!("node-{id}"),
        node_address: "127.0.0.1".into(),
        address: "127.0.0.1".into(),
        port: up.addr.port(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        status,
        weight: 1,
    }
}

fn discovery(api: &ConsulApi, token: &str) -> String {
    format!(
        "{{ kind = \"consul\", address = \"{}\", service = \"chat\", tag = \"v2\", datacenter = \"dc1\", token = \"{token}\", wait = \"2s\" }}",
        api.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_api_responder_follows_the_documented_semantics() {
    let api = ConsulApi::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        "t",
        "dc1",
        10,
    );
    let up = Upstream::echo("a").await;
    api.register(instance("a", &up, &["v2"], "passing"));
    let base = format!("http://{}/v1/health/service/chat", api.addr);
    let ask = |query: &str, token: Option<&'static str>| {
        let mut r = http::Request::get(format!("{base}?{query}"));
        if let Some(t) = token {
            r = r.header("x-consul-token", t);
        }
        let req = r.body(Full::default()).unwrap();
        async move { send(&client(), req).await }
    };
    let r = ask("", Some("t")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-consul-index"), Some("11"));
    assert_eq!(r.json()[0]["Service"]["Port"], up.addr.port());

    // Blocking on the current index: answers after `wait` with the same index …
    let started = Instant::now();
    let r = ask("index=11&wait=300ms", Some("t")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.header("x-consul-index"), Some("11"));
    // … or as soon as something changes.
    let blocked = tokio::spawn(ask("index=11&wait=60s&passing", Some("t")));
    api.set_status("a", "critical");
    let r = blocked.await.unwrap();
    assert_eq!(r.header("x-consul-index"), Some("12"));
    assert_eq!(r.json(), serde_json::json!([]), "passing filters critical");

    assert_eq!(ask("", Some("wrong")).await.status, 403);
    let anonymous = ask("", None).await;
    assert_eq!(
        anonymous.header("x-consul-results-filtered-by-acls"),
        Some("true")
    );
    assert_eq!(anonymous.json(), serde_json::json!([]));
    assert_eq!(ask("dc=dc9", Some("t")).await.status, 500);
    assert_eq!(ask("wait=10", Some("t")).await.status, 400);
    assert_eq!(ask("index=x", Some("t")).await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_blocking_queries_follow_health_tags_and_agent_restarts() {
    let ups = echoes(["a", "b", "c", "d", "critical", "v1-only"]).await;
    let [a, b, c, d, critical, v1_only] = &ups;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let api = ConsulApi::start(listener, "secret", "dc1", 100);
    api.register(instance("a", a, &["v2"], "passing"));
    // b registers without a service address: the node's address is used.
    api.register(Instance {
        address: String::new(),
        ..instance("b", b, &["v1", "v2"], "passing")
    });
    api.register(instance("critical", critical, &["v2"], "critical"));
    api.register(instance("v1-only", v1_only, &["v1"], "passing"));

    let gw = Gateway::start_logging(&config("round_robin", &discovery(&api, "secret")), &[]);
    wait_for(&gw, &["a", "b"]).await;

    // Changes reach the gateway through the blocking query, well inside its 2 s wait.
    let before = api.index();
    api.register(instance("c", c, &["v2"], "passing"));
    let took = wait_for(&gw, &["a", "b", "c"]).await;
    eprintln!("consul: a registration took {took:?} to get traffic");
    assert!(api.index() > before);
    api.set_status("a", "critical");
    wait_for(&gw, &["b", "c"]).await;

    // The agent goes away: the last good set keeps serving.
    drop(api);
    gw.wait_log(&["discovery failed", "upstream=up", "consul"]);
    assert_serving(&gw, &["b", "c"]).await;

    // It comes back with an index far below the one the gateway had: the gateway follows
    // the new agent's index.
    let api = ConsulApi::start(
        TcpListener::bind(("127.0.0.1", port)).await.unwrap(),
        "secret",
        "dc1",
        1,
    );
    api.register(instance("c", c, &["v2"], "passing"));
    api.register(instance("d", d, &["v2"], "passing"));
    wait_for(&gw, &["c", "d"]).await;
    assert_eq!((critical.hits(), v1_only.hits()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_wrong_token_is_reported_and_answers_503() {
    let api = ConsulApi::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        "secret",
        "dc1",
        5,
    );
    let up = Upstream::echo("a").await;
    api.register(instance("a", &up, &["v2"], "passing"));
    let gw = Gateway::start_logging(&config("round_robin", &discovery(&api, "wrong")), &[]);
    let line = gw.wait_log(&["discovery failed", "upstream=up", "consul service chat"]);
    assert!(
        line.contains("403") && line.contains("ACL token was refused"),
        "{line}"
    );
    let r = get(&gw.url("/")).await;
    assert_eq!(r.status, 503);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has not produced any"),
        "{:?}",
        r.body
    );
}
