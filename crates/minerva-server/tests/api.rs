//! Every endpoint of the OpenAI-compatible API, end to end: the real server on a real
//! port, the real default models, a real HTTP client. Usage counts are checked exactly
//! against `/v1/tokenize`, and streams against the non-streaming answers.

mod common;

use base64::Engine as _;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const STORY: &str = "Write a long story about a cat.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_answers_with_exact_usage() {
    let server = TestServer::shared();
    let body = server
        .ok(
            "/v1/chat/completions",
            &chat_body(STORY, json!({ "max_tokens": 5, "temperature": 0 })),
        )
        .await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], CHAT);
    assert!(
        body["id"].as_str().is_some_and(|id| id.starts_with("chatcmpl-")),
        "{body}"
    );
    let choices = body["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    let content = choices[0]["message"]["content"].as_str().expect("content");
    assert!(!content.trim().is_empty(), "{body}");
    // A story does not end in 5 tokens: the limit ends it, and exactly 5 were generated.
    assert_eq!(choices[0]["finish_reason"], "length", "{body}");
    let (prompt_tokens, completion_tokens, _) = usage(&body);
    assert_eq!(completion_tokens, 5);
    // The prompt is the model's ChatML rendering of the messages, tokenized with special tokens.
    let expected = server.token_count(CHAT, &chatml(STORY), true).await;
    assert_eq!(prompt_tokens, expected as u64, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_says_where_its_time_went() {
    let server = TestServer::shared();
    for (path, body) in [
        (
            "/v1/chat/completions",
            chat_body(STORY, json!({ "max_tokens": 6, "temperature": 0 })),
        ),
        (
            "/v1/completions",
            completion_body(CHAT, "Once upon a time", json!({ "max_tokens": 6 })),
        ),
    ] {
        let response = server.post(path, &body).await;
        assert_eq!(response.status(), StatusCode::OK);
        let header = response.headers()["server-timing"].to_str().unwrap().to_owned();
        for stage in [
            "model;dur=",
            "prepare;dur=",
            "queue;dur=",
            "prefill;dur=",
            "decode;dur=",
        ] {
            assert!(header.contains(stage), "{path}: {header}");
        }
        let reply: Value = response.json().await.unwrap();
        let timings = &reply["timings"];
        let (prompt, completion, _) = usage(&reply);
        assert_eq!(timings["predicted_n"].as_u64(), Some(completion), "{reply}");
        assert_eq!(
            timings["prompt_n"].as_u64().unwrap() + timings["cache_n"].as_u64().unwrap(),
            prompt,
            "{reply}"
        );
        let total = timings["total_ms"].as_f64().unwrap();
        let parts: f64 = ["model_ms", "prepare_ms", "queue_ms", "prompt_ms", "predicted_ms"]
            .iter()
            .map(|k| timings[k].as_f64().unwrap())
            .sum();
        assert!(timings["predicted_ms"].as_f64().unwrap() > 0.0, "{reply}");
        assert!(
            parts <= total * 1.05 + 1.0,
            "the stages ({parts} ms) exceed the whole ({total} ms): {reply}"
        );
    }
    // A stream says what happened before its first byte.
    let response = server
        .post(
            "/v1/chat/completions",
            &chat_body(STORY, json!({ "max_tokens": 2, "stream": true })),
        )
        .await;
    let header = response.headers()["server-timing"].to_str().unwrap().to_owned();
    assert!(
        header.contains("model;dur=") && header.contains("queue;dur="),
        "{header}"
    );
    assert!(!header.contains("decode"), "{header}");
    // ...and its last chunk, where the rest went.
    let chunks = read_sse(response).await;
    let last = chunks
        .iter()
        .find(|c| c["choices"][0]["finish_reason"].is_string())
        .expect("a finishing chunk");
    let timings = &last["timings"];
    assert_eq!(timings["predicted_n"].as_u64(), Some(2), "{last}");
    assert!(timings["prompt_ms"].as_f64().unwrap() >= 0.0 && timings["total_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_completion_tokens_and_max_tokens_both_limit_the_answer() {
    let server = TestServer::shared();
    for field in ["max_tokens", "max_completion_tokens"] {
        let body = server
            .ok(
                "/v1/chat/completions",
                &chat_body(STORY, json!({ field: 3, "temperature": 0 })),
            )
            .await;
        assert_eq!(body["choices"][0]["finish_reason"], "length", "{field}: {body}");
        assert_eq!(usage(&body).1, 3, "{field}: {body}");
    }
    // max_completion_tokens (the newer name) wins over max_tokens.
    let body = server
        .ok(
            "/v1/chat/completions",
            &chat_body(
                STORY,
                json!({ "max_tokens": 9, "max_completion_tokens": 2, "temperature": 0 }),
            ),
        )
        .await;
    assert_eq!(usage(&body).1, 2, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chat_equals_the_plain_answer_and_ends_with_usage_and_done() {
    let server = TestServer::shared();
    let request = |stream: bool| {
        chat_body(
            STORY,
            json!({ "max_tokens": 12, "temperature": 0, "stream": stream, "stream_options": { "include_usage": true } }),
        )
    };
    let plain = server.ok("/v1/chat/completions", &request(false)).await;
    let response = server.post("/v1/chat/completions", &request(true)).await;
    assert!(response.headers().contains_key("x-request-id"));
    let chunks = read_sse(response).await;

    // The first chunk opens the assistant's message.
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{}", chunks[0]);
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        assert_eq!(chunk["id"], chunks[0]["id"], "one id per stream");
    }
    // Then the finish reason, then the usage chunk with no choices.
    let (usage_chunk, rest) = chunks.split_last().expect("chunks");
    assert_eq!(usage_chunk["choices"], json!([]), "{usage_chunk}");
    assert_eq!(usage(usage_chunk), usage(&plain));
    let finish = rest.last().expect("finish chunk");
    assert_eq!(
        finish["choices"][0]["finish_reason"], plain["choices"][0]["finish_reason"],
        "{finish}"
    );
    assert_eq!(
        chat_stream_text(&chunks),
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(rest.len() >= 3, "expected several content chunks: {chunks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_include_usage_has_no_usage_chunk() {
    let server = TestServer::shared();
    let body = chat_body("Say hi.", json!({ "max_tokens": 4, "temperature": 0, "stream": true }));
    let chunks = read_sse(server.post("/v1/chat/completions", &body).await).await;
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{chunks:?}");
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_makes_sampling_reproducible_streamed_or_not() {
    let server = TestServer::shared();
    let request = |stream: bool| {
        chat_body(
            "Tell me something surprising.",
            json!({ "max_tokens": 12, "temperature": 0.8, "seed": 1234, "stream": stream }),
        )
    };
    let first = server.ok("/v1/chat/completions", &request(false)).await;
    let second = server.ok("/v1/chat/completions", &request(false)).await;
    let text = first["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text, second["choices"][0]["message"]["content"].as_str().unwrap());
    let chunks = read_sse(server.post("/v1/chat/completions", &request(true)).await).await;
    assert_eq!(chat_stream_text(&chunks), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_two_gives_two_choices_and_usage_counts_both() {
    let server = TestServer::shared();
    let body = server
        .ok(
            "/v1/chat/completions",
            &chat_body(
                STORY,
                json!({ "n": 2, "max_tokens": 6, "temperature": 0.9, "seed": 7, "logprobs": true }),
            ),
        )
        .await;
    let choices = body["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2, "{body}");
    let mut generated = 0;
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert!(choice["message"]["content"].is_string());
        generated += choice["logprobs"]["content"].as_array().expect("logprobs").len() as u64;
    }
    let (prompt_tokens, completion_tokens, _) = usage(&body);
    assert_eq!(completion_tokens, generated, "one token per logprobs entry: {body}");
    // The prompt is counted once, as OpenAI does.
    assert_eq!(
        prompt_tokens,
        server.token_count(CHAT, &chatml(STORY), true).await as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sequence_cuts_the_answer_before_it() {
    let server = TestServer::shared();
    let free = server
        .ok(
            "/v1/chat/completions",
            &chat_body(STORY, json!({ "max_tokens": 16, "temperature": 0 })),
        )
        .await;
    let text = free["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    let stop = text.split_whitespace().nth(2).expect("at least three words").to_owned();
    let expected = &text[..text.find(&stop).unwrap()];

    for stream in [false, true] {
        let request = chat_body(
            STORY,
            json!({ "max_tokens": 16, "temperature": 0, "stop": [stop, "\u{1F600}"], "stream": stream }),
        );
        let (got, finish) = if stream {
            let chunks = read_sse(server.post("/v1/chat/completions", &request).await).await;
            let finish = chunks.last().unwrap()["choices"][0]["finish_reason"].clone();
            (chat_stream_text(&chunks), finish)
        } else {
            let body = server.ok("/v1/chat/completions", &request).await;
            (
                body["choices"][0]["message"]["content"].as_str().unwrap().to_owned(),
                body["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(got, expected, "stream: {stream}, stop: {stop:?}");
        assert_eq!(finish, "stop", "stream: {stream}");
    }
    // A single string works as well as a list.
    let body = server
        .ok(
            "/v1/chat/completions",
            &chat_body(STORY, json!({ "max_tokens": 16, "temperature": 0, "stop": stop })),
        )
        .await;
    assert_eq!(body["choices"][0]["message"]["content"], expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_list_each_token_with_its_top_alternatives() {
    let server = TestServer::shared();
    let body = server
        .ok(
            "/v1/chat/completions",
            &chat_body(
                STORY,
                json!({ "max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 3 }),
            ),
        )
        .await;
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs.content");
    assert_eq!(content.len() as u64, usage(&body).1);
    let mut text = String::new();
    for entry in content {
        let token = entry["token"].as_str().expect("token");
        let logprob = entry["logprob"].as_f64().expect("logprob");
        assert!(logprob <= 0.0, "{entry}");
        assert_eq!(entry["bytes"], json!(token.as_bytes()), "{entry}");
        let top = entry["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 3, "{entry}");
        let tops: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(
            tops.windows(2).all(|w| w[0] >= w[1]),
            "sorted, most likely first: {entry}"
        );
        // Greedy decoding picks the most likely token.
        assert_eq!(top[0]["token"], token, "{entry}");
        assert!((tops[0] - logprob).abs() < 1e-4, "{entry}");
        text.push_str(token);
    }
    assert_eq!(text, body["choices"][0]["message"]["content"].as_str().unwrap());

    let plain = server
        .ok(
            "/v1/chat/completions",
            &chat_body(STORY, json!({ "max_tokens": 2, "temperature": 0 })),
        )
        .await;
    assert!(
        plain["choices"][0]["logprobs"].is_null(),
        "no logprobs unless asked: {plain}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_of_a_string_prompt_counts_tokens_exactly() {
    let server = TestServer::shared();
    let prompt = "The capital of France is";
    let body = server
        .ok(
            "/v1/completions",
            &completion_body(BASE, prompt, json!({ "max_tokens": 5, "temperature": 0 })),
        )
        .await;
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], BASE);
    let choice = &body["choices"][0];
    assert!(choice["text"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
    assert_eq!(choice["finish_reason"], "length");
    let (prompt_tokens, completion_tokens, _) = usage(&body);
    assert_eq!(prompt_tokens, server.token_count(BASE, prompt, false).await as u64);
    assert_eq!(completion_tokens, 5);

    // Without max_tokens, the completions API's default of 16 applies.
    let body = server
        .ok(
            "/v1/completions",
            &completion_body(CHAT, COUNTING, json!({ "temperature": 0 })),
        )
        .await;
    assert_eq!(usage(&body).1, 16, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_accepts_prompt_arrays_and_token_ids() {
    let server = TestServer::shared();
    let prompts = ["The capital of France is", "1, 2, 3,"];
    let options = json!({ "max_tokens": 4, "temperature": 0 });
    let mut singles = Vec::new();
    for prompt in prompts {
        let body = server
            .ok("/v1/completions", &completion_body(BASE, prompt, options.clone()))
            .await;
        singles.push(body["choices"][0]["text"].as_str().unwrap().to_owned());
    }

    let mut body = json!({ "model": BASE, "prompt": prompts });
    merge(&mut body, options.clone());
    let batch = server.ok("/v1/completions", &body).await;
    let choices = batch["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2, "{batch}");
    let mut prompt_tokens = 0;
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["text"], singles[i], "prompt {i}");
        prompt_tokens += server.token_count(BASE, prompts[i], false).await as u64;
    }
    assert_eq!(usage(&batch), (prompt_tokens, 8, prompt_tokens + 8));

    // Token ids from /v1/tokenize give the same completion as the text.
    let tokens = server
        .ok("/v1/tokenize", &json!({ "model": BASE, "prompt": prompts[0] }))
        .await["tokens"]
        .clone();
    let mut body = json!({ "model": BASE, "prompt": tokens });
    merge(&mut body, options.clone());
    let by_ids = server.ok("/v1/completions", &body).await;
    assert_eq!(by_ids["choices"][0]["text"], singles[0]);
    assert_eq!(usage(&by_ids).0, tokens.as_array().unwrap().len() as u64);

    // And a list of token-id lists is a batch.
    let mut body = json!({ "model": BASE, "prompt": [tokens.clone(), tokens] });
    merge(&mut body, options);
    let by_lists = server.ok("/v1/completions", &body).await;
    assert_eq!(by_lists["choices"][1]["text"], singles[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_echo_and_logprobs_describe_the_text() {
    let server = TestServer::shared();
    let prompt = "The capital of France is";
    let plain = server
        .ok(
            "/v1/completions",
            &completion_body(BASE, prompt, json!({ "max_tokens": 5, "temperature": 0 })),
        )
        .await;
    let generated = plain["choices"][0]["text"].as_str().unwrap();
    let body = server
        .ok(
            "/v1/completions",
            &completion_body(
                BASE,
                prompt,
                json!({ "max_tokens": 5, "temperature": 0, "echo": true, "logprobs": 2 }),
            ),
        )
        .await;
    let choice = &body["choices"][0];
    let text = choice["text"].as_str().unwrap();
    assert_eq!(text, format!("{prompt}{generated}"), "echo puts the prompt first");

    let logprobs = &choice["logprobs"];
    let tokens: Vec<&str> = logprobs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len() as u64, usage(&body).1);
    assert_eq!(tokens.concat(), generated);
    let offsets: Vec<usize> = logprobs["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap() as usize)
        .collect();
    for (token, offset) in tokens.iter().zip(&offsets) {
        assert_eq!(
            &text[*offset..*offset + token.len()],
            *token,
            "text_offset points at the token"
        );
    }
    for (i, top) in logprobs["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().expect("a {token: logprob} map");
        assert!(!top.is_empty() && top.len() <= 2, "{top:?}");
        let chosen = logprobs["token_logprobs"][i].as_f64().unwrap();
        let best = top.values().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert!((best - chosen).abs() < 1e-4, "greedy picks the best alternative");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_completion_equals_the_plain_one() {
    let server = TestServer::shared();
    let request = |stream: bool, extra: Value| {
        let mut body = completion_body(
            CHAT,
            "Once upon a time",
            json!({ "max_tokens": 10, "stream": stream, "stream_options": { "include_usage": true } }),
        );
        merge(&mut body, extra);
        body
    };
    for sampling in [json!({ "temperature": 0 }), json!({ "temperature": 0.8, "seed": 99 })] {
        let plain = server.ok("/v1/completions", &request(false, sampling.clone())).await;
        let chunks = read_sse(server.post("/v1/completions", &request(true, sampling.clone())).await).await;
        assert_eq!(
            completion_stream_text(&chunks),
            plain["choices"][0]["text"].as_str().unwrap(),
            "{sampling}"
        );
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(usage(last), usage(&plain));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_japanese_never_splits_a_character() {
    let server = TestServer::shared();
    let request = |stream: bool| {
        completion_body(
            BASE,
            "日本語の文章:",
            json!({ "max_tokens": 16, "temperature": 0, "stream": stream }),
        )
    };
    // read_sse checks that every event is whole UTF-8 and parses as JSON.
    let chunks = read_sse(server.post("/v1/completions", &request(true)).await).await;
    let streamed = completion_stream_text(&chunks);
    for chunk in &chunks {
        let piece = chunk["choices"][0]["text"].as_str().unwrap_or("");
        assert!(!piece.contains('\u{FFFD}'), "replacement character in {chunk}");
    }
    assert!(!streamed.is_ascii(), "expected non-ASCII output: {streamed:?}");
    let plain = server.ok("/v1/completions", &request(false)).await;
    assert_eq!(streamed, plain["choices"][0]["text"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_of_strings_arrays_and_token_ids_agree() {
    let server = TestServer::shared();
    let embed = |input: Value| json!({ "model": EMBED, "input": input });
    let vectors = |body: &Value| -> Vec<Vec<f64>> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                assert_eq!(d["object"], "embedding");
                assert_eq!(d["index"], i);
                d["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let close = |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);

    let single = server.ok("/v1/embeddings", &embed(json!("hello"))).await;
    assert_eq!(single["object"], "list");
    assert_eq!(single["model"], EMBED);
    let hello = vectors(&single).remove(0);
    assert_eq!(hello.len(), 384);
    let norm: f64 = hello.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "all-MiniLM-L6-v2 normalizes: {norm}");
    // [CLS] hello [SEP]
    assert_eq!(single["usage"], json!({ "prompt_tokens": 3, "total_tokens": 3 }));

    let batch = server
        .ok("/v1/embeddings", &embed(json!(["hello", "a quiet evening by the sea"])))
        .await;
    let batch_vectors = vectors(&batch);
    assert_eq!(batch_vectors.len(), 2);
    assert!(close(&batch_vectors[0], &hello), "batching does not change a vector");
    assert!(!close(&batch_vectors[1], &hello));

    // BERT's uncased vocabulary: [CLS] = 101, "hello" = 7592, [SEP] = 102.
    let ids = server.ok("/v1/embeddings", &embed(json!([101, 7592, 102]))).await;
    assert!(close(&vectors(&ids)[0], &hello), "token ids embed like the text");
    let id_lists = server
        .ok("/v1/embeddings", &embed(json!([[101, 7592, 102], [101, 102]])))
        .await;
    assert!(close(&vectors(&id_lists)[0], &hello));
    assert_eq!(id_lists["usage"]["prompt_tokens"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_embeddings_decode_to_the_float_ones() {
    let server = TestServer::shared();
    let input = json!(["hello", "goodbye"]);
    let floats = server
        .ok("/v1/embeddings", &json!({ "model": EMBED, "input": input }))
        .await;
    let encoded = server
        .ok(
            "/v1/embeddings",
            &json!({ "model": EMBED, "input": input, "encoding_format": "base64" }),
        )
        .await;
    for i in 0..2 {
        let text = encoded["data"][i]["embedding"].as_str().expect("base64 string");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("valid base64");
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let expected: Vec<f32> = floats["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(decoded, expected, "input {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_refuse_other_dimensions() {
    let server = TestServer::shared();
    let response = server
        .post(
            "/v1/embeddings",
            &json!({ "model": EMBED, "input": "hello", "dimensions": 128 }),
        )
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, Some("dimensions")).await;
    let same = server
        .ok(
            "/v1/embeddings",
            &json!({ "model": EMBED, "input": "hello", "dimensions": 384 }),
        )
        .await;
    assert_eq!(same["data"][0]["embedding"].as_array().unwrap().len(), 384);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed_and_described() {
    let server = TestServer::shared();
    let list = server.ok_get("/v1/models").await;
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [CHAT, BASE, EMBED] {
        assert!(ids.contains(&id), "{id} not in {ids:?}");
    }
    for model in list["data"].as_array().unwrap() {
        assert_eq!(model["object"], "model");
        assert!(model["owned_by"].is_string());
        assert!(model["created"].is_u64());
    }
    for id in [CHAT, EMBED] {
        let model = server.ok_get(&format!("/v1/models/{id}")).await;
        assert_eq!(model["id"], id);
        assert_eq!(model["object"], "model");
        assert!(model["size_bytes"].as_u64().unwrap() > 1_000_000, "{model}");
    }
    let missing = server.get("/v1/models/no-such-model").await;
    let error = expect_error(missing, StatusCode::NOT_FOUND, Some("model")).await;
    assert_eq!(error["code"], "model_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_and_detokenize_round_trip() {
    let server = TestServer::shared();
    let text = "Hello, world! Grüße aus 日本 🙂";
    for model in [CHAT, BASE] {
        let tokenized = server
            .ok(
                "/v1/tokenize",
                &json!({ "model": model, "prompt": text, "add_special": false }),
            )
            .await;
        let tokens = tokenized["tokens"].as_array().unwrap();
        assert_eq!(tokenized["count"], tokens.len());
        assert!(tokens.len() > 5, "{tokenized}");
        let detokenized = server
            .ok("/v1/detokenize", &json!({ "model": model, "tokens": tokens }))
            .await;
        assert_eq!(detokenized["content"], text, "{model}");
    }
    // Gemma adds its BOS token when asked for special tokens; the count says so.
    let with_bos = server.token_count(BASE, "Hello", false).await;
    let without = server
        .ok(
            "/v1/tokenize",
            &json!({ "model": BASE, "prompt": "Hello", "add_special": false }),
        )
        .await["count"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(with_bos, without + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_and_metrics_count_requests() {
    let server = TestServer::shared();
    let health = server.ok_get("/health").await;
    assert_eq!(health["status"], "ok");
    assert!(health["loaded_models"].is_array());

    server.ok_get("/v1/models").await;
    let response = server.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("minerva_http_requests_total{") && l.contains("route=\"/v1/models\""))
        .unwrap_or_else(|| panic!("no request counter for /v1/models:\n{text}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().expect("a number");
    assert!(count >= 1.0, "{line}");
    assert!(text.contains("# TYPE minerva_http_requests_total counter"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id_and_echoes_the_clients() {
    let server = TestServer::shared();
    let mut seen = std::collections::HashSet::new();
    let responses = [
        server.get("/health").await,
        server.get("/v1/models").await,
        server.get("/v1/models/nope").await,
        server.get("/no/such/route").await,
        server.post_raw("/v1/chat/completions", "not json").await,
    ];
    for response in responses {
        let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(!id.is_empty());
        assert!(seen.insert(id), "request ids are unique");
    }
    let echoed = server
        .client
        .get(server.url("/health"))
        .header("x-request-id", "my-trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "my-trace-42");
    let streamed = server
        .client
        .post(server.url("/v1/chat/completions"))
        .header("x-request-id", "stream-trace")
        .json(&chat_body("Hi", json!({ "max_tokens": 2, "stream": true })))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.headers()["x-request-id"], "stream-trace");
    read_sse(streamed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_compute_turns_models_take() {
    let server = TestServer::shared();
    server
        .ok(
            "/v1/chat/completions",
            &chat_body("Say hi.", json!({ "max_tokens": 2, "temperature": 0 })),
        )
        .await;
    let text = server.get("/metrics").await.text().await.unwrap();
    let turns: f64 = text
        .lines()
        .find(|l| l.starts_with("minerva_compute_turns_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no compute turn counter:\n{text}"));
    // The prompt's pass and the passes of the generated tokens.
    assert!(turns >= 2.0, "{turns} turns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logit_bias_bans_and_forces_tokens() {
    let server = TestServer::shared();
    let greedy = |extra: Value| {
        let mut body = completion_body(
            BASE,
            "The capital of France is",
            json!({ "max_tokens": 3, "temperature": 0 }),
        );
        merge(&mut body, extra);
        body
    };
    let plain = server.ok("/v1/completions", &greedy(json!({}))).await;
    let first_text = plain["choices"][0]["text"].as_str().unwrap().to_owned();
    // The greedy answer's first token, banned: the answer starts differently.
    let first = server
        .ok(
            "/v1/tokenize",
            &json!({ "model": BASE, "prompt": format!("The capital of France is{first_text}") }),
        )
        .await["tokens"]
        .as_array()
        .unwrap()
        .clone();
    let prompt_len = server.token_count(BASE, "The capital of France is", false).await;
    let banned = first[prompt_len].as_i64().unwrap();
    let without = server
        .ok(
            "/v1/completions",
            &greedy(json!({ "logit_bias": { banned.to_string(): -100 } })),
        )
        .await;
    assert_ne!(without["choices"][0]["text"], plain["choices"][0]["text"], "{without}");
    // A token forced at +100 is every token of the answer.
    let banana = server
        .ok(
            "/v1/tokenize",
            &json!({ "model": BASE, "prompt": " banana", "add_special": false }),
        )
        .await["tokens"][0]
        .as_i64()
        .unwrap();
    let forced = server
        .ok(
            "/v1/completions",
            &greedy(json!({ "logit_bias": { banana.to_string(): 100 } })),
        )
        .await;
    let forced_text = forced["choices"][0]["text"].as_str().unwrap();
    let piece = server
        .ok("/v1/detokenize", &json!({ "model": BASE, "tokens": [banana] }))
        .await["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(forced_text, piece.repeat(3), "{forced}");
    // Bad keys and values are 400s naming the field.
    for bad in [json!({ "x": 1 }), json!({ "0": 101 }), json!({ "99999999": 1 })] {
        let response = server
            .post("/v1/completions", &greedy(json!({ "logit_bias": bad })))
            .await;
        expect_error(response, StatusCode::BAD_REQUEST, Some("logit_bias")).await;
    }
}

/// `n = 4` at a temperature, with a seed: four different choices, generated together, the
/// prompt evaluated once (the other three choices share its KV and evaluate only its last
/// token, whose logits each samples from), and the same four again for the same seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_differ_share_one_prompt_evaluation_and_repeat_with_a_seed() {
    use minerva_pool::PoolConfig;
    let server = TestServer::start_with(
        minerva_server::ServerConfig::default(),
        PoolConfig {
            parallel: 4,
            prefix_cache_tokens: 0,
            ..PoolConfig::new(minerva_engine::compute::default_threads(), 1024)
        },
        models_dir(),
    )
    .await;
    let evaluated = || scheduler_count(&server, "prompt_tokens_evaluated");
    let body = chat_body(
        "Invent a name for a small river town.",
        json!({ "n": 4, "max_tokens": 12, "temperature": 1.0, "seed": 11 }),
    );
    // Load the model first, so that the counter exists and only this request moves it.
    server
        .ok("/v1/chat/completions", &chat_body("Hi", json!({ "max_tokens": 1 })))
        .await;
    let before = evaluated().await;
    let reply = server.ok("/v1/chat/completions", &body).await;
    let after = evaluated().await;
    let choices: Vec<String> = reply["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(choices.len(), 4, "{reply}");
    let distinct: std::collections::HashSet<&String> = choices.iter().collect();
    assert!(distinct.len() >= 3, "the choices barely differ: {choices:?}");
    let (prompt, _, _) = usage(&reply);
    assert_eq!(after - before, prompt + 3, "prompt of {prompt} tokens; {choices:?}");
    let again = server.ok("/v1/chat/completions", &body).await;
    let again: Vec<&str> = again["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(again, choices, "the same seed gave other choices");
}
