//! Pulling and deleting models over HTTP (Ollama's `/api/pull` and `/api/delete`, and
//! `/v1/models/pull`), against a local hub and registry serving the real SmolLM2 file;
//! the pulled model then answers a chat.

mod common;
#[path = "../../minerva-pull/tests/hub/mod.rs"]
mod hub;

use std::sync::Arc;

use common::{TestServer, expect_error, json_of, pool};
use hub::{FakeHub, HubFile};
use minerva_pool::ModelPool;
use minerva_pull::{Endpoints, PullOptions};
use minerva_server::ServerConfig;
use minerva_store::{ModelStore, Registry};
use reqwest::StatusCode;
use serde_json::{Value, json};

const REPO: &str = "test/SmolLM2-135M-Instruct-GGUF";

fn smollm2() -> HubFile {
    HubFile::new(Arc::new(
        std::fs::read(common::models_dir().join("smollm2-135m-instruct.gguf")).unwrap(),
    ))
}

async fn start(hub: &FakeHub, home: &std::path::Path, offline: bool) -> TestServer {
    let store = ModelStore::new(home.join("models"));
    let registry = Arc::new(Registry::open(&home.join("registry.sqlite")).unwrap());
    let config = ServerConfig {
        pull: PullOptions {
            offline,
            endpoints: Endpoints {
                hub: hub.url.clone(),
                hub_token: None,
                registry: hub.url.clone(),
            },
            ..PullOptions::default()
        },
        ..ServerConfig::default()
    };
    TestServer::start_on_pool(config, ModelPool::with_registry(store, pool(), registry)).await
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn an_ollama_pull_streams_progress_and_the_pulled_model_chats_then_delete_removes_it() {
    let hub = FakeHub::start();
    let file = smollm2();
    hub.add_manifest("library/smollm2:135m", file.clone());
    let home = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = start(&hub, home.path(), false).await;
        let response = server.post("/api/pull", &json!({ "model": "smollm2:135m" })).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let lines = ndjson(&response.text().await.unwrap());
        assert_eq!(lines[0]["status"], "pulling manifest", "{lines:?}");
        let len = file.bytes.len() as u64;
        assert!(
            lines.iter().any(|l| l["completed"] == len
                && l["total"] == len
                && l["digest"] == format!("sha256:{}", file.sha256)),
            "{lines:?}"
        );
        assert_eq!(lines.last().unwrap()["status"], "success", "{lines:?}");

        let tags = server.ok_get("/api/tags").await;
        assert!(
            tags["models"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "smollm2:135m"),
            "{tags}"
        );
        let reply = server
            .ok(
                "/api/chat",
                &json!({ "model": "smollm2:135m", "stream": false, "options": { "num_predict": 4 },
                         "messages": [{ "role": "user", "content": "Say hi." }] }),
            )
            .await;
        assert!(!reply["message"]["content"].as_str().unwrap().is_empty(), "{reply}");

        // Pulled again: nothing downloaded, success at once.
        let again = server
            .post("/api/pull", &json!({ "model": "smollm2:135m", "stream": false }))
            .await;
        assert_eq!(json_of(again, StatusCode::OK).await["status"], "success");
        assert_eq!(hub.downloads().len(), 1);

        let deleted = server
            .client
            .delete(server.url("/api/delete"))
            .json(&json!({ "model": "smollm2:135m" }))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), StatusCode::OK);
        let tags = server.ok_get("/api/tags").await;
        assert!(tags["models"].as_array().unwrap().is_empty(), "{tags}");
        let again = server
            .client
            .delete(server.url("/api/delete"))
            .json(&json!({ "model": "smollm2:135m" }))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_FOUND);
        assert!(again.json::<Value>().await.unwrap()["error"].is_string());
    });
}

#[test]
fn v1_pull_answers_once_and_refuses_lies_unknowns_and_offline_mode() {
    let hub = FakeHub::start();
    let file = smollm2();
    hub.add_repo_file(REPO, "SmolLM2-135M-Instruct-Q8_0.gguf", file.clone());
    let mut liar = file.clone();
    liar.claimed_sha256 = "cd".repeat(32);
    hub.add_repo_file("test/liar", "liar-Q8_0.gguf", liar);
    let home = tempfile::tempdir().unwrap();
    let offline_home = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = start(&hub, home.path(), false).await;
        let pulled = server
            .ok("/v1/models/pull", &json!({ "model": format!("hf.co/{REPO}:Q8_0") }))
            .await;
        assert_eq!(pulled["id"], "smollm2-135m-instruct:q8_0");
        assert_eq!(pulled["sha256"], file.sha256.as_str());
        assert_eq!(pulled["downloaded"], true);
        let listed = server.ok_get("/v1/models").await;
        assert!(listed.to_string().contains("smollm2-135m-instruct:q8_0"), "{listed}");

        let lie = server
            .post("/v1/models/pull", &json!({ "model": "hf.co/test/liar" }))
            .await;
        let error = expect_error(lie, StatusCode::BAD_GATEWAY, None).await;
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&file.sha256) && message.contains(&"cd".repeat(32)),
            "{message}"
        );

        let unknown = server
            .post("/v1/models/pull", &json!({ "model": "hf.co/test/nothing" }))
            .await;
        expect_error(unknown, StatusCode::NOT_FOUND, Some("model")).await;
        let invalid = server
            .post("/v1/models/pull", &json!({ "model": "file:///etc/passwd" }))
            .await;
        expect_error(invalid, StatusCode::BAD_REQUEST, Some("model")).await;

        let removed = server
            .post("/v1/models/smollm2-135m-instruct:q8_0/remove", &json!({}))
            .await;
        assert_eq!(json_of(removed, StatusCode::OK).await["removed"], true);
        let listed = server.ok_get("/v1/models").await;
        assert!(!listed.to_string().contains("smollm2-135m-instruct:q8_0"), "{listed}");

        let offline = start(&hub, offline_home.path(), true).await;
        let before = hub.requests().len();
        let refused = offline
            .post("/v1/models/pull", &json!({ "model": format!("hf.co/{REPO}") }))
            .await;
        let error = expect_error(refused, StatusCode::BAD_REQUEST, Some("model")).await;
        assert!(error["message"].as_str().unwrap().contains("offline"), "{error}");
        assert_eq!(hub.requests().len(), before, "offline mode made a request");
    });
}
