//! `/v1/rerank` end to end: a cross-encoder made from the MiniLM weights with the seeded
//! head of `minerva-engine/tests/fixtures/embeddings/variants.json` scores and orders
//! documents as sentence-transformers' `CrossEncoder` does; the request shapes of TEI,
//! Jina and Cohere are accepted; wrong models and bad requests get clear 400s.

mod common;

use common::{EMBED, TestServer, expect_error, json_of, models_dir, pool};
use minerva_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::json;

#[path = "../../minerva-engine/tests/common/variants.rs"]
mod variants;

/// A models directory holding the cross-encoder (as `reranker`) and MiniLM.
fn models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let minilm = models_dir().join(EMBED);
    variants::cross_encoder(&minilm, &variants::fixture(), &dir.path().join("reranker"));
    variants::pooling_variant(
        &minilm,
        &json!({
            "modules": serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(minilm.join("modules.json")).unwrap()).unwrap(),
            "pooling": serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(minilm.join("1_Pooling/config.json")).unwrap()).unwrap(),
        }),
        &dir.path().join(EMBED),
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_orders_documents_as_sentence_transformers_and_honours_top_n_and_return_documents() {
    let dir = models();
    let server = TestServer::start_with(ServerConfig::default(), pool(), dir.path().to_owned()).await;
    let fixture = variants::fixture();
    for (n, set) in fixture["cross_encoder"]["sets"].as_array().unwrap().iter().enumerate() {
        let want = variants::floats(&set["scores"]);
        let documents = set["documents"].clone();
        let body = server
            .ok(
                "/v1/rerank",
                &json!({"model": "reranker", "query": set["query"], "documents": documents}),
            )
            .await;
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), want.len(), "set {n}");
        let mut expected: Vec<usize> = (0..want.len()).collect();
        expected.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
        let order: Vec<usize> = results.iter().map(|r| r["index"].as_u64().unwrap() as usize).collect();
        assert_eq!(
            order, expected,
            "set {n}: best first, as sentence-transformers ranks them"
        );
        for r in results {
            let i = r["index"].as_u64().unwrap() as usize;
            let got = r["relevance_score"].as_f64().unwrap() as f32;
            assert!(
                (got - want[i]).abs() <= 1e-5,
                "set {n}, document {i}: {got} vs {}",
                want[i]
            );
            assert!(r.get("document").is_none(), "documents only when asked for");
        }
    }

    // top_n, return_documents, raw_scores, Cohere's {"text"} documents, TEI's path.
    let set = &fixture["cross_encoder"]["sets"][0];
    let documents: Vec<serde_json::Value> = set["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| json!({"text": d}))
        .collect();
    let body = server
        .ok(
            "/rerank",
            &json!({"model": "reranker", "query": set["query"], "documents": documents, "top_n": 2,
                    "return_documents": true, "raw_scores": true}),
        )
        .await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let logits = variants::floats(&set["logits"]);
    for r in results {
        let i = r["index"].as_u64().unwrap() as usize;
        assert_eq!(r["document"]["text"], set["documents"][i]);
        assert!((r["relevance_score"].as_f64().unwrap() as f32 - logits[i]).abs() <= 1e-5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_kind_of_model_and_bad_requests_get_clear_errors() {
    let dir = models();
    let server = TestServer::start_with(ServerConfig::default(), pool(), dir.path().to_owned()).await;
    let error = expect_error(
        server
            .post("/v1/rerank", &json!({"model": EMBED, "query": "q", "documents": ["d"]}))
            .await,
        StatusCode::BAD_REQUEST,
        Some("model"),
    )
    .await;
    assert!(error["message"].as_str().unwrap().contains("not a reranker"), "{error}");
    let error = expect_error(
        server
            .post("/v1/embeddings", &json!({"model": "reranker", "input": "a text"}))
            .await,
        StatusCode::BAD_REQUEST,
        Some("model"),
    )
    .await;
    assert!(error["message"].as_str().unwrap().contains("/v1/rerank"), "{error}");
    for (body, param) in [
        (json!({"model": "reranker", "query": "q", "documents": []}), "documents"),
        (json!({"model": "reranker", "query": "", "documents": ["d"]}), "query"),
        (
            json!({"model": "reranker", "query": "q", "documents": ["d"], "top_n": 0}),
            "top_n",
        ),
    ] {
        expect_error(
            server.post("/v1/rerank", &body).await,
            StatusCode::BAD_REQUEST,
            Some(param),
        )
        .await;
    }
    expect_error(
        server
            .post(
                "/v1/rerank",
                &json!({"model": "no-such-model", "query": "q", "documents": ["d"]}),
            )
            .await,
        StatusCode::NOT_FOUND,
        None,
    )
    .await;
    // The server still serves.
    let body = json_of(
        server
            .post(
                "/v1/rerank",
                &json!({"model": "reranker", "query": "q", "documents": ["d", "e"]}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
}
