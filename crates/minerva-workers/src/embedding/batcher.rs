//! The queue of tokenized inputs waiting for a forward pass, and how a batch is cut
//! from it: by a token budget (rows × longest row, the padded size the forward pass
//! really computes), from inputs of similar length so that padding stays small, and
//! always including the oldest waiting input so that no request starves.

/// One input waiting for its vector.
#[derive(Debug)]
pub struct Pending {
    /// The request it belongs to.
    pub job: u64,
    /// Its position in that request.
    pub index: usize,
    /// Its token ids.
    pub ids: Vec<u32>,
    /// Arrival order.
    seq: u64,
}

/// Inputs waiting, in arrival order.
#[derive(Debug, Default)]
pub struct Batcher {
    pending: Vec<Pending>,
    next_seq: u64,
}

/// A batch cut from the queue.
#[derive(Debug)]
pub struct Batch {
    /// Its inputs, shortest first.
    pub items: Vec<Pending>,
    /// Whether the budget (not the queue) bounded it.
    pub full: bool,
}

impl Batch {
    /// Rows × longest row: what the forward pass computes.
    pub fn padded_tokens(&self) -> usize {
        self.items.len() * self.items.iter().map(|p| p.ids.len()).max().unwrap_or(0)
    }

    /// Tokens of the inputs themselves.
    pub fn tokens(&self) -> usize {
        self.items.iter().map(|p| p.ids.len()).sum()
    }
}

impl Batcher {
    /// Queues input `index` of request `job`.
    pub fn push(&mut self, job: u64, index: usize, ids: Vec<u32>) {
        self.pending.push(Pending {
            job,
            index,
            ids,
            seq: self.next_seq,
        });
        self.next_seq += 1;
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

    /// Cuts the next batch within `budget` padded tokens and `max_rows` rows, or `None`
    /// when nothing waits. The oldest input is always in it; neighbours in length join
    /// while the budget allows, the one that adds the least padding first. An input is
    /// left for a later batch rather than padded to more than twice its length (or than
    /// doubling everyone else's).
    pub fn next_batch(&mut self, budget: usize, max_rows: usize) -> Option<Batch> {
        if self.pending.is_empty() {
            return None;
        }
        self.pending.sort_by_key(|p| (p.ids.len(), p.seq));
        let oldest = (0..self.pending.len()).min_by_key(|&i| self.pending[i].seq)?;
        let len = |i: usize| self.pending[i].ids.len();
        let (mut lo, mut hi) = (oldest, oldest + 1);
        let mut full = false;
        while hi - lo < max_rows {
            let rows = hi - lo;
            let width = len(hi - 1);
            // Padding each candidate adds: a shorter input is padded to the width; a
            // longer one widens every row already in.
            let down_near = lo > 0 && 2 * len(lo - 1) >= width;
            let down_fits = (rows + 1) * width <= budget;
            let up_near = hi < self.pending.len() && len(hi) <= 2 * len(lo);
            let up_fits = up_near && (rows + 1) * len(hi) <= budget;
            let down = (down_near && down_fits).then(|| width - len(lo - 1));
            let up = up_fits.then(|| (len(hi) - width) * rows);
            match (down, up) {
                (Some(d), Some(u)) if d <= u => lo -= 1,
                (Some(_), None) => lo -= 1,
                (_, Some(_)) => hi += 1,
                (None, None) => {
                    full = (down_near && !down_fits) || (up_near && !up_fits);
                    break;
                }
            }
        }
        if hi - lo == max_rows && (lo > 0 || hi < self.pending.len()) {
            full = true;
        }
        let items: Vec<Pending> = self.pending.drain(lo..hi).collect();
        Some(Batch { items, full })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDE: usize = 1000;

    fn queue(lengths: &[usize]) -> Batcher {
        let mut batcher = Batcher::default();
        for (i, &n) in lengths.iter().enumerate() {
            batcher.push(i as u64, 0, vec![1; n]);
        }
        batcher
    }

    #[test]
    fn a_batch_stays_within_the_budget_and_the_row_limit() {
        let mut batcher = queue(&[10, 200, 12, 11, 150, 9, 13, 250]);
        let mut seen = 0;
        while let Some(batch) = batcher.next_batch(256, 3) {
            assert!(batch.padded_tokens() <= 256 || batch.items.len() == 1, "{batch:?}");
            assert!(batch.items.len() <= 3);
            seen += batch.items.len();
        }
        assert_eq!(seen, 8);
    }

    #[test]
    fn the_oldest_input_goes_first_with_inputs_of_similar_length() {
        let mut batcher = queue(&[100, 5, 6, 98, 7, 101, 99]);
        let batch = batcher.next_batch(400, WIDE).unwrap();
        let mut lengths: Vec<usize> = batch.items.iter().map(|p| p.ids.len()).collect();
        lengths.sort_unstable();
        assert!(
            batch.items.iter().any(|p| p.job == 0),
            "the oldest input is in the first batch"
        );
        assert_eq!(lengths, [98, 99, 100]);
        assert!(batch.full, "101 did not fit the budget");
        let rest = batcher.next_batch(400, WIDE).unwrap();
        let lengths: Vec<usize> = rest.items.iter().map(|p| p.ids.len()).collect();
        assert_eq!(lengths, [5, 6, 7]);
        assert!(!rest.full, "the queue, not the budget, bounded it");
        assert_eq!(batcher.next_batch(400, WIDE).unwrap().items.len(), 1);
        assert!(batcher.is_empty());
    }

    #[test]
    fn an_input_longer_than_the_budget_still_gets_a_batch_of_its_own() {
        let mut batcher = queue(&[300, 3]);
        let batch = batcher.next_batch(100, WIDE).unwrap();
        assert_eq!(batch.items.len(), 1);
        assert_eq!(batch.items[0].ids.len(), 300);
    }

    #[test]
    fn short_inputs_wait_rather_than_be_padded_to_a_long_batch() {
        let mut batcher = queue(&[200, 10, 11, 12]);
        let first = batcher.next_batch(4096, WIDE).unwrap();
        assert_eq!(first.items.len(), 1, "{first:?}");
        assert_eq!(first.padded_tokens(), 200);
        let second = batcher.next_batch(4096, WIDE).unwrap();
        assert_eq!(second.items.len(), 3);
    }

    #[test]
    fn cancelled_requests_leave_the_queue() {
        let mut batcher = queue(&[3, 4, 5]);
        batcher.cancel(|job| job == 1);
        assert_eq!(batcher.len(), 2);
    }
}
