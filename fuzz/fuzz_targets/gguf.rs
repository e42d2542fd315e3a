//! The GGUF reader and validator on arbitrary bytes: an error or a summary, never a
//! panic, an allocation the bytes do not justify, or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = minerva_gguf::inspect_bytes(data) {
        // What validation promises: the tensors lie inside the file.
        let bytes = info.tensors.iter().fold(0u64, |a, t| a.saturating_add(t.bytes));
        assert!(bytes <= data.len() as u64);
    }
});
