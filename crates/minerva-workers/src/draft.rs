//! Drafts for speculative decoding without a draft model (prompt lookup, llama.cpp's
//! n-gram drafting): when the last few tokens of a sequence occurred before in its prompt
//! or its reply, the tokens that followed them then are guessed to follow now. The
//! scheduler evaluates the sequence's next token and the guess in one pass and keeps the
//! longest prefix of the guess the model itself chooses, so the output is the greedy one;
//! a copy-heavy reply (a rewrite, quotes, code edits) gets several tokens per pass.
//!
//! A draft is not free: on a CPU a pass of n tokens costs about `a + b·n` (measured as
//! the scheduler runs, [`PassCost`]), and for a small model `a` is only about twice `b`.
//! So each draft is as long as pays: the length `k` that maximizes the expected tokens a
//! pass yields, `(1 − α^(k+1)) / (1 − α)` for a per-token acceptance `α`, over what the
//! pass costs this sequence, `a / sequences + b·(1 + k)`. `α` is learnt per kind of match
//! ([`Acceptance`]): by the n-gram's length, and by whether the sequence's previous draft
//! was wholly accepted (inside a copied run, guesses are almost always right; just after
//! one ended, rarely). A kind of match that does not pay gets no draft at all.

use minerva_engine::TokenId;

/// Longest n-gram looked up (longer matches first: they predict better).
const MAX_NGRAM: usize = 4;
/// Shortest n-gram looked up (one token matches too often to pay).
const MIN_NGRAM: usize = 2;

/// The up to `k` tokens that followed the most recent earlier occurrence of the longest
/// tail (of [`MAX_NGRAM`] down to [`MIN_NGRAM`] tokens) of a sequence's history — the
/// tokens in its KV, then `next`, the one it evaluates now — and that tail's length;
/// `None` when no tail occurred before. The history is read in place (no copy per step).
pub(crate) fn lookup(kv: &[TokenId], next: TokenId, k: usize) -> Option<(usize, Vec<TokenId>)> {
    let len = kv.len() + 1;
    let at = |i: usize| if i < kv.len() { kv[i] } else { next };
    if k == 0 {
        return None;
    }
    for n in (MIN_NGRAM..=MAX_NGRAM).rev() {
        if len <= n {
            continue;
        }
        let tail = len - n;
        // Each candidate start leaves at least one token after its n-gram.
        if let Some(start) = (0..tail).rev().find(|&s| (0..n).all(|j| at(s + j) == at(tail + j))) {
            let from = start + n;
            return Some((n, (from..(from + k).min(len)).map(at).collect()));
        }
    }
    None
}

/// What kind of match a draft came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MatchKind {
    /// Length of the n-gram that matched.
    pub(crate) ngram: usize,
    /// The sequence's previous draft was accepted whole.
    pub(crate) in_run: bool,
}

impl MatchKind {
    fn slot(self) -> usize {
        (self.ngram - MIN_NGRAM) * 2 + usize::from(self.in_run)
    }
}

/// Per-token acceptance of drafts, by [`MatchKind`], learnt from the drafts verified
/// (counts decay, so the estimate follows what the model is generating now).
#[derive(Debug, Clone)]
pub(crate) struct Acceptance {
    /// Per kind: accepted draft tokens, and drafts cut short (each one rejection).
    counts: [(f64, f64); (MAX_NGRAM - MIN_NGRAM + 1) * 2],
}

/// Weight of the older counts after each draft.
const DECAY: f64 = 0.995;

impl Default for Acceptance {
    fn default() -> Self {
        // A prior of 0.7 per token, worth a few drafts.
        Self {
            counts: [(3.5, 1.5); (MAX_NGRAM - MIN_NGRAM + 1) * 2],
        }
    }
}

impl Acceptance {
    /// The per-token acceptance for drafts of this kind.
    pub(crate) fn alpha(&self, kind: MatchKind) -> f64 {
        let (accepted, rejected) = self.counts[kind.slot()];
        accepted / (accepted + rejected)
    }

    /// Learns from a draft of `drafted` tokens of which the first `accepted` were right.
    pub(crate) fn record(&mut self, kind: MatchKind, drafted: usize, accepted: usize) {
        let counts = &mut self.counts[kind.slot()];
        counts.0 = counts.0 * DECAY + accepted as f64;
        counts.1 = counts.1 * DECAY + f64::from(u8::from(accepted < drafted));
    }
}

/// The cost of a forward pass by its tokens, `a + b·n`: a least-squares line through the
/// passes timed so far (decaying), with a prior of `a = 2b` until there is data.
#[derive(Debug, Clone, Default)]
pub(crate) struct PassCost {
    /// Decayed sums: weight, n, t, n², n·t.
    w: f64,
    n: f64,
    t: f64,
    nn: f64,
    nt: f64,
}

impl PassCost {
    /// Counts a pass of `tokens` tokens that took `seconds`.
    pub(crate) fn record(&mut self, tokens: usize, seconds: f64) {
        let decay = 0.99;
        let n = tokens as f64;
        self.w = self.w * decay + 1.0;
        self.n = self.n * decay + n;
        self.t = self.t * decay + seconds;
        self.nn = self.nn * decay + n * n;
        self.nt = self.nt * decay + n * seconds;
    }

    /// The fixed cost of a pass in units of one token's cost (`a / b`).
    pub(crate) fn fixed_per_token(&self) -> f64 {
        const PRIOR: f64 = 2.0;
        let var = self.nn / self.w.max(1e-9) - (self.n / self.w.max(1e-9)).powi(2);
        if self.w < 8.0 || var < 0.5 {
            return PRIOR;
        }
        let mean_n = self.n / self.w;
        let mean_t = self.t / self.w;
        let b = (self.nt / self.w - mean_n * mean_t) / var;
        let a = mean_t - b * mean_n;
        if b <= 0.0 || a < 0.0 { PRIOR } else { (a / b).min(64.0) }
    }
}

/// The draft length (0 to `max`) that makes a pass yield the most tokens per cost, for a
/// per-token acceptance `alpha`, a pass's fixed cost `fixed` (in token costs) and
/// `sequences` decoding together (which share that fixed cost).
pub(crate) fn best_length(alpha: f64, fixed: f64, sequences: usize, max: usize) -> usize {
    let share = fixed / sequences.max(1) as f64 + 1.0;
    let mut best = (0, 1.0 / share);
    // Expected tokens of a draft of k: 1 + α + … + α^k.
    let mut expected = 1.0;
    let mut power = 1.0;
    for k in 1..=max {
        power *= alpha;
        expected += power;
        let rate = expected / (share + k as f64);
        if rate > best.1 {
            best = (k, rate);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_recent_longest_match_drafts_what_followed_it() {
        // "1 2 3 9 | 1 2 3 7 8 | 5 1 2 3": the tail 1 2 3 last occurred before 7 8 (the
        // last 3 is the token evaluated now, not yet in the KV).
        let kv = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2];
        assert_eq!(lookup(&kv, 3, 2), Some((3, vec![7, 8])));
        assert_eq!(lookup(&kv, 3, 10), Some((3, vec![7, 8, 5, 1, 2, 3])));
        assert_eq!(lookup(&kv, 3, 0), None);
        // No earlier occurrence of any tail of two or more tokens: no draft.
        assert_eq!(lookup(&[1, 2, 3], 4, 4), None);
        assert_eq!(lookup(&[], 5, 4), None);
        // A repeated token drafts itself.
        assert_eq!(lookup(&[7, 7], 7, 4), Some((2, vec![7])));
        // The next token is part of the tail that is looked up: "4 5" occurred before 6.
        assert_eq!(lookup(&[4, 5, 6, 1, 4], 5, 3), Some((2, vec![6, 1, 4])));
    }

    #[test]
    fn a_draft_is_as_long_as_pays() {
        // A pass costs twice a token's cost plus one per token (a small model on a CPU).
        assert_eq!(best_length(0.3, 2.0, 1, 16), 0, "poor guesses do not pay");
        let sure = best_length(0.95, 2.0, 1, 16);
        let likely = best_length(0.8, 2.0, 1, 16);
        assert!(sure > likely && likely >= 1, "{sure} {likely}");
        // Among many sequences the fixed cost is shared: drafts pay less.
        assert!(best_length(0.8, 2.0, 16, 16) < likely);
        // A large model (a pass's fixed cost dwarfs a token's): long drafts pay.
        assert!(best_length(0.8, 60.0, 1, 16) >= 8);
        assert_eq!(best_length(0.99, 2.0, 1, 3), 3, "never more than allowed");
    }

    #[test]
    fn acceptance_and_pass_cost_are_learnt() {
        let mut acceptance = Acceptance::default();
        let run = MatchKind { ngram: 4, in_run: true };
        let fresh = MatchKind {
            ngram: 2,
            in_run: false,
        };
        for _ in 0..50 {
            acceptance.record(run, 8, 8);
            acceptance.record(fresh, 4, 0);
        }
        assert!(acceptance.alpha(run) > 0.95, "{}", acceptance.alpha(run));
        assert!(acceptance.alpha(fresh) < 0.1, "{}", acceptance.alpha(fresh));

        let mut cost = PassCost::default();
        assert_eq!(cost.fixed_per_token(), 2.0, "the prior");
        for i in 0..40 {
            let n = 1 + i % 8;
            cost.record(n, 0.005 + 0.0025 * n as f64);
        }
        assert!(
            (cost.fixed_per_token() - 2.0).abs() < 0.01,
            "{}",
            cost.fixed_per_token()
        );
    }
}
