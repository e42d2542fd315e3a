//! Every way a request can be wrong gets an OpenAI-style error with a 4xx status (never a
//! 5xx), limits answer 413/400/503 as documented, and the server keeps serving after each.

mod common;

use std::time::Duration;

use common::*;
use minerva_pool::PoolConfig;
use minerva_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::json;

/// A short request that must succeed: proof the server still serves.
async fn still_serves(server: &TestServer) {
    let body = server
        .ok(
            "/v1/chat/completions",
            &chat_body("Say hi.", json!({ "max_tokens": 2, "temperature": 0 })),
        )
        .await;
    assert!((1..=2).contains(&usage(&body).1), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_are_404_model_not_found_on_every_endpoint() {
    let server = TestServer::shared();
    let requests = [
        (
            "/v1/chat/completions",
            chat_body("Hi", json!({ "model": "no-such-model" })),
        ),
        ("/v1/completions", json!({ "model": "no-such-model", "prompt": "Hi" })),
        ("/v1/embeddings", json!({ "model": "no-such-model", "input": "Hi" })),
        ("/v1/tokenize", json!({ "model": "no-such-model", "prompt": "Hi" })),
        ("/v1/detokenize", json!({ "model": "no-such-model", "tokens": [1] })),
    ];
    for (path, body) in requests {
        let error = expect_error(server.post(path, &body).await, StatusCode::NOT_FOUND, Some("model")).await;
        assert_eq!(error["code"], "model_not_found", "{path}");
        assert!(error["message"].as_str().unwrap().contains("no-such-model"), "{error}");
    }
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chat_bodies_are_400() {
    let server = TestServer::shared();
    let bodies = [
        "not json at all",
        "{\"model\": ",
        "[]",
        "{}",
        r#"{"model": "smollm2-135m-instruct"}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": null}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": "a string"}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [123]}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [{}]}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": []}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "wizard", "content": "hi"}]}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": 5}]}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
        r#"{"model": 7, "messages": [{"role": "user", "content": "hi"}]}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "n": 0}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "n": 2, "stream": true}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "stop": ["", "x"]}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "tools": []}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}"#,
        r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}"#,
        r#"{"model": "all-minilm-l6-v2", "messages": [{"role": "user", "content": "hi"}]}"#,
    ];
    for body in bodies {
        let response = server.post_raw("/v1/chat/completions", body).await;
        expect_error(response, StatusCode::BAD_REQUEST, None).await;
    }
    // Where the body names the field, the error says which one.
    let response = server.post_raw("/v1/chat/completions", bodies[9]).await;
    expect_error(response, StatusCode::BAD_REQUEST, Some("messages")).await;
    // The advice names the route to use, whole (the path redaction once cut it).
    let response = server.post_raw("/v1/chat/completions", bodies[21]).await;
    let error = expect_error(response, StatusCode::BAD_REQUEST, Some("model")).await;
    assert!(
        error["message"].as_str().unwrap().contains("use /v1/embeddings"),
        "{error}"
    );
    // A body without the JSON content type is refused as well.
    let response = server
        .client
        .post(server.url("/v1/chat/completions"))
        .body(chat_body("hi", json!({})).to_string())
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::BAD_REQUEST, None).await;
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_a_chat_template_cannot_chat() {
    let server = TestServer::shared();
    let response = server
        .post(
            "/v1/chat/completions",
            &chat_body("Hi", json!({ "model": BASE, "max_tokens": 2 })),
        )
        .await;
    let error = expect_error(response, StatusCode::BAD_REQUEST, Some("messages")).await;
    assert!(error["message"].as_str().unwrap().contains("chat template"), "{error}");
    // The same model still completes text.
    server
        .ok(
            "/v1/completions",
            &completion_body(BASE, "Hi", json!({ "max_tokens": 2 })),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_embedding_inputs_are_4xx_never_5xx() {
    let server = TestServer::shared();
    let refused = [
        json!({ "model": EMBED, "input": [] }),
        json!({ "model": EMBED, "input": null }),
        json!({ "model": EMBED }),
        json!({ "model": EMBED, "input": [{}] }),
        json!({ "model": EMBED, "input": [[]] }),
        json!({ "model": EMBED, "input": [1, "two"] }),
        json!({ "model": EMBED, "input": [101, 999_999, 102] }),
        json!({ "model": EMBED, "input": [[101, 102], [101, 30_522, 102]] }),
        json!({ "model": EMBED, "input": [-1] }),
        json!({ "model": EMBED, "input": "hi", "encoding_format": "hex" }),
        json!({ "model": CHAT, "input": "hi" }),
    ];
    for body in &refused {
        let response = server.post("/v1/embeddings", body).await;
        expect_error(response, StatusCode::BAD_REQUEST, None).await;
    }
    let response = server.post("/v1/embeddings", &refused[6]).await;
    let error = expect_error(response, StatusCode::BAD_REQUEST, Some("input")).await;
    assert!(error["message"].as_str().unwrap().contains("999999"), "{error}");

    // An empty string is a valid input in OpenAI's API: it embeds to a unit vector.
    let empty = server
        .ok("/v1/embeddings", &json!({ "model": EMBED, "input": "" }))
        .await;
    assert_eq!(empty["data"][0]["embedding"].as_array().unwrap().len(), 384);
    let empties = server
        .ok("/v1/embeddings", &json!({ "model": EMBED, "input": ["", "x"] }))
        .await;
    assert_eq!(empties["data"].as_array().unwrap().len(), 2);
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_completion_prompts_are_400() {
    let server = TestServer::shared();
    let refused = [
        json!({ "model": BASE }),
        json!({ "model": BASE, "prompt": null }),
        json!({ "model": BASE, "prompt": [] }),
        json!({ "model": BASE, "prompt": [[]] }),
        json!({ "model": BASE, "prompt": [-1] }),
        json!({ "model": BASE, "prompt": [2, 999_999_999] }),
        json!({ "model": BASE, "prompt": [{}] }),
        json!({ "model": BASE, "prompt": "hi", "n": 3 }),
        json!({ "model": BASE, "prompt": ["a", "b"], "stream": true }),
        json!({ "model": CHAT, "prompt": "" }),
    ];
    for body in &refused {
        let response = server.post("/v1/completions", body).await;
        expect_error(response, StatusCode::BAD_REQUEST, None).await;
    }
    let response = server.post("/v1/completions", &refused[5]).await;
    expect_error(response, StatusCode::BAD_REQUEST, Some("prompt")).await;
    let response = server
        .post("/v1/detokenize", &json!({ "model": CHAT, "tokens": [1, 10_000_000] }))
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, Some("tokens")).await;
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_sampling_values_are_400_naming_the_parameter() {
    let server = TestServer::shared();
    let cases = [
        (json!({ "max_tokens": 0 }), "max_tokens"),
        (json!({ "max_tokens": -3 }), "max_tokens"),
        (json!({ "max_completion_tokens": 0 }), "max_tokens"),
        (json!({ "max_tokens": 1_000_000 }), "max_tokens"),
        (json!({ "temperature": -1 }), "temperature"),
        // Too large for an f32: infinite, not a temperature.
        (json!({ "temperature": 1e39 }), "temperature"),
        (json!({ "top_k": 10_000_000 }), "top_k"),
        (json!({ "presence_penalty": 3 }), "presence_penalty"),
        (json!({ "top_p": 2 }), "top_p"),
        (json!({ "top_p": 0 }), "top_p"),
        (json!({ "min_p": 1.5 }), "min_p"),
        (json!({ "logprobs": true, "top_logprobs": 1_000_000 }), "top_logprobs"),
        (json!({ "response_format": { "type": "xml" } }), "response_format.type"),
        (
            json!({ "response_format": { "type": "json_schema", "json_schema": { "name": "x", "schema": { "type": "frobnicate" } } } }),
            "response_format",
        ),
        (json!({ "tool_choice": "required" }), "tool_choice"),
        (
            json!({ "tools": [{ "type": "function", "function": { "name": "f" } }], "tool_choice": { "type": "function", "function": { "name": "g" } } }),
            "tool_choice",
        ),
        (
            json!({ "tools": [{ "type": "function", "function": { "name": "bad name" } }] }),
            "tools[0].function.name",
        ),
    ];
    for (extra, param) in cases {
        // Streaming or not: a stream must not answer 200 and then report the error inside.
        for stream in [false, true] {
            let mut body = chat_body("Hi", extra.clone());
            body["stream"] = json!(stream);
            let response = server.post("/v1/chat/completions", &body).await;
            expect_error(response, StatusCode::BAD_REQUEST, Some(param)).await;
        }
    }
    for (extra, param) in [
        (json!({ "max_tokens": 0 }), "max_tokens"),
        (json!({ "max_tokens": -1 }), "max_tokens"),
        (json!({ "temperature": -1, "stream": true }), "temperature"),
        (json!({ "top_p": 2 }), "top_p"),
    ] {
        let response = server
            .post("/v1/completions", &completion_body(BASE, "Hi", extra))
            .await;
        expect_error(response, StatusCode::BAD_REQUEST, Some(param)).await;
    }
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_get_openai_errors() {
    let server = TestServer::shared();
    let error = expect_error(server.get("/v1/nothing-here").await, StatusCode::NOT_FOUND, None).await;
    assert_eq!(error["code"], "not_found");
    let response = server.get("/v1/chat/completions").await;
    expect_error(response, StatusCode::METHOD_NOT_ALLOWED, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413() {
    let server = TestServer::start(ServerConfig {
        max_body_bytes: 1024,
        ..ServerConfig::default()
    })
    .await;
    let big = chat_body(&"word ".repeat(400), json!({ "max_tokens": 2 }));
    assert!(big.to_string().len() > 1024);
    let response = server.post("/v1/chat/completions", &big).await;
    let error = expect_error(response, StatusCode::PAYLOAD_TOO_LARGE, None).await;
    assert!(error["message"].as_str().unwrap().contains("1024"), "{error}");
    let response = server
        .post("/v1/embeddings", &json!({ "model": EMBED, "input": "x".repeat(2000) }))
        .await;
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE, None).await;
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_the_context_is_400() {
    let pool = PoolConfig { n_ctx: 256, ..pool() };
    let server = TestServer::start_with(ServerConfig::default(), pool, models_dir()).await;
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let response = server
        .post("/v1/chat/completions", &chat_body(&long, json!({ "max_tokens": 2 })))
        .await;
    let error = expect_error(response, StatusCode::BAD_REQUEST, Some("messages")).await;
    assert!(error["message"].as_str().unwrap().contains("256"), "{error}");
    let response = server
        .post(
            "/v1/chat/completions",
            &chat_body(&long, json!({ "max_tokens": 2, "stream": true })),
        )
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, Some("messages")).await;
    let response = server
        .post(
            "/v1/completions",
            &completion_body(CHAT, &long, json!({ "max_tokens": 2 })),
        )
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, Some("prompt")).await;
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_503_with_retry_after_and_passes() {
    let server = TestServer::start(ServerConfig {
        max_concurrent_requests: 1,
        max_queued_requests: 0,
        ..ServerConfig::default()
    })
    .await;
    // The stream holds the only slot from the moment its 200 arrives.
    let long = completion_body(
        CHAT,
        COUNTING,
        json!({ "max_tokens": 1000, "temperature": 0, "stream": true }),
    );
    let holder = server.post("/v1/completions", &long).await;
    assert_eq!(holder.status(), StatusCode::OK);

    let requests = [
        ("/v1/chat/completions", chat_body("Hi", json!({ "max_tokens": 2 }))),
        (
            "/v1/completions",
            completion_body(CHAT, "Hi", json!({ "max_tokens": 2 })),
        ),
        ("/v1/embeddings", json!({ "model": EMBED, "input": "Hi" })),
    ];
    for (path, body) in &requests {
        let response = server.post(path, body).await;
        let retry_after = response.headers().get("retry-after").cloned();
        let error = expect_error(response, StatusCode::SERVICE_UNAVAILABLE, None).await;
        assert_eq!(error["code"], "overloaded", "{path}");
        let seconds: u64 = retry_after
            .expect("Retry-After")
            .to_str()
            .unwrap()
            .parse()
            .expect("seconds");
        assert!(seconds >= 1);
    }
    // Requests that need no slot are still answered.
    server.ok_get("/health").await;

    // Once the stream is gone, the slot is free again and the server serves as before.
    drop(holder);
    let admitted = eventually(Duration::from_secs(10), || async {
        let response = server.post(requests[0].0, &requests[0].1).await;
        assert!(
            matches!(response.status(), StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE),
            "{}",
            response.status()
        );
        response.status() == StatusCode::OK
    })
    .await;
    assert!(admitted, "the slot was never freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_beyond_the_clock_keeps_the_model_and_the_server() {
    // Parses as a duration of ~292 billion years: a deadline the wall clock cannot name.
    // It once panicked the pool while the lease was returned (a dropped connection).
    let server = TestServer::start(ServerConfig::default()).await;
    let body = chat_body(
        "Hi",
        json!({ "max_tokens": 2, "keep_alive": 9_223_372_036_000_000_000u64 }),
    );
    let reply = server.ok("/v1/chat/completions", &body).await;
    assert!((1..=2).contains(&usage(&reply).1), "{reply}");
    let loaded: serde_json::Value = server.get("/v1/models/loaded").await.json().await.unwrap();
    let entry = loaded["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == CHAT)
        .expect("the model stays loaded");
    assert!(entry["expires_at"].is_null(), "{entry}");
    still_serves(&server).await;
    // A keep-alive string that overflows while summing its parts is a 400.
    let body = chat_body(
        "Hi",
        json!({ "max_tokens": 2, "keep_alive": "10000000000000000000s10000000000000000000s" }),
    );
    expect_error(
        server.post("/v1/chat/completions", &body).await,
        StatusCode::BAD_REQUEST,
        None,
    )
    .await;
    still_serves(&server).await;
}

/// `/openapi.json` describes the routes a client uses, with their bodies and the error
/// body every refusal has; a route's refusals are documented as what they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_schema_documents_the_routes_their_bodies_and_errors() {
    let server = TestServer::shared();
    let api = server.ok_get("/openapi.json").await;
    assert!(
        api["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        api["openapi"]
    );
    let paths = api["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/chat/completions", "post"),
        ("/v1/completions", "post"),
        ("/v1/embeddings", "post"),
        ("/v1/models", "get"),
        ("/v1/models/{id}", "delete"),
        ("/v1/models/{id}/load", "post"),
        ("/v1/tokenize", "post"),
        ("/api/chat", "post"),
        ("/api/tags", "get"),
        ("/health", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    // The chat body is the handler's type: its required fields, its flattened sampling.
    let schemas = &api["components"]["schemas"];
    let chat = serde_json::to_string(&schemas["ChatRequest"]).unwrap();
    assert!(chat.contains("\"required\":[\"model\",\"messages\"]"), "{chat}");
    assert!(chat.contains("SamplingFields"), "{chat}");
    assert!(schemas["SamplingFields"]["properties"]["temperature"].is_object());
    // A 404 on an OpenAI route has OpenAI's error body, on an Ollama route Ollama's.
    let not_found = |path: &str, method: &str| {
        api["paths"][path][method]["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].clone()
    };
    assert_eq!(
        not_found("/v1/chat/completions", "post"),
        "#/components/schemas/ErrorBody"
    );
    assert_eq!(not_found("/api/chat", "post"), "#/components/schemas/OllamaErrorBody");
    // A stream's schema is one server-sent event (tools validate a stream event by event),
    // not the whole stream as a string: `data` holds each chunk.
    for path in ["/v1/chat/completions", "/v1/completions"] {
        assert_eq!(
            api["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]["$ref"],
            "#/components/schemas/SseEvent",
            "{path}"
        );
    }
    assert_eq!(schemas["SseEvent"]["required"], json!(["data"]));
    // And the server's real 404 matches the documented body.
    let error = expect_error(
        server
            .post(
                "/v1/chat/completions",
                &chat_body("Hi", json!({ "model": "no-such-model" })),
            )
            .await,
        StatusCode::NOT_FOUND,
        Some("model"),
    )
    .await;
    for field in schemas["ErrorDetail"]["required"].as_array().unwrap() {
        assert!(
            error.get(field.as_str().unwrap()).is_some(),
            "{field} missing from {error}"
        );
    }
}
