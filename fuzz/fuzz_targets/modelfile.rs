//! The Modelfile parser (`minerva create`, Ollama's `/api/create`) on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = minerva_store::Modelfile::parse(text);
    }
});
