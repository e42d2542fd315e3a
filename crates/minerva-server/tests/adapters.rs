//! LoRA adapters over HTTP: `BASE+ADAPTER` names the base model with an adapter of the
//! store's `adapters/` directory. The adapter changes the answers of the requests that
//! name it and no other; one that is missing, or made for another base, is refused with
//! the reason.

mod common;

use std::sync::Arc;

use common::{BASE, CHAT, TestServer, expect_error, pool};
use minerva_engine::llm::lora::LoraAdapterFile;
use minerva_pool::ModelPool;
use minerva_server::ServerConfig;
use minerva_store::{ModelId, ModelStore, Registry};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A rank-4 adapter for the chat model's query and value projections, with B set to a
/// fixed pattern (a trained adapter's B is not zero), recording `base_sha256`.
fn write_adapter(store: &ModelStore, name: &str, base_sha256: &str) {
    let base = store.root().join(format!("{CHAT}.gguf"));
    let mut file = LoraAdapterFile::init(&base, &["attn_q.weight", "attn_v.weight"], 4, 8.0, 1).unwrap();
    for (i, pair) in file.pairs.iter_mut().enumerate() {
        for (j, b) in pair.b.iter_mut().enumerate() {
            *b = 0.5 * ((i * 31 + j * 17) as f32).sin();
        }
    }
    file.base_sha256 = Some(base_sha256.to_owned());
    let dir = store.root().join(minerva_store::ADAPTERS_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    file.write(&dir.join(format!("{name}.gguf"))).unwrap();
}

fn greedy_chat(model: &str) -> Value {
    json!({
        "model": model,
        "max_tokens": 12,
        "temperature": 0,
        "messages": [{ "role": "user", "content": "Name three colours." }]
    })
}

fn content(reply: &Value) -> String {
    reply["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_with_an_adapter_answers_differently_and_a_mismatched_adapter_is_refused() {
    // A fresh store holding both models (hard links), registered: the registry's digest of
    // the chat model is what a fitting adapter records.
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::new(home.path().join("models"));
    std::fs::create_dir(store.root()).unwrap();
    for model in [CHAT, BASE] {
        std::fs::hard_link(
            common::models_dir().join(format!("{model}.gguf")),
            store.root().join(format!("{model}.gguf")),
        )
        .unwrap();
    }
    let registry = Arc::new(Registry::open(&home.path().join("registry.sqlite")).unwrap());
    let chat_id = ModelId::new(CHAT).unwrap();
    for model in [CHAT, BASE] {
        registry
            .register(&store, &ModelId::new(model).unwrap(), &mut |_, _| {})
            .unwrap();
    }
    let digest = registry.record(&chat_id).unwrap().unwrap().sha256;
    write_adapter(&store, "colours", &digest);
    let store_root = store.root().to_owned();
    write_adapter(&store, "other-base", &"0".repeat(64));
    let server = TestServer::start_on_pool(
        ServerConfig::default(),
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
    )
    .await;

    let plain = content(&server.ok("/v1/chat/completions", &greedy_chat(CHAT)).await);
    let chat_bytes = |loaded: &Value| {
        loaded["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == CHAT)
            .map(|m| m["bytes"].as_u64().unwrap())
            .unwrap()
    };
    let base_bytes = chat_bytes(&server.ok_get("/v1/models/loaded").await);
    let adapted_reply = server
        .ok("/v1/chat/completions", &greedy_chat(&format!("{CHAT}+colours")))
        .await;
    assert_eq!(adapted_reply["model"], format!("{CHAT}+colours"));
    let adapted = content(&adapted_reply);
    assert_ne!(adapted, plain, "the adapter changed nothing");
    // The same adapter again (loaded once, kept): the same answer. And the base alone is
    // still the base.
    let again = content(
        &server
            .ok("/v1/chat/completions", &greedy_chat(&format!("{CHAT}+colours")))
            .await,
    );
    assert_eq!(again, adapted);
    // The adapter's tensors count with the model, once (the second request reused it).
    let adapter_bytes =
        minerva_engine::llm::lora::inspect_adapter(&store_root.join(minerva_store::ADAPTERS_DIR).join("colours.gguf"))
            .unwrap()
            .tensor_bytes;
    assert_eq!(
        chat_bytes(&server.ok_get("/v1/models/loaded").await),
        base_bytes + adapter_bytes
    );
    // A per-request scale: 0 is the base, 1 the default, and the range is checked.
    let scaled = |scale: f64| {
        let mut body = greedy_chat(&format!("{CHAT}+colours"));
        body["adapter_scale"] = json!(scale);
        body
    };
    assert_eq!(content(&server.ok("/v1/chat/completions", &scaled(0.0)).await), plain);
    assert_eq!(content(&server.ok("/v1/chat/completions", &scaled(1.0)).await), adapted);
    let too_large = server.post("/v1/chat/completions", &scaled(5.0)).await;
    expect_error(too_large, StatusCode::BAD_REQUEST, Some("adapter_scale")).await;
    let mut no_adapter = greedy_chat(CHAT);
    no_adapter["adapter_scale"] = json!(0.5);
    let no_adapter = server.post("/v1/chat/completions", &no_adapter).await;
    expect_error(no_adapter, StatusCode::BAD_REQUEST, Some("adapter_scale")).await;
    assert_eq!(
        content(&server.ok("/v1/chat/completions", &greedy_chat(CHAT)).await),
        plain
    );
    // Completions take the same name.
    let completion = server
        .ok(
            "/v1/completions",
            &json!({ "model": format!("{CHAT}+colours"), "prompt": "Red, green and", "max_tokens": 4, "temperature": 0 }),
        )
        .await;
    assert!(completion["choices"][0]["text"].is_string(), "{completion}");

    // No such adapter: 404, naming it.
    let missing = server
        .post("/v1/chat/completions", &greedy_chat(&format!("{CHAT}+nope")))
        .await;
    let error = expect_error(missing, StatusCode::NOT_FOUND, None).await;
    assert!(error["message"].as_str().unwrap().contains("nope"), "{error}");
    // Made for another file of the same architecture: 400, with the reason, no path.
    let other = server
        .post("/v1/chat/completions", &greedy_chat(&format!("{CHAT}+other-base")))
        .await;
    let error = expect_error(other, StatusCode::BAD_REQUEST, Some("model")).await;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("made for the base"), "{error}");
    assert!(!message.contains(home.path().to_str().unwrap()), "{error}");
    // Made for another architecture: 400.
    let gemma = server
        .post("/v1/chat/completions", &greedy_chat(&format!("{BASE}+colours")))
        .await;
    let error = expect_error(gemma, StatusCode::BAD_REQUEST, Some("model")).await;
    assert!(error["message"].as_str().unwrap().contains("`llama` model"), "{error}");
    // The server goes on serving.
    assert_eq!(
        content(&server.ok("/v1/chat/completions", &greedy_chat(CHAT)).await),
        plain
    );
}
