//! all-MiniLM-L6-v2 through Minerva's encoder agrees with sentence-transformers.
//!
//! Fixture: `tests/fixtures/embeddings/all-minilm-l6-v2.json`, made by
//! `scripts/reference/make-embedding-fixtures.py` with the real sentence-transformers
//! (command inside the fixture's `generator` field).

mod common;

use minerva_engine::EngineError;
use minerva_engine::embed::{EmbedOptions, cosine_similarity as cosine};

struct Case {
    id: String,
    text: String,
    token_ids: Vec<u32>,
    truncated: bool,
    normalized: Vec<f32>,
    unnormalized: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let fixture = common::read_fixture("embeddings/all-minilm-l6-v2.json");
    let floats = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    fixture["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Case {
            id: s["id"].as_str().unwrap().to_owned(),
            text: s["text"].as_str().unwrap().to_owned(),
            token_ids: s["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
            truncated: s["truncated"].as_bool().unwrap(),
            normalized: floats(&s["embedding"]),
            unnormalized: floats(&s["embedding_unnormalized"]),
        })
        .collect()
}

#[test]
fn token_ids_and_truncation_match_sentence_transformers() {
    let model = common::minilm();
    let cases = cases();
    assert!(cases.len() >= 20);
    assert!(
        cases.iter().any(|c| c.truncated),
        "the fixture has an input longer than 256 tokens"
    );
    for (i, case) in cases.iter().enumerate() {
        let input = model.tokenize(i, &case.text, false).unwrap();
        assert_eq!(input.ids, case.token_ids, "{}", case.id);
        assert_eq!(input.truncated, case.truncated, "{}", case.id);
    }
}

#[test]
fn embeddings_match_sentence_transformers_normalized_and_unnormalized() {
    let model = common::minilm();
    let cases = cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let normalized = model.embed(&texts, EmbedOptions::default()).unwrap();
    let raw = model
        .embed(
            &texts,
            EmbedOptions {
                normalize: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
    let mut worst = (1.0f64, String::new());
    for ((case, n), r) in cases.iter().zip(&normalized).zip(&raw) {
        assert_eq!(n.len(), 384);
        for (got, want, kind) in [
            (n, &case.normalized, "normalized"),
            (r, &case.unnormalized, "unnormalized"),
        ] {
            let c = cosine(got, want);
            assert!(c >= 0.9999, "{} ({kind}): cosine {c}", case.id);
            if c < worst.0 {
                worst = (c, format!("{} ({kind})", case.id));
            }
        }
        let norm: f32 = n.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "{}: normalized vector has norm {norm}",
            case.id
        );
        // Unnormalized vectors keep their length, within float error of the reference.
        let want_norm: f32 = case.unnormalized.iter().map(|x| x * x).sum::<f32>().sqrt();
        let got_norm: f32 = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (got_norm - want_norm).abs() / want_norm < 1e-4,
            "{}: norm {got_norm} vs {want_norm}",
            case.id
        );
    }
    eprintln!("lowest cosine to sentence-transformers: {:.9} ({})", worst.0, worst.1);
}

#[test]
fn a_sentence_vector_does_not_depend_on_its_batch_mates() {
    let model = common::minilm();
    let cases = cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let together = model.embed(&texts, EmbedOptions::default()).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = model.embed(&[text], EmbedOptions::default()).unwrap();
        let diff = alone[0]
            .iter()
            .zip(&together[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "{}: differs by {diff} alone vs in a batch", cases[i].id);
    }
}

#[test]
fn forbidding_truncation_rejects_long_inputs_by_index() {
    let model = common::minilm();
    let long = cases().into_iter().find(|c| c.truncated).unwrap();
    let err = model
        .embed(
            &["short", &long.text],
            EmbedOptions {
                forbid_truncation: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    match err {
        EngineError::InputTooLong { index, tokens, max } => {
            assert_eq!((index, max), (1, 256));
            assert!(tokens > 256);
        }
        other => panic!("expected InputTooLong, got {other}"),
    }
}

/// The bf16 path (AVX512-BF16) rounds weights and activations to 8 bits of mantissa for
/// the products: its vectors stay within cosine 0.999 of sentence-transformers' on every
/// sentence, and are not the f32 path's (the bf16 kernels really ran).
#[test]
fn bf16_embeddings_stay_within_cosine_0_999_of_sentence_transformers() {
    use minerva_engine::embed::EmbeddingDtype;
    if !std::arch::is_x86_feature_detected!("avx512bf16") {
        eprintln!("skipped: this CPU has no AVX512-BF16 (the bf16 path refuses to load; tested below)");
        let err = minerva_engine::embed::load_with(&common::model_path("all-minilm-l6-v2"), EmbeddingDtype::Bf16);
        assert!(err.is_err());
        return;
    }
    let model =
        minerva_engine::embed::load_with(&common::model_path("all-minilm-l6-v2"), EmbeddingDtype::Bf16).unwrap();
    assert!(model.kernels().contains("bf16"), "{}", model.kernels());
    let cases = cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let got = model.embed(&texts, EmbedOptions::default()).unwrap();
    let f32_vectors = common::minilm().embed(&texts, EmbedOptions::default()).unwrap();
    let mut lowest = 1.0f64;
    for ((case, g), f) in cases.iter().zip(&got).zip(&f32_vectors) {
        let c = cosine(g, &case.normalized);
        lowest = lowest.min(c);
        assert!(c >= 0.999, "{}: cosine {c}", case.id);
        assert_ne!(g, f, "{}: the bf16 vector is the f32 one", case.id);
    }
    eprintln!("bf16: lowest cosine to sentence-transformers {lowest:.6}");
}

/// The int8 path (VNNI where the CPU has it, portable integer code elsewhere) quantizes
/// weights and activations in groups of 32, as llama.cpp's q8_0: its vectors stay within
/// cosine 0.998 of sentence-transformers' on every sentence and 0.999 on average, and are
/// not the f32 path's. The bound is int8's, not bf16's 0.999: eight bits per value in
/// groups of 32 round the few large channels of the layer norms' outputs coarsely enough
/// to cost MiniLM up to 1.7e-3 of cosine (measured 0.998285 lowest, 0.999484 mean; a
/// scale per row instead of per group measured 0.986).
#[test]
fn int8_embeddings_stay_within_cosine_0_998_of_sentence_transformers_and_0_999_on_average() {
    use minerva_engine::embed::EmbeddingDtype;
    let model =
        minerva_engine::embed::load_with(&common::model_path("all-minilm-l6-v2"), EmbeddingDtype::Int8).unwrap();
    assert!(model.kernels().contains("int8"), "{}", model.kernels());
    let cases = cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let got = model.embed(&texts, EmbedOptions::default()).unwrap();
    let f32_vectors = common::minilm().embed(&texts, EmbedOptions::default()).unwrap();
    let (mut lowest, mut sum) = (1.0f64, 0.0);
    for ((case, g), f) in cases.iter().zip(&got).zip(&f32_vectors) {
        let c = cosine(g, &case.normalized);
        lowest = lowest.min(c);
        sum += c;
        assert!(c >= 0.998, "{}: cosine {c}", case.id);
        assert_ne!(g, f, "{}: the int8 vector is the f32 one", case.id);
    }
    let mean = sum / cases.len() as f64;
    eprintln!(
        "int8 ({}): lowest cosine to sentence-transformers {lowest:.6}, mean {mean:.6}",
        model.kernels()
    );
    assert!(mean >= 0.999, "mean cosine {mean}");
}

/// A text longer than the model reads becomes overlapping windows that each fit, cover
/// every token of the text in order, and overlap by a quarter window.
#[test]
fn long_texts_become_overlapping_windows_that_cover_the_text() {
    let model = common::minilm();
    let tokenizer = model.tokenizer();
    let long = cases().into_iter().find(|c| c.truncated).unwrap();
    let windows = tokenizer.windows(&long.text).unwrap();
    assert!(windows.len() >= 2, "{} windows", windows.len());
    let plain = tokenizer.windows("a short text").unwrap();
    assert_eq!(plain, [model.tokenize(0, "a short text", false).unwrap().ids]);
    let room = 254;
    let mut text_tokens: Vec<u32> = Vec::new();
    for (i, w) in windows.iter().enumerate() {
        assert!(w.len() <= 256, "window {i} has {} tokens", w.len());
        assert_eq!((w[0], *w.last().unwrap()), (101, 102), "window {i} has [CLS] ... [SEP]");
        let body = &w[1..w.len() - 1];
        if i == 0 {
            assert_eq!(body.len(), room);
            text_tokens.extend_from_slice(body);
        } else {
            let overlap = room / 4;
            assert_eq!(
                &body[..overlap],
                &text_tokens[text_tokens.len() - overlap..],
                "window {i} overlaps the one before"
            );
            text_tokens.extend_from_slice(&body[overlap..]);
        }
    }
    let untruncated = model.tokenize(0, &long.text, false).unwrap();
    assert_eq!(&text_tokens[..254], &untruncated.ids[1..255]);
}
