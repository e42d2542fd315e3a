//! Layers every request passes: request ids, DNS-rebinding protection, API keys, and
//! request metrics.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::error::ApiError;
use crate::state::AppState;

/// Header carrying the request id, in both directions.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Makes the id of a request that came without one (tower-http's request-id layer keeps a
/// client's own id and puts the id on the response).
#[derive(Clone, Copy, Default)]
pub struct NextRequestId;

impl MakeRequestId for NextRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = format!(
            "req-{:x}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// The span every request's logs belong to: its id, method and path.
pub fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
}

/// Answers only to the host names it is meant to have (DNS-rebinding protection): a web
/// page on another origin whose name it rebinds to this server's address gets 403. Allowed
/// are `localhost`, the names of `--allowed-host`, and IP addresses (an IP in `Host` means
/// the page's own origin is that IP, which rebinding cannot forge): on a loopback bind
/// loopback ones only, on a wider bind any.
pub async fn check_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let any_ip = !state.config.addr.ip().is_loopback();
    if !host_allowed(host, &state.config.allowed_hosts, any_ip) {
        return ApiError::ForbiddenHost(host.to_owned()).into_response();
    }
    // A page of another origin can send a "simple" POST (a form, or text/plain, which the
    // Ollama routes read as JSON) without a CORS preflight: refuse every request that is
    // not a read when it comes from an origin that is neither this server nor allowed.
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && let Some(origin) = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok())
        && !origin_allowed(origin, host, &state.config.cors_origins)
    {
        return ApiError::ForbiddenOrigin(origin.to_owned()).into_response();
    }
    next.run(req).await
}

/// Same origin (the origin's host and port are the request's `Host`) or a CORS origin.
fn origin_allowed(origin: &str, host: &str, cors_origins: &[String]) -> bool {
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    authority.eq_ignore_ascii_case(host) || cors_origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

fn host_allowed(host: &str, extra: &[String], any_ip: bool) -> bool {
    let name = strip_port(host);
    if name.eq_ignore_ascii_case("localhost") || extra.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        return true;
    }
    name.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| any_ip || ip.is_loopback())
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [::1]:8080
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Inference and reading: chat, completions, embeddings, tokenize, model lists.
    Inference,
    /// Everything, including loading and unloading models.
    Admin,
}

/// The scope a request needs: changing which models are loaded or stored is admin work.
fn required_scope(req: &Request) -> Scope {
    let path = req.uri().path();
    let lifecycle = path.starts_with("/v1/models/")
        && (path.ends_with("/load")
            || path.ends_with("/preload")
            || path.ends_with("/remove")
            || path == "/v1/models/pull"
            || req.method() == axum::http::Method::DELETE);
    let store = matches!(
        path,
        "/api/pull" | "/api/delete" | "/api/create" | "/api/copy" | "/v1/admin/reload"
    );
    // Changing who gets which variant is an operator's decision.
    let experiment = path.starts_with("/v1/experiments/") && req.method() == axum::http::Method::POST;
    if lifecycle || store || experiment {
        Scope::Admin
    } else {
        Scope::Inference
    }
}

/// A `keep_alive` in an inference request loads or unloads models as surely as the
/// lifecycle routes do (`-1` keeps a model forever, `0` unloads one): only an admin's
/// request may carry one.
pub fn check_keep_alive<T>(scope: Option<&Scope>, keep_alive: &Option<T>) -> Result<(), ApiError> {
    match (scope, keep_alive) {
        (Some(Scope::Inference), Some(_)) => Err(ApiError::AdminRequired("keep_alive")),
        _ => Ok(()),
    }
}

/// When API keys are configured, requires `Authorization: Bearer <key>` (401 without a
/// valid key, 403 when the key's scope is too narrow for the route).
/// The request's scope goes into its extensions for the handlers (a request without keys
/// configured is an admin's).
pub async fn require_api_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let config = &state.config;
    // The dashboard's page and assets hold no data (its data routes ask for the key).
    let path = req.uri().path();
    let open = path == "/health" || path == "/dashboard" || path.starts_with("/dashboard/");
    if (config.api_keys.is_empty() && config.admin_api_keys.is_empty()) || open {
        req.extensions_mut().insert(Scope::Admin);
        req.extensions_mut().insert(Actor("local".to_owned()));
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let matches = |keys: &[String], key: &str| keys.iter().any(|k| bool::from(k.as_bytes().ct_eq(key.as_bytes())));
    // A refused administrative attempt is audited too: who tried (a wrong key by its
    // fingerprint, never the key) and the refusal.
    let refuse = |req: &Request, error: ApiError| {
        let response = error.into_response();
        if required_scope(req) == Scope::Admin {
            let actor = presented.map_or_else(|| Actor("anonymous".to_owned()), Actor::of_key);
            write_audit(&state, AuditedRequest::of(req), actor, response.status().as_u16());
        }
        response
    };
    let scope = match presented {
        Some(key) if matches(&config.admin_api_keys, key) => Scope::Admin,
        Some(key) if matches(&config.api_keys, key) => Scope::Inference,
        _ => return refuse(&req, ApiError::Unauthorized),
    };
    if scope < required_scope(&req) {
        return refuse(&req, ApiError::AdminRequired("this route"));
    }
    let actor = Actor::of_key(presented.unwrap_or_default());
    req.extensions_mut().insert(scope);
    req.extensions_mut().insert(actor);
    next.run(req).await
}

/// Who sent a request, for the audit log: `key:` and the first 8 hex digits of the key's
/// SHA-256 (never the key), or `local` on a server without keys.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl Actor {
    fn of_key(key: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Self(format!("key:{hex}"))
    }
}

/// Writes every administrative request (the routes that need the admin scope: loads,
/// unloads, pulls, removals, model creation, configuration reloads, experiment changes)
/// to the registry's audit log once it is answered: its method and route, the path, who
/// sent it and the status. Off the async threads, and never failing the request.
pub async fn audit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if required_scope(&req) < Scope::Admin {
        return next.run(req).await;
    }
    let audited = AuditedRequest::of(&req);
    let actor = req
        .extensions()
        .get::<Actor>()
        .cloned()
        .unwrap_or_else(|| Actor("unknown".to_owned()));
    let response = next.run(req).await;
    write_audit(&state, audited, actor, response.status().as_u16());
    response
}

/// What the audit log says of a request: its method and route, and its path.
struct AuditedRequest {
    action: String,
    target: String,
}

impl AuditedRequest {
    fn of(req: &Request) -> Self {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
        Self {
            action: format!("{} {route}", req.method()),
            target: req.uri().path().to_owned(),
        }
    }
}

/// Writes one audit row on a blocking thread (nothing when the server has no registry);
/// a failure is a warning, never the request's.
fn write_audit(state: &AppState, request: AuditedRequest, actor: Actor, status: u16) {
    let Some(registry) = state.pool.registry().cloned() else {
        return;
    };
    let entry = minerva_store::AuditEntry::now(request.action, request.target, actor.0, status.to_string());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = registry.audit(&entry) {
            tracing::warn!(error = %e, "an administrative action was not written to the audit log");
        }
    });
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case, as
/// RFC 9110 has it).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Counts requests and their latency per route and status.
pub async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("minerva_http_requests_total", &labels).increment(1);
    metrics::histogram!("minerva_http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    // The dashboard's own polling and scrapes are not traffic.
    let watching = ["/dashboard", "/v1/monitor", "/metrics", "/health"]
        .iter()
        .any(|p| labels[0].1.starts_with(p));
    if !watching {
        state.monitor.answered(response.status().as_u16());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_pass_and_foreign_hosts_do_not() {
        for host in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "127.0.0.2",
            "LOCALHOST",
        ] {
            assert!(host_allowed(host, &[], false), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "",
            "10.0.0.1:8080",
        ] {
            assert!(!host_allowed(host, &[], false), "{host}");
        }
        assert!(host_allowed("minerva.lan:8080", &["minerva.lan".to_owned()], false));
    }

    #[test]
    fn a_wide_bind_accepts_its_addresses_and_listed_names_only() {
        for host in ["192.168.1.20:8080", "[fe80::1]:8080", "localhost", "minerva.lan"] {
            assert!(host_allowed(host, &["minerva.lan".to_owned()], true), "{host}");
        }
        for host in ["evil.example", "evil.example:8080", "minerva.lan.evil.example", ""] {
            assert!(!host_allowed(host, &["minerva.lan".to_owned()], true), "{host}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
