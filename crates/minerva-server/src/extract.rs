//! Request extraction that turns every malformed body into a 4xx with an OpenAI-style
//! error naming the problem (never a 500, never axum's plain-text rejection).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// `Json<T>` with OpenAI-style errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(reject(rejection, state.config.max_body_bytes)),
        }
    }
}

/// [`ApiJson`] that keeps the body as JSON too, for a request that may be passed on to a
/// remote backend as the client sent it (fields this server does not know included).
pub struct ApiJsonRaw<T>(pub T, pub serde_json::Value);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJsonRaw<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.max_body_bytes;
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim();
                m.eq_ignore_ascii_case("application/json") || m.ends_with("+json")
            });
        if !json {
            return Err(ApiError::InvalidRequest {
                message: "send the body as JSON with `Content-Type: application/json`".into(),
                param: None,
            });
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        let typed = axum::Json::<T>::from_bytes(&bytes).map_err(|rejection| reject(rejection, limit))?;
        let raw: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidRequest {
            message: format!("request body is not valid JSON: {e}"),
            param: None,
        })?;
        if !raw.is_object() {
            return Err(ApiError::InvalidRequest {
                message: "the request body must be a JSON object".into(),
                param: None,
            });
        }
        Ok(Self(typed.0, raw))
    }
}

/// A JSON body whatever its `Content-Type` says, as Ollama reads its requests (its
/// documented `curl -d '{...}'` examples send a form's content type).
pub struct AnyJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for AnyJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.max_body_bytes;
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(value)| Self(value))
            .map_err(|rejection| reject(rejection, limit))
    }
}

fn reject(rejection: JsonRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge(limit);
    }
    match rejection {
        JsonRejection::JsonDataError(e) => {
            // serde's message names the path of the bad field, e.g. "messages[0]: missing field `role`".
            let detail = std::error::Error::source(&e).map_or_else(|| e.body_text(), |s| s.to_string());
            let param = detail.split(':').next().filter(|p| !p.contains(' ')).map(str::to_owned);
            ApiError::InvalidRequest {
                message: format!("invalid request body: {detail}"),
                param,
            }
        }
        JsonRejection::JsonSyntaxError(e) => {
            let detail = std::error::Error::source(&e).map_or_else(|| e.body_text(), |s| s.to_string());
            ApiError::InvalidRequest {
                message: format!("request body is not valid JSON: {detail}"),
                param: None,
            }
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::InvalidRequest {
            message: "send the body as JSON with `Content-Type: application/json`".into(),
            param: None,
        },
        other => ApiError::InvalidRequest {
            message: other.body_text(),
            param: None,
        },
    }
}
