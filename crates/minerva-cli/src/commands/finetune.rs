//! `minerva finetune BASE --data FILE.jsonl --out NAME`: trains a LoRA adapter for a GGUF
//! language model of the store on local data (minerva-train), shows the loss as it goes,
//! checkpoints into `finetune/NAME/` (a killed run started again resumes there), and
//! writes the result to `adapters/NAME.gguf` with the base's registered digest, plus
//! `adapters/NAME.json`: the options, the loss of every epoch and, for a private run, the
//! privacy spent. With a key configured (`MINERVA_KEY` or `MINERVA_KEY_FILE`, made by
//! `minerva keygen`), the adapter and the checkpoints are sealed (AES-256-GCM): the data
//! they derive from stays unreadable on disk, and the server opens the adapter into memory.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use minerva_engine::chat::ChatTemplate;
use minerva_engine::llm::llama::LlamaCppModel;
use minerva_engine::llm::lora::LoraAdapterFile;
use minerva_store::{ADAPTERS_DIR, ModelFormat, ModelId, ModelStore};
use minerva_train::data::{self, Dataset};
use minerva_train::model::{LINEAR_KINDS, LoraLlama};
use minerva_train::train::{self, Event, Options, Privacy};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{model_arg, progress};

/// Where runs keep their checkpoints, under the store's root.
const RUNS_DIR: &str = "finetune";

#[derive(clap::Args)]
pub struct Args {
    /// The base model (a GGUF Llama-architecture model in the store, e.g. smollm2-135m-instruct).
    base: ModelId,
    /// Training data: JSONL of {"messages": [...]} conversations or {"prompt", "completion"} pairs.
    #[arg(long)]
    data: PathBuf,
    /// The adapter's name: it is served as BASE+NAME.
    #[arg(long)]
    out: ModelId,
    /// Rank of the LoRA factors.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// LoRA's alpha: updates are scaled by alpha / rank.
    #[arg(long, default_value_t = 32.0)]
    alpha: f32,
    /// The matrices adapted (of attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down"
    )]
    targets: Vec<String>,
    /// AdamW's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Passes over the training set.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Longest sequence trained on, in tokens (longer examples are left out and counted).
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Share of the examples held out to measure the loss on after every epoch.
    #[arg(long, default_value_t = 0.1)]
    eval_split: f64,
    /// Seed of the split, the order of the examples and the factors' start.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Steps between checkpoints (besides the end of every epoch).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// Discard a checkpoint of an earlier run of this name instead of resuming it.
    #[arg(long)]
    restart: bool,
    /// Replace an adapter of that name.
    #[arg(long)]
    force: bool,
    /// Train with differential privacy (DP-SGD: per-example clipping, Gaussian noise).
    #[arg(long)]
    dp: bool,
    /// DP-SGD: largest L2 norm of one example's gradient.
    #[arg(long, default_value_t = 1.0)]
    dp_clip: f64,
    /// DP-SGD: the noise's standard deviation, in units of the clipping norm.
    #[arg(long, default_value_t = 1.0)]
    dp_noise: f64,
    /// DP-SGD: the δ of the (ε, δ) guarantee reported.
    #[arg(long, default_value_t = 1e-5)]
    dp_delta: f64,
}

/// A line above the bar, or on stderr when there is no bar (not a terminal).
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// What `adapters/NAME.json` records of a run.
#[derive(Serialize)]
struct Report<'a> {
    base: String,
    base_sha256: &'a str,
    rank: usize,
    alpha: f32,
    targets: &'a [String],
    lr: f64,
    epochs: usize,
    batch: usize,
    seq_len: usize,
    train_examples: usize,
    held_out_examples: usize,
    train_target_tokens: usize,
    history: &'a [train::EpochReport],
    privacy: Option<PrivacyReport>,
}

#[derive(Serialize)]
struct PrivacyReport {
    clip: f64,
    noise_multiplier: f64,
    sampling_rate: f64,
    steps: u64,
    delta: f64,
    epsilon: f64,
    accountant: &'static str,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let registry = model_arg::registry(store)?;
    let record = registry.check(store, &args.base)?;
    let entry = store.resolve(&args.base)?;
    if entry.format != ModelFormat::Gguf {
        bail!(
            "{} is an embedding model; fine-tuning is for GGUF language models",
            args.base
        );
    }
    let adapters = store.root().join(ADAPTERS_DIR);
    let out = adapters.join(format!("{}.gguf", args.out));
    if out.exists() && !args.force {
        bail!("adapter {} exists ({}); --force replaces it", args.out, out.display());
    }
    let targets: Vec<String> = args
        .targets
        .iter()
        .map(|t| t.trim().trim_end_matches(".weight").to_owned())
        .collect();
    if let Some(unknown) = targets.iter().find(|t| !LINEAR_KINDS.contains(&t.as_str())) {
        bail!("--targets: {unknown} is not one of {}", LINEAR_KINDS.join(", "));
    }

    let key = minerva_seal::Key::from_env()?;
    let tokenizer = LlamaCppModel::load(&entry.path).with_context(|| format!("loading {}", args.base))?;
    let template = ChatTemplate::for_model(&tokenizer)?;
    let records = data::read_jsonl(&args.data)?;
    let dataset = Dataset::prepare(
        &tokenizer,
        &template,
        &records,
        args.eval_split,
        args.seq_len,
        args.seed,
    )?;
    drop(tokenizer);
    if dataset.too_long > 0 {
        eprintln!(
            "{} sequences longer than --seq-len {} are left out",
            dataset.too_long, args.seq_len
        );
    }

    let suffixes: Vec<String> = targets.iter().map(|t| format!("{t}.weight")).collect();
    let suffixes: Vec<&str> = suffixes.iter().map(String::as_str).collect();
    let mut adapter = LoraAdapterFile::init(&entry.path, &suffixes, args.rank, args.alpha, args.seed)?;
    adapter.base_sha256 = Some(record.sha256.clone());
    let loading = progress::spinner(format!("reading {} for training (f32)", args.base));
    let model = LoraLlama::load(&entry.path, adapter)?;
    loading.finish_and_clear();

    let privacy = args.dp.then_some(Privacy {
        clip: args.dp_clip,
        noise: args.dp_noise,
    });
    let options = Options {
        lr: args.lr,
        epochs: args.epochs,
        batch: args.batch,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        privacy,
        key: key.clone(),
    };
    let fingerprint = {
        let mut hash = Sha256::new();
        hash.update(dataset.fingerprint());
        hash.update(&record.sha256);
        hash.update(format!(
            "{} {} {:?} {} {} {:?}",
            args.rank, args.alpha, targets, args.seed, args.batch, privacy
        ));
        format!("{:x}", hash.finalize())
    };
    let run_dir = store.root().join(RUNS_DIR).join(args.out.as_str());
    if args.restart && run_dir.exists() {
        std::fs::remove_dir_all(&run_dir).with_context(|| format!("removing {}", run_dir.display()))?;
    }

    eprintln!(
        "fine-tuning {} on {} examples ({} target tokens), {} held out; rank {}, alpha {}, {} matrices, lr {}, {} epochs of batch {}{}",
        args.base,
        dataset.train.len(),
        dataset.train_targets(),
        dataset.held_out.len(),
        args.rank,
        args.alpha,
        model.vars().len() / 2,
        args.lr,
        args.epochs,
        args.batch,
        if privacy.is_some() { ", DP-SGD" } else { "" }
    );
    let per_epoch = dataset.train.len().div_ceil(args.batch) as u64;
    let bar = progress::bar(per_epoch * args.epochs as u64, "training");
    let outcome = train::run(
        &model,
        &dataset,
        &options,
        Some(&run_dir),
        &fingerprint,
        |event| match event {
            Event::Resumed { step, epoch } => {
                bar.set_position(step);
                say(
                    &bar,
                    format!("resuming {} at step {step} (epoch {})", run_dir.display(), epoch + 1),
                );
            }
            Event::Step {
                epoch,
                step,
                loss,
                tokens_per_s,
                ..
            } => {
                bar.set_position(step);
                bar.set_message(format!("epoch {epoch} loss {loss:.3} {tokens_per_s:.0} tok/s"));
            }
            Event::Epoch(report) => say(
                &bar,
                format!(
                    "epoch {}: train loss {:.4}, held-out loss {}, {:.1} s, {:.0} tok/s",
                    report.epoch,
                    report.train_loss,
                    report.held_out_loss.map_or("-".into(), |l| format!("{l:.4}")),
                    report.seconds,
                    report.tokens_per_s
                ),
            ),
        },
    )?;
    bar.finish_and_clear();

    let privacy_report = privacy.map(|p| {
        let rate = (args.batch as f64 / dataset.train.len() as f64).min(1.0);
        let (epsilon, _) = minerva_train::privacy::epsilon(rate, p.noise, outcome.private_steps, args.dp_delta);
        PrivacyReport {
            clip: p.clip,
            noise_multiplier: p.noise,
            sampling_rate: rate,
            steps: outcome.private_steps,
            delta: args.dp_delta,
            epsilon,
            accountant: "RDP of the sampled Gaussian mechanism, integer orders 2-256",
        }
    });
    std::fs::create_dir_all(&adapters).with_context(|| format!("creating {}", adapters.display()))?;
    model.adapter()?.write_with(&out, key.as_ref())?;
    registry.register_adapter(store, &args.out, Some(&record.sha256), "finetune")?;
    let report = Report {
        base: args.base.to_string(),
        base_sha256: &record.sha256,
        rank: args.rank,
        alpha: args.alpha,
        targets: &targets,
        lr: args.lr,
        epochs: args.epochs,
        batch: args.batch,
        seq_len: args.seq_len,
        train_examples: dataset.train.len(),
        held_out_examples: dataset.held_out.len(),
        train_target_tokens: dataset.train_targets(),
        history: &outcome.history,
        privacy: privacy_report,
    };
    let report_path = adapters.join(format!("{}.json", args.out));
    std::fs::write(&report_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    // The adapter is the result; the checkpoints (derived from the data) go.
    let _ = std::fs::remove_dir_all(&run_dir);
    if let Some(p) = &report.privacy {
        println!(
            "privacy: (ε = {:.2}, δ = {:e}) over {} noisy steps (noise {}, clip {}, sampling rate {:.3})",
            p.epsilon, p.delta, p.steps, p.noise_multiplier, p.clip, p.sampling_rate
        );
    }
    println!(
        "adapter {}{} for {} at {}; use it as {}+{}",
        args.out,
        if key.is_some() { " (encrypted)" } else { "" },
        args.base,
        out.display(),
        args.base,
        args.out
    );
    Ok(())
}
