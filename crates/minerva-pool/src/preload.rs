//! The preloader: loads models before they are asked for, from the usage patterns of the
//! registry's access log.
//!
//! On boot it warms the pool with the hot list. Then, after requests (at most once per
//! `min_interval`, with the newest request of the interval), it asks the patterns for
//! recommendations of its strategy and preloads the best one that is not in memory yet.
//! The analysis reads the access log's last two windows, which in a lived-in home holds
//! a hundred thousand events: run per request, it took a core from the models serving
//! them (an embedding request's latency went up by half). A preload goes through
//! [`ModelPool::preload_displacing`]: it only takes free room or the room of idle models
//! the recommendations rank below it, never waits, and never evicts a model in use.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ModelPool;
use crate::pool::Displace;
use minerva_store::ModelId;
use minerva_store::patterns::{PatternConfig, PreloadRecommendation, PreloadStrategy, UsagePatterns};
use minerva_store::{AccessEvent, AccessKind, Registry, RegistryError, UnixMillis, now_millis};

/// How the preloader works.
#[derive(Debug, Clone)]
pub struct PreloadConfig {
    /// How recommendations are ranked.
    pub strategy: PreloadStrategy,
    /// At most one analysis, and so one preload, per this interval (rate limit).
    pub min_interval: Duration,
    /// Windows and thresholds of the pattern analysis.
    pub patterns: PatternConfig,
    /// Models from the hot list to load on boot (0: no warm start).
    pub warm_start: usize,
}

impl Default for PreloadConfig {
    fn default() -> Self {
        Self {
            strategy: PreloadStrategy::Sequential,
            min_interval: Duration::from_secs(2),
            patterns: PatternConfig::default(),
            warm_start: 2,
        }
    }
}

/// Starts the preloader of `pool`; `None` when the pool has no registry to learn from.
/// It ends when the pool is dropped (its request channel closes).
pub fn spawn(pool: Arc<ModelPool>, config: PreloadConfig) -> Option<JoinHandle<()>> {
    let registry = Arc::clone(pool.registry()?);
    Some(tokio::spawn(run(pool, registry, config)))
}

async fn run(pool: Arc<ModelPool>, registry: Arc<Registry>, config: PreloadConfig) {
    let mut requests = pool.requests();
    if config.warm_start > 0 {
        warm_start(&pool, &registry, &config).await;
    }
    let mut last_analysis: Option<Instant> = None;
    loop {
        let mut requested = match requests.recv().await {
            Ok(id) => id,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        if let Some(at) = last_analysis {
            tokio::time::sleep_until(at + config.min_interval).await;
        }
        // The newest request of the interval stands for the others.
        loop {
            match requests.try_recv() {
                Ok(id) => requested = id,
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        last_analysis = Some(Instant::now());
        let recommendations = {
            let registry = Arc::clone(&registry);
            let config = config.clone();
            let requested = requested.clone();
            tokio::task::spawn_blocking(move || recommend(&registry, &config, Some(&requested), now_millis())).await
        };
        let recommendations = match recommendations {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "preloader cannot read the access log");
                continue;
            }
            Err(_) => continue,
        };
        let Some(pick) = recommendations
            .iter()
            .find(|r| r.id != requested && !pool.is_resident(&r.id))
            .cloned()
        else {
            continue;
        };
        tracing::info!(model = %pick.id, reason = %pick.reason, "preloading");
        let displace = Displace::Only(ranked_below(&pool, &recommendations, &pick));
        let pool = Arc::clone(&pool);
        tokio::spawn(async move {
            if let Err(e) = pool.preload_displacing(&pick.id, displace).await {
                tracing::debug!(model = %pick.id, error = %e, "preload skipped");
            }
        });
    }
}

/// The loaded models the recommendations rank below `pick` (a model they do not name
/// ranks lowest): those a preload of `pick` may displace.
fn ranked_below(
    pool: &ModelPool,
    recommendations: &[PreloadRecommendation],
    pick: &PreloadRecommendation,
) -> Vec<ModelId> {
    let priority = |id: &ModelId| recommendations.iter().find(|r| &r.id == id).map_or(0.0, |r| r.priority);
    pool.loaded()
        .iter()
        .map(|m| m.id.clone())
        .filter(|id| priority(id) < pick.priority)
        .collect()
}

/// Loads the hottest models of the access log, one after the other.
async fn warm_start(pool: &ModelPool, registry: &Arc<Registry>, config: &PreloadConfig) {
    let hot = {
        let registry = Arc::clone(registry);
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let now = now_millis();
            let events = registry.events_since(now - horizon(&config))?;
            Ok::<_, RegistryError>(UsagePatterns::new(config.patterns, &events).hot_list(now, config.warm_start))
        })
        .await
    };
    let Ok(Ok(hot)) = hot else {
        return;
    };
    for id in hot {
        tracing::info!(model = %id, "warm start");
        if let Err(e) = pool.preload(&id).await {
            tracing::info!(model = %id, error = %e, "warm start skipped");
        }
    }
}

/// The recommendations of the configured strategy as of `now`. `just_requested` is added
/// to the log if the usage writer has not stored it yet.
pub fn recommend(
    registry: &Registry,
    config: &PreloadConfig,
    just_requested: Option<&ModelId>,
    now: UnixMillis,
) -> Result<Vec<PreloadRecommendation>, RegistryError> {
    let mut events = registry.events_since(now - horizon(config))?;
    if let Some(id) = just_requested {
        let logged = events
            .iter()
            .rev()
            .take_while(|e| now - e.at < 1000)
            .any(|e| e.kind == AccessKind::Request && &e.id == id);
        if !logged {
            events.push(AccessEvent {
                id: id.clone(),
                at: now,
                kind: AccessKind::Request,
            });
        }
    }
    let records = match config.strategy {
        PreloadStrategy::Size => registry.records()?,
        _ => Vec::new(),
    };
    Ok(UsagePatterns::new(config.patterns.clone(), &events).recommendations(config.strategy, now, &records))
}

/// How far back the analysis reads: two windows (trend compares the last with the one before).
fn horizon(config: &PreloadConfig) -> UnixMillis {
    UnixMillis::try_from(config.patterns.window.as_millis() * 2).unwrap_or(UnixMillis::MAX / 2)
}
