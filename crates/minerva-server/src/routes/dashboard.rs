//! The dashboard: a page and its assets, embedded in the binary (no CDN, works offline),
//! and the monitor's data it reads: `GET /v1/monitor` (one snapshot) and
//! `GET /v1/monitor/events` (a snapshot a second, as server-sent events). The page holds
//! no data, so it is served without the API key; the data routes ask for it like every
//! other route, and the page asks the user for it when they answer 401.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use crate::error::ApiError;
use crate::monitor;
use crate::state::AppState;

/// The embedded files: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/dashboard/dashboard.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/dashboard/vendor/uPlot.min.css"),
    ),
];

/// `GET /dashboard`.
pub async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../../assets/dashboard/index.html"),
    )
        .into_response()
}

/// `GET /dashboard/{*file}`.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => ([(header::CONTENT_TYPE, *kind)], *body).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            crate::ApiError::NotFound(format!("/dashboard/{file}")),
        )
            .into_response(),
    }
}

/// `GET /v1/monitor`: the monitor's snapshot now.
#[utoipa::path(
    get,
    path = "/v1/monitor",
    tag = "monitoring",
    responses((status = 200, description = "Memory, loaded models, counters, latency percentiles, recent requests", body = serde_json::Value))
)]
pub async fn snapshot(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(monitor::snapshot(&state))
}

/// `GET /v1/monitor/events`: the latest snapshot at once, then one a second, until the
/// client goes away. Every subscriber gets the same snapshots (one task takes them); at
/// most [`crate::live_feed::MAX_SUBSCRIBERS`] watch at once.
#[utoipa::path(
    get,
    path = "/v1/monitor/events",
    tag = "monitoring",
    responses(
        (status = 200, description = "The snapshot once a second as server-sent events", content((crate::openapi::SseEvent = "text/event-stream"))),
        (status = 503, description = "As many clients as the server allows are watching already", body = crate::openapi::ErrorBody)
    )
)]
pub async fn events(
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let subscription = state.monitor.feed.subscribe(&state).ok_or(ApiError::Overloaded(
        "too many clients are watching the live monitor feed; close a dashboard, or poll the monitor's snapshot instead",
    ))?;
    let crate::live_feed::Subscription { snapshots, place } = subscription;
    let stream = futures_util::StreamExt::map(tokio_stream::wrappers::WatchStream::new(snapshots), move |snapshot| {
        // The place among the subscribers goes back when the client does.
        let _place = &place;
        Ok(Event::default().data(snapshot.as_ref()))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
