//! The pool's usage records (accesses and load times), written to the registry by a
//! thread of their own so that SQLite never runs on the async runtime.
//!
//! The writer takes everything that arrived while it wrote the last batch and commits it
//! in one transaction: under a flood of cache-hit requests it makes one commit per batch
//! instead of one per request, so the registry costs little CPU beside the models.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use minerva_store::ModelId;
use minerva_store::{AccessKind, Registry, UnixMillis};

/// Most records in one transaction.
const MAX_BATCH: usize = 4096;

/// What the pool tells the registry.
pub(super) enum UsageRecord {
    Access(ModelId, AccessKind, UnixMillis),
    Load(ModelId, u64),
}

/// Starts the writer; it ends when the returned sender (and its clones) are dropped.
pub(super) fn spawn_writer(registry: Arc<Registry>) -> Option<Sender<UsageRecord>> {
    let (sender, records) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("registry-usage".into())
        .spawn(move || write_all(&registry, &records));
    match spawned {
        Ok(_) => Some(sender),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the usage recorder; usage goes unrecorded");
            None
        }
    }
}

fn write_all(registry: &Registry, records: &Receiver<UsageRecord>) {
    let mut accesses = Vec::new();
    while let Ok(first) = records.recv() {
        let mut next = Some(first);
        while let Some(record) = next.take() {
            match record {
                UsageRecord::Access(id, kind, at) => accesses.push((id, kind, at)),
                UsageRecord::Load(id, ms) => {
                    if let Err(e) = registry.record_load(&id, ms) {
                        tracing::warn!(error = %e, "cannot record a model load");
                    }
                }
            }
            if accesses.len() < MAX_BATCH {
                next = records.try_recv().ok();
            }
        }
        if let Err(e) = registry.record_accesses(&accesses) {
            tracing::warn!(error = %e, records = accesses.len(), "cannot record model usage");
        }
        accesses.clear();
    }
}
