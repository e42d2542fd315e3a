//! Two models in one process, each with its own thread, share the cores through the
//! engine's compute budget: busy at once, each computes on a share of them. Sharing must
//! not change what either gives: with the other model loaded, and with both busy at once,
//! a language model gives exactly the greedy tokens it gives alone in the process, and an
//! encoder exactly the vectors.

use std::path::PathBuf;

use minerva_engine::TokenId;
use minerva_engine::compute;
use minerva_engine::generate::{FinishReason, GenerateOptions, Generation};
use minerva_engine::sampling::SamplingParams;
use minerva_workers::{GenerationEvent, LlmWorker, LlmWorkerConfig};
use tokio::sync::mpsc::UnboundedReceiver;

const MAX_TOKENS: usize = 48;

fn model_path(id: &str) -> PathBuf {
    let home = std::env::var_os("MINERVA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".local/share/minerva"));
    let path = home.join("models").join(format!("{id}.gguf"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    path
}

fn worker(id: &str) -> LlmWorker {
    let config = LlmWorkerConfig {
        n_ctx: 1024,
        threads: compute::default_threads(),
        // One sequence per model: batch mates would change logits in their last bits.
        parallel: 1,
        prefix_cache_tokens: 0,
        kv_type: minerva_engine::KvType::F16,
        rope: minerva_engine::llm::RopeScaling::Model,
        draft_max: 0,
        batch: LlmWorkerConfig::DEFAULT_BATCH,
        flash_attention: true,
    };
    LlmWorker::start(&model_path(id), config, id).expect("the worker starts")
}

fn prompt(worker: &LlmWorker, text: &str) -> Vec<TokenId> {
    worker.model().tokenize(text, true, false).unwrap()
}

fn greedy() -> GenerateOptions {
    GenerateOptions {
        max_tokens: MAX_TOKENS,
        constraint: None,
        context_shift: None,
        n_ctx: None,
        stop: vec![],
        sampling: SamplingParams::default(),
    }
}

fn collect(mut events: UnboundedReceiver<GenerationEvent>) -> Generation {
    while let Some(event) = events.blocking_recv() {
        if let GenerationEvent::Done(result) = event {
            return result.expect("generation succeeds");
        }
    }
    panic!("the worker hung up without a result");
}

const SMOL: &str = "smollm2-135m-instruct";
const GEMMA: &str = "gemma-3-270m";
const SMOL_PROMPT: &str = "Once upon a time, in a small village at the edge of a great forest, there lived";
const GEMMA_PROMPT: &str = "The history of the printing press begins";

/// The tests of this file one at a time: each asserts what the compute budget's
/// counters saw while its own models were busy.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn two_models_in_one_process_generate_what_each_generates_alone() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // Alone: only one model exists in the process.
    let smol_alone = {
        let smol = worker(SMOL);
        collect(smol.submit(prompt(&smol, SMOL_PROMPT), greedy()))
    };
    let gemma_alone = {
        let gemma = worker(GEMMA);
        collect(gemma.submit(prompt(&gemma, GEMMA_PROMPT), greedy()))
    };
    for (name, alone) in [(SMOL, &smol_alone), (GEMMA, &gemma_alone)] {
        assert_eq!(
            alone.tokens.len(),
            MAX_TOKENS,
            "{name} stopped early ({:?}): the prompt must keep it going",
            alone.finish_reason
        );
        assert_eq!(alone.finish_reason, FinishReason::Length);
    }

    let smol = worker(SMOL);
    let gemma = worker(GEMMA);
    let before = compute::stats();

    // The other model loaded and idle.
    let smol_beside = collect(smol.submit(prompt(&smol, SMOL_PROMPT), greedy()));
    assert_eq!(smol_beside.tokens, smol_alone.tokens, "{SMOL} with {GEMMA} loaded");
    assert_eq!(smol_beside.text, smol_alone.text);

    // Both generating at once, twice each: side by side on a share of the cores each
    // (fewer threads per pass), which must not change a token.
    let runs: Vec<_> = (0..2)
        .flat_map(|_| {
            [
                (SMOL, smol.submit(prompt(&smol, SMOL_PROMPT), greedy())),
                (GEMMA, gemma.submit(prompt(&gemma, GEMMA_PROMPT), greedy())),
            ]
        })
        .collect();
    for (name, events) in runs {
        let generation = collect(events);
        let alone = if name == SMOL { &smol_alone } else { &gemma_alone };
        assert_eq!(
            generation.tokens, alone.tokens,
            "{name} while the other model generates"
        );
        assert_eq!(generation.finish_reason, FinishReason::Length);
    }

    // Every one of those forward passes took a turn of the one compute budget.
    let after = compute::stats();
    let turns = after.turns - before.turns;
    assert!(
        turns >= (5 * MAX_TOKENS) as u64,
        "only {turns} turns were counted for five generations of {MAX_TOKENS} tokens"
    );
    // With two cores or more, the two busy models computed side by side on a share each.
    if compute::cores() >= 2 {
        assert!(
            after.concurrent > before.concurrent,
            "the two busy models never computed side by side: {after:?}"
        );
    }
}

fn minilm_dir() -> PathBuf {
    let dir = model_path(GEMMA).with_file_name("all-minilm-l6-v2");
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/fetch-models.sh",
        dir.display()
    );
    dir
}

#[test]
fn an_encoder_beside_a_busy_language_model_computes_on_a_share_and_embeds_the_same() {
    use minerva_engine::embed::EmbedOptions;
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let encoder = minerva_engine::embed::load(&minilm_dir()).expect("the encoder loads");
    let texts: Vec<String> = (0..48)
        .map(|i| format!("Sentence {i} about the printing press, movable type and the spread of books in Europe."))
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let alone = encoder.embed(&texts, EmbedOptions::default()).unwrap();

    let smol = worker(SMOL);
    let smol_alone = collect(smol.submit(prompt(&smol, SMOL_PROMPT), greedy()));
    let before = compute::stats();
    // The language model generates while the encoder embeds, batch after batch.
    let events = smol.submit(prompt(&smol, SMOL_PROMPT), greedy());
    let generating = std::thread::spawn(move || collect(events));
    let mut beside = Vec::new();
    while !generating.is_finished() || beside.is_empty() {
        beside.push(encoder.embed(&texts, EmbedOptions::default()).unwrap());
    }
    let generation = generating.join().unwrap();
    let after = compute::stats();

    assert_eq!(generation.tokens, smol_alone.tokens, "{SMOL} while the encoder embeds");
    for (round, vectors) in beside.iter().enumerate() {
        for (i, (got, want)) in vectors.iter().zip(&alone).enumerate() {
            assert!(
                got.iter().zip(want).all(|(g, w)| g.to_bits() == w.to_bits()),
                "round {round}, text {i}: the vector beside the busy model differs from the one alone"
            );
        }
    }
    // With two cores or more, the encoder's batches ran beside the language model's
    // passes on a share of the cores, not in turns of all of them.
    if compute::cores() >= 2 {
        assert!(
            after.concurrent > before.concurrent,
            "the encoder and the language model never computed side by side: {after:?} ({} rounds)",
            beside.len()
        );
    }
}
