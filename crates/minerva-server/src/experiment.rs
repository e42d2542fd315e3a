//! A/B experiments: a name clients use whose traffic is split between variants (models of
//! the store or remote backends) by weight. A user (the request's `user` field, or the
//! `x-minerva-user` header) always lands on the same variant while the weights stay; the
//! variants' requests, errors, latency, time to first token, tokens/s and the scores
//! clients send to `POST /v1/feedback` are kept to compare them (difference of means with
//! a 95 % confidence interval). `promote` sends all traffic to one variant, `rollback` restores the weights
//! before; both take effect at once.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::routing::Target;

/// Most response ids remembered for feedback, per experiment.
const REMEMBERED_RESPONSES: usize = 100_000;

/// An `[experiments.NAME]` table of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    pub variants: Vec<toml::Spanned<VariantSpec>>,
}

/// One variant: what serves it and its share of the traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    pub model: String,
    pub weight: f64,
}

/// Mean and spread of a series, kept as it grows (Welford).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    #[serde(skip)]
    m2: f64,
}

impl Moments {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// The sample variance (0 below two values).
    pub fn variance(&self) -> f64 {
        if self.n < 2 { 0.0 } else { self.m2 / (self.n - 1) as f64 }
    }

    /// `self.mean - other.mean` and the half-width of its 95 % confidence interval
    /// (Welch's normal approximation); `None` until both have two values.
    pub fn difference(&self, other: &Self) -> Option<(f64, f64)> {
        if self.n < 2 || other.n < 2 {
            return None;
        }
        let se = (self.variance() / self.n as f64 + other.variance() / other.n as f64).sqrt();
        Some((self.mean - other.mean, 1.96 * se))
    }
}

/// What one variant did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VariantStats {
    pub requests: u64,
    pub errors: u64,
    /// Seconds to the whole answer (to the last byte of a stream).
    pub latency_seconds: Moments,
    /// Seconds to the first generated token of a stream.
    pub ttft_seconds: Moments,
    /// Generated tokens over the answer's seconds.
    pub tokens_per_second: Moments,
    /// The scores of `POST /v1/feedback`.
    pub feedback: Moments,
}

/// How one request of a variant went.
#[derive(Debug, Default)]
pub struct Outcome {
    /// It ended in an error (a failed attempt, an error status or an error event).
    pub failed: bool,
    /// The client read the answer to its end (a client that leaves early counts as a
    /// request without figures).
    pub complete: bool,
    pub latency: f64,
    pub ttft: Option<f64>,
    pub tokens: Option<u64>,
    pub response_id: Option<String>,
}

struct Live {
    weights: Vec<f64>,
    /// Weights before each promote or weight change, for `rollback`.
    history: Vec<Vec<f64>>,
    stats: Vec<VariantStats>,
    responses: HashMap<String, usize>,
    order: VecDeque<String>,
}

/// An experiment of the route table, with its live weights and figures.
pub struct Experiment {
    pub name: String,
    pub variants: Vec<Target>,
    live: Mutex<Live>,
    anonymous: AtomicU64,
}

impl std::fmt::Debug for Experiment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Experiment").field("name", &self.name).finish()
    }
}

/// A request about an experiment that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("experiment {experiment} has no variant {variant:?}")]
    NoVariant { experiment: String, variant: String },
    #[error("weights must be finite, not negative, and not all 0")]
    BadWeights,
    #[error("experiment {0} has nothing to roll back to")]
    NothingToRollBack(String),
}

impl Experiment {
    pub fn new(name: &str, variants: Vec<(Target, f64)>) -> Result<Self, ExperimentError> {
        let weights: Vec<f64> = variants.iter().map(|(_, w)| *w).collect();
        check(&weights)?;
        Ok(Self {
            name: name.to_owned(),
            live: Mutex::new(Live {
                stats: vec![VariantStats::default(); variants.len()],
                weights,
                history: Vec::new(),
                responses: HashMap::new(),
                order: VecDeque::new(),
            }),
            variants: variants.into_iter().map(|(t, _)| t).collect(),
            anonymous: AtomicU64::new(0),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The variant for `user` (sticky: a hash of the experiment and the user picks a point
    /// of the weights' range); without a user, each request draws anew.
    pub fn assign(&self, user: Option<&str>) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.name.hash(&mut hasher);
        match user {
            Some(user) => user.hash(&mut hasher),
            None => self.anonymous.fetch_add(1, Ordering::Relaxed).hash(&mut hasher),
        }
        let point = (hasher.finish() % 1_000_000) as f64 / 1_000_000.0;
        let weights = self.live().weights.clone();
        let total: f64 = weights.iter().sum();
        let mut edge = 0.0;
        for (i, w) in weights.iter().enumerate() {
            edge += w / total;
            if point < edge {
                return i;
            }
        }
        weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
    }

    /// Counts a request of variant `index`: whether it failed, its figures when the
    /// client read it to the end, and its response id (for feedback).
    pub fn record(&self, index: usize, outcome: Outcome) {
        let mut live = self.live();
        let stats = &mut live.stats[index];
        stats.requests += 1;
        if outcome.failed {
            stats.errors += 1;
        } else if outcome.complete {
            stats.latency_seconds.add(outcome.latency);
            if let Some(ttft) = outcome.ttft {
                stats.ttft_seconds.add(ttft);
            }
            if let Some(tokens) = outcome.tokens.filter(|_| outcome.latency > 0.0) {
                stats.tokens_per_second.add(tokens as f64 / outcome.latency);
            }
        }
        if let Some(id) = outcome.response_id {
            if live.order.len() >= REMEMBERED_RESPONSES
                && let Some(old) = live.order.pop_front()
            {
                live.responses.remove(&old);
            }
            live.order.push_back(id.clone());
            live.responses.insert(id, index);
        }
    }

    /// Adds a client's score for response `id`; the variant that gave it, or `None` when
    /// the id is not one of this experiment's.
    pub fn feedback(&self, id: &str, score: f64) -> Option<&Target> {
        let mut live = self.live();
        let index = *live.responses.get(id)?;
        live.stats[index].feedback.add(score);
        Some(&self.variants[index])
    }

    fn index(&self, variant: &str) -> Result<usize, ExperimentError> {
        self.variants
            .iter()
            .position(|t| t.name() == variant)
            .ok_or_else(|| ExperimentError::NoVariant {
                experiment: self.name.clone(),
                variant: variant.to_owned(),
            })
    }

    /// New weights by variant name (the others keep theirs).
    pub fn set_weights(&self, weights: &HashMap<String, f64>) -> Result<(), ExperimentError> {
        let indices = weights
            .iter()
            .map(|(variant, w)| Ok((self.index(variant)?, *w)))
            .collect::<Result<Vec<_>, ExperimentError>>()?;
        // One lock from reading to writing: two changes at once never lose one.
        let mut live = self.live();
        let mut next = live.weights.clone();
        for (i, w) in indices {
            next[i] = w;
        }
        check(&next)?;
        let before = std::mem::replace(&mut live.weights, next);
        live.history.push(before);
        Ok(())
    }

    /// Takes over `old`'s weights, history and figures when it has the same variants (a
    /// reload of the file that left this experiment as it was).
    pub fn adopt(&self, old: &Experiment) {
        if old.variants != self.variants {
            return;
        }
        let old = old.live();
        let mut live = self.live();
        live.weights = old.weights.clone();
        live.history = old.history.clone();
        live.stats = old.stats.clone();
        live.responses = old.responses.clone();
        live.order = old.order.clone();
    }

    /// All traffic to `variant`.
    pub fn promote(&self, variant: &str) -> Result<(), ExperimentError> {
        let index = self.index(variant)?;
        let weights: HashMap<String, f64> = self
            .variants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name().to_owned(), if i == index { 1.0 } else { 0.0 }))
            .collect();
        self.set_weights(&weights)?;
        tracing::info!(experiment = %self.name, variant, "experiment promoted");
        Ok(())
    }

    /// The weights before the last promote or change.
    pub fn rollback(&self) -> Result<(), ExperimentError> {
        let mut live = self.live();
        let before = live
            .history
            .pop()
            .ok_or_else(|| ExperimentError::NothingToRollBack(self.name.clone()))?;
        live.weights = before;
        tracing::info!(experiment = %self.name, "experiment rolled back");
        Ok(())
    }

    /// Weights and figures per variant, and each variant's difference from the first in
    /// mean latency, time to first token, tokens/s and feedback, with 95 % confidence
    /// intervals.
    pub fn status(&self) -> serde_json::Value {
        let live = self.live();
        let total: f64 = live.weights.iter().sum();
        let first = &live.stats[0];
        let variants: Vec<_> = self
            .variants
            .iter()
            .zip(&live.stats)
            .zip(&live.weights)
            .map(|((target, stats), w)| {
                let diff = |a: &Moments, b: &Moments| {
                    a.difference(b)
                        .map(|(d, half)| serde_json::json!({ "difference": d, "ci95": [d - half, d + half] }))
                };
                serde_json::json!({
                    "variant": target.name(),
                    "weight": w / total,
                    "requests": stats.requests,
                    "errors": stats.errors,
                    "latency_seconds": summary(&stats.latency_seconds),
                    "ttft_seconds": summary(&stats.ttft_seconds),
                    "tokens_per_second": summary(&stats.tokens_per_second),
                    "feedback": summary(&stats.feedback),
                    "latency_vs_first": diff(&stats.latency_seconds, &first.latency_seconds),
                    "ttft_vs_first": diff(&stats.ttft_seconds, &first.ttft_seconds),
                    "tokens_per_second_vs_first": diff(&stats.tokens_per_second, &first.tokens_per_second),
                    "feedback_vs_first": diff(&stats.feedback, &first.feedback),
                })
            })
            .collect();
        serde_json::json!({ "object": "experiment", "name": self.name, "variants": variants, "can_roll_back": !live.history.is_empty() })
    }
}

fn summary(m: &Moments) -> serde_json::Value {
    serde_json::json!({ "n": m.n, "mean": m.mean, "sd": m.variance().sqrt() })
}

fn check(weights: &[f64]) -> Result<(), ExperimentError> {
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || weights.iter().sum::<f64>() <= 0.0 {
        return Err(ExperimentError::BadWeights);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use minerva_store::ModelId;

    fn experiment() -> Experiment {
        let a = Target::Local(ModelId::new("a").unwrap());
        let b = Target::Local(ModelId::new("b").unwrap());
        Experiment::new("exp", vec![(a, 70.0), (b, 30.0)]).unwrap()
    }

    #[test]
    fn a_70_30_split_lands_within_5_points_and_users_stay_put() {
        let e = experiment();
        let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let first: Vec<usize> = users.iter().map(|u| e.assign(Some(u))).collect();
        let share = first.iter().filter(|&&v| v == 0).count() as f64 / 1000.0;
        assert!((share - 0.7).abs() <= 0.05, "{share}");
        for (u, v) in users.iter().zip(&first) {
            assert_eq!(e.assign(Some(u)), *v, "{u} moved");
        }
        let anonymous = (0..1000).filter(|_| e.assign(None) == 0).count() as f64 / 1000.0;
        assert!((anonymous - 0.7).abs() <= 0.05, "{anonymous}");
    }

    #[test]
    fn promote_sends_everyone_to_one_variant_and_rollback_restores_the_split() {
        let e = experiment();
        e.promote("b").unwrap();
        assert!((0..200).all(|i| e.assign(Some(&format!("u{i}"))) == 1));
        e.rollback().unwrap();
        let back = (0..1000).filter(|i| e.assign(Some(&format!("u{i}"))) == 0).count();
        assert!((650..=750).contains(&back), "{back}");
        assert!(matches!(e.rollback(), Err(ExperimentError::NothingToRollBack(_))));
        assert!(e.promote("c").is_err());
        let zero: HashMap<String, f64> = [("a".to_owned(), 0.0), ("b".to_owned(), 0.0)].into();
        assert!(matches!(e.set_weights(&zero), Err(ExperimentError::BadWeights)));
    }

    #[test]
    fn a_reload_that_keeps_the_variants_keeps_the_promotion_and_the_figures() {
        let old = experiment();
        old.promote("b").unwrap();
        old.record(
            1,
            Outcome {
                complete: true,
                latency: 0.5,
                response_id: Some("id-1".into()),
                ..Outcome::default()
            },
        );
        let new = experiment();
        new.adopt(&old);
        assert!((0..100).all(|i| new.assign(Some(&format!("u{i}"))) == 1));
        assert_eq!(new.feedback("id-1", 1.0).map(Target::name), Some("b"));
        new.rollback().unwrap();
        let other = Experiment::new(
            "exp",
            vec![
                (Target::Local(ModelId::new("c").unwrap()), 1.0),
                (Target::Local(ModelId::new("b").unwrap()), 1.0),
            ],
        )
        .unwrap();
        other.adopt(&old);
        assert!(
            matches!(other.rollback(), Err(ExperimentError::NothingToRollBack(_))),
            "other variants start afresh"
        );
    }

    #[test]
    fn the_difference_of_means_has_a_confidence_interval_that_covers_it() {
        let (mut a, mut b) = (Moments::default(), Moments::default());
        for i in 0..100 {
            a.add(1.0 + (i % 10) as f64 * 0.1);
            b.add(2.0 + (i % 10) as f64 * 0.1);
        }
        let (d, half) = b.difference(&a).unwrap();
        assert!((d - 1.0).abs() < 1e-9);
        assert!(half > 0.0 && half < 0.2, "{half}");
        assert!(Moments::default().difference(&a).is_none());
    }
}
