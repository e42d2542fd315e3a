//! The dashboard: a page and its assets, embedded in the binary (no CDN, works offline),
//! and the monitor's data it reads: `GET /v1/monitor` (one snapshot) and
//! `GET /v1/monitor/events` (a snapshot a second, as server-sent events). The page holds
//! no data, so it is served without the API key; the data routes ask for it like every
//! other route, and the page asks the user for it when they answer 401.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use crate::monitor;
use crate::state::AppState;

/// How often the live stream sends a snapshot.
const PERIOD: Duration = Duration::from_secs(1);

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

/// `GET /v1/monitor/events`: a snapshot at once, then one a second, until the client
/// goes away.
#[utoipa::path(
    get,
    path = "/v1/monitor/events",
    tag = "monitoring",
    responses((status = 200, description = "The snapshot once a second as server-sent events", content((String = "text/event-stream"))))
)]
pub async fn events(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(PERIOD));
    let stream = futures_util::StreamExt::map(ticks, move |_| {
        Ok(Event::default().data(monitor::snapshot(&state).to_string()))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
