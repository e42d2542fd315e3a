//! `POST /v1/explain` on the real models: occlusion ranks the word a completion rests on
//! high ("France" for " Paris") and a distractor sentence's words in the lower half, and
//! the completion's own log-probabilities come back; bad requests get a 400 naming the
//! field.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn ranked(explanation: &Value) -> Vec<String> {
    let mut units: Vec<(i64, String)> = explanation["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["rank"].as_i64().unwrap(),
                u["text"].as_str().unwrap().trim().to_owned(),
            )
        })
        .collect();
    units.sort();
    units.into_iter().map(|(_, t)| t).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occlusion_ranks_the_word_an_answer_rests_on_high_and_a_distractor_low() {
    let server = TestServer::start(minerva_server::ServerConfig::default()).await;
    for model in [CHAT, BASE] {
        let explanation = server
            .ok(
                "/v1/explain",
                &json!({ "model": model, "prompt": "The capital of France is", "completion": " Paris" }),
            )
            .await;
        let order = ranked(&explanation);
        eprintln!("{model}: {order:?} {}", explanation["prompt"]);
        // Models this small also lean hard on the grammar: removing "is" or "of" leaves
        // " Paris" unlikely too. The country is among the three words " Paris" rests on.
        let france = order.iter().position(|w| w == "France").unwrap();
        assert!(france < 3, "{model}: {explanation}");
        let tokens = explanation["completion"]["tokens"].as_array().unwrap();
        assert!(!tokens.is_empty());
        let sum: f64 = tokens.iter().map(|t| t["logprob"].as_f64().unwrap()).sum();
        assert!((sum - explanation["completion"]["logprob"].as_f64().unwrap()).abs() < 1e-3);
        assert!(sum < 0.0);

        let distracted = server
            .ok(
                "/v1/explain",
                &json!({ "model": model, "prompt": "My dog likes to sleep. The capital of France is", "completion": " Paris" }),
            )
            .await;
        let order = ranked(&distracted);
        eprintln!("{model}: {order:?}");
        let n = order.len();
        let france = order.iter().position(|w| w == "France").unwrap();
        for word in ["dog", "likes", "sleep"] {
            let at = order.iter().position(|w| w == word).unwrap();
            assert!(
                at >= n / 2 && at > france,
                "{model}: {word} ranks {at} of {n}: {order:?}"
            );
        }
    }

    // Without a completion, the greedy one is explained; per token works too.
    let generated = server
        .ok(
            "/v1/explain",
            &json!({ "model": CHAT, "prompt": "1, 2, 3, 4,", "max_tokens": 3, "granularity": "token" }),
        )
        .await;
    assert_eq!(generated["granularity"], "token");
    assert_eq!(generated["completion"]["tokens"].as_array().unwrap().len(), 3);
    assert!(generated["prompt"].as_array().unwrap().len() >= 8);

    for (body, param) in [
        (json!({ "model": CHAT, "prompt": "Hi", "completion": "" }), "completion"),
        (
            json!({ "model": CHAT, "prompt": "Hi", "max_tokens": 1000 }),
            "max_tokens",
        ),
        (json!({ "model": CHAT, "prompt": "" }), "prompt"),
    ] {
        expect_error(
            server.post("/v1/explain", &body).await,
            StatusCode::BAD_REQUEST,
            Some(param),
        )
        .await;
    }
    expect_error(
        server
            .post("/v1/explain", &json!({ "model": "all-minilm-l6-v2", "prompt": "Hi" }))
            .await,
        StatusCode::BAD_REQUEST,
        Some("model"),
    )
    .await;
}
