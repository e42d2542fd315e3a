//! The pool's footprint estimate of each default model, with `minerva serve`'s defaults,
//! against the resident memory the model really takes once it has served a request: the
//! growth of the process's RSS from before the load to after the request. The estimate is
//! what the pool reserves before a load, so it must be close to what the load costs: within
//! [`TOLERANCE`] of it, either way.
//!
//! The request is a prompt longer than one micro-batch (llama.cpp's `n_ubatch`), so that
//! a full forward pass runs and the compute buffer is touched as far as serving ever
//! touches it; it generates a few tokens after that.
//!
//! One test, the three models loaded one after another into one pool and kept: the RSS of
//! a process is shared by everything in it, so the models are measured one at a time.

mod common;

use minerva_engine::generate::GenerateOptions;
use minerva_engine::sampling::SamplingParams;
use minerva_pool::estimate::estimate;
use minerva_pool::{Budget, KeepAlive, ModelPool, PoolConfig};
use minerva_store::{ModelId, ModelStore};
use minerva_workers::embedding::{EmbedSettings, EmbeddingInput};
use minerva_workers::{GenerationEvent, resident_bytes};

/// Largest gap between the estimate and the measurement, as a fraction of the measurement.
const TOLERANCE: f64 = 0.10;

/// `minerva serve`'s default context.
const SERVE_CTX: u32 = 4096;

const MODELS: [&str; 3] = ["smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2"];

const MIB: f64 = (1 << 20) as f64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimates_of_the_default_models_are_within_ten_percent_of_their_resident_memory() {
    let store = ModelStore::new(common::models_dir(&MODELS));
    // `minerva serve`'s pool, with room for all three and nothing expiring meanwhile.
    let config = PoolConfig {
        budget: Budget::Fixed(u64::MAX / 2),
        keep_alive: KeepAlive::Forever,
        ..PoolConfig::new(minerva_engine::compute::default_threads(), SERVE_CTX)
    };
    let shape = config.session_shape();
    let pool = ModelPool::new(store.clone(), config);

    let mut failures = Vec::new();
    let mut leases = Vec::new();
    for name in MODELS {
        let id = ModelId::new(name).unwrap();
        let footprint = estimate(&store.resolve(&id).unwrap(), shape).unwrap();
        let before = resident_bytes();
        let lease = pool.acquire(&id).await.unwrap();
        let loaded = resident_bytes();
        let lease = match lease.into_llm() {
            Ok(llm) => {
                // A prompt of more than one micro-batch, then a few generated tokens.
                let text = "The quick brown fox jumps over the lazy dog. ".repeat(60);
                let prompt = llm.model().tokenize(&text, true, false).unwrap();
                assert!(prompt.len() > 512, "{name}: the prompt has {} tokens", prompt.len());
                let options = GenerateOptions {
                    max_tokens: 4,
                    constraint: None,
                    context_shift: None,
                    n_ctx: None,
                    stop: vec![],
                    sampling: SamplingParams::default(),
                };
                let mut events = llm.submit(prompt, options);
                loop {
                    match events.recv().await.expect("the worker answers") {
                        GenerationEvent::Text(_) => {}
                        GenerationEvent::Done(result) => {
                            result.unwrap();
                            break;
                        }
                    }
                }
                llm.lease().clone()
            }
            Err(lease) => {
                let embedding = lease.into_embedding().ok().expect("an embedding model");
                // Inputs at the model's maximum, more tokens than one pass holds: the
                // activation arena grows to its largest, which the estimate reserves.
                let inputs = (0..16)
                    .map(|i| {
                        EmbeddingInput::Text(format!(
                            "sentence {i}: {}",
                            "the quick brown fox jumps over the lazy dog ".repeat(40)
                        ))
                    })
                    .collect();
                let settings = EmbedSettings {
                    normalize: true,
                    forbid_truncation: false,
                };
                embedding.embed(inputs, settings, None).await.unwrap();
                embedding.lease().clone()
            }
        };
        let measured = resident_bytes().saturating_sub(before);
        let estimated = footprint.total();
        let ratio = estimated as f64 / measured as f64;
        eprintln!(
            "{name}: estimated {:.1} MiB (weights {:.1}, kv {:.1}, scratch {:.1}; prefix cache up to {:.1} apart), \
             measured {:.1} MiB ({:.1} at load), estimate/measured {ratio:.3}",
            estimated as f64 / MIB,
            footprint.weights as f64 / MIB,
            footprint.kv_cache as f64 / MIB,
            footprint.scratch as f64 / MIB,
            footprint.prefix_cache as f64 / MIB,
            measured as f64 / MIB,
            loaded.saturating_sub(before) as f64 / MIB,
        );
        if (ratio - 1.0).abs() > TOLERANCE {
            failures.push(format!(
                "{name}: estimated {estimated} bytes, measured {measured} (ratio {ratio:.3})"
            ));
        }
        leases.push(lease);
    }
    assert!(
        failures.is_empty(),
        "estimates off by more than 10 %:\n{}",
        failures.join("\n")
    );
}
