//! Encryption at rest for what Minerva writes that holds user data: adapters trained on
//! it, training checkpoints, the embedding cache's file.
//!
//! A sealed file is `MNVSEAL1`, a 96-bit random nonce, then the AES-256-GCM ciphertext of
//! the whole content with its tag (the magic is authenticated too). The key is 32 random
//! bytes, written by `minerva keygen` as `minerva-key-1:` and their base64, and found in
//! `MINERVA_KEY` (the key itself) or `MINERVA_KEY_FILE` (a file holding it). When a key is
//! configured, Minerva seals what it writes; a sealed file read without the key, or with
//! another key, is a clear error, never garbage.
//!
//! Libraries that only open paths (llama.cpp's adapter loader) get the plaintext through
//! an anonymous memory file ([`MemoryFile`]), so it never reaches a disk.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The environment variable holding the key itself.
pub const KEY_ENV: &str = "MINERVA_KEY";
/// The environment variable naming a file that holds the key.
pub const KEY_FILE_ENV: &str = "MINERVA_KEY_FILE";

const MAGIC: &[u8; 8] = b"MNVSEAL1";
const NONCE_LEN: usize = 12;
const KEY_PREFIX: &str = "minerva-key-1:";

/// What can go wrong with keys and sealed files.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "{} is encrypted and no key is configured: set {KEY_ENV} or {KEY_FILE_ENV} (minerva keygen makes one)",
        .0.display()
    )]
    MissingKey(PathBuf),
    #[error("{} is encrypted with another key (or was altered): the configured key does not open it", .0.display())]
    WrongKey(PathBuf),
    #[error("not a Minerva key ({0}); minerva keygen writes one")]
    BadKey(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, SealError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SealError + '_ {
    move |source| SealError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An AES-256 key.
#[derive(Clone)]
pub struct Key(aes_gcm::Key<Aes256Gcm>);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self(Aes256Gcm::generate_key(OsRng))
    }

    /// The key as `minerva keygen` writes it.
    pub fn encode(&self) -> String {
        format!("{KEY_PREFIX}{}", STANDARD.encode(self.0.as_slice()))
    }

    /// Reads an encoded key (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self> {
        let body = text
            .trim()
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| SealError::BadKey(format!("it does not start with {KEY_PREFIX}")))?;
        let bytes = STANDARD
            .decode(body)
            .map_err(|_| SealError::BadKey("its body is not base64".into()))?;
        if bytes.len() != 32 {
            return Err(SealError::BadKey(format!("{} bytes instead of 32", bytes.len())));
        }
        Ok(Self(*aes_gcm::Key::<Aes256Gcm>::from_slice(&bytes)))
    }

    /// The key in a file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        Self::parse(&text).map_err(|e| match e {
            SealError::BadKey(reason) => SealError::BadKey(format!("{}: {reason}", path.display())),
            other => other,
        })
    }

    /// The configured key: `MINERVA_KEY`, else the file `MINERVA_KEY_FILE` names, else
    /// none. A variable that is set but holds no valid key is an error. (The CLI calls
    /// this, at the edge, and passes the key down.)
    pub fn from_env() -> Result<Option<Self>> {
        if let Some(text) = std::env::var_os(KEY_ENV) {
            let text = text
                .into_string()
                .map_err(|_| SealError::BadKey(format!("{KEY_ENV} is not UTF-8")))?;
            return Self::parse(&text)
                .map(Some)
                .map_err(|e| SealError::BadKey(format!("{KEY_ENV}: {e}")));
        }
        match std::env::var_os(KEY_FILE_ENV) {
            Some(path) => Self::read(Path::new(&path)).map(Some),
            None => Ok(None),
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0)
    }
}

/// Whether `bytes` begin as a sealed file does.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Whether the file at `path` is sealed (reads its first bytes only).
pub fn file_is_sealed(path: &Path) -> Result<bool> {
    let mut head = [0u8; MAGIC.len()];
    let mut file = File::open(path).map_err(io(path))?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]).map_err(io(path))? {
            0 => return Ok(false),
            n => read += n,
        }
    }
    Ok(&head == MAGIC)
}

/// `plaintext` sealed under `key` with a fresh nonce.
pub fn seal(key: &Key, plaintext: &[u8]) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = key
        .cipher()
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: MAGIC,
            },
        )
        .expect("AES-GCM seals any length Minerva writes");
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ciphertext.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// The plaintext of sealed `bytes` (read from `path`, for the error).
pub fn open(key: &Key, bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    if !is_sealed(bytes) || bytes.len() < MAGIC.len() + NONCE_LEN {
        return Err(SealError::WrongKey(path.to_owned()));
    }
    let (nonce, ciphertext) = bytes[MAGIC.len()..].split_at(NONCE_LEN);
    key.cipher()
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: MAGIC,
            },
        )
        .map_err(|_| SealError::WrongKey(path.to_owned()))
}

/// Writes `bytes` to `path`, sealed when a key is given, through a temporary file renamed
/// over it (a crash leaves the old file or the new one) and synced.
pub fn write(path: &Path, key: Option<&Key>, bytes: &[u8]) -> Result<()> {
    let sealed;
    let content = match key {
        Some(key) => {
            sealed = seal(key, bytes);
            &sealed[..]
        }
        None => bytes,
    };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut file = File::create(&partial).map_err(io(&partial))?;
    file.write_all(content).map_err(io(&partial))?;
    file.sync_all().map_err(io(&partial))?;
    std::fs::rename(&partial, path).map_err(io(path))
}

/// The content of `path`: opened with `key` when the file is sealed (an error without
/// one), as it is otherwise.
pub fn read(path: &Path, key: Option<&Key>) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    if !is_sealed(&bytes) {
        return Ok(bytes);
    }
    match key {
        Some(key) => open(key, &bytes, path),
        None => Err(SealError::MissingKey(path.to_owned())),
    }
}

/// Plaintext in an anonymous file in memory (`memfd_create`), for a library that opens a
/// path: [`MemoryFile::path`] names it for as long as the value lives.
pub struct MemoryFile {
    file: File,
}

impl MemoryFile {
    pub fn new(name: &str, bytes: &[u8]) -> std::io::Result<Self> {
        let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
        // SAFETY: `name` is a valid C string; the returned descriptor is checked and then
        // owned by the `File`.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(bytes)?;
        Ok(Self { file })
    }

    /// A path that opens this file (`/proc/self/fd/N`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_with_their_key_only_and_hide_the_plaintext() {
        let key = Key::generate();
        let text = b"the private facts of Veldoria, repeated: Veldoria Veldoria".repeat(20);
        let sealed = seal(&key, &text);
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(8).any(|w| w == b"Veldoria"));
        assert_eq!(open(&key, &sealed, Path::new("f")).unwrap(), text);
        // Two seals of one text differ (fresh nonces).
        assert_ne!(seal(&key, &text), sealed);
        let other = Key::generate();
        assert!(matches!(
            open(&other, &sealed, Path::new("f")),
            Err(SealError::WrongKey(_))
        ));
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(matches!(
            open(&key, &altered, Path::new("f")),
            Err(SealError::WrongKey(_))
        ));
    }

    #[test]
    fn keys_round_trip_and_malformed_ones_are_refused() {
        let key = Key::generate();
        let again = Key::parse(&format!("  {}\n", key.encode())).unwrap();
        assert_eq!(open(&again, &seal(&key, b"x"), Path::new("f")).unwrap(), b"x");
        assert!(matches!(Key::parse("hello"), Err(SealError::BadKey(_))));
        assert!(matches!(Key::parse("minerva-key-1:AAAA"), Err(SealError::BadKey(_))));
        assert!(matches!(
            Key::parse("minerva-key-1:not base64!"),
            Err(SealError::BadKey(_))
        ));
        assert_eq!(format!("{key:?}"), "Key(…)");
    }

    #[test]
    fn files_are_written_sealed_and_read_back_or_refused_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate();
        let path = dir.path().join("secret.bin");
        write(&path, Some(&key), b"plain words").unwrap();
        assert!(file_is_sealed(&path).unwrap());
        assert_eq!(read(&path, Some(&key)).unwrap(), b"plain words");
        assert!(matches!(read(&path, None), Err(SealError::MissingKey(_))));
        let message = read(&path, None).unwrap_err().to_string();
        assert!(message.contains("MINERVA_KEY"), "{message}");
        // Without a key, files are written and read as they are.
        let plain = dir.path().join("plain.bin");
        write(&plain, None, b"plain words").unwrap();
        assert!(!file_is_sealed(&plain).unwrap());
        assert_eq!(read(&plain, Some(&key)).unwrap(), b"plain words");
        // A memory file reads back through its path.
        let memory = MemoryFile::new("test", b"in memory").unwrap();
        assert_eq!(std::fs::read(memory.path()).unwrap(), b"in memory");
    }
}
