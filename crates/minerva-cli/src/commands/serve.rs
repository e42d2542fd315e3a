//! `minerva serve`: flags and `MINERVA_*` variables become one `ServerConfig`, then the
//! server runs until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use minerva_runtime::{ModelPool, ModelStore, PoolConfig};
use minerva_server::ServerConfig;

use crate::model_arg;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "MINERVA_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Accepted API key (repeatable); without one, no authentication.
    #[arg(long = "api-key", env = "MINERVA_API_KEY", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// File with one API key per line.
    #[arg(long, env = "MINERVA_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Origin allowed by CORS (repeatable); CORS is off without one.
    #[arg(long = "cors-origin", env = "MINERVA_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Extra Host name accepted on a loopback bind (repeatable).
    #[arg(long = "allowed-host", env = "MINERVA_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Largest request body in bytes.
    #[arg(long, env = "MINERVA_MAX_BODY_BYTES", default_value_t = 2 << 20)]
    max_body_bytes: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, env = "MINERVA_MAX_TOKENS", default_value_t = 4096)]
    max_tokens: usize,
    /// Inference requests running at once.
    #[arg(long, env = "MINERVA_MAX_CONCURRENT", default_value_t = 4)]
    max_concurrent: usize,
    /// Requests waiting for a slot before the server answers 503.
    #[arg(long, env = "MINERVA_MAX_QUEUED", default_value_t = 64)]
    max_queued: usize,
    /// Seconds a non-streaming request may take.
    #[arg(long, env = "MINERVA_REQUEST_TIMEOUT", default_value_t = 600)]
    request_timeout: u64,
    /// Context size per language model.
    #[arg(long, env = "MINERVA_CTX", default_value_t = 4096)]
    ctx: u32,
    /// CPU threads per forward pass.
    #[arg(long, short, env = "MINERVA_THREADS")]
    threads: Option<usize>,
}

pub fn run(store: ModelStore, args: Args) -> Result<()> {
    let mut api_keys = args.api_keys;
    if let Some(file) = &args.api_key_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        api_keys.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned));
    }
    let config = ServerConfig {
        addr: args.addr,
        api_keys,
        cors_origins: args.cors_origins,
        allowed_hosts: args.allowed_hosts,
        max_body_bytes: args.max_body_bytes,
        max_tokens: args.max_tokens,
        max_concurrent_requests: args.max_concurrent,
        max_queued_requests: args.max_queued,
        request_timeout: Duration::from_secs(args.request_timeout),
        ..ServerConfig::default()
    };
    let pool_config = PoolConfig {
        threads: args.threads.unwrap_or_else(model_arg::default_threads),
        n_ctx: args.ctx,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let addr = listener.local_addr()?;
        let models = store.list().map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "minerva listening on http://{addr} ({models} models in {})",
            store.root().display()
        );
        let pool = Arc::new(ModelPool::new(store, pool_config));
        let state = minerva_server::state(config, pool);
        minerva_server::serve(listener, state, minerva_server::shutdown_signal()).await?;
        Ok(())
    })
}
