//! Every route that reads a body, through the server's real router (its extractors,
//! validation, limits and layers), on arbitrary bytes: the first byte picks the route,
//! the rest is the body. The store is empty (with its registry, as `minerva serve` runs)
//! and pulls are offline, so each request ends
//! in its parser, its validation or the model lookup; none may answer a 5xx other than
//! the designed 503, and every error body is JSON (OpenAI's shape, or Ollama's on its
//! routes). The seeds are the requests of the server's tests and the README.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/v1/chat/completions"),
    (Method::POST, "/v1/completions"),
    (Method::POST, "/v1/embeddings"),
    (Method::POST, "/v1/rerank"),
    (Method::POST, "/rerank"),
    (Method::POST, "/v1/tokenize"),
    (Method::POST, "/v1/detokenize"),
    (Method::POST, "/v1/explain"),
    (Method::POST, "/v1/feedback"),
    (Method::POST, "/v1/models/pull"),
    (Method::POST, "/v1/models/m/load"),
    (Method::POST, "/v1/models/m/preload"),
    (Method::POST, "/v1/experiments/e/weights"),
    (Method::POST, "/v1/admin/reload"),
    (Method::POST, "/api/chat"),
    (Method::POST, "/api/generate"),
    (Method::POST, "/api/embed"),
    (Method::POST, "/api/embeddings"),
    (Method::POST, "/api/show"),
    (Method::POST, "/api/create"),
    (Method::POST, "/api/copy"),
    (Method::DELETE, "/api/delete"),
    (Method::POST, "/api/pull"),
];

struct Fixture {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let home = std::env::temp_dir().join(format!("minerva-fuzz-routes-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let app = runtime.block_on(async {
            // As `minerva serve` runs: a store with its registry.
            let store = minerva_store::ModelStore::new(home);
            let registry = minerva_store::Registry::open(&minerva_store::Registry::default_path(&store)).unwrap();
            let pool = minerva_pool::ModelPool::with_registry(
                store,
                minerva_pool::PoolConfig::new(1, 512),
                Arc::new(registry),
            );
            let mut config = minerva_server::ServerConfig::default();
            config.pull.offline = true;
            config.monitoring = false;
            config.max_tokens = 16;
            config.default_max_tokens = 16;
            minerva_server::app(minerva_server::state(config, Arc::new(pool)))
        });
        Fixture { runtime, app }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (method, path) = &ROUTES[pick as usize % ROUTES.len()];
    let fixture = fixture();
    let request = Request::builder()
        .method(method)
        .uri(*path)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let (status, bytes) = fixture.runtime.block_on(async {
        let response = fixture.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        (
            status,
            axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap(),
        )
    });
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{method} {path} answered {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    if !status.is_success() {
        let error: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path} answered {status} with a body that is not JSON ({e})"));
        assert!(error.get("error").is_some(), "{method} {path}: {error}");
    }
});
