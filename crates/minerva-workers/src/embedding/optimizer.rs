//! The batch-size optimizer (seed 003's DynamicBatchOptimizer): it measures the
//! throughput (real, unpadded tokens per second) of full batches at each token budget and
//! hill-climbs between neighbouring budgets, within the bounds the memory strategy sets.
//!
//! Only batches that the budget cut short teach it anything: when the queue holds less
//! than the budget, the batch size is the queue's, not the optimizer's.

use std::time::Duration;

/// Full batches measured at a budget before the optimizer considers moving.
const SAMPLES_PER_STEP: u32 = 4;
/// Weight of a new measurement in the running throughput of its budget.
const SMOOTHING: f64 = 0.5;
/// A neighbour must be this much faster to win (noise on a shared machine).
const MIN_GAIN: f64 = 1.05;
/// Decisions to stay before the neighbours are measured again (the machine's load changes).
const STAYS_BEFORE_REEXPLORING: u32 = 8;

/// Hill-climbing over token budgets that are powers of two.
#[derive(Debug)]
pub struct BatchOptimizer {
    /// Candidate budgets, ascending.
    levels: Vec<usize>,
    /// Smoothed tokens/s measured at each level.
    throughput: Vec<Option<f64>>,
    current: usize,
    samples: u32,
    stays: u32,
}

impl BatchOptimizer {
    /// Budgets from `min_tokens` up to `max_tokens` (powers of two), starting at `start`.
    pub fn new(min_tokens: usize, max_tokens: usize, start: usize) -> Self {
        let mut levels = Vec::new();
        let mut level = min_tokens.max(1).next_power_of_two();
        while level <= max_tokens.max(min_tokens) {
            levels.push(level);
            level *= 2;
        }
        if levels.is_empty() {
            levels.push(min_tokens.max(1));
        }
        let current = levels.iter().rposition(|&l| l <= start).unwrap_or(0);
        Self {
            throughput: vec![None; levels.len()],
            levels,
            current,
            samples: 0,
            stays: 0,
        }
    }

    /// The token budget of the next batch, capped by the strategy's `cap`.
    pub fn budget(&self, cap: usize) -> usize {
        self.levels[self.current].min(cap)
    }

    /// Records a batch of `tokens` real tokens that took `elapsed`; `full` tells whether the
    /// budget (not the queue) limited it.
    pub fn record(&mut self, tokens: usize, elapsed: Duration, full: bool) {
        if !full || elapsed.is_zero() {
            return;
        }
        let rate = tokens as f64 / elapsed.as_secs_f64();
        let slot = &mut self.throughput[self.current];
        *slot = Some(slot.map_or(rate, |old| old * (1.0 - SMOOTHING) + rate * SMOOTHING));
        self.samples += 1;
        if self.samples >= SAMPLES_PER_STEP {
            self.samples = 0;
            self.step();
        }
    }

    fn step(&mut self) {
        let here = self.throughput[self.current].unwrap_or(0.0);
        let up = self.current + 1;
        let down = self.current.checked_sub(1);
        let better = |rate: Option<f64>| rate.is_some_and(|r| r > here * MIN_GAIN);
        if up < self.levels.len() && (self.throughput[up].is_none() || better(self.throughput[up])) {
            self.current = up;
        } else if let Some(down) = down
            && (self.throughput[down].is_none() || better(self.throughput[down]))
        {
            self.current = down;
        } else {
            self.stays += 1;
            if self.stays >= STAYS_BEFORE_REEXPLORING {
                self.stays = 0;
                for neighbour in down.into_iter().chain((up < self.levels.len()).then_some(up)) {
                    self.throughput[neighbour] = None;
                }
            }
        }
        tracing::debug!(budget = self.levels[self.current], "embedding batch budget");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the optimizer full batches whose speed peaks at `best` tokens.
    fn settle(optimizer: &mut BatchOptimizer, best: usize, rounds: usize) -> Vec<usize> {
        let mut visited = Vec::new();
        for _ in 0..rounds {
            let budget = optimizer.budget(usize::MAX);
            visited.push(budget);
            let distance = (budget as f64 / best as f64).log2().abs();
            let rate = 10_000.0 / (1.0 + distance);
            optimizer.record(budget, Duration::from_secs_f64(budget as f64 / rate), true);
        }
        visited
    }

    #[test]
    fn climbs_to_the_fastest_budget_and_stays_near_it() {
        let mut optimizer = BatchOptimizer::new(256, 16384, 512);
        let visited = settle(&mut optimizer, 4096, 400);
        let tail = &visited[visited.len() - 100..];
        let at_best = tail.iter().filter(|&&b| b == 4096).count();
        assert!(at_best >= 70, "{tail:?}");
        assert!(tail.iter().all(|&b| (2048..=8192).contains(&b)), "{tail:?}");
    }

    #[test]
    fn comes_back_down_when_small_batches_are_faster() {
        let mut optimizer = BatchOptimizer::new(256, 16384, 16384);
        let visited = settle(&mut optimizer, 512, 400);
        let tail = &visited[visited.len() - 100..];
        assert!(tail.iter().filter(|&&b| b == 512).count() >= 70, "{tail:?}");
    }

    #[test]
    fn batches_cut_by_the_queue_teach_nothing_and_the_cap_always_holds() {
        let mut optimizer = BatchOptimizer::new(256, 16384, 1024);
        for _ in 0..100 {
            optimizer.record(10, Duration::from_millis(1), false);
        }
        assert_eq!(optimizer.budget(usize::MAX), 1024);
        assert_eq!(optimizer.budget(300), 300);
    }
}
