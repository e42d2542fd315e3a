//! Choosing the next token from a logits row.
//!
//! The order follows llama.cpp's default chain: penalties, top-k, top-p, min-p,
//! temperature, then a seeded draw (or argmax when the temperature is 0). Log
//! probabilities are reported from the model's own distribution (the raw logits), as
//! OpenAI's `logprobs` are.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{EngineError, Result, TokenId};

/// Largest number of alternatives a caller may ask for per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How to pick tokens. The defaults are greedy decoding with no penalties.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 picks the most likely token; higher values flatten the distribution.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of recently seen tokens (1 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Subtracted from a logit once per earlier occurrence of the token.
    pub frequency_penalty: f32,
    /// Subtracted from a logit once if the token occurred before.
    pub presence_penalty: f32,
    /// Seed of the random draw; the same seed and prompt give the same output.
    pub seed: Option<u64>,
    /// Report each chosen token's log probability and this many alternatives; `None`
    /// reports none (and spends no time on a softmax over the vocabulary).
    pub top_logprobs: Option<usize>,
    /// Added to the logits of these tokens before each choice (OpenAI's `logit_bias`,
    /// each in [-100, 100]: -100 bans a token, 100 all but forces it).
    pub logit_bias: Vec<(TokenId, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            penalty_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            top_logprobs: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Rejects values that have no meaning (NaN, negative temperature, top-p outside
    /// (0, 1], more alternatives than the vocabulary has, ...).
    pub fn validate(&self, n_vocab: usize) -> Result<()> {
        let finite = |param, value: f32| {
            if value.is_finite() {
                Ok(())
            } else {
                Err(EngineError::invalid(param, format!("{value} is not a finite number")))
            }
        };
        finite("temperature", self.temperature)?;
        finite("top_p", self.top_p)?;
        finite("min_p", self.min_p)?;
        finite("repeat_penalty", self.repeat_penalty)?;
        finite("frequency_penalty", self.frequency_penalty)?;
        finite("presence_penalty", self.presence_penalty)?;
        if self.temperature < 0.0 {
            return Err(EngineError::invalid("temperature", "must be at least 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(EngineError::invalid(
                "top_p",
                format!("{} is outside (0, 1]", self.top_p),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(EngineError::invalid(
                "min_p",
                format!("{} is outside [0, 1]", self.min_p),
            ));
        }
        if self.repeat_penalty <= 0.0 {
            return Err(EngineError::invalid("repeat_penalty", "must be positive"));
        }
        for (param, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return Err(EngineError::invalid(param, format!("{value} is outside [-2, 2]")));
            }
        }
        if self.top_k > n_vocab {
            return Err(EngineError::invalid(
                "top_k",
                format!("{} exceeds the vocabulary of {n_vocab} tokens", self.top_k),
            ));
        }
        for &(token, bias) in &self.logit_bias {
            if usize::try_from(token).map_or(true, |t| t >= n_vocab) {
                return Err(EngineError::invalid(
                    "logit_bias",
                    format!("token id {token} is outside the vocabulary of {n_vocab}"),
                ));
            }
            if !(-100.0..=100.0).contains(&bias) {
                return Err(EngineError::invalid(
                    "logit_bias",
                    format!("{bias} for token {token} is outside [-100, 100]"),
                ));
            }
        }
        if let Some(n) = self.top_logprobs
            && n > MAX_TOP_LOGPROBS.min(n_vocab)
        {
            return Err(EngineError::invalid(
                "top_logprobs",
                format!("{n} exceeds the maximum of {}", MAX_TOP_LOGPROBS.min(n_vocab)),
            ));
        }
        Ok(())
    }

    /// Whether the most likely token is always taken (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    fn has_penalties(&self) -> bool {
        self.repeat_penalty != 1.0
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
            || !self.logit_bias.is_empty()
    }
}

/// A chosen token with its log probability and, when asked, the most likely alternatives.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SampledToken {
    /// The chosen token.
    pub token: TokenId,
    /// Its natural-log probability under the model.
    pub logprob: f32,
    /// The most likely tokens and their log probabilities, most likely first.
    pub top: Vec<(TokenId, f32)>,
}

/// Stateful sampler for one sequence: its random stream and the tokens it has seen.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    recent: std::collections::VecDeque<TokenId>,
    /// Reused scratch: (token, logit) candidates.
    candidates: Vec<(TokenId, f32)>,
}

impl Sampler {
    /// Creates a sampler; `params` must have passed [`SamplingParams::validate`].
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)
        });
        Self {
            params,
            rng: StdRng::seed_from_u64(seed),
            recent: Default::default(),
            candidates: Vec::new(),
        }
    }

    /// Records tokens that precede the generation (the prompt) for the penalties.
    pub fn remember(&mut self, tokens: &[TokenId]) {
        for &token in tokens {
            self.accept(token);
        }
    }

    fn accept(&mut self, token: TokenId) {
        if self.params.penalty_last_n == 0 {
            return;
        }
        if self.recent.len() == self.params.penalty_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Picks the next token from `logits` and records it.
    pub fn sample(&mut self, logits: &[f32]) -> TokenId {
        let token = if self.params.has_penalties() {
            let mut penalized = logits.to_vec();
            self.apply_penalties(&mut penalized);
            self.choose(&penalized)
        } else {
            self.choose(logits)
        };
        self.accept(token);
        token
    }

    /// The log probabilities of `token` (chosen from `logits`) and its alternatives, when
    /// the params ask for them.
    pub fn logprobs(&self, logits: &[f32], token: TokenId) -> Option<SampledToken> {
        let top_n = self.params.top_logprobs?;
        let (logprob, top) = log_probabilities(logits, token, top_n);
        Some(SampledToken { token, logprob, top })
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let mut counts: HashMap<TokenId, u32> = HashMap::new();
        for &token in &self.recent {
            *counts.entry(token).or_default() += 1;
        }
        for (token, count) in counts {
            let Some(logit) = usize::try_from(token).ok().and_then(|i| logits.get_mut(i)) else {
                continue;
            };
            if *logit > 0.0 {
                *logit /= self.params.repeat_penalty;
            } else {
                *logit *= self.params.repeat_penalty;
            }
            *logit -= count as f32 * self.params.frequency_penalty + self.params.presence_penalty;
        }
        for &(token, bias) in &self.params.logit_bias {
            if let Some(logit) = usize::try_from(token).ok().and_then(|i| logits.get_mut(i)) {
                *logit += bias;
            }
        }
    }

    fn choose(&mut self, logits: &[f32]) -> TokenId {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let p = &self.params;
        if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 {
            // No filter: draw from the whole distribution, no sorting needed.
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let index = draw_scaled(&mut self.rng, logits.iter().copied(), max, p.temperature);
            return index.map_or_else(|| argmax(logits), |i| i as TokenId);
        }
        let candidates = &mut self.candidates;
        candidates.clear();
        candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as TokenId, l)));
        let by_logit_desc = |a: &(TokenId, f32), b: &(TokenId, f32)| b.1.total_cmp(&a.1);
        if p.top_k > 0 && p.top_k < candidates.len() {
            candidates.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            candidates.truncate(p.top_k);
        }
        candidates.sort_unstable_by(by_logit_desc);
        // Probabilities at temperature 1 decide the top-p and min-p cut, as in llama.cpp.
        let max = candidates[0].1;
        let weights: Vec<f64> = candidates.iter().map(|&(_, l)| f64::from(l - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut keep = candidates.len();
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, w) in weights.iter().enumerate() {
                cumulative += w / total;
                if cumulative >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            // weights[0] == 1 is the most likely token's relative weight.
            keep = keep.min(weights.iter().take_while(|&&w| w >= f64::from(p.min_p)).count().max(1));
        }
        candidates.truncate(keep);
        let index = draw_scaled(&mut self.rng, candidates.iter().map(|&(_, l)| l), max, p.temperature);
        candidates[index.unwrap_or(candidates.len() - 1)].0
    }
}

/// Draws an index with probability proportional to exp((logit - max) / temperature).
fn draw_scaled(
    rng: &mut StdRng,
    logits: impl Iterator<Item = f32> + Clone,
    max: f32,
    temperature: f32,
) -> Option<usize> {
    let weight = |l: f32| (f64::from(l - max) / f64::from(temperature)).exp();
    let total: f64 = logits.clone().map(weight).sum();
    let mut draw = rng.random::<f64>() * total;
    for (i, l) in logits.enumerate() {
        let w = weight(l);
        if draw < w {
            return Some(i);
        }
        draw -= w;
    }
    None
}

/// Index of the largest logit (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as TokenId
}

/// Natural-log softmax of `logits` at `token`, and the `top_n` most likely tokens.
pub fn log_probabilities(logits: &[f32], token: TokenId, top_n: usize) -> (f32, Vec<(TokenId, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| f64::from(l - max).exp()).sum::<f64>().ln();
    let logprob = |l: f32| (f64::from(l - max) - log_sum) as f32;
    let chosen = usize::try_from(token)
        .ok()
        .and_then(|i| logits.get(i))
        .map_or(f32::NEG_INFINITY, |&l| logprob(l));
    let mut top = Vec::new();
    if top_n > 0 {
        let mut indexed: Vec<(TokenId, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as TokenId, l)).collect();
        let n = top_n.min(indexed.len());
        indexed.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1));
        indexed.truncate(n);
        indexed.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        top = indexed.into_iter().map(|(t, l)| (t, logprob(l))).collect();
    }
    (chosen, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            temperature: 0.8,
            ..Default::default()
        }
    }

    #[test]
    fn logit_bias_bans_and_forces_tokens_greedy_or_not() {
        let logits = [1.0, 5.0, 2.0, 0.5];
        let mut greedy = Sampler::new(SamplingParams {
            logit_bias: vec![(1, -100.0)],
            ..Default::default()
        });
        assert_eq!(greedy.sample(&logits), 2, "the banned favourite gives way to the next");
        let mut sampled = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            logit_bias: vec![(3, 100.0)],
            ..Default::default()
        });
        assert!(
            (0..50).all(|_| sampled.sample(&logits) == 3),
            "a +100 bias all but forces the token"
        );
        for bad in [vec![(4, 1.0)], vec![(-1, 1.0)], vec![(0, 101.0)], vec![(0, f32::NAN)]] {
            let params = SamplingParams {
                logit_bias: bad.clone(),
                ..Default::default()
            };
            assert!(
                matches!(
                    params.validate(4),
                    Err(EngineError::InvalidParameter {
                        param: "logit_bias",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn invalid_values_are_typed_errors_naming_the_parameter() {
        let cases = [
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..params()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: -1.0,
                    ..params()
                },
                "temperature",
            ),
            (SamplingParams { top_p: 1.5, ..params() }, "top_p"),
            (SamplingParams { top_p: 0.0, ..params() }, "top_p"),
            (
                SamplingParams {
                    min_p: -0.1,
                    ..params()
                },
                "min_p",
            ),
            (SamplingParams { top_k: 11, ..params() }, "top_k"),
            (
                SamplingParams {
                    top_logprobs: Some(11),
                    ..params()
                },
                "top_logprobs",
            ),
            (
                SamplingParams {
                    presence_penalty: 3.0,
                    ..params()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    repeat_penalty: f32::INFINITY,
                    ..params()
                },
                "repeat_penalty",
            ),
        ];
        for (p, name) in cases {
            match p.validate(10) {
                Err(EngineError::InvalidParameter { param, .. }) => assert_eq!(param, name),
                other => panic!("{name}: expected an invalid-parameter error, got {other:?}"),
            }
        }
        params().validate(10).unwrap();
    }

    #[test]
    fn greedy_picks_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn logprobs_come_only_when_asked_for() {
        let logits = [0.1, 3.0, 2.0, -1.0];
        assert!(Sampler::new(SamplingParams::default()).logprobs(&logits, 1).is_none());
        let asked = Sampler::new(SamplingParams {
            top_logprobs: Some(2),
            ..Default::default()
        });
        let sampled = asked.logprobs(&logits, 1).expect("asked for");
        assert_eq!(sampled.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(sampled.logprob < 0.0);
    }

    #[test]
    fn same_seed_gives_the_same_tokens_and_another_seed_differs() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.1).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                ..Default::default()
            });
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_only_the_dominant_token() {
        let logits = [1.0, 5.0, 2.0, 0.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 2.0,
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..20).all(|_| s.sample(&logits) == 1));
        let logits = [0.0, 10.0, 0.0, 0.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..20).all(|_| s.sample(&logits) == 1));
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            min_p: 0.01,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..20).all(|_| s.sample(&logits) == 1));
    }

    #[test]
    fn penalties_steer_greedy_decoding_away_from_repeated_tokens() {
        let logits = [2.0, 1.9, 0.0];
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 0.5,
            ..Default::default()
        });
        s.remember(&[0]);
        assert_eq!(s.sample(&logits), 1);
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 1.3,
            ..Default::default()
        });
        s.remember(&[0]);
        assert_eq!(s.sample(&logits), 1);
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 0.06,
            ..Default::default()
        });
        s.remember(&[0, 0]);
        assert_eq!(s.sample(&logits), 1);
    }

    #[test]
    fn logprobs_are_a_normalised_log_softmax_with_sorted_alternatives() {
        let logits = [1.0f32, 2.0, 3.0];
        let (lp, top) = log_probabilities(&logits, 2, 3);
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        assert!((f64::from(lp) - (3.0 - z.ln())).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1, 0]);
        let total: f64 = top.iter().map(|t| f64::from(t.1).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
