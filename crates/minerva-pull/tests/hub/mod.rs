//! A local server that imitates a Hugging Face hub, an Ollama registry and a file server,
//! with faults on request: a connection dropped or stalled mid-file, a lying hash, a 404.
//! Shared by the pull tests and the server's pull endpoint tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

/// One file the hub serves.
#[derive(Clone)]
pub struct HubFile {
    pub bytes: Arc<Vec<u8>>,
    pub sha256: String,
    /// What the hub's metadata claims the SHA-256 is (a liar differs from `sha256`).
    pub claimed_sha256: String,
}

impl HubFile {
    pub fn new(bytes: Arc<Vec<u8>>) -> Self {
        let sha256 = hex(&Sha256::digest(&*bytes));
        Self {
            bytes,
            claimed_sha256: sha256.clone(),
            sha256,
        }
    }
}

#[derive(Default)]
pub struct HubState {
    /// `owner/repo` → files by path.
    pub repos: Mutex<HashMap<String, Vec<(String, HubFile)>>>,
    /// Files served at `/files/NAME` and as registry blobs (by SHA-256).
    pub plain: Mutex<HashMap<String, HubFile>>,
    /// Registry manifests: `namespace/name:tag` → the model file.
    pub manifests: Mutex<HashMap<String, HubFile>>,
    /// The next download of a file (by SHA-256) stops after this many bytes.
    pub drop_after: Mutex<HashMap<String, u64>>,
    /// The next download of a file (by SHA-256) sends this many bytes, then nothing more:
    /// the connection stays open, as a stalled network's does.
    pub stall_after: Mutex<HashMap<String, u64>>,
    /// Every file request: (path, Range header).
    pub downloads: Mutex<Vec<(String, Option<String>)>>,
    /// Every request path.
    pub requests: Mutex<Vec<String>>,
}

pub struct FakeHub {
    pub url: String,
    pub state: Arc<HubState>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeHub {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// The hub over HTTPS with `tls` (a certificate for `localhost`); its URL names
    /// `localhost` so that the certificate matches.
    pub fn start_tls(tls: tokio_rustls::rustls::ServerConfig) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<tokio_rustls::rustls::ServerConfig>) -> Self {
        let state = Arc::new(HubState::default());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = Router::new()
            .route("/api/models/{owner}/{repo}/tree/main", get(tree))
            .route("/{owner}/{repo}/resolve/main/{*file}", get(resolve))
            .route("/v2/{namespace}/{name}/manifests/{tag}", get(manifest))
            .route("/v2/{namespace}/{name}/blobs/{digest}", get(blob))
            .route("/files/{*name}", get(plain))
            .layer(axum::middleware::from_fn_with_state(state.clone(), log))
            .with_state(state.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            None => {
                runtime.spawn(async move { axum::serve(listener, app).await });
                format!("http://127.0.0.1:{port}")
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
                runtime.spawn(async move { axum::serve(TlsListener { listener, acceptor }, app).await });
                format!("https://localhost:{port}")
            }
        };
        Self {
            url,
            state,
            _runtime: runtime,
        }
    }

    pub fn add_repo_file(&self, repo: &str, path: &str, file: HubFile) {
        self.state
            .repos
            .lock()
            .unwrap()
            .entry(repo.to_owned())
            .or_default()
            .push((path.to_owned(), file));
    }

    pub fn add_plain(&self, name: &str, file: HubFile) {
        self.state.plain.lock().unwrap().insert(name.to_owned(), file);
    }

    pub fn add_manifest(&self, reference: &str, file: HubFile) {
        self.state
            .plain
            .lock()
            .unwrap()
            .insert(format!("sha256:{}", file.sha256), file.clone());
        self.state.manifests.lock().unwrap().insert(reference.to_owned(), file);
    }

    pub fn drop_next_download_after(&self, file: &HubFile, bytes: u64) {
        self.state.drop_after.lock().unwrap().insert(file.sha256.clone(), bytes);
    }

    pub fn stall_next_download_after(&self, file: &HubFile, bytes: u64) {
        self.state
            .stall_after
            .lock()
            .unwrap()
            .insert(file.sha256.clone(), bytes);
    }

    pub fn downloads(&self) -> Vec<(String, Option<String>)> {
        self.state.downloads.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }
}

/// TCP connections through a TLS handshake; a failed handshake (a client that does not
/// trust the certificate) is dropped and the next connection accepted.
struct TlsListener {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.listener.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

async fn log(
    State(state): State<Arc<HubState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    state.requests.lock().unwrap().push(request.uri().path().to_owned());
    next.run(request).await
}

async fn tree(State(state): State<Arc<HubState>>, Path((owner, repo)): Path<(String, String)>) -> Response {
    let repos = state.repos.lock().unwrap();
    let Some(files) = repos.get(&format!("{owner}/{repo}")) else {
        return (StatusCode::NOT_FOUND, "Repository not found").into_response();
    };
    let entries: Vec<serde_json::Value> = files
        .iter()
        .map(|(path, f)| {
            serde_json::json!({
                "type": "file",
                "oid": "0123456789abcdef0123456789abcdef01234567",
                "size": f.bytes.len(),
                "path": path,
                "lfs": { "oid": f.claimed_sha256, "size": f.bytes.len(), "pointerSize": 134 },
            })
        })
        .collect();
    axum::Json(entries).into_response()
}

async fn resolve(
    State(state): State<Arc<HubState>>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let file = state
        .repos
        .lock()
        .unwrap()
        .get(&format!("{owner}/{repo}"))
        .and_then(|files| files.iter().find(|(p, _)| *p == path).map(|(_, f)| f.clone()));
    serve(&state, &format!("/{owner}/{repo}/resolve/main/{path}"), file, &headers)
}

async fn manifest(
    State(state): State<Arc<HubState>>,
    Path((namespace, name, tag)): Path<(String, String, String)>,
) -> Response {
    let Some(file) = state
        .manifests
        .lock()
        .unwrap()
        .get(&format!("{namespace}/{name}:{tag}"))
        .cloned()
    else {
        return (StatusCode::NOT_FOUND, "manifest unknown").into_response();
    };
    axum::Json(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:00", "size": 2 },
        "layers": [
            { "mediaType": "application/vnd.ollama.image.template", "digest": "sha256:11", "size": 10 },
            { "mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{}", file.claimed_sha256), "size": file.bytes.len() },
        ],
    }))
    .into_response()
}

async fn blob(
    State(state): State<Arc<HubState>>,
    Path((namespace, name, digest)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let file = state.plain.lock().unwrap().get(&digest).cloned();
    serve(
        &state,
        &format!("/v2/{namespace}/{name}/blobs/{digest}"),
        file,
        &headers,
    )
}

async fn plain(State(state): State<Arc<HubState>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let file = state.plain.lock().unwrap().get(&name).cloned();
    serve(&state, &format!("/files/{name}"), file, &headers)
}

/// Serves a file with `Range: bytes=N-` support, dropping the connection where asked.
fn serve(state: &HubState, path: &str, file: Option<HubFile>, headers: &HeaderMap) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.downloads.lock().unwrap().push((path.to_owned(), range.clone()));
    let Some(file) = file else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    let len = file.bytes.len() as u64;
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<u64>().ok());
    if start.is_some_and(|s| s >= len) {
        return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    }
    let from = start.unwrap_or(0);
    let stop_at = state.drop_after.lock().unwrap().remove(&file.sha256);
    let stall_at = state.stall_after.lock().unwrap().remove(&file.sha256);
    let bytes = file.bytes.clone();
    let end = stop_at.or(stall_at).map_or(len, |n| (from + n).min(len));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (from..end)
        .step_by(1 << 20)
        .map(|at| Ok(bytes[at as usize..(at + (1 << 20)).min(end) as usize].to_vec()))
        .chain(stop_at.map(|_| Err(std::io::Error::other("connection dropped on purpose"))))
        .collect();
    let chunks = futures_util::stream::iter(chunks);
    let body = match stall_at {
        None => Body::from_stream(chunks),
        Some(_) => Body::from_stream(chunks.chain(futures_util::stream::pending())),
    };
    let mut response = Response::builder()
        .header(header::CONTENT_LENGTH, len - from)
        .header(header::ACCEPT_RANGES, "bytes");
    response = if start.is_some() {
        response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {from}-{}/{len}", len - 1))
    } else {
        response.status(StatusCode::OK)
    };
    response.body(body).unwrap()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
