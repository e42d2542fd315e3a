//! The embedding pipeline on the real all-MiniLM-L6-v2: vectors independent of batch
//! mates and of the cache, and the streaming strategy under simulated memory pressure.

use std::path::PathBuf;
use std::sync::Arc;

use minerva_engine::embed::{EmbedOptions, cosine_similarity as cosine};
use minerva_workers::embedding::{
    CacheConfig, EmbedSettings, EmbeddingCache, EmbeddingInput, EmbeddingService, EmbeddingServiceConfig, Strategy,
};
use minerva_workers::pressure::{MemorySource, SystemMemory};

fn model_dir() -> PathBuf {
    let home = std::env::var_os("MINERVA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".local/share/minerva"));
    let dir = home.join("models/all-minilm-l6-v2");
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/fetch-models.sh",
        dir.display()
    );
    dir
}

/// A machine whose memory is `percent` % used.
struct Used(u64);

impl MemorySource for Used {
    fn read(&self) -> std::io::Result<SystemMemory> {
        Ok(SystemMemory {
            total: 100 << 30,
            available: (100 - self.0) << 30,
        })
    }
}

fn service(memory_used: u64) -> EmbeddingService {
    let config = EmbeddingServiceConfig {
        memory: Arc::new(Used(memory_used)),
        ..EmbeddingServiceConfig::default()
    };
    EmbeddingService::load(&model_dir(), "test", config, None).unwrap()
}

const SETTINGS: EmbedSettings = EmbedSettings {
    normalize: true,
    forbid_truncation: false,
};

/// Sentences from 1 to ~200 words.
fn mixed_texts(n: usize) -> Vec<String> {
    let words = "the quick brown fox jumps over the lazy dog while a careful engineer measures every batch";
    let words: Vec<&str> = words.split(' ').collect();
    (0..n)
        .map(|i| {
            let len = 1 + (i * 37) % 200;
            (0..len)
                .map(|j| words[(i + j) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn texts(inputs: &[String]) -> Vec<EmbeddingInput> {
    inputs.iter().cloned().map(EmbeddingInput::Text).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The forward pass is padding-free and attention stays within each sequence, but the
/// matrix products may split a larger batch's rows into other blocks and threads, so a
/// vector in a batch may differ from its lone self in the last bits: we require cosine
/// ≥ 0.99999, far inside the 0.9999 fidelity to sentence-transformers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_does_not_depend_on_its_batch_mates() {
    let service = service(10);
    let mixed = mixed_texts(24);
    let together = service.embed(texts(&mixed), SETTINGS, None).await.unwrap();
    assert!(
        service.stats().batches < 24,
        "the request was batched: {:?}",
        service.stats()
    );
    for (i, text) in mixed.iter().enumerate() {
        let alone = service
            .embed(vec![EmbeddingInput::Text(text.clone())], SETTINGS, None)
            .await
            .unwrap();
        let c = cosine(&alone.vectors[0], &together.vectors[i]);
        assert!(c >= 0.99999, "input {i}: cosine {c}");
        assert_eq!(alone.tokens[0], together.tokens[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_vector_is_bit_identical_to_a_fresh_one() {
    let service = service(10);
    let cache = EmbeddingCache::new(CacheConfig::default());
    let inputs = texts(&mixed_texts(6));
    let fresh = service.embed(inputs.clone(), SETTINGS, None).await.unwrap();
    let first = service.embed(inputs.clone(), SETTINGS, Some(&cache)).await.unwrap();
    let again = service.embed(inputs, SETTINGS, Some(&cache)).await.unwrap();
    assert_eq!((first.cached, again.cached), (0, 6));
    for i in 0..6 {
        assert_eq!(bits(&again.vectors[i]), bits(&fresh.vectors[i]), "input {i}");
        assert_eq!(again.tokens[i], fresh.tokens[i]);
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (6, 6, 6));
    // Options are part of the key: unnormalized vectors are not served from the normalized ones.
    let raw = EmbedSettings {
        normalize: false,
        ..SETTINGS
    };
    let unnormalized = service
        .embed(vec![EmbeddingInput::Text(mixed_texts(1)[0].clone())], raw, Some(&cache))
        .await
        .unwrap();
    assert_eq!(unnormalized.cached, 0);
    let norm: f32 = unnormalized.vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "norm {norm}");
}

/// Under critical memory pressure every forward pass holds one input, so a request far
/// larger than one batch allows still completes, input by input, with the same vectors
/// the engine computes for each input alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streaming_strategy_embeds_a_list_larger_than_one_batch_allows() {
    let service = service(90);
    let inputs = mixed_texts(40);
    let streamed = service.embed(texts(&inputs), SETTINGS, None).await.unwrap();
    let stats = service.stats();
    assert_eq!(stats.strategy, Some(Strategy::Streaming));
    let limits = Strategy::Streaming.limits(256);
    let total: u32 = streamed.tokens.iter().sum();
    assert!(
        total as usize > limits.max_tokens,
        "the request exceeds one streaming batch"
    );
    assert_eq!(stats.batches, 40, "{stats:?}");
    let engine = minerva_engine::embed::load(&model_dir()).unwrap();
    for (i, text) in inputs.iter().enumerate() {
        let alone = engine.embed(&[text], EmbedOptions::default()).unwrap();
        assert_eq!(bits(&streamed.vectors[i]), bits(&alone[0]), "input {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_input_fails_its_request_only() {
    let service = service(10);
    let long = "word ".repeat(400);
    let strict = EmbedSettings {
        forbid_truncation: true,
        ..SETTINGS
    };
    let (bad, good) = tokio::join!(
        service.embed(
            vec![EmbeddingInput::Text("fine".into()), EmbeddingInput::Text(long)],
            strict,
            None
        ),
        service.embed(vec![EmbeddingInput::Text("also fine".into())], SETTINGS, None),
    );
    let err = bad.unwrap_err().to_string();
    assert!(err.contains("input 1") && err.contains("256"), "{err}");
    assert_eq!(good.unwrap().vectors[0].len(), 384);
}
