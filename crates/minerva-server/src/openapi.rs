//! The published API schema, `GET /openapi.json` (OpenAPI 3.1).
//!
//! It is built from the code: every documented route is registered through
//! `utoipa_axum::routes!`, so a route cannot be served without its entry, and the request
//! bodies are the handlers' own `Deserialize` types deriving `ToSchema`. Errors are
//! described once here and added to every operation: OpenAI's `{"error": {...}}` on the
//! OpenAI and lifecycle routes, Ollama's `{"error": "..."}` under `/api/`.
//!
//! Success bodies that the handlers build as JSON values are described as objects; the
//! streamed ones list `text/event-stream` (OpenAI; its schema is one event, [`SseEvent`],
//! as OpenAPI tools validate a stream event by event) or `application/x-ndjson` (Ollama)
//! beside `application/json`.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::{Modify, ToSchema};

/// `keep_alive` as clients send it: seconds (negative: forever, 0: unload after the
/// request) or a duration such as `"5m"`, `"1h30m"`, `"-1"`.
#[derive(ToSchema)]
#[allow(dead_code)] // Documentation only: `minerva_pool::KeepAlive` parses the field.
#[schema(as = KeepAlive)]
#[serde(untagged)]
pub enum KeepAliveDoc {
    Seconds(f64),
    Duration(String),
}

/// OpenAI's error body.
#[derive(ToSchema)]
#[allow(dead_code)] // Documentation only: `ApiError` writes the body.
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    message: String,
    #[schema(rename = "type")]
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

/// One server-sent event of a stream, as the event-stream parser reads it: OpenAI's
/// streams put a JSON chunk in `data` (the last event's `data` is `[DONE]`); the
/// monitor's stream a JSON snapshot. Events carry no `id` or `retry` today.
#[derive(ToSchema)]
#[allow(dead_code)] // Documentation only: axum's `Sse` writes the events.
pub struct SseEvent {
    /// The event's payload: a JSON document, or `[DONE]` at the end of a completion.
    data: String,
    /// The event's type; absent (`message`) on every event Minerva sends.
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
}

/// Ollama's error body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OllamaErrorBody {
    error: String,
}

/// The document's frame: title, version, tags, the error bodies; the routes add the paths.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Minerva",
        description = "A local-first model server: OpenAI- and Ollama-compatible, with a model lifecycle API.",
        license(name = "MIT OR Apache-2.0"),
    ),
    components(schemas(ErrorBody, OllamaErrorBody)),
    tags(
        (name = "openai", description = "OpenAI's API: chat, completions, embeddings, models"),
        (name = "minerva", description = "Minerva's lifecycle, routing and inspection API"),
        (name = "ollama", description = "Ollama's API"),
        (name = "monitoring", description = "Health, metrics and the live snapshot"),
    )
)]
pub struct ApiDoc;

/// The statuses a refusal can have, and why (a 500 is a bug, so it is not listed).
const ERRORS: &[(&str, &str)] = &[
    ("400", "The body or a parameter is invalid"),
    ("401", "Missing or wrong API key"),
    ("403", "The key may not do this, or the host or origin is refused"),
    ("404", "No such model or route"),
    ("409", "The model's files failed their integrity check"),
    ("413", "The body is larger than the server accepts"),
    ("502", "A hub or remote backend failed"),
    (
        "503",
        "Overloaded or no memory free right now; retry after the Retry-After header",
    ),
    ("504", "The request exceeded the server's timeout"),
    ("507", "The model can never fit in the memory budget"),
];

/// Adds the error responses to every operation (applied once the routes have added theirs).
pub struct Errors;

impl Modify for Errors {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let body = if path.starts_with("/api/") {
                OllamaErrorBody::name()
            } else {
                ErrorBody::name()
            };
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.head,
            ];
            for operation in operations.into_iter().flatten() {
                add_errors(operation, &body);
            }
        }
    }
}

fn add_errors(operation: &mut Operation, body: &str) {
    for (status, description) in ERRORS {
        let response = ResponseBuilder::new()
            .description(*description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(body))))
                    .build(),
            )
            .build();
        operation
            .responses
            .responses
            .entry((*status).to_owned())
            .or_insert(RefOr::T(response));
    }
}
