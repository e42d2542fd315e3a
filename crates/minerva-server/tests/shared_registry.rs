//! Two replicas sharing one registry on a real PostgreSQL server (`--registry
//! postgres://…`) and one models volume: a model made through one replica serves through
//! the other with the settings it was made with, and the usage patterns (and so the
//! preloader) of each replica see the requests of both.

mod common;

#[path = "../../minerva-store/tests/postgres_server/mod.rs"]
mod postgres_server;

use std::sync::Arc;
use std::time::Duration;

use common::{CHAT, TestServer, eventually, pool, usage};
use minerva_pool::ModelPool;
use minerva_server::ServerConfig;
use minerva_store::{ModelStore, Registry};
use postgres_server::PostgresServer;
use reqwest::StatusCode;
use serde_json::json;

const SYSTEM: &str = "You are a pirate. Answer every question like a pirate would.";

async fn replica(store: &ModelStore, url: &str) -> TestServer {
    let registry = Arc::new(Registry::connect(url).unwrap());
    let pool = ModelPool::with_registry(ModelStore::new(store.root()), pool(), registry);
    TestServer::start_on_pool(ServerConfig::default(), pool).await
}

/// Requests for `model` in `/v1/models/patterns`.
async fn requests_seen(server: &TestServer, model: &str) -> u64 {
    let patterns = server.ok_get("/v1/models/patterns").await;
    patterns["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["id"] == model)
        .filter_map(|m| m["recent_requests"].as_u64())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_made_through_one_replica_serves_through_the_other_and_usage_is_the_clusters() {
    let postgres = PostgresServer::start();
    let url = postgres.database("cluster");
    let volume = tempfile::tempdir().unwrap();
    let store = ModelStore::new(volume.path().join("models"));
    std::fs::create_dir(store.root()).unwrap();
    let file = format!("{CHAT}.gguf");
    std::fs::hard_link(common::models_dir().join(&file), store.root().join(&file)).unwrap();
    let a = replica(&store, &url).await;
    let b = replica(&store, &url).await;

    // Made through a: a new name with its own system prompt and context.
    let created = a
        .post(
            "/api/create",
            &json!({ "model": "pirate", "from": CHAT, "system": SYSTEM, "parameters": { "num_ctx": 96 }, "stream": false }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::OK);

    // Served through b with those settings: the context it was made with, the system
    // prompt in front of a chat that brings none.
    let tokenized = b
        .ok("/v1/tokenize", &json!({ "model": "pirate", "prompt": "Hi" }))
        .await;
    assert_eq!(tokenized["n_ctx"], 96, "{tokenized}");
    let reply = b
        .ok(
            "/v1/chat/completions",
            &json!({ "model": "pirate", "max_tokens": 2, "messages": [{ "role": "user", "content": "Hi" }] }),
        )
        .await;
    let with_system = b.chat_tokens_with_system(CHAT, SYSTEM, "Hi").await;
    assert_eq!(usage(&reply).0, with_system, "{reply}");

    // Requests through a and through b are one usage history: each replica's patterns
    // (what its preloader acts on) count both.
    for server in [&a, &b, &b] {
        server
            .ok(
                "/v1/chat/completions",
                &json!({ "model": CHAT, "max_tokens": 1, "messages": [{ "role": "user", "content": "Hi" }] }),
            )
            .await;
    }
    // Every model request counts: b's two for "pirate" (a tokenization and a chat), and
    // for the base, b's tokenization and the three chats, one of them through a.
    let counted = eventually(Duration::from_secs(30), || async {
        requests_seen(&a, CHAT).await == 4 && requests_seen(&a, "pirate").await == 2
    })
    .await;
    assert!(
        counted,
        "a sees b's requests: {}",
        a.ok_get("/v1/models/patterns").await
    );
    assert_eq!(requests_seen(&b, CHAT).await, 4);
}
