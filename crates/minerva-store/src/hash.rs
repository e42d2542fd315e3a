//! SHA-256 of models, streamed with progress: of a file, of a directory, and while copying
//! (a model's digest is also what the embedding cache keys on).
//!
//! A GGUF model's digest is the SHA-256 of its file. A directory model's digest is the
//! SHA-256 of the `sha256sum` listing of its regular files in bytewise order of their
//! relative paths: one line `<hex sha256>  <relative/path>\n` per file. It can be
//! reproduced with
//! `cd DIR && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Read and write chunk size.
const CHUNK: usize = 1 << 20;

/// Hex SHA-256 of the file at `path`; `progress(done, total)` is called as bytes are read.
pub fn sha256_file(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<String> {
    let total = std::fs::metadata(path)?.len();
    let digest = hash_stream(&mut File::open(path)?, None, &mut |done| progress(done, total))?;
    Ok(hex(&digest))
}

/// Hex digest of a file or directory model (see the module docs for directories);
/// `progress(done, total)` counts bytes over all files.
pub fn sha256_model(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<String> {
    if !path.is_dir() {
        return sha256_file(path, progress);
    }
    let files = model_files(path)?;
    let total = files.iter().map(|f| f.len).sum();
    let mut listing = Sha256::new();
    let mut base = 0;
    for file in &files {
        let digest = hash_stream(&mut File::open(&file.path)?, None, &mut |done| {
            progress(base + done, total)
        })?;
        base += file.len;
        listing.update(format!("{}  {}\n", hex(&digest), file.relative));
    }
    Ok(hex(&listing.finalize()))
}

/// Copies the file or directory model `src` to `dst` (which must not exist), returning
/// the digest of what was written ([`sha256_model`] of `dst`, computed in the same pass).
/// Written files are synced to disk before this returns.
pub(crate) fn copy_hashed(src: &Path, dst: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<String> {
    if !src.is_dir() {
        let total = std::fs::metadata(src)?.len();
        let digest = copy_file_hashed(src, dst, &mut |done| progress(done, total))?;
        return Ok(hex(&digest));
    }
    let files = model_files(src)?;
    let total = files.iter().map(|f| f.len).sum();
    std::fs::create_dir(dst)?;
    let mut listing = Sha256::new();
    let mut base = 0;
    for file in &files {
        let target = dst.join(&file.relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let digest = copy_file_hashed(&file.path, &target, &mut |done| progress(base + done, total))?;
        base += file.len;
        listing.update(format!("{}  {}\n", hex(&digest), file.relative));
    }
    Ok(hex(&listing.finalize()))
}

/// Hard-links the file or directory model `src` as `dst` (directories are recreated and
/// their files linked). Fails with `ErrorKind::CrossesDevices` across filesystems.
pub(crate) fn hard_link_model(src: &Path, dst: &Path) -> io::Result<()> {
    if !src.is_dir() {
        return std::fs::hard_link(src, dst);
    }
    std::fs::create_dir(dst)?;
    for file in model_files(src)? {
        let target = dst.join(&file.relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::hard_link(&file.path, target)?;
    }
    Ok(())
}

/// A regular file of a directory model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelFile {
    /// Path relative to the model directory, `/`-separated.
    pub relative: String,
    /// Full path.
    pub path: PathBuf,
    /// Size in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub modified_ns: i64,
}

/// The regular files under `dir`, sorted bytewise by relative path. Symbolic links are
/// followed only when they stay inside `dir`.
pub(crate) fn model_files(dir: &Path) -> io::Result<Vec<ModelFile>> {
    let root = dir.canonicalize()?;
    let mut files = Vec::new();
    let mut pending = vec![(dir.to_owned(), String::new())];
    while let Some((current, prefix)) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: file name is not UTF-8", entry.path().display()),
                )
            })?;
            let relative = format!("{prefix}{name}");
            let path = entry.path();
            if entry.file_type()?.is_symlink() && !path.canonicalize()?.starts_with(&root) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: symbolic link leading out of the model directory", path.display()),
                ));
            }
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                pending.push((path, format!("{relative}/")));
            } else if meta.is_file() {
                files.push(ModelFile {
                    relative,
                    path,
                    len: meta.len(),
                    modified_ns: modified_ns(&meta),
                });
            }
        }
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

/// A file's modification time in nanoseconds since the Unix epoch (0 when unknown).
pub(crate) fn modified_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn copy_file_hashed(src: &Path, dst: &Path, progress: &mut dyn FnMut(u64)) -> io::Result<[u8; 32]> {
    let mut out = File::create_new(dst)?;
    let digest = hash_stream(&mut File::open(src)?, Some(&mut out), progress)?;
    out.sync_all()?;
    Ok(digest)
}

/// Hashes everything `reader` yields, writing it to `sink` too when given.
fn hash_stream(
    reader: &mut dyn Read,
    mut sink: Option<&mut dyn Write>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        if let Some(sink) = sink.as_mut() {
            sink.write_all(&buf[..n])?;
        }
        done += n as u64;
        progress(done);
    }
    Ok(hasher.finalize().into())
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes of a hex SHA-256 digest; `None` when `hex` is not one.
pub fn digest_bytes(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn hash_matches_the_known_digest_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let mut last = (0, 0);
        let hex = sha256_file(&path, &mut |d, t| last = (d, t)).unwrap();
        assert_eq!(hex, ABC);
        assert_eq!(last, (3, 3));
    }

    fn sample_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(dir.path().join("1_Pooling/config.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("config.json"), b"abc").unwrap();
        std::fs::write(dir.path().join("B.bin"), b"").unwrap();
        dir
    }

    #[test]
    fn directory_digest_is_the_hash_of_its_sorted_sha256sum_listing() {
        let dir = sample_dir();
        let mut last = (0, 0);
        let digest = sha256_model(dir.path(), &mut |d, t| last = (d, t)).unwrap();
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let braces = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        let listing = format!("{braces}  1_Pooling/config.json\n{empty}  B.bin\n{ABC}  config.json\n");
        assert_eq!(digest, hex(&Sha256::digest(listing)));
        assert_eq!(last, (5, 5));
    }

    #[test]
    fn copying_hashes_what_it_writes_for_files_and_directories() {
        let src = sample_dir();
        let out = tempfile::tempdir().unwrap();
        let copy = out.path().join("copy");
        let digest = copy_hashed(src.path(), &copy, &mut |_, _| {}).unwrap();
        assert_eq!(digest, sha256_model(src.path(), &mut |_, _| {}).unwrap());
        assert_eq!(digest, sha256_model(&copy, &mut |_, _| {}).unwrap());
        let file = out.path().join("file");
        assert_eq!(
            copy_hashed(&src.path().join("config.json"), &file, &mut |_, _| {}).unwrap(),
            ABC
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"abc");
        assert!(
            copy_hashed(&src.path().join("config.json"), &file, &mut |_, _| {}).is_err(),
            "never overwrites"
        );
    }

    #[test]
    fn symlink_leading_out_of_a_model_directory_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let dir = sample_dir();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("model.safetensors")).unwrap();
        let err = sha256_model(dir.path(), &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("leading out"), "{err}");
    }

    #[test]
    fn a_hex_digest_reads_back_as_its_bytes() {
        let bytes = digest_bytes(ABC).unwrap();
        assert_eq!(hex(&bytes), ABC);
        assert_eq!(digest_bytes("abc"), None);
        assert_eq!(digest_bytes(&"zz".repeat(32)), None);
    }
}
