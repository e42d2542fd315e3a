//! The threads that run loaded models.
//!
//! - [`LlmWorker`]: the thread that owns a language model's session and batches its
//!   generations (continuous batching, prefix KV cache, speculative decoding by prompt
//!   lookup; `scheduler.rs`, `prefix_cache.rs`, `draft.rs`).
//! - [`embedding`]: the embedding pipeline (batching worker, memory strategies, cache).
//! - [`pressure`] and [`memory`]: the system memory the workers and the pool adapt to
//!   (meminfo, cgroups) and the process's own resident memory.
//!
//! A worker owns its model; callers talk to it through channels. This crate never
//! decides which models are loaded (the pool's job), never speaks HTTP and never
//! implements a forward pass (the engine's).

mod draft;
mod draft_model;
pub mod embedding;
mod llm_worker;
pub mod memory;
mod prefix_cache;
pub mod pressure;
mod scheduler;
mod worker_thread;

pub use llm_worker::{GenerationEvent, LlmWorker, LlmWorkerConfig};
pub use memory::{resident_bytes, return_free_memory};
pub use scheduler::SchedulerStats;

/// Entry points for `fuzz/` (cargo fuzz): internal structures driven by arbitrary input,
/// checking their invariants. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::prefix_cache::fuzz_operations as prefix_cache;
}
