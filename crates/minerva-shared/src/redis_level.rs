//! The embedding cache's shared level on Redis.
//!
//! Each vector is one string key, `minerva:embedding:v1:` followed by the hex of its
//! content-addressed [`CacheKey`] (the same SHA-256 the in-process cache uses), holding
//! [`minerva_workers::embedding::shared::encode`]'s compact bytes and set with the
//! cache's time-to-live (`SET … EX`). Lookups are one `MGET` per request; writes one
//! pipeline per batch, in the background.
//!
//! Redis being down or slow never fails a request: every operation has a deadline, a
//! failure answers misses and counts an error, and after a failure the level is skipped
//! for [`RedisLevelConfig::retry_after`] (so a dead Redis costs one timeout per period,
//! not one per request). The connection manager reconnects on the next attempt.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minerva_workers::embedding::shared::{SharedFuture, SharedLevel, SharedStats, decode, encode};
use minerva_workers::embedding::{CacheKey, Cached};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

/// Prefix of every key Minerva writes (a version, so another layout never reads these).
const KEY_PREFIX: &str = "minerva:embedding:v1:";

/// Why a shared level cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The address is not a Redis URL.
    #[error("embedding cache address {url:?}: {reason}")]
    Address {
        /// What was given (credentials removed).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Deadlines of the Redis level.
#[derive(Debug, Clone, Copy)]
pub struct RedisLevelConfig {
    /// Longest an operation (connecting included) may take before it counts as failed.
    pub timeout: Duration,
    /// How long the level is skipped after a failure.
    pub retry_after: Duration,
}

impl Default for RedisLevelConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(250),
            retry_after: Duration::from_secs(2),
        }
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
}

/// The embedding cache's level on one Redis database.
pub struct RedisLevel {
    inner: Arc<Inner>,
}

/// What the level's background writes share with it.
struct Inner {
    connection: ConnectionManager,
    address: String,
    config: RedisLevelConfig,
    counters: Counters,
    reachable: AtomicBool,
    /// Until when the level is skipped after a failure.
    skip_until: Mutex<Option<Instant>>,
}

impl RedisLevel {
    /// The level on the database at `url` (`redis://[:PASSWORD@]HOST[:PORT][/DB]`, or
    /// `rediss://` for TLS). Nothing is connected yet: a Redis that is down now is
    /// tried again on use. Needs a Tokio runtime.
    pub fn new(url: &str, config: RedisLevelConfig) -> Result<Self, SharedError> {
        let address = redact(url);
        let bad = |reason: String| SharedError::Address {
            url: address.clone(),
            reason,
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(bad("expected redis://HOST:PORT/DB or rediss://…".into()));
        }
        if url.starts_with("rediss://") {
            // rustls on aws-lc-rs, as Minerva's other TLS clients.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let client = redis::Client::open(url).map_err(|e| bad(e.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(config.timeout);
        let connection =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                address,
                config,
                counters: Counters::default(),
                reachable: AtomicBool::new(false),
                skip_until: Mutex::new(None),
            }),
        })
    }
}

impl Inner {
    /// Whether a recent failure says to leave Redis alone for now.
    fn skipping(&self) -> bool {
        let mut until = self.skip_until.lock().unwrap_or_else(|p| p.into_inner());
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Counts the outcome of one operation; a failure starts a quiet period.
    fn record<T>(
        &self,
        what: &str,
        outcome: Result<Result<T, redis::RedisError>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        let error = match outcome {
            Ok(Ok(value)) => {
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!(address = %self.address, "the shared embedding cache is reachable");
                }
                return Some(value);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.config.timeout),
        };
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("minerva_embedding_cache_shared_errors_total").increment(1);
        if self.reachable.swap(false, Ordering::Relaxed) || self.counters.errors.load(Ordering::Relaxed) == 1 {
            tracing::warn!(address = %self.address, error, operation = what,
                "the shared embedding cache failed; serving from this server's cache, retrying in {:?}",
                self.config.retry_after);
        }
        *self.skip_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + self.config.retry_after);
        None
    }
}

/// The Redis key of `key`.
fn redis_key(key: &CacheKey) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(KEY_PREFIX.len() + 64);
    out.push_str(KEY_PREFIX);
    for byte in key.as_bytes() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

impl SharedLevel for RedisLevel {
    fn get<'a>(&'a self, keys: &'a [CacheKey]) -> SharedFuture<'a, Vec<Option<Cached>>> {
        let this = &self.inner;
        Box::pin(async move {
            if keys.is_empty() || this.skipping() {
                return vec![None; keys.len()];
            }
            let names: Vec<String> = keys.iter().map(redis_key).collect();
            let mut connection = this.connection.clone();
            // MGET answers one value per key, nil for a missing one.
            let mut mget = redis::cmd("MGET");
            mget.arg(&names);
            let query = mget.query_async::<Vec<Option<Vec<u8>>>>(&mut connection);
            let outcome = tokio::time::timeout(this.config.timeout, query).await;
            let Some(values) = this.record("get", outcome).filter(|v| v.len() == keys.len()) else {
                this.counters.misses.fetch_add(keys.len() as u64, Ordering::Relaxed);
                return vec![None; keys.len()];
            };
            let found: Vec<Option<Cached>> = values.iter().map(|v| v.as_deref().and_then(decode)).collect();
            let hits = found.iter().filter(|f| f.is_some()).count() as u64;
            this.counters.hits.fetch_add(hits, Ordering::Relaxed);
            this.counters
                .misses
                .fetch_add(keys.len() as u64 - hits, Ordering::Relaxed);
            found
        })
    }

    fn put(&self, entries: Vec<(CacheKey, Cached)>, ttl: Option<Duration>) {
        let this = Arc::clone(&self.inner);
        if entries.is_empty() || this.skipping() {
            return;
        }
        let mut pipeline = redis::pipe();
        for (key, cached) in &entries {
            let set = pipeline.cmd("SET").arg(redis_key(key)).arg(encode(cached));
            if let Some(ttl) = ttl {
                set.arg("EX").arg(ttl.as_secs().max(1));
            }
            set.ignore();
        }
        let count = entries.len() as u64;
        let mut connection = this.connection.clone();
        let timeout = this.config.timeout;
        // Nobody waits for the write.
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(timeout, pipeline.query_async::<()>(&mut connection)).await;
            if this.record("put", outcome).is_some() {
                this.counters.writes.fetch_add(count, Ordering::Relaxed);
            }
        });
    }

    fn stats(&self) -> SharedStats {
        let this = &self.inner;
        SharedStats {
            backend: "redis",
            address: this.address.clone(),
            hits: this.counters.hits.load(Ordering::Relaxed),
            misses: this.counters.misses.load(Ordering::Relaxed),
            writes: this.counters.writes.load(Ordering::Relaxed),
            errors: this.counters.errors.load(Ordering::Relaxed),
            reachable: this.reachable.load(Ordering::Relaxed),
        }
    }
}
