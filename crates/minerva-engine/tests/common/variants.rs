//! Model directories made from the all-MiniLM-L6-v2 files as
//! `tests/fixtures/embeddings/variants.json` describes them (made with sentence-transformers
//! by `scripts/reference/make-variant-fixtures.py`): pooling variants and a cross-encoder
//! with a seeded classification head. Shared with the server's tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// The variants fixture.
pub fn fixture() -> serde_json::Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../minerva-engine/tests/fixtures/embeddings/variants.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Copies the files of `minilm` into `dir`, all but `modules.json`.
fn copy_model_files(minilm: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(minilm).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "modules.json" {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
}

/// The MiniLM directory with `variant`'s modules.json and pooling configuration, at
/// `dir`.
pub fn pooling_variant(minilm: &Path, variant: &serde_json::Value, dir: &Path) {
    copy_model_files(minilm, dir);
    std::fs::write(dir.join("modules.json"), variant["modules"].to_string()).unwrap();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(dir.join("1_Pooling/config.json"), variant["pooling"].to_string()).unwrap();
}

/// The cross-encoder of the fixture at `dir`: MiniLM's encoder and pooler under `bert.`,
/// the fixture's classifier head, `BertForSequenceClassification` in config.json.
pub fn cross_encoder(minilm: &Path, fixture: &serde_json::Value, dir: &Path) {
    let ce = &fixture["cross_encoder"];
    std::fs::create_dir_all(dir).unwrap();
    let bytes = std::fs::read(minilm.join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let weight: Vec<u8> = floats(&ce["classifier_weight"])
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let bias: Vec<u8> = floats(&ce["classifier_bias"])
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let mut tensors: Vec<(String, TensorView<'_>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (format!("bert.{name}"), view))
        .collect();
    tensors.push((
        "classifier.weight".into(),
        TensorView::new(Dtype::F32, vec![1, weight.len() / 4], &weight).unwrap(),
    ));
    tensors.push((
        "classifier.bias".into(),
        TensorView::new(Dtype::F32, vec![bias.len() / 4], &bias).unwrap(),
    ));
    safetensors::serialize_to_file(tensors, None, &dir.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(minilm.join("config.json")).unwrap()).unwrap();
    for (key, value) in ce["config_patch"].as_object().unwrap() {
        config[key] = value.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
    ] {
        if minilm.join(name).exists() {
            std::fs::copy(minilm.join(name), dir.join(name)).unwrap();
        }
    }
}
