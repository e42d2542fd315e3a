//! A request's hold on a loaded model: while any clone of a [`Lease`] lives, the model is
//! never evicted; dropping the last clone starts its keep-alive.

use std::ops::Deref;
use std::sync::Arc;

use super::{ModelLease, Shared};

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
