//! Unloading a model really returns its memory to the system: an embedding model (weights
//! copied into memory) and a language model (llama.cpp: weights mapped and repacked, KV
//! cache). A test binary of its own: other tests of the same process free their models
//! on the pool's blocking threads while this one measures the process's resident memory.

mod common;

use std::time::{Duration, Instant};

use minerva_pool::{Budget, KeepAlive, ModelPool, PoolConfig};
use minerva_store::{ModelId, ModelStore};
use minerva_workers::resident_bytes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_returns_the_memory() {
    for name in ["all-minilm-l6-v2", "gemma-3-270m"] {
        let config = PoolConfig {
            budget: Budget::Fixed(4 << 30),
            keep_alive: KeepAlive::Forever,
            parallel: 1,
            prefix_cache_tokens: 0,
            ..PoolConfig::new(1, 512)
        };
        let pool = ModelPool::new(ModelStore::new(common::models_dir(&["all-minilm-l6-v2"])), config);
        let id = ModelId::new(name).unwrap();
        minerva_workers::return_free_memory();
        let before = resident_bytes();
        let lease = pool.acquire(&id).await.unwrap();
        let held = lease.bytes;
        drop(lease);
        let loaded_rss = resident_bytes();
        assert!(pool.unload(&id).await);
        assert!(held > 50 << 20, "{name}: the model holds only {held} bytes");
        // The kernel may not fault in every page of the weights (the pool's figure is a
        // floor of what the model can touch): unloading must give back what loading
        // actually took, and that must be most of a real model.
        let grew = loaded_rss.saturating_sub(before);
        assert!(grew >= 50 << 20, "{name}: loading grew RSS by only {grew} bytes");
        // The model's last reference may be the ended lease's, which the pool drops on a
        // blocking thread of its own, just after the unload answered.
        let returned = || loaded_rss.saturating_sub(resident_bytes());
        let deadline = Instant::now() + Duration::from_secs(10);
        while returned() < grew.min(held) * 8 / 10 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "{name}: RSS before load {before}, loaded {loaded_rss}, after unload {} (model {held})",
            resident_bytes()
        );
        assert!(
            returned() >= grew.min(held) * 8 / 10,
            "{name}: unloading returned {} of the {grew} bytes loading took (model {held})",
            returned()
        );
    }
}
