//! Malformed model files are typed errors naming the file and the reason: never a panic,
//! never a crash inside llama.cpp or the encoder.

mod common;

use std::io::Write;
use std::path::Path;

use minerva_engine::EngineError;
use minerva_engine::embed::EmbeddingDtype;
use minerva_engine::llm::llama::LlamaCppModel;
use minerva_gguf::GgufErrorKind;

fn gguf_error(path: &Path) -> GgufErrorKind {
    match LlamaCppModel::load(path) {
        Err(EngineError::InvalidGguf(e)) => {
            assert_eq!(e.path, path, "the error names the file");
            assert!(
                e.to_string().contains(&path.display().to_string()),
                "message names the file: {e}"
            );
            e.kind
        }
        Err(other) => panic!("{}: expected a GGUF validation error, got {other}", path.display()),
        Ok(_) => panic!("{}: a bad file loaded", path.display()),
    }
}

#[test]
fn truncated_gguf_is_rejected_before_llama_cpp_sees_it() {
    let real = std::fs::read(common::model_path("smollm2-135m-instruct.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Cut inside the header, inside the tensor table, and inside the tensor data.
    for cut in [3, 20, 1_000, 2_000_000, real.len() - 1] {
        let path = dir.path().join(format!("cut-{cut}.gguf"));
        std::fs::write(&path, &real[..cut]).unwrap();
        let kind = gguf_error(&path);
        assert!(
            matches!(
                kind,
                GgufErrorKind::Truncated { .. } | GgufErrorKind::TensorOutOfBounds { .. }
            ),
            "cut at {cut}: {kind}"
        );
    }
}

#[test]
fn garbage_bytes_are_not_a_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.gguf");
    std::fs::write(
        &path,
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(matches!(gguf_error(&path), GgufErrorKind::BadMagic { .. }));
}

#[test]
fn huge_tensor_count_fails_fast_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"GGUF").unwrap();
    f.write_all(&3u32.to_le_bytes()).unwrap();
    f.write_all(&(1u64 << 62).to_le_bytes()).unwrap(); // tensors
    f.write_all(&0u64.to_le_bytes()).unwrap(); // metadata
    drop(f);
    assert!(matches!(gguf_error(&path), GgufErrorKind::TooMany { .. }));
}

#[test]
fn directory_and_missing_file_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(gguf_error(dir.path()), GgufErrorKind::NotAFile));
    assert!(matches!(
        gguf_error(&dir.path().join("absent.gguf")),
        GgufErrorKind::NotFound
    ));
}

/// A copy of the real embedding model whose files can be damaged one at a time.
fn embedding_copy() -> tempfile::TempDir {
    let src = common::model_path("all-minilm-l6-v2");
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "config.json",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
    ] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::copy(
        src.join("1_Pooling/config.json"),
        dir.path().join("1_Pooling/config.json"),
    )
    .unwrap();
    dir
}

fn embedding_error(dir: &Path) -> String {
    match minerva_engine::embed::load(dir) {
        Err(e @ EngineError::InvalidEmbeddingModel { .. }) => e.to_string(),
        Err(other) => panic!("expected an invalid-model error, got {other}"),
        Ok(_) => panic!("a broken model loaded"),
    }
}

#[test]
fn safetensors_with_a_lying_header_is_rejected() {
    let dir = embedding_copy();
    // A header that promises a tensor far larger than the file.
    let header =
        br#"{"embeddings.word_embeddings.weight":{"dtype":"F32","shape":[30522,384],"data_offsets":[0,46881792]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 64]);
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    let message = embedding_error(dir.path());
    assert!(message.contains("model.safetensors"), "{message}");

    // A header length beyond the end of the file.
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    assert!(embedding_error(dir.path()).contains("model.safetensors"));
}

#[test]
fn embedding_model_missing_weights_or_config_is_a_clear_error() {
    let dir = embedding_copy();
    assert!(embedding_error(dir.path()).contains("model.safetensors"));
    std::fs::write(dir.path().join("config.json"), b"{ not json").unwrap();
    assert!(embedding_error(dir.path()).contains("config.json"));
    assert!(embedding_error(&dir.path().join("absent")).contains("not a model directory"));
}

/// Sizes no model has (found by reading the estimate while writing the `embedding_dir`
/// fuzz target): the memory estimate refuses them instead of overflowing, which panicked
/// (overflow checks are on in every profile) or wrapped to a tiny estimate.
#[test]
fn memory_estimate_of_sizes_that_overflow_is_an_invalid_model() {
    let dir = embedding_copy();
    let mut header = br#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#.to_vec();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.append(&mut header);
    bytes.extend_from_slice(&[0u8; 4]);
    std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    for dtype in [EmbeddingDtype::F32, EmbeddingDtype::Bf16, EmbeddingDtype::Int8] {
        match minerva_engine::embed::memory(dir.path(), dtype) {
            Err(EngineError::InvalidEmbeddingModel { reason, .. }) => {
                assert!(reason.contains("more elements"), "{reason}")
            }
            other => panic!("expected an invalid model, got {other:?}"),
        }
    }

    // A plausible file, an absurd configuration.
    let minilm = common::model_path("all-minilm-l6-v2");
    std::fs::copy(minilm.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(minilm.join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = serde_json::json!(u64::MAX / 2);
    config["hidden_size"] = serde_json::json!(u64::MAX / 3);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    for dtype in [EmbeddingDtype::F32, EmbeddingDtype::Bf16, EmbeddingDtype::Int8] {
        match minerva_engine::embed::memory(dir.path(), dtype) {
            Err(EngineError::InvalidEmbeddingModel { reason, .. }) => assert!(reason.contains("too large"), "{reason}"),
            other => panic!("expected an invalid model, got {other:?}"),
        }
    }
}

/// fuzz/corpus/embedding_dir/crash-f39626775a78-tokenizer-decoder: a syntax error inside
/// tokenizer.json's `decoder` section made the tokenizers crate panic (its deserializer's
/// `expect("Helper")`) where any other malformed part is an error. The load must refuse
/// the directory as an invalid model naming the file, and not unwind into the pool.
#[test]
fn a_tokenizer_json_whose_decoder_panics_the_tokenizers_crate_is_an_invalid_model() {
    let dir = embedding_copy();
    let minilm = common::model_path("all-minilm-l6-v2");
    std::fs::copy(minilm.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let path = dir.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.replacen(
        r###""decoder":{"type":"WordPiece","prefix":"##""###,
        r###""decoder":{"type":"WordPiece","prefix" "##""###,
        1,
    );
    assert_ne!(broken, text, "the decoder section was found");
    std::fs::write(&path, broken).unwrap();
    let message = embedding_error(dir.path());
    assert!(message.contains("tokenizer.json"), "{message}");
    // The intact file still loads: the catch changed nothing else.
    std::fs::write(&path, text).unwrap();
    assert!(minerva_engine::embed::load(dir.path()).is_ok());
}
