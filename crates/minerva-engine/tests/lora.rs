//! LoRA adapters on the real SmolLM2: the file Minerva writes is the one llama.cpp's loader
//! reads the way Minerva means it (checked against the base with the update merged into
//! its weights), an adapter changes only the sessions that apply it, and one that does
//! not fit its base is refused with the reason.

mod common;

use std::path::Path;
use std::sync::Arc;

use minerva_engine::llm::LogitsWanted;
use minerva_engine::llm::llama::LlamaCppModel;
use minerva_engine::llm::lora::{self, LoraAdapterFile};
use minerva_engine::llm::{SequenceInput, TokenId};
use minerva_engine::{EngineError, LanguageModel, SeqId};

const PROMPT: &str = "The capital of France is a city called";

/// A rank-4 adapter on every layer's query and value projections of `base`, with B set
/// to a fixed pattern of amplitude `amp` (a trained adapter's B is not zero).
fn adapter_for(base: &Path, amp: f32) -> LoraAdapterFile {
    let mut file = LoraAdapterFile::init(base, &["attn_q.weight", "attn_v.weight"], 4, 8.0, 7).unwrap();
    for (i, pair) in file.pairs.iter_mut().enumerate() {
        for (j, b) in pair.b.iter_mut().enumerate() {
            *b = amp * ((i * 31 + j * 17) as f32).sin();
        }
    }
    file
}

/// The next-token logits after `PROMPT` in a fresh session of `model`, with `adapter`.
fn next_logits(model: &dyn LanguageModel, adapter: Option<(Arc<dyn minerva_engine::llm::Adapter>, f32)>) -> Vec<f32> {
    let mut session = common::session(model, 256);
    session.set_adapter(adapter).unwrap();
    prompt_logits(model, session.as_mut())
}

/// The next-token logits after `PROMPT` as sequence 0 of `session`, which is left empty.
fn prompt_logits(model: &dyn LanguageModel, session: &mut dyn minerva_engine::Session) -> Vec<f32> {
    let tokens: Vec<TokenId> = model.tokenize(PROMPT, true, false).unwrap();
    let row = session
        .decode(&[SequenceInput {
            seq: SeqId(0),
            tokens: &tokens,
            start_pos: 0,
            logits: LogitsWanted::Last,
        }])
        .unwrap()[0][0]
        .to_vec();
    session.free_sequence(SeqId(0));
    row
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

/// llama.cpp applying Minerva's adapter file at run time gives what the base gives with
/// `scale · alpha/rank · B·A` added into its weights by Minerva's merge. Both runs use
/// the base dequantized to f32 whole: on SmolLM2's Q8_0 matrices llama.cpp rounds the
/// activations to 8 bits too, and any difference upstream flips some of those roundings,
/// which moves logits by up to ~1 and would hide a small error. In f32 the two differ
/// only in the order of the sums (`W·x + s·B·(A·x)` against `(W + s·B·A)·x`): measured
/// 5e-4 of the adapter's effect on logits (AMX machine), allowed 2e-3. A scale off by 1 %
/// would show 1e-2, and a transposed factor the whole effect.
#[test]
fn the_written_adapter_is_what_llama_cpp_applies_and_matches_the_merged_model() {
    let base_path = common::model_path("smollm2-135m-instruct.gguf");
    let dir = tempfile::tempdir().unwrap();
    let file = adapter_for(&base_path, 1.0);
    let adapter_path = dir.path().join("adapter.gguf");
    file.write(&adapter_path).unwrap();

    let info = lora::inspect_adapter(&adapter_path).unwrap();
    assert_eq!(info.rank, 4);
    assert_eq!(info.alpha, 8.0);
    assert_eq!(info.targets.len(), file.pairs.len());

    let f32_path = dir.path().join("f32.gguf");
    let merged_path = dir.path().join("merged.gguf");
    lora::dequantize(&base_path, &f32_path).unwrap();
    lora::merge(&f32_path, &file, 1.0, &merged_path).unwrap();
    let base = LlamaCppModel::load(&f32_path).unwrap();
    assert_eq!(base.metadata().parameters, common::smollm2().metadata().parameters);
    let adapter = base.load_adapter(&adapter_path, None, None).unwrap();
    let plain = next_logits(&base, None);
    let adapted = next_logits(&base, Some((Arc::clone(&adapter), 1.0)));
    let merged = next_logits(&LlamaCppModel::load(&merged_path).unwrap(), None);

    let effect = max_abs_diff(&plain, &adapted);
    let disagreement = max_abs_diff(&adapted, &merged);
    eprintln!("adapter effect {effect:.4}, adapter against merged {disagreement:.6}");
    assert!(effect > 1.0, "the adapter barely changed the logits: {effect}");
    assert!(
        disagreement <= 2e-3 * effect,
        "llama.cpp's adapter and the merged weights disagree by {disagreement} (effect {effect})"
    );
    assert_eq!(argmax(&adapted), argmax(&merged));
    // The dequantized base is the quantized one (up to the 8-bit rounding of activations).
    let quantized = common::smollm2();
    assert_eq!(argmax(&next_logits(quantized, None)), argmax(&plain));
    // And on the quantized base the adapter applies too.
    let on_quantized = quantized.load_adapter(&adapter_path, None, None).unwrap();
    assert!(
        max_abs_diff(
            &next_logits(quantized, None),
            &next_logits(quantized, Some((on_quantized, 1.0)))
        ) > effect / 2.0
    );
}

/// An adapter changes only the passes it is applied to: scale 0 and no adapter give the
/// base's logits bit for bit, and a session with the adapter set and then removed is
/// back to the base.
#[test]
fn the_adapter_changes_only_the_sessions_that_apply_it() {
    let base_path = common::model_path("smollm2-135m-instruct.gguf");
    let dir = tempfile::tempdir().unwrap();
    let adapter_path = dir.path().join("adapter.gguf");
    adapter_for(&base_path, 1.0).write(&adapter_path).unwrap();
    let base = common::smollm2();
    let adapter = base.load_adapter(&adapter_path, None, None).unwrap();

    let plain = next_logits(base, None);
    assert_eq!(next_logits(base, Some((Arc::clone(&adapter), 0.0))), plain);
    let adapted = next_logits(base, Some((Arc::clone(&adapter), 1.0)));
    assert_ne!(adapted, plain);
    // Twice the scale moves the logits further than once.
    let doubled = next_logits(base, Some((Arc::clone(&adapter), 2.0)));
    assert!(max_abs_diff(&doubled, &plain) > max_abs_diff(&adapted, &plain));

    // Set, then removed, in one session: the base again.
    let mut session = common::session(base, 256);
    let run = |session: &mut Box<dyn minerva_engine::Session>| prompt_logits(base, session.as_mut());
    session.set_adapter(Some((Arc::clone(&adapter), 1.0))).unwrap();
    assert_eq!(run(&mut session), adapted);
    session.set_adapter(None).unwrap();
    assert_eq!(run(&mut session), plain);
    // The adapter outlives its model's other users: dropping ours leaves the session's.
    drop(adapter);
    assert_eq!(run(&mut session), plain);
}

/// Two adapters applied together are the sum of their updates: the same logits as one
/// adapter whose factors are theirs side by side (rank 4 + 4), and the same whichever
/// order they are set in; removing them gives the base back.
#[test]
fn two_adapters_together_are_the_adapter_of_their_summed_updates() {
    let base_path = common::model_path("smollm2-135m-instruct.gguf");
    let dir = tempfile::tempdir().unwrap();
    let x = adapter_for(&base_path, 0.6);
    let mut y = LoraAdapterFile::init(&base_path, &["attn_q.weight", "attn_v.weight"], 4, 8.0, 11).unwrap();
    for (i, pair) in y.pairs.iter_mut().enumerate() {
        for (j, b) in pair.b.iter_mut().enumerate() {
            *b = 0.4 * ((i * 13 + j * 7) as f32).cos();
        }
    }
    // Side by side: A stacks the rows, B joins the columns; alpha 16 over rank 8 keeps
    // each half's alpha / rank of 2.
    let mut joined = x.clone();
    joined.alpha = 16.0;
    for (pair, other) in joined.pairs.iter_mut().zip(&y.pairs) {
        assert_eq!(pair.target, other.target);
        pair.a.extend_from_slice(&other.a);
        let (xb, n_out) = (std::mem::take(&mut pair.b), pair.n_out);
        pair.b = (0..n_out)
            .flat_map(|row| {
                xb[row * 4..row * 4 + 4]
                    .iter()
                    .chain(&other.b[row * 4..row * 4 + 4])
                    .copied()
            })
            .collect();
    }
    let paths = ["x", "y", "joined"].map(|name| dir.path().join(format!("{name}.gguf")));
    for (file, path) in [&x, &y, &joined].into_iter().zip(&paths) {
        file.write(path).unwrap();
    }
    // On the f32 base, as the merge test: a quantized base quantizes each layer's input
    // to 8 bits, and a rounding step flipped by the last bit of a sum moves the logits
    // far more than the sum's f32 rounding does (0.78 here against 0.009 in f32).
    let f32_path = dir.path().join("f32.gguf");
    lora::dequantize(&base_path, &f32_path).unwrap();
    let base = &LlamaCppModel::load(&f32_path).unwrap();
    let [x, y, joined] = paths.map(|p| base.load_adapter(&p, None, None).unwrap());
    let scale = 0.7;
    let set = |adapters: &[&Arc<dyn minerva_engine::llm::Adapter>]| {
        let mut set = minerva_engine::llm::AdapterSet::default();
        for a in adapters {
            set.push(Arc::clone(a), scale);
        }
        set
    };

    let plain = next_logits(base, None);
    let one = next_logits(base, Some((Arc::clone(&joined), scale)));
    let mut session = common::session(base, 256);
    session.set_adapters(set(&[&x, &y])).unwrap();
    let both = prompt_logits(base, session.as_mut());
    session.set_adapters(set(&[&y, &x])).unwrap();
    assert_eq!(
        prompt_logits(base, session.as_mut()),
        both,
        "the order of the set changed the logits"
    );
    let only_x = next_logits(base, Some((Arc::clone(&x), scale)));

    let effect = max_abs_diff(&plain, &one);
    let disagreement = max_abs_diff(&both, &one);
    let beyond_x = max_abs_diff(&both, &only_x);
    eprintln!(
        "joined adapter's effect {effect:.4}, both against joined {disagreement:.6}, both against x alone {beyond_x:.4}"
    );
    assert!(effect > 0.5 && beyond_x > 0.1, "the adapters barely changed the logits");
    // Two rank-4 products summed, against one rank-8 product: the same terms in another
    // order, so f32 rounding only.
    assert!(
        disagreement <= 2e-3 * effect,
        "two adapters and their joined adapter disagree by {disagreement} (effect {effect})"
    );
    session.set_adapters(Default::default()).unwrap();
    assert_eq!(prompt_logits(base, session.as_mut()), plain);
}

/// Adapters that do not fit are refused before llama.cpp sees them, saying why.
#[test]
fn an_adapter_for_another_base_or_shape_or_digest_is_refused_with_the_reason() {
    let smol_path = common::model_path("smollm2-135m-instruct.gguf");
    let dir = tempfile::tempdir().unwrap();
    let refused = |result: Result<Arc<dyn minerva_engine::llm::Adapter>, EngineError>, needle: &str| {
        let err = result.err().expect("the adapter was accepted");
        assert!(matches!(err, EngineError::InvalidAdapter { .. }), "{err:?}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    };

    // Made for SmolLM2 (llama), given to Gemma 3.
    let smol_adapter = dir.path().join("smol.gguf");
    let mut file = adapter_for(&smol_path, 1.0);
    file.base_sha256 = Some("ab".repeat(32));
    file.write(&smol_adapter).unwrap();
    refused(
        common::gemma3().load_adapter(&smol_adapter, None, None),
        "`llama` model",
    );
    // The right architecture, another base file than the one recorded.
    refused(
        common::smollm2().load_adapter(&smol_adapter, Some(&"cd".repeat(32)), None),
        "made for the base",
    );
    assert!(
        common::smollm2()
            .load_adapter(&smol_adapter, Some(&"AB".repeat(32)), None)
            .is_ok()
    );

    // A target of the wrong shape.
    let mut wrong = adapter_for(&smol_path, 1.0);
    wrong.pairs.truncate(1);
    let pair = &mut wrong.pairs[0];
    pair.n_in /= 2;
    pair.a.truncate(4 * pair.n_in);
    let wrong_path = dir.path().join("wrong-shape.gguf");
    wrong.write(&wrong_path).unwrap();
    refused(common::smollm2().load_adapter(&wrong_path, None, None), "in the base");

    // A target the base does not have.
    let mut missing = adapter_for(&smol_path, 1.0);
    missing.pairs.truncate(1);
    missing.pairs[0].target = "blk.99.attn_q.weight".into();
    let missing_path = dir.path().join("missing.gguf");
    missing.write(&missing_path).unwrap();
    refused(
        common::smollm2().load_adapter(&missing_path, None, None),
        "no tensor `blk.99.attn_q.weight`",
    );

    // A model, not an adapter.
    refused(
        common::smollm2().load_adapter(&smol_path, None, None),
        "not a LoRA adapter",
    );
}
