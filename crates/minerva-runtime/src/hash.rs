//! SHA-256 of model files, streamed with progress.

use std::io::Read;
use std::path::Path;

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
}
