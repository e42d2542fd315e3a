//! LoRA adapters over HTTP: `BASE+ADAPTER` names the base model with an adapter of the
//! store's `adapters/` directory, on the OpenAI and the Ollama routes, and an alias of the
//! configuration file may name one. The adapter changes the answers of the requests that
//! name it and no other; one that is missing, made for another base, or changed since it
//! was registered is refused with the reason.

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
/// fixed pattern of `phase` and `amplitude` (a trained adapter's B is not zero), recording `base_sha256`.
fn write_adapter(store: &ModelStore, name: &str, base_sha256: &str, phase: f32, amplitude: f32) {
    let base = store.root().join(format!("{CHAT}.gguf"));
    let mut file = LoraAdapterFile::init(&base, &["attn_q.weight", "attn_v.weight"], 4, 8.0, 1).unwrap();
    for (i, pair) in file.pairs.iter_mut().enumerate() {
        for (j, b) in pair.b.iter_mut().enumerate() {
            *b = amplitude * ((i * 31 + j * 17) as f32 + phase).sin();
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
    write_adapter(&store, "colours", &digest, 0.0, 0.5);
    write_adapter(&store, "shapes", &digest, 1.3, 0.2);
    let store_root = store.root().to_owned();
    write_adapter(&store, "other-base", &"0".repeat(64), 0.0, 0.5);
    let config = home.path().join("minerva.toml");
    std::fs::write(&config, format!("[aliases]\ncolourful = \"{CHAT}+colours\"\n")).unwrap();
    let routing = minerva_server::routing::Routing::load(Some(config), store.clone()).expect("the alias parses");
    let server = TestServer::start_routed(
        ServerConfig::default(),
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
        "127.0.0.1:0",
        Some(routing),
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
    // Ollama's chat takes the same name (without Ollama's default repeat penalty, it is
    // the same request), and the alias names the base with the adapter.
    let ollama = server
        .ok(
            "/api/chat",
            &json!({
                "model": format!("{CHAT}+colours"), "stream": false,
                "options": { "temperature": 0, "num_predict": 12, "repeat_penalty": 1.0 },
                "messages": [{ "role": "user", "content": "Name three colours." }]
            }),
        )
        .await;
    assert_eq!(ollama["message"]["content"], adapted.as_str(), "{ollama}");
    assert_eq!(
        content(&server.ok("/v1/chat/completions", &greedy_chat("colourful")).await),
        adapted
    );
    // Two adapters at once: their updates add up, whatever order they are named in (and
    // an alias with one takes another); at scale 0 both are off.
    let shapes = content(
        &server
            .ok("/v1/chat/completions", &greedy_chat(&format!("{CHAT}+shapes")))
            .await,
    );
    let both = content(
        &server
            .ok("/v1/chat/completions", &greedy_chat(&format!("{CHAT}+colours+shapes")))
            .await,
    );
    assert!(
        both != adapted && both != shapes,
        "{both:?} is one adapter's answer (plain {plain:?}, colours {adapted:?}, shapes {shapes:?})"
    );
    for name in [format!("{CHAT}+shapes+colours"), "colourful+shapes".to_owned()] {
        assert_eq!(
            content(&server.ok("/v1/chat/completions", &greedy_chat(&name)).await),
            both,
            "{name}"
        );
    }
    let mut off = greedy_chat(&format!("{CHAT}+colours+shapes"));
    off["adapter_scale"] = json!(0.0);
    assert_eq!(content(&server.ok("/v1/chat/completions", &off).await), plain);
    let twice = server
        .post("/v1/chat/completions", &greedy_chat(&format!("{CHAT}+colours+colours")))
        .await;
    let error = expect_error(twice, StatusCode::BAD_REQUEST, Some("model")).await;
    assert!(error["message"].as_str().unwrap().contains("named twice"), "{error}");
    // Registered on its first use, with the base's digest it records: listed under the
    // name that serves it.
    let models = server.ok_get("/v1/models").await;
    let listed = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == format!("{CHAT}+colours"))
        .unwrap_or_else(|| panic!("{models}"));
    assert_eq!(listed["adapter"]["origin"], "found");
    assert_eq!(
        registry
            .adapter(&ModelId::new("colours").unwrap())
            .unwrap()
            .unwrap()
            .base_sha256,
        Some(digest.clone())
    );
    // Each adapter's tensors count with the model, once (later requests reused them).
    let adapter_bytes = |name: &str| {
        minerva_engine::llm::lora::inspect_adapter(
            &store_root
                .join(minerva_store::ADAPTERS_DIR)
                .join(format!("{name}.gguf")),
        )
        .unwrap()
        .tensor_bytes
    };
    let adapter_bytes = adapter_bytes("colours") + adapter_bytes("shapes");
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
    // Changed on disk since it was registered (its last byte, in the tensor data): the
    // registry refuses it (409, the integrity code) when the changed file would load.
    let colours = store_root.join(minerva_store::ADAPTERS_DIR).join("colours.gguf");
    let mut bytes = std::fs::read(&colours).unwrap();
    *bytes.last_mut().unwrap() ^= 0x40;
    std::fs::write(&colours, &bytes).unwrap();
    let changed = server
        .post("/v1/chat/completions", &greedy_chat(&format!("{CHAT}+colours")))
        .await;
    let error = expect_error(changed, StatusCode::CONFLICT, None).await;
    assert!(
        error["message"].as_str().unwrap().contains("registered SHA-256"),
        "{error}"
    );
    // The server goes on serving.
    assert_eq!(
        content(&server.ok("/v1/chat/completions", &greedy_chat(CHAT)).await),
        plain
    );
}
