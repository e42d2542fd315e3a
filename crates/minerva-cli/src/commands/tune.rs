//! `minerva tune MODEL`: finds, on this machine, the serving settings under which a
//! language model generates fastest for a load of `--clients` concurrent requests, and
//! stores them as the model's settings (read by `serve` when it next loads the model).
//!
//! Each trial starts the model's real worker (the scheduler `serve` runs) with one
//! setting, warms it up, and runs the load: `--clients` greedy generations at once, short
//! questions and one copy-heavy request (where speculative drafts pay), `--tokens` each.
//! The knobs are tried one at a time (threads, parallel sequences, flash attention, KV
//! type, the batch a long prompt is read in, speculative drafts; flash attention off
//! comes with an f16 KV cache and a quantized KV cache with flash attention on, the one
//! pairing llama.cpp requires), each keeping the best value found for those before it (the value kept so far
//! competing too), within `--budget-seconds`. Throughput decides, but not at any latency:
//! after the first knob, a setting whose time to first token is over twice the kept one's
//! (plus 50 ms) is not chosen, since a user waiting for an answer would not take it (one
//! parallel sequence for four clients generates as many tokens per second with drafts,
//! and makes three of them wait). `--check` measures the stored settings against the
//! defaults.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use minerva_engine::generate::{GenerateOptions, Generation};
use minerva_engine::sampling::SamplingParams;
use minerva_engine::{KvType, TokenId};
use minerva_pool::PoolConfig;
use minerva_store::{ModelFormat, ModelSettings, ModelStore};
use minerva_workers::{GenerationEvent, LlmWorker, LlmWorkerConfig};

use crate::{model_arg, progress};

#[derive(clap::Args)]
pub struct Args {
    /// The language model (an id of the models directory).
    model: minerva_store::ModelId,
    /// Concurrent requests of the load the settings are tuned for.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Tokens each request generates.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Runs of the load per trial (the median counts).
    #[arg(long, default_value_t = 2)]
    repetitions: usize,
    /// Stop trying new settings after this long (the best so far is kept).
    #[arg(long, default_value_t = 300)]
    budget_seconds: u64,
    /// Context of one request during the trials.
    #[arg(long, default_value_t = 2048)]
    ctx: u32,
    /// Measure the stored settings against the defaults instead of tuning.
    #[arg(long)]
    check: bool,
    /// Print the table only; store nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One combination of the knobs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
struct Setting {
    threads: usize,
    parallel: usize,
    flash_attention: bool,
    kv_type: KvType,
    batch: usize,
    draft_max: usize,
}

impl Setting {
    fn defaults() -> Self {
        Self {
            threads: minerva_engine::compute::default_threads(),
            parallel: PoolConfig::DEFAULT_PARALLEL,
            flash_attention: true,
            kv_type: KvType::F16,
            batch: LlmWorkerConfig::DEFAULT_BATCH,
            draft_max: LlmWorkerConfig::DEFAULT_DRAFT_MAX,
        }
    }

    /// The defaults with a model's stored settings over them.
    fn stored(settings: &ModelSettings) -> Self {
        let defaults = Self::defaults();
        Self {
            threads: settings.threads.unwrap_or(defaults.threads),
            parallel: settings.parallel.unwrap_or(defaults.parallel),
            flash_attention: settings.flash_attention.unwrap_or(defaults.flash_attention),
            batch: settings.batch.unwrap_or(defaults.batch),
            kv_type: settings
                .kv_type
                .as_deref()
                .and_then(|t| t.parse().ok())
                .unwrap_or(defaults.kv_type),
            draft_max: settings.draft_max.unwrap_or(defaults.draft_max),
        }
    }
}

/// What one trial measured.
#[derive(Debug, Clone, serde::Serialize)]
struct Trial {
    setting: Setting,
    /// Generated tokens of the whole load over its wall time (median of the runs).
    tokens_per_second: f64,
    /// Mean time to the first token of a request (median of the runs).
    ttft_seconds: f64,
}

/// The load: prompts and what to generate.
struct Load {
    prompts: Vec<Vec<TokenId>>,
    options: GenerateOptions,
    repetitions: usize,
}

const QUESTIONS: &[&str] = &[
    "Question: Why is the sky blue?\nAnswer:",
    "Question: How do plants make their food?\nAnswer:",
    "Question: What causes the seasons on Earth?\nAnswer:",
    "Question: How does a compass work?\nAnswer:",
    "Question: Why do birds migrate in autumn?\nAnswer:",
    "Question: What is the water cycle?\nAnswer:",
    "Question: How do airplanes stay in the air?\nAnswer:",
];

/// About 240 words (more tokens than the smallest batch knob): the copy-heavy request
/// reads it in chunks of the batch knob.
const PASSAGE: &str = "The lighthouse keeper climbed the spiral stairs every evening at dusk, \
    carrying a lantern, a logbook and a flask of tea. From the top he could see the fishing \
    boats returning to the harbour, the gulls circling the cliffs, and the lights of the town \
    coming on one by one along the bay. He wrote the weather in the logbook in a small, \
    careful hand: the direction of the wind, the height of the swell, the colour of the sky \
    in the west, and the names of the boats that were still at sea. On clear nights the beam \
    reached twenty miles across the water, and sailors far out on the dark swell would count \
    its flashes to know which coast they were passing. In winter the storms came in from the \
    north, and the spray rose so high that it struck the glass of the lantern room, a hundred \
    feet above the rocks. Then he stayed awake until morning, trimming the wicks, winding the \
    clockwork that turned the great lens, and listening to the wind in the iron railings of \
    the gallery. When the supply boat came at the end of each month, it brought oil, flour, \
    letters from his sister in the city, and sometimes a newspaper that was already two weeks \
    old. He read every page of it, even the advertisements, and then used it to light the \
    stove in the kitchen at the foot of the tower.";

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    if args.clients == 0 || args.tokens == 0 || args.repetitions == 0 {
        bail!("--clients, --tokens and --repetitions must be positive");
    }
    let name = store.canonical(&args.model);
    let entry = store.resolve(&name).with_context(|| format!("model {name}"))?;
    if entry.format != ModelFormat::Gguf {
        bail!("{name} is an embedding model; tune serves language models");
    }
    let registry = model_arg::registry(store)?;
    registry.check(store, &name)?;
    let mut settings = registry.settings(&name)?;
    let model = model_arg::load_llm(store, name.as_str())?;
    let load = Load {
        prompts: prompts(&*model, args.clients)?,
        options: GenerateOptions {
            max_tokens: args.tokens,
            stop: Vec::new(),
            sampling: SamplingParams::default(),
            constraint: None,
            context_shift: None,
            n_ctx: None,
        },
        repetitions: args.repetitions,
    };
    drop(model);
    let deadline = Instant::now() + Duration::from_secs(args.budget_seconds);

    if args.check {
        let plan = [
            ("defaults", Setting::defaults()),
            ("stored", Setting::stored(&settings)),
        ];
        let bar = progress::bar(plan.len() as u64, "tune --check");
        let mut trials = Vec::new();
        for (label, setting) in plan {
            bar.set_message(format!("tune --check: {label}"));
            trials.push((label, measure(&entry.path, name.as_str(), args.ctx, setting, &load)?));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let ratio = trials[1].1.tokens_per_second / trials[0].1.tokens_per_second;
        if args.json {
            let rows: Vec<_> = trials
                .iter()
                .map(|(label, t)| serde_json::json!({ "label": label, "trial": t }))
                .collect();
            println!(
                "{}",
                serde_json::json!({ "model": name, "check": rows, "stored_vs_defaults": ratio })
            );
        } else {
            let mut out = std::io::stdout().lock();
            print_table(&mut out, trials.iter().map(|(l, t)| (*l, t)))?;
            writeln!(out, "\nstored settings vs defaults: {ratio:.2}x tok/s")?;
        }
        return Ok(());
    }

    let mut best = Setting::defaults();
    let mut trials: Vec<Trial> = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads: Vec<usize> = vec![1, cores / 2, cores];
    threads.retain(|&t| t >= 1);
    threads.sort_unstable();
    threads.dedup();
    let parallel: Vec<usize> = [1, 2, 4, 8, 16]
        .into_iter()
        .filter(|&p| p <= args.clients.next_power_of_two().max(1) * 2)
        .collect();
    type Knob = (&'static str, Vec<Box<dyn Fn(Setting) -> Setting>>);
    let knobs: Vec<Knob> = vec![
        (
            "threads",
            threads
                .into_iter()
                .map(|t| Box::new(move |s: Setting| Setting { threads: t, ..s }) as Box<dyn Fn(Setting) -> Setting>)
                .collect(),
        ),
        (
            "parallel",
            parallel
                .into_iter()
                .map(|p| Box::new(move |s: Setting| Setting { parallel: p, ..s }) as Box<dyn Fn(Setting) -> Setting>)
                .collect(),
        ),
        (
            "flash_attention",
            [true, false]
                .into_iter()
                .map(|f| {
                    // Off takes an f16 KV cache with it (llama.cpp's condition).
                    Box::new(move |s: Setting| Setting {
                        flash_attention: f,
                        kv_type: if f { s.kv_type } else { KvType::F16 },
                        ..s
                    }) as Box<dyn Fn(Setting) -> Setting>
                })
                .collect(),
        ),
        (
            "kv_type",
            [KvType::F16, KvType::Q8_0]
                .into_iter()
                .map(|k| {
                    // A quantized KV cache takes flash attention with it.
                    Box::new(move |s: Setting| Setting {
                        kv_type: k,
                        flash_attention: s.flash_attention || k != KvType::F16,
                        ..s
                    }) as Box<dyn Fn(Setting) -> Setting>
                })
                .collect(),
        ),
        (
            "batch",
            [128, 256, LlmWorkerConfig::DEFAULT_BATCH]
                .into_iter()
                .map(|b| Box::new(move |s: Setting| Setting { batch: b, ..s }) as Box<dyn Fn(Setting) -> Setting>)
                .collect(),
        ),
        (
            "draft_max",
            [0, LlmWorkerConfig::DEFAULT_DRAFT_MAX]
                .into_iter()
                .map(|d| Box::new(move |s: Setting| Setting { draft_max: d, ..s }) as Box<dyn Fn(Setting) -> Setting>)
                .collect(),
        ),
    ];
    let total: usize = knobs.iter().map(|(_, values)| values.len()).sum();
    let bar = progress::bar(total as u64, "tune");
    let mut out_of_time = false;
    let mut ttft_limit: Option<f64> = None;
    for (knob, values) in &knobs {
        // The setting kept so far competes too, also where this knob's values leave its
        // value out (parallel 16 when the load has 4 clients).
        let mut best_here: Option<Trial> = trials.iter().find(|t| t.setting == best).cloned();
        for value in values {
            let setting = value(best);
            bar.set_message(format!("tune {knob}"));
            if Instant::now() >= deadline {
                out_of_time = true;
                bar.inc(1);
                continue;
            }
            let trial = match trials.iter().find(|t| t.setting == setting) {
                Some(done) => done.clone(),
                None => {
                    let trial = measure(&entry.path, name.as_str(), args.ctx, setting, &load)?;
                    trials.push(trial.clone());
                    trial
                }
            };
            let waits_too_long = ttft_limit.is_some_and(|limit| trial.ttft_seconds > limit);
            if !waits_too_long
                && best_here
                    .as_ref()
                    .is_none_or(|b| trial.tokens_per_second > b.tokens_per_second)
            {
                best_here = Some(trial);
            }
            bar.inc(1);
        }
        if let Some(b) = best_here {
            best = b.setting;
            ttft_limit.get_or_insert(2.0 * b.ttft_seconds + TTFT_SLACK_SECONDS);
        }
    }
    bar.finish_and_clear();
    if trials.is_empty() {
        bail!(
            "--budget-seconds {} left no time for a single trial",
            args.budget_seconds
        );
    }

    settings.threads = Some(best.threads);
    settings.parallel = Some(best.parallel);
    settings.kv_type = Some(best.kv_type.as_str().to_owned());
    settings.flash_attention = Some(best.flash_attention);
    settings.batch = Some(best.batch);
    settings.draft_max = Some(best.draft_max);
    if !args.dry_run {
        registry.set_settings(&name, &settings)?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "model": name, "trials": trials, "best": best, "ttft_limit_seconds": ttft_limit, "stored": !args.dry_run, "out_of_time": out_of_time })
        );
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{name}: {} concurrent requests of {} tokens, medians of {} runs",
        args.clients, args.tokens, args.repetitions
    )?;
    print_table(
        &mut out,
        trials.iter().map(|t| (if t.setting == best { "best" } else { "" }, t)),
    )?;
    if let Some(limit) = ttft_limit {
        writeln!(
            out,
            "\nnot chosen whatever their tok/s: a time to first token over {limit:.3} s (twice the threads trial's, plus 50 ms)"
        )?;
    }
    if out_of_time {
        writeln!(
            out,
            "\n--budget-seconds {} ran out: the knobs not tried keep their defaults",
            args.budget_seconds
        )?;
    }
    if args.dry_run {
        writeln!(out, "\nnot stored (--dry-run)")?;
    } else {
        writeln!(
            out,
            "\nstored as {name}'s settings: threads={} parallel={} flash_attention={} kv_type={} batch={} draft_max={} (in effect when it next loads)",
            best.threads,
            best.parallel,
            best.flash_attention,
            best.kv_type.as_str(),
            best.batch,
            best.draft_max
        )?;
    }
    Ok(())
}

fn print_table<'a>(out: &mut impl Write, rows: impl Iterator<Item = (&'a str, &'a Trial)>) -> Result<()> {
    writeln!(
        out,
        "{:<9} {:>7} {:>8} {:>5} {:>7} {:>6} {:>9} {:>9} {:>9}",
        "", "threads", "parallel", "flash", "kv", "batch", "draft_max", "tok/s", "TTFT s"
    )?;
    for (label, t) in rows {
        writeln!(
            out,
            "{:<9} {:>7} {:>8} {:>5} {:>7} {:>6} {:>9} {:>9.1} {:>9.3}",
            label,
            t.setting.threads,
            t.setting.parallel,
            if t.setting.flash_attention { "on" } else { "off" },
            t.setting.kv_type.as_str(),
            t.setting.batch,
            t.setting.draft_max,
            t.tokens_per_second,
            t.ttft_seconds
        )?;
    }
    Ok(())
}

/// Added to twice the kept setting's time to first token to make the most a later
/// setting may take (the first-token times of a short load vary by some milliseconds).
const TTFT_SLACK_SECONDS: f64 = 0.05;

/// Short questions, the last request a copy of a passage.
fn prompts(model: &dyn minerva_engine::LanguageModel, clients: usize) -> Result<Vec<Vec<TokenId>>> {
    (0..clients)
        .map(|i| {
            let text = if i + 1 == clients {
                format!(
                    "Text: {PASSAGE}\n\nThe same text, repeated word for word: {}",
                    &PASSAGE[..40]
                )
            } else {
                QUESTIONS[i % QUESTIONS.len()].to_owned()
            };
            model.tokenize(&text, true, false).map_err(anyhow::Error::from)
        })
        .collect()
}

/// Starts the model's worker with `setting`, warms it up and runs the load.
fn measure(path: &Path, name: &str, ctx: u32, setting: Setting, load: &Load) -> Result<Trial> {
    let config = LlmWorkerConfig {
        n_ctx: ctx,
        threads: setting.threads,
        parallel: setting.parallel,
        // Every run of the load computes its prompts, as new requests would: with the
        // cache, every run after the first would find them there, and the knobs that
        // shape prompt processing (batch, flash attention) would measure nothing.
        prefix_cache_tokens: 0,
        kv_type: setting.kv_type,
        rope: minerva_engine::llm::RopeScaling::Model,
        draft_max: setting.draft_max,
        batch: setting.batch,
        flash_attention: setting.flash_attention,
    };
    let worker = LlmWorker::start(path, config, name).with_context(|| format!("starting {name} with {setting:?}"))?;
    let warm = GenerateOptions {
        max_tokens: 4,
        ..load.options.clone()
    };
    run_one(&worker, load.prompts[0].clone(), warm)?;
    let mut speeds = Vec::new();
    let mut ttfts = Vec::new();
    for _ in 0..load.repetitions {
        let started = Instant::now();
        let runs: Vec<(Duration, Generation)> = std::thread::scope(|scope| {
            let handles: Vec<_> = load
                .prompts
                .iter()
                .map(|prompt| {
                    let worker = &worker;
                    let options = load.options.clone();
                    scope.spawn(move || run_one(worker, prompt.clone(), options))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))?)
                .collect::<Result<_>>()
        })?;
        let wall = started.elapsed().as_secs_f64();
        let tokens: usize = runs.iter().map(|(_, g)| g.tokens.len()).sum();
        speeds.push(tokens as f64 / wall);
        ttfts.push(runs.iter().map(|(t, _)| t.as_secs_f64()).sum::<f64>() / runs.len() as f64);
    }
    Ok(Trial {
        setting,
        tokens_per_second: median(&mut speeds),
        ttft_seconds: median(&mut ttfts),
    })
}

/// One generation: the time to its first piece of text, and the result.
fn run_one(worker: &LlmWorker, prompt: Vec<TokenId>, options: GenerateOptions) -> Result<(Duration, Generation)> {
    let submitted = Instant::now();
    let mut events = worker.submit(prompt, options);
    let mut first = None;
    while let Some(event) = events.blocking_recv() {
        match event {
            GenerationEvent::Text(_) => {
                first.get_or_insert_with(|| submitted.elapsed());
            }
            GenerationEvent::Done(result) => {
                let generation = result?;
                return Ok((first.unwrap_or_else(|| submitted.elapsed()), generation));
            }
        }
    }
    bail!("the worker stopped without an answer")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
