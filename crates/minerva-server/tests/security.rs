//! The server's defences, end to end: DNS-rebinding protection through the Host header,
//! API keys, and model ids that try to name paths or follow symlinks out of the models
//! directory.

mod common;

use std::path::Path;

use common::*;
use minerva_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_header_is_403() {
    let server = TestServer::shared();
    let with_host = |host: &str, request: reqwest::RequestBuilder| request.header("host", host);
    for host in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "10.0.0.1",
    ] {
        let response = with_host(host, server.client.get(server.url("/v1/models")))
            .send()
            .await
            .unwrap();
        let error = expect_error(response, StatusCode::FORBIDDEN, None).await;
        assert_eq!(error["code"], "forbidden_host", "{host}");
        // A rebound page cannot make the server run a model either.
        let response = with_host(host, server.client.post(server.url("/v1/chat/completions")))
            .json(&chat_body("Hi", json!({ "max_tokens": 1 })))
            .send()
            .await
            .unwrap();
        expect_error(response, StatusCode::FORBIDDEN, None).await;
    }
    let port = server.addr.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".to_owned(),
    ] {
        let response = with_host(&host, server.client.get(server.url("/v1/models")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_bound_beyond_loopback_still_checks_the_host() {
    let pool = minerva_pool::ModelPool::new(minerva_store::ModelStore::new(models_dir()), pool());
    let config = ServerConfig {
        allowed_hosts: vec!["minerva.lan".to_owned()],
        ..ServerConfig::default()
    };
    let server = TestServer::start_bound(config, pool, "0.0.0.0:0").await;
    let status = |host: String| {
        let request = server.client.get(server.url("/v1/models")).header("host", host);
        async move { request.send().await.unwrap().status() }
    };
    let port = server.addr.port();
    for host in [
        "evil.example".to_owned(),
        format!("evil.example:{port}"),
        "minerva.lan.evil.example".to_owned(),
    ] {
        assert_eq!(status(host.clone()).await, StatusCode::FORBIDDEN, "{host}");
    }
    for host in [
        format!("minerva.lan:{port}"),
        format!("192.168.1.20:{port}"),
        format!("localhost:{port}"),
    ] {
        assert_eq!(status(host.clone()).await, StatusCode::OK, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_keys_cannot_change_which_models_are_loaded() {
    let server = TestServer::start(ServerConfig {
        api_keys: vec!["user-key".to_owned()],
        admin_api_keys: vec!["admin-key".to_owned()],
        ..ServerConfig::default()
    })
    .await;
    let send = |method: reqwest::Method, path: &str, key: &str| {
        let request = server
            .client
            .request(method, server.url(path))
            .header("authorization", format!("bearer {key}"));
        async move { request.send().await.unwrap() }
    };
    let load = format!("/v1/models/{CHAT}/load");
    let unload = format!("/v1/models/{CHAT}");
    let preload = format!("/v1/models/{CHAT}/preload");
    for (method, path) in [
        (reqwest::Method::POST, load.as_str()),
        (reqwest::Method::DELETE, unload.as_str()),
        (reqwest::Method::POST, preload.as_str()),
    ] {
        let response = send(method.clone(), path, "user-key").await;
        let error = expect_error(response, StatusCode::FORBIDDEN, None).await;
        assert_eq!(error["code"], "insufficient_scope", "{method} {path}");
    }
    // Nor through an inference request's keep_alive (-1 would pin a model, 0 unload one).
    for keep_alive in [json!(-1), json!(0), json!("10m")] {
        let response = server
            .client
            .post(server.url("/v1/chat/completions"))
            .bearer_auth("user-key")
            .json(&chat_body("Hi", json!({ "max_tokens": 1, "keep_alive": keep_alive })))
            .send()
            .await
            .unwrap();
        let error = expect_error(response, StatusCode::FORBIDDEN, None).await;
        assert_eq!(error["code"], "insufficient_scope", "keep_alive {keep_alive}");
    }
    // The scheme is matched in any case; the inference key still reads and runs models.
    assert_eq!(
        send(reqwest::Method::GET, "/v1/models", "user-key").await.status(),
        StatusCode::OK
    );
    let response = server
        .client
        .post(server.url("/v1/chat/completions"))
        .header("authorization", "BEARER user-key")
        .json(&chat_body("Hi", json!({ "max_tokens": 1 })))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The admin key does everything.
    assert_eq!(
        send(reqwest::Method::POST, &load, "admin-key").await.status(),
        StatusCode::OK
    );
    let response = send(reqwest::Method::DELETE, &unload, "admin-key").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["unloaded"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_everything_but_health() {
    let server = TestServer::start(ServerConfig {
        api_keys: vec!["k1".to_owned()],
        ..ServerConfig::default()
    })
    .await;
    let get = |auth: Option<&str>| {
        let request = server.client.get(server.url("/v1/models"));
        match auth {
            Some(value) => request.header("authorization", value),
            None => request,
        }
    };
    for auth in [
        None,
        Some("Bearer k2"),
        Some("Bearer "),
        Some("Bearer k1x"),
        Some("k1"),
        Some("Basic k1"),
    ] {
        let response = get(auth).send().await.unwrap();
        let error = expect_error(response, StatusCode::UNAUTHORIZED, None).await;
        assert_eq!(error["code"], "invalid_api_key", "{auth:?}");
    }
    assert_eq!(get(Some("Bearer k1")).send().await.unwrap().status(), StatusCode::OK);

    // Inference and metrics need the key too; health does not.
    let chat = chat_body("Hi", json!({ "max_tokens": 1 }));
    let response = server.post("/v1/chat/completions", &chat).await;
    expect_error(response, StatusCode::UNAUTHORIZED, None).await;
    let response = server
        .client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth("k1")
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    expect_error(server.get("/metrics").await, StatusCode::UNAUTHORIZED, None).await;
    assert_eq!(server.get("/health").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_ids_that_name_paths_are_never_served() {
    let server = TestServer::shared();
    let root = models_dir().display().to_string();
    // Sent raw: a URL library would resolve the dot segments before the server saw them.
    let requests = [
        ("GET", "/v1/models/..%2Fx"),
        ("GET", "/v1/models/%2e%2e"),
        ("GET", "/v1/models/%2E%2E%2Fmodels%2Fsmollm2-135m-instruct"),
        ("GET", "/v1/models/%2Fetc%2Fpasswd"),
        ("GET", "/v1/models/..%2F..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/v1/models/../models/smollm2-135m-instruct"),
        ("GET", "/v1/models/smollm2-135m-instruct.gguf"),
        ("GET", "/v1/models/all-minilm-l6-v2%2Fmodel.safetensors"),
        ("POST", "/v1/models/..%2F..%2Fetc/load"),
        ("POST", "/v1/models/%2e%2e/load"),
        ("POST", "/v1/models/..%2Fsmollm2-135m-instruct/preload"),
        ("DELETE", "/v1/models/..%2Fsmollm2-135m-instruct"),
    ];
    for (method, path) in requests {
        let (status, body) = raw_request(server.addr, method, path, None).await;
        assert!(matches!(status, 400 | 404), "{method} {path}: {status} {body}");
        assert!(
            !body.contains(&root),
            "{method} {path} leaks the models directory: {body}"
        );
    }
    for model in [
        "../smollm2-135m-instruct",
        "../models/smollm2-135m-instruct",
        "/etc/passwd",
        ".",
        "..",
        "smollm2-135m-instruct.gguf",
        "smollm2-135m-instruct/../gemma-3-270m",
    ] {
        let response = server
            .post(
                "/v1/chat/completions",
                &chat_body("Hi", json!({ "model": model, "max_tokens": 1 })),
            )
            .await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(matches!(status.as_u16(), 400 | 404), "{model}: {status} {body}");
        assert!(!body.contains(&root), "{model} leaks the models directory: {body}");
        let response = server
            .post(
                "/v1/embeddings",
                &json!({ "model": format!("../{EMBED}"), "input": "x" }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}

/// Links `target` as `link`, as a hard link where possible (so it is inside the directory
/// after symlinks are followed), else as a copy.
fn place(target: &Path, link: &Path) {
    if std::fs::hard_link(target, link).is_err() {
        std::fs::copy(target, link).expect("copy a model");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_out_of_the_models_directory_is_not_a_model() {
    let real = models_dir();
    let dir = tempfile::tempdir().expect("temp dir");
    let models = dir.path();
    // Inside: a real model, and a symlink to it that stays inside.
    place(&real.join(format!("{CHAT}.gguf")), &models.join(format!("{CHAT}.gguf")));
    std::os::unix::fs::symlink(format!("{CHAT}.gguf"), models.join("alias.gguf")).unwrap();
    // Leading out: a real GGUF file and a real embedding model directory elsewhere.
    std::os::unix::fs::symlink(real.join(format!("{BASE}.gguf")), models.join("escape.gguf")).unwrap();
    std::os::unix::fs::symlink(real.join(EMBED), models.join("escape-dir")).unwrap();

    let server = TestServer::start_with(ServerConfig::default(), pool(), models.to_owned()).await;
    let list = server.ok_get("/v1/models").await;
    let mut ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["alias", CHAT], "{list}");

    for id in ["escape", "escape-dir"] {
        let error = expect_error(
            server.get(&format!("/v1/models/{id}")).await,
            StatusCode::NOT_FOUND,
            None,
        )
        .await;
        assert_eq!(error["code"], "model_not_found");
        for (method, path) in [
            ("POST", format!("/v1/models/{id}/load")),
            ("POST", format!("/v1/models/{id}/preload")),
            ("DELETE", format!("/v1/models/{id}")),
        ] {
            let (status, body) = raw_request(server.addr, method, &path, None).await;
            assert_eq!(status, 404, "{method} {path}: {body}");
        }
    }
    let response = server
        .post(
            "/v1/completions",
            &completion_body("escape", "Hi", json!({ "max_tokens": 1 })),
        )
        .await;
    expect_error(response, StatusCode::NOT_FOUND, Some("model")).await;
    let response = server
        .post("/v1/embeddings", &json!({ "model": "escape-dir", "input": "x" }))
        .await;
    expect_error(response, StatusCode::NOT_FOUND, Some("model")).await;
    // Nothing outside was loaded.
    assert_eq!(server.ok_get("/v1/models/loaded").await["data"], json!([]));

    // The symlink that stays inside works like the model it names.
    let body = server
        .ok(
            "/v1/completions",
            &completion_body("alias", "Hi", json!({ "max_tokens": 2 })),
        )
        .await;
    assert_eq!(body["model"], "alias");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_cannot_change_or_use_the_server() {
    let server = TestServer::shared();
    let port = server.addr.port();
    // A form post from a foreign page (no preflight for text/plain or a form).
    for (path, body) in [
        (format!("/v1/models/{CHAT}/remove"), ""),
        ("/api/pull".to_owned(), r#"{"model": "evil/model"}"#),
        (
            "/api/chat".to_owned(),
            r#"{"model": "smollm2-135m-instruct", "messages": []}"#,
        ),
    ] {
        let response = server
            .client
            .post(server.url(&path))
            .header("origin", "http://evil.example")
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await
            .unwrap();
        if path.starts_with("/api/") {
            // Ollama's routes answer in Ollama's error shape.
            let body = json_of(response, StatusCode::FORBIDDEN).await;
            assert!(body["error"].as_str().unwrap().contains("cross-origin"), "{body}");
        } else {
            let error = expect_error(response, StatusCode::FORBIDDEN, None).await;
            assert_eq!(error["code"], "forbidden_origin", "{path}");
        }
    }
    // Reads stay open to any page (CORS decides what it may see), and the server's own
    // origin may post.
    let read = server
        .client
        .get(server.url("/v1/models"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let same = server
        .client
        .post(server.url("/v1/tokenize"))
        .header("origin", format!("http://127.0.0.1:{port}"))
        .json(&json!({ "model": CHAT, "prompt": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), StatusCode::OK);
}
