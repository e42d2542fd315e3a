//! Shared state of the handlers and the admission control of inference requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics_exporter_prometheus::PrometheusHandle;
use minerva_pool::ModelPool;
use minerva_store::ModelId;
use minerva_workers::embedding::EmbeddingCache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;
use crate::error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Configuration, parsed once.
    pub config: Arc<ServerConfig>,
    /// The loaded models.
    pub pool: Arc<ModelPool>,
    /// Admission control for inference requests.
    pub admission: Arc<Admission>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Vectors by content, shared by every embedding model.
    pub embedding_cache: Arc<EmbeddingCache>,
    /// Aliases and fallback chains, reloadable.
    pub routing: Arc<crate::routing::Routing>,
    /// Running figures for the dashboard and `minerva top`.
    pub monitor: Arc<crate::monitor::Monitor>,
}

impl AppState {
    /// Parses a model id from a request, as a 404 when it cannot name a model; `NAME`
    /// and `NAME:latest` name one model, whichever spelling the store holds.
    pub fn model_id(&self, id: &str) -> Result<ModelId, ApiError> {
        let id = ModelId::new(id).map_err(|_| ApiError::ModelNotFound(format!("model {id:?} does not exist")))?;
        Ok(self.pool.store().canonical(&id))
    }
}

/// Why admission refused a request: the server's, not a model's, so no fallback helps.
pub const SHUTTING_DOWN: &str = "shutting down";
pub const NO_SLOT: &str = "no slot became free in time";
pub const QUEUE_FULL: &str = "request queue is full";

/// A bounded number of running inference requests and a bounded queue in front of them.
pub struct Admission {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    wait_timeout: std::time::Duration,
}

/// Held while an inference request runs; dropping it (also when a client disconnects)
/// frees the slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// Admission for `config`.
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            running: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting: config.max_queued_requests,
            wait_timeout: config.queue_timeout,
        }
    }

    /// Waits for a slot: 503 at once when the queue is full, or after the queue timeout.
    #[tracing::instrument(name = "admission", skip_all)]
    pub async fn admit(&self) -> Result<Slot, ApiError> {
        if let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        // The guard leaves the queue also when this future is dropped (client gone).
        let _queued = QueuePlace::enter(&self.waiting, self.max_waiting)?;
        let waited = tokio::time::timeout(self.wait_timeout, Arc::clone(&self.running).acquire_owned()).await;
        match waited {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            Ok(Err(_)) => Err(ApiError::Overloaded(SHUTTING_DOWN)),
            Err(_) => Err(ApiError::Overloaded(NO_SLOT)),
        }
    }

    /// Requests waiting for a slot right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.running.available_permits()
    }
}

/// A place in the wait queue, given back on drop.
struct QueuePlace<'a> {
    waiting: &'a AtomicUsize,
}

impl<'a> QueuePlace<'a> {
    fn enter(waiting: &'a AtomicUsize, max: usize) -> Result<Self, ApiError> {
        if waiting.fetch_add(1, Ordering::SeqCst) >= max {
            waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Overloaded(QUEUE_FULL));
        }
        metrics::gauge!("minerva_queue_depth").increment(1.0);
        Ok(Self { waiting })
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("minerva_queue_depth").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_abandoned_in_the_queue_gives_its_place_back() {
        let config = ServerConfig {
            max_concurrent_requests: 1,
            max_queued_requests: 1,
            ..ServerConfig::default()
        };
        let admission = Admission::new(&config);
        let running = admission.admit().await.unwrap();
        for _ in 0..3 {
            // Queue, then give up (as a disconnecting client's handler is dropped).
            let waiting = admission.admit();
            tokio::select! {
                _ = waiting => panic!("admitted while the only slot is taken"),
                () = tokio::task::yield_now() => {}
            }
        }
        assert_eq!(admission.waiting.load(Ordering::SeqCst), 0);
        drop(running);
        admission.admit().await.unwrap();
    }
}
