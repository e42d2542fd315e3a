//! A model's own settings (`minerva config`) change what the server does on its next load:
//! a system prompt for chats that bring none, a context size, sampling defaults.

mod common;

use std::sync::Arc;

use common::{CHAT, TestServer, expect_error, pool, usage};
use minerva_pool::ModelPool;
use minerva_server::ServerConfig;
use minerva_store::{ModelId, ModelStore, Registry};
use reqwest::StatusCode;
use serde_json::json;

const SYSTEM: &str = "You are a pirate. Answer every question like a pirate would.";

/// A chat of one user message and no system message.
fn user_only(text: &str) -> serde_json::Value {
    json!({ "model": CHAT, "max_tokens": 2, "messages": [{ "role": "user", "content": text }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_prompt_and_a_context_size_set_for_a_model_apply_from_its_next_load() {
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::new(home.path().join("models"));
    std::fs::create_dir(store.root()).unwrap();
    std::fs::hard_link(
        common::models_dir().join(format!("{CHAT}.gguf")),
        store.root().join(format!("{CHAT}.gguf")),
    )
    .unwrap();
    let registry = Arc::new(Registry::open(&home.path().join("registry.sqlite")).unwrap());
    let id = ModelId::new(CHAT).unwrap();
    registry.register(&store, &id, &mut |_, _| {}).unwrap();
    let mut settings = registry.settings(&id).unwrap();
    settings.set("system", Some(SYSTEM)).unwrap();
    settings.set("num_ctx", Some("96")).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    let server = TestServer::start_on_pool(
        ServerConfig::default(),
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
    )
    .await;

    // The chat's prompt is the model's system prompt plus the user's message.
    let with_system = server
        .ok(
            "/v1/tokenize",
            &json!({ "model": CHAT, "messages": [{ "role": "system", "content": SYSTEM }, { "role": "user", "content": "Hi" }] }),
        )
        .await["tokens"]
        .as_array()
        .unwrap()
        .len() as u64;
    let reply = server.ok("/v1/chat/completions", &user_only("Hi")).await;
    assert_eq!(usage(&reply).0, with_system, "{reply}");
    // A chat with its own system message keeps it.
    let own = server
        .ok(
            "/v1/chat/completions",
            &json!({ "model": CHAT, "max_tokens": 2, "messages": [{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Hi" }] }),
        )
        .await;
    assert!(usage(&own).0 < with_system, "{own}");

    // The context is the model's 96 tokens, not the server's.
    let long = "word ".repeat(120);
    let refused = server.post("/v1/chat/completions", &user_only(&long)).await;
    let error = expect_error(refused, StatusCode::BAD_REQUEST, Some("messages")).await;
    assert!(error["message"].as_str().unwrap().contains("96"), "{error}");

    // Reset, unload: the next load has the server's context again (1024 here), not a
    // size remembered from the load before (96 tokens asked for a 512-cell session).
    let mut settings = registry.settings(&id).unwrap();
    settings.set("num_ctx", None).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    server.delete(&format!("/v1/models/{CHAT}")).await;
    let longer = "word ".repeat(700);
    let served = server.ok("/v1/chat/completions", &user_only(&longer)).await;
    assert!(usage(&served).0 > 600, "{served}");
}

/// An embedding model's `embedding_dtype` setting picks its precision on its next load:
/// bf16 vectors (AVX512-BF16) are close to the f32 ones but not the same; reset, the next
/// load is f32 again, bit for bit what the engine computes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_models_dtype_setting_applies_from_its_next_load() {
    use common::EMBED;
    use minerva_engine::embed::{EmbedOptions, cosine_similarity};
    if !std::arch::is_x86_feature_detected!("avx512bf16") {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::new(home.path().join("models"));
    let dir = store.root().join(EMBED);
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
    ] {
        std::fs::hard_link(common::models_dir().join(EMBED).join(file), dir.join(file)).unwrap();
    }
    let registry = Arc::new(Registry::open(&home.path().join("registry.sqlite")).unwrap());
    let id = ModelId::new(EMBED).unwrap();
    registry.register(&store, &id, &mut |_, _| {}).unwrap();
    let mut settings = registry.settings(&id).unwrap();
    assert!(settings.set("embedding_dtype", Some("int3")).is_err());
    settings.set("embedding_dtype", Some("bf16")).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    let server = TestServer::start_on_pool(
        ServerConfig::default(),
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
    )
    .await;
    let text = "The quick brown fox jumps over the lazy dog.";
    let embed = || async {
        let body = server
            .ok("/v1/embeddings", &json!({ "model": EMBED, "input": text }))
            .await;
        body["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect::<Vec<f32>>()
    };
    let reference = minerva_engine::embed::load(&dir)
        .unwrap()
        .embed(&[text], EmbedOptions::default())
        .unwrap()
        .remove(0);
    let bf16 = embed().await;
    let c = cosine_similarity(&bf16, &reference);
    assert!(c >= 0.999 && bf16 != reference, "bf16 cosine {c}");

    let mut settings = registry.settings(&id).unwrap();
    settings.set("embedding_dtype", None).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    server.delete(&format!("/v1/models/{EMBED}")).await;
    assert_eq!(embed().await, reference, "f32 again after the reset and a reload");
}
