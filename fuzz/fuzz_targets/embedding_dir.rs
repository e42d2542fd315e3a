//! A sentence-transformers model directory built from arbitrary bytes: the encoder's
//! `config.json`, `model.safetensors`, `tokenizer.json`, `modules.json`,
//! `1_Pooling/config.json` and `sentence_bert_config.json`, in that order, separated by
//! [`SEPARATOR`] (a missing part is a missing file). The pool's memory estimate
//! (config and safetensors header only) and the full load must refuse what is wrong with
//! an error; a model that loads embeds a sentence and, as a cross-encoder, reranks.
//! The seed (`fuzz/corpus/embedding_dir/tiny-bert`) is a complete tiny BERT written by
//! `fuzz/seeds/embedding_dir.py`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use minerva_engine::embed::{self, EmbedOptions, EmbeddingDtype};

const SEPARATOR: &[u8] = b"\n#minerva-file#\n";
/// The parts of an input, in order (the seeds are framed in this order).
const FILES: &[&str] = minerva_store::SENTENCE_TRANSFORMERS_FILES;

/// The model directory, reused by every input of the process.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The tokenizers crate panics on some malformed files; Minerva catches those
        // panics (embed/tokenizer.rs) and answers an invalid model. libfuzzer-sys's hook
        // aborts on every panic, caught or not, so this one lets the tokenizers crate's
        // own panics unwind to that catch and aborts on any other.
        let abort_on = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.location().is_some_and(|l| l.file().contains("/tokenizers-")) {
                abort_on(info);
                std::process::abort();
            }
        }));
        let dir = std::env::temp_dir().join(format!("minerva-fuzz-embedding-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        dir
    })
}

fn parts(mut data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    while let Some(at) = data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&data[..at]);
        data = &data[at + SEPARATOR.len()..];
    }
    parts.push(data);
    parts
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let parts = parts(data);
    for (i, name) in FILES.iter().enumerate() {
        let path = dir.join(name);
        match parts.get(i) {
            Some(bytes) => std::fs::write(&path, bytes).unwrap(),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let _ = embed::memory(dir, EmbeddingDtype::F32);
    let _ = embed::memory(dir, EmbeddingDtype::Bf16);
    if let Ok(model) = embed::load(dir) {
        if model.is_reranker() {
            let _ = model.rerank("hello", &["world.", "hellos"], false);
        } else {
            let _ = model.embed(&["hello worlds.", ""], EmbedOptions::default());
        }
    }
});
