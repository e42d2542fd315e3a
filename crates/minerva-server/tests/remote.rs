//! Remote backends on loopback: a second Minerva serving as the backend of the first
//! (answers and streams passed through as they come, a client that leaves cancels the
//! upstream generation), and a stand-in upstream that fails on demand (a route falls back
//! past it, its circuit opens after two failures and closes again after a probe).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use axum::routing::{get, post};
use common::*;
use minerva_server::ServerConfig;
use serde_json::{Value, json};

/// An OpenAI-compatible upstream that answers 500 while `failing` is set, answers only
/// after a minute while `slow` is set, and drops the connection while `dropping` is set,
/// counting calls.
#[derive(Default)]
struct Flaky {
    failing: AtomicBool,
    slow: AtomicBool,
    dropping: AtomicBool,
    calls: AtomicUsize,
}

async fn flaky_chat(State(flaky): State<Arc<Flaky>>) -> (AxumStatus, axum::Json<Value>) {
    flaky.calls.fetch_add(1, Ordering::SeqCst);
    if flaky.failing.load(Ordering::SeqCst) {
        return (
            AxumStatus::INTERNAL_SERVER_ERROR,
            axum::Json(json!({ "error": "down" })),
        );
    }
    if flaky.slow.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    if flaky.dropping.load(Ordering::SeqCst) {
        // Ends the handler's task mid-request: hyper closes the connection unanswered.
        panic!("connection dropped on purpose");
    }
    (
        AxumStatus::OK,
        axum::Json(json!({
            "id": "x", "object": "chat.completion", "model": "flaky-model",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "from flaky" }, "finish_reason": "stop" }],
        })),
    )
}

async fn start_flaky() -> (String, Arc<Flaky>) {
    let flaky = Arc::new(Flaky::default());
    let app = Router::new()
        .route("/v1/chat/completions", post(flaky_chat))
        .route("/v1/models", get(|| async { "{}" }))
        .with_state(Arc::clone(&flaky));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, flaky)
}

/// The front server: the real models, plus `far` (another Minerva) and `flaky`.
async fn front(far: &TestServer, flaky: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("minerva.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[backends.far]
urls = ["{}"]
model = "{CHAT}"

[backends.flaky]
urls = ["{flaky}"]
failures = 2
cooldown_secs = 1
health_interval_secs = 3600

# The same upstream behind a breaker that stays open.
[backends.steady]
urls = ["{flaky}"]
failures = 2
cooldown_secs = 3600
health_interval_secs = 3600

[routes.resilient]
models = ["flaky", "{CHAT}"]

[routes.stubborn]
models = ["steady", "{CHAT}"]

[routes.impatient]
models = ["flaky", "{CHAT}"]
timeout_secs = 10
"#,
            far.url("/v1")
        ),
    )
    .unwrap();
    (start_with_routes(config).await, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_minerva_serves_through_the_first_and_a_stream_passes_through_as_it_comes() {
    let far = TestServer::start(ServerConfig::default()).await;
    let (flaky, _) = start_flaky().await;
    let (server, _dir) = front(&far, &flaky).await;

    let direct = far.ok("/v1/chat/completions", &short_chat(CHAT, json!({}))).await;
    let response = server.post("/v1/chat/completions", &short_chat("far", json!({}))).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(route_header(&response), "far; model=far");
    let through: Value = response.json().await.unwrap();
    assert_eq!(through["model"], CHAT);
    assert_eq!(
        through["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"],
        "greedy: the same answer through the hop"
    );
    // The front server loaded nothing for it.
    assert_eq!(server.ok_get("/v1/models/loaded").await["data"], json!([]));

    // A long stream: its first event arrives while the upstream still generates, and a
    // client that leaves then stops the upstream's generation.
    let response = server
        .post(
            "/v1/chat/completions",
            &short_chat(
                "far",
                json!({ "stream": true, "max_tokens": 400, "logit_bias": { "2": -100, "0": -100 } }),
            ),
        )
        .await;
    let mut events = SseReader::new(response);
    assert!(matches!(events.next().await, Some(SseData::Json(_))));
    let leases = |stats: Value| stats["models"][CHAT]["leases"].as_u64().unwrap_or(0);
    assert_eq!(
        leases(far.ok_get("/v1/models/stats").await),
        1,
        "the upstream generation had ended"
    );
    drop(events);
    assert!(
        eventually(Duration::from_secs(20), || async {
            leases(far.ok_get("/v1/models/stats").await) == 0
        })
        .await,
        "the upstream kept generating for a client that left"
    );
    let generated = far.get("/metrics").await.text().await.unwrap();
    let count = generated
        .lines()
        .find_map(|l| l.strip_prefix(&format!("minerva_generated_tokens_total{{model=\"{CHAT}\"}} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(count < 400.0, "{count} tokens generated: the stream ran to its end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_is_passed_over_its_circuit_opens_and_closes_after_a_probe() {
    let far = TestServer::start(ServerConfig::default()).await;
    let (flaky_url, flaky) = start_flaky().await;
    let (server, _dir) = front(&far, &flaky_url).await;
    flaky.failing.store(true, Ordering::SeqCst);

    for _ in 0..2 {
        let response = server
            .post("/v1/chat/completions", &short_chat("stubborn", json!({})))
            .await;
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(
            route_header(&response),
            format!("stubborn; model={CHAT}; skipped=steady:upstream")
        );
        assert_eq!(response.json::<Value>().await.unwrap()["model"], CHAT);
    }
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    // Open after two failures: the next request does not reach it.
    let response = server
        .post("/v1/chat/completions", &short_chat("stubborn", json!({})))
        .await;
    assert_eq!(
        route_header(&response),
        format!("stubborn; model={CHAT}; skipped=steady:upstream")
    );
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2, "an open circuit was called");
    // Straight to the backend: a 502 naming it.
    let direct = server
        .post("/v1/chat/completions", &short_chat("steady", json!({})))
        .await;
    assert_eq!(direct.status(), reqwest::StatusCode::BAD_GATEWAY);
    assert!(direct.text().await.unwrap().contains("circuit is open"));

    // The other breaker on the same upstream: open after two failures, probed after its
    // one-second cool-down.
    for _ in 0..2 {
        server
            .ok("/v1/chat/completions", &short_chat("resilient", json!({})))
            .await;
    }
    // Healthy again: once the cool-down is over, a probe gets through and closes it.
    flaky.failing.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(20), || async {
            let r = server
                .post("/v1/chat/completions", &short_chat("resilient", json!({})))
                .await;
            r.json::<Value>().await.unwrap()["model"] == "flaky-model"
        })
        .await,
        "the circuit never closed"
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("minerva_backend_circuit_open{") && l.contains("flaky") && l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_times_out_and_a_dropped_connection_falls_back() {
    let far = TestServer::start(ServerConfig::default()).await;
    let (flaky_url, flaky) = start_flaky().await;
    let (server, _dir) = front(&far, &flaky_url).await;
    // The local fallback loaded already, so that it answers well within the timeout.
    server.ok("/v1/chat/completions", &short_chat(CHAT, json!({}))).await;

    flaky.slow.store(true, Ordering::SeqCst);
    let response = server
        .post("/v1/chat/completions", &short_chat("impatient", json!({})))
        .await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        route_header(&response),
        format!("impatient; model={CHAT}; skipped=flaky:timeout")
    );
    flaky.slow.store(false, Ordering::SeqCst);

    flaky.dropping.store(true, Ordering::SeqCst);
    let response = server
        .post("/v1/chat/completions", &short_chat("resilient", json!({})))
        .await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        route_header(&response),
        format!("resilient; model={CHAT}; skipped=flaky:upstream")
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    for reason in ["timeout", "upstream"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("minerva_route_fallbacks_total{")
                && l.contains("model=\"flaky\"")
                && l.contains(&format!("reason=\"{reason}\""))),
            "no {reason} fallback counted"
        );
    }
}
