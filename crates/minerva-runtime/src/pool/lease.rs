//! A request's hold on a loaded model: while any clone of a [`Lease`] lives, the model is
//! never evicted; dropping the last clone starts its keep-alive.

use std::ops::Deref;
use std::sync::Arc;

use super::{LoadedModel, ModelLease, Shared};
use crate::embedding::EmbeddingService;
use crate::llm_worker::LlmWorker;

/// A request's hold on a loaded model (cheap to clone; all clones are one hold).
#[derive(Clone)]
pub struct Lease(Arc<Guard>);

struct Guard {
    model: Arc<ModelLease>,
    shared: Arc<Shared>,
    /// A request's lease (not a preload's).
    request: bool,
}

impl Lease {
    pub(super) fn new(model: Arc<ModelLease>, shared: Arc<Shared>, request: bool) -> Self {
        Self(Arc::new(Guard { model, shared, request }))
    }
}

impl Lease {
    /// This lease as a language model's, or the lease back when the model is not one.
    pub fn into_llm(self) -> Result<LlmLease, Lease> {
        match &self.model {
            LoadedModel::Llm(worker) => {
                let worker = Arc::clone(worker);
                Ok(TypedLease { worker, lease: self })
            }
            LoadedModel::Embedding(_) => Err(self),
        }
    }

    /// This lease as an embedding model's, or the lease back when the model is not one.
    pub fn into_embedding(self) -> Result<EmbeddingLease, Lease> {
        match &self.model {
            LoadedModel::Embedding(service) => {
                let service = Arc::clone(service);
                Ok(TypedLease {
                    worker: service,
                    lease: self,
                })
            }
            LoadedModel::Llm(_) => Err(self),
        }
    }
}

/// A lease on a model of a known kind: the hold, and the model's worker
/// ([`LlmLease`], [`EmbeddingLease`]); it dereferences to the worker.
pub struct TypedLease<W> {
    // Before `lease`: when the hold ends, the pool may free the model at once, and it
    // must then hold the last reference to the worker.
    worker: Arc<W>,
    lease: Lease,
}

/// A lease on a language model.
pub type LlmLease = TypedLease<LlmWorker>;
/// A lease on an embedding model.
pub type EmbeddingLease = TypedLease<EmbeddingService>;

impl<W> TypedLease<W> {
    /// The hold on the model (its id, bytes, load time).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }
}

impl<W> Clone for TypedLease<W> {
    fn clone(&self) -> Self {
        Self {
            worker: Arc::clone(&self.worker),
            lease: self.lease.clone(),
        }
    }
}

impl<W> Deref for TypedLease<W> {
    type Target = W;

    fn deref(&self) -> &W {
        &self.worker
    }
}

impl Deref for Lease {
    type Target = ModelLease;

    fn deref(&self) -> &ModelLease {
        &self.0.model
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.release(&self.model, self.request);
    }
}
