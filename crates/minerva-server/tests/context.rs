//! Conversations longer than the context (1024 tokens in the test server): `truncation`
//! `error` refuses with the count, `auto` drops whole turns from the middle and says so,
//! `middle` cuts the longest message; `/v1/tokenize` counts a chat's prompt. Generations
//! longer than the context: they end there, or go on with a context shift; Ollama's
//! `num_ctx` holds one request to a smaller context.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A conversation of `turns` question/answer pairs, about 3x the test context, then the
/// question to answer.
fn long_conversation(turns: usize) -> Vec<Value> {
    let mut messages =
        vec![json!({"role": "system", "content": "You are a terse assistant. The secret word is heron."})];
    for i in 0..turns {
        messages.push(json!({"role": "user", "content": format!("Turn {i}: tell me about the number {i} and its place among the numbers near it, in a few sentences.")}));
        messages.push(json!({"role": "assistant", "content": format!("The number {i} comes after {} and before {}. It is {} and has its own small history among the integers, like every number does.", i.saturating_sub(1), i + 1, if i % 2 == 0 { "even" } else { "odd" })}));
    }
    messages.push(json!({"role": "user", "content": "What is the secret word?"}));
    messages
}

async fn prompt_tokens(server: &TestServer, messages: &[Value]) -> usize {
    let body = server
        .ok("/v1/tokenize", &json!({ "model": CHAT, "messages": messages }))
        .await;
    assert_eq!(body["n_ctx"], 1024, "{body}");
    body["count"].as_u64().expect("count") as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_counts_what_a_chat_request_would_use() {
    let server = TestServer::shared();
    let messages = chat_body("Hello there", json!({}))["messages"].clone();
    let messages = messages.as_array().expect("messages").clone();
    let counted = prompt_tokens(&server, &messages).await;
    let body = server
        .ok(
            "/v1/chat/completions",
            &json!({ "model": CHAT, "messages": messages, "max_tokens": 1 }),
        )
        .await;
    assert_eq!(usage(&body).0 as usize, counted, "{body}");
    assert_eq!(counted, server.token_count(CHAT, &chatml("Hello there"), true).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_over_the_context_fails_by_default_with_the_count() {
    let server = TestServer::shared();
    let messages = long_conversation(50);
    let total = prompt_tokens(&server, &messages).await;
    assert!(total > 3 * 1024, "the conversation has only {total} tokens");
    for extra in [json!({}), json!({"truncation": "error"})] {
        let mut body = json!({ "model": CHAT, "messages": messages, "max_tokens": 16 });
        merge(&mut body, extra);
        let error = expect_error(
            server.post("/v1/chat/completions", &body).await,
            StatusCode::BAD_REQUEST,
            Some("messages"),
        )
        .await;
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("{total} tokens")), "{message}");
        assert!(message.contains(&format!("{} more", total - 1023)), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_keeps_the_system_prompt_and_the_latest_turns_and_reports_the_rest() {
    let server = TestServer::shared();
    let messages = long_conversation(50);
    let total = prompt_tokens(&server, &messages).await;
    let body = server
        .ok(
            "/v1/chat/completions",
            &json!({ "model": CHAT, "messages": messages, "max_tokens": 16, "temperature": 0, "truncation": "auto" }),
        )
        .await;
    let truncation = &body["truncation"];
    assert_eq!(truncation["strategy"], "auto", "{body}");
    let dropped = truncation["dropped_messages"].as_u64().expect("dropped_messages") as usize;
    // Whole turns went: an even number of messages, most of the conversation.
    assert!(dropped % 2 == 0 && dropped >= 30, "{body}");
    assert_eq!(truncation["original_prompt_tokens"].as_u64(), Some(total as u64));
    let (prompt, completion, _) = usage(&body);
    assert!(prompt as usize + 16 <= 1024, "{body}");
    assert_eq!(truncation["dropped_tokens"].as_u64(), Some(total as u64 - prompt));
    assert!(completion > 0);
    // What the model saw is the system prompt, the latest turns that fit, the question.
    let mut kept = vec![messages[0].clone()];
    kept.extend(messages[1 + dropped..].iter().cloned());
    assert_eq!(prompt_tokens(&server, &kept).await as u64, prompt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_reports_the_truncation_in_the_first_chunk_of_a_stream() {
    let server = TestServer::shared();
    let chunks = read_sse(
        server
            .post(
                "/v1/chat/completions",
                &json!({ "model": CHAT, "messages": long_conversation(50), "max_tokens": 4, "stream": true, "truncation": "auto" }),
            )
            .await,
    )
    .await;
    assert!(
        chunks[0]["truncation"]["dropped_messages"].as_u64().unwrap_or(0) > 0,
        "{:?}",
        chunks[0]
    );
    assert!(!chat_stream_text(&chunks).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middle_cuts_one_long_message_keeping_its_ends() {
    let server = TestServer::shared();
    let document: String = (0..600).map(|i| format!("Line {i} of the report. ")).collect();
    let messages = vec![json!({"role": "user", "content": format!("Summarize: {document}")})];
    let total = prompt_tokens(&server, &messages).await;
    assert!(total > 2048, "{total}");
    let body = server
        .ok(
            "/v1/chat/completions",
            &json!({ "model": CHAT, "messages": messages, "max_tokens": 8, "temperature": 0, "truncation": "middle" }),
        )
        .await;
    assert_eq!(body["truncation"]["strategy"], "middle", "{body}");
    assert_eq!(body["truncation"]["dropped_messages"], 0, "{body}");
    let prompt = usage(&body).0;
    assert!(prompt + 8 <= 1024 && prompt > 512, "{body}");
    // A single message that cannot be dropped is refused under auto.
    let error = expect_error(
        server
            .post(
                "/v1/chat/completions",
                &json!({ "model": CHAT, "messages": messages, "max_tokens": 8, "truncation": "auto" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        Some("messages"),
    )
    .await;
    assert!(
        error["message"].as_str().unwrap_or_default().contains("more than fit"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_strategy_is_a_400_naming_the_field() {
    let server = TestServer::shared();
    let response = server
        .post(
            "/v1/chat/completions",
            &json!({ "model": CHAT, "messages": [{"role": "user", "content": "hi"}], "truncation": "sideways" }),
        )
        .await;
    let error = json_of(response, StatusCode::BAD_REQUEST).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("truncation"),
        "{error}"
    );
}

/// The ids of SmolLM2's end-of-generation tokens, which a test bans to force a long reply.
async fn end_tokens(server: &TestServer) -> Vec<u64> {
    let mut ids = Vec::new();
    for special in ["<|im_end|>", "<|endoftext|>"] {
        let body = server
            .ok(
                "/v1/tokenize",
                &json!({ "model": CHAT, "prompt": special, "parse_special": true }),
            )
            .await;
        ids.extend(
            body["tokens"]
                .as_array()
                .expect("tokens")
                .iter()
                .filter_map(Value::as_u64),
        );
    }
    assert_eq!(ids.len(), 2, "{ids:?}");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_ends_at_the_context_unless_context_shift_lets_it_go_on() {
    let server = TestServer::shared();
    let ban: serde_json::Map<String, Value> = end_tokens(&server)
        .await
        .into_iter()
        .map(|id| (id.to_string(), json!(-100)))
        .collect();
    let body = |extra: Value| {
        let mut body = json!({
            "model": CHAT,
            "prompt": "Here are the numbers from 1 to 2000, separated by commas: 1, 2, 3, 4,",
            "max_tokens": 1600,
            "temperature": 0,
            "logit_bias": ban,
        });
        merge(&mut body, extra);
        body
    };
    // Without a shift the reply stops where the context is full.
    let plain = server.ok("/v1/completions", &body(json!({}))).await;
    let (prompt, completion, _) = usage(&plain);
    assert_eq!(plain["choices"][0]["finish_reason"], "length", "{plain}");
    assert_eq!(prompt + completion, 1024, "{plain}");

    let shifts_before = scheduler_count(&server, "context_shifts").await;
    let shifted = server
        .ok("/v1/completions", &body(json!({ "context_shift": true, "n_keep": -1 })))
        .await;
    let (_, completion, _) = usage(&shifted);
    assert_eq!(completion, 1600, "the generation stopped at {completion} tokens");
    assert_eq!(shifted["choices"][0]["finish_reason"], "length", "{shifted}");
    let text = shifted["choices"][0]["text"].as_str().unwrap_or_default();
    // The reply is whole: what the model wrote before the shift is still in it, and it
    // goes on well past what one window holds.
    let plain_text = plain["choices"][0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with(plain_text), "the shifted reply rewrote its start");
    assert!(
        text.len() > plain_text.len() + 500,
        "{} vs {}",
        text.len(),
        plain_text.len()
    );
    assert!(scheduler_count(&server, "context_shifts").await > shifts_before);
    // A negative n_keep other than -1 is refused.
    expect_error(
        server
            .post("/v1/completions", &body(json!({ "context_shift": true, "n_keep": -2 })))
            .await,
        StatusCode::BAD_REQUEST,
        Some("n_keep"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_num_ctx_holds_a_request_to_a_smaller_context() {
    let server = TestServer::shared();
    let generate = |num_ctx: u64, prompt: String| {
        json!({
            "model": CHAT,
            "prompt": prompt,
            "raw": true,
            "stream": false,
            "shift": false,
            "options": { "num_ctx": num_ctx, "num_predict": 400, "temperature": 0, "repeat_penalty": 1.0 },
        })
    };
    let counting = "Here are the numbers from 1 to 500, separated by commas: 1, 2, 3,".to_owned();
    let body = server.ok("/api/generate", &generate(96, counting.clone())).await;
    let used = body["prompt_eval_count"].as_u64().unwrap_or(0) + body["eval_count"].as_u64().unwrap_or(0);
    assert_eq!(used, 96, "{body}");
    assert_eq!(body["done_reason"], "length", "{body}");
    // A prompt longer than the request's context is refused with its count.
    let long: String = (0..100).map(|i| format!("{i}, ")).collect();
    let error = server.post("/api/generate", &generate(96, long)).await;
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    let error: Value = error.json().await.expect("json");
    assert!(error["error"].as_str().unwrap_or_default().contains("96"), "{error}");
    // A context larger than the model's session gets the session's.
    let body = server.ok("/api/generate", &generate(1 << 20, counting)).await;
    assert!(body["eval_count"].as_u64().unwrap_or(0) > 96, "{body}");
}
