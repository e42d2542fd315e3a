//! The experiments' API: `GET /v1/experiments[/{name}]` (weights and figures per
//! variant), `POST /v1/experiments/{name}/weights`, `/promote` and `/rollback` (admin
//! scope, live), and `POST /v1/feedback` (a client's score for a response id).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct FeedbackRequest {
    /// The `id` of the answer being scored.
    id: String,
    score: f64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PromoteRequest {
    variant: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WeightsRequest {
    weights: HashMap<String, f64>,
}

#[utoipa::path(
    get,
    path = "/v1/experiments",
    tag = "minerva",
    responses((status = 200, description = "The A/B experiments with their variants and tallies", body = serde_json::Value))
)]
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let table = state.routing.table();
    let data: Vec<Value> = table.experiments().map(|e| e.status()).collect();
    Json(json!({ "object": "list", "data": data }))
}

fn find(state: &AppState, name: &str) -> Result<std::sync::Arc<crate::experiment::Experiment>, ApiError> {
    state
        .routing
        .table()
        .experiment(name)
        .cloned()
        .ok_or_else(|| ApiError::ModelNotFound(format!("no experiment {name:?}")))
}

#[utoipa::path(
    get,
    path = "/v1/experiments/{name}",
    tag = "minerva",
    params(("name" = String, Path, description = "The experiment's name")),
    responses((status = 200, description = "One experiment", body = serde_json::Value))
)]
pub async fn get(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(find(&state, &name)?.status()))
}

#[utoipa::path(
    post,
    path = "/v1/experiments/{name}/promote",
    tag = "minerva",
    params(("name" = String, Path, description = "The experiment's name")),
    request_body = PromoteRequest,
    responses((status = 200, description = "The variant now takes all traffic", body = serde_json::Value))
)]
pub async fn promote(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PromoteRequest>,
) -> Result<Json<Value>, ApiError> {
    let experiment = find(&state, &name)?;
    experiment
        .promote(&req.variant)
        .map_err(|e| ApiError::invalid("variant", e.to_string()))?;
    Ok(Json(experiment.status()))
}

#[utoipa::path(
    post,
    path = "/v1/experiments/{name}/rollback",
    tag = "minerva",
    params(("name" = String, Path, description = "The experiment's name")),
    responses((status = 200, description = "The experiment is back to its control", body = serde_json::Value))
)]
pub async fn rollback(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let experiment = find(&state, &name)?;
    experiment
        .rollback()
        .map_err(|e| ApiError::invalid("experiment", e.to_string()))?;
    Ok(Json(experiment.status()))
}

#[utoipa::path(
    post,
    path = "/v1/experiments/{name}/weights",
    tag = "minerva",
    params(("name" = String, Path, description = "The experiment's name")),
    request_body = WeightsRequest,
    responses((status = 200, description = "The new split", body = serde_json::Value))
)]
pub async fn weights(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<WeightsRequest>,
) -> Result<Json<Value>, ApiError> {
    let experiment = find(&state, &name)?;
    experiment
        .set_weights(&req.weights)
        .map_err(|e| ApiError::invalid("weights", e.to_string()))?;
    Ok(Json(experiment.status()))
}

#[utoipa::path(
    post,
    path = "/v1/feedback",
    tag = "minerva",
    request_body = FeedbackRequest,
    responses((status = 200, description = "The score was recorded against the request's variant", body = serde_json::Value))
)]
pub async fn feedback(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<FeedbackRequest>,
) -> Result<Json<Value>, ApiError> {
    if !req.score.is_finite() {
        return Err(ApiError::invalid("score", "must be a finite number"));
    }
    let table = state.routing.table();
    let (experiment, variant) = table
        .experiments()
        .find_map(|e| e.feedback(&req.id, req.score).map(|v| (e, v)))
        .ok_or_else(|| ApiError::invalid("id", format!("{:?} is not the id of an experiment's answer", req.id)))?;
    Ok(Json(
        json!({ "recorded": true, "experiment": experiment.name, "variant": variant.name() }),
    ))
}
