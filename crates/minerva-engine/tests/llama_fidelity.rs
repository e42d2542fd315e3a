//! Our llama.cpp backend agrees with llama.cpp's own tools on the same GGUF files.
//!
//! Fixtures in `tests/fixtures/llama/` were made by `scripts/reference/make-llama-fixtures.sh`
//! with `llama-tokenize`, `llama-perplexity` and `llama-simple` built from the very
//! llama.cpp source that `llama-cpp-sys-2` vendors; each case records its exact command.

mod common;

use minerva_engine::generate::{GenerateOptions, generate};
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
            assert_eq!(
                g.text,
                case["continuation"].as_str().unwrap(),
                "{id}: continuation of {prompt:?}"
            );
            assert_eq!(g.tokens.len(), n, "{id}: tokens generated for {prompt:?}");
        }
    }
}
