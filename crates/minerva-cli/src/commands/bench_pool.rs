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
use minerva_engine::{LanguageModel, embed::EmbedOptions};
use minerva_runtime::estimate::estimate;
use minerva_runtime::{
    Budget, EvictionPolicy, GenerationEvent, KeepAlive, LoadedModel, ModelId, ModelPool, ModelStore, PoolConfig,
};
use tokio::time::Instant;

use crate::model_arg;

#[derive(clap::Args)]
pub struct Args {
    /// The trace to replay (`<ms> <model id>` per line).
    #[arg(long)]
    trace: PathBuf,
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
    /// Print JSON.
    #[arg(long)]
    json: bool,
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

/// What one replay measured.
#[derive(Debug, serde::Serialize)]
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
    let trace = read_trace(&args.trace)?;
    if !(args.speed > 0.0) {
        bail!("--speed must be positive");
    }
    let threads = args.threads.unwrap_or_else(model_arg::default_threads);
    let base = PoolConfig {
        keep_alive: KeepAlive::Forever,
        wait_timeout: Duration::from_secs(120),
        ..PoolConfig::new(threads, 2048)
    };
    let models: BTreeSet<&ModelId> = trace.iter().map(|r| &r.model).collect();
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let trace = Arc::new(trace);
    let mut outcomes = Vec::new();
    for name in &args.policies {
        let policy = match name.as_str() {
            "count-lru" => EvictionPolicy::CountLru { max_models: count_cap },
            other => other.parse().map_err(anyhow::Error::msg)?,
        };
        let config = PoolConfig {
            budget: Budget::Fixed(budget),
            policy,
            ..base.clone()
        };
        let outcome = runtime.block_on(replay(store.clone(), config, Arc::clone(&trace), args.speed));
        eprintln!(
            "  {:<12} hit rate {:>5.1} %  mean {:>7.1} ms",
            outcome.policy,
            outcome.hit_rate * 100.0,
            outcome.mean_ms
        );
        outcomes.push(outcome);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        print_table(&args.trace, &outcomes);
    }
    Ok(())
}

async fn replay(store: ModelStore, config: PoolConfig, trace: Arc<Vec<Request>>, speed: f64) -> Outcome {
    let policy = config.policy.name();
    let budget = match config.budget {
        Budget::Fixed(bytes) => bytes,
        Budget::Dynamic { .. } => 0,
    };
    let pool = Arc::new(ModelPool::new(store, config));
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
        LoadedModel::Embedding(_) => {
            let lease = lease.clone();
            tokio::task::spawn_blocking(move || match &lease.model {
                LoadedModel::Embedding(model) => model
                    .embed(&["A short sentence to embed."], EmbedOptions::default())
                    .map(drop),
                LoadedModel::Llm(_) => Ok(()),
            })
            .await??;
        }
    }
    Ok(())
}

fn print_table(trace: &Path, outcomes: &[Outcome]) {
    let baseline = outcomes.iter().find(|o| o.policy.starts_with("count-lru"));
    println!("trace {}", trace.display());
    println!(
        "{:<12} {:>8} {:>6} {:>10} {:>10} {:>10} {:>10} {:>11} {:>8}",
        "policy", "hit rate", "loads", "MiB loaded", "mean ms", "p95 ms", "peak MiB", "over budget", "vs count"
    );
    for o in outcomes {
        let ratio = baseline.map_or(String::from("-"), |b| {
            format!("{:.2}x", o.mean_ms / b.mean_ms.max(1e-9))
        });
        println!(
            "{:<12} {:>7.1}% {:>6} {:>10} {:>10.1} {:>10.1} {:>10} {:>11} {:>8}",
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
