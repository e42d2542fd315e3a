//! `minerva bench pool --trace FILE`: replays a timed request trace against the real pool
//! with the real models, once per eviction policy, under a byte budget that holds only
//! some of the trace's models, and prints hit rate, loads, bytes loaded and request latency.
//!
//! A trace is a text file of `<milliseconds from start> <model id>` lines (`#` starts a
//! comment). Each request is started at its time, acquires its model (loading it, and
//! evicting others, if needed), does one small unit of real work (4 greedy tokens, or one
//! embedding), and ends; its latency is counted from its scheduled time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use minerva_engine::generate::GenerateOptions;
use minerva_engine::sampling::SamplingParams;
use minerva_pool::estimate::estimate;
use minerva_pool::preload::{self, PreloadConfig};
use minerva_pool::{Budget, EvictionPolicy, KeepAlive, LoadedModel, ModelPool, PoolConfig};
use minerva_store::patterns::{PatternConfig, PreloadStrategy};
use minerva_store::{ModelId, ModelStore, Registry};
use minerva_workers::GenerationEvent;
use minerva_workers::embedding::{EmbedSettings, EmbeddingInput};
use tokio::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The traces to replay (`<ms> <model id>` per line), one after the other.
    #[arg(long, num_args = 1.., required = true)]
    trace: Vec<PathBuf>,
    /// Replays of each trace per policy; the table shows their medians.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Policies to compare, comma-separated: lru, lfu, fifo, cost, count-lru (a count cap
    /// that is safe for the largest model, as Ollama and llama-server configure it).
    #[arg(long, value_delimiter = ',', default_value = "count-lru,lru,lfu,fifo,cost")]
    policies: Vec<String>,
    /// Byte budget [default: 60 % of the trace's models together].
    #[arg(long)]
    budget: Option<u64>,
    /// Replay speed: 2 plays the trace twice as fast.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// CPU threads per forward pass.
    #[arg(long, short)]
    threads: Option<usize>,
    /// Also replay the last policy with the preloader of this strategy (sequential,
    /// frequency, recency, size) learning from the trace as it plays.
    #[arg(long, value_parser = parse_strategy)]
    preload: Option<PreloadStrategy>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_strategy(text: &str) -> Result<PreloadStrategy, String> {
    match text {
        "sequential" => Ok(PreloadStrategy::Sequential),
        "frequency" => Ok(PreloadStrategy::Frequency),
        "recency" => Ok(PreloadStrategy::Recency),
        "size" => Ok(PreloadStrategy::Size),
        other => Err(format!(
            "unknown preload strategy {other:?} (sequential, frequency, recency, size)"
        )),
    }
}

/// One request of a trace.
struct Request {
    at: Duration,
    model: ModelId,
}

fn read_trace(path: &Path) -> Result<Vec<Request>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut requests = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let bad = || format!("{}:{}: expected `<milliseconds> <model id>`", path.display(), n + 1);
        let (ms, model) = line.split_once(char::is_whitespace).with_context(bad)?;
        requests.push(Request {
            at: Duration::from_millis(ms.parse().with_context(bad)?),
            model: ModelId::new(model.trim()).with_context(bad)?,
        });
    }
    if requests.is_empty() {
        bail!("{}: the trace has no requests", path.display());
    }
    requests.sort_by_key(|r| r.at);
    Ok(requests)
}

/// What one replay measured (or the medians of several).
#[derive(Debug, Clone, serde::Serialize)]
struct Outcome {
    policy: String,
    requests: usize,
    hit_rate: f64,
    loads: u64,
    bytes_loaded: u64,
    mean_ms: f64,
    p95_ms: f64,
    peak_bytes: u64,
    budget: u64,
    failed: usize,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    if !(args.speed > 0.0) {
        bail!("--speed must be positive");
    }
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Pools start their housekeeping task on this runtime.
    let _runtime_context = runtime.enter();
    let mut tables = Vec::new();
    for path in &args.trace {
        let outcomes = replay_trace(store, &args, path, &runtime)?;
        if !args.json {
            print_table(path, &outcomes, args.reps);
        }
        tables.push(serde_json::json!({ "trace": path, "reps": args.reps, "policies": outcomes }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&tables)?);
    }
    Ok(())
}

/// Replays the trace at `path` under each policy, `args.reps` times; the median outcome
/// per policy.
fn replay_trace(
    store: &ModelStore,
    args: &Args,
    path: &Path,
    runtime: &tokio::runtime::Runtime,
) -> Result<Vec<Outcome>> {
    let trace = read_trace(path)?;
    let threads = args.threads.unwrap_or_else(minerva_engine::compute::default_threads);
    let base = PoolConfig {
        keep_alive: KeepAlive::Forever,
        wait_timeout: Duration::from_secs(120),
        ..PoolConfig::new(threads, 2048)
    };
    let models: BTreeSet<ModelId> = trace.iter().map(|r| r.model.clone()).collect();
    let shape = base.session_shape();
    let mut footprints = Vec::new();
    for id in &models {
        let entry = store.resolve(id)?;
        footprints.push(estimate(&entry, shape)?.total());
    }
    let total: u64 = footprints.iter().sum();
    let largest = footprints.iter().copied().max().unwrap_or(0);
    let budget = args.budget.unwrap_or(total * 6 / 10).max(largest);
    let count_cap = usize::try_from(budget / largest.max(1)).unwrap_or(1).max(1);
    eprintln!(
        "{} requests over {:.1} s on {} models ({} MiB together); budget {} MiB; count cap {count_cap}",
        trace.len(),
        trace.last().map_or(0.0, |r| r.at.as_secs_f64()) / args.speed,
        models.len(),
        total >> 20,
        budget >> 20
    );
    let trace = Arc::new(trace);
    let mut runs = Vec::new();
    for name in &args.policies {
        let policy = match name.as_str() {
            "count-lru" => EvictionPolicy::CountLru { max_models: count_cap },
            other => other.parse().map_err(anyhow::Error::msg)?,
        };
        runs.push((policy, None));
    }
    if let (Some(strategy), Some((policy, _))) = (args.preload, runs.last().copied()) {
        runs.push((policy, Some(strategy)));
    }
    let mut outcomes = Vec::new();
    for (policy, preload) in runs {
        let mut reps = Vec::new();
        for _ in 0..args.reps {
            let config = PoolConfig {
                budget: Budget::Fixed(budget),
                policy,
                ..base.clone()
            };
            // The registry's directory lives as long as the run.
            let (pool, _registry_dir) = match preload {
                None => (ModelPool::new(store.clone(), config), None),
                Some(_) => {
                    let (pool, dir) = pool_with_fresh_registry(store, config, &models)?;
                    (pool, Some(dir))
                }
            };
            let outcome = runtime.block_on(replay(pool, preload, Arc::clone(&trace), args.speed));
            eprintln!(
                "  {:<12} hit rate {:>5.1} %  mean {:>7.1} ms",
                outcome.policy,
                outcome.hit_rate * 100.0,
                outcome.mean_ms
            );
            reps.push(outcome);
        }
        outcomes.push(Outcome::median(reps));
    }
    Ok(outcomes)
}

/// A pool with a registry of its own in a temporary directory, the trace's models
/// registered (hashed) up front so that no replay pays for hashing.
fn pool_with_fresh_registry(
    store: &ModelStore,
    config: PoolConfig,
    models: &BTreeSet<ModelId>,
) -> Result<(ModelPool, tempfile::TempDir)> {
    let dir = tempfile::tempdir().context("temporary registry")?;
    let registry = Registry::open(&dir.path().join("registry.sqlite"))?;
    for id in models {
        registry.register(store, id, &mut |_, _| {})?;
    }
    Ok((ModelPool::with_registry(store.clone(), config, Arc::new(registry)), dir))
}

async fn replay(pool: ModelPool, preload: Option<PreloadStrategy>, trace: Arc<Vec<Request>>, speed: f64) -> Outcome {
    let config = pool.config();
    let policy = match preload {
        Some(strategy) => format!("{}+{}", config.policy.name(), strategy_name(strategy)),
        None => config.policy.name(),
    };
    let budget = match config.budget {
        Budget::Fixed(bytes) => bytes,
        Budget::Dynamic { .. } => 0,
    };
    let pool = Arc::new(pool);
    let preloader = preload.and_then(|strategy| {
        let config = PreloadConfig {
            strategy,
            // The trace plays in seconds, not hours: patterns over a minute, followers
            // within five seconds, a preload at most every quarter second.
            min_interval: Duration::from_millis(250),
            patterns: PatternConfig {
                window: Duration::from_secs(60),
                follow_within: Duration::from_secs(5),
                ..PatternConfig::default()
            },
            warm_start: 0,
        };
        preload::spawn(Arc::clone(&pool), config)
    });
    let start = Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = (0..trace.len())
        .map(|i| {
            let pool = Arc::clone(&pool);
            let trace = Arc::clone(&trace);
            tokio::spawn(async move {
                let request = &trace[i];
                let due = start + request.at.div_f64(speed);
                tokio::time::sleep_until(due).await;
                let ok = serve_one(&pool, &request.model).await.is_ok();
                (due.elapsed(), ok)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        match task.await {
            Ok((latency, true)) => latencies.push(latency.as_secs_f64() * 1e3),
            _ => failed += 1,
        }
    }
    if let Some(preloader) = preloader {
        preloader.abort();
    }
    latencies.sort_by(f64::total_cmp);
    let stats = pool.stats();
    let totals = pool.totals();
    let requests = (totals.hits + totals.misses).max(1);
    Outcome {
        policy,
        requests: trace.len(),
        hit_rate: totals.hits as f64 / requests as f64,
        loads: totals.loads,
        bytes_loaded: stats.iter().map(|(_, s)| s.loads * s.bytes).sum(),
        mean_ms: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
        p95_ms: latencies
            .get((latencies.len() * 95 / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0),
        peak_bytes: totals.peak_bytes,
        budget,
        failed,
    }
}

/// Acquires `model` and does one small unit of real work with it.
async fn serve_one(pool: &ModelPool, model: &ModelId) -> Result<()> {
    let lease = pool.acquire(model).await?;
    match &lease.model {
        LoadedModel::Llm(worker) => {
            let prompt = worker.model().tokenize("The capital of France is", true, false)?;
            let options = GenerateOptions {
                max_tokens: 4,
                constraint: None,
                context_shift: None,
                n_ctx: None,
                stop: Vec::new(),
                sampling: SamplingParams::default(),
            };
            let mut events = worker.submit(prompt, options);
            while let Some(event) = events.recv().await {
                if let GenerationEvent::Done(result) = event {
                    result?;
                    break;
                }
            }
        }
        LoadedModel::Embedding(service) => {
            let input = vec![EmbeddingInput::Text("A short sentence to embed.".into())];
            let settings = EmbedSettings {
                normalize: true,
                forbid_truncation: false,
            };
            service.embed(input, settings, None).await?;
        }
    }
    Ok(())
}

impl Outcome {
    /// Field by field, the median of `reps` (the worst for peak memory and failures).
    fn median(reps: Vec<Outcome>) -> Outcome {
        fn mid<T: Copy + PartialOrd>(reps: &[Outcome], field: impl Fn(&Outcome) -> T) -> T {
            let mut values: Vec<T> = reps.iter().map(field).collect();
            values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            values[values.len() / 2]
        }
        let mut median = reps[0].clone();
        median.hit_rate = mid(&reps, |o| o.hit_rate);
        median.loads = mid(&reps, |o| o.loads);
        median.bytes_loaded = mid(&reps, |o| o.bytes_loaded);
        median.mean_ms = mid(&reps, |o| o.mean_ms);
        median.p95_ms = mid(&reps, |o| o.p95_ms);
        median.peak_bytes = reps.iter().map(|o| o.peak_bytes).max().unwrap_or(0);
        median.failed = reps.iter().map(|o| o.failed).max().unwrap_or(0);
        median
    }
}

fn strategy_name(strategy: PreloadStrategy) -> &'static str {
    match strategy {
        PreloadStrategy::Sequential => "sequential",
        PreloadStrategy::Frequency => "frequency",
        PreloadStrategy::Recency => "recency",
        PreloadStrategy::Size => "size",
    }
}

fn print_table(trace: &Path, outcomes: &[Outcome], reps: usize) {
    let baseline = outcomes.iter().find(|o| o.policy.starts_with("count-lru"));
    let medians = if reps > 1 {
        format!(" (medians of {reps} replays)")
    } else {
        String::new()
    };
    println!("trace {}{medians}", trace.display());
    println!(
        "{:<16} {:>8} {:>6} {:>10} {:>10} {:>10} {:>10} {:>11} {:>8}",
        "policy", "hit rate", "loads", "MiB loaded", "mean ms", "p95 ms", "peak MiB", "over budget", "vs count"
    );
    for o in outcomes {
        let ratio = baseline.map_or(String::from("-"), |b| {
            format!("{:.2}x", o.mean_ms / b.mean_ms.max(1e-9))
        });
        println!(
            "{:<16} {:>7.1}% {:>6} {:>10} {:>10.1} {:>10.1} {:>10} {:>11} {:>8}",
            o.policy,
            o.hit_rate * 100.0,
            o.loads,
            o.bytes_loaded >> 20,
            o.mean_ms,
            o.p95_ms,
            o.peak_bytes >> 20,
            if o.peak_bytes > o.budget { "YES" } else { "no" },
            ratio
        );
        if o.failed > 0 {
            println!("  {} requests failed", o.failed);
        }
    }
}
