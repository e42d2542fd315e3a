//! `minerva generate`: one prompt in, generated text out (streamed, or as JSON).

use std::io::Write;

use anyhow::Result;
use minerva_engine::chat::{ChatMessage, ChatTemplate, chat_prompt_tokens};
use minerva_engine::generate::{GenerateOptions, Generation, generate};
use minerva_engine::sampling::SamplingParams;
use minerva_engine::{LanguageModel, SeqId, SessionParams, TokenId};
use minerva_store::ModelStore;

use crate::model_arg;

#[derive(clap::Args)]
pub struct Args {
    /// Model id in the models directory, or a path to a GGUF file.
    #[arg(long, short)]
    model: String,
    /// The prompt.
    #[arg(long, short)]
    prompt: String,
    /// Treat the prompt as a user message and render it with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Parse special-token text (e.g. `<|im_start|>`) in a raw prompt into special tokens.
    #[arg(long)]
    special: bool,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens below this fraction of the best token's probability.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalty for repeating recent tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// OpenAI-style frequency penalty.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// OpenAI-style presence penalty.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Random seed; the same seed and prompt give the same output.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop sequence (repeatable); the output is cut before it.
    #[arg(long)]
    stop: Vec<String>,
    /// Report this many alternatives per token with their log probabilities (JSON output).
    #[arg(long)]
    logprobs: Option<usize>,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(long)]
    ctx: Option<u32>,
    /// CPU threads.
    #[arg(long, short)]
    threads: Option<usize>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let model = model_arg::load_llm(store, &args.model)?;
    let prompt_tokens = prompt(&*model, &args)?;
    let n_ctx = args.ctx.unwrap_or_else(|| model.metadata().n_ctx_train.min(4096));
    let mut session = model.new_session(SessionParams {
        n_ctx,
        n_batch: n_ctx.min(2048),
        n_seq_max: 1,
        threads: args.threads.unwrap_or_else(minerva_engine::compute::default_threads),
        kv_type: minerva_engine::KvType::F16,
        rope: minerva_engine::llm::RopeScaling::Model,
        flash_attention: true,
    })?;
    let options = options(&args);
    let mut stdout = std::io::stdout().lock();
    let stream = !args.json;
    let generation = generate(
        &*model,
        session.as_mut(),
        SeqId(0),
        &prompt_tokens,
        &options,
        &mut |text: &str| {
            if stream {
                // A closed stdout (e.g. `| head`) is not worth failing the generation over.
                let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
            }
        },
    )?;
    if args.json {
        let out = report(&*model, &args, &prompt_tokens, &generation);
        writeln!(stdout, "{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        writeln!(stdout)?;
    }
    Ok(())
}

/// The prompt's tokens: the chat template's rendering with `--chat`, the raw text otherwise.
fn prompt(model: &dyn LanguageModel, args: &Args) -> Result<Vec<TokenId>> {
    if !args.chat {
        return Ok(model.tokenize(&args.prompt, true, args.special)?);
    }
    let template = ChatTemplate::for_model(model)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system.clone()));
    }
    messages.push(ChatMessage::new("user", args.prompt.clone()));
    Ok(chat_prompt_tokens(model, &template, &messages)?)
}

fn options(args: &Args) -> GenerateOptions {
    GenerateOptions {
        max_tokens: args.max_tokens,
        constraint: None,
        context_shift: None,
        n_ctx: None,
        stop: args.stop.clone(),
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            frequency_penalty: args.frequency_penalty,
            presence_penalty: args.presence_penalty,
            seed: args.seed,
            top_logprobs: args.logprobs,
            ..SamplingParams::default()
        },
    }
}

/// `--json`: the tokens, text, finish reason, log-probabilities and timings.
fn report(
    model: &dyn LanguageModel,
    args: &Args,
    prompt_tokens: &[TokenId],
    generation: &Generation,
) -> serde_json::Value {
    let piece = |t| String::from_utf8_lossy(&model.token_bytes(t, true)).into_owned();
    let logprobs: Option<Vec<_>> = args.logprobs.map(|_| {
        generation
            .logprobs
            .iter()
            .map(|s| {
                serde_json::json!({
                    "token": s.token,
                    "text": piece(s.token),
                    "logprob": s.logprob,
                    "top_logprobs": s.top.iter().map(|&(t, lp)| serde_json::json!({"token": t, "text": piece(t), "logprob": lp})).collect::<Vec<_>>(),
                })
            })
            .collect()
    });
    serde_json::json!({
        "model": args.model,
        "prompt_tokens": prompt_tokens,
        "tokens": generation.tokens,
        "text": generation.text,
        "finish_reason": generation.finish_reason,
        "logprobs": logprobs,
        "timings": generation.timings,
    })
}
