//! The content-addressed embedding cache (seed 003's IntelligentEmbeddingCache made
//! real): the key is the SHA-256 of everything that decides a vector (the model files'
//! fingerprint, pooling, normalization, truncation, and the exact input), the value the
//! vector itself, so a hit is bit-identical to a fresh computation.
//!
//! Storage is a `moka` cache bounded in bytes (a weigher counts each entry's key, vector
//! and bookkeeping; TinyLFU admission with LRU eviction). The time-to-live is checked on
//! read against `tokio::time::Instant`, so tests drive it with virtual time; moka's own
//! expiry backs it up in real time to reclaim memory. [`EmbeddingCache::save`] and
//! [`EmbeddingCache::open`] keep the entries across restarts in a versioned binary file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::notification::RemovalCause;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::EmbeddingInput;
use super::shared::{SharedLevel, SharedStats};
use minerva_engine::embed::{EmbeddingDtype, Pooling};

/// Bytes of bookkeeping per entry besides key and vector (moka's node, the `Arc`).
const ENTRY_OVERHEAD: usize = 96;
/// First bytes of a cache file.
const FILE_MAGIC: &[u8; 8] = b"MNVEMBC\0";
/// Layout version of the cache file; a file of another version is ignored.
const FILE_VERSION: u32 = 1;

/// How the cache is bounded and where it persists.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Most bytes the entries may take; 0 turns the cache off.
    pub max_bytes: u64,
    /// How long an entry serves hits; `None` keeps entries until evicted.
    pub ttl: Option<Duration>,
    /// File the entries are loaded from at start and saved to at shutdown.
    pub file: Option<PathBuf>,
    /// Seals the file (encryption at rest: the vectors derive from users' texts).
    pub key: Option<minerva_seal::Key>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            ttl: Some(Duration::from_secs(24 * 3600)),
            file: None,
            key: None,
        }
    }
}

/// What decides a vector besides the input: part of every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyContext<'a> {
    /// SHA-256 over the model's files.
    pub fingerprint: &'a [u8; 32],
    /// The model's pooling.
    pub pooling: Pooling,
    /// Whether vectors are L2-normalized.
    pub normalize: bool,
    /// Whether over-long inputs are refused (else truncated).
    pub forbid_truncation: bool,
    /// Tokens per input after truncation.
    pub max_tokens: usize,
    /// The precision of the products (bf16 vectors differ from f32 ones).
    pub dtype: EmbeddingDtype,
}

/// SHA-256 of a vector's context and input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key's bytes (a shared level names its entries by them).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key of `input` under `context`.
    pub fn new(context: &KeyContext<'_>, input: &EmbeddingInput) -> Self {
        let mut h = Sha256::new();
        h.update(b"minerva-embedding-v1\0");
        h.update(context.fingerprint);
        h.update([
            match context.pooling {
                Pooling::Mean => 0,
                Pooling::Cls => 1,
            },
            u8::from(context.normalize),
            u8::from(context.forbid_truncation),
        ]);
        h.update((context.max_tokens as u64).to_le_bytes());
        // Nothing for f32, so the keys of caches saved before there were other dtypes hold.
        match context.dtype {
            EmbeddingDtype::F32 => {}
            EmbeddingDtype::Bf16 => h.update(b"dtype=bf16\0"),
            EmbeddingDtype::Int8 => h.update(b"dtype=int8\0"),
        }
        match input {
            EmbeddingInput::Text(text) => {
                h.update([0]);
                h.update(text.as_bytes());
            }
            EmbeddingInput::Tokens(ids) => {
                h.update([1]);
                for id in ids {
                    h.update(id.to_le_bytes());
                }
            }
        }
        Self(h.finalize().into())
    }
}

/// A cached vector and the tokens its input had (for usage counts).
#[derive(Debug, Clone)]
pub struct Cached {
    /// The vector, exactly as computed.
    pub vector: Arc<[f32]>,
    /// Tokens of the input.
    pub tokens: u32,
}

#[derive(Clone)]
struct Entry {
    cached: Cached,
    stored: Instant,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
    inserts: AtomicU64,
}

/// Counters and size of the cache.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    /// Entries held.
    pub entries: u64,
    /// Bytes they take (by the weigher).
    pub bytes: u64,
    /// The limit.
    pub max_bytes: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to compute.
    pub misses: u64,
    /// Hits / (hits + misses), 0 before any lookup.
    pub hit_rate: f64,
    /// Entries dropped (or refused) to stay within the limit.
    pub evictions: u64,
    /// Entries dropped because their time-to-live passed.
    pub expirations: u64,
    /// Vectors stored.
    pub inserts: u64,
    /// Time-to-live in seconds, if any.
    pub ttl_seconds: Option<u64>,
    /// The level shared with other servers behind this one, if any (its hits are not in
    /// `hits`: a lookup that misses here and hits there counts a miss here).
    pub shared: Option<SharedStats>,
}

/// Vectors by content, bounded in bytes; cheap to share (`Arc` inside).
pub struct EmbeddingCache {
    entries: Option<moka::sync::Cache<CacheKey, Entry>>,
    counters: Arc<Counters>,
    config: CacheConfig,
    shared: Option<Arc<dyn SharedLevel>>,
}

/// Why the cache file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheFileError {
    /// Reading or writing failed.
    #[error("embedding cache file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file is sealed and no key, or another key, is configured; or the key is malformed.
    #[error("embedding cache file: {0}")]
    Sealed(#[from] minerva_seal::SealError),
    /// The file is not a cache file of this version.
    #[error(
        "embedding cache file {path} is not a Minerva cache file of version {FILE_VERSION}; delete it or choose another path"
    )]
    Format {
        /// The file.
        path: PathBuf,
    },
}

impl EmbeddingCache {
    /// An empty cache for `config` (the file, if any, is not read: see [`Self::open`]).
    pub fn new(config: CacheConfig) -> Self {
        let counters = Arc::new(Counters::default());
        let entries = (config.max_bytes > 0).then(|| {
            let listener_counters = Arc::clone(&counters);
            let mut builder = moka::sync::Cache::builder()
                .max_capacity(config.max_bytes)
                .weigher(|_key: &CacheKey, entry: &Entry| {
                    u32::try_from(entry_bytes(entry.cached.vector.len())).unwrap_or(u32::MAX)
                })
                .eviction_listener(move |_key, _entry, cause| {
                    let counter = match cause {
                        RemovalCause::Size => &listener_counters.evictions,
                        RemovalCause::Expired => &listener_counters.expirations,
                        RemovalCause::Explicit | RemovalCause::Replaced => return,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                });
            if let Some(ttl) = config.ttl {
                builder = builder.time_to_live(ttl);
            }
            builder.build()
        });
        Self {
            entries,
            counters,
            config,
            shared: None,
        }
    }

    /// This cache with `level` behind it: misses here are looked up there, and what is
    /// computed is stored in both.
    pub fn with_shared(mut self, level: Arc<dyn SharedLevel>) -> Self {
        self.shared = Some(level);
        self
    }

    /// Whether a shared level is behind this cache.
    pub fn has_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The vectors the shared level holds for `keys` (none without one); each hit is kept
    /// here as well.
    pub async fn get_shared(&self, keys: &[CacheKey]) -> Vec<Option<Cached>> {
        let Some(shared) = &self.shared else {
            return vec![None; keys.len()];
        };
        let found = shared.get(keys).await;
        for (key, hit) in keys.iter().zip(&found) {
            if let Some(hit) = hit {
                self.insert(*key, hit.clone());
            }
        }
        found
    }

    /// Stores freshly computed `entries` here and in the shared level.
    pub fn insert_computed(&self, entries: Vec<(CacheKey, Cached)>) {
        for (key, cached) in &entries {
            self.insert(*key, cached.clone());
        }
        if let Some(shared) = &self.shared
            && !entries.is_empty()
        {
            shared.put(entries, self.config.ttl);
        }
    }

    /// A cache for `config`, filled from its file when one exists. An unreadable file is
    /// an error; a missing one is an empty cache.
    pub fn open(config: CacheConfig) -> Result<Self, CacheFileError> {
        let cache = Self::new(config);
        if let Some(path) = &cache.config.file
            && path.exists()
        {
            let loaded = cache.load(path)?;
            tracing::info!(path = %path.display(), entries = loaded, "embedding cache loaded");
        }
        Ok(cache)
    }

    /// The vector stored under `key`, if fresh; counts a hit or a miss.
    pub fn get(&self, key: &CacheKey) -> Option<Cached> {
        let found = self.entries.as_ref().and_then(|entries| {
            let entry = entries.get(key)?;
            if self.config.ttl.is_some_and(|ttl| entry.stored.elapsed() >= ttl) {
                entries.invalidate(key);
                self.counters.expirations.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Some(entry.cached)
        });
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores `cached` under `key`.
    pub fn insert(&self, key: CacheKey, cached: Cached) {
        if let Some(entries) = &self.entries {
            entries.insert(
                key,
                Entry {
                    cached,
                    stored: Instant::now(),
                },
            );
            self.counters.inserts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Size and counters (pending evictions applied first, so the size is exact).
    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = self.entries.as_ref().map_or((0, 0), |e| {
            e.run_pending_tasks();
            (e.entry_count(), e.weighted_size())
        });
        let hits = self.counters.hits.load(Ordering::Relaxed);
        let misses = self.counters.misses.load(Ordering::Relaxed);
        CacheStats {
            entries,
            bytes,
            max_bytes: self.config.max_bytes,
            hits,
            misses,
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            expirations: self.counters.expirations.load(Ordering::Relaxed),
            inserts: self.counters.inserts.load(Ordering::Relaxed),
            ttl_seconds: self.config.ttl.map(|t| t.as_secs()),
            shared: self.shared.as_ref().map(|s| s.stats()),
        }
    }

    /// Writes the entries to the configured file (nothing without one); returns how many.
    pub fn persist(&self) -> Result<usize, CacheFileError> {
        match &self.config.file {
            Some(path) => self.save(path),
            None => Ok(0),
        }
    }

    /// Writes every entry to `path` (through a temporary file, so a crash leaves the old
    /// file intact), sealed with the configured key if any; returns how many.
    pub fn save(&self, path: &Path) -> Result<usize, CacheFileError> {
        self.save_with(path, self.config.key.as_ref())
    }

    /// [`Self::save`] with the key given.
    pub fn save_with(&self, path: &Path, key: Option<&minerva_seal::Key>) -> Result<usize, CacheFileError> {
        let Some(entries) = &self.entries else {
            return Ok(0);
        };
        entries.run_pending_tasks();
        let items: Vec<(Arc<CacheKey>, Entry)> = entries.iter().collect();
        let mut out = Vec::new();
        out.extend_from_slice(FILE_MAGIC);
        out.extend_from_slice(&FILE_VERSION.to_le_bytes());
        out.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for (key, entry) in &items {
            out.extend_from_slice(&key.0);
            out.extend_from_slice(&entry.cached.tokens.to_le_bytes());
            out.extend_from_slice(&(entry.cached.vector.len() as u32).to_le_bytes());
            for x in entry.cached.vector.iter() {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        minerva_seal::write(path, key, &out)?;
        Ok(items.len())
    }

    fn load(&self, path: &Path) -> Result<usize, CacheFileError> {
        self.load_with(path, self.config.key.as_ref())
    }

    fn load_with(&self, path: &Path, key: Option<&minerva_seal::Key>) -> Result<usize, CacheFileError> {
        let format = || CacheFileError::Format { path: path.to_owned() };
        let bytes = minerva_seal::read(path, key)?;
        let mut input = &bytes[..];
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(|_| format())?;
        if &magic != FILE_MAGIC || read_u32(&mut input).map_err(|_| format())? != FILE_VERSION {
            return Err(format());
        }
        let mut count = [0u8; 8];
        input.read_exact(&mut count).map_err(|_| format())?;
        let count = u64::from_le_bytes(count);
        let mut loaded = 0;
        for _ in 0..count {
            let mut key = [0u8; 32];
            input.read_exact(&mut key).map_err(|_| format())?;
            let tokens = read_u32(&mut input).map_err(|_| format())?;
            let dims = read_u32(&mut input).map_err(|_| format())? as usize;
            if dims > 1 << 16 {
                return Err(format());
            }
            let mut bytes = vec![0u8; dims * 4];
            input.read_exact(&mut bytes).map_err(|_| format())?;
            let vector: Arc<[f32]> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            self.insert(CacheKey(key), Cached { vector, tokens });
            loaded += 1;
        }
        Ok(loaded)
    }
}

/// What the weigher charges for a vector of `dims` floats.
fn entry_bytes(dims: usize) -> usize {
    std::mem::size_of::<CacheKey>() + ENTRY_OVERHEAD + dims * std::mem::size_of::<f32>()
}

fn read_u32(input: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: [u8; 32] = [7; 32];

    fn context(normalize: bool) -> KeyContext<'static> {
        KeyContext {
            fingerprint: &FINGERPRINT,
            pooling: Pooling::Mean,
            normalize,
            forbid_truncation: false,
            max_tokens: 256,
            dtype: EmbeddingDtype::F32,
        }
    }

    fn key(text: &str) -> CacheKey {
        CacheKey::new(&context(true), &EmbeddingInput::Text(text.to_owned()))
    }

    fn vector(seed: f32) -> Cached {
        Cached {
            vector: (0..384).map(|i| seed + i as f32 * 1e-3).collect(),
            tokens: 5,
        }
    }

    #[test]
    fn keys_differ_by_text_options_model_dtype_and_input_kind() {
        let text = EmbeddingInput::Text("a".into());
        let base = CacheKey::new(&context(true), &text);
        assert_ne!(base, key("b"));
        assert_ne!(base, CacheKey::new(&context(false), &text));
        let other_model = KeyContext {
            fingerprint: &[8; 32],
            ..context(true)
        };
        assert_ne!(base, CacheKey::new(&other_model, &text));
        let bf16 = KeyContext {
            dtype: EmbeddingDtype::Bf16,
            ..context(true)
        };
        assert_ne!(base, CacheKey::new(&bf16, &text), "bf16 vectors are not f32 ones");
        let int8 = KeyContext {
            dtype: EmbeddingDtype::Int8,
            ..context(true)
        };
        assert_ne!(base, CacheKey::new(&int8, &text), "int8 vectors are not f32 ones");
        assert_ne!(CacheKey::new(&bf16, &text), CacheKey::new(&int8, &text));
        assert_ne!(base, CacheKey::new(&context(true), &EmbeddingInput::Tokens(vec![97])));
        assert_eq!(base, key("a"));
    }

    #[test]
    fn the_cache_stays_within_its_byte_limit() {
        let limit = 50 * entry_bytes(384) as u64;
        let cache = EmbeddingCache::new(CacheConfig {
            max_bytes: limit,
            ttl: None,
            file: None,
            key: None,
        });
        for i in 0..1000 {
            cache.insert(key(&i.to_string()), vector(i as f32));
        }
        let stats = cache.stats();
        assert!(stats.bytes <= limit, "{stats:?}");
        assert!(stats.entries <= 50 && stats.entries > 0, "{stats:?}");
        assert!(stats.evictions >= 950, "{stats:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_time_to_live() {
        let cache = EmbeddingCache::new(CacheConfig {
            max_bytes: 1 << 20,
            ttl: Some(Duration::from_secs(60)),
            file: None,
            key: None,
        });
        cache.insert(key("a"), vector(1.0));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(cache.get(&key("a")).is_some(), "fresh before the TTL");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(cache.get(&key("a")).is_none(), "expired after the TTL");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.expirations), (1, 1, 1));
    }

    #[test]
    fn a_saved_cache_reopens_with_bit_identical_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig {
            max_bytes: 1 << 20,
            ttl: None,
            file: Some(dir.path().join("embeddings.cache")),
            key: None,
        };
        let cache = EmbeddingCache::new(config.clone());
        let stored = vector(0.1);
        cache.insert(key("a"), stored.clone());
        assert_eq!(cache.persist().unwrap(), 1);
        let reopened = EmbeddingCache::open(config).unwrap();
        let hit = reopened.get(&key("a")).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&hit.vector), bits(&stored.vector));
        assert_eq!(hit.tokens, 5);
    }

    /// With a key, the file holds neither the vectors' bytes nor the keys': it reopens with
    /// that key only, and without one the error says what to configure.
    #[test]
    fn a_sealed_cache_file_holds_no_plaintext_and_needs_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("embeddings.cache");
        let config = CacheConfig {
            max_bytes: 1 << 20,
            ttl: None,
            file: Some(path.clone()),
            key: None,
        };
        let cache = EmbeddingCache::new(config.clone());
        let stored = vector(0.1);
        cache.insert(key("private text"), stored.clone());
        let secret = minerva_seal::Key::generate();
        assert_eq!(cache.save_with(&path, Some(&secret)).unwrap(), 1);
        let on_disk = std::fs::read(&path).unwrap();
        let head: Vec<u8> = stored.vector[..4].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert!(!on_disk.windows(16).any(|w| w == head), "a vector's bytes are on disk");
        assert!(
            !on_disk.windows(32).any(|w| w == key("private text").0),
            "a key is on disk"
        );
        assert!(
            !on_disk.windows(8).any(|w| w == FILE_MAGIC),
            "the plaintext header is on disk"
        );

        let reopened = EmbeddingCache::new(config.clone());
        assert_eq!(reopened.load_with(&path, Some(&secret)).unwrap(), 1);
        assert_eq!(reopened.get(&key("private text")).unwrap().vector, stored.vector);
        let err = EmbeddingCache::new(config.clone()).load_with(&path, None).unwrap_err();
        assert!(err.to_string().contains("MINERVA_KEY"), "{err}");
        let other = minerva_seal::Key::generate();
        let err = EmbeddingCache::new(config).load_with(&path, Some(&other)).unwrap_err();
        assert!(err.to_string().contains("another key"), "{err}");
    }

    #[test]
    fn a_foreign_file_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-cache");
        std::fs::write(&path, b"hello world, not a cache").unwrap();
        let err = EmbeddingCache::open(CacheConfig {
            file: Some(path),
            ..CacheConfig::default()
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("not a Minerva cache file"), "{err}");
    }
}
