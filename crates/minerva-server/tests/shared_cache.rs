//! Two replicas behind one real redis-server (`--embedding-cache redis://…`): a vector
//! one replica computed is a hit on the other, bit-identical, and Redis going down never
//! fails an embeddings request.

mod common;
#[path = "../../minerva-shared/tests/redis_server/mod.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::{EMBED, TestServer, bits, vectors};
use minerva_server::ServerConfig;
use redis_server::RedisServer;
use serde_json::{Value, json};

/// The exact bits of the response's vectors.
fn vector_bits(body: &Value) -> Vec<Vec<u32>> {
    vectors(body).iter().map(|v| bits(v)).collect()
}

async fn shared(server: &TestServer) -> Value {
    server.ok_get("/v1/embeddings/stats").await["cache"]["shared"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_computed_by_one_replica_is_a_hit_on_the_other_and_redis_down_fails_nothing() {
    let mut redis = RedisServer::start();
    let config = ServerConfig {
        shared_embedding_cache: Some(redis.url(1)),
        ..ServerConfig::default()
    };
    let first = TestServer::start(config.clone()).await;
    let second = TestServer::start(config).await;
    let body = json!({ "model": EMBED, "input": ["the shared cache holds this", "and this"] });

    let computed = first.ok("/v1/embeddings", &body).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared(&first).await["writes"] != 2 {
        assert!(Instant::now() < deadline, "{}", shared(&first).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = shared(&first).await;
    assert_eq!(
        (stats["backend"].as_str(), stats["misses"].as_u64()),
        (Some("redis"), Some(2)),
        "{stats}"
    );

    let from_redis = second.ok("/v1/embeddings", &body).await;
    assert_eq!(vector_bits(&from_redis), vector_bits(&computed), "bit-identical");
    assert_eq!(
        from_redis["usage"], computed["usage"],
        "token counts travel with the vectors"
    );
    let stats = shared(&second).await;
    assert_eq!(
        (stats["hits"].as_u64(), stats["misses"].as_u64()),
        (Some(2), Some(0)),
        "{stats}"
    );
    assert_eq!(stats["reachable"], true);
    assert_eq!(redis.cli(1, &["DBSIZE"]), "2");

    // Redis gone: the replicas answer from their own caches and compute the rest.
    redis.stop();
    let again = second.ok("/v1/embeddings", &body).await;
    assert_eq!(vector_bits(&again), vector_bits(&computed));
    let fresh = json!({ "model": EMBED, "input": "a sentence nobody embedded before" });
    let answered = second.ok("/v1/embeddings", &fresh).await;
    assert_eq!(answered["data"][0]["embedding"].as_array().unwrap().len(), 384);
    let stats = shared(&second).await;
    assert!(stats["errors"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["reachable"], false);
    assert!(
        second
            .get("/metrics")
            .await
            .text()
            .await
            .unwrap()
            .contains("minerva_embedding_cache_shared_errors_total")
    );
}
