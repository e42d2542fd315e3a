//! The server's configuration: one struct, filled once at the edge (flags, `MINERVA_*`
//! environment variables) and passed down.

use std::net::SocketAddr;
use std::time::Duration;

use minerva_workers::embedding::CacheConfig;

/// Everything `minerva serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (loopback by default).
    pub addr: SocketAddr,
    /// API keys of the inference scope (chat, completions, embeddings, listing models);
    /// with no keys at all (neither these nor `admin_api_keys`) there is no
    /// authentication.
    pub api_keys: Vec<String>,
    /// API keys of the admin scope: everything, including loading, unloading and
    /// preloading models.
    pub admin_api_keys: Vec<String>,
    /// Origins allowed by CORS; empty means CORS is off.
    pub cors_origins: Vec<String>,
    /// Extra `Host` names accepted (besides localhost and IP addresses: loopback ones on
    /// a loopback bind, any on a wider one).
    pub allowed_hosts: Vec<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest prompt, in characters, before tokenizing.
    pub max_prompt_chars: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// `max_tokens` when the request does not say.
    pub default_max_tokens: usize,
    /// Most inputs in one embeddings request.
    pub max_embedding_inputs: usize,
    /// Inference requests running at once (at least the models' parallel generations,
    /// so that admission never holds back a request a batch slot could run).
    pub max_concurrent_requests: usize,
    /// Inference requests waiting for a slot; beyond this the server answers 503.
    pub max_queued_requests: usize,
    /// Longest wait for a slot before 503.
    pub queue_timeout: Duration,
    /// Longest a non-streaming request may take.
    pub request_timeout: Duration,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// The embedding cache: size, time-to-live, file kept across restarts.
    pub embedding_cache: CacheConfig,
    /// The Redis database behind the embedding cache, shared with other servers
    /// (`redis://HOST:PORT/DB`); `None`: this server's cache only.
    pub shared_embedding_cache: Option<String>,
    /// What a chat longer than the context gets when its request does not say.
    pub truncation: crate::Truncation,
    /// Whether generations go on past the context (context shift) when their request
    /// does not say.
    pub context_shift: bool,
    /// Per-request histograms, the `/metrics` recorder and the dashboard's figures; off
    /// only to measure what they cost (`/metrics` is then empty).
    pub monitoring: bool,
    /// Where finished generations' prompts and outputs are logged, and for how long;
    /// `None` (the default): nowhere.
    pub request_log: Option<crate::request_log::RequestLogConfig>,
    /// Where pulls go (`/api/pull`, `/v1/models/pull`), or `offline` to refuse them.
    pub pull: minerva_pull::PullOptions,
    /// The key of encryption at rest: sealed adapters (fine-tuned on private data) are
    /// opened with it into memory. `None`: sealed adapters are refused with the reason.
    pub seal_key: Option<minerva_seal::Key>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_keys: Vec::new(),
            admin_api_keys: Vec::new(),
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_body_bytes: 2 << 20,
            max_prompt_chars: 256 << 10,
            max_tokens: 4096,
            default_max_tokens: 512,
            max_embedding_inputs: 2048,
            max_concurrent_requests: 16,
            max_queued_requests: 64,
            queue_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(30),
            embedding_cache: CacheConfig::default(),
            shared_embedding_cache: None,
            truncation: crate::Truncation::Error,
            context_shift: false,
            monitoring: true,
            request_log: None,
            pull: minerva_pull::PullOptions::default(),
            seal_key: None,
        }
    }
}
