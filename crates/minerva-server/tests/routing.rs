//! Aliases and fallback chains from the configuration file: an alias serves its model
//! under its own name; a chain passes over a model whose file fails its integrity check
//! or is gone, says so in `x-minerva-route` and `/metrics`, and does not pass over a bad
//! request; `/v1/models` lists the routes; `POST /v1/admin/reload` swaps the routes live
//! and a bad file keeps the old ones.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use common::*;
use minerva_pool::{Budget, ModelPool, PoolConfig};
use minerva_server::ServerConfig;
use minerva_server::routing::Routing;
use minerva_store::{ModelId, ModelStore, Registry};
use reqwest::StatusCode;
use serde_json::{Value, json};

const CONFIG: &str = r#"
max_tokens = 512

[aliases]
chat = "smollm2-135m-instruct"

[routes.assistant]
models = ["broken", "gone", "smollm2-135m-instruct"]

[routes.either]
models = ["gemma-3-270m", "smollm2-135m-instruct"]
prefer_loaded = true
"#;

struct Home {
    dir: tempfile::TempDir,
    store: ModelStore,
    registry: Arc<Registry>,
}

impl Home {
    /// A store with the chat and base models, `broken` (a registered copy of the chat
    /// model whose file changed since) and `gone` (removed once the routes are read).
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path().join("models"));
        std::fs::create_dir(store.root()).unwrap();
        for model in [CHAT, BASE, "gone"] {
            let source = models_dir().join(format!("{}.gguf", if model == "gone" { CHAT } else { model }));
            std::fs::hard_link(source, store.root().join(format!("{model}.gguf"))).unwrap();
        }
        std::fs::copy(
            models_dir().join(format!("{CHAT}.gguf")),
            store.root().join("broken.gguf"),
        )
        .unwrap();
        let registry = Arc::new(Registry::open(&dir.path().join("registry.sqlite")).unwrap());
        registry
            .register(&store, &ModelId::new("broken").unwrap(), &mut |_, _| {})
            .unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(store.root().join("broken.gguf"))
            .unwrap();
        file.write_all(b"bit rot").unwrap();
        // A file that is no model at all, and not registered: its load fails.
        std::fs::write(store.root().join("corrupt.gguf"), b"GGUF but not a model").unwrap();
        std::fs::write(dir.path().join("minerva.toml"), CONFIG).unwrap();
        Self { dir, store, registry }
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("minerva.toml")
    }

    async fn server(&self) -> TestServer {
        let pool = ModelPool::with_registry(self.store.clone(), pool(), Arc::clone(&self.registry));
        self.server_on(Arc::new(pool)).await
    }

    async fn server_on(&self, pool: Arc<ModelPool>) -> TestServer {
        let routing = Routing::load(Some(self.config()), self.store.clone()).expect("the routes parse");
        std::fs::remove_file(self.store.root().join("gone.gguf")).unwrap();
        TestServer::start_shared(ServerConfig::default(), pool, "127.0.0.1:0", Some(routing)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_serves_its_model_and_a_chain_passes_over_broken_and_missing_models() {
    let home = Home::new();
    let server = home.server().await;

    let response = server
        .post("/v1/chat/completions", &short_chat("chat", json!({})))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(route_header(&response), format!("chat; model={CHAT}"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], CHAT, "the reply names the model that served");

    let response = server
        .post("/v1/chat/completions", &short_chat("assistant", json!({})))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        route_header(&response),
        format!("assistant; model={CHAT}; skipped=broken:integrity; skipped=gone:missing")
    );
    assert_eq!(response.json::<Value>().await.unwrap()["model"], CHAT);

    // A stream through a chain, and Ollama's API with Ollama's spelling of the name.
    let chunks = read_sse(
        server
            .post(
                "/v1/chat/completions",
                &short_chat("assistant", json!({ "stream": true })),
            )
            .await,
    )
    .await;
    assert!(chunks.iter().all(|c| c["model"] == CHAT), "{chunks:?}");
    let ollama = server
        .ok(
            "/api/chat",
            &json!({ "model": "chat:latest", "stream": false, "messages": [{ "role": "user", "content": "Hi" }], "options": { "num_predict": 2 } }),
        )
        .await;
    assert_eq!(ollama["model"], CHAT, "{ollama}");
    // Completions and embeddings route too.
    let completion = server
        .post(
            "/v1/completions",
            &json!({ "model": "assistant", "prompt": "Hello", "max_tokens": 2 }),
        )
        .await;
    assert_eq!(completion.status(), StatusCode::OK);

    // Interchangeable models: the loaded one serves (the chat model, loaded above, not
    // the base model listed first); with none loaded, the first listed.
    let response = server
        .post(
            "/v1/completions",
            &json!({ "model": "either", "prompt": "Hello", "max_tokens": 2 }),
        )
        .await;
    assert_eq!(route_header(&response), format!("either; model={CHAT}"));
    assert!(server.delete(&format!("/v1/models/{CHAT}")).await.status().is_success());
    let response = server
        .post(
            "/v1/completions",
            &json!({ "model": "either", "prompt": "Hello", "max_tokens": 2 }),
        )
        .await;
    assert_eq!(route_header(&response), format!("either; model={BASE}"));

    // A bad request is bad for every model: no fallback, the 400 as it is.
    let refused = server
        .post("/v1/chat/completions", &short_chat("assistant", json!({ "n": 0 })))
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(route_header(&refused), "");

    let metrics = server.get("/metrics").await.text().await.unwrap();
    let fallbacks: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("minerva_route_fallbacks_total{"))
        .collect();
    assert!(
        fallbacks
            .iter()
            .any(|l| l.contains("model=\"broken\"") && l.contains("reason=\"integrity\"")),
        "{fallbacks:?}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("minerva_route_requests_total{") && l.contains("route=\"chat\"")),
        "no request count for the alias"
    );

    // /v1/models lists the routes beside the models.
    let models = server.ok_get("/v1/models").await;
    let routes: Vec<&Value> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["owned_by"] == "minerva-route")
        .collect();
    assert_eq!(routes.len(), 3, "{models}");
    let assistant = routes.iter().find(|r| r["id"] == "assistant").unwrap();
    assert_eq!(assistant["route"]["models"], json!(["broken", "gone", CHAT]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_routes_and_a_bad_file_keeps_the_old_ones() {
    let home = Home::new();
    let server = home.server().await;
    // Completions: the base model has no chat template.
    let complete = json!({ "model": "chat", "prompt": "Hello", "max_tokens": 2 });
    let served_by = |body: Value| body["model"].as_str().unwrap_or_default().to_owned();
    assert_eq!(served_by(server.ok("/v1/completions", &complete).await), CHAT);

    std::fs::write(home.config(), format!("[aliases]\nchat = \"{BASE}\"\n")).unwrap();
    let reloaded = server.ok("/v1/admin/reload", &json!({})).await;
    assert_eq!(reloaded["routes"].as_array().unwrap().len(), 1, "{reloaded}");
    assert_eq!(served_by(server.ok("/v1/completions", &complete).await), BASE);
    expect_error(
        server
            .post("/v1/chat/completions", &short_chat("assistant", json!({})))
            .await,
        StatusCode::NOT_FOUND,
        Some("model"),
    )
    .await;

    // A route to a model that does not exist: refused with its line, the old routes stay.
    std::fs::write(
        home.config(),
        "[aliases]\nchat = \"smollm2-135m-instruct\"\nother = \"nothing\"\n",
    )
    .unwrap();
    let error = expect_error(
        server.post("/v1/admin/reload", &json!({})).await,
        StatusCode::BAD_REQUEST,
        Some("config"),
    )
    .await;
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("line 3") && message.contains("nothing"), "{message}");
    assert_eq!(served_by(server.ok("/v1/completions", &complete).await), BASE);
    assert!(Path::new(&home.config()).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_passes_over_a_model_without_memory_and_one_that_fails_to_load() {
    let home = Home::new();
    std::fs::write(
        home.config(),
        format!(
            "[routes.busy]\nmodels = [\"{BASE}\", \"{CHAT}\"]\n\n[routes.flawed]\nmodels = [\"corrupt\", \"{CHAT}\"]\n"
        ),
    )
    .unwrap();
    // A budget for the larger of the two models, not for both; no waiting for memory.
    let shape = pool().session_shape();
    let estimate = |name: &str| {
        let entry = home.store.resolve(&ModelId::new(name).unwrap()).unwrap();
        minerva_pool::estimate::estimate(&entry, shape).unwrap().total()
    };
    let (chat, base) = (estimate(CHAT), estimate(BASE));
    let config = PoolConfig {
        budget: Budget::Fixed(chat.max(base) + chat.min(base) / 2),
        max_waiting: 0,
        ..pool()
    };
    let pool = Arc::new(ModelPool::with_registry(
        home.store.clone(),
        config,
        Arc::clone(&home.registry),
    ));
    let server = home.server_on(Arc::clone(&pool)).await;

    // The chat model is in use: the base model cannot get room, the chat model serves.
    let lease = pool.acquire(&ModelId::new(CHAT).unwrap()).await.unwrap();
    let response = server
        .post(
            "/v1/completions",
            &json!({ "model": "busy", "prompt": "Hello", "max_tokens": 2 }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        route_header(&response),
        format!("busy; model={CHAT}; skipped={BASE}:overloaded")
    );
    assert_eq!(response.json::<Value>().await.unwrap()["model"], CHAT);
    // Without the route, the same request is the pool's refusal, as it was.
    expect_error(
        server
            .post(
                "/v1/completions",
                &json!({ "model": BASE, "prompt": "Hello", "max_tokens": 2 }),
            )
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        None,
    )
    .await;
    drop(lease);

    let response = server
        .post("/v1/chat/completions", &short_chat("flawed", json!({})))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        route_header(&response),
        format!("flawed; model={CHAT}; skipped=corrupt:error")
    );
    // The failed load left nothing behind; the chain keeps serving.
    let loaded = server.ok_get("/v1/models/loaded").await;
    let names: Vec<&str> = loaded["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(names, [CHAT], "{loaded}");
}
