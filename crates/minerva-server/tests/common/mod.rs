//! Shared set-up of the server's end-to-end tests: the real server on a real loopback
//! port, over the real default models, spoken to by a real HTTP client.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use minerva_pool::{ModelPool, PoolConfig};
use minerva_server::ServerConfig;
use minerva_store::ModelStore;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const CHAT: &str = "smollm2-135m-instruct";
pub const BASE: &str = "gemma-3-270m";
pub const EMBED: &str = "all-minilm-l6-v2";

/// A prompt that a model continues for as long as it is allowed (it never reaches an
/// end-of-generation token within a test's budget).
pub const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,";

/// Every core per forward pass (the tests of a binary share the process's one compute
/// budget, so their passes take turns on all the cores) and a small context.
/// One generation at a time and no prefix cache: tests that compare two runs of one seeded
/// request share the server with other tests, and batch mates or cached prefixes change a
/// logit's last bits (llama.cpp's attention kernels depend on the pass size and on how far
/// the KV cells in use extend), which can flip a sampled token. Batching and the prefix
/// cache are tested in minerva-workers.
pub fn pool() -> PoolConfig {
    PoolConfig {
        parallel: 1,
        prefix_cache_tokens: 0,
        ..PoolConfig::new(minerva_engine::compute::default_threads(), 1024)
    }
}

/// The models directory the project's set-up fills (`scripts/fetch-models.sh`).
pub fn models_dir() -> PathBuf {
    let home = std::env::var_os("MINERVA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".local/share/minerva"));
    let dir = home.join("models");
    for model in [format!("{CHAT}.gguf"), format!("{BASE}.gguf"), EMBED.to_owned()] {
        assert!(
            dir.join(&model).exists(),
            "{} is missing: run scripts/fetch-models.sh",
            dir.join(model).display()
        );
    }
    dir
}

/// A fresh HTTP client. Each test makes its own: a client's pooled connections belong to
/// the runtime that opened them, and every `#[tokio::test]` has its own runtime.
pub fn client() -> reqwest::Client {
    // reqwest has TLS without a provider of its own in this workspace (minerva-pull's).
    minerva_pull::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("HTTP client")
}

/// A running server: its address and the means to stop it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server with `config` over the real models directory on the current runtime.
    pub async fn start(config: ServerConfig) -> Self {
        Self::start_with(config, pool(), models_dir()).await
    }

    /// Starts a server with its own pool over `models` on the current runtime; it stops when
    /// [`TestServer::trigger_shutdown`] is called or the test's runtime ends.
    pub async fn start_with(config: ServerConfig, pool: PoolConfig, models: PathBuf) -> Self {
        Self::start_on_pool(config, ModelPool::new(ModelStore::new(models), pool)).await
    }

    /// Starts a server over `pool` on the current runtime.
    pub async fn start_on_pool(config: ServerConfig, pool: ModelPool) -> Self {
        Self::start_bound(config, pool, "127.0.0.1:0").await
    }

    /// Starts a server over `pool` listening on `bind` (a port of 0 picks a free one); the
    /// client reaches it through loopback.
    pub async fn start_bound(config: ServerConfig, pool: ModelPool, bind: &str) -> Self {
        Self::start_routed(config, pool, bind, None).await
    }

    /// Starts a server over `pool` listening on `bind`, with the routes of `routing` (the
    /// configuration file's aliases and fallback chains).
    pub async fn start_routed(
        config: ServerConfig,
        pool: ModelPool,
        bind: &str,
        routing: Option<minerva_server::routing::Routing>,
    ) -> Self {
        Self::start_shared(config, Arc::new(pool), bind, routing).await
    }

    /// [`TestServer::start_routed`] over a pool the test keeps a handle to (to hold a
    /// lease of its own).
    pub async fn start_shared(
        mut config: ServerConfig,
        pool: Arc<ModelPool>,
        bind: &str,
        routing: Option<minerva_server::routing::Routing>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind(bind).await.expect("bind a port");
        let bound = listener.local_addr().expect("local address");
        config.addr = bound;
        let addr = SocketAddr::from(([127, 0, 0, 1], bound.port()));
        let mut state = minerva_server::state(config, pool);
        if let Some(routing) = routing {
            state.routing = Arc::new(routing);
        }
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(minerva_server::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            client: client(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The server every test of a binary shares (default configuration, real models). It
    /// runs on a runtime of its own so that it outlives each test's runtime.
    pub fn shared() -> Self {
        static ADDR: OnceLock<SocketAddr> = OnceLock::new();
        let addr = *ADDR.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("shared-server".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("server runtime");
                    runtime.block_on(async move {
                        let server = Self::start(ServerConfig::default()).await;
                        tx.send(server.addr).expect("report the address");
                        // Serves until the test process exits.
                        let _ = server.task.expect("server task").await;
                    });
                })
                .expect("server thread");
            rx.recv().expect("the shared server starts")
        });
        Self {
            addr,
            client: client(),
            shutdown: None,
            task: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.expect("POST")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.expect("DELETE")
    }

    /// POSTs raw bytes as JSON.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST")
    }

    /// POSTs `body` and expects 200 with a JSON body.
    pub async fn ok(&self, path: &str, body: &Value) -> Value {
        json_of(self.post(path, body).await, StatusCode::OK).await
    }

    /// GETs `path` and expects 200 with a JSON body.
    pub async fn ok_get(&self, path: &str) -> Value {
        json_of(self.get(path).await, StatusCode::OK).await
    }

    /// Prompt tokens of a chat of `model` with a system message and one user message, as
    /// `/v1/tokenize` counts them (what a chat that gets `system` from the model's
    /// settings must cost).
    pub async fn chat_tokens_with_system(&self, model: &str, system: &str, user: &str) -> u64 {
        self.ok(
            "/v1/tokenize",
            &serde_json::json!({ "model": model, "messages": [{ "role": "system", "content": system }, { "role": "user", "content": user }] }),
        )
        .await["count"]
            .as_u64()
            .expect("a token count")
    }

    /// Token count of `text` as `/v1/tokenize` reports it.
    pub async fn token_count(&self, model: &str, text: &str, parse_special: bool) -> usize {
        let body = self
            .ok(
                "/v1/tokenize",
                &json!({ "model": model, "prompt": text, "parse_special": parse_special }),
            )
            .await;
        let count = body["count"].as_u64().expect("count") as usize;
        assert_eq!(count, body["tokens"].as_array().expect("tokens").len());
        count
    }

    /// Signals shutdown without waiting.
    pub fn trigger_shutdown(&mut self) {
        let _ = self.shutdown.take().expect("own server").send(());
    }

    /// Waits for `serve` to return after [`TestServer::trigger_shutdown`].
    pub async fn stopped(mut self) -> std::io::Result<()> {
        let task = self.task.take().expect("own server");
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task")
    }
}

/// Checks the status and returns the JSON body (printing the body when the status is wrong).
pub async fn json_of(response: reqwest::Response, status: StatusCode) -> Value {
    let got = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Checks an OpenAI-style error: the status, `{"error": {message, type, param, code}}`
/// with a non-empty message, and the given `param`. Returns the error object.
pub async fn expect_error(response: reqwest::Response, status: StatusCode, param: Option<&str>) -> Value {
    assert!(
        response.headers().contains_key("x-request-id"),
        "error without x-request-id"
    );
    let body = json_of(response, status).await;
    let error = &body["error"];
    for field in ["message", "type", "param", "code"] {
        assert!(error.get(field).is_some(), "error body lacks {field}: {body}");
    }
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "empty message: {body}"
    );
    assert!(error["type"].is_string(), "{body}");
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
    }
    error.clone()
}

/// One server-sent event's data.
#[derive(Debug)]
pub enum SseData {
    Json(Value),
    Done,
}

/// Reads an SSE response to its end: every event's data must be JSON or `[DONE]`, and
/// `[DONE]` must be the last event.
pub async fn read_sse(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let mut events = SseReader::new(response);
    let mut chunks = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            SseData::Json(value) => chunks.push(value),
            SseData::Done => {
                assert!(events.next().await.is_none(), "an event after [DONE]");
                return chunks;
            }
        }
    }
    panic!("the stream ended without data: [DONE]");
}

/// Splits an SSE body into events as bytes arrive.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    /// The next event's data (keep-alive comments skipped), or `None` at the end.
    pub async fn next(&mut self) -> Option<SseData> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                // Events are whole UTF-8: the server never splits a character across them.
                let event = String::from_utf8(event).expect("an SSE event is valid UTF-8");
                let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                if data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                let data = data.join("\n");
                if data == "[DONE]" {
                    return Some(SseData::Done);
                }
                let value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event is not JSON ({e}): {data}"));
                return Some(SseData::Json(value));
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(e)) => panic!("stream failed: {e}"),
                None => {
                    assert!(
                        self.buffer.iter().all(u8::is_ascii_whitespace),
                        "stream ended inside an event"
                    );
                    return None;
                }
            }
        }
    }
}

/// Sends a raw HTTP/1.1 request (for paths a URL library would normalize) and returns the
/// status and body.
pub async fn raw_request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `condition` until it holds or `deadline` passes (for effects that have no event
/// to wait on, such as a background preload).
pub async fn eventually<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A chat request body with a fixed system message.
pub fn chat_body(user: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": CHAT,
        "messages": [
            { "role": "system", "content": "You are a helpful assistant." },
            { "role": "user", "content": user },
        ],
    });
    merge(&mut body, extra);
    body
}

/// The ChatML text SmolLM2's template renders for [`chat_body`]'s messages.
pub fn chatml(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// A text-completion request body.
pub fn completion_body(model: &str, prompt: &str, extra: Value) -> Value {
    let mut body = json!({ "model": model, "prompt": prompt });
    merge(&mut body, extra);
    body
}

/// Adds the fields of `extra` (an object) to `body`.
pub fn merge(body: &mut Value, extra: Value) {
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            body[k] = v;
        }
    }
}

/// The text of a chat stream: the concatenated `delta.content` of its chunks.
pub fn chat_stream_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter_map(|c| c["delta"]["content"].as_str())
        .collect()
}

/// The text of a completion stream.
pub fn completion_stream_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter_map(|c| c["text"].as_str())
        .collect()
}

pub fn usage(body: &Value) -> (u64, u64, u64) {
    let u = &body["usage"];
    let get = |k: &str| u[k].as_u64().unwrap_or_else(|| panic!("usage.{k} missing: {body}"));
    let usage = (get("prompt_tokens"), get("completion_tokens"), get("total_tokens"));
    assert_eq!(usage.0 + usage.1, usage.2, "total_tokens is the sum: {body}");
    usage
}

/// The `x-minerva-route` header of a response (empty without one).
pub fn route_header(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-minerva-route")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A short greedy chat of "Hi" to `model` (a model, an alias, a route, a backend).
pub fn short_chat(model: &str, extra: Value) -> Value {
    let mut body =
        json!({ "model": model, "max_tokens": 4, "temperature": 0, "messages": [{ "role": "user", "content": "Hi" }] });
    merge(&mut body, extra);
    body
}

/// A server over the real models with the routes of the configuration file `config`.
pub async fn start_with_routes(config: PathBuf) -> TestServer {
    let store = ModelStore::new(models_dir());
    let routing = minerva_server::routing::Routing::load(Some(config), store.clone()).expect("the routes parse");
    TestServer::start_routed(
        ServerConfig::default(),
        ModelPool::new(store, pool()),
        "127.0.0.1:0",
        Some(routing),
    )
    .await
}

/// A counter of the chat model's scheduler on `server` (`prompt_tokens_evaluated`,
/// `context_shifts`), from `/v1/models/loaded`: this server's own figure, where
/// `/metrics` is the process's, shared by every server of a test binary.
pub async fn scheduler_count(server: &TestServer, field: &str) -> u64 {
    let loaded = server.ok_get("/v1/models/loaded").await;
    loaded["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|m| m["id"] == CHAT)
        .and_then(|m| m["scheduler"][field].as_u64())
        .unwrap_or(0)
}

/// The vectors of an embeddings response, in order.
pub fn vectors(body: &Value) -> Vec<Vec<f32>> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("float") as f32)
                .collect()
        })
        .collect()
}

/// The bits of `v`, to compare vectors exactly.
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
