//! Many models under one memory budget.
//!
//! - [`ModelPool`]: loads models on first use (single-flight) under a byte budget, evicts
//!   idle ones by [`EvictionPolicy`], hands out [`Lease`]s that keep a model in memory,
//!   unloads idle models when their [`KeepAlive`] runs out or memory runs short. One task
//!   owns its state; a [`Loader`] does the loading ([`ModelLoader`] for the models
//!   directory, fakes in tests).
//! - [`estimate`]: a model's footprint from its files, before loading it.
//! - [`preload`]: the preloader that acts on the registry's usage patterns (warm start,
//!   rate-limited preloads).
//!
//! This crate decides which models are in memory; it never runs a model (the workers'
//! job), never speaks HTTP (the server's) and never implements a forward pass (the
//! engine's).

pub mod estimate;
mod keep_alive;
mod pool;
pub mod preload;

pub use keep_alive::{InvalidKeepAlive, KeepAlive};
pub use pool::{
    AcquireOptions, Budget, Displace, EmbeddingLease, EvictionPolicy, EvictionReason, Lease, LlmLease, LoadedModel,
    Loader, ModelLease, ModelLoader, ModelPool, ModelStats, PoolConfig, PoolError, PoolTotals, TypedLease,
};
