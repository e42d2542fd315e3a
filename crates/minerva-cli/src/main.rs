//! `minerva`: the command-line face of Minerva.
//!
//! Arguments are parsed once into typed options here, at the edge; each subcommand lives
//! in its own module under `commands/` and talks to the engine and runtime crates only.
//! This is the one place where `anyhow` is used and errors become exit codes.

mod commands;
mod model_arg;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Minerva: a local-first model server.
#[derive(Parser)]
#[command(name = "minerva", version, about)]
struct Cli {
    /// Minerva's data directory; models live in its `models/` folder.
    #[arg(long, global = true, env = "MINERVA_HOME")]
    home: Option<PathBuf>,

    /// The model registry: a SQLite file, or `postgres://USER:PASSWORD@HOST:PORT/DB` for
    /// one registry shared by several replicas (names, tags, versions, settings, usage and
    /// audit). Default: `registry.sqlite` in the data directory.
    #[arg(long, global = true, env = "MINERVA_REGISTRY", hide_env_values = true)]
    registry: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt with a GGUF model.
    Generate(commands::generate::Args),
    /// Print the token ids a model sees for a text.
    Tokenize(commands::tokenize::Args),
    /// Measure a model's perplexity on a text (llama.cpp's method).
    Perplexity(commands::perplexity::Args),
    /// Embed sentences with an embedding model.
    Embed(commands::embed::Args),
    /// Measure prefill and decode speed, or replay a request trace against the model pool (`bench pool`).
    Bench(BenchArgs),
    /// List the models directory with sizes, hashes and integrity status.
    Models(commands::models::Args),
    /// Copy (or hard-link) a model into the models directory and register it.
    Import(commands::import::Args),
    /// Download a model from a Hugging Face-compatible hub, an Ollama-style registry or a URL.
    Pull(commands::pull::Args),
    /// Make a quantized tag of a model with llama.cpp's quantizer, with a quality report.
    Quantize(commands::quantize::Args),
    /// Make a model from an Ollama-style Modelfile (FROM, PARAMETER, SYSTEM).
    Create(commands::create::Args),
    /// Train a LoRA adapter for a store model on local chat or prompt/completion JSONL (CPU).
    Finetune(commands::finetune::Args),
    /// Make a key for encryption at rest (fine-tuned adapters, checkpoints, the embedding cache).
    Keygen(commands::keygen::Args),
    /// LoRA adapters of the store (`adapters/`), served as `BASE+NAME`.
    #[command(subcommand)]
    Adapter(commands::adapter::Command),
    /// A model's own settings (context, KV type, system prompt, sampling), read when it loads.
    Config(commands::settings::ConfigArgs),
    /// Everything known of a model: metadata, template, settings, lineage, quality, history.
    Show(commands::settings::ShowArgs),
    /// Give a model's file another name (one copy on disk); an existing name keeps its old file as a version.
    Tag(commands::settings::TagArgs),
    /// Every file a name pointed at, when and from where.
    History(commands::settings::NameArgs),
    /// Point a name back at its previous file.
    Rollback(commands::settings::NameArgs),
    /// Remove models from the models directory and the registry.
    Rm(commands::pull::RmArgs),
    /// Re-hash models and compare with their registered SHA-256.
    Verify(commands::verify::Args),
    /// Serve the models directory over the OpenAI-compatible HTTP API.
    Serve(commands::serve::Args),
    /// Chat with a model of a running server (one prompt, or interactively).
    Run(commands::client::RunArgs),
    /// List the models a running server has loaded.
    Ps(commands::client::ServerArgs),
    /// Unload a model from a running server.
    Stop(commands::client::StopArgs),
    /// Status, promote and rollback of an A/B experiment of a running server.
    Experiment(commands::client::ExperimentArgs),
    /// A running server's models, memory, load and latency, refreshed like `top`.
    Top(commands::top::Args),
    /// Administrative actions recorded in the registry: who loaded, unloaded, imported,
    /// pulled, removed or reconfigured what, and when.
    Audit(commands::audit::Args),
    /// Find the threads, parallel sequences, KV type and speculative drafts under which a
    /// model serves fastest on this machine, and store them as its settings.
    Tune(commands::tune::Args),
    /// What this machine and build give Minerva: CPU features and the kernels chosen,
    /// memory and cgroup limits, GPUs, and the state of the models and the registry.
    Doctor(commands::doctor::Args),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchCommand>,
    #[command(flatten)]
    speed: commands::bench::Args,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Replay a timed request trace against the model pool, once per eviction policy.
    Pool(commands::bench_pool::Args),
    /// An embedding model's throughput and latency beside the machine's matrix-product
    /// rate on the model's shapes.
    Embed(commands::bench_embed::Args),
    /// What the registry's calls cost on the SQLite file and on a shared PostgreSQL
    /// database, side by side.
    Registry(commands::bench_registry::Args),
}

/// Logs to stderr (`MINERVA_LOG`), and for `serve --otlp-endpoint` the request spans to
/// a collector as well (all of them: the log filter does not apply to the export).
fn init_tracing(cli: &Cli) -> anyhow::Result<Option<minerva_server::otlp::Exporter>> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("MINERVA_LOG").unwrap_or_else(|_| "warn,llama-cpp-2=error".into());
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let endpoint = match &cli.command {
        Command::Serve(args) => args.otlp_endpoint.clone(),
        _ => None,
    };
    match endpoint {
        None => {
            tracing_subscriber::registry().with(log).init();
            Ok(None)
        }
        Some(endpoint) => {
            let (export, exporter) = minerva_server::otlp::layer(&endpoint, "minerva")?;
            // Minerva's own spans only (not every dependency's).
            let export = export.with_filter(
                tracing_subscriber::filter::Targets::new().with_target("minerva_server", tracing::Level::INFO),
            );
            tracing_subscriber::registry().with(log).with(export).init();
            Ok(Some(exporter))
        }
    }
}

fn main() -> ExitCode {
    minerva_pull::install_crypto_provider();
    let cli = Cli::parse();
    let exporter = match init_tracing(&cli) {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store = model_arg::store(cli.home);
    model_arg::use_registry(cli.registry);
    // Commands that change the store go to the audit log, however they end.
    let audited = match &cli.command {
        Command::Import(_) => Some(("import", "import")),
        Command::Pull(_) => Some(("pull", "pull")),
        Command::Rm(_) => Some(("rm", "remove")),
        Command::Quantize(_) => Some(("quantize", "quantize")),
        Command::Create(_) => Some(("create", "create")),
        Command::Adapter(_) => Some(("adapter", "adapter")),
        Command::Finetune(_) => Some(("finetune", "finetune")),
        Command::Config(args) if args.changes() => Some(("config", "config")),
        Command::Tag(_) => Some(("tag", "tag")),
        Command::Rollback(_) => Some(("rollback", "rollback")),
        Command::Tune(_) => Some(("tune", "tune")),
        _ => None,
    };
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(&store, args),
        Command::Tokenize(args) => commands::tokenize::run(&store, args),
        Command::Perplexity(args) => commands::perplexity::run(&store, args),
        Command::Embed(args) => commands::embed::run(&store, args),
        Command::Bench(BenchArgs {
            what: Some(BenchCommand::Pool(args)),
            ..
        }) => commands::bench_pool::run(&store, args),
        Command::Bench(BenchArgs {
            what: Some(BenchCommand::Embed(args)),
            ..
        }) => commands::bench_embed::run(&store, args),
        Command::Bench(BenchArgs {
            what: Some(BenchCommand::Registry(args)),
            ..
        }) => commands::bench_registry::run(&store, args),
        Command::Bench(BenchArgs { what: None, speed }) => commands::bench::run(&store, speed),
        Command::Models(args) => commands::models::run(&store, args),
        Command::Doctor(args) => commands::doctor::run(&store, args),
        Command::Import(args) => commands::import::run(&store, args),
        Command::Verify(args) => commands::verify::run(&store, args),
        Command::Pull(args) => commands::pull::run(&store, args),
        Command::Rm(args) => commands::pull::rm(&store, args),
        Command::Quantize(args) => commands::quantize::run(&store, args),
        Command::Create(args) => commands::create::run(&store, args),
        Command::Adapter(command) => commands::adapter::run(&store, command),
        Command::Finetune(args) => commands::finetune::run(&store, args),
        Command::Keygen(args) => commands::keygen::run(args),
        Command::Config(args) => commands::settings::config(&store, args),
        Command::Show(args) => commands::settings::show(&store, args),
        Command::Tag(args) => commands::settings::tag(&store, args),
        Command::History(args) => commands::settings::history(&store, args),
        Command::Rollback(args) => commands::settings::rollback(&store, args),
        Command::Tune(args) => commands::tune::run(&store, args),
        Command::Serve(args) => commands::serve::run(store.clone(), args),
        Command::Run(args) => commands::client::run(args),
        Command::Ps(args) => commands::client::ps(args),
        Command::Stop(args) => commands::client::stop(args),
        Command::Experiment(args) => commands::client::experiment(args),
        Command::Top(args) => commands::top::run(args),
        Command::Audit(args) => commands::audit::run(&store, args),
    };
    if let Some((command, action)) = audited {
        commands::audit::record(&store, command, action, &result);
    }
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_message(&e));
            ExitCode::FAILURE
        }
    }
}

/// `error` and its causes, joined by ": ", each cause once: many errors already name
/// their cause in their own message (`PATH: No space left on device`), and the chain
/// would repeat it.
fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::error_message;

    #[test]
    fn an_error_names_its_cause_once() {
        let full = std::io::Error::from_raw_os_error(28);
        let error = anyhow::Error::new(minerva_store::RegistryError::Io {
            path: "/m/.import-x.partial".into(),
            source: full,
        })
        .context("importing x.gguf");
        let message = error_message(&error);
        assert_eq!(message.matches("os error 28").count(), 1, "{message}");
        assert!(
            message.starts_with("importing x.gguf: /m/.import-x.partial: "),
            "{message}"
        );
        // A cause the message does not name is still shown.
        let plain = anyhow::anyhow!("disk").context("saving");
        assert_eq!(error_message(&plain), "saving: disk");
    }
}
