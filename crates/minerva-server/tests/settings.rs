//! A model's own settings (`minerva config`) change what the server does on its next load:
//! a system prompt for chats that bring none, a context size, RoPE scaling, sampling
//! defaults; Ollama's `/api/create` and `/api/copy` make new names with their own.

mod common;

use std::sync::Arc;

use common::{CHAT, TestServer, expect_error, pool, usage};
use minerva_pool::ModelPool;
use minerva_server::ServerConfig;
use minerva_store::{ModelId, ModelStore, Registry};
use reqwest::StatusCode;
use serde_json::json;

const SYSTEM: &str = "You are a pirate. Answer every question like a pirate would.";

/// A fresh home whose store holds the chat model (a hard link), registered.
fn chat_home() -> (tempfile::TempDir, ModelStore, Arc<Registry>) {
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::new(home.path().join("models"));
    std::fs::create_dir(store.root()).unwrap();
    std::fs::hard_link(
        common::models_dir().join(format!("{CHAT}.gguf")),
        store.root().join(format!("{CHAT}.gguf")),
    )
    .unwrap();
    let registry = Arc::new(Registry::open(&home.path().join("registry.sqlite")).unwrap());
    registry
        .register(&store, &ModelId::new(CHAT).unwrap(), &mut |_, _| {})
        .unwrap();
    (home, store, registry)
}

/// A chat of one user message and no system message.
fn user_only(text: &str) -> serde_json::Value {
    json!({ "model": CHAT, "max_tokens": 2, "messages": [{ "role": "user", "content": text }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_prompt_and_a_context_size_set_for_a_model_apply_from_its_next_load() {
    let (_home, store, registry) = chat_home();
    let id = ModelId::new(CHAT).unwrap();
    let mut settings = registry.settings(&id).unwrap();
    settings.set("system", Some(SYSTEM)).unwrap();
    settings.set("num_ctx", Some("96")).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    let server = TestServer::start_on_pool(
        ServerConfig::default(),
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
    )
    .await;

    // The chat's prompt is the model's system prompt plus the user's message.
    let with_system = server.chat_tokens_with_system(CHAT, SYSTEM, "Hi").await;
    let reply = server.ok("/v1/chat/completions", &user_only("Hi")).await;
    assert_eq!(usage(&reply).0, with_system, "{reply}");
    // A chat with its own system message keeps it.
    let own = server
        .ok(
            "/v1/chat/completions",
            &json!({ "model": CHAT, "max_tokens": 2, "messages": [{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Hi" }] }),
        )
        .await;
    assert!(usage(&own).0 < with_system, "{own}");

    // The context is the model's 96 tokens, not the server's.
    let long = "word ".repeat(120);
    let refused = server.post("/v1/chat/completions", &user_only(&long)).await;
    let error = expect_error(refused, StatusCode::BAD_REQUEST, Some("messages")).await;
    assert!(error["message"].as_str().unwrap().contains("96"), "{error}");

    // Reset, unload: the next load has the server's context again (1024 here), not a
    // size remembered from the load before (96 tokens asked for a 512-cell session).
    let mut settings = registry.settings(&id).unwrap();
    settings.set("num_ctx", None).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    server.delete(&format!("/v1/models/{CHAT}")).await;
    let longer = "word ".repeat(700);
    let served = server.ok("/v1/chat/completions", &user_only(&longer)).await;
    assert!(usage(&served).0 > 600, "{served}");
}

/// An embedding model's `embedding_dtype` setting picks its precision on its next load:
/// int8 vectors (any CPU) and bf16 ones (AVX512-BF16 or AMX) are close to the f32 ones but
/// not the same, nor each other (the embedding cache keys on the dtype); reset, the next
/// load is f32 again, bit for bit what the engine computes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_models_dtype_setting_applies_from_its_next_load() {
    use common::EMBED;
    use minerva_engine::embed::{EmbedOptions, cosine_similarity};
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::new(home.path().join("models"));
    let dir = store.root().join(EMBED);
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for file in minerva_store::SENTENCE_TRANSFORMERS_FILES {
        std::fs::hard_link(common::models_dir().join(EMBED).join(file), dir.join(file)).unwrap();
    }
    let registry = Arc::new(Registry::open(&home.path().join("registry.sqlite")).unwrap());
    let id = ModelId::new(EMBED).unwrap();
    registry.register(&store, &id, &mut |_, _| {}).unwrap();
    let mut settings = registry.settings(&id).unwrap();
    assert!(settings.set("embedding_dtype", Some("int3")).is_err());
    settings.set("embedding_dtype", Some("int8")).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    let server = TestServer::start_on_pool(
        ServerConfig::default(),
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
    )
    .await;
    let text = "The quick brown fox jumps over the lazy dog.";
    let embed = || async {
        let body = server
            .ok("/v1/embeddings", &json!({ "model": EMBED, "input": text }))
            .await;
        body["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect::<Vec<f32>>()
    };
    let reference = minerva_engine::embed::load(&dir)
        .unwrap()
        .embed(&[text], EmbedOptions::default())
        .unwrap()
        .remove(0);
    let int8 = embed().await;
    let c = cosine_similarity(&int8, &reference);
    assert!(c >= 0.998 && int8 != reference, "int8 cosine {c}");

    if std::arch::is_x86_feature_detected!("avx512bf16") {
        let mut settings = registry.settings(&id).unwrap();
        settings.set("embedding_dtype", Some("bf16")).unwrap();
        registry.set_settings(&id, &settings).unwrap();
        server.delete(&format!("/v1/models/{EMBED}")).await;
        let bf16 = embed().await;
        let c = cosine_similarity(&bf16, &reference);
        assert!(c >= 0.999 && bf16 != reference && bf16 != int8, "bf16 cosine {c}");
    } else {
        eprintln!("bf16 not tested: this CPU has no AVX512-BF16");
    }

    let mut settings = registry.settings(&id).unwrap();
    settings.set("embedding_dtype", None).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    server.delete(&format!("/v1/models/{EMBED}")).await;
    assert_eq!(embed().await, reference, "f32 again after the reset and a reload");
}

/// A model's `draft_model` (a q4_0 copy of it, made by Minerva) drafts its greedy replies
/// from its next load, and its weights and KV count in the model's estimate; a draft
/// model with another vocabulary leaves the model serving without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_model_setting_drafts_from_the_next_load_and_counts_in_the_estimate() {
    use minerva_engine::llm::quantize::{QuantType, quantize};
    let (_home, store, registry) = chat_home();
    let id = ModelId::new(CHAT).unwrap();
    let draft = store.root().join("smollm2-q4.gguf");
    quantize(
        &store.root().join(format!("{CHAT}.gguf")),
        &draft,
        QuantType::Q4_0,
        minerva_engine::compute::default_threads(),
    )
    .unwrap();
    std::fs::hard_link(
        common::models_dir().join("gemma-3-270m.gguf"),
        store.root().join("gemma-3-270m.gguf"),
    )
    .unwrap();
    let server = TestServer::start_on_pool(
        ServerConfig::default(),
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
    )
    .await;
    let chat = json!({ "model": CHAT, "max_tokens": 24, "temperature": 0, "messages": [{ "role": "user", "content": "What is the capital of France?" }] });
    let loaded = || async {
        let body = server.ok_get("/v1/models/loaded").await;
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == CHAT)
            .cloned()
            .expect("the chat model is loaded")
    };
    let set_draft = |name: Option<&str>| {
        let mut settings = registry.settings(&id).unwrap();
        settings.set("draft_model", name).unwrap();
        registry.set_settings(&id, &settings).unwrap();
    };
    server.ok("/v1/chat/completions", &chat).await;
    let alone = loaded().await;
    let weights = |m: &serde_json::Value| m["estimate"]["weights"].as_u64().unwrap();

    set_draft(Some("smollm2-q4"));
    server.delete(&format!("/v1/models/{CHAT}")).await;
    let reply = server.ok("/v1/chat/completions", &chat).await;
    assert!(
        !reply["choices"][0]["message"]["content"].as_str().unwrap().is_empty(),
        "{reply}"
    );
    let with_draft = loaded().await;
    let draft_bytes = std::fs::metadata(&draft).unwrap().len();
    assert!(
        weights(&with_draft) >= weights(&alone) + draft_bytes * 9 / 10,
        "the estimate's weights {} do not hold the draft model's {draft_bytes} bytes beside the model's {}",
        weights(&with_draft),
        weights(&alone)
    );
    assert!(
        with_draft["scheduler"]["draft_accepted"].as_u64().unwrap() > 0,
        "the draft model's guesses were never accepted: {with_draft}"
    );

    // Another vocabulary: refused at the load, and the model serves without it.
    set_draft(Some("gemma-3-270m"));
    server.delete(&format!("/v1/models/{CHAT}")).await;
    server.ok("/v1/chat/completions", &chat).await;
}

/// A model's context is capped at the length it was trained with (8192 for SmolLM2) unless
/// its settings stretch it with RoPE scaling: then it reads a prompt longer than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rope_scaling_lets_a_model_read_past_its_trained_context() {
    let (_home, store, registry) = chat_home();
    let id = ModelId::new(CHAT).unwrap();
    let mut settings = registry.settings(&id).unwrap();
    settings.set("num_ctx", Some("12288")).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    let server = TestServer::start_on_pool(
        ServerConfig::default(),
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
    )
    .await;
    let n_ctx = || async {
        server
            .ok("/v1/tokenize", &json!({ "model": CHAT, "prompt": "Hi" }))
            .await["n_ctx"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(n_ctx().await, 8192, "capped at the trained context");
    // The first token's log probability for a short chat: scaled positions change it.
    let first_logprob = || async {
        let mut body = user_only("Name a colour.");
        body["logprobs"] = json!(true);
        body["temperature"] = json!(0);
        let reply = server.ok("/v1/chat/completions", &body).await;
        reply["choices"][0]["logprobs"]["content"][0]["logprob"]
            .as_f64()
            .unwrap()
    };
    let unscaled = first_logprob().await;
    let long = format!("{} Which word does this text repeat?", "Heron. ".repeat(3000));
    let refused = server.post("/v1/chat/completions", &user_only(&long)).await;
    expect_error(refused, StatusCode::BAD_REQUEST, Some("messages")).await;

    // A scaling without its factor is refused, and changes nothing.
    let mut settings = registry.settings(&id).unwrap();
    settings.set("rope_scaling", Some("yarn")).unwrap();
    assert!(registry.set_settings(&id, &settings).is_err());
    assert!(settings.set("rope_factor", Some("1")).is_err());
    settings.set("rope_factor", Some("2")).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    server.delete(&format!("/v1/models/{CHAT}")).await;
    assert_eq!(n_ctx().await, 12288, "stretched by the factor, up to num_ctx");
    let scaled = first_logprob().await;
    assert!(
        (scaled - unscaled).abs() > 1e-4,
        "YaRN changed nothing: {scaled} vs {unscaled}"
    );
    // A 9,000-token prefill takes minutes on two shared cores: this request gets a client
    // whose hang guard is longer than the common one's two minutes.
    let patient = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(900))
        .build()
        .unwrap();
    let response = patient
        .post(server.url("/v1/chat/completions"))
        .json(&user_only(&long))
        .send()
        .await
        .expect("the long chat is answered");
    let served = common::json_of(response, StatusCode::OK).await;
    let prompt = usage(&served).0;
    assert!(prompt > 8192, "{prompt} prompt tokens");
    assert!(usage(&served).1 > 0, "{served}");
}

/// Ollama's `/api/create` (its current shape, `from` + `system` + `parameters`, and its
/// older `modelfile`) makes a second name of a model with its own settings, and
/// `/api/copy` a plain second name; neither copies the file, and bad recipes are 400s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_create_and_copy_make_new_names_with_their_own_settings() {
    let (_home, store, registry) = chat_home();
    let root = store.root().to_owned();
    let server = TestServer::start_on_pool(
        ServerConfig::default(),
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
    )
    .await;
    let created = server
        .post(
            "/api/create",
            &json!({ "model": "pirate:latest", "from": CHAT, "system": SYSTEM, "parameters": { "temperature": 0.2, "num_ctx": 96 }, "stream": false }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::OK);
    assert_eq!(created.json::<serde_json::Value>().await.unwrap()["status"], "success");
    let pirate = registry.settings(&ModelId::new("pirate").unwrap()).unwrap();
    assert_eq!(
        (pirate.system.as_deref(), pirate.temperature, pirate.num_ctx),
        (Some(SYSTEM), Some(0.2), Some(96))
    );
    // One file on disk for both names.
    use std::os::unix::fs::MetadataExt;
    let inode = |name: &str| std::fs::metadata(root.join(format!("{name}.gguf"))).unwrap().ino();
    assert_eq!(inode("pirate"), inode(CHAT));
    // The new name serves with its settings: its system prompt, its context.
    let mut chat = user_only("Hi");
    chat["model"] = json!("pirate");
    let reply = server.ok("/v1/chat/completions", &chat).await;
    let with_system = server.chat_tokens_with_system(CHAT, SYSTEM, "Hi").await;
    assert_eq!(usage(&reply).0, with_system, "{reply}");
    assert_eq!(
        server
            .ok("/v1/tokenize", &json!({ "model": "pirate:latest", "prompt": "Hi" }))
            .await["n_ctx"],
        96
    );

    // The older API: a whole Modelfile, streamed progress ending in success.
    let streamed = server
        .post(
            "/api/create",
            &json!({ "name": "terse", "modelfile": format!("FROM {CHAT}\nPARAMETER top_k 5\nSYSTEM Be terse.") }),
        )
        .await;
    assert_eq!(streamed.status(), StatusCode::OK);
    let text = streamed.text().await.unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "success", "{text}");
    let terse = registry.settings(&ModelId::new("terse").unwrap()).unwrap();
    assert_eq!((terse.top_k, terse.system.as_deref()), (Some(5), Some("Be terse.")));

    // Copy: a second name, same file, none of the settings of another name.
    let copied = server
        .post("/api/copy", &json!({ "source": "pirate", "destination": "parrot" }))
        .await;
    assert_eq!(copied.status(), StatusCode::OK);
    assert_eq!(inode("parrot"), inode(CHAT));
    let tags = server.ok_get("/api/tags").await;
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for name in ["pirate:latest", "terse:latest", "parrot:latest"] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }

    // A Jinja TEMPLATE replaces the file's chat template for the new name.
    let template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:";
    let made = server
        .post(
            "/api/create",
            &json!({ "name": "plain", "modelfile": format!("FROM {CHAT}\nTEMPLATE \"\"\"{template}\"\"\""), "stream": false }),
        )
        .await;
    assert_eq!(made.status(), StatusCode::OK);
    let tokens = server
        .ok(
            "/v1/tokenize",
            &json!({ "model": "plain", "messages": [{ "role": "user", "content": "Hi" }] }),
        )
        .await["tokens"]
        .clone();
    let text = server
        .ok("/v1/detokenize", &json!({ "model": "plain", "tokens": tokens }))
        .await["content"]
        .clone();
    assert_eq!(text, "user: Hi\nassistant:");

    // Refusals: a Modelfile line, a bad parameter, an unknown base, a Go template.
    for (body, status, needle) in [
        (
            json!({ "model": "x", "modelfile": format!("FROM {CHAT}\nPARAMETER temperature hot") }),
            StatusCode::BAD_REQUEST,
            "line 2",
        ),
        (
            json!({ "model": "x", "from": CHAT, "parameters": { "top_p": 7 } }),
            StatusCode::BAD_REQUEST,
            "parameters.top_p",
        ),
        (
            json!({ "model": "x", "from": "no-such-model" }),
            StatusCode::NOT_FOUND,
            "no-such-model",
        ),
        (
            json!({ "model": "x", "from": CHAT, "template": "{{ .Prompt }}" }),
            StatusCode::BAD_REQUEST,
            "template",
        ),
    ] {
        let response = server.post("/api/create", &body).await;
        assert_eq!(response.status(), status, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap_or_default().contains(needle), "{error}");
    }
    let missing = server
        .post("/api/copy", &json!({ "source": "nothing", "destination": "y" }))
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(registry.record(&ModelId::new("x").unwrap()).unwrap().is_none());
}

/// `keep_alive` and `pinned` set for a model decide how long it stays: a keep-alive of 0
/// unloads it after each request (the next one loads it again), a request's own
/// `keep_alive` wins over the setting, and `pinned` keeps it loaded even at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pinned_settings_decide_how_long_a_model_stays() {
    let (_home, store, registry) = chat_home();
    let id = ModelId::new(CHAT).unwrap();
    let mut settings = registry.settings(&id).unwrap();
    settings.set("keep_alive", Some("0")).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    let server = TestServer::start_on_pool(
        ServerConfig::default(),
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
    )
    .await;
    // The pool handles a request's release before the next request's acquire, so the
    // load count says whether the model stayed in between.
    let loads = || async {
        server.ok_get("/v1/models/stats").await["models"][CHAT]["loads"]
            .as_u64()
            .unwrap_or(0)
    };
    server.ok("/v1/chat/completions", &user_only("Hi")).await;
    server.ok("/v1/chat/completions", &user_only("Hi")).await;
    assert_eq!(loads().await, 2, "keep_alive=0 kept the model");
    // The request's keep_alive wins over the model's: the next request finds it loaded.
    let mut body = user_only("Hi");
    body["keep_alive"] = json!("10m");
    server.ok("/v1/chat/completions", &body).await;
    server.ok("/v1/chat/completions", &user_only("Hi")).await;
    assert_eq!(loads().await, 3);

    let mut settings = registry.settings(&id).unwrap();
    settings.set("pinned", Some("true")).unwrap();
    registry.set_settings(&id, &settings).unwrap();
    // Settings apply from the next load (the last request's keep-alive of 0 unloads it;
    // the unload makes sure of it).
    server.delete(&format!("/v1/models/{CHAT}")).await;
    server.ok("/v1/chat/completions", &user_only("Hi")).await;
    server.ok("/v1/chat/completions", &user_only("Hi")).await;
    server.ok("/v1/chat/completions", &user_only("Hi")).await;
    assert_eq!(loads().await, 4, "a pinned model left between requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrative_requests_are_audited_with_the_keys_fingerprint_not_the_key() {
    let (_home, store, registry) = chat_home();
    let server = TestServer::start_on_pool(
        ServerConfig {
            api_keys: vec!["user-key".to_owned()],
            admin_api_keys: vec!["admin-key".to_owned()],
            ..ServerConfig::default()
        },
        ModelPool::with_registry(store, pool(), Arc::clone(&registry)),
    )
    .await;
    let send = |method: reqwest::Method, path: String, key: &'static str, body: Option<serde_json::Value>| {
        let mut request = server.client.request(method, server.url(&path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move { request.send().await.unwrap().status() }
    };
    let load = format!("/v1/models/{CHAT}/load");
    assert_eq!(
        send(reqwest::Method::POST, load.clone(), "admin-key", None).await,
        StatusCode::OK
    );
    // Inference is not an administrative action.
    let chat = json!({ "model": CHAT, "max_tokens": 1, "messages": [{ "role": "user", "content": "Hi" }] });
    assert_eq!(
        send(
            reqwest::Method::POST,
            "/v1/chat/completions".into(),
            "user-key",
            Some(chat)
        )
        .await,
        StatusCode::OK
    );
    let unload = format!("/v1/models/{CHAT}");
    assert_eq!(
        send(reqwest::Method::DELETE, unload.clone(), "admin-key", None).await,
        StatusCode::OK
    );
    let missing = "/v1/models/no-such-model/load".to_owned();
    assert_eq!(
        send(reqwest::Method::POST, missing.clone(), "admin-key", None).await,
        StatusCode::NOT_FOUND
    );
    // Refused attempts are audited as well: an inference key on an admin route (403), a
    // wrong key (401, by its fingerprint), none at all (401, anonymous).
    assert_eq!(
        send(reqwest::Method::POST, load.clone(), "user-key", None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(reqwest::Method::POST, load.clone(), "guessed-key", None).await,
        StatusCode::UNAUTHORIZED
    );
    let anonymous = server.client.post(server.url(&load)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // A refused inference request is not an administrative action.
    let refused_chat = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&json!({ "model": CHAT, "messages": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused_chat.status(), StatusCode::UNAUTHORIZED);

    // Written off the request's path: wait for the six rows.
    let written = common::eventually(std::time::Duration::from_secs(10), || {
        let registry = Arc::clone(&registry);
        async move { registry.audit_since(0).unwrap().len() >= 6 }
    })
    .await;
    assert!(written, "{:?}", registry.audit_since(0).unwrap());
    let log = registry.audit_since(0).unwrap();
    use sha2::Digest;
    let fingerprint: String = sha2::Sha256::digest(b"admin-key")
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    // Each row is written on a blocking thread of its own: compare them in any order.
    let mut rows: Vec<(String, String, String, String)> = log
        .iter()
        .map(|e| (e.action.clone(), e.target.clone(), e.actor.clone(), e.outcome.clone()))
        .collect();
    rows.sort();
    let actor = format!("key:{fingerprint}");
    let of = |key: &str| {
        let digest = sha2::Sha256::digest(key.as_bytes());
        format!(
            "key:{}",
            digest.iter().take(4).map(|b| format!("{b:02x}")).collect::<String>()
        )
    };
    let mut want: Vec<(String, String, String, String)> = vec![
        (
            "POST /v1/models/{id}/load".into(),
            load.clone(),
            actor.clone(),
            "200".into(),
        ),
        ("DELETE /v1/models/{id}".into(), unload, actor.clone(), "200".into()),
        ("POST /v1/models/{id}/load".into(), missing, actor, "404".into()),
        (
            "POST /v1/models/{id}/load".into(),
            load.clone(),
            of("user-key"),
            "403".into(),
        ),
        (
            "POST /v1/models/{id}/load".into(),
            load.clone(),
            of("guessed-key"),
            "401".into(),
        ),
        (
            "POST /v1/models/{id}/load".into(),
            load,
            "anonymous".into(),
            "401".into(),
        ),
    ];
    want.sort();
    assert_eq!(rows, want);
    assert!(log.iter().all(|e| {
        !["admin-key", "user-key", "guessed-key"]
            .iter()
            .any(|k| format!("{e:?}").contains(k))
    }));
}
