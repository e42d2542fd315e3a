//! What the pool's end-to-end tests share.

use std::path::PathBuf;

/// The models directory (`$MINERVA_HOME/models`, by default
/// `~/.local/share/minerva/models`), checked to hold each of `models` (a directory or a
/// `.gguf` file).
pub fn models_dir(models: &[&str]) -> PathBuf {
    let home = std::env::var_os("MINERVA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".local/share/minerva"));
    let dir = home.join("models");
    for model in models {
        assert!(
            dir.join(model).is_dir() || dir.join(format!("{model}.gguf")).is_file(),
            "{model} is missing: run scripts/fetch-models.sh first"
        );
    }
    dir
}
