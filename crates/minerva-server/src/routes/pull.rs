//! Pulling models into the store and removing them, over HTTP: `POST /v1/models/pull`,
//! `POST /v1/models/{id}/remove`, and Ollama's `POST /api/pull` and `DELETE /api/delete`.
//!
//! A pull runs on a blocking thread (`minerva_pull` is synchronous and long) and reports
//! through a channel; the streamed answer is NDJSON, one status object per line, as
//! Ollama's clients read it. A client that goes away does not stop the pull: the file
//! lands in the store either way, as with `ollama pull`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use minerva_pull::{PullEvent, PullOptions, Pulled};
use minerva_store::{ModelId, Registry};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::extract::AnyJson;
use crate::state::AppState;

/// Progress lines are sent at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// What to pull: `hf.co/OWNER/REPO[:QUANT]`, `ollama.com/NAME:TAG`, `NAME:TAG` (the
    /// Ollama registry) or an `http(s)://` URL.
    #[serde(alias = "name", alias = "source")]
    model: String,
    /// The name in the store (default: derived from the source).
    #[serde(default, rename = "as")]
    store_as: Option<String>,
    /// The SHA-256 a URL's file must have.
    #[serde(default)]
    sha256: Option<String>,
    /// Stream NDJSON progress (Ollama's default); `false` answers once, when done.
    #[serde(default)]
    stream: Option<bool>,
    /// Accepted for Ollama's clients; TLS is always verified.
    #[serde(default)]
    insecure: Option<bool>,
}

/// `POST /v1/models/pull`: one JSON answer when done (`"stream": true` for progress lines).
#[utoipa::path(
    post,
    path = "/v1/models/pull",
    tag = "minerva",
    request_body = PullRequest,
    responses((status = 200, description = "The model is in the store (with `stream: true`, progress as NDJSON lines)", content((serde_json::Value = "application/json"), (String = "application/x-ndjson"))))
)]
pub async fn pull_v1(
    State(state): State<AppState>,
    AnyJson(request): AnyJson<PullRequest>,
) -> Result<Response, ApiError> {
    let streaming = request.stream.unwrap_or(false);
    run(state, request, streaming, false).await
}

/// `POST /api/pull` (Ollama): NDJSON progress unless `"stream": false`.
#[utoipa::path(
    post,
    path = "/api/pull",
    tag = "ollama",
    request_body = PullRequest,
    responses((status = 200, description = "Progress lines, or one status object with `stream: false`", content((serde_json::Value = "application/json"), (String = "application/x-ndjson"))))
)]
pub async fn pull_ollama(
    State(state): State<AppState>,
    AnyJson(request): AnyJson<PullRequest>,
) -> Result<Response, ApiError> {
    let streaming = request.stream.unwrap_or(true);
    run(state, request, streaming, true).await
}

/// Runs a pull; `ollama` shapes the one-object answer as Ollama's `{"status": "success"}`.
async fn run(state: AppState, request: PullRequest, streaming: bool, ollama: bool) -> Result<Response, ApiError> {
    let _ = request.insecure;
    let registry = registry(&state)?;
    let store = state.pool.store().clone();
    let mut options: PullOptions = state.config.pull.clone();
    options.sha256 = request.sha256;
    options.name = request
        .store_as
        .as_deref()
        .map(ModelId::new)
        .transpose()
        .map_err(|e| ApiError::invalid("as", e.to_string()))?;
    let source = request.model;
    // A source that cannot be parsed is the request's fault: a 400 before any stream
    // starts (a stream has already said 200).
    minerva_pull::Source::parse(&source).map_err(|e| ApiError::invalid("model", e.to_string()))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<serde_json::Value>();
    let task = tokio::task::spawn_blocking(move || {
        let mut last = Instant::now() - PROGRESS_EVERY;
        minerva_pull::pull(&store, &registry, &source, &options, &mut |event| {
            let line = match event {
                PullEvent::Resolving => json!({ "status": "pulling manifest" }),
                PullEvent::Downloading {
                    sha256, done, total, ..
                } => {
                    if done != total.unwrap_or(u64::MAX) && last.elapsed() < PROGRESS_EVERY {
                        return;
                    }
                    last = Instant::now();
                    let digest = sha256.map(|s| format!("sha256:{s}")).unwrap_or_default();
                    json!({ "status": format!("pulling {}", &digest[digest.len().min(7)..digest.len().min(19)]),
                            "digest": digest, "total": total, "completed": done })
                }
                PullEvent::Registering => json!({ "status": "verifying sha256 digest" }),
            };
            let _ = tx.send(line);
        })
    });
    if !streaming {
        let pulled = task.await.map_err(|e| ApiError::Internal(e.to_string()))??;
        let body = if ollama {
            json!({ "status": "success", "model": summary(&pulled) })
        } else {
            summary(&pulled)
        };
        return Ok(Json(body).into_response());
    }
    let (lines_tx, lines_rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let send = |value: serde_json::Value| lines_tx.send(Bytes::from(format!("{value}\n")));
        let mut task = task;
        loop {
            tokio::select! {
                Some(line) = rx.recv() => { let _ = send(line); }
                finished = &mut task => {
                    while let Ok(line) = rx.try_recv() {
                        let _ = send(line);
                    }
                    let last = match finished {
                        Ok(Ok(pulled)) => {
                            let _ = send(json!({ "status": "writing manifest" }));
                            json!({ "status": "success", "model": summary(&pulled) })
                        }
                        Ok(Err(e)) => json!({ "error": ApiError::from(e).to_string() }),
                        Err(e) => json!({ "error": e.to_string() }),
                    };
                    let _ = send(last);
                    break;
                }
            }
        }
    });
    let body = Body::from_stream(futures_util::StreamExt::map(
        tokio_stream::wrappers::UnboundedReceiverStream::new(lines_rx),
        Ok::<_, Infallible>,
    ));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct DeleteRequest {
    #[serde(alias = "name")]
    model: String,
}

/// `POST /v1/models/{id}/remove`: unloads the model and deletes it from the store.
#[utoipa::path(
    post,
    path = "/v1/models/{id}/remove",
    tag = "minerva",
    params(("id" = String, Path, description = "A model's id, alias or name:tag")),
    responses((status = 200, description = "The model was removed from the store", body = serde_json::Value))
)]
pub async fn remove_v1(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let record = remove(&state, &id).await?;
    Ok(Json(json!({ "id": id, "removed": true, "sha256": record })))
}

/// `DELETE /api/delete` (Ollama): `{"model": "NAME[:TAG]"}`.
#[utoipa::path(
    delete,
    path = "/api/delete",
    tag = "ollama",
    request_body = DeleteRequest,
    responses((status = 200, description = "The model was removed", body = serde_json::Value))
)]
pub async fn delete_ollama(
    State(state): State<AppState>,
    AnyJson(request): AnyJson<DeleteRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = request.model.strip_suffix(":latest").unwrap_or(&request.model);
    remove(&state, id).await?;
    Ok(Json(json!({})))
}

async fn remove(state: &AppState, id: &str) -> Result<Option<String>, ApiError> {
    let model = state.model_id(id)?;
    let registry = registry(state)?;
    state.pool.unload(&model).await;
    let store = state.pool.store().clone();
    let removed = tokio::task::spawn_blocking(move || registry.remove(&store, &model))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match removed {
        Ok(record) => Ok(record.map(|r| r.sha256)),
        Err(minerva_store::RegistryError::Store(_)) => {
            Err(ApiError::ModelNotFound(format!("model {id:?} does not exist")))
        }
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

pub(super) fn registry(state: &AppState) -> Result<Arc<Registry>, ApiError> {
    state
        .pool
        .registry()
        .cloned()
        .ok_or_else(|| ApiError::Internal("this server runs without a model registry".into()))
}

fn summary(pulled: &Pulled) -> serde_json::Value {
    json!({
        "id": pulled.record.id,
        "sha256": pulled.record.sha256,
        "size_bytes": pulled.record.size_bytes,
        "downloaded": pulled.downloaded,
    })
}
