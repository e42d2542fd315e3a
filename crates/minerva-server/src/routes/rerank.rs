//! `POST /v1/rerank` (also `/rerank`): a cross-encoder scores each document against the
//! query, in the request shape text-embeddings-inference, Jina and Cohere share (`query`,
//! `documents`, `top_n`, `return_documents`) and Jina's and Cohere's response shape
//! (`results` of `index`, `relevance_score`, optionally `document.text`), best first.
//!
//! Scores are the model's logit through its activation (sigmoid for one label, as
//! sentence-transformers' `CrossEncoder.predict`); `raw_scores: true` (TEI's name) gives
//! the logits.

use axum::Json;
use axum::extract::State;
use minerva_pool::{AcquireOptions, KeepAlive};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RerankRequest {
    model: String,
    query: String,
    documents: Vec<Document>,
    /// Only the best `top_n` results.
    top_n: Option<usize>,
    /// Echo each document's text in its result.
    #[serde(default)]
    return_documents: bool,
    /// The logits instead of the activated scores.
    #[serde(default)]
    raw_scores: bool,
    #[schema(value_type = Option<crate::openapi::KeepAliveDoc>)]
    keep_alive: Option<KeepAlive>,
}

/// A document: a string, or Cohere's `{"text": ...}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Document {
    Text(String),
    Object { text: String },
}

impl Document {
    fn into_text(self) -> String {
        match self {
            Self::Text(text) | Self::Object { text } => text,
        }
    }
}

#[derive(Serialize)]
pub struct RerankResponse {
    object: &'static str,
    model: String,
    results: Vec<RerankResult>,
}

#[derive(Serialize)]
struct RerankResult {
    index: usize,
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<DocumentText>,
}

#[derive(Serialize)]
struct DocumentText {
    text: String,
}

#[utoipa::path(
    post,
    path = "/v1/rerank",
    tag = "minerva",
    request_body = RerankRequest,
    responses((status = 200, description = "The documents scored against the query, best first", body = serde_json::Value))
)]
pub async fn rerank(
    State(state): State<AppState>,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    ApiJson(req): ApiJson<RerankRequest>,
) -> Result<Json<RerankResponse>, ApiError> {
    crate::middleware::check_keep_alive(scope.as_deref(), &req.keep_alive)?;
    if req.query.is_empty() {
        return Err(ApiError::invalid("query", "must not be empty"));
    }
    if req.top_n == Some(0) {
        return Err(ApiError::invalid("top_n", "must be at least 1"));
    }
    let documents: Vec<String> = req.documents.into_iter().map(Document::into_text).collect();
    if documents.is_empty() {
        return Err(ApiError::invalid("documents", "must not be empty"));
    }
    if documents.len() > state.config.max_embedding_inputs {
        return Err(ApiError::invalid(
            "documents",
            format!(
                "{} documents exceed the limit of {}",
                documents.len(),
                state.config.max_embedding_inputs
            ),
        ));
    }
    // Every document is read with the query.
    let chars = req.query.len() * documents.len() + documents.iter().map(String::len).sum::<usize>();
    if chars > state.config.max_prompt_chars.saturating_mul(16) {
        return Err(ApiError::invalid(
            "documents",
            format!("{chars} characters (query included per document) exceed the limit"),
        ));
    }
    let id = state.model_id(&req.model)?;
    let lease = state
        .pool
        .acquire_with(
            &id,
            AcquireOptions {
                keep_alive: req.keep_alive,
                protect: crate::routing::protected(),
            },
        )
        .await?;
    let service = lease
        .into_embedding()
        .ok()
        .filter(|s| s.is_reranker())
        .ok_or_else(|| ApiError::invalid("model", format!("{id} is not a reranker (cross-encoder) model")))?;
    let _slot = state.admission.admit().await?;
    let texts = req.return_documents.then(|| documents.clone());
    let scores = service.rerank(req.query, documents, req.raw_scores).await?;
    let mut results: Vec<RerankResult> = scores
        .into_iter()
        .enumerate()
        .map(|(index, relevance_score)| RerankResult {
            index,
            relevance_score,
            document: None,
        })
        .collect();
    results.sort_by(|a, b| {
        b.relevance_score
            .total_cmp(&a.relevance_score)
            .then(a.index.cmp(&b.index))
    });
    results.truncate(req.top_n.unwrap_or(usize::MAX));
    if let Some(texts) = texts {
        for r in &mut results {
            r.document = Some(DocumentText {
                text: texts[r.index].clone(),
            });
        }
    }
    metrics::counter!("minerva_reranked_documents_total", "model" => id.to_string()).increment(results.len() as u64);
    Ok(Json(RerankResponse {
        object: "list",
        model: req.model,
        results,
    }))
}
