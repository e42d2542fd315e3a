//! One error type for the HTTP layer, mapped once to a status and an OpenAI-style body:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minerva_engine::EngineError;
use minerva_pool::PoolError;
use minerva_store::{RegistryError, StoreError};
use minerva_workers::embedding::EmbeddingError;

/// Every failure a client can see.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a parameter is invalid (400).
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<String> },
    /// No such model (404).
    #[error("{0}")]
    ModelNotFound(String),
    /// No such route (404).
    #[error("no route for {0}")]
    NotFound(String),
    /// The body is larger than the server accepts (413).
    #[error("request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// Missing or wrong API key (401).
    #[error("invalid or missing API key; send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// The API key is valid but not for this route or field (403).
    #[error("{0} changes which models are loaded and needs an admin API key (--admin-api-key)")]
    AdminRequired(&'static str),
    /// The Host header is not one this server answers to (403).
    #[error("host {0:?} is not allowed")]
    ForbiddenHost(String),
    /// A browser page of another origin tried to change or use the server (403).
    #[error("cross-origin request from {0:?} refused; allow the origin with --cors-origin")]
    ForbiddenOrigin(String),
    /// Too many requests waiting (503 with Retry-After).
    #[error("the server is overloaded ({0}); retry later")]
    Overloaded(&'static str),
    /// No memory for the model while others are in use (503 with Retry-After).
    #[error("{0}")]
    MemoryBusy(String),
    /// The model's files failed their integrity check (409).
    #[error("{0}")]
    ModelUnavailable(String),
    /// The model can never fit in the memory budget (507).
    #[error("{0}")]
    InsufficientMemory(String),
    /// The request took longer than allowed (504).
    #[error("the request exceeded the timeout of {0} s")]
    Timeout(u64),
    /// A hub, registry or file server a pull talked to failed or sent a bad file (502).
    #[error("{0}")]
    Upstream(String),
    /// The engine failed (500); the server keeps serving.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming the offending field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::ForbiddenHost(_) | Self::ForbiddenOrigin(_) | Self::AdminRequired(_) => StatusCode::FORBIDDEN,
            Self::Overloaded(_) | Self::MemoryBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::InsufficientMemory(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::ModelUnavailable(_) => StatusCode::CONFLICT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::InvalidRequest { .. } | Self::PayloadTooLarge(_) => ("invalid_request_error", None),
            Self::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            Self::NotFound(_) => ("invalid_request_error", Some("not_found")),
            Self::Unauthorized => ("invalid_request_error", Some("invalid_api_key")),
            Self::ForbiddenHost(_) => ("invalid_request_error", Some("forbidden_host")),
            Self::ForbiddenOrigin(_) => ("invalid_request_error", Some("forbidden_origin")),
            Self::AdminRequired(_) => ("invalid_request_error", Some("insufficient_scope")),
            Self::Overloaded(_) | Self::MemoryBusy(_) => ("server_error", Some("overloaded")),
            Self::Timeout(_) => ("server_error", Some("timeout")),
            Self::InsufficientMemory(_) => ("server_error", Some("insufficient_memory")),
            Self::ModelUnavailable(_) => ("invalid_request_error", Some("model_integrity")),
            Self::Upstream(_) => ("server_error", Some("upstream")),
            Self::Internal(_) => ("server_error", None),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } => param.as_deref(),
            Self::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request refused");
        }
        let (kind, code) = self.kind_and_code();
        // Whatever a failure below says, the client never sees where the files are.
        let message = match self {
            Self::NotFound(_) | Self::InvalidRequest { .. } => self.to_string(),
            _ => redact_paths(&self.to_string()),
        };
        let body = serde_json::json!({
            "error": { "message": message, "type": kind, "param": self.param(), "code": code }
        });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::InvalidParameter { param, .. } => Self::invalid(*param, e.to_string()),
            EngineError::ContextOverflow { .. } => Self::invalid("messages", e.to_string()),
            EngineError::InputTooLong { .. } => Self::invalid("input", e.to_string()),
            EngineError::ChatTemplate(_) => Self::invalid("messages", e.to_string()),
            // Only the first line: library errors may carry a backtrace with source paths.
            // (Paths in the message are cut when the response is made.)
            _ => Self::Internal(first_line(&e.to_string()).to_owned()),
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

impl From<EmbeddingError> for ApiError {
    fn from(e: EmbeddingError) -> Self {
        match e {
            EmbeddingError::Input(e) => e.into(),
            EmbeddingError::Overloaded { .. } => Self::Overloaded("the embedding queue is full"),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<minerva_pull::PullError> for ApiError {
    fn from(e: minerva_pull::PullError) -> Self {
        use minerva_pull::PullError as P;
        match e {
            P::InvalidSource { .. } | P::NoDigest { .. } | P::InvalidId(_) | P::Offline(_) => {
                Self::invalid("model", e.to_string())
            }
            P::NotFound { .. } | P::Resolve { .. } => Self::ModelNotFound(e.to_string()),
            P::Conflict { .. } | P::Damaged { .. } => Self::ModelUnavailable(e.to_string()),
            P::Http { .. } | P::Network { .. } | P::HashMismatch { .. } | P::SizeMismatch { .. } | P::Tls(_) => {
                Self::Upstream(e.to_string())
            }
            P::Io { .. } | P::Registry(_) => Self::Internal(e.to_string()),
        }
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        Self::from_pool(&e)
    }
}

impl ApiError {
    fn from_pool(e: &PoolError) -> Self {
        match e {
            PoolError::Store(StoreError::UnknownModel { id, .. } | StoreError::OutsideStore { id, .. }) => {
                Self::ModelNotFound(format!("model {id:?} does not exist"))
            }
            PoolError::LoadFailed { cause, .. } => Self::from_pool(cause),
            PoolError::Load(e) => Self::Internal(format!("loading the model failed: {e}")),
            PoolError::TooLarge { .. } => Self::InsufficientMemory(e.to_string()),
            PoolError::Busy { .. } => Self::MemoryBusy(e.to_string()),
            // The model was unloaded (by an admin, or its worker died) while this request
            // waited for its load: nothing is wrong with the request; a retry loads it.
            PoolError::Interrupted(id) => {
                Self::MemoryBusy(format!("{id} was unloaded while it loaded for this request; retry"))
            }
            PoolError::Registry(e @ (RegistryError::HashMismatch { .. } | RegistryError::Missing { .. })) => {
                Self::ModelUnavailable(e.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

/// `text` with every absolute filesystem path cut to its last component: where the
/// server keeps its files is none of a client's business (and tells an attacker the
/// user name and layout).
fn redact_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('/') {
        let starts_token = rest[..start]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '(' | '[' | '='));
        let end = rest[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | ']' | ',' | ';'))
            .map_or(rest.len(), |n| start + n);
        let token = &rest[start..end];
        out.push_str(&rest[..start]);
        // The server's own routes ("use /v1/embeddings") are not files.
        let route = ["/v1/", "/api/"].iter().any(|p| token.starts_with(p));
        if starts_token && token[1..].contains('/') && !route {
            // Keep a trailing ':' (as in "PATH: reason") outside the kept name.
            let (path, colon) = token.strip_suffix(':').map_or((token, ""), |p| (p, ":"));
            out.push_str(path.rsplit('/').find(|c| !c.is_empty()).unwrap_or(""));
            out.push_str(colon);
        } else {
            out.push_str(token);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_cut_short_by_an_unload_is_a_retryable_503_not_a_500() {
        // The soak found it: a request waiting for a model that an admin unloaded
        // meanwhile got a 500.
        let id = minerva_store::ModelId::new("m").unwrap();
        let error = ApiError::from(PoolError::Interrupted(id));
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(error.to_string().contains("retry"), "{error}");
    }

    #[test]
    fn paths_are_cut_to_their_file_name() {
        assert_eq!(
            redact_paths("/root/.local/share/minerva/models/x.gguf: llama.cpp could not load the model: bad"),
            "x.gguf: llama.cpp could not load the model: bad"
        );
        assert_eq!(
            redact_paths("model \"x\" is registered but its file /home/ann/m/x.gguf is missing"),
            "model \"x\" is registered but its file x.gguf is missing"
        );
        assert_eq!(redact_paths("in (/a/b/c) and \"/d/e\""), "in (c) and \"e\"");
        assert_eq!(redact_paths("1/2 of the budget, /v1"), "1/2 of the budget, /v1");
        // Routes named in advice stay whole (they were cut to "embeddings", "chat").
        assert_eq!(
            redact_paths("m is an embedding model; use /v1/embeddings"),
            "m is an embedding model; use /v1/embeddings"
        );
        assert_eq!(
            redact_paths("see /api/chat and /v1/models/x/load"),
            "see /api/chat and /v1/models/x/load"
        );
    }
}
