//! A second cache level shared by the replicas of a cluster (Redis: `minerva-shared`),
//! behind the in-process one: a replica's miss that another replica computed is a hit.
//! The level is best effort: an unreachable or slow back-end answers misses and counts
//! an error, never fails a request.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

use super::cache::{CacheKey, Cached};

/// A future a [`SharedLevel`] returns.
pub type SharedFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A cache level shared between servers.
pub trait SharedLevel: Send + Sync + 'static {
    /// The vectors stored under `keys`, in order (`None` for each miss). A back-end that
    /// cannot be reached answers every key with `None`.
    fn get<'a>(&'a self, keys: &'a [CacheKey]) -> SharedFuture<'a, Vec<Option<Cached>>>;

    /// Stores `entries`, each kept for `ttl` (`None`: until the back-end evicts it). Does
    /// its work in the background: the caller never waits for it.
    fn put(&self, entries: Vec<(CacheKey, Cached)>, ttl: Option<Duration>);

    /// Its counters.
    fn stats(&self) -> SharedStats;
}

/// Counters of a [`SharedLevel`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SharedStats {
    /// The back-end ("redis").
    pub backend: &'static str,
    /// Where it is (no credentials).
    pub address: String,
    /// Keys found there.
    pub hits: u64,
    /// Keys looked up and not found.
    pub misses: u64,
    /// Vectors written.
    pub writes: u64,
    /// Operations that failed or timed out (their keys counted as misses, their writes
    /// dropped).
    pub errors: u64,
    /// Whether the last operation reached the back-end.
    pub reachable: bool,
}

/// A vector as the shared level stores it: the input's token count (u32) then the
/// floats, little-endian — exactly the bits computed.
pub fn encode(cached: &Cached) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + cached.vector.len() * 4);
    out.extend_from_slice(&cached.tokens.to_le_bytes());
    for x in cached.vector.iter() {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The vector [`encode`] wrote, or `None` for bytes that are not one.
pub fn decode(bytes: &[u8]) -> Option<Cached> {
    if bytes.len() < 8 || bytes.len() % 4 != 0 {
        return None;
    }
    let (tokens, floats) = bytes.split_at(4);
    Some(Cached {
        tokens: u32::from_le_bytes(tokens.try_into().ok()?),
        vector: floats
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_comes_back_bit_identical_and_garbage_is_refused() {
        let cached = Cached {
            vector: vec![0.1, -0.0, f32::MIN_POSITIVE, 3.5e-12].into(),
            tokens: 7,
        };
        let back = decode(&encode(&cached)).unwrap();
        assert_eq!(back.tokens, 7);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.vector), bits(&cached.vector));
        assert!(decode(b"").is_none());
        assert!(decode(b"\x01\x00\x00\x00").is_none(), "no floats");
        assert!(decode(b"\x01\x00\x00\x00\x00\x00").is_none(), "half a float");
    }
}
