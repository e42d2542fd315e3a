//! `POST /api/create` and `POST /api/copy`: a model made from another of the store (one
//! copy on disk: a tag) with its own settings, and a second name for a model.
//!
//! `/api/create` takes Ollama's request shapes: `from`, `system`, `template` and
//! `parameters` (its current API), or a whole `modelfile` (its older one). Only models already in the store
//! can be the base: a server does not read paths its clients name.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use minerva_engine::chat::ChatTemplate;
use minerva_store::{ModelId, Modelfile};
use serde::Deserialize;
use serde_json::{Value, json};

use super::model_id;
use crate::error::ApiError;
use crate::extract::AnyJson;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = OllamaCreateRequest)]
pub struct CreateRequest {
    /// The new model's name (`name` in Ollama's older API).
    #[serde(alias = "name")]
    model: String,
    from: Option<String>,
    modelfile: Option<String>,
    system: Option<String>,
    parameters: Option<serde_json::Map<String, Value>>,
    /// A chat template for the new model: Jinja, the format GGUF files carry (Ollama's Go
    /// templates do not compile and are refused).
    template: Option<String>,
    /// Uploaded blobs (`files`, `adapters`) and `quantize`: refused with what to use.
    files: Option<Value>,
    adapters: Option<Value>,
    quantize: Option<String>,
    stream: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = OllamaCopyRequest)]
pub struct CopyRequest {
    source: String,
    destination: String,
}

/// `POST /api/create`.
#[utoipa::path(
    post,
    path = "/api/create",
    tag = "ollama",
    request_body = CreateRequest,
    responses((status = 200, description = "The model was created (status lines unless `stream: false`)", content((serde_json::Value = "application/json"), (String = "application/x-ndjson"))))
)]
pub async fn create(State(state): State<AppState>, AnyJson(req): AnyJson<CreateRequest>) -> Result<Response, ApiError> {
    if req.files.is_some() || req.adapters.is_some() {
        return Err(ApiError::invalid(
            "files",
            "uploaded files are not supported: create from a model in the store (minerva import, /api/pull)",
        ));
    }
    if req.quantize.is_some() {
        return Err(ApiError::invalid("quantize", "use `minerva quantize`"));
    }
    let modelfile = recipe(&req)?;
    let name = destination(&state, &req.model)?;
    let from = model_id(&state, &modelfile.from)?;
    state
        .pool
        .store()
        .resolve(&from)
        .map_err(|_| ApiError::ModelNotFound(format!("model {:?} does not exist", modelfile.from)))?;
    let registry = super::super::pull::registry(&state)?;
    let store = state.pool.store().clone();
    let (target, settings) = (name.clone(), modelfile.settings);
    let record = tokio::task::spawn_blocking(move || {
        let record = if from == target {
            registry.check(&store, &target)?
        } else {
            registry.tag(&store, &from, &target)?
        };
        registry.set_settings(&target, &settings)?;
        Ok::<_, minerva_store::RegistryError>(record)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(registry_error)?;
    // A loaded model under the name has the old settings: the next request loads it anew.
    state.pool.unload(&name).await;
    let lines = [
        json!({ "status": format!("using existing layer sha256:{}", record.sha256) }),
        json!({ "status": "writing manifest" }),
        json!({ "status": "success" }),
    ];
    if req.stream == Some(false) {
        return Ok(axum::Json(json!({ "status": "success" })).into_response());
    }
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// `POST /api/copy`: `destination` becomes a second name of `source` (no second copy).
#[utoipa::path(
    post,
    path = "/api/copy",
    tag = "ollama",
    request_body = CopyRequest,
    responses((status = 200, description = "The copy exists", body = serde_json::Value))
)]
pub async fn copy(State(state): State<AppState>, AnyJson(req): AnyJson<CopyRequest>) -> Result<Response, ApiError> {
    let source = model_id(&state, &req.source)?;
    state
        .pool
        .store()
        .resolve(&source)
        .map_err(|_| ApiError::ModelNotFound(format!("model {:?} does not exist", req.source)))?;
    let destination = destination(&state, &req.destination)?;
    let registry = super::super::pull::registry(&state)?;
    let store = state.pool.store().clone();
    let target = destination.clone();
    tokio::task::spawn_blocking(move || registry.tag(&store, &source, &target))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(registry_error)?;
    state.pool.unload(&destination).await;
    Ok(axum::http::StatusCode::OK.into_response())
}

/// The Modelfile a request describes: its `modelfile`, or `from` with `system` and
/// `parameters`; either way `system` and `parameters` given beside it win.
fn recipe(req: &CreateRequest) -> Result<Modelfile, ApiError> {
    let mut modelfile = match (&req.modelfile, &req.from) {
        (Some(text), _) => Modelfile::parse(text).map_err(|e| ApiError::invalid("modelfile", e.to_string()))?,
        (None, Some(from)) => Modelfile {
            from: from.clone(),
            settings: Default::default(),
        },
        (None, None) => return Err(ApiError::invalid("from", "say which model the new one is made from")),
    };
    if let Some(from) = &req.from {
        modelfile.from = from.clone();
    }
    if let Some(system) = &req.system {
        modelfile
            .settings
            .set("system", Some(system))
            .map_err(|e| ApiError::invalid("system", e.to_string()))?;
    }
    if let Some(template) = &req.template {
        modelfile
            .settings
            .set("template", Some(template))
            .map_err(|e| ApiError::invalid("template", e.to_string()))?;
    }
    for (key, value) in req.parameters.iter().flatten() {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(ApiError::invalid(
                    format!("parameters.{key}"),
                    format!("{other} is not a value this server keeps"),
                ));
            }
        };
        modelfile
            .settings
            .set(key, Some(&text))
            .map_err(|e| ApiError::invalid(format!("parameters.{key}"), e.to_string()))?;
    }
    // Settings that only hold together (a RoPE scaling and its factor) are checked before
    // anything is written.
    modelfile
        .settings
        .validate()
        .map_err(|e| ApiError::invalid("parameters", e.to_string()))?;
    if let Some(template) = &modelfile.settings.template {
        ChatTemplate::new(template, "", "").map_err(|e| {
            ApiError::invalid(
                "template",
                format!("not a Jinja chat template (Ollama's Go templates are not supported): {e}"),
            )
        })?;
    }
    Ok(modelfile)
}

/// A registry failure as a client sees it: a model that cannot be tagged (an embedding
/// directory, a bad file) is the request's fault, the registry's own storage is not.
fn registry_error(e: minerva_store::RegistryError) -> ApiError {
    use minerva_store::RegistryError as R;
    match e {
        R::InvalidModel { .. } | R::InvalidSetting { .. } | R::NotRegistered { .. } => {
            ApiError::invalid("model", e.to_string())
        }
        R::HashMismatch { .. } | R::Missing { .. } => ApiError::ModelUnavailable(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

/// A new name as Ollama users type it: `NAME:latest` is `NAME`.
fn destination(state: &AppState, name: &str) -> Result<ModelId, ApiError> {
    let name = name.strip_suffix(":latest").unwrap_or(name);
    let id = ModelId::new(name).map_err(|e| ApiError::invalid("model", e.to_string()))?;
    Ok(state.pool.store().canonical(&id))
}
