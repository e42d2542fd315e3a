//! Minerva's HTTP server: the OpenAI-compatible API (chat, completions, embeddings,
//! models), the model lifecycle API, tokenize/detokenize, health and metrics.
//!
//! Handlers parse and validate requests, take a model lease from the runtime's pool, and
//! hand the work to the model's worker; they never run a forward pass on the async
//! runtime and never hold a lock across `.await`. Errors are one type, [`ApiError`],
//! mapped once to a status and an OpenAI-style body.

mod config;
mod error;
pub mod experiment;
mod extract;
pub mod live_feed;
mod middleware;
pub mod monitor;
pub mod openapi;
pub mod otlp;
pub mod remote;
pub mod request_log;
mod routes;
pub mod routing;
mod state;
mod tally;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use minerva_pool::ModelPool;
use minerva_workers::embedding::EmbeddingCache;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use config::ServerConfig;
pub use error::ApiError;
pub use routes::truncation::Truncation;
pub use state::AppState;

/// Builds the shared state for `config` over `pool`.
pub fn state(config: ServerConfig, pool: Arc<ModelPool>) -> AppState {
    let mut embedding_cache = EmbeddingCache::open(config.embedding_cache.clone()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "starting with an empty embedding cache");
        EmbeddingCache::new(config.embedding_cache.clone())
    });
    if let Some(url) = &config.shared_embedding_cache {
        match minerva_shared::RedisLevel::new(url, minerva_shared::RedisLevelConfig::default()) {
            Ok(level) => embedding_cache = embedding_cache.with_shared(Arc::new(level)),
            Err(e) => tracing::error!(error = %e, "the embedding cache is not shared"),
        }
    }
    let monitoring = config.monitoring;
    let request_log = config.request_log.clone().and_then(|c| {
        request_log::RequestLog::start(c)
            .map_err(|e| tracing::error!(error = %e, "the request log cannot start; requests are not logged"))
            .ok()
    });
    AppState {
        routing: Arc::new(routing::Routing::none(pool.store().clone())),
        embedding_cache: Arc::new(embedding_cache),
        admission: Arc::new(state::Admission::new(&config)),
        config: Arc::new(config),
        pool,
        metrics: metrics_handle(monitoring),
        monitor: Arc::new(monitor::Monitor::new(monitoring, request_log)),
    }
}

/// The process-wide Prometheus recorder (installed once; later calls share it).
fn metrics_handle(install: bool) -> PrometheusHandle {
    if !install {
        // Not installed: every `metrics::` call is a no-op and `/metrics` renders nothing.
        return PrometheusBuilder::new().build_recorder().handle();
    }
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new()
                .set_buckets(&monitor::SECONDS_BUCKETS)
                .expect("the buckets are not empty");
            for (matcher, buckets) in monitor::bucket_overrides() {
                builder = builder
                    .set_buckets_for_metric(matcher, buckets)
                    .expect("the buckets are not empty");
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours just renders nothing.
            if metrics::set_global_recorder(recorder).is_ok() {
                monitor::describe();
            }
            handle
        })
        .clone()
}

/// The router with every route and layer, ready to serve (tests call it without a socket).
pub fn app(state: AppState) -> Router {
    use routes::{chat, completions, dashboard, embeddings, experiments, explain, models, pull, rerank, tokenize};
    // Every documented route goes through `routes!`, which takes its path and method from
    // the handler's `#[utoipa::path]`: a route cannot be served without its entry in
    // /openapi.json.
    let (documented, mut api) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(chat::chat_completions))
        .routes(routes!(completions::completions))
        .routes(routes!(embeddings::embeddings))
        .routes(routes!(embeddings::stats))
        .routes(routes!(rerank::rerank))
        .routes(routes!(models::list))
        .routes(routes!(models::stats))
        .routes(routes!(models::loaded))
        .routes(routes!(models::patterns))
        .routes(routes!(pull::pull_v1))
        .routes(routes!(pull::remove_v1))
        .routes(routes!(models::get, models::unload))
        .routes(routes!(models::load))
        .routes(routes!(models::preload))
        .routes(routes!(models::reload))
        .routes(routes!(experiments::list))
        .routes(routes!(experiments::get))
        .routes(routes!(experiments::promote))
        .routes(routes!(experiments::rollback))
        .routes(routes!(experiments::weights))
        .routes(routes!(experiments::feedback))
        .routes(routes!(explain::explain))
        .routes(routes!(dashboard::snapshot))
        .routes(routes!(dashboard::events))
        .routes(routes!(tokenize::tokenize))
        .routes(routes!(tokenize::detokenize))
        .routes(routes!(routes::health))
        .routes(routes!(routes::metrics))
        .merge(routes::ollama::router())
        .split_for_parts();
    utoipa::Modify::modify(&openapi::Errors, &mut api);
    let api = axum::body::Bytes::from(api.to_pretty_json().expect("the API document serializes"));
    let mut router = documented
        // text-embeddings-inference's path (documented as /v1/rerank).
        .route("/rerank", post(routes::rerank::rerank))
        .route(
            "/openapi.json",
            get(move || {
                let api = api.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], api) }
            }),
        )
        .route("/dashboard", get(routes::dashboard::page))
        .route("/dashboard/{*file}", get(routes::dashboard::asset))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::record_metrics,
        ))
        // Inside the key check: it knows who asked.
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::audit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_api_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::check_host,
        ));
    if !state.config.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = state
            .config
            .cors_origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect();
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    router
        // Ollama's clients read errors as {"error": "message"} (refusals by the key and
        // host checks too).
        .layer(axum::middleware::from_fn(routes::ollama::error_body))
        // A bug that panics in a handler or a layer answers a 500 with an OpenAI-style body
        // instead of dropping the connection.
        .layer(CatchPanicLayer::custom(panic_response))
        // Outside in: the request gets its id (the client's, or a new one), the trace span
        // carries it, the response gets it back.
        .layer(PropagateRequestIdLayer::new(middleware::REQUEST_ID.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(middleware::request_span))
        .layer(SetRequestIdLayer::new(
            middleware::REQUEST_ID.clone(),
            middleware::NextRequestId,
        ))
        .with_state(state)
}

/// The response to a request whose handling panicked: one log line, a 500.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(
        panic = message,
        "a request's handler panicked; the server keeps serving"
    );
    axum::response::IntoResponse::into_response(ApiError::Internal(
        "the server hit an internal error while handling this request".into(),
    ))
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then stops accepting,
/// gives in-flight requests `config.shutdown_grace` to finish, and saves the embedding
/// cache when it has a file.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = state.config.shutdown_grace;
    let embedding_cache = Arc::clone(&state.embedding_cache);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = stopping_tx.send(());
    });
    let drain_deadline = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = server => result,
        () = drain_deadline => {
            tracing::warn!(grace_s = grace.as_secs(), "in-flight requests did not finish in time; exiting");
            Ok(())
        }
    };
    match tokio::task::spawn_blocking(move || embedding_cache.persist()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(entries)) => tracing::info!(entries, "embedding cache saved"),
        Ok(Err(e)) => tracing::warn!(error = %e, "embedding cache not saved"),
        Err(e) => tracing::warn!(error = %e, "saving the embedding cache failed"),
    }
    result
}

/// Resolves on SIGINT or SIGTERM.
/// Reloads the routes on every SIGHUP, until the process ends (a bad file keeps the old
/// routes and is logged).
pub fn reload_on_sighup(routing: Arc<routing::Routing>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            let routing = Arc::clone(&routing);
            match tokio::task::spawn_blocking(move || routing.reload()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: the routes in use stay"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed"),
            }
        }
    });
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
