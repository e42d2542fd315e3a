//! `GET /v1/models`, `GET /v1/models/{id}` and the lifecycle API: load, preload, unload,
//! stats and the list of loaded models.

use std::time::UNIX_EPOCH;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use minerva_pool::{AcquireOptions, KeepAlive};
use minerva_store::patterns::{PatternConfig, PreloadStrategy, UsagePatterns};
use minerva_store::{ModelEntry, now_millis};
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

/// Body of `POST /v1/models/{id}/load`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoadRequest {
    #[schema(value_type = Option<crate::openapi::KeepAliveDoc>)]
    keep_alive: Option<KeepAlive>,
}

fn describe(entry: &ModelEntry) -> serde_json::Value {
    let created = std::fs::metadata(&entry.weights)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let kind = entry.format.as_str();
    serde_json::json!({ "id": entry.id, "object": "model", "created": created, "owned_by": "minerva", "format": kind, "size_bytes": entry.size_bytes })
}

fn entry(state: &AppState, id: &str) -> Result<ModelEntry, ApiError> {
    let model_id = state.model_id(id)?;
    state
        .pool
        .store()
        .resolve(&model_id)
        .map_err(|_| ApiError::ModelNotFound(format!("model {id:?} does not exist")))
}

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    responses((status = 200, description = "The models in the store", body = serde_json::Value))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let models = state
        .pool
        .store()
        .list()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut data: Vec<serde_json::Value> = models.iter().map(describe).collect();
    // Each registered LoRA adapter, under the name that serves it with its base.
    if let Some(registry) = state.pool.registry().cloned() {
        let adapted = tokio::task::spawn_blocking(move || {
            let bases = registry.records()?;
            let adapters = registry.adapters()?;
            Ok::<_, minerva_store::RegistryError>((bases, adapters))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        let (bases, adapters) = adapted;
        for adapter in &adapters {
            let Some(made_for) = &adapter.base_sha256 else { continue };
            for base in bases.iter().filter(|b| b.sha256.eq_ignore_ascii_case(made_for)) {
                if !models.iter().any(|m| m.id == base.id) {
                    continue;
                }
                data.push(serde_json::json!({
                    "id": format!("{}+{}", base.id, adapter.name), "object": "model",
                    "created": adapter.added_at / 1000, "owned_by": "minerva-adapter",
                    "adapter": { "name": adapter.name, "base": base.id, "sha256": adapter.sha256,
                                 "size_bytes": adapter.size_bytes, "origin": adapter.origin },
                }));
            }
        }
    }
    // Aliases, fallback chains, remote backends and experiments answer to their names
    // too: listed with what serves them.
    let table = state.routing.table();
    let named = |id: &str, owned_by: &str, key: &str, what: serde_json::Value| serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": owned_by, key: what });
    for route in table.routes() {
        data.push(named(&route.name, "minerva-route", "route", serde_json::json!(route)));
    }
    for backend in table.backends() {
        data.push(named(&backend.name, "minerva-remote", "remote", backend.describe()));
    }
    for experiment in table.experiments() {
        let variants: Vec<&str> = experiment.variants.iter().map(|v| v.name()).collect();
        let what = serde_json::json!({ "variants": variants });
        data.push(named(&experiment.name, "minerva-experiment", "experiment", what));
    }
    Ok(Json(serde_json::json!({ "object": "list", "data": data })))
}

/// `POST /v1/admin/reload`: reads the configuration file's routes again; a bad file keeps
/// the routes in use and says why (400).
#[utoipa::path(
    post,
    path = "/v1/admin/reload",
    tag = "minerva",
    responses((status = 200, description = "The registry was re-read", body = serde_json::Value))
)]
pub async fn reload(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let routing = std::sync::Arc::clone(&state.routing);
    let table = tokio::task::spawn_blocking(move || routing.reload())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::invalid("config", format!("{e}; the routes in use stay")))?;
    let routes: Vec<_> = table.routes().collect();
    Ok(Json(serde_json::json!({ "reloaded": true, "routes": routes })))
}

#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    tag = "openai",
    params(("id" = String, Path, description = "A model's id, alias or name:tag")),
    responses((status = 200, description = "One model", body = serde_json::Value))
)]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(describe(&entry(&state, &id)?)))
}

/// Loads a model and answers when it is ready; an optional body `{"keep_alive": ...}` sets
/// how long it stays.
#[utoipa::path(
    post,
    path = "/v1/models/{id}/load",
    tag = "minerva",
    params(("id" = String, Path, description = "A model's id, alias or name:tag")),
    request_body(content = Option<LoadRequest>, description = "Optional", content_type = "application/json"),
    responses((status = 200, description = "The model is loaded", body = serde_json::Value))
)]
pub async fn load(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let model_id = state.model_id(&id)?;
    let keep_alive = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<LoadRequest>(&body)
            .map_err(|e| ApiError::invalid("keep_alive", format!("invalid body: {e}")))?
            .keep_alive
    };
    let lease = state
        .pool
        .acquire_with(
            &model_id,
            AcquireOptions {
                keep_alive,
                ..Default::default()
            },
        )
        .await?;
    let reply = serde_json::json!({ "id": lease.id, "loaded": true, "bytes": lease.bytes });
    // The pool hears of the lease's end before the client hears of the load: a client
    // that lists the loaded models next sees the keep-alive's expiry, not "in use".
    drop(lease);
    state.pool.sync().await;
    Ok(Json(reply))
}

/// Starts loading in the background and answers at once (202).
#[utoipa::path(
    post,
    path = "/v1/models/{id}/preload",
    tag = "minerva",
    params(("id" = String, Path, description = "A model's id, alias or name:tag")),
    responses((status = 200, description = "The load was started", body = serde_json::Value))
)]
pub async fn preload(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    entry(&state, &id)?;
    let model_id = state.model_id(&id)?;
    let pool = state.pool.clone();
    tokio::spawn(async move {
        if let Err(e) = pool.preload(&model_id).await {
            tracing::warn!(model = %model_id, error = %e, "preload failed");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": id, "preloading": true })),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/models/{id}",
    tag = "minerva",
    params(("id" = String, Path, description = "A model's id, alias or name:tag")),
    responses((status = 200, description = "The model is unloaded (or was not loaded)", body = serde_json::Value))
)]
pub async fn unload(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    entry(&state, &id)?;
    let was_loaded = state.pool.unload(&state.model_id(&id)?).await;
    Ok(Json(serde_json::json!({ "id": id, "unloaded": was_loaded })))
}

#[utoipa::path(
    get,
    path = "/v1/models/stats",
    tag = "minerva",
    responses((status = 200, description = "The pool: memory, loads, evictions, per-model use", body = serde_json::Value))
)]
pub async fn stats(State(state): State<AppState>) -> Json<serde_json::Value> {
    let stats: serde_json::Map<String, serde_json::Value> = state
        .pool
        .stats()
        .into_iter()
        .map(|(id, s)| (id.to_string(), serde_json::to_value(s).unwrap_or_default()))
        .collect();
    let pool = &state.pool;
    Json(serde_json::json!({
        "object": "model_stats",
        "models": stats,
        "pool": pool.totals(),
        "policy": pool.config().policy.name(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/models/loaded",
    tag = "minerva",
    responses((status = 200, description = "The loaded models with their bytes, leases and expiry", body = serde_json::Value))
)]
pub async fn loaded(State(state): State<AppState>) -> Json<serde_json::Value> {
    let stats: std::collections::HashMap<_, _> = state.pool.stats().into_iter().collect();
    let models: Vec<_> = state
        .pool
        .loaded()
        .iter()
        .map(|lease| {
            let loaded_at = lease.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let s = stats.get(&lease.id);
            // expires_at is null while requests run on the model, or when it never expires.
            serde_json::json!({
                "id": lease.id,
                // With the adapters loaded for it since.
                "bytes": state.pool.counted_bytes(&lease.id).unwrap_or(lease.bytes),
                "loaded_at": loaded_at,
                "expires_at": s.and_then(|s| s.expires_at),
                "in_use": s.map_or(0, |s| s.leases),
                // The estimate the load reserved, by part, and for a language model the
                // session it was sized for (a tight budget shrinks its KV cells and slots).
                "estimate": lease.estimate,
                // A language model's scheduler: prompt tokens it evaluated, context shifts.
                "scheduler": match &lease.model {
                    minerva_pool::LoadedModel::Llm(worker) => serde_json::to_value(worker.stats()).ok(),
                    minerva_pool::LoadedModel::Embedding(_) => None,
                },
            })
        })
        .collect();
    Json(serde_json::json!({ "object": "list", "data": models }))
}

/// `GET /v1/models/patterns`: per model request counts, share, trend and heat over the
/// last window, and the preload recommendations of every strategy with their reasons.
#[utoipa::path(
    get,
    path = "/v1/models/patterns",
    tag = "minerva",
    responses((status = 200, description = "Usage patterns and the preload plan", body = serde_json::Value))
)]
pub async fn patterns(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(registry) = state.pool.registry().cloned() else {
        return Ok(Json(
            serde_json::json!({ "object": "model_patterns", "enabled": false }),
        ));
    };
    let analysis = tokio::task::spawn_blocking(move || {
        let config = PatternConfig::default();
        let now = now_millis();
        let window = i64::try_from(config.window.as_millis()).unwrap_or(i64::MAX / 2);
        let events = registry.events_since(now - 2 * window)?;
        let records = registry.records()?;
        let patterns = UsagePatterns::new(config, &events);
        let strategies = [
            ("sequential", PreloadStrategy::Sequential),
            ("frequency", PreloadStrategy::Frequency),
            ("recency", PreloadStrategy::Recency),
            ("size", PreloadStrategy::Size),
        ];
        let recommendations: serde_json::Map<String, serde_json::Value> = strategies
            .into_iter()
            .map(|(name, strategy)| {
                let r = patterns.recommendations(strategy, now, &records);
                (name.to_owned(), serde_json::to_value(r).unwrap_or_default())
            })
            .collect();
        Ok::<_, minerva_store::RegistryError>(serde_json::json!({
            "object": "model_patterns",
            "enabled": true,
            "models": patterns.usage(now),
            "hot": patterns.hot_list(now, 3),
            "recommendations": recommendations,
        }))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(analysis))
}
