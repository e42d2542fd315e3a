//! The queue of tokenized inputs waiting for a forward pass, and how a batch is cut
//! from it: in arrival order (so no request starves), by a budget of tokens (the forward
//! pass is padding-free, so the tokens of the inputs are what it computes).

/// One input waiting for its vector.
#[derive(Debug)]
pub struct Pending {
    /// The request it belongs to.
    pub job: u64,
    /// Its position in that request.
    pub index: usize,
    /// Its token ids.
    pub ids: Vec<u32>,
}

/// Inputs waiting, in arrival order.
#[derive(Debug, Default)]
pub struct Batcher {
    pending: Vec<Pending>,
}

/// A batch cut from the queue.
#[derive(Debug)]
pub struct Batch {
    /// Its inputs, oldest first.
    pub items: Vec<Pending>,
    /// Whether the budget (not the queue) bounded it.
    pub full: bool,
}

impl Batch {
    /// Tokens of the inputs themselves.
    pub fn tokens(&self) -> usize {
        self.items.iter().map(|p| p.ids.len()).sum()
    }
}

impl Batcher {
    /// Queues input `index` of request `job`.
    pub fn push(&mut self, job: u64, index: usize, ids: Vec<u32>) {
        self.pending.push(Pending { job, index, ids });
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Inputs waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Drops every input of the requests for which `gone` is true (clients that left).
    pub fn cancel(&mut self, mut gone: impl FnMut(u64) -> bool) {
        self.pending.retain(|p| !gone(p.job));
    }

    /// Cuts the next batch: waiting inputs in arrival order while their tokens stay
    /// within `budget` and their count within `max_rows`, or `None` when nothing waits.
    /// The oldest input always goes, alone if it exceeds the budget by itself. Lengths do
    /// not matter: the forward pass is padding-free, so short and long inputs batch
    /// together at no cost.
    pub fn next_batch(&mut self, budget: usize, max_rows: usize) -> Option<Batch> {
        if self.pending.is_empty() {
            return None;
        }
        let mut tokens = 0;
        let mut rows = 0;
        while rows < self.pending.len() && rows < max_rows.max(1) {
            let len = self.pending[rows].ids.len();
            if rows > 0 && tokens + len > budget {
                break;
            }
            tokens += len;
            rows += 1;
        }
        let full = rows < self.pending.len();
        let items: Vec<Pending> = self.pending.drain(..rows).collect();
        Some(Batch { items, full })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(lengths: &[usize]) -> Batcher {
        let mut batcher = Batcher::default();
        for (i, &n) in lengths.iter().enumerate() {
            batcher.push(i as u64, 0, vec![1; n]);
        }
        batcher
    }

    fn lengths(batch: &Batch) -> Vec<usize> {
        batch.items.iter().map(|p| p.ids.len()).collect()
    }

    #[test]
    fn batches_take_inputs_in_arrival_order_within_the_budget_and_the_row_limit() {
        let mut batcher = queue(&[10, 200, 12, 11, 150, 9, 13, 250]);
        let first = batcher.next_batch(256, 3).unwrap();
        assert_eq!(
            lengths(&first),
            [10, 200, 12],
            "mixed lengths batch together, oldest first"
        );
        assert!(first.full);
        let second = batcher.next_batch(256, 3).unwrap();
        assert_eq!(lengths(&second), [11, 150, 9]);
        let third = batcher.next_batch(256, 3).unwrap();
        assert_eq!(lengths(&third), [13], "250 more would pass the budget");
        assert!(third.full, "the budget, not the queue, bounded it");
        let last = batcher.next_batch(256, 3).unwrap();
        assert_eq!(lengths(&last), [250]);
        assert!(!last.full, "the queue, not the budget, bounded it");
        assert!(batcher.next_batch(256, 3).is_none());
    }

    #[test]
    fn an_input_longer_than_the_budget_still_gets_a_batch_of_its_own() {
        let mut batcher = queue(&[300, 3]);
        let batch = batcher.next_batch(100, 1000).unwrap();
        assert_eq!(lengths(&batch), [300]);
        assert_eq!(batch.tokens(), 300);
    }

    #[test]
    fn cancelled_requests_leave_the_queue() {
        let mut batcher = queue(&[3, 4, 5]);
        batcher.cancel(|job| job == 1);
        assert_eq!(batcher.len(), 2);
    }
}
