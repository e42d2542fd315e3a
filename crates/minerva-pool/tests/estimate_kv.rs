//! A quantized KV cache (`--kv-type q8_0`) is what the session really gets, and the
//! estimate follows it: SmolLM2 with the serving defaults and a q8_0 cache takes about
//! half the KV memory of f16, and the estimate of that is within 10 % of the resident
//! memory the model takes once it has served a request. (A session that kept f16 would
//! measure some 90 MiB more and fail.) A process of its own: RSS is per process.

mod common;

use minerva_engine::KvType;
use minerva_engine::generate::GenerateOptions;
use minerva_engine::sampling::SamplingParams;
use minerva_pool::estimate::estimate;
use minerva_pool::{Budget, KeepAlive, ModelPool, PoolConfig};
use minerva_store::{ModelId, ModelStore};
use minerva_workers::{GenerationEvent, resident_bytes};

const MODEL: &str = "smollm2-135m-instruct";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_q8_0_kv_cache_halves_the_kv_and_the_estimate_follows_it() {
    let store = ModelStore::new(common::models_dir(&[MODEL]));
    let config = |kv_type| PoolConfig {
        budget: Budget::Fixed(u64::MAX / 2),
        keep_alive: KeepAlive::Forever,
        kv_type,
        ..PoolConfig::new(minerva_engine::compute::default_threads(), 4096)
    };
    let id = ModelId::new(MODEL).unwrap();
    let entry = store.resolve(&id).unwrap();
    let f16 = estimate(&entry, config(KvType::F16).session_shape()).unwrap();
    let q8 = estimate(&entry, config(KvType::Q8_0).session_shape()).unwrap();
    assert_eq!(
        q8.kv_cache,
        f16.kv_cache * 34 / 64,
        "q8_0 blocks: 34 bytes per 32 values"
    );
    assert_eq!(q8.weights, f16.weights);

    let pool = ModelPool::new(store, config(KvType::Q8_0));
    let before = resident_bytes();
    let llm = pool
        .acquire(&id)
        .await
        .unwrap()
        .into_llm()
        .ok()
        .expect("a language model");
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(60);
    let prompt = llm.model().tokenize(&text, true, false).unwrap();
    let options = GenerateOptions {
        max_tokens: 4,
        constraint: None,
        context_shift: None,
        n_ctx: None,
        stop: vec![],
        sampling: SamplingParams::default(),
    };
    let mut events = llm.submit(prompt, options);
    let generation = loop {
        if let GenerationEvent::Done(result) = events.recv().await.expect("the worker answers") {
            break result.expect("a q8_0 session generates");
        }
    };
    assert_eq!(generation.tokens.len(), 4);
    let measured = resident_bytes().saturating_sub(before);
    let ratio = q8.total() as f64 / measured as f64;
    eprintln!(
        "{MODEL} with a q8_0 KV cache: estimated {} bytes (kv {}; f16 kv {}), measured {measured}, ratio {ratio:.3}",
        q8.total(),
        q8.kv_cache,
        f16.kv_cache
    );
    assert!((ratio - 1.0).abs() <= 0.10, "estimate/measured {ratio:.3}");
}
