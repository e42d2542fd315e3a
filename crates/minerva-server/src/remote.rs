//! Remote backends: any OpenAI-compatible server (another Minerva, llama-server, vLLM, a
//! hosted API) serving a name of this one, as one or several replicas.
//!
//! A request goes to the replica with the fewest requests outstanding, except that a
//! conversation prefers the replica its beginning hashes to (prefix affinity: the replica
//! that has seen it holds its KV) unless that one is busier than the others by more than
//! [`AFFINITY_SLACK`]. A replica that fails [`BackendSpec`]'s `failures` times in a row
//! is skipped for `cooldown_secs` (the circuit is open), then gets one request to probe
//! it; health checks (`GET /models`) run on an interval and feed the same breaker. The
//! answer is passed through as it arrives (a stream stays a stream); a 5xx or a failed
//! connection is an [`ApiError::Upstream`], which a route's fallback chain goes past, and
//! a client that goes away drops the upstream connection, which cancels the request there.
//! Remote backends take no local memory.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::error::ApiError;

/// How much busier (in outstanding requests) a conversation's own replica may be than the
/// least busy one before the conversation goes elsewhere.
pub const AFFINITY_SLACK: usize = 2;

/// A `[backends.NAME]` table of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Base URLs of the replicas, up to `/v1` (`http://10.0.0.5:8080/v1`).
    pub urls: Vec<String>,
    /// The model name the upstream knows (default: the backend's name).
    pub model: Option<String>,
    /// Environment variable holding the upstream's API key (sent as a bearer token).
    pub api_key_env: Option<String>,
    /// Seconds between health checks of each replica [default: 10].
    pub health_interval_secs: Option<f64>,
    /// Failures in a row that open a replica's circuit [default: 3].
    pub failures: Option<u32>,
    /// Seconds an open circuit skips its replica before one probe [default: 30].
    pub cooldown_secs: Option<f64>,
}

/// One upstream server.
#[derive(Debug)]
pub struct Replica {
    pub url: String,
    outstanding: AtomicUsize,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    /// One request is probing a replica whose cool-down ended.
    probing: AtomicBool,
    last_check: Mutex<Option<Instant>>,
}

/// Whether a replica takes requests now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed,
    /// The cool-down is over: one request may probe.
    HalfOpen,
    Open,
}

impl Replica {
    fn new(url: String) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            outstanding: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
            probing: AtomicBool::new(false),
            last_check: Mutex::new(None),
        }
    }

    fn circuit(&self) -> Circuit {
        match *self.open_until.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Circuit::Closed,
            Some(until) if Instant::now() >= until => Circuit::HalfOpen,
            Some(_) => Circuit::Open,
        }
    }

    /// Requests sent and not yet answered in full.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Whether its circuit is open (it is being skipped).
    pub fn is_open(&self) -> bool {
        self.circuit() == Circuit::Open
    }
}

/// A remote backend: its replicas, its upstream model name, its credentials.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub model: String,
    pub replicas: Vec<Arc<Replica>>,
    api_key: Option<String>,
    client: reqwest::Client,
    failures_to_open: u32,
    cooldown: Duration,
    health_interval: Duration,
}

/// Outstanding-request count of a replica, held until the answer's last byte.
struct InFlight(Arc<Replica>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A half-open replica's probe, released however the request ends (also when its future
/// is dropped: a route's timeout, a client gone), so the next request may probe.
struct Probe(Arc<Replica>);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Relaxed);
    }
}

impl Backend {
    /// What `/v1/models` shows of it: the upstream's model name and each replica's
    /// address (without credentials), outstanding requests and circuit.
    pub fn describe(&self) -> serde_json::Value {
        let replicas: Vec<_> = self
            .replicas
            .iter()
            .map(|r| {
                let circuit = match r.circuit() {
                    Circuit::Closed => "closed",
                    Circuit::HalfOpen => "half_open",
                    Circuit::Open => "open",
                };
                serde_json::json!({
                    "url": minerva_pull::redact(&r.url),
                    "outstanding": r.outstanding(),
                    "circuit": circuit,
                })
            })
            .collect();
        serde_json::json!({ "model": self.model, "replicas": replicas })
    }

    /// A backend from its configuration; `Err` names what is wrong.
    pub fn new(name: &str, spec: &BackendSpec, client: reqwest::Client) -> Result<Self, String> {
        if spec.urls.is_empty() {
            return Err("urls is empty".into());
        }
        for url in &spec.urls {
            let parsed = reqwest::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("url {url:?}: only http and https"));
            }
        }
        let api_key = match &spec.api_key_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| format!("api_key_env: ${var} is not set"))?),
        };
        let seconds = |v: Option<f64>, default: f64, what: &str| match v.unwrap_or(default) {
            s if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            s => Err(format!("{what} {s} must be positive")),
        };
        Ok(Self {
            name: name.to_owned(),
            model: spec.model.clone().unwrap_or_else(|| name.to_owned()),
            replicas: spec.urls.iter().cloned().map(Replica::new).map(Arc::new).collect(),
            api_key,
            client,
            failures_to_open: spec.failures.unwrap_or(3).max(1),
            cooldown: seconds(spec.cooldown_secs, 30.0, "cooldown_secs")?,
            health_interval: seconds(spec.health_interval_secs, 10.0, "health_interval_secs")?,
        })
    }

    /// The replica for a request whose conversation hashes to `affinity`: its own one
    /// unless that one is much busier, else the least busy; never one whose circuit is
    /// open (a half-open one takes a single probe).
    fn pick(&self, affinity: Option<u64>) -> Option<Arc<Replica>> {
        let usable: Vec<&Arc<Replica>> = self.replicas.iter().filter(|r| r.circuit() != Circuit::Open).collect();
        let least = usable.iter().map(|r| r.outstanding()).min()?;
        let own = affinity
            .map(|h| &self.replicas[(h % self.replicas.len() as u64) as usize])
            .filter(|r| r.circuit() == Circuit::Closed && r.outstanding() <= least + AFFINITY_SLACK);
        let chosen = own.or_else(|| {
            usable
                .iter()
                .copied()
                .filter(|r| r.circuit() == Circuit::Closed)
                .min_by_key(|r| r.outstanding())
        });
        if let Some(replica) = chosen {
            return Some(Arc::clone(replica));
        }
        // Only half-open replicas: one probe each.
        usable
            .into_iter()
            .find(|r| {
                r.probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .cloned()
    }

    fn succeeded(&self, replica: &Replica) {
        replica.failures.store(0, Ordering::Relaxed);
        replica.probing.store(false, Ordering::Relaxed);
        let was_open = replica
            .open_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        if was_open {
            tracing::info!(backend = %self.name, replica = %replica.url, "circuit closed");
        }
        self.gauge(replica);
    }

    fn failed(&self, replica: &Replica, why: &str) {
        let failures = replica.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let probe = replica.probing.swap(false, Ordering::Relaxed);
        if failures >= self.failures_to_open || probe {
            *replica.open_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + self.cooldown);
            tracing::warn!(backend = %self.name, replica = %replica.url, failures, why, "circuit open");
        }
        self.gauge(replica);
    }

    fn gauge(&self, replica: &Replica) {
        metrics::gauge!("minerva_backend_circuit_open", "backend" => self.name.clone(), "replica" => replica.url.clone())
            .set(f64::from(u8::from(replica.is_open())));
    }

    /// Sends `body` (its `model` set to the upstream's name) to `path` under `/v1` of a
    /// replica and passes the answer through; `affinity` keeps a conversation on one
    /// replica.
    pub async fn forward(
        &self,
        path: &str,
        mut body: serde_json::Value,
        affinity: Option<u64>,
    ) -> Result<Response, ApiError> {
        let replica = self
            .pick(affinity)
            .ok_or_else(|| ApiError::Upstream(format!("backend {}: every replica's circuit is open", self.name)))?;
        let _probe = (replica.circuit() == Circuit::HalfOpen).then(|| Probe(Arc::clone(&replica)));
        if let Some(fields) = body.as_object_mut() {
            fields.insert("model".into(), serde_json::Value::String(self.model.clone()));
        }
        replica.outstanding.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(Arc::clone(&replica));
        let mut request = self.client.post(format!("{}{path}", replica.url)).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let count = |status: &str| {
            metrics::counter!(
                "minerva_backend_requests_total",
                "backend" => self.name.clone(),
                "replica" => replica.url.clone(),
                "status" => status.to_owned()
            )
            .increment(1);
        };
        let upstream = match request.send().await {
            Ok(upstream) => upstream,
            Err(e) => {
                count("unreachable");
                self.failed(&replica, "unreachable");
                return Err(ApiError::Upstream(format!(
                    "backend {} ({}) is unreachable: {e}",
                    self.name, replica.url
                )));
            }
        };
        let status = upstream.status();
        count(status.as_str());
        if status.is_server_error() {
            self.failed(&replica, status.as_str());
            // The start of the body says why; the rest is not read.
            let mut body = upstream.bytes_stream();
            let mut head = Vec::new();
            while head.len() < 1024
                && let Some(Ok(chunk)) = body.next().await
            {
                head.extend_from_slice(&chunk);
            }
            let text: String = String::from_utf8_lossy(&head).chars().take(300).collect();
            return Err(ApiError::Upstream(format!(
                "backend {} ({}) answered {status}: {text}",
                self.name, replica.url
            )));
        }
        // A client error is the request's, not the replica's: passed back as it is.
        self.succeeded(&replica);
        let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
        let stream = upstream.bytes_stream().map(move |chunk| {
            let _held = &in_flight;
            chunk.map_err(std::io::Error::other)
        });
        let mut response = (
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            Body::from_stream(stream),
        )
            .into_response();
        if let Some(content_type) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, content_type);
        }
        Ok(response)
    }

    /// Checks the replicas whose health interval has passed (`GET /models`): an answer
    /// closes a circuit, a failure counts toward opening it.
    pub async fn check_health(&self) {
        for replica in &self.replicas {
            {
                let mut last = replica.last_check.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_some_and(|t| t.elapsed() < self.health_interval) {
                    continue;
                }
                *last = Some(Instant::now());
            }
            let mut request = self
                .client
                .get(format!("{}/models", replica.url))
                .timeout(Duration::from_secs(5));
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => self.succeeded(replica),
                Ok(r) => self.failed(replica, &format!("health check answered {}", r.status())),
                Err(_) => self.failed(replica, "health check: unreachable"),
            }
        }
    }
}

/// The affinity key of a chat: its first two messages (the system prompt and the first
/// question), which every later turn of the conversation repeats.
pub fn chat_affinity(body: &serde_json::Value) -> Option<u64> {
    let messages = body.get("messages")?.as_array()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for m in messages.iter().take(2) {
        m.get("role").and_then(|r| r.as_str()).hash(&mut hasher);
        m.get("content").map(|c| c.to_string()).hash(&mut hasher);
    }
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(urls: &[&str]) -> Backend {
        let spec = BackendSpec {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            model: None,
            api_key_env: None,
            health_interval_secs: None,
            failures: Some(2),
            cooldown_secs: Some(3600.0),
        };
        minerva_pull::install_crypto_provider();
        Backend::new("b", &spec, reqwest::Client::new()).unwrap()
    }

    #[test]
    fn least_outstanding_wins_affinity_holds_within_slack_and_open_circuits_are_skipped() {
        let b = backend(&["http://a/v1", "http://b/v1", "http://c/v1"]);
        b.replicas[0].outstanding.store(3, Ordering::Relaxed);
        b.replicas[1].outstanding.store(1, Ordering::Relaxed);
        b.replicas[2].outstanding.store(2, Ordering::Relaxed);
        assert_eq!(b.pick(None).unwrap().url, "http://b/v1");
        // Affinity to c (2 outstanding, least is 1): within the slack, c.
        assert_eq!(b.pick(Some(2)).unwrap().url, "http://c/v1");
        b.replicas[2].outstanding.store(4, Ordering::Relaxed);
        assert_eq!(b.pick(Some(2)).unwrap().url, "http://b/v1", "too busy for affinity");
        // Two failures open b's circuit: it is skipped.
        b.failed(&b.replicas[1], "test");
        assert_eq!(b.pick(None).unwrap().url, "http://b/v1", "one failure keeps it");
        b.failed(&b.replicas[1], "test");
        assert!(b.replicas[1].is_open());
        assert_eq!(b.pick(None).unwrap().url, "http://a/v1");
        // A success closes it again.
        b.succeeded(&b.replicas[1]);
        assert_eq!(b.pick(None).unwrap().url, "http://b/v1");
    }

    #[test]
    fn after_the_cool_down_one_probe_goes_through_and_its_failure_reopens() {
        let b = backend(&["http://a/v1"]);
        *b.replicas[0].open_until.lock().unwrap() = Some(Instant::now() - Duration::from_secs(1));
        let probe = b.pick(None).expect("one probe");
        assert!(b.pick(None).is_none(), "a second request while the probe runs");
        b.failed(&probe, "probe failed");
        assert!(b.replicas[0].is_open());
        assert!(b.pick(None).is_none());
    }
}
