//! `minerva serve`: flags, `MINERVA_*` variables and an optional TOML config file become
//! one `ServerConfig` (flags and variables win over the file, the file over the
//! defaults), then the server runs until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use minerva_runtime::{ModelPool, ModelStore, PoolConfig};
use minerva_server::ServerConfig;

use crate::model_arg;

/// Settings that a flag, a variable or the config file can give. The file uses the same
/// names with underscores (`max_body_bytes = 1048576`).
#[derive(clap::Args, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "MINERVA_ADDR")]
    addr: Option<SocketAddr>,
    /// Accepted API key (repeatable); without one, no authentication.
    #[arg(
        long = "api-key",
        env = "MINERVA_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(default)]
    api_keys: Vec<String>,
    /// File with one API key per line.
    #[arg(long, env = "MINERVA_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Origin allowed by CORS (repeatable); CORS is off without one.
    #[arg(long = "cors-origin", env = "MINERVA_CORS_ORIGINS", value_delimiter = ',')]
    #[serde(default)]
    cors_origins: Vec<String>,
    /// Extra Host name accepted on a loopback bind (repeatable).
    #[arg(long = "allowed-host", env = "MINERVA_ALLOWED_HOSTS", value_delimiter = ',')]
    #[serde(default)]
    allowed_hosts: Vec<String>,
    /// Largest request body in bytes [default: 2 MiB].
    #[arg(long, env = "MINERVA_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Largest max_tokens a request may ask for [default: 4096].
    #[arg(long, env = "MINERVA_MAX_TOKENS")]
    max_tokens: Option<usize>,
    /// Inference requests running at once [default: --parallel].
    #[arg(long, env = "MINERVA_MAX_CONCURRENT")]
    max_concurrent: Option<usize>,
    /// Requests waiting for a slot before the server answers 503 [default: 64].
    #[arg(long, env = "MINERVA_MAX_QUEUED")]
    max_queued: Option<usize>,
    /// Seconds a non-streaming request may take [default: 600].
    #[arg(long, env = "MINERVA_REQUEST_TIMEOUT")]
    request_timeout: Option<u64>,
    /// Context size per language model [default: 4096].
    #[arg(long, env = "MINERVA_CTX")]
    ctx: Option<u32>,
    /// CPU threads per forward pass [default: all cores].
    #[arg(long, short, env = "MINERVA_THREADS")]
    threads: Option<usize>,
    /// Generations each language model runs at once, batched together [default: 16].
    #[arg(long, env = "MINERVA_PARALLEL")]
    parallel: Option<usize>,
    /// Prompt tokens whose KV each language model keeps for reuse, 0 for none [default: 4096].
    #[arg(long, env = "MINERVA_PREFIX_CACHE_TOKENS")]
    prefix_cache_tokens: Option<usize>,
}

#[derive(clap::Args)]
pub struct Args {
    /// TOML file with any of the settings below.
    #[arg(long, env = "MINERVA_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// `self` where set, else `file`.
    fn over(self, file: Settings) -> Settings {
        let list = |flag: Vec<String>, file: Vec<String>| if flag.is_empty() { file } else { flag };
        Settings {
            addr: self.addr.or(file.addr),
            api_keys: list(self.api_keys, file.api_keys),
            api_key_file: self.api_key_file.or(file.api_key_file),
            cors_origins: list(self.cors_origins, file.cors_origins),
            allowed_hosts: list(self.allowed_hosts, file.allowed_hosts),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes),
            max_tokens: self.max_tokens.or(file.max_tokens),
            max_concurrent: self.max_concurrent.or(file.max_concurrent),
            max_queued: self.max_queued.or(file.max_queued),
            request_timeout: self.request_timeout.or(file.request_timeout),
            ctx: self.ctx.or(file.ctx),
            threads: self.threads.or(file.threads),
            parallel: self.parallel.or(file.parallel),
            prefix_cache_tokens: self.prefix_cache_tokens.or(file.prefix_cache_tokens),
        }
    }

    fn read(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
    }

    fn into_configs(self) -> Result<(ServerConfig, PoolConfig)> {
        let defaults = ServerConfig::default();
        let mut api_keys = self.api_keys;
        if let Some(file) = &self.api_key_file {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            api_keys.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned));
        }
        let parallel = self.parallel.unwrap_or(PoolConfig::DEFAULT_PARALLEL).max(1);
        let server = ServerConfig {
            addr: self.addr.unwrap_or(defaults.addr),
            api_keys,
            cors_origins: self.cors_origins,
            allowed_hosts: self.allowed_hosts,
            max_body_bytes: self.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_tokens: self.max_tokens.unwrap_or(defaults.max_tokens),
            // Admission never holds back a generation that a batch slot could run.
            max_concurrent_requests: self
                .max_concurrent
                .unwrap_or(defaults.max_concurrent_requests.max(parallel)),
            max_queued_requests: self.max_queued.unwrap_or(defaults.max_queued_requests),
            request_timeout: self
                .request_timeout
                .map_or(defaults.request_timeout, Duration::from_secs),
            ..defaults
        };
        let pool = PoolConfig {
            threads: self.threads.unwrap_or_else(model_arg::default_threads),
            n_ctx: self.ctx.unwrap_or(4096),
            parallel,
            prefix_cache_tokens: self
                .prefix_cache_tokens
                .unwrap_or(PoolConfig::DEFAULT_PREFIX_CACHE_TOKENS),
        };
        Ok((server, pool))
    }
}

pub fn run(store: ModelStore, args: Args) -> Result<()> {
    let file = match &args.config {
        Some(path) => Settings::read(path)?,
        None => Settings::default(),
    };
    let (config, pool_config) = args.settings.over(file).into_configs()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("minerva.toml");
        std::fs::write(
            &path,
            "addr = \"127.0.0.1:9999\"\nmax_tokens = 100\napi_keys = [\"from-file\"]\nctx = 2048\n",
        )
        .unwrap();
        let flags = Settings {
            max_tokens: Some(7),
            ..Settings::default()
        };
        let (server, pool) = flags.over(Settings::read(&path).unwrap()).into_configs().unwrap();
        assert_eq!(server.addr.port(), 9999);
        assert_eq!(server.max_tokens, 7);
        assert_eq!(server.api_keys, ["from-file"]);
        assert_eq!(pool.n_ctx, 2048);
        assert_eq!(server.max_body_bytes, ServerConfig::default().max_body_bytes);
        assert_eq!(pool.parallel, PoolConfig::DEFAULT_PARALLEL);
        assert!(server.max_concurrent_requests >= pool.parallel);
    }

    #[test]
    fn unknown_keys_in_the_file_are_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "max_tokenz = 5\n").unwrap();
        let err = format!("{:#}", Settings::read(&path).err().unwrap());
        assert!(err.contains("bad.toml") && err.contains("max_tokenz"), "{err}");
    }
}
