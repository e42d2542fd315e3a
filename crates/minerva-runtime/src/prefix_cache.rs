//! The prefix cache's bookkeeping: which spare sequences of a session hold the KV state
//! of which token sequences, the longest cached prefix of a new prompt, and LRU eviction
//! within a cap of distinct cached tokens.
//!
//! It never touches the session: it hands back the sequence ids whose KV the scheduler
//! must free.

use minerva_engine::{SeqId, TokenId};

/// A sequence whose KV state is kept for reuse.
#[derive(Debug)]
struct CachedPrefix {
    seq: SeqId,
    /// The tokens whose KV the sequence holds, from position 0.
    tokens: Vec<TokenId>,
    /// The logits after the first `.0` tokens (the prompt of the request that left it).
    prompt_logits: Option<(usize, Vec<f32>)>,
    last_used: u64,
}

/// The cached prefix a new prompt starts from.
#[derive(Debug)]
pub(crate) struct PrefixMatch {
    /// The sequence holding it.
    pub(crate) seq: SeqId,
    /// Tokens shared with the prompt.
    pub(crate) len: usize,
    /// The logits after the whole prompt, when the entry has them: a repeated prompt then
    /// needs no forward pass at all, and its first token is exactly the earlier one's.
    pub(crate) logits: Option<Vec<f32>>,
}

/// Cached token prefixes, each held in its own sequence of the session.
#[derive(Debug)]
pub(crate) struct PrefixCache {
    entries: Vec<CachedPrefix>,
    /// Most distinct tokens (trie nodes over all entries) kept.
    max_tokens: usize,
    /// Most entries kept (spare sequence ids of the session).
    max_entries: usize,
    clock: u64,
}

impl PrefixCache {
    /// An empty cache of at most `max_entries` prefixes and `max_tokens` distinct tokens.
    pub(crate) fn new(max_tokens: usize, max_entries: usize) -> Self {
        Self {
            entries: Vec::new(),
            max_tokens,
            max_entries,
            clock: 0,
        }
    }

    /// The cached sequence sharing the longest prefix with `prompt`; the entry counts as
    /// used.
    pub(crate) fn longest_match(&mut self, prompt: &[TokenId]) -> Option<PrefixMatch> {
        self.clock += 1;
        let clock = self.clock;
        let best = self
            .entries
            .iter_mut()
            .map(|e| (common_prefix(&e.tokens, prompt), e))
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, _)| *n)?;
        let (len, entry) = best;
        entry.last_used = clock;
        let logits = entry
            .prompt_logits
            .as_ref()
            .filter(|(n, _)| *n == prompt.len() && len >= prompt.len())
            .map(|(_, logits)| logits.clone());
        Some(PrefixMatch {
            seq: entry.seq,
            len,
            logits,
        })
    }

    /// Keeps the KV of `tokens` held by `seq` (and the logits after its first tokens, when
    /// known). Returns the sequences whose KV must be freed: entries made redundant or
    /// evicted, or `seq` itself when it is not kept.
    pub(crate) fn insert(
        &mut self,
        seq: SeqId,
        tokens: Vec<TokenId>,
        prompt_logits: Option<(usize, Vec<f32>)>,
    ) -> Vec<SeqId> {
        let mut freed = Vec::new();
        if self.max_entries == 0 || tokens.is_empty() || tokens.len() > self.max_tokens {
            freed.push(seq);
            return freed;
        }
        // An entry that is a prefix of another adds nothing.
        if self.entries.iter().any(|e| e.tokens.starts_with(&tokens)) {
            freed.push(seq);
            return freed;
        }
        let (redundant, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| tokens.starts_with(&e.tokens));
        self.entries = kept;
        freed.extend(redundant.into_iter().map(|e| e.seq));
        self.clock += 1;
        self.entries.push(CachedPrefix {
            seq,
            tokens,
            prompt_logits,
            last_used: self.clock,
        });
        while self.entries.len() > self.max_entries || self.distinct_tokens() > self.max_tokens {
            match self.pop_lru() {
                Some(evicted) => freed.push(evicted),
                None => break,
            }
        }
        freed
    }

    /// Evicts the least recently used entry; returns its sequence.
    pub(crate) fn pop_lru(&mut self) -> Option<SeqId> {
        let oldest = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used)?;
        Some(self.entries.swap_remove(oldest).seq)
    }

    /// Whether it keeps anything at all.
    pub(crate) fn enabled(&self) -> bool {
        self.max_entries > 0
    }

    /// Number of cached prefixes.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Distinct tokens over all entries (the nodes of their trie): shared prefixes count
    /// once, as their KV cells are shared when one was copied from the other.
    pub(crate) fn distinct_tokens(&self) -> usize {
        let mut sorted: Vec<&[TokenId]> = self.entries.iter().map(|e| e.tokens.as_slice()).collect();
        sorted.sort_unstable();
        let mut total = 0;
        let mut previous: &[TokenId] = &[];
        for tokens in sorted {
            total += tokens.len() - common_prefix(previous, tokens);
            previous = tokens;
        }
        total
    }
}

/// Length of the longest common prefix of `a` and `b`.
pub(crate) fn common_prefix(a: &[TokenId], b: &[TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(cache: &mut PrefixCache, prompt: &[TokenId]) -> Option<(SeqId, usize)> {
        cache.longest_match(prompt).map(|m| (m.seq, m.len))
    }

    #[test]
    fn a_repeated_prompt_gets_its_logits_back_and_only_it() {
        let mut cache = PrefixCache::new(100, 4);
        cache.insert(SeqId(1), vec![1, 2, 3, 4], Some((2, vec![0.5, 1.5])));
        assert_eq!(cache.longest_match(&[1, 2]).unwrap().logits, Some(vec![0.5, 1.5]));
        assert_eq!(cache.longest_match(&[1, 2, 3]).unwrap().logits, None);
        assert_eq!(cache.longest_match(&[1]).unwrap().logits, None);
    }

    #[test]
    fn the_longest_shared_prefix_wins() {
        let mut cache = PrefixCache::new(100, 4);
        assert!(cache.insert(SeqId(1), vec![1, 2, 3], None).is_empty());
        assert!(cache.insert(SeqId(2), vec![1, 2, 9, 9], None).is_empty());
        assert_eq!(found(&mut cache, &[1, 2, 9, 5]), Some((SeqId(2), 3)));
        assert_eq!(found(&mut cache, &[1, 2, 3, 4]), Some((SeqId(1), 3)));
        assert_eq!(found(&mut cache, &[7]), None);
    }

    #[test]
    fn a_prefix_of_a_cached_entry_is_not_kept_and_an_extension_replaces_it() {
        let mut cache = PrefixCache::new(100, 4);
        cache.insert(SeqId(1), vec![1, 2, 3], None);
        assert_eq!(cache.insert(SeqId(2), vec![1, 2], None), vec![SeqId(2)]);
        assert_eq!(cache.insert(SeqId(3), vec![1, 2, 3, 4], None), vec![SeqId(1)]);
        assert_eq!(cache.len(), 1);
        assert_eq!(found(&mut cache, &[1, 2, 3, 4, 5]), Some((SeqId(3), 4)));
    }

    #[test]
    fn least_recently_used_entries_leave_first_when_over_the_token_cap() {
        let mut cache = PrefixCache::new(8, 4);
        cache.insert(SeqId(1), vec![1, 1, 1, 1], None);
        cache.insert(SeqId(2), vec![2, 2, 2, 2], None);
        cache.longest_match(&[1, 1]);
        // Sequence 2 is now the least recently used.
        assert_eq!(cache.insert(SeqId(3), vec![3, 3, 3], None), vec![SeqId(2)]);
        assert_eq!(cache.distinct_tokens(), 7);
    }

    #[test]
    fn shared_prefixes_count_once_against_the_cap() {
        let mut cache = PrefixCache::new(10, 8);
        let system = [5, 5, 5, 5, 5, 5];
        for question in 0..4 {
            let mut tokens = system.to_vec();
            tokens.push(question);
            assert!(cache.insert(SeqId(question as u32), tokens, None).is_empty());
        }
        assert_eq!(cache.distinct_tokens(), 10);
        assert_eq!(cache.len(), 4);
    }

    #[test]
    fn the_entry_cap_evicts_too() {
        let mut cache = PrefixCache::new(100, 1);
        cache.insert(SeqId(1), vec![1], None);
        assert_eq!(cache.insert(SeqId(2), vec![2], None), vec![SeqId(1)]);
        assert_eq!(cache.pop_lru(), Some(SeqId(2)));
        assert_eq!(cache.pop_lru(), None);
    }
}
