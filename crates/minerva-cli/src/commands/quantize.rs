//! `minerva quantize SOURCE --type q8_0`: a new tag of a model made by llama.cpp's own
//! quantizer, registered with its lineage and a quality report measured against the
//! source (perplexity of each, mean KL divergence and top-token agreement by llama.cpp's
//! method, file size, prefill and decode speed).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use minerva_engine::llm::quantize::{QuantType, quantize};
use minerva_engine::perplexity::{DEFAULT_EVAL_TEXT, compare};
use minerva_engine::{KvType, LanguageModel, SessionParams};
use minerva_store::{ImportMode, ImportOptions, Lineage, ModelFormat, ModelId, ModelRecord, ModelStore, now_millis};
use serde_json::json;

use crate::commands::bench::{SpeedTest, speed};
use crate::commands::models;
use crate::{model_arg, progress};

#[derive(clap::Args)]
pub struct Args {
    /// The model to quantize (a GGUF language model in the store).
    source: ModelId,
    /// The type: f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q5_1, q5_0, q4_k_m, q4_k_s, q4_1,
    /// q4_0, q3_k_l, q3_k_m, q3_k_s.
    #[arg(long = "type", short = 't', value_parser = parse_type)]
    quant: QuantType,
    /// The new model's name (default: SOURCE:TYPE, or SOURCE-TYPE when SOURCE has a tag).
    #[arg(long = "as")]
    name: Option<ModelId>,
    /// Text the report scores both models on (default: a built-in text, the GPL-3).
    #[arg(long)]
    eval_file: Option<PathBuf>,
    /// Tokens per scored chunk.
    #[arg(long, default_value_t = 512)]
    ctx: u32,
    /// CPU threads.
    #[arg(long, short = 'j')]
    threads: Option<usize>,
    /// Skip the quality report (quantize and register only).
    #[arg(long)]
    no_report: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_type(text: &str) -> Result<QuantType, String> {
    text.parse().map_err(|e: minerva_engine::EngineError| e.to_string())
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let registry = model_arg::registry(store)?;
    let threads = args.threads.unwrap_or_else(minerva_engine::compute::default_threads);
    // Everything that can be refused is refused before the work starts.
    let source = registry.check(store, &args.source)?;
    if store.resolve(&args.source)?.format != ModelFormat::Gguf {
        bail!(
            "{} is an embedding model; only GGUF language models can be quantized",
            args.source
        );
    }
    let name = match args.name {
        Some(name) => name,
        None if args.source.as_str().contains(':') => ModelId::new(&format!("{}-{}", args.source, args.quant))?,
        None => ModelId::new(&format!("{}:{}", args.source, args.quant))?,
    };
    if registry.record(&name)?.is_some() || store.resolve(&name).is_ok() {
        bail!("model {name} exists already; remove it first (`minerva rm {name}`) or choose another --as");
    }
    let (eval_text, eval_name) = match &args.eval_file {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (DEFAULT_EVAL_TEXT.to_owned(), "built-in text (GPL-3)".to_owned()),
    };
    let eval_text = eval_text.strip_suffix('\n').unwrap_or(&eval_text).to_owned();
    // The source model scores the text for the report; a text shorter than one chunk is
    // refused now, not after the quantization.
    let base = if args.no_report {
        None
    } else {
        let base = model_arg::load_llm(store, args.source.as_str())?;
        let tokens = base.tokenize(&eval_text, true, false)?.len();
        if tokens < args.ctx as usize {
            bail!(
                "{eval_name} has {tokens} tokens, less than one chunk of --ctx {}; use a longer text or a smaller --ctx",
                args.ctx
            );
        }
        Some(base)
    };

    let partial = store.root().join(format!(".quantize-{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let spinner = progress::spinner(format!("quantizing {} to {}", args.source, args.quant));
    let source_path = store.resolve(&args.source)?.path;
    let made = quantize(&source_path, &partial, args.quant, threads);
    spinner.finish_and_clear();
    made.with_context(|| format!("quantizing {}", args.source))?;
    let import = ImportOptions {
        id: Some(name.clone()),
        mode: ImportMode::HardLink,
        origin: format!("quantize {} of {} ({})", args.quant, args.source, source.sha256),
        ..Default::default()
    };
    let record = registry.import(store, &partial, &import, &mut |_, _| {});
    let _ = std::fs::remove_file(&partial);
    let record = record?;

    // The lineage is recorded with the model; the report joins it once measured.
    let mut lineage = Lineage {
        source_id: args.source.to_string(),
        source_sha256: source.sha256.clone(),
        operation: format!("quantize {}", args.quant),
        created_at: now_millis(),
        report: None,
    };
    registry.set_lineage(&name, &lineage)?;
    let report = match base {
        None => None,
        Some(base) => Some(quality_report(
            store,
            &*base,
            &source,
            &record,
            (&eval_text, &eval_name),
            args.ctx,
            threads,
        )?),
    };
    if let Some(report) = &report {
        lineage.report = Some(report.to_string());
        registry.set_lineage(&name, &lineage)?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let body = json!({ "model": models::json(store, &record)?, "report": report });
        writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        return Ok(());
    }
    writeln!(out, "made {name} from {} ({})", args.source, args.quant)?;
    writeln!(out, "{}", models::line(&record))?;
    if let Some(report) = &report {
        print_report(&mut out, report)?;
    }
    Ok(())
}

/// Scores both models on `text` side by side and measures their speed.
fn quality_report(
    store: &ModelStore,
    base: &dyn LanguageModel,
    source: &ModelRecord,
    made: &ModelRecord,
    (text, text_name): (&str, &str),
    ctx: u32,
    threads: usize,
) -> Result<serde_json::Value> {
    let quant = model_arg::load_llm(store, made.id.as_str())?;
    let params = SessionParams {
        n_ctx: ctx,
        n_batch: ctx,
        n_seq_max: 1,
        threads,
        kv_type: KvType::F16,
        rope: minerva_engine::llm::RopeScaling::Model,
        flash_attention: true,
    };
    let mut base_session = base.new_session(params.clone())?;
    let mut quant_session = quant.new_session(params)?;
    let bar = progress::bar(0, "scoring both models");
    let comparison = compare(
        (base, base_session.as_mut()),
        (&*quant, quant_session.as_mut()),
        text,
        ctx as usize,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    drop((base_session, quant_session));
    let test = SpeedTest {
        threads,
        kv_type: KvType::F16,
        prompt_tokens: 128,
        gen_tokens: 32,
        repetitions: 3,
    };
    let bar = progress::bar(16, "measuring speed");
    let measure = |model: &dyn LanguageModel| speed(model, &test, &mut || bar.inc(1)).map(|s| s.medians());
    let (base_pp, base_tg) = measure(base)?;
    let (pp, tg) = measure(&*quant)?;
    bar.finish_and_clear();
    Ok(json!({
        "eval": { "text": text_name, "n_ctx": ctx, "chunks": comparison.chunks, "scored_tokens": comparison.scored_tokens },
        "source": { "id": source.id, "sha256": source.sha256, "quantization": source.quantization,
                    "size_bytes": source.size_bytes, "perplexity": comparison.base_perplexity,
                    "prefill_tokens_per_second": base_pp, "decode_tokens_per_second": base_tg },
        "quantized": { "id": made.id, "sha256": made.sha256, "quantization": made.quantization,
                       "size_bytes": made.size_bytes, "perplexity": comparison.perplexity,
                       "prefill_tokens_per_second": pp, "decode_tokens_per_second": tg },
        "mean_kl_divergence": comparison.mean_kl_divergence,
        "same_top_token": comparison.same_top_token,
        "threads": threads,
        "speed_test": "pp128, tg32, median of 3",
    }))
}

fn print_report(out: &mut impl Write, r: &serde_json::Value) -> Result<()> {
    let (s, q) = (&r["source"], &r["quantized"]);
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    writeln!(
        out,
        "\nquality report ({}, {} chunks of {} tokens, {} positions scored; speed pp128/tg32, {} threads)",
        r["eval"]["text"].as_str().unwrap_or(""),
        r["eval"]["chunks"],
        r["eval"]["n_ctx"],
        r["eval"]["scored_tokens"],
        r["threads"]
    )?;
    writeln!(
        out,
        "| | source ({}) | quantized ({}) | ratio |",
        s["quantization"].as_str().unwrap_or(""),
        q["quantization"].as_str().unwrap_or("")
    )?;
    writeln!(out, "|---|---|---|---|")?;
    writeln!(
        out,
        "| perplexity | {:.4} | {:.4} | {:.4} |",
        f(&s["perplexity"]),
        f(&q["perplexity"]),
        f(&q["perplexity"]) / f(&s["perplexity"])
    )?;
    writeln!(
        out,
        "| file size (MB) | {:.1} | {:.1} | {:.3} |",
        u(&s["size_bytes"]) as f64 / 1e6,
        u(&q["size_bytes"]) as f64 / 1e6,
        u(&q["size_bytes"]) as f64 / u(&s["size_bytes"]) as f64
    )?;
    for (name, key) in [
        ("prefill tok/s", "prefill_tokens_per_second"),
        ("decode tok/s", "decode_tokens_per_second"),
    ] {
        writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.2}x |",
            f(&s[key]),
            f(&q[key]),
            f(&q[key]) / f(&s[key])
        )?;
    }
    writeln!(
        out,
        "mean KL divergence {:.6} nats; same top token at {:.2} % of positions",
        f(&r["mean_kl_divergence"]),
        100.0 * f(&r["same_top_token"])
    )?;
    Ok(())
}
