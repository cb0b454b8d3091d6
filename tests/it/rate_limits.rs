//! Rate limits and token budgets (`[[limits]]`) end to end: 50 concurrent streaming
//! clients against one token budget stay within it (plus the settlement error of what
//! was in flight), and what the limiter counts equals exactly what the upstream reported;
//! refusals in the API's shape; concurrency slots; counters kept across a reload; a
//! tokenizer's exact prompt count at the budget's edge. The fleet tests run three
//! gateways on one real `redis-server` (killed and restarted mid-test).

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The most a model answer goes past the gateway's estimate (the settlement error).
const EXCESS: u64 = 12;

/// What the upstream reported.
#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    /// Tokens reported (input + output).
    reported: AtomicU64,
    /// Σ max(0, reported − the gateway's estimate) over the calls.
    excess: AtomicU64,
}

/// An OpenAI-shaped streaming model that reports usage: input = body length / 5 (under
/// the gateway's estimate, length / 4), output = `max_tokens` plus 0..=EXCESS — so some
/// calls cost more than reserved and are charged the difference, the others refunded.
async fn model(tally: Arc<Tally>) -> Upstream {
    Upstream::start(move |req| {
        let tally = tally.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let max = v["max_tokens"].as_u64().unwrap_or(0);
            let n = tally.calls.fetch_add(1, Ordering::SeqCst);
            let input = body.len() as u64 / 5;
            let output = max + n % (EXCESS + 1);
            let estimate = (body.len() as u64).div_ceil(4) + max;
            tally.reported.fetch_add(input + output, Ordering::SeqCst);
            tally
                .excess
                .fetch_add((input + output).saturating_sub(estimate), Ordering::SeqCst);
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let chunk = |c: Value| Bytes::from(format!("data: {c}\n\n"));
                for word in ["Hel", "lo"] {
                    let c = json!({"object": "chat.completion.chunk", "model": "m",
                        "choices": [{"index": 0, "delta": {"content": word}}]});
                    if tx.send(chunk(c)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                let usage = json!({"object": "chat.completion.chunk", "model": "m", "choices": [],
                    "usage": {"prompt_tokens": input, "completion_tokens": output,
                              "total_tokens": input + output}});
                let _ = tx.send(chunk(usage)).await;
                let _ = tx.send(Bytes::from("data: [DONE]\n\n")).await;
            });
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(stream(rx))
                .unwrap()
        }
    })
    .await
}

fn api_key_plugin() -> String {
    format!(
        "[[plugins]]\nname = \"api-key\"\npath = \"{}\"\n",
        plugin("api-key")
    )
}

/// A gateway config: `routes` and `limits` TOML after one upstream at `up`, an admin
/// listener and the api-key plugin (keys `k-alice`, `k-bob`).
fn gateway_config(up: SocketAddr, routes: &str, limits: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nname = \"up\"\ntargets = [{{ address = \"{up}\" }}]\n\n\
         {}\n{routes}\n{limits}\n",
        api_key_plugin()
    )
}

/// A model route at `prefix` (stripped) applying `limits`.
fn model_route(name: &str, prefix: &str, limits: &str, api: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nstrip_prefix = true\nupstream = \"up\"\n\
         limits = {limits}\n\
         plugins = [ {{ name = \"api-key\", config = {{ keys = [ {{ key = \"k-alice\", consumer = \"alice\" }}, {{ key = \"k-bob\", consumer = \"bob\" }} ] }} }} ]\n\n\
         [routes.ai]\napi = \"{api}\"\n\n"
    )
}

fn chat(url: &str, key: &str, max_tokens: u64) -> http::Request<Full<Bytes>> {
    let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
        "max_tokens": max_tokens, "messages": [{"role": "user", "content": "say hello to the rate limiter"}]});
    req("POST", url)
        .header("content-type", "application/json")
        .header("x-api-key", key)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn stats(gw: &Gateway) -> Value {
    get(&format!("http://{}/stats", gw.admin.unwrap()))
        .await
        .json()
}

fn limit_stats<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no limit {name} in {s}"))
}

/// Sends `per_client` requests from each of `clients` concurrent clients, spread over
/// `urls`; returns the replies (each bounded in time: none may hang).
async fn burst(urls: &[String], clients: usize, per_client: usize, key: &str) -> Vec<Reply> {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let url = urls[i % urls.len()].clone();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            for _ in 0..per_client {
                let r =
                    tokio::time::timeout(Duration::from_secs(20), send(&c, chat(&url, &key, 40)))
                        .await
                        .expect("did not hang");
                out.push(r);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Checks the refusals and the admitted replies' headers; returns (admitted, refused).
fn check_replies(replies: &[Reply], budget: u64) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    for r in replies {
        match r.status {
            200 => {
                ok += 1;
                assert_eq!(
                    r.header("x-ratelimit-limit-tokens"),
                    Some(&*budget.to_string())
                );
                assert!(r.header("x-ratelimit-remaining-tokens").is_some());
                assert!(r.header("x-ratelimit-reset-tokens").unwrap().ends_with('s'));
            }
            429 => {
                refused += 1;
                let e = r.json();
                assert_eq!(e["error"]["code"], "rate_limit_exceeded", "{e}");
                assert_eq!(e["error"]["type"], "tokens", "{e}");
                let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
                // A charge stays counted up to a window and one sub-window (1/30): 62 s.
                assert!((1..=62).contains(&after), "{after}");
                assert!(r.header("x-ratelimit-remaining-tokens").is_some());
            }
            s => panic!(
                "unexpected status {s}: {:?}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_50_streaming_clients_stays_within_the_token_budget_and_settles_exactly() {
    const BUDGET: u64 = 3000;
    let tally = Arc::new(Tally::default());
    let up = model(tally.clone()).await;
    let routes = model_route("chat", "/openai", "[\"tokens\", \"rpm\"]", "openai")
        + &model_route("claude", "/anthropic", "[\"tiny\"]", "anthropic");
    let limits = format!(
        "[[limits]]\nname = \"tokens\"\ntokens = {BUDGET}\nwindow = \"1m\"\nkey = [\"consumer\"]\n\n\
         [[limits]]\nname = \"rpm\"\nrequests = 1000\nwindow = \"1m\"\nkey = [\"consumer\", \"route\"]\n\n\
         [[limits]]\nname = \"tiny\"\ntokens = 10\nwindow = \"1m\"\n"
    );
    let gw = Gateway::start(&gateway_config(up.addr, &routes, &limits));
    let url = gw.url("/openai/v1/chat/completions");

    let replies = burst(std::slice::from_ref(&url), 50, 4, "k-alice").await;
    let (ok, refused) = check_replies(&replies, BUDGET);
    assert!(ok > 0 && refused > 0, "{ok} admitted, {refused} refused");
    let some = replies.iter().find(|r| r.status == 200).unwrap();
    assert_eq!(some.header("x-ratelimit-limit-requests"), Some("1000"));

    let reported = tally.reported.load(Ordering::SeqCst);
    let excess = tally.excess.load(Ordering::SeqCst);
    assert_eq!(
        tally.calls.load(Ordering::SeqCst),
        ok as u64,
        "refused calls never reach the upstream"
    );
    assert!(
        excess > 0,
        "the test must exercise charging past the estimate"
    );
    assert!(
        reported <= BUDGET + excess,
        "admitted usage {reported} > budget {BUDGET} + settlement error {excess}"
    );
    assert!(reported <= BUDGET + 50 * EXCESS);

    // Settled: the limiter holds exactly what the upstream reported, as do the metrics.
    let check = async || {
        let s = stats(&gw).await;
        let l = limit_stats(&s, "tokens");
        let route = &s["routes"][0];
        let tokens =
            route["input_tokens"].as_u64().unwrap() + route["output_tokens"].as_u64().unwrap();
        if l["local_used"] == reported && tokens == reported && l["refused"] == refused as u64 {
            Ok(())
        } else {
            Err(format!(
                "reported {reported}, refused {refused}: {l} / {tokens}"
            ))
        }
    };
    until_ok("settlement", WAIT, Duration::from_millis(20), check).await;
    let m = get(&format!("http://{}/metrics", gw.admin.unwrap())).await;
    let m = String::from_utf8_lossy(&m.body);
    assert!(
        m.contains(&format!(
            "portcullis_rate_limited_total{{key=\"consumer\",limit=\"tokens\"}} {refused}"
        )),
        "{m}"
    );

    // Another consumer has a budget of its own.
    let c = client();
    let r = send(&c, chat(&url, "k-bob", 40)).await;
    assert_eq!(r.status, 200);

    // A request larger than the budget on an Anthropic route: Anthropic's shape.
    let r = send(&c, chat(&gw.url("/anthropic/v1/messages"), "k-alice", 40)).await;
    assert_eq!(r.status, 429);
    let e = r.json();
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["error"]["type"], "rate_limit_error", "{e}");
    assert!(r.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_slots_are_held_while_the_response_streams() {
    let (release, released) = tokio::sync::watch::channel(false);
    let up = Upstream::start(move |_req| {
        let mut released = released.clone();
        async move {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from("data: {}\n\n")).await;
                let _ = released.wait_for(|r| *r).await;
                let _ = tx.send(Bytes::from("data: [DONE]\n\n")).await;
            });
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(stream(rx))
                .unwrap()
        }
    })
    .await;
    let gw = Gateway::start(&gateway_config(
        up.addr,
        &model_route("chat", "/openai", "[\"two\"]", "openai"),
        "[[limits]]\nname = \"two\"\nconcurrent = 2\nkey = [\"model\"]\n",
    ));
    let url = gw.url("/openai/v1/chat/completions");
    let c = client();
    let a = c.request(chat(&url, "k-alice", 5)).await.unwrap();
    let b = c.request(chat(&url, "k-bob", 5)).await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let r = send(&c, chat(&url, "k-alice", 5)).await;
    assert_eq!(r.status, 429, "a third stream of the model waits");
    assert_eq!(r.json()["error"]["type"], "concurrent requests");
    release.send(true).unwrap();
    a.into_body().collect().await.unwrap();
    b.into_body().collect().await.unwrap();
    let check = async || match send(&c, chat(&url, "k-alice", 5)).await.status {
        200 => Ok(()),
        s => Err(s),
    };
    until_ok("a slot freed", WAIT, Duration::from_millis(20), check).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_counters_of_unchanged_limits() {
    let tally = Arc::new(Tally::default());
    let up = model(tally).await;
    let limit = |n: u64| format!("[[limits]]\nname = \"tokens\"\ntokens = {n}\nwindow = \"1m\"\n");
    let routes = model_route("chat", "/openai", "[\"tokens\"]", "openai");
    let gw = Gateway::start(&gateway_config(up.addr, &routes, &limit(300)));
    let url = gw.url("/openai/v1/chat/completions");
    let c = client();
    let check = async || match send(&c, chat(&url, "k-alice", 40)).await.status {
        429 => Ok(()),
        s => Err(s),
    };
    until_ok("the budget used up", WAIT, Duration::from_millis(1), check).await;
    let reload = async |text: String| {
        std::fs::write(gw.dir.0.join("portcullis.toml"), text).unwrap();
        let r = send(
            &c,
            req("POST", &format!("http://{}/reload", gw.admin.unwrap()))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    };
    // Another route added, the limit unchanged: still used up.
    let more = routes.clone() + &model_route("other", "/other", "[]", "openai");
    reload(gateway_config(up.addr, &more, &limit(300))).await;
    assert_eq!(send(&c, chat(&url, "k-alice", 40)).await.status, 429);
    // The limit changed: it starts afresh.
    reload(gateway_config(up.addr, &more, &limit(301))).await;
    assert_eq!(send(&c, chat(&url, "k-alice", 40)).await.status, 200);
}

/// A streamed chat completion whose one user message is `content`.
fn chat_with(url: &str, content: &str, max_tokens: u64) -> http::Request<Full<Bytes>> {
    req("POST", url)
        .header("content-type", "application/json")
        .header("x-api-key", "k-alice")
        .body(Full::new(Bytes::from(chat_body(content, max_tokens))))
        .unwrap()
}

fn chat_body(content: &str, max_tokens: u64) -> String {
    json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]})
    .to_string()
}

/// `[routes.ai] tokenizer`: the reservation is the prompt's exact token count (plus
/// `max_tokens`), decided at the budget's edge where body length / 4 decides otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn a_tokenizer_reserves_the_prompts_exact_token_count() {
    const MAX: u64 = 50;
    // Many bytes and few tokens (over 16 KiB: counted on the blocking pool), and few
    // bytes and many tokens (each byte of a hieroglyph is a token).
    let few = "abcdefghijklmnopqrstuvwxyz".repeat(800);
    let many = "\u{13000}".repeat(100);
    // The prompt's tokens by OpenAI's cookbook, from tiktoken-rs itself (gpt-4o: o200k_base).
    let exact = |content: &str| {
        let m = tiktoken_rs::ChatCompletionRequestMessage {
            role: "user".into(),
            content: Some(content.into()),
            ..Default::default()
        };
        tiktoken_rs::num_tokens_from_messages("gpt-4o", &[m]).unwrap() as u64
    };
    let estimate = |content: &str, max| (chat_body(content, max).len() as u64).div_ceil(4) + max;
    let few_budget = exact(&few) + MAX;
    let many_budget = exact(&many) + MAX - 1;
    // The edges where the length estimate decides otherwise.
    assert!(chat_body(&few, MAX).len() > 16 << 10);
    assert!(
        estimate(&few, MAX) > few_budget,
        "the estimate would refuse"
    );
    assert!(
        estimate(&many, MAX) <= many_budget,
        "the estimate would admit"
    );

    let tally = Arc::new(Tally::default());
    let up = model(tally).await;
    let tokenizer =
        |route: String| route.trim_end().to_string() + "\ntokenizer = \"o200k_base\"\n\n";
    let routes = tokenizer(model_route("few", "/few", "[\"few\"]", "openai"))
        + &tokenizer(model_route("many", "/many", "[\"many\"]", "openai"))
        + &model_route("estimated", "/estimated", "[\"estimated\"]", "openai");
    let limits = format!(
        "[[limits]]\nname = \"few\"\ntokens = {few_budget}\nwindow = \"1m\"\n\n\
         [[limits]]\nname = \"many\"\ntokens = {many_budget}\nwindow = \"1m\"\n\n\
         [[limits]]\nname = \"estimated\"\ntokens = {few_budget}\nwindow = \"1m\"\n"
    );
    let gw = Gateway::start(&gateway_config(up.addr, &routes, &limits));
    let c = client();
    let url = |prefix: &str| gw.url(&format!("{prefix}/v1/chat/completions"));
    let remaining = |r: &Reply| -> u64 {
        r.header("x-ratelimit-remaining-tokens")
            .expect("x-ratelimit-remaining-tokens")
            .parse()
            .unwrap()
    };

    // One token over the budget: refused, nothing reserved.
    let r = send(&c, chat_with(&url("/few"), &few, MAX + 1)).await;
    assert_eq!(r.status, 429, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(remaining(&r), few_budget);
    // Exactly the budget: admitted, and all of it reserved.
    let r = send(&c, chat_with(&url("/few"), &few, MAX)).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("x-ratelimit-limit-tokens"),
        Some(&*few_budget.to_string())
    );
    assert_eq!(remaining(&r), 0);
    // The same request and budget on a route without a tokenizer: the estimate refuses.
    let r = send(&c, chat_with(&url("/estimated"), &few, MAX)).await;
    assert_eq!(r.status, 429);

    // The other way: the estimate fits, the prompt's tokens do not.
    let r = send(&c, chat_with(&url("/many"), &many, MAX)).await;
    assert_eq!(r.status, 429, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(remaining(&r), many_budget);
    let r = send(&c, chat_with(&url("/many"), &many, MAX - 1)).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(remaining(&r), 0);
}

/// A `redis-server` on a free port, in a temporary folder, without persistence; killed
/// on drop.
pub(crate) struct RedisServer {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
}

impl RedisServer {
    pub(crate) fn start(port: Option<u16>) -> RedisServer {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let dir = TempDir::new();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let up = poll_blocking(WAIT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "redis-server did not start");
        RedisServer {
            child,
            port,
            _dir: dir,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The sum of every window count under `pattern`.
    fn total(&self, pattern: &str) -> u64 {
        let mut c = redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
        keys.iter()
            .map(|k| {
                let vals: Vec<i64> = redis::cmd("HVALS").arg(k).query(&mut c).unwrap();
                vals.iter().sum::<i64>() as u64
            })
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server (apt-get install redis-server)"]
async fn a_fleet_of_three_shares_one_budget_through_redis_and_survives_its_loss() {
    const BUDGET: u64 = 3000;
    let mut redis = RedisServer::start(None);
    let tally = Arc::new(Tally::default());
    let up = model(tally.clone()).await;
    let routes = model_route("deny", "/deny", "[\"shared-deny\"]", "openai")
        + &model_route("local", "/local", "[\"shared-local\"]", "openai");
    let limits = format!(
        "[redis]\nurl = \"{}\"\ntimeout = \"100ms\"\n\n\
         [[limits]]\nname = \"shared-deny\"\ntokens = {BUDGET}\nwindow = \"1m\"\nkey = [\"consumer\"]\nbackend = \"redis\"\non_backend_error = \"deny\"\n\n\
         [[limits]]\nname = \"shared-local\"\ntokens = 1000000\nwindow = \"1m\"\nkey = [\"consumer\"]\nbackend = \"redis\"\non_backend_error = \"local\"\n",
        redis.url()
    );
    let config = gateway_config(up.addr, &routes, &limits);
    let fleet: Vec<Gateway> = (0..3).map(|_| Gateway::start(&config)).collect();
    let deny: Vec<String> = fleet
        .iter()
        .map(|g| g.url("/deny/v1/chat/completions"))
        .collect();
    let local: Vec<String> = fleet
        .iter()
        .map(|g| g.url("/local/v1/chat/completions"))
        .collect();

    // 50 clients spread over the fleet: one budget for all three.
    let replies = burst(&deny, 50, 4, "k-alice").await;
    let (ok, refused) = check_replies(&replies, BUDGET);
    assert!(ok > 0 && refused > 0, "{ok} admitted, {refused} refused");
    let reported = tally.reported.load(Ordering::SeqCst);
    let excess = tally.excess.load(Ordering::SeqCst);
    assert!(
        reported <= BUDGET + excess,
        "fleet admitted {reported} > budget {BUDGET} + settlement error {excess}"
    );
    let pattern = "portcullis:shared-deny:*";
    let check = async || match redis.total(pattern) {
        n if n == reported => Ok(()),
        n => Err(format!("redis holds {n}, the upstream reported {reported}")),
    };
    until_ok("settled in redis", WAIT, Duration::from_millis(20), check).await;

    // Redis gone: `deny` answers 503 at once, `local` counts in each gateway's memory.
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    let c = client();
    for (d, l) in deny.iter().zip(&local) {
        let r = tokio::time::timeout(Duration::from_secs(5), send(&c, chat(d, "k-bob", 40)))
            .await
            .expect("did not hang");
        assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.error_code(), "rate_limit_backend_unavailable");
        let r = tokio::time::timeout(Duration::from_secs(5), send(&c, chat(l, "k-bob", 40)))
            .await
            .expect("did not hang");
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    }

    // Redis back (empty, on the same port): the fleet shares again.
    let redis = RedisServer::start(Some(redis.port));
    for d in &deny {
        let check = async || {
            let r = tokio::time::timeout(Duration::from_secs(5), send(&c, chat(d, "k-bob", 40)))
                .await
                .expect("did not hang");
            match r.status {
                200 => Ok(()),
                s => Err(s),
            }
        };
        until_ok("redis reconnected", WAIT, Duration::from_millis(100), check).await;
    }
    let before = tally.reported.load(Ordering::SeqCst);
    let excess_before = tally.excess.load(Ordering::SeqCst);
    let replies = burst(&deny, 50, 4, "k-alice").await;
    let (ok, refused) = check_replies(&replies, BUDGET);
    assert!(ok > 0 && refused > 0, "{ok} admitted, {refused} refused");
    let reported = tally.reported.load(Ordering::SeqCst) - before;
    let excess = tally.excess.load(Ordering::SeqCst) - excess_before;
    assert!(
        reported <= BUDGET + excess,
        "after the restart the fleet admitted {reported} > {BUDGET} + {excess}"
    );
    let check = async || match redis.total("portcullis:shared-deny:*:alice") {
        n if n == reported => Ok(()),
        n => Err(format!(
            "redis holds {n} for alice, the upstream reported {reported}"
        )),
    };
    until_ok("settled in redis", WAIT, Duration::from_millis(20), check).await;
}
