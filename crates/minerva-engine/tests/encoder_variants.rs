//! Pooling variants and a cross-encoder made from the all-MiniLM-L6-v2 weights agree with
//! sentence-transformers loading the same directories (fixture:
//! `tests/fixtures/embeddings/variants.json`, see `common/variants.rs`).

mod common;

use minerva_engine::embed::{EmbedOptions, Pooling, cosine_similarity};

#[path = "common/variants.rs"]
mod variants;

fn minilm() -> std::path::PathBuf {
    common::model_path("all-minilm-l6-v2")
}

#[test]
fn cls_and_mean_pooling_with_and_without_normalize_match_sentence_transformers() {
    let fixture = variants::fixture();
    let texts: Vec<&str> = fixture["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let variants = fixture["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 3);
    for variant in variants {
        let name = variant["name"].as_str().unwrap();
        let dir = tmp.path().join(name);
        variants::pooling_variant(&minilm(), variant, &dir);
        let model = minerva_engine::embed::load(&dir).unwrap();
        let cls = name.starts_with("cls");
        let normalized = name.ends_with("normalized");
        assert_eq!(
            model.pooling(),
            if cls { Pooling::Cls } else { Pooling::Mean },
            "{name}"
        );
        assert_eq!(model.normalizes(), normalized, "{name}");
        let got = model.embed(&texts, EmbedOptions::default()).unwrap();
        for (i, (g, want)) in got.iter().zip(variant["vectors"].as_array().unwrap()).enumerate() {
            let want = variants::floats(want);
            let c = cosine_similarity(g, &want);
            assert!(c >= 0.9999, "{name}, text {i}: cosine {c}");
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let (gn, wn) = (norm(g), norm(&want));
            assert!((gn - wn).abs() / wn < 1e-4, "{name}, text {i}: norm {gn} vs {wn}");
        }
    }
}

#[test]
fn a_cross_encoder_scores_and_orders_documents_as_sentence_transformers_does() {
    let fixture = variants::fixture();
    let tmp = tempfile::tempdir().unwrap();
    variants::cross_encoder(&minilm(), &fixture, tmp.path());
    let model = minerva_engine::embed::load(tmp.path()).unwrap();
    assert!(model.is_reranker());
    let sets = fixture["cross_encoder"]["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 20);
    let mut worst = 0f32;
    for (n, set) in sets.iter().enumerate() {
        let query = set["query"].as_str().unwrap();
        let documents: Vec<&str> = set["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        let scores = model.rerank(query, &documents, false).unwrap();
        let logits = model.rerank(query, &documents, true).unwrap();
        for (got, want, kind) in [
            (&scores, variants::floats(&set["scores"]), "score"),
            (&logits, variants::floats(&set["logits"]), "logit"),
        ] {
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                worst = worst.max((g - w).abs());
                assert!((g - w).abs() <= 1e-5, "set {n}, document {i}: {kind} {g} vs {w}");
            }
            let order = |v: &[f32]| {
                let mut idx: Vec<usize> = (0..v.len()).collect();
                idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
                idx
            };
            assert_eq!(order(got), order(&want), "set {n}: {kind} order");
        }
    }
    eprintln!("largest score difference to sentence-transformers: {worst:e}");
}

#[test]
fn a_reranker_embeds_nothing_and_an_embedder_reranks_nothing() {
    let fixture = variants::fixture();
    let tmp = tempfile::tempdir().unwrap();
    variants::cross_encoder(&minilm(), &fixture, tmp.path());
    let reranker = minerva_engine::embed::load(tmp.path()).unwrap();
    let embedder = minerva_engine::embed::load(&minilm()).unwrap();
    assert!(!embedder.is_reranker());
    let err = embedder.rerank("q", &["d"], false).unwrap_err();
    assert!(err.to_string().contains("not a reranker"), "{err}");
    assert!(reranker.is_reranker());
    let err = reranker.embed(&["a text"], EmbedOptions::default()).unwrap_err();
    assert!(err.to_string().contains("does not embed"), "{err}");
}
