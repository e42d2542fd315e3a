//! Model lifecycle (load, preload, unload, stats), slots freed when a client goes away,
//! and graceful shutdown, end to end on the real server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use minerva_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The pool measures a load's memory as the growth of the process's resident set, so the
/// tests of this binary that load or free models run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn loaded_entry<'a>(loaded: &'a Value, id: &str) -> Option<&'a Value> {
    loaded["data"].as_array().unwrap().iter().find(|m| m["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_load_show_in_stats_unload_and_preload() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(ServerConfig::default()).await;
    assert_eq!(server.ok_get("/v1/models/loaded").await["data"], json!([]));

    let load = |id: &str| format!("/v1/models/{id}/load");
    let loaded = server.ok(&load(CHAT), &json!({})).await;
    assert_eq!(loaded["id"], CHAT);
    assert_eq!(loaded["loaded"], true);
    assert!(loaded["bytes"].as_u64().unwrap() > 0, "{loaded}");

    let list = server.ok_get("/v1/models/loaded").await;
    let entry = loaded_entry(&list, CHAT).unwrap_or_else(|| panic!("{CHAT} not loaded: {list}"));
    assert_eq!(entry["bytes"], loaded["bytes"]);
    assert!(entry["loaded_at"].as_u64().unwrap() > 0);
    assert_eq!(server.ok_get("/health").await["loaded_models"], json!([CHAT]));

    // A second load and a request find it loaded: hits, not misses.
    server.ok(&load(CHAT), &json!({})).await;
    server
        .ok("/v1/chat/completions", &chat_body("Hi", json!({ "max_tokens": 1 })))
        .await;
    let stats = server.ok_get("/v1/models/stats").await;
    assert_eq!(stats["object"], "model_stats");
    let chat = &stats["models"][CHAT];
    assert_eq!(
        (&chat["loaded"], &chat["misses"], &chat["hits"], &chat["evictions"]),
        (&json!(true), &json!(1), &json!(2), &json!(0)),
        "{stats}"
    );
    assert!(chat["bytes"].as_u64().unwrap() > 0);

    // Unloading removes it from the loaded list and counts an eviction.
    let unloaded = json_of(server.delete(&format!("/v1/models/{CHAT}")).await, StatusCode::OK).await;
    assert_eq!(unloaded["unloaded"], true);
    assert!(loaded_entry(&server.ok_get("/v1/models/loaded").await, CHAT).is_none());
    let chat = &server.ok_get("/v1/models/stats").await["models"][CHAT];
    assert_eq!(
        (&chat["loaded"], &chat["evictions"]),
        (&json!(false), &json!(1)),
        "{chat}"
    );
    let again = json_of(server.delete(&format!("/v1/models/{CHAT}")).await, StatusCode::OK).await;
    assert_eq!(again["unloaded"], false, "nothing left to unload");

    // The next request loads it again (a miss) and is served.
    server
        .ok(
            "/v1/completions",
            &completion_body(CHAT, "Hi", json!({ "max_tokens": 1 })),
        )
        .await;
    let chat = &server.ok_get("/v1/models/stats").await["models"][CHAT];
    assert_eq!((&chat["loaded"], &chat["misses"]), (&json!(true), &json!(2)), "{chat}");

    // Preload answers at once and the model is loaded soon after.
    let response = server.post(&format!("/v1/models/{EMBED}/preload"), &json!({})).await;
    let accepted = json_of(response, StatusCode::ACCEPTED).await;
    assert_eq!(accepted["preloading"], true);
    let appeared = eventually(Duration::from_secs(60), || async {
        loaded_entry(&server.ok_get("/v1/models/loaded").await, EMBED).is_some()
    })
    .await;
    assert!(appeared, "{EMBED} never finished preloading");
    let embed = &server.ok_get("/v1/models/stats").await["models"][EMBED];
    assert_eq!(
        (&embed["loaded"], &embed["preloads"]),
        (&json!(true), &json!(1)),
        "{embed}"
    );
    // A preloaded model serves its first request as a hit.
    server
        .ok("/v1/embeddings", &json!({ "model": EMBED, "input": "x" }))
        .await;
    let embed = &server.ok_get("/v1/models/stats").await["models"][EMBED];
    assert_eq!((&embed["hits"], &embed["misses"]), (&json!(1), &json!(0)), "{embed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_requests_for_unknown_models_are_404() {
    let server = TestServer::start(ServerConfig::default()).await;
    let id = "no-such-model";
    let responses = [
        server.get(&format!("/v1/models/{id}")).await,
        server.post(&format!("/v1/models/{id}/load"), &json!({})).await,
        server.post(&format!("/v1/models/{id}/preload"), &json!({})).await,
        server.delete(&format!("/v1/models/{id}")).await,
    ];
    for response in responses {
        let error = expect_error(response, StatusCode::NOT_FOUND, Some("model")).await;
        assert_eq!(error["code"], "model_not_found");
    }
    assert_eq!(server.ok_get("/v1/models/loaded").await["data"], json!([]));
    assert_eq!(server.ok_get("/v1/models/stats").await["models"], json!({}));
}

/// Posts `body` until it is admitted (200) or `within` passes; only 503 (no free slot)
/// may come before. A stream is answered as soon as it is admitted, so this measures
/// admission itself.
async fn admitted_within(server: &TestServer, path: &str, body: &Value, within: Duration) -> Option<reqwest::Response> {
    let deadline = Instant::now() + within;
    loop {
        let response = server.post(path, body).await;
        match response.status() {
            StatusCode::OK => return Some(response),
            StatusCode::SERVICE_UNAVAILABLE if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            StatusCode::SERVICE_UNAVAILABLE => return None,
            other => panic!("{path}: unexpected {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_frees_its_slot_at_once() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(ServerConfig {
        max_concurrent_requests: 1,
        max_queued_requests: 0,
        ..ServerConfig::default()
    })
    .await;
    let streams = [
        (
            "/v1/chat/completions",
            chat_body(
                "Repeat the word hello 500 times.",
                json!({ "max_tokens": 1000, "temperature": 0, "stream": true }),
            ),
        ),
        (
            "/v1/completions",
            completion_body(
                CHAT,
                COUNTING,
                json!({ "max_tokens": 1000, "temperature": 0, "stream": true }),
            ),
        ),
    ];
    let probe = chat_body("Hi", json!({ "max_tokens": 2, "temperature": 0, "stream": true }));
    for (path, body) in &streams {
        // A long stream takes the only slot (a probe finishing just before may hold it a moment).
        let response = admitted_within(&server, path, body, Duration::from_secs(5))
            .await
            .expect("the long stream is admitted");
        let mut held = SseReader::new(response);
        for _ in 0..2 {
            assert!(matches!(held.next().await, Some(SseData::Json(_))), "{path}");
        }
        let refused = server.post("/v1/chat/completions", &probe).await;
        assert_eq!(
            refused.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: the stream holds the slot"
        );

        // The client goes away mid-stream: the slot must be free within a second.
        drop(held);
        let admitted = admitted_within(&server, "/v1/chat/completions", &probe, Duration::from_secs(1))
            .await
            .unwrap_or_else(|| panic!("{path}: the slot was still taken a second after the client left"));
        // And the freed slot serves a request to its end.
        let chunks = read_sse(admitted).await;
        assert!(
            chunks.last().unwrap()["choices"][0]["finish_reason"].is_string(),
            "{chunks:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let _serial = SERIAL.lock().await;
    let mut server = TestServer::start(ServerConfig::default()).await;
    let prompt_tokens = server.token_count(CHAT, COUNTING, false).await as u64;
    let free_slots = server.ok_get("/health").await["free_slots"].as_u64().unwrap();

    let request = server.client.post(server.url("/v1/completions")).json(&completion_body(
        CHAT,
        COUNTING,
        json!({ "max_tokens": 64, "temperature": 0 }),
    ));
    let in_flight = tokio::spawn(async move { request.send().await });
    // Shut down once the request holds a slot, i.e. while it generates.
    let started = eventually(Duration::from_secs(30), || async {
        server.ok_get("/health").await["free_slots"].as_u64() == Some(free_slots - 1)
    })
    .await;
    assert!(started, "the request never started");
    server.trigger_shutdown();
    assert!(
        !in_flight.is_finished(),
        "the request finished before the shutdown began"
    );

    // New connections are refused while the request finishes...
    let addr = server.addr;
    let refused = eventually(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "the server still accepts connections after shutdown");

    // ...and the request completes in full.
    let response = in_flight.await.unwrap().expect("the in-flight request is answered");
    let body = json_of(response, StatusCode::OK).await;
    assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
    assert_eq!(usage(&body), (prompt_tokens, 64, prompt_tokens + 64));
    server.stopped().await.expect("serve returns Ok");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_unloads_after_the_request_and_a_duration_sets_the_expiry() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(ServerConfig::default()).await;
    let body = chat_body("Hi", json!({ "max_tokens": 1, "keep_alive": 0 }));
    server.ok("/v1/chat/completions", &body).await;
    // The lease ends right after the response is written: wait for that state.
    let deadline = Instant::now() + Duration::from_secs(10);
    while loaded_entry(&server.ok_get("/v1/models/loaded").await, CHAT).is_some() {
        assert!(Instant::now() < deadline, "keep_alive 0 left the model loaded");
        tokio::task::yield_now().await;
    }
    let chat = &server.ok_get("/v1/models/stats").await["models"][CHAT];
    assert_eq!(chat["evictions_by_reason"]["idle"], 1, "{chat}");

    // A ten-minute keep-alive shows as an expiry about ten minutes ahead.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let loaded = server
        .ok(&format!("/v1/models/{CHAT}/load"), &json!({ "keep_alive": "10m" }))
        .await;
    assert_eq!(loaded["loaded"], true);
    let list = server.ok_get("/v1/models/loaded").await;
    let expires = loaded_entry(&list, CHAT).unwrap()["expires_at"].as_u64().unwrap_or(0);
    assert!(
        (now + 590..=now + 610).contains(&expires),
        "expires_at {expires}, now {now}: {list}"
    );

    // An invalid keep_alive is a 400 naming the field, and nothing changes.
    let response = server
        .post(
            "/v1/chat/completions",
            &chat_body("Hi", json!({ "keep_alive": "soon" })),
        )
        .await;
    let error = expect_error(response, StatusCode::BAD_REQUEST, Some("keep_alive")).await;
    assert!(error["message"].as_str().unwrap().contains("5m"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_larger_than_the_memory_budget_is_refused_clearly() {
    let _serial = SERIAL.lock().await;
    let pool = minerva_pool::PoolConfig {
        budget: minerva_pool::Budget::Fixed(16 << 20),
        ..pool()
    };
    let server = TestServer::start_with(ServerConfig::default(), pool, models_dir()).await;
    let response = server
        .post("/v1/chat/completions", &chat_body("Hi", json!({ "max_tokens": 1 })))
        .await;
    let error = expect_error(response, StatusCode::INSUFFICIENT_STORAGE, None).await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("needs") && message.contains(&(16u64 << 20).to_string()),
        "{message}"
    );
    assert_eq!(error["code"], "insufficient_memory");
    let stats = server.ok_get("/v1/models/stats").await;
    assert_eq!(stats["pool"]["budget_bytes"], 16u64 << 20);
    assert_eq!(stats["pool"]["bytes_in_use"], 0);
    assert_eq!(server.ok_get("/health").await["status"], "ok");
}

/// Copies `from` into `to`, recursively (real copies: the test changes them).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_file_changed_is_refused_and_usage_is_recorded() {
    let _serial = SERIAL.lock().await;
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    copy_tree(&models_dir().join(EMBED), &models.join("mini"));
    let store = minerva_store::ModelStore::new(&models);
    let registry = minerva_store::Registry::open(&minerva_store::Registry::default_path(&store)).unwrap();
    let pool = minerva_pool::ModelPool::with_registry(store, pool(), std::sync::Arc::new(registry));
    let server = TestServer::start_on_pool(ServerConfig::default(), pool).await;

    // First use: registered (hashed) and served.
    let body = json!({ "model": "mini", "input": "integrity" });
    server.ok("/v1/embeddings", &body).await;
    json_of(server.delete("/v1/models/mini").await, StatusCode::OK).await;

    // One byte of the weights changes behind the server's back: the next load is refused
    // with a clear error, and the server keeps serving.
    let weights = models.join("mini/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&weights, bytes).unwrap();
    let response = server.post("/v1/embeddings", &body).await;
    let error = expect_error(response, StatusCode::CONFLICT, None).await;
    assert_eq!(error["code"], "model_integrity", "{error}");
    assert!(error["message"].as_str().unwrap().contains("SHA-256"), "{error}");
    assert!(loaded_entry(&server.ok_get("/v1/models/loaded").await, "mini").is_none());
    assert_eq!(server.ok_get("/health").await["status"], "ok");

    // The access log saw both requests; the patterns endpoint reports them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let patterns = server.ok_get("/v1/models/patterns").await;
        assert_eq!(patterns["enabled"], true);
        let mini = patterns["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "mini")
            .cloned();
        if mini.as_ref().is_some_and(|m| m["recent_requests"] == 2) {
            assert_eq!(patterns["hot"][0], "mini", "{patterns}");
            break;
        }
        assert!(Instant::now() < deadline, "usage not recorded: {patterns}");
        tokio::task::yield_now().await;
    }
}
