//! The embedding cache's Redis level against a real redis-server: vectors written through
//! one server's cache are read bit-identical through another's, with the cache's
//! time-to-live; a Redis that is down answers misses and counts errors without failing
//! anything, and a Redis that comes back is used again.

mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use minerva_engine::embed::{EmbeddingDtype, Pooling};
use minerva_shared::{RedisLevel, RedisLevelConfig};
use minerva_workers::embedding::shared::SharedLevel;
use minerva_workers::embedding::{CacheConfig, CacheKey, Cached, EmbeddingCache, EmbeddingInput, KeyContext};
use redis_server::RedisServer;

const FINGERPRINT: [u8; 32] = [3; 32];

fn key(text: &str) -> CacheKey {
    let context = KeyContext {
        fingerprint: &FINGERPRINT,
        pooling: Pooling::Mean,
        normalize: true,
        forbid_truncation: false,
        max_tokens: 256,
        dtype: EmbeddingDtype::F32,
    };
    CacheKey::new(&context, &EmbeddingInput::Text(text.to_owned()))
}

fn vector(seed: f32) -> Cached {
    Cached {
        vector: (0..384).map(|i| (seed + i as f32).sin() * 1e-3).collect(),
        tokens: 9,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A server's cache: small in-process level, Redis behind it.
fn cache(url: &str, ttl: Option<Duration>) -> EmbeddingCache {
    let level = RedisLevel::new(url, RedisLevelConfig::default()).unwrap();
    EmbeddingCache::new(CacheConfig {
        max_bytes: 1 << 20,
        ttl,
        file: None,
        key: None,
    })
    .with_shared(Arc::new(level))
}

/// Polls `done` until it holds (the level writes in the background).
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_vector_one_server_computed_is_a_hit_on_another_bit_identical_with_the_ttl() {
    let redis = RedisServer::start();
    let first = cache(&redis.url(2), Some(Duration::from_secs(600)));
    let second = cache(&redis.url(2), Some(Duration::from_secs(600)));

    assert_eq!(second.get_shared(&[key("a")]).await[0].as_ref().map(|c| c.tokens), None);
    let stored = vector(1.0);
    first.insert_computed(vec![(key("a"), stored.clone()), (key("b"), vector(2.0))]);
    eventually("the write", || first.stats().shared.unwrap().writes == 2).await;

    let found = second.get_shared(&[key("a"), key("zzz"), key("b")]).await;
    let hit = found[0].as_ref().expect("the other server's vector");
    assert_eq!(bits(&hit.vector), bits(&stored.vector));
    assert_eq!(hit.tokens, 9);
    assert!(found[1].is_none());
    assert!(found[2].is_some());
    // The hit is now in the second server's own level too.
    assert!(second.get(&key("a")).is_some());
    let stats = second.stats().shared.unwrap();
    assert_eq!((stats.hits, stats.misses, stats.errors), (2, 2, 0), "{stats:?}");
    assert!(stats.reachable);

    // Database 2, under Minerva's prefix, with the cache's time-to-live.
    assert_eq!(redis.cli(2, &["DBSIZE"]), "2");
    let name = redis.cli(2, &["--scan", "--pattern", "minerva:embedding:v1:*"]);
    let first_key = name.lines().next().unwrap();
    assert_eq!(first_key.len(), "minerva:embedding:v1:".len() + 64, "{name}");
    let ttl: u64 = redis.cli(2, &["TTL", first_key]).parse().unwrap();
    assert!((590..=600).contains(&ttl), "TTL {ttl}");
    // 4 bytes of tokens + 384 floats: stored compactly.
    assert_eq!(redis.cli(2, &["STRLEN", first_key]), (4 + 384 * 4).to_string());
    assert_eq!(redis.cli(0, &["DBSIZE"]), "0", "other databases untouched");

    // Without a TTL the keys do not expire.
    let forever = cache(&redis.url(3), None);
    forever.insert_computed(vec![(key("c"), vector(3.0))]);
    eventually("the write", || forever.stats().shared.unwrap().writes == 1).await;
    let name = redis.cli(3, &["--scan"]);
    assert_eq!(redis.cli(3, &["TTL", name.trim()]), "-1");
}

#[tokio::test]
async fn redis_down_answers_misses_counts_errors_and_comes_back() {
    let mut redis = RedisServer::start();
    let level = RedisLevel::new(
        &redis.url(0),
        RedisLevelConfig {
            timeout: Duration::from_millis(250),
            retry_after: Duration::from_millis(200),
        },
    )
    .unwrap();
    level.put(vec![(key("a"), vector(1.0))], None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while level.stats().writes == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(level.get(&[key("a")]).await[0].is_some());

    redis.stop();
    let started = Instant::now();
    let found = level.get(&[key("a"), key("b")]).await;
    assert!(found.iter().all(Option::is_none), "misses while Redis is down");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the timeout: {:?}",
        started.elapsed()
    );
    let stats = level.stats();
    assert!(stats.errors >= 1 && !stats.reachable, "{stats:?}");
    // Within the quiet period Redis is not even tried: no wait, no new error.
    let errors = stats.errors;
    let started = Instant::now();
    assert!(level.get(&[key("a")]).await[0].is_none());
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(level.stats().errors, errors);
    level.put(vec![(key("c"), vector(3.0))], None);

    // Back (empty: it kept nothing): the level reconnects and serves again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        level.put(vec![(key("d"), vector(4.0))], None);
        if level.get(&[key("d")]).await[0].is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the level did not come back: {:?}",
            level.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(level.stats().reachable);
}

#[test]
fn an_address_that_is_not_redis_is_a_clear_error_without_its_password() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let err = RedisLevel::new("http://user:secret@host:6379", RedisLevelConfig::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("redis://"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}
