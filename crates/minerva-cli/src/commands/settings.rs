//! `minerva config NAME key=value…`: a model's own settings (read when it next loads);
//! `minerva show NAME`: everything known of a model.

use std::io::Write;

use anyhow::{Context, Result, bail};
use minerva_store::{ModelId, ModelStore};
use serde_json::json;

use crate::commands::models;
use crate::model_arg;

#[derive(clap::Args)]
pub struct ConfigArgs {
    /// The model.
    name: ModelId,
    /// `key=value` to set, `key=` to go back to the server's default; none to list. Keys:
    /// num_ctx, parallel, threads, draft_max, draft_model, kv_type, batch, flash_attention,
    /// rope_scaling, rope_factor,
    /// system, template, keep_alive, pinned, temperature, top_p, top_k, embedding_dtype.
    settings: Vec<String>,
}

impl ConfigArgs {
    /// Whether the command sets settings (rather than listing them).
    pub fn changes(&self) -> bool {
        !self.settings.is_empty()
    }
}

pub fn config(store: &ModelStore, args: ConfigArgs) -> Result<()> {
    // `NAME:latest` and `NAME` are one model, whichever spelling is stored.
    let name = store.canonical(&args.name);
    let registry = model_arg::registry(store)?;
    registry.check(store, &name)?;
    let mut settings = registry.settings(&name)?;
    for pair in &args.settings {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?}: settings are key=value"))?;
        settings.set(key.trim(), Some(value))?;
    }
    if !args.settings.is_empty() {
        check_template(&settings)?;
        registry.set_settings(&name, &settings)?;
    }
    let mut out = std::io::stdout().lock();
    let pairs = settings.pairs();
    if pairs.is_empty() {
        writeln!(out, "{} uses the server's defaults", name)?;
    }
    for (key, value) in pairs {
        writeln!(out, "{key} = {value:?}")?;
    }
    if !args.settings.is_empty() {
        writeln!(out, "(in effect when {} next loads)", name)?;
    }
    Ok(())
}

/// Refuses a `template` setting that is not a Jinja chat template (an Ollama Go template
/// pasted in, say) before it is stored.
pub fn check_template(settings: &minerva_store::ModelSettings) -> Result<()> {
    if let Some(template) = &settings.template {
        minerva_engine::chat::ChatTemplate::new(template, "", "")
            .context("template: not a Jinja chat template (Ollama's Go templates are not supported)")?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// The model.
    name: ModelId,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn show(store: &ModelStore, args: ShowArgs) -> Result<()> {
    // `NAME:latest` and `NAME` are one model, whichever spelling is stored.
    let name = store.canonical(&args.name);
    let registry = model_arg::registry(store)?;
    let record = registry.check(store, &name)?;
    let settings = registry.settings(&name)?;
    let lineage = registry.lineage(&name)?;
    let history = registry.history(&name)?;
    let entry = store.resolve(&name)?;
    let gguf = minerva_gguf::inspect(&entry.path).ok();
    let report: Option<serde_json::Value> = lineage
        .as_ref()
        .and_then(|l| l.report.as_deref())
        .and_then(|r| serde_json::from_str(r).ok());
    let mut out = std::io::stdout().lock();
    if args.json {
        let body = json!({
            "model": models::json(store, &record)?,
            "context_length": gguf.as_ref().and_then(|g| g.get_u64(&format!("{}.context_length", g.architecture))),
            "license": gguf.as_ref().and_then(|g| g.get_str("general.license")),
            "chat_template": gguf.as_ref().and_then(|g| g.chat_template.clone()),
            "settings": settings,
            "lineage": lineage.as_ref().map(|l| json!({ "source_id": l.source_id, "source_sha256": l.source_sha256, "operation": l.operation, "created_at": l.created_at })),
            "quality_report": report,
            "history": history,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        return Ok(());
    }
    writeln!(out, "{}", models::line(&record))?;
    if let Some(g) = &gguf {
        if let Some(n) = g.get_u64(&format!("{}.context_length", g.architecture)) {
            writeln!(out, "context length  {n}")?;
        }
        if let Some(license) = g.get_str("general.license") {
            writeln!(out, "license         {license}")?;
        }
        if let Some(template) = &g.chat_template {
            let first: String = template.chars().take(120).collect();
            writeln!(
                out,
                "chat template   {} chars: {}…",
                template.len(),
                first.replace('\n', "\\n")
            )?;
        }
    }
    let pairs = settings.pairs();
    if !pairs.is_empty() {
        writeln!(out, "settings")?;
        for (key, value) in pairs {
            writeln!(out, "  {key} = {value:?}")?;
        }
    }
    if let Some(l) = &lineage {
        writeln!(
            out,
            "made by         {} from {} (sha256:{})",
            l.operation, l.source_id, l.source_sha256
        )?;
    }
    if let Some(r) = &report {
        writeln!(
            out,
            "quality         perplexity {:.4} (source {:.4}), mean KL {:.6}, same top token {:.2} %",
            r["quantized"]["perplexity"].as_f64().unwrap_or(f64::NAN),
            r["source"]["perplexity"].as_f64().unwrap_or(f64::NAN),
            r["mean_kl_divergence"].as_f64().unwrap_or(f64::NAN),
            100.0 * r["same_top_token"].as_f64().unwrap_or(f64::NAN)
        )?;
    }
    if !history.is_empty() {
        writeln!(out, "history")?;
        for h in &history {
            writeln!(
                out,
                "  {}  sha256:{}  {}",
                time(h.at),
                &h.sha256[..h.sha256.len().min(12)],
                h.origin
            )?;
        }
    }
    Ok(())
}

fn time(at: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(at).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[derive(clap::Args)]
pub struct TagArgs {
    /// The model whose file the new name gets.
    source: ModelId,
    /// The new (or re-pointed) name; its old file stays as a version.
    target: ModelId,
}

pub fn tag(store: &ModelStore, args: TagArgs) -> Result<()> {
    let source = store.canonical(&args.source);
    let registry = model_arg::registry(store)?;
    let record = registry.tag(store, &source, &args.target)?;
    println!(
        "{} now points at sha256:{} (the file of {})",
        args.target, record.sha256, source
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct NameArgs {
    /// The model.
    name: ModelId,
}

pub fn history(store: &ModelStore, args: NameArgs) -> Result<()> {
    // `NAME:latest` and `NAME` are one model, whichever spelling is stored.
    let name = store.canonical(&args.name);
    let registry = model_arg::registry(store)?;
    let history = registry.history(&name)?;
    if history.is_empty() {
        bail!(
            "{} has no recorded history (it was found in the models directory, not imported)",
            name
        );
    }
    let current = registry.record(&name)?.map(|r| r.sha256);
    for h in history {
        let mark = if current.as_deref() == Some(h.sha256.as_str()) {
            "*"
        } else {
            " "
        };
        println!("{mark} {}  sha256:{}  {}", time(h.at), h.sha256, h.origin);
    }
    Ok(())
}

pub fn rollback(store: &ModelStore, args: NameArgs) -> Result<()> {
    // `NAME:latest` and `NAME` are one model, whichever spelling is stored.
    let name = store.canonical(&args.name);
    let registry = model_arg::registry(store)?;
    let record = registry.rollback(store, &name)?;
    println!("{} points at sha256:{} again", name, record.sha256);
    Ok(())
}
