//! SHA-256 of model files, streamed with progress, and the fingerprint of a model
//! directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Hex SHA-256 of the file at `path`; `progress(done, total)` is called as bytes are read.
pub fn sha256_file(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let total = file.metadata()?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done, total);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// SHA-256 over the files of model directory `dir` that decide its output (every
/// `.json` and `.safetensors` file, recursively): each file's relative path, length and
/// bytes, in path order. Two directories with the same weights, tokenizer and settings
/// have the same fingerprint wherever they live.
pub fn fingerprint_dir(dir: &Path) -> std::io::Result<[u8; 32]> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in files {
        let relative = path.strip_prefix(dir).unwrap_or(&path);
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update([0]);
        let mut file = std::fs::File::open(&path)?;
        hasher.update(file.metadata()?.len().to_le_bytes());
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hasher.finalize().into())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // Real directories only: a symlinked one could loop.
        if entry.file_type()?.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json" || e == "safetensors") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_the_known_digest_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let mut last = (0, 0);
        let hex = sha256_file(&path, &mut |d, t| last = (d, t)).unwrap();
        assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(last, (3, 3));
    }

    #[test]
    fn a_directory_fingerprint_follows_content_not_location() {
        let make = |config: &str| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
            std::fs::write(dir.path().join("config.json"), config).unwrap();
            std::fs::write(dir.path().join("1_Pooling/config.json"), "{}").unwrap();
            std::fs::write(dir.path().join("README.md"), "ignored").unwrap();
            dir
        };
        let (a, b, c) = (make("{\"a\": 1}"), make("{\"a\": 1}"), make("{\"a\": 2}"));
        let print = |d: &tempfile::TempDir| fingerprint_dir(d.path()).unwrap();
        assert_eq!(print(&a), print(&b));
        assert_ne!(print(&a), print(&c));
        std::fs::write(a.path().join("README.md"), "changed").unwrap();
        assert_eq!(print(&a), print(&b), "files that do not change vectors do not count");
    }
}
