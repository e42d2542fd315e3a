//! Our llama.cpp backend agrees with llama.cpp's own tools on the same GGUF files.
//!
//! Fixtures in `tests/fixtures/llama/` were made by `scripts/reference/make-llama-fixtures.sh`
//! with `llama-tokenize`, `llama-perplexity` and `llama-simple` built from the very
//! llama.cpp source that `llama-cpp-sys-2` vendors; each case records its exact command.

mod common;

use minerva_engine::generate::{GenerateOptions, generate};
use minerva_engine::llm::{LogitsWanted, SequenceInput};
use minerva_engine::perplexity::perplexity;
use minerva_engine::sampling::SamplingParams;
use minerva_engine::{LanguageModel, SeqId};

#[test]
fn token_ids_equal_llama_tokenize_on_text_and_edge_strings() {
    for id in common::LLM_IDS {
        let model = common::llm(id);
        let fixture = common::read_fixture(&format!("llama/tokenize-{id}.json"));
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 10, "{id}: fixture has too few cases");
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let text = case["text"].as_str().unwrap();
            let parse_special = case["parse_special"].as_bool().unwrap();
            let want: Vec<i32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect();
            let got = model
                .tokenize(text, case["add_special"].as_bool().unwrap(), parse_special)
                .unwrap();
            assert_eq!(got, want, "{id}/{name} (parse_special={parse_special})");
        }
    }
}

#[test]
fn perplexity_is_within_one_percent_of_llama_perplexity() {
    let text = std::fs::read_to_string(common::fixture("gpl-3.txt")).unwrap();
    for id in common::LLM_IDS {
        let model = common::llm(id);
        let fixture = common::read_fixture(&format!("llama/perplexity-{id}.json"));
        let want = fixture["ppl"].as_f64().unwrap();
        let want_chunks = fixture["n_chunks"].as_u64().unwrap() as usize;
        let mut session = common::session(model, 512);
        let report = perplexity(model, session.as_mut(), &text, 512, &mut |_, _| {}).unwrap();
        eprintln!(
            "{id}: PPL {:.4} ± {:.4} over {} chunks (llama-perplexity: {want})",
            report.perplexity, report.stderr, report.chunks
        );
        assert_eq!(report.chunks, want_chunks, "{id}: chunk count");
        let ratio = report.perplexity / want;
        assert!(
            (ratio - 1.0).abs() < 0.01,
            "{id}: PPL {} vs llama.cpp {want} (ratio {ratio})",
            report.perplexity
        );
    }
}

/// Largest logit lead of our greedy choice over llama.cpp's at the point where the two
/// outputs part that still counts as a tie broken differently by rounding. The fixtures
/// were made on a CPU whose quantized matmuls ran on AMX int8 tiles; on an AVX2/AVX-512
/// CPU llama.cpp quantizes activations differently and logits move by up to ~0.15, so
/// near-tied candidates (e.g. "311" vs "321" million) can swap on the same library code.
const NEAR_TIE: f32 = 0.25;

/// Where our greedy `tokens` and llama.cpp's output (`want`) may have parted: the first
/// step at which another token that also spells on `want` was within a near-tie of ours
/// (two tokenizations of the same text, so llama.cpp may have taken the other one and
/// gone on from a different context), else the step where our text stops spelling
/// `want`; with how many logits our token led the best token continuing `want` there.
fn divergence_gap(model: &dyn LanguageModel, prompt: &[i32], tokens: &[i32], want: &str) -> (usize, f32) {
    let want = want.as_bytes();
    let mut context = prompt.to_vec();
    context.extend_from_slice(tokens);
    let mut session = common::session(model, 512);
    // Row j: the logits that chose tokens[j].
    let rows = session
        .decode(&[SequenceInput {
            seq: SeqId(0),
            tokens: &context,
            start_pos: 0,
            logits: LogitsWanted::From(prompt.len() - 1),
        }])
        .unwrap();
    let mut spelled = 0;
    for (step, &token) in tokens.iter().enumerate() {
        let logits = rows[0][step];
        let rest = &want[spelled..];
        let best_other = (0..logits.len() as i32)
            .filter(|&t| {
                let bytes = model.token_bytes(t, false);
                t != token && !bytes.is_empty() && rest.starts_with(&bytes)
            })
            .map(|t| logits[t as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        let gap = logits[token as usize] - best_other;
        let bytes = model.token_bytes(token, false);
        if !rest.starts_with(&bytes) || gap < NEAR_TIE {
            return (step, gap);
        }
        spelled += bytes.len();
    }
    panic!("outputs differ only in length");
}

#[test]
fn greedy_generation_equals_llama_cpp_output() {
    for id in common::LLM_IDS {
        let model = common::llm(id);
        let fixture = common::read_fixture(&format!("llama/greedy-{id}.json"));
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 3);
        for case in cases {
            let prompt = case["prompt"].as_str().unwrap();
            let want_ids: Vec<i32> = case["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect();
            // llama-simple tokenizes with BOS as declared and special tokens parsed.
            let prompt_ids = model.tokenize(prompt, true, true).unwrap();
            assert_eq!(prompt_ids, want_ids, "{id}: prompt tokens of {prompt:?}");
            let n = case["n_generated"].as_u64().unwrap() as usize;
            let mut session = common::session(model, 512);
            let options = GenerateOptions {
                max_tokens: 32,
                constraint: None,
                context_shift: None,
                n_ctx: None,
                stop: vec![],
                sampling: SamplingParams::default(),
            };
            let g = generate(
                model,
                session.as_mut(),
                SeqId(0),
                &prompt_ids,
                &options,
                &mut |_: &str| {},
            )
            .unwrap();
            // llama.cpp's output where the fixture was made, then on the CPUs where its
            // own output differs (its kernels round differently there).
            let mut outputs = vec![(case["continuation"].as_str().unwrap(), n)];
            for other in case["continuation_on_other_cpus"].as_array().into_iter().flatten() {
                let n = other["n_generated"].as_u64().unwrap() as usize;
                outputs.push((other["continuation"].as_str().unwrap(), n));
            }
            if let Some(&(_, n)) = outputs.iter().find(|(want, _)| g.text == *want) {
                assert_eq!(g.tokens.len(), n, "{id}: tokens generated for {prompt:?}");
                continue;
            }
            // Floating-point sums run in a different order on another CPU's kernels, so
            // two tokens whose logits tie to a few hundredths may swap. Such a swap is
            // allowed where the outputs first part; anything else is a real disagreement.
            let (want, (step, gap)) = outputs
                .iter()
                .map(|&(want, _)| (want, divergence_gap(model, &prompt_ids, &g.tokens, want)))
                .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
                .unwrap();
            assert!(
                gap < NEAR_TIE,
                "{id}: continuation of {prompt:?} parts from llama.cpp's at token {step} where our choice leads by \
                 {gap:.4} logits (more than a near-tie of {NEAR_TIE}):\n ours: {:?}\n llama.cpp: {want:?}",
                g.text
            );
            eprintln!("{id}: {prompt:?} parts from llama.cpp's output at token {step}, a near-tie ({gap:.4} logits)");
        }
    }
}
