//! `minerva serve`: flags, `MINERVA_*` variables and an optional TOML config file become
//! one `ServerConfig` (flags and variables win over the file, the file over the
//! defaults), then the server runs until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use minerva_pool::preload::{self, PreloadConfig};
use minerva_pool::{Budget, ModelPool, PoolConfig};
use minerva_server::ServerConfig;
use minerva_store::patterns::PreloadStrategy;
use minerva_store::{ModelId, ModelStore};
use minerva_workers::embedding::CacheConfig;
use minerva_workers::pressure::BudgetStrategy;

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
    /// Admin API key (repeatable): everything an API key may do, plus loading, unloading
    /// and preloading models, which --api-key keys may not.
    #[arg(
        long = "admin-api-key",
        env = "MINERVA_ADMIN_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(default)]
    admin_api_keys: Vec<String>,
    /// Origin allowed by CORS (repeatable); CORS is off without one.
    #[arg(long = "cors-origin", env = "MINERVA_CORS_ORIGINS", value_delimiter = ',')]
    #[serde(default)]
    cors_origins: Vec<String>,
    /// Extra Host name the server answers to (repeatable): the names a LAN deployment is
    /// reached by. Besides these only localhost and IP addresses are accepted.
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
    /// Fixed memory budget for loaded models, e.g. 4GiB or 512MB [default: follows system memory].
    #[arg(long, env = "MINERVA_MEMORY_BUDGET")]
    memory_budget: Option<String>,
    /// How much memory the dynamic budget leaves free: conservative (60 %), balanced (40 %), aggressive (20 %).
    #[arg(long, env = "MINERVA_MEMORY_STRATEGY")]
    memory_strategy: Option<BudgetStrategy>,
    /// Which idle model leaves first: lru, lfu, fifo, cost [default: lru].
    #[arg(long, env = "MINERVA_EVICTION_POLICY")]
    eviction_policy: Option<String>,
    /// How long a model stays loaded after its last request: 5m, 30s, 0, -1 = forever [default: 5m].
    #[arg(long, env = "MINERVA_KEEP_ALIVE")]
    keep_alive: Option<String>,
    /// Model that is never unloaded for being idle or for room (repeatable).
    #[arg(long = "pin", env = "MINERVA_PINNED", value_delimiter = ',')]
    #[serde(default)]
    pinned: Vec<String>,
    /// How the preloader picks models to load before they are asked for: sequential,
    /// frequency, recency, size, or off [default: sequential].
    #[arg(long, env = "MINERVA_PRELOAD")]
    preload: Option<String>,
    /// Models from the usage history's hot list to load at start (0: none) [default: 2].
    #[arg(long, env = "MINERVA_WARM_START")]
    warm_start: Option<usize>,
    /// Memory limit of the embedding cache in bytes; 0 turns it off [default: 256 MiB].
    #[arg(long, env = "MINERVA_EMBEDDING_CACHE_BYTES")]
    embedding_cache_bytes: Option<u64>,
    /// Seconds a cached embedding stays valid; 0 keeps it until evicted [default: 86400].
    #[arg(long, env = "MINERVA_EMBEDDING_CACHE_TTL")]
    embedding_cache_ttl: Option<u64>,
    /// File the embedding cache is loaded from at start and saved to at shutdown.
    #[arg(long, env = "MINERVA_EMBEDDING_CACHE_FILE")]
    embedding_cache_file: Option<PathBuf>,
    /// A second level of the embedding cache shared by several servers:
    /// redis://[:PASSWORD@]HOST:PORT/DB (rediss:// for TLS). A vector one server computed
    /// is a hit on the others; Redis down, each serves from its own cache.
    #[arg(long, env = "MINERVA_EMBEDDING_CACHE")]
    embedding_cache: Option<String>,
    /// Generations each language model runs at once, batched together [default: 16].
    #[arg(long, env = "MINERVA_PARALLEL")]
    parallel: Option<usize>,
    /// Longest speculative draft (prompt lookup: tokens guessed from the prompt and the
    /// reply so far, verified in one pass) per generation and step; 0 turns speculative
    /// decoding off [default: 16].
    #[arg(long, env = "MINERVA_DRAFT_MAX")]
    draft_max: Option<usize>,
    /// Prompt tokens whose KV each language model keeps for reuse, 0 for none [default: 4096].
    #[arg(long, env = "MINERVA_PREFIX_CACHE_TOKENS")]
    prefix_cache_tokens: Option<usize>,
    /// What a chat longer than the context gets when its request does not say: error (a
    /// 400 with the count), auto (drop the oldest turns), middle (cut the longest message's
    /// middle) [default: error].
    #[arg(long, env = "MINERVA_TRUNCATION")]
    truncation: Option<String>,
    /// Element type of the language models' KV cache: f16, q8_0 (about half the memory of
    /// f16) or q4_0 (about a quarter), so that long contexts fit [default: f16].
    #[arg(long, env = "MINERVA_KV_TYPE")]
    kv_type: Option<String>,
    /// Precision of the embedding models' matrix products: f32 (sentence-transformers'
    /// vectors), bf16 (AMX or AVX512-BF16: about 1.7x the throughput, cosine ≥ 0.999) or int8
    /// (VNNI where the CPU has it; for CPUs without AVX512-BF16); a model's
    /// `embedding_dtype` setting overrides it [default: f32].
    #[arg(long, env = "MINERVA_EMBEDDING_DTYPE")]
    embedding_dtype: Option<String>,
    /// Let generations go on past the context: when one fills it, keep the first tokens
    /// (a request's `n_keep`, else the BOS), drop the oldest half of the rest and go on,
    /// as llama-server's --context-shift; a request's `context_shift` overrides it.
    #[arg(long, env = "MINERVA_CONTEXT_SHIFT")]
    #[serde(default)]
    context_shift: bool,
    /// No per-request histograms, `/metrics` recorder or dashboard figures (to measure
    /// what they cost; `/metrics` is then empty).
    #[arg(long)]
    #[serde(default)]
    no_monitoring: bool,
    /// Log each finished generation's prompt and output (JSON lines, a file per UTC day)
    /// in this directory. Off by default: no other log holds prompts or outputs.
    #[arg(long, env = "MINERVA_REQUEST_LOG")]
    request_log: Option<PathBuf>,
    /// Days the request log keeps; older day files are deleted [default: 7].
    #[arg(long, env = "MINERVA_REQUEST_LOG_DAYS")]
    request_log_days: Option<u32>,
    /// Refuse pulls (`/api/pull`, `/v1/models/pull`): the server never touches the
    /// network (also MINERVA_OFFLINE=1).
    #[arg(long)]
    #[serde(default)]
    offline: bool,
    /// `[aliases]` of the config file (only there): names that serve a model.
    #[arg(skip)]
    #[serde(default)]
    aliases: Option<toml::Value>,
    /// `[routes.NAME]` of the config file (only there): fallback chains.
    #[arg(skip)]
    #[serde(default)]
    routes: Option<toml::Value>,
    /// `[backends.NAME]` of the config file (only there): remote OpenAI-compatible servers.
    #[arg(skip)]
    #[serde(default)]
    backends: Option<toml::Value>,
    /// `[experiments.NAME]` of the config file (only there): A/B splits.
    #[arg(skip)]
    #[serde(default)]
    experiments: Option<toml::Value>,
}

#[derive(clap::Args)]
pub struct Args {
    /// TOML file with any of the settings below.
    #[arg(long, env = "MINERVA_CONFIG")]
    config: Option<PathBuf>,
    /// Export each request's spans over OTLP/HTTP (protobuf) to this collector, e.g.
    /// http://127.0.0.1:4318 (`/v1/traces` is added to a URL without a path).
    #[arg(long, env = "MINERVA_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
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
            admin_api_keys: list(self.admin_api_keys, file.admin_api_keys),
            cors_origins: list(self.cors_origins, file.cors_origins),
            allowed_hosts: list(self.allowed_hosts, file.allowed_hosts),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes),
            max_tokens: self.max_tokens.or(file.max_tokens),
            max_concurrent: self.max_concurrent.or(file.max_concurrent),
            max_queued: self.max_queued.or(file.max_queued),
            request_timeout: self.request_timeout.or(file.request_timeout),
            ctx: self.ctx.or(file.ctx),
            threads: self.threads.or(file.threads),
            memory_budget: self.memory_budget.or(file.memory_budget),
            memory_strategy: self.memory_strategy.or(file.memory_strategy),
            eviction_policy: self.eviction_policy.or(file.eviction_policy),
            keep_alive: self.keep_alive.or(file.keep_alive),
            pinned: list(self.pinned, file.pinned),
            preload: self.preload.or(file.preload),
            warm_start: self.warm_start.or(file.warm_start),
            embedding_cache_bytes: self.embedding_cache_bytes.or(file.embedding_cache_bytes),
            embedding_cache_ttl: self.embedding_cache_ttl.or(file.embedding_cache_ttl),
            embedding_cache_file: self.embedding_cache_file.or(file.embedding_cache_file),
            embedding_cache: self.embedding_cache.or(file.embedding_cache),
            parallel: self.parallel.or(file.parallel),
            draft_max: self.draft_max.or(file.draft_max),
            prefix_cache_tokens: self.prefix_cache_tokens.or(file.prefix_cache_tokens),
            truncation: self.truncation.or(file.truncation),
            kv_type: self.kv_type.or(file.kv_type),
            embedding_dtype: self.embedding_dtype.or(file.embedding_dtype),
            offline: self.offline || file.offline,
            aliases: file.aliases,
            routes: file.routes,
            backends: file.backends,
            experiments: file.experiments,
            context_shift: self.context_shift || file.context_shift,
            no_monitoring: self.no_monitoring || file.no_monitoring,
            request_log: self.request_log.or(file.request_log),
            request_log_days: self.request_log_days.or(file.request_log_days),
        }
    }

    fn read(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
    }

    /// The preloader's configuration, `None` when it is off.
    fn preload_config(&self) -> Result<Option<PreloadConfig>> {
        let strategy = match self.preload.as_deref().unwrap_or("sequential") {
            "off" => return Ok(None),
            "sequential" => PreloadStrategy::Sequential,
            "frequency" => PreloadStrategy::Frequency,
            "recency" => PreloadStrategy::Recency,
            "size" => PreloadStrategy::Size,
            other => anyhow::bail!("--preload {other:?}: use sequential, frequency, recency, size or off"),
        };
        let defaults = PreloadConfig::default();
        Ok(Some(PreloadConfig {
            strategy,
            warm_start: self.warm_start.unwrap_or(defaults.warm_start),
            ..defaults
        }))
    }

    fn into_configs(self) -> Result<(ServerConfig, PoolConfig)> {
        let defaults = ServerConfig::default();
        let mut api_keys = self.api_keys;
        if let Some(file) = &self.api_key_file {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            api_keys.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned));
        }
        let parallel = self.parallel.unwrap_or(PoolConfig::DEFAULT_PARALLEL).max(1);
        // Encryption at rest: MINERVA_KEY or MINERVA_KEY_FILE (minerva keygen).
        let seal_key = minerva_seal::Key::from_env()?;
        let server = ServerConfig {
            seal_key: seal_key.clone(),
            addr: self.addr.unwrap_or(defaults.addr),
            api_keys,
            admin_api_keys: self.admin_api_keys,
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
            embedding_cache: CacheConfig {
                max_bytes: self.embedding_cache_bytes.unwrap_or(defaults.embedding_cache.max_bytes),
                ttl: match self.embedding_cache_ttl {
                    Some(0) => None,
                    Some(seconds) => Some(Duration::from_secs(seconds)),
                    None => defaults.embedding_cache.ttl,
                },
                file: self.embedding_cache_file,
                key: seal_key,
            },
            shared_embedding_cache: match self.embedding_cache {
                Some(url) if !(url.starts_with("redis://") || url.starts_with("rediss://")) => {
                    anyhow::bail!("--embedding-cache: expected redis://HOST:PORT/DB or rediss://…")
                }
                url => url,
            },
            truncation: match &self.truncation {
                None => defaults.truncation,
                Some(t) => t.parse().map_err(|e| anyhow::anyhow!("--truncation: {e}"))?,
            },
            context_shift: self.context_shift,
            monitoring: !self.no_monitoring,
            request_log: self
                .request_log
                .map(|dir| minerva_server::request_log::RequestLogConfig {
                    dir,
                    retention_days: self.request_log_days.unwrap_or(7),
                }),
            pull: {
                let mut pull = minerva_pull::PullOptions::from_env();
                pull.offline |= self.offline;
                pull
            },
            ..defaults
        };
        let mut pool = PoolConfig::new(
            self.threads.unwrap_or_else(minerva_engine::compute::default_threads),
            self.ctx.unwrap_or(4096),
        );
        if let Some(strategy) = self.memory_strategy
            && let Budget::Dynamic { min, max, .. } = pool.budget
        {
            pool.budget = Budget::Dynamic { strategy, min, max };
        }
        if let Some(budget) = &self.memory_budget {
            pool.budget = Budget::Fixed(parse_bytes(budget).with_context(|| format!("--memory-budget {budget:?}"))?);
        }
        if let Some(policy) = &self.eviction_policy {
            pool.policy = policy.parse().map_err(anyhow::Error::msg)?;
        }
        if let Some(keep_alive) = &self.keep_alive {
            pool.keep_alive = keep_alive.parse()?;
        }
        pool.parallel = parallel;
        if let Some(draft_max) = self.draft_max {
            anyhow::ensure!(draft_max <= 32, "--draft-max {draft_max}: at most 32");
            pool.draft_max = draft_max;
        }
        if let Some(kv_type) = &self.kv_type {
            pool.kv_type = kv_type.parse().map_err(|e| anyhow::anyhow!("--kv-type: {e}"))?;
        }
        if let Some(dtype) = &self.embedding_dtype {
            pool.embedding_dtype = dtype.parse().map_err(|e| anyhow::anyhow!("--embedding-dtype: {e}"))?;
        }
        pool.prefix_cache_tokens = self
            .prefix_cache_tokens
            .unwrap_or(PoolConfig::DEFAULT_PREFIX_CACHE_TOKENS);
        pool.pinned = self
            .pinned
            .iter()
            .map(|id| ModelId::new(id).with_context(|| format!("--pin {id:?}")))
            .collect::<Result<_>>()?;
        Ok((server, pool))
    }
}

/// Parses a byte count as `bytesize` does: `1073741824`, `4GiB`, `1.5 GiB`, `512MiB`
/// (binary units), `4GB`, `512MB` (decimal ones).
fn parse_bytes(text: &str) -> Result<u64> {
    let size: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{e}; use a size such as 4GiB or 512MiB"))?;
    Ok(size.as_u64())
}

pub fn run(store: ModelStore, args: Args) -> Result<()> {
    // The file given, else `$MINERVA_HOME/minerva.toml` when there is one.
    let config_path = args.config.clone().or_else(|| {
        let default = store.root().parent()?.join("minerva.toml");
        default.is_file().then_some(default)
    });
    let file = match &config_path {
        Some(path) => Settings::read(path)?,
        None => Settings::default(),
    };
    // Aliases and fallback chains, checked against the store before the server starts.
    let routing = minerva_server::routing::Routing::load(config_path, store.clone())?;
    let settings = args.settings.over(file);
    let preload = settings.preload_config()?;
    let (config, pool_config) = settings.into_configs()?;
    let registry = Arc::new(model_arg::registry(&store)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() && config.api_keys.is_empty() && config.admin_api_keys.is_empty() {
            tracing::warn!(%addr, "listening beyond loopback WITHOUT an API key: anyone who can reach this address can use and unload every model; set --api-key and --admin-api-key");
            eprintln!(
                "WARNING: minerva listens on {addr}, beyond loopback, without an API key: anyone on the network can use and unload every model. Set --api-key and --admin-api-key."
            );
        }
        let models = store.list().map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "minerva listening on http://{addr} ({models} models in {})",
            store.root().display()
        );
        let pool = Arc::new(ModelPool::with_registry(store, pool_config, registry));
        if let Some(preload) = preload {
            preload::spawn(Arc::clone(&pool), preload);
        }
        let mut state = minerva_server::state(config, pool);
        state.routing = Arc::new(routing);
        minerva_server::reload_on_sighup(Arc::clone(&state.routing));
        minerva_server::routing::spawn_health_checks(Arc::clone(&state.routing));
        minerva_server::serve(listener, state, minerva_server::shutdown_signal()).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's full configuration example is a file the server takes as it is.
    #[test]
    fn the_readmes_configuration_example_is_valid() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        let start = readme
            .find("# $MINERVA_HOME/minerva.toml")
            .expect("the example is in the README");
        let end = start + readme[start..].find("```").unwrap();
        let example = &readme[start..end];
        let settings: Settings = toml::from_str(example).unwrap();
        assert!(settings.aliases.is_some() && settings.routes.is_some());
        let (server, pool) = settings.into_configs().unwrap();
        assert_eq!(pool.kv_type, minerva_engine::KvType::Q8_0);
        assert_eq!(server.admin_api_keys, ["ops-key"]);
        let dir = tempfile::tempdir().unwrap();
        for model in ["smollm2-135m-instruct", "gemma-3-270m"] {
            std::fs::write(dir.path().join(format!("{model}.gguf")), b"GGUF").unwrap();
        }
        std::fs::create_dir(dir.path().join("all-minilm-l6-v2")).unwrap();
        std::fs::write(dir.path().join("all-minilm-l6-v2/model.safetensors"), b"").unwrap();
        let store = ModelStore::new(dir.path().to_owned());
        // The key's variable must be set when the file is read: one every process has.
        let example = example.replace("BIG_API_KEY", "PATH");
        minerva_pull::install_crypto_provider();
        let table = minerva_server::routing::RouteTable::parse(&example, Path::new("minerva.toml"), &store).unwrap();
        assert_eq!(
            (
                table.routes().count(),
                table.backends().count(),
                table.experiments().count()
            ),
            (5, 1, 1)
        );
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("minerva.toml");
        std::fs::write(
            &path,
            "addr = \"127.0.0.1:9999\"\nmax_tokens = 100\napi_keys = [\"from-file\"]\nctx = 2048\nembedding_cache_ttl = 0\nembedding_cache_bytes = 1000\n",
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
        assert_eq!(server.embedding_cache.ttl, None, "0 keeps entries until evicted");
        assert_eq!(server.embedding_cache.max_bytes, 1000);
        assert_eq!(pool.parallel, PoolConfig::DEFAULT_PARALLEL);
        assert!(server.max_concurrent_requests >= pool.parallel);
    }

    #[test]
    fn memory_settings_become_the_pool_config() {
        let settings = Settings {
            memory_budget: Some("1.5GiB".into()),
            eviction_policy: Some("cost".into()),
            keep_alive: Some("-1".into()),
            pinned: vec!["all-minilm-l6-v2".into()],
            ..Settings::default()
        };
        let (_, pool) = settings.into_configs().unwrap();
        assert_eq!(pool.budget, Budget::Fixed(3 << 29));
        assert_eq!(pool.policy, minerva_pool::EvictionPolicy::CostAware);
        assert_eq!(pool.keep_alive, minerva_pool::KeepAlive::Forever);
        assert_eq!(pool.pinned[0].as_str(), "all-minilm-l6-v2");
        let bad = Settings {
            memory_budget: Some("12 parsecs".into()),
            ..Settings::default()
        };
        assert!(format!("{:#}", bad.into_configs().err().unwrap()).contains("--memory-budget"));
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
