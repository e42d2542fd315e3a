//! Usage patterns from the access log: which models are hot, whether their use is rising or
//! falling, which model tends to follow which, and what to preload.
//!
//! Everything here is a pure function of a list of [`AccessEvent`]s and a `now` given by
//! the caller (no clock reads), so the same log always gives the same answers. Only
//! [`AccessKind::Request`] events count: preloads are Minerva's own guesses, and counting
//! them would let the preloader reinforce itself.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

use crate::ModelId;
use crate::registry::{AccessEvent, AccessKind, ModelRecord, UnixMillis};

/// Settings of the analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternConfig {
    /// Length of the sliding window: rates compare the last window with the one before,
    /// and recency decays with this half-life.
    pub window: Duration,
    /// Relative change of the request count between windows that makes a trend
    /// (0.25: more than 25 % up is increasing, more than 25 % down decreasing).
    pub trend_threshold: f64,
    /// Fewer requests than this over both windows is too little to call a trend.
    pub min_trend_requests: u32,
    /// Share of the last window's requests from which a model is hot.
    pub hot_share: f64,
    /// A model "follows" another when requested within this time after it.
    pub follow_within: Duration,
    /// Times B must have followed A before B is recommended after A.
    pub min_follow_support: u32,
    /// Fraction of A's visits B must have followed before B is recommended after A.
    pub min_follow_confidence: f64,
}

impl Default for PatternConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3600),
            trend_threshold: 0.25,
            min_trend_requests: 4,
            hot_share: 0.2,
            follow_within: Duration::from_secs(60),
            min_follow_support: 2,
            min_follow_confidence: 0.5,
        }
    }
}

/// Direction of a model's request rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    /// More requests in the last window than in the one before.
    Increasing,
    /// About as many, or too few to tell.
    Stable,
    /// Fewer.
    Decreasing,
}

/// Whether a model takes a large share of recent requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Heat {
    /// At least [`PatternConfig::hot_share`] of the last window's requests.
    Hot,
    /// Less.
    Cold,
}

/// One model's usage as of `now`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelUsage {
    /// The model.
    pub id: ModelId,
    /// Requests in the last window.
    pub recent_requests: u32,
    /// Requests in the window before.
    pub previous_requests: u32,
    /// Its share of all requests in the last window (0 when there were none).
    pub share: f64,
    /// Its last request.
    pub last_request: UnixMillis,
    /// Rising, steady or falling.
    pub trend: Trend,
    /// Hot or cold.
    pub heat: Heat,
}

/// How the preloader ranks models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreloadStrategy {
    /// The models that usually follow the one just requested.
    Sequential,
    /// The most requested models of the last window.
    Frequency,
    /// The most recently requested models.
    Recency,
    /// The smallest of the models in use, cheapest to have ready.
    Size,
}

/// A model worth loading before it is asked for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PreloadRecommendation {
    /// The model.
    pub id: ModelId,
    /// In (0, 1]; higher first.
    pub priority: f64,
    /// Why, in words.
    pub reason: String,
}

/// A model that tends to be requested soon after another.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Follower {
    /// The following model.
    pub id: ModelId,
    /// Visits of the first model it followed.
    pub support: u32,
    /// `support` over the first model's visits that had a successor.
    pub confidence: f64,
}

/// The usage patterns of an access log.
#[derive(Debug, Clone)]
pub struct UsagePatterns {
    config: PatternConfig,
    /// Requests, oldest first.
    requests: Vec<(ModelId, UnixMillis)>,
}

impl UsagePatterns {
    /// Analyses `events` (in any order).
    pub fn new(config: PatternConfig, events: &[AccessEvent]) -> Self {
        let mut requests: Vec<(ModelId, UnixMillis)> = events
            .iter()
            .filter(|e| e.kind == AccessKind::Request)
            .map(|e| (e.id.clone(), e.at))
            .collect();
        requests.sort_by_key(|(_, at)| *at);
        Self { config, requests }
    }

    /// Usage of every model requested up to `now`, sorted by id.
    pub fn usage(&self, now: UnixMillis) -> Vec<ModelUsage> {
        let window = millis(self.config.window);
        let mut by_model: HashMap<&ModelId, (u32, u32, UnixMillis)> = HashMap::new();
        for (id, at) in self.requests_until(now) {
            let entry = by_model.entry(id).or_insert((0, 0, *at));
            let age = now - at;
            if age < window {
                entry.0 += 1;
            } else if age < 2 * window {
                entry.1 += 1;
            }
            entry.2 = *at;
        }
        let recent_total: u32 = by_model.values().map(|v| v.0).sum();
        let mut usage: Vec<ModelUsage> = by_model
            .into_iter()
            .map(|(id, (recent, previous, last))| {
                let share = if recent_total == 0 {
                    0.0
                } else {
                    f64::from(recent) / f64::from(recent_total)
                };
                ModelUsage {
                    id: id.clone(),
                    recent_requests: recent,
                    previous_requests: previous,
                    share,
                    last_request: last,
                    trend: self.trend(recent, previous),
                    heat: if recent > 0 && share >= self.config.hot_share {
                        Heat::Hot
                    } else {
                        Heat::Cold
                    },
                }
            })
            .collect();
        usage.sort_by(|a, b| a.id.cmp(&b.id));
        usage
    }

    /// The `k` models to warm up on boot: highest request count decayed by age (half-life
    /// one window), so a model used a lot last night outranks one used once last week.
    pub fn hot_list(&self, now: UnixMillis, k: usize) -> Vec<ModelId> {
        let mut scores: HashMap<&ModelId, f64> = HashMap::new();
        for (id, at) in self.requests_until(now) {
            *scores.entry(id).or_default() += self.decay(now - at);
        }
        let mut ranked: Vec<(&ModelId, f64)> = scores.into_iter().collect();
        ranked.sort_by(|a, b| by_priority((a.0, a.1), (b.0, b.1)));
        ranked.into_iter().take(k).map(|(id, _)| id.clone()).collect()
    }

    /// Models requested within [`PatternConfig::follow_within`] after a visit of `first`
    /// (consecutive requests of one model count as one visit), most likely first.
    pub fn followers(&self, first: &ModelId) -> Vec<Follower> {
        self.followers_until(first, UnixMillis::MAX)
    }

    /// Recommendations of `strategy` as of `now`, highest priority first. `records` give
    /// the sizes for [`PreloadStrategy::Size`].
    pub fn recommendations(
        &self,
        strategy: PreloadStrategy,
        now: UnixMillis,
        records: &[ModelRecord],
    ) -> Vec<PreloadRecommendation> {
        let mut recommendations = match strategy {
            PreloadStrategy::Sequential => self.sequential(now),
            PreloadStrategy::Frequency => self
                .usage(now)
                .into_iter()
                .filter(|u| u.recent_requests > 0)
                .map(|u| PreloadRecommendation {
                    reason: format!(
                        "{} requests in the last {} ({:.0} % of all)",
                        u.recent_requests,
                        human(millis(self.config.window)),
                        u.share * 100.0
                    ),
                    id: u.id,
                    priority: u.share,
                })
                .collect(),
            PreloadStrategy::Recency => self
                .usage(now)
                .into_iter()
                .map(|u| PreloadRecommendation {
                    priority: self.decay(now - u.last_request),
                    reason: format!("last requested {} ago", human(now - u.last_request)),
                    id: u.id,
                })
                .collect(),
            PreloadStrategy::Size => self.by_size(now, records),
        };
        recommendations.sort_by(|a, b| by_priority((&a.id, a.priority), (&b.id, b.priority)));
        recommendations
    }

    fn sequential(&self, now: UnixMillis) -> Vec<PreloadRecommendation> {
        let Some((last, at)) = self.requests_until(now).last() else {
            return Vec::new();
        };
        if now - at > millis(self.config.follow_within) {
            return Vec::new();
        }
        let visits = self.visits_with_successor(last, now).count();
        self.followers_until(last, now)
            .into_iter()
            .filter(|f| {
                f.support >= self.config.min_follow_support && f.confidence >= self.config.min_follow_confidence
            })
            .map(|f| PreloadRecommendation {
                reason: format!(
                    "followed {last} within {} in {} of {visits} visits",
                    human(millis(self.config.follow_within)),
                    f.support
                ),
                id: f.id,
                priority: f.confidence,
            })
            .collect()
    }

    fn by_size(&self, now: UnixMillis, records: &[ModelRecord]) -> Vec<PreloadRecommendation> {
        let used: Vec<&ModelRecord> = records
            .iter()
            .filter(|r| r.size_bytes > 0 && self.requests_until(now).iter().any(|(id, _)| *id == r.id))
            .collect();
        let Some(smallest) = used.iter().map(|r| r.size_bytes).min() else {
            return Vec::new();
        };
        used.into_iter()
            .map(|r| PreloadRecommendation {
                id: r.id.clone(),
                priority: smallest as f64 / r.size_bytes as f64,
                reason: format!(
                    "{:.1} MB (smallest model in use: {:.1} MB)",
                    r.size_bytes as f64 / 1e6,
                    smallest as f64 / 1e6
                ),
            })
            .collect()
    }

    /// Visits (runs of consecutive requests of one model) up to `now`, oldest first.
    fn visits(&self, now: UnixMillis) -> Vec<Visit<'_>> {
        let requests = self.requests_until(now);
        let mut visits = Vec::new();
        let mut i = 0;
        while i < requests.len() {
            let model = &requests[i].0;
            let mut end = i;
            while end + 1 < requests.len() && requests[end + 1].0 == *model {
                end += 1;
            }
            visits.push(Visit {
                model,
                end: requests[end].1,
                next: requests.get(end + 1).map(|(next, at)| (next, *at)),
            });
            i = end + 1;
        }
        visits
    }

    /// Visits of `first` that some other visit followed.
    fn visits_with_successor(&self, first: &ModelId, now: UnixMillis) -> impl Iterator<Item = Visit<'_>> {
        self.visits(now)
            .into_iter()
            .filter(move |v| v.model == first && v.next.is_some())
    }

    fn followers_until(&self, first: &ModelId, now: UnixMillis) -> Vec<Follower> {
        let within = millis(self.config.follow_within);
        let mut visits = 0u32;
        let mut counts: HashMap<&ModelId, u32> = HashMap::new();
        for visit in self.visits_with_successor(first, now) {
            let Some((next, at)) = visit.next else { continue };
            visits += 1;
            if at - visit.end <= within {
                *counts.entry(next).or_default() += 1;
            }
        }
        let mut followers: Vec<Follower> = counts
            .into_iter()
            .map(|(id, support)| Follower {
                id: id.clone(),
                support,
                confidence: f64::from(support) / f64::from(visits),
            })
            .collect();
        followers.sort_by(|a, b| by_priority((&a.id, a.confidence), (&b.id, b.confidence)));
        followers
    }

    fn requests_until(&self, now: UnixMillis) -> &[(ModelId, UnixMillis)] {
        let end = self.requests.partition_point(|(_, at)| *at <= now);
        &self.requests[..end]
    }

    fn trend(&self, recent: u32, previous: u32) -> Trend {
        if recent + previous < self.config.min_trend_requests {
            return Trend::Stable;
        }
        let (recent, previous) = (f64::from(recent), f64::from(previous));
        if recent > previous * (1.0 + self.config.trend_threshold) {
            Trend::Increasing
        } else if recent < previous * (1.0 - self.config.trend_threshold) {
            Trend::Decreasing
        } else {
            Trend::Stable
        }
    }

    /// Weight of a request `age` ms old: halves every window.
    fn decay(&self, age: UnixMillis) -> f64 {
        0.5f64.powf(age.max(0) as f64 / millis(self.config.window).max(1) as f64)
    }
}

/// A run of consecutive requests of one model.
struct Visit<'a> {
    model: &'a ModelId,
    /// Time of the run's last request.
    end: UnixMillis,
    /// The next run's model and first request.
    next: Option<(&'a ModelId, UnixMillis)>,
}

/// Higher priority first, then by id, so ties come out the same way every time.
fn by_priority(a: (&ModelId, f64), b: (&ModelId, f64)) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then_with(|| a.0.cmp(b.0))
}

fn millis(d: Duration) -> UnixMillis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn human(ms: UnixMillis) -> String {
    match ms / 1000 {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

#[cfg(test)]
mod tests;
