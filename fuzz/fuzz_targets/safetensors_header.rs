//! The safetensors header reader (the registry's check of an embedding model's weights)
//! on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = minerva_store::safetensors_header_summary(data, data.len() as u64);
});
