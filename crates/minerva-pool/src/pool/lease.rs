//! A request's hold on a loaded model: while any clone of a [`Lease`] lives, the model is
//! never evicted; dropping the last clone starts its keep-alive.

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::actor::Msg;
use super::{LoadedModel, ModelLease};
use minerva_engine::llm::{Adapter, AdapterSet};
use minerva_workers::LlmWorker;
use minerva_workers::embedding::EmbeddingService;

/// A request's hold on a loaded model (cheap to clone; all clones are one hold).
pub struct Lease<M = LoadedModel>(Arc<Guard<M>>);

impl<M> Clone for Lease<M> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

struct Guard<M> {
    /// `None` once the hold has ended and the reference went back to the pool.
    model: Option<Arc<ModelLease<M>>>,
    mailbox: UnboundedSender<Msg<M>>,
    /// A request's lease (not a preload's).
    request: bool,
}

impl<M> Lease<M> {
    pub(super) fn new(model: Arc<ModelLease<M>>, mailbox: UnboundedSender<Msg<M>>, request: bool) -> Self {
        Self(Arc::new(Guard {
            model: Some(model),
            mailbox,
            request,
        }))
    }

    /// Counts `bytes` more for the leased model until it unloads (what a LoRA adapter
    /// loaded for it holds), evicting idle models if the budget is then exceeded.
    pub fn charge(&self, bytes: u64) {
        if let Some(model) = &self.0.model {
            let _ = self.0.mailbox.send(Msg::Charge {
                id: model.id.clone(),
                generation: model.generation,
                bytes,
            });
        }
    }
}

impl Lease {
    /// This lease as a language model's, or the lease back when the model is not one.
    pub fn into_llm(self) -> Result<LlmLease, Lease> {
        match &self.model {
            LoadedModel::Llm(worker) => {
                let worker = Arc::clone(worker);
                Ok(TypedLease {
                    worker,
                    adapter: AdapterSet::default(),
                    lease: self,
                })
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
                    adapter: AdapterSet::default(),
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
    /// The LoRA adapters and scales the request's generations apply (language models).
    adapter: AdapterSet,
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

    /// The lease with a LoRA adapter (loaded for this model) applied at `scale` to the
    /// generations that go through it, besides those it applies already.
    pub fn with_adapter(mut self, adapter: Arc<dyn Adapter>, scale: f32) -> Self {
        self.adapter.push(adapter, scale);
        self
    }

    /// The adapters and scales the lease applies (empty: none).
    pub fn adapter(&self) -> &AdapterSet {
        &self.adapter
    }
}

impl<W> Clone for TypedLease<W> {
    fn clone(&self) -> Self {
        Self {
            worker: Arc::clone(&self.worker),
            adapter: self.adapter.clone(),
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

impl<M> Deref for Lease<M> {
    type Target = ModelLease<M>;

    fn deref(&self) -> &ModelLease<M> {
        self.0
            .model
            .as_ref()
            .expect("the model is taken only when the hold ends")
    }
}

impl<M> Drop for Guard<M> {
    fn drop(&mut self) {
        // The pool gets the reference back: if the model left meanwhile, it may be the
        // last one, and the pool frees it off the async threads.
        if let Some(model) = self.model.take() {
            let _ = self.mailbox.send(Msg::Release {
                model,
                request: self.request,
            });
        }
    }
}
