//! State shared by the replicas of a Minerva cluster, kept on the systems a team already
//! runs rather than in a clustering protocol of our own.
//!
//! - [`RedisLevel`]: the embedding cache's second level on Redis
//!   (`--embedding-cache redis://HOST:PORT/DB`), behind each server's in-process cache.

mod redis_level;

pub use redis_level::{RedisLevel, RedisLevelConfig, SharedError};
