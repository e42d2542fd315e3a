//! The trainer on the real SmolLM2: its forward pass is llama.cpp's, a trained adapter
//! exported in llama.cpp's format gives through llama.cpp the distribution the trainer
//! computed, chat data is learned on the assistant's tokens only, and a run resumed from
//! its checkpoint ends where an uninterrupted one does.

use std::path::PathBuf;

use minerva_engine::chat::{ChatMessage, ChatTemplate, chat_prompt_tokens};
use minerva_engine::llm::llama::LlamaCppModel;
use minerva_engine::llm::lora::{self, LoraAdapterFile};
use minerva_engine::llm::{LogitsWanted, RopeScaling, SequenceInput};
use minerva_engine::{KvType, LanguageModel, SeqId, SessionParams};
use minerva_train::data::{Dataset, Record, tokenize};
use minerva_train::model::{LINEAR_KINDS, LoraLlama};
use minerva_train::train::{self, Options};

fn base_path() -> PathBuf {
    let home = std::env::var_os("MINERVA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".local/share/minerva"));
    let path = home.join("models/smollm2-135m-instruct.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    path
}

/// Eight chat examples about an invented island (shared with the CLI's tests).
fn records() -> Vec<Record> {
    minerva_train::data::read_jsonl(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/orvane.jsonl"),
    )
    .unwrap()
}

fn all_targets() -> Vec<String> {
    LINEAR_KINDS.iter().map(|k| format!("{k}.weight")).collect()
}

fn fresh_adapter(base: &std::path::Path, rank: usize, seed: u64) -> LoraAdapterFile {
    let targets = all_targets();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    LoraAdapterFile::init(base, &targets, rank, 2.0 * rank as f32, seed).unwrap()
}

fn options(epochs: usize) -> Options {
    Options {
        lr: 5e-3,
        epochs,
        batch: 4,
        seed: 1,
        checkpoint_every: 0,
        privacy: None,
        key: None,
    }
}

/// llama.cpp's next-token logits after every position of `tokens`.
fn llama_logits(
    model: &LlamaCppModel,
    adapter: Option<std::sync::Arc<dyn minerva_engine::llm::Adapter>>,
    tokens: &[u32],
) -> Vec<Vec<f32>> {
    let mut session = model
        .new_session(SessionParams {
            n_ctx: 256,
            n_batch: 256,
            n_seq_max: 1,
            threads: 2,
            kv_type: KvType::F16,
            rope: RopeScaling::Model,
            flash_attention: true,
        })
        .unwrap();
    session.set_adapter(adapter.map(|a| (a, 1.0))).unwrap();
    let tokens: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let rows = session
        .decode(&[SequenceInput {
            seq: SeqId(0),
            tokens: &tokens,
            start_pos: 0,
            logits: LogitsWanted::From(0),
        }])
        .unwrap();
    rows[0].iter().map(|r| r.to_vec()).collect()
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row.iter().map(|&x| x as f64 - max - sum.ln()).collect()
}

/// How far apart two runs' next-token distributions are, over all positions: the largest
/// KL divergence `KL(a || b)` and the largest difference of one token's probability.
fn distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f64, f64) {
    a.iter().zip(b).fold((0.0, 0.0), |(kl, dp), (x, y)| {
        let (lx, ly) = (log_softmax(x), log_softmax(y));
        let row_kl: f64 = lx.iter().zip(&ly).map(|(p, q)| p.exp() * (p - q)).sum();
        let row_dp = lx
            .iter()
            .zip(&ly)
            .map(|(p, q)| (p.exp() - q.exp()).abs())
            .fold(0.0, f64::max);
        (f64::max(kl, row_kl), f64::max(dp, row_dp))
    })
}

fn argmaxes(rows: &[Vec<f32>]) -> Vec<usize> {
    rows.iter()
        .map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0)
        .collect()
}

/// The fidelity test of the issue: an adapter trained here, written in llama.cpp's format
/// and applied by llama.cpp to the base, gives the next-token distributions the trainer's
/// own model (base plus adapter) gives, at every position of a prompt. Both read the same
/// f32 weights (the Q8_0 file dequantized: llama.cpp on the Q8_0 file would also round the
/// activations to 8 bits). What remains is two f32 implementations of one graph (ggml's
/// kernels with their SIMD `exp` in softmax and SiLU, against gemm and Candle) summing in
/// different orders. Measured on the AMX machine, the untrained base: largest KL 4.6e-5,
/// largest change of one token's probability 3.1e-3; with the trained adapter (whose
/// effect is a KL of 12.8): 3.0e-5 and 1.9e-3, no worse than the base. Allowed: 2e-4 and
/// 1.5e-2. An adapter scale off by 1 % would, as KL grows with the square of a small
/// logit change, show about 1e-4 of the effect's KL, near 1e-3 here (an estimate, not a
/// run); a transposed factor or a wrong RoPE pairing would show the whole effect.
#[test]
fn a_trained_adapter_through_llama_cpp_gives_the_trainers_distribution() {
    let base = base_path();
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("f32.gguf");
    lora::dequantize(&base, &f32_path).unwrap();
    let reference = LlamaCppModel::load(&f32_path).unwrap();
    let template = ChatTemplate::for_model(&reference).unwrap();
    let data = Dataset::prepare(&reference, &template, &records(), 0.0, 256, 1).unwrap();

    let model = LoraLlama::load(&base, fresh_adapter(&base, 8, 3)).unwrap();
    let prompt = chat_prompt_tokens(
        &reference,
        &template,
        &[ChatMessage::new(
            "user",
            "Tell me about the sky of Orvane and who rules it.",
        )],
    )
    .unwrap();
    let prompt: Vec<u32> = prompt.into_iter().map(|t| t as u32).collect();
    // Untrained (B = 0): the trainer's forward pass is llama.cpp's.
    let plain = llama_logits(&reference, None, &prompt);
    let (base_kl, base_dp) = distance(&plain, &model.logits(&prompt).unwrap());
    eprintln!("base: trainer against llama.cpp: KL {base_kl:.2e}, probability {base_dp:.2e}");
    train::run(&model, &data, &options(3), None, "fidelity", |_| {}).unwrap();
    let adapter_path = dir.path().join("adapter.gguf");
    model.adapter().unwrap().write(&adapter_path).unwrap();
    let adapter = reference.load_adapter(&adapter_path, None, None).unwrap();
    let through_llama = llama_logits(&reference, Some(adapter), &prompt);
    let trainer = model.logits(&prompt).unwrap();
    let (effect_kl, effect_dp) = distance(&through_llama, &plain);
    let (kl, dp) = distance(&through_llama, &trainer);
    eprintln!(
        "adapter: effect KL {effect_kl:.3}, probability {effect_dp:.3}; trainer against llama.cpp: KL {kl:.2e}, probability {dp:.2e}"
    );
    assert!(effect_dp > 0.2, "training barely moved the distribution: {effect_dp}");
    assert!(
        base_kl < 2e-4 && base_dp < 1.5e-2,
        "the trainer's base forward is not llama.cpp's"
    );
    assert!(
        kl < 2e-4 && dp < 1.5e-2,
        "llama.cpp with the adapter is not the trainer's model: KL {kl}, probability {dp}"
    );
    assert_eq!(argmaxes(&through_llama), argmaxes(&trainer));
}

/// A conversation is learned on what the assistant says (its reply and end-of-turn
/// marker), after a prompt tokenized exactly as the server tokenizes a chat request; two
/// assistant turns share one sequence.
#[test]
fn chat_data_is_learned_on_the_assistants_tokens_only() {
    let model = LlamaCppModel::load(&base_path()).unwrap();
    let template = ChatTemplate::for_model(&model).unwrap();
    let messages = vec![
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello there."),
        ChatMessage::new("user", "Bye"),
        ChatMessage::new("assistant", "Goodbye."),
    ];
    let examples = tokenize(
        &model,
        &template,
        &Record::Chat {
            messages: messages.clone(),
        },
    )
    .unwrap();
    assert_eq!(examples.len(), 1, "the turns share one sequence");
    let example = &examples[0];
    let ids = |tokens: Vec<i32>| -> Vec<u32> { tokens.into_iter().map(|t| t as u32).collect() };
    let first_prompt = ids(chat_prompt_tokens(&model, &template, &messages[..1]).unwrap());
    assert_eq!(&example.tokens[..first_prompt.len()], &first_prompt[..]);
    assert!(example.mask[..first_prompt.len()].iter().all(|m| !m));
    let second_prompt = ids(chat_prompt_tokens(&model, &template, &messages[..3]).unwrap());
    assert_eq!(&example.tokens[..second_prompt.len()], &second_prompt[..]);
    // The targets, read back: both replies with their end-of-turn markers.
    let text = |tokens: Vec<u32>| -> String {
        tokens
            .into_iter()
            .flat_map(|t| model.token_bytes(t as i32, true))
            .map(char::from)
            .collect()
    };
    let targets: Vec<u32> = example
        .tokens
        .iter()
        .zip(&example.mask)
        .filter(|(_, m)| **m)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(text(targets), "Hello there.<|im_end|>\nGoodbye.<|im_end|>\n");
    // Prompt/completion text: BOS + prompt, then the completion and EOS as targets.
    let text_example = &tokenize(
        &model,
        &template,
        &Record::Text {
            prompt: "Two plus two is".into(),
            completion: " four".into(),
        },
    )
    .unwrap()[0];
    let eos = model.metadata().eos_token.unwrap() as u32;
    assert_eq!(text_example.tokens.last(), Some(&eos));
    assert_eq!(
        text_example.targets(),
        model.tokenize(" four", false, false).unwrap().len() + 1
    );
}

/// A run stopped after its first epoch and started again from its checkpoint ends with
/// the adapter an uninterrupted run of both epochs ends with (the data order, the factors
/// and AdamW's moments all come back).
#[test]
fn a_run_resumed_from_its_checkpoint_ends_where_an_uninterrupted_one_does() {
    let base = base_path();
    let tokenizer = LlamaCppModel::load(&base).unwrap();
    let template = ChatTemplate::for_model(&tokenizer).unwrap();
    let data = Dataset::prepare(&tokenizer, &template, &records(), 0.25, 256, 1).unwrap();
    assert_eq!(data.held_out.len(), 2);

    let whole = LoraLlama::load(&base, fresh_adapter(&base, 4, 5)).unwrap();
    let history = train::run(&whole, &data, &options(2), None, "run", |_| {})
        .unwrap()
        .history;
    assert_eq!(history.len(), 2);
    assert!(history[1].train_loss < history[0].train_loss, "{history:?}");
    assert!(
        history
            .iter()
            .all(|e| e.held_out_loss.is_some() && e.tokens_per_s > 0.0)
    );

    let dir = tempfile::tempdir().unwrap();
    let first = LoraLlama::load(&base, fresh_adapter(&base, 4, 5)).unwrap();
    train::run(&first, &data, &options(1), Some(dir.path()), "run", |_| {}).unwrap();
    drop(first);
    let resumed = LoraLlama::load(&base, fresh_adapter(&base, 4, 5)).unwrap();
    let mut resumed_at = None;
    let again = train::run(&resumed, &data, &options(2), Some(dir.path()), "run", |event| {
        if let train::Event::Resumed { step, .. } = event {
            resumed_at = Some(step);
        }
    })
    .unwrap();
    assert_eq!(
        resumed_at,
        Some(2),
        "one epoch of 6 examples in batches of 4 is 2 steps"
    );
    assert_eq!(again.history.len(), 2);
    assert_eq!(again.history[0].train_loss, history[0].train_loss);
    assert_eq!(again.history[1].held_out_loss, history[1].held_out_loss);
    let (a, b) = (whole.adapter().unwrap(), resumed.adapter().unwrap());
    for (x, y) in a.pairs.iter().zip(&b.pairs) {
        let diff = x.b.iter().zip(&y.b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(
            diff < 1e-6,
            "{}: resumed and uninterrupted runs differ by {diff}",
            x.target
        );
    }
    // A checkpoint of another run is refused rather than mixed in.
    let err = train::run(&resumed, &data, &options(3), Some(dir.path()), "other", |_| {})
        .err()
        .unwrap();
    assert!(err.to_string().contains("--restart"), "{err}");
}
