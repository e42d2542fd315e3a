//! The embedding pipeline through the real server: concurrent requests merged into
//! batches, the content cache (hits bit-identical, counted, kept across a restart).

mod common;

use common::{EMBED, TestServer, bits, models_dir, pool, vectors};
use minerva_engine::embed::cosine_similarity as cosine;
use minerva_server::ServerConfig;
use minerva_workers::embedding::CacheConfig;
use serde_json::{Value, json};

fn config(cache: CacheConfig) -> ServerConfig {
    ServerConfig {
        max_concurrent_requests: 16,
        embedding_cache: cache,
        ..ServerConfig::default()
    }
}

const NO_CACHE: CacheConfig = CacheConfig {
    max_bytes: 0,
    ttl: None,
    file: None,
    key: None,
};

async fn stats(server: &TestServer) -> Value {
    server.ok_get("/v1/embeddings/stats").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_merged_into_shared_batches_and_get_their_own_vectors() {
    let server = TestServer::start_with(config(NO_CACHE), pool(), models_dir()).await;
    let pairs: Vec<[String; 2]> = (0..7)
        .map(|i| {
            [
                format!("request {i} asks about the weather"),
                format!("and {i} more questions"),
            ]
        })
        .collect();
    // Each text alone first: the reference vectors.
    let mut alone = Vec::new();
    for pair in &pairs {
        for text in pair {
            let body = server
                .ok("/v1/embeddings", &json!({ "model": EMBED, "input": text }))
                .await;
            alone.push(vectors(&body).remove(0));
        }
    }
    let before = stats(&server).await["models"][EMBED].clone();
    // A long request keeps the worker busy while the short ones queue up behind it.
    let long: Vec<String> = (0..48)
        .map(|i| format!("{i} {}", "a long sentence about many things ".repeat(30)))
        .collect();
    let long_body = json!({ "model": EMBED, "input": long });
    let short_bodies: Vec<Value> = pairs
        .iter()
        .map(|pair| json!({ "model": EMBED, "input": pair }))
        .collect();
    let long_request = server.ok("/v1/embeddings", &long_body);
    let short_requests =
        futures_util::future::join_all(short_bodies.iter().map(|body| server.ok("/v1/embeddings", body)));
    let (long_body, short_bodies) = tokio::join!(long_request, short_requests);
    assert_eq!(vectors(&long_body).len(), 48);
    for (i, body) in short_bodies.iter().enumerate() {
        let got = vectors(body);
        assert_eq!(got.len(), 2);
        for (j, vector) in got.iter().enumerate() {
            let c = cosine(vector, &alone[2 * i + j]);
            assert!(c >= 0.99999, "request {i} input {j}: cosine {c}");
        }
        assert_eq!(body["data"][1]["index"], 1);
    }
    let after = stats(&server).await["models"][EMBED].clone();
    let delta = |field: &str| after[field].as_u64().unwrap() - before[field].as_u64().unwrap();
    assert!(delta("merged_batches") >= 1, "no batch served two requests: {after}");
    assert!(delta("batches") < 8 + 48, "{after}");
    assert_eq!(delta("requests"), 8);
    assert_eq!(delta("inputs"), 48 + 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_is_bit_identical_and_counted_in_stats_and_metrics() {
    let server = TestServer::start_with(config(CacheConfig::default()), pool(), models_dir()).await;
    let request = json!({ "model": EMBED, "input": ["cached text", "another cached text"] });
    let fresh = server.ok("/v1/embeddings", &request).await;
    let hit = server.ok("/v1/embeddings", &request).await;
    for (a, b) in vectors(&fresh).iter().zip(&vectors(&hit)) {
        assert_eq!(bits(a), bits(b));
    }
    assert_eq!(fresh["usage"], hit["usage"], "hits report the same token usage");
    let cache = &stats(&server).await["cache"];
    assert_eq!(cache["hits"], 2, "{cache}");
    assert_eq!(cache["misses"], 2, "{cache}");
    assert_eq!(cache["entries"], 2, "{cache}");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("minerva_embedding_cache_hits_total") && l.ends_with(" 2")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_file_keeps_vectors_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheConfig {
        file: Some(dir.path().join("embeddings.cache")),
        ..CacheConfig::default()
    };
    let request = json!({ "model": EMBED, "input": "remember me across restarts" });
    let mut first = TestServer::start_with(config(cache.clone()), pool(), models_dir()).await;
    let computed = server_vectors(&first, &request).await;
    first.trigger_shutdown();
    first.stopped().await.unwrap();

    let second = TestServer::start_with(config(cache), pool(), models_dir()).await;
    let reloaded = server_vectors(&second, &request).await;
    assert_eq!(bits(&computed), bits(&reloaded));
    let stats = stats(&second).await;
    assert_eq!(stats["cache"]["hits"], 1, "{stats}");
    assert_eq!(
        stats["models"][EMBED]["batches"], 0,
        "served from the file, not the model: {stats}"
    );
}

async fn server_vectors(server: &TestServer, request: &Value) -> Vec<f32> {
    vectors(&server.ok("/v1/embeddings", request).await).remove(0)
}

/// `long_input: "chunk"` embeds a text longer than the model reads as overlapping windows
/// and returns their token-weighted mean (normalized, as the model normalizes), counting
/// every window's tokens; `truncate: false` alone refuses the text with its token count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_inputs_are_chunked_and_averaged_or_refused_with_their_count() {
    let server = TestServer::start(config(NO_CACHE)).await;
    let long = "Local inference keeps latency predictable: there is no network round trip, no queue on a \
                shared cluster, and no surprise bill at the end of the month. "
        .repeat(20);
    let engine = minerva_engine::embed::load(&models_dir().join(EMBED)).unwrap();
    let windows = engine.tokenizer().windows(&long).unwrap();
    assert!(windows.len() >= 3, "{} windows", windows.len());
    let raw = engine.embed_tokens(&windows, false).unwrap();
    let total: usize = windows.iter().map(Vec::len).sum();
    let mut expected = vec![0f32; 384];
    for (w, v) in windows.iter().zip(&raw) {
        for (e, x) in expected.iter_mut().zip(v) {
            *e += x * w.len() as f32 / total as f32;
        }
    }
    minerva_engine::embed::l2_normalize(&mut expected);

    let body = server
        .ok(
            "/v1/embeddings",
            &json!({"model": EMBED, "input": [long.clone(), "short"], "long_input": "chunk"}),
        )
        .await;
    let got = vectors(&body);
    let c = cosine(&got[0], &expected);
    assert!(c >= 0.99999, "chunked vector: cosine {c} to the windows' weighted mean");
    let norm: f32 = got[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    let short = server
        .ok("/v1/embeddings", &json!({"model": EMBED, "input": "short"}))
        .await;
    assert!(
        cosine(&got[1], &vectors(&short)[0]) >= 0.99999,
        "a short input is its one window"
    );
    let short_tokens = short["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        body["usage"]["prompt_tokens"].as_u64().unwrap(),
        total as u64 + short_tokens
    );

    let truncated = server
        .ok("/v1/embeddings", &json!({"model": EMBED, "input": long.clone()}))
        .await;
    assert!(
        cosine(&vectors(&truncated)[0], &got[0]) < 0.9999,
        "truncation reads only the first window"
    );

    let refused = server
        .post(
            "/v1/embeddings",
            &json!({"model": EMBED, "input": long.clone(), "truncate": false}),
        )
        .await;
    let error = common::expect_error(refused, reqwest::StatusCode::BAD_REQUEST, None).await;
    assert!(error["message"].as_str().unwrap().contains("tokens"), "{error}");
    let contradiction = server
        .post(
            "/v1/embeddings",
            &json!({"model": EMBED, "input": "x", "truncate": false, "long_input": "truncate"}),
        )
        .await;
    common::expect_error(contradiction, reqwest::StatusCode::BAD_REQUEST, Some("long_input")).await;
}
