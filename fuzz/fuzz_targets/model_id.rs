//! Model ids, which become file names in the store: whatever a client sends, an accepted
//! id never names a path outside the models directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = minerva_store::ModelId::new(text) {
        let s = id.as_str();
        assert!(!s.is_empty() && !s.starts_with('.'));
        assert!(!s.contains('/') && !s.contains('\\') && !s.contains('\0'));
        assert!(std::path::Path::new(s).components().count() == 1, "{s:?}");
    }
});
