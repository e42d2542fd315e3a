//! Shared set-up of the end-to-end tests: the real default models, loaded once.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::sync::OnceLock;

use minerva_engine::embed::EmbeddingModel;
use minerva_engine::llm::llama::LlamaCppModel;
use minerva_engine::{LanguageModel, Session, SessionParams};

/// The models directory the project's set-up fills (`scripts/fetch-models.sh`).
pub fn models_dir() -> PathBuf {
    let home = std::env::var_os("MINERVA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".local/share/minerva"));
    home.join("models")
}

pub fn model_path(file: &str) -> PathBuf {
    let path = models_dir().join(file);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    path
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn read_fixture(name: &str) -> serde_json::Value {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn smollm2() -> &'static LlamaCppModel {
    static MODEL: OnceLock<LlamaCppModel> = OnceLock::new();
    MODEL.get_or_init(|| LlamaCppModel::load(&model_path("smollm2-135m-instruct.gguf")).expect("SmolLM2 loads"))
}

pub fn gemma3() -> &'static LlamaCppModel {
    static MODEL: OnceLock<LlamaCppModel> = OnceLock::new();
    MODEL.get_or_init(|| LlamaCppModel::load(&model_path("gemma-3-270m.gguf")).expect("Gemma 3 loads"))
}

/// The GGUF models by id, as the fixtures name them.
pub fn llm(id: &str) -> &'static LlamaCppModel {
    match id {
        "smollm2-135m-instruct" => smollm2(),
        "gemma-3-270m" => gemma3(),
        other => panic!("no test model {other}"),
    }
}

pub fn minilm() -> &'static dyn EmbeddingModel {
    static MODEL: OnceLock<std::sync::Arc<dyn EmbeddingModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| minerva_engine::embed::load(&model_path("all-minilm-l6-v2")).expect("all-MiniLM-L6-v2 loads"))
        .as_ref()
}

pub const LLM_IDS: [&str; 2] = ["smollm2-135m-instruct", "gemma-3-270m"];

/// A one-sequence session of `n_ctx` tokens that takes up to 512 tokens per decode.
pub fn session(model: &dyn LanguageModel, n_ctx: u32) -> Box<dyn Session> {
    model
        .new_session(SessionParams {
            n_ctx,
            n_batch: n_ctx.min(512),
            n_seq_max: 1,
            threads: threads(),
            kv_type: minerva_engine::KvType::F16,
            rope: minerva_engine::llm::RopeScaling::Model,
            flash_attention: true,
        })
        .unwrap()
}

/// One thread per forward pass: the test harness runs tests in parallel, and llama.cpp's
/// OpenMP workers slow down badly when more of them spin than there are cores.
pub fn threads() -> usize {
    1
}
