//! An A/B experiment from the configuration file, end to end: a 70/30 split over 1,000
//! users lands within ±5 points, every user stays on one variant, feedback counts for the
//! variant that answered, and promote and rollback take effect at once, without a restart.

mod common;

use std::collections::HashMap;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn served_by(server: &TestServer, user: &str) -> (String, String) {
    let body = json!({ "model": "ab", "prompt": "Hi", "max_tokens": 1, "user": user });
    let reply = server.ok("/v1/completions", &body).await;
    (
        reply["model"].as_str().unwrap().to_owned(),
        reply["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_is_sticky_per_user_and_promote_and_rollback_act_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("minerva.toml");
    std::fs::write(
        &config,
        format!(
            "[experiments.ab]\nvariants = [\n  {{ model = \"{CHAT}\", weight = 70 }},\n  {{ model = \"{BASE}\", weight = 30 }},\n]\n"
        ),
    )
    .unwrap();
    let server = start_with_routes(config).await;

    let mut assigned: HashMap<String, String> = HashMap::new();
    let mut last_id = HashMap::new();
    for i in 0..1000 {
        let user = format!("user-{i}");
        let (model, id) = served_by(&server, &user).await;
        last_id.insert(model.clone(), id);
        assigned.insert(user, model);
    }
    let chat_share = assigned.values().filter(|m| *m == CHAT).count() as f64 / 1000.0;
    assert!((chat_share - 0.7).abs() <= 0.05, "{chat_share}");
    for i in (0..1000).step_by(50) {
        let user = format!("user-{i}");
        assert_eq!(served_by(&server, &user).await.0, assigned[&user], "{user} moved");
    }
    // The header names the experiment and the variant; a header may name the user too.
    let response = server
        .client
        .post(server.url("/v1/completions"))
        .header("x-minerva-user", "user-1")
        .json(&json!({ "model": "ab", "prompt": "Hi", "max_tokens": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-minerva-route"].to_str().unwrap(),
        format!("ab; variant={}", assigned["user-1"])
    );

    // Feedback for one answer of each variant.
    for (model, score) in [(CHAT, 1.0), (BASE, 0.0)] {
        let recorded = server
            .ok("/v1/feedback", &json!({ "id": last_id[model], "score": score }))
            .await;
        assert_eq!(recorded["experiment"], "ab");
    }
    expect_error(
        server
            .post("/v1/feedback", &json!({ "id": "chatcmpl-nope", "score": 1 }))
            .await,
        StatusCode::BAD_REQUEST,
        Some("id"),
    )
    .await;
    let status = server.ok_get("/v1/experiments/ab").await;
    let variants = status["variants"].as_array().unwrap();
    assert_eq!(variants[0]["variant"], CHAT);
    assert_eq!(variants[0]["feedback"]["mean"], 1.0);
    assert_eq!(variants[1]["feedback"]["mean"], 0.0);
    let requests: u64 = variants.iter().map(|v| v["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 1021);
    assert!(variants[1]["latency_vs_first"]["ci95"].is_array(), "{status}");

    // Promote: everyone to the base model at once; rollback: the old split again.
    server
        .ok("/v1/experiments/ab/promote", &json!({ "variant": BASE }))
        .await;
    for i in (0..1000).step_by(100) {
        assert_eq!(served_by(&server, &format!("user-{i}")).await.0, BASE);
    }
    server.ok("/v1/experiments/ab/rollback", &json!({})).await;
    for i in (0..1000).step_by(100) {
        let user = format!("user-{i}");
        assert_eq!(served_by(&server, &user).await.0, assigned[&user]);
    }
    expect_error(
        server
            .post("/v1/experiments/ab/promote", &json!({ "variant": "nope" }))
            .await,
        StatusCode::BAD_REQUEST,
        Some("variant"),
    )
    .await;

    // A streamed answer: its time to first token, tokens/s and id count for its variant.
    let before = server.ok_get("/v1/experiments/ab").await;
    let variant = assigned["user-2"].clone();
    let position = usize::from(variant == BASE);
    let stream =
        json!({ "model": "ab", "prompt": "Once upon a time", "max_tokens": 6, "user": "user-2", "stream": true });
    let chunks = read_sse(server.post("/v1/completions", &stream).await).await;
    let id = chunks[0]["id"].as_str().unwrap().to_owned();
    assert!(!completion_stream_text(&chunks).is_empty());
    let after = server.ok_get("/v1/experiments/ab").await;
    let (was, now) = (&before["variants"][position], &after["variants"][position]);
    assert_eq!(was["ttft_seconds"]["n"], 0, "whole answers have no time to first token");
    assert_eq!(now["ttft_seconds"]["n"], 1, "{after}");
    let ttft = now["ttft_seconds"]["mean"].as_f64().unwrap();
    let latency_n = now["latency_seconds"]["n"].as_u64().unwrap();
    assert_eq!(latency_n, was["latency_seconds"]["n"].as_u64().unwrap() + 1);
    assert!(ttft > 0.0 && ttft <= now["latency_seconds"]["mean"].as_f64().unwrap() * latency_n as f64);
    assert_eq!(
        now["tokens_per_second"]["n"].as_u64().unwrap(),
        was["tokens_per_second"]["n"].as_u64().unwrap() + 1
    );
    assert!(now["tokens_per_second"]["mean"].as_f64().unwrap() > 0.0);
    let recorded = server.ok("/v1/feedback", &json!({ "id": id, "score": 0.5 })).await;
    assert_eq!(recorded["variant"], variant.as_str(), "{recorded}");

    let listed = server.ok_get("/v1/experiments").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    let _: Value = listed;
}
