//! The prefix cache's bookkeeping: which token sequences have their KV state kept (as
//! snapshots outside the session, so that they cost the forward passes nothing), the
//! longest cached prefix of a new prompt, and LRU eviction within a cap of cached tokens.
//!
//! It is generic over what holds an entry's KV state, and never touches the session.
//! Entries live in spaces: KV computed with a LoRA adapter applied belongs to that
//! adapter and scale, so a prompt matches only entries of its own space.

use minerva_engine::TokenId;

/// Which weights computed an entry's KV: `(0, 0)` the base model's alone, else an
/// adapter's id and the bits of its scale.
pub(crate) type Space = (u64, u32);

/// A token sequence whose KV state is kept for reuse.
#[derive(Debug)]
struct CachedPrefix<S> {
    space: Space,
    state: S,
    /// The tokens whose KV the state holds, from position 0.
    tokens: Vec<TokenId>,
    /// The logits after the first `.0` tokens (the prompt of the request that left it).
    prompt_logits: Option<(usize, Vec<f32>)>,
    last_used: u64,
}

/// The cached prefix a new prompt starts from.
#[derive(Debug)]
pub(crate) struct PrefixMatch<'a, S> {
    /// The KV state holding it.
    pub(crate) state: &'a S,
    /// Tokens shared with the prompt.
    pub(crate) len: usize,
    /// The logits after the whole prompt, when the entry has them: a repeated prompt then
    /// needs no forward pass at all, and its first token is exactly the earlier one's.
    pub(crate) logits: Option<Vec<f32>>,
}

/// Cached token prefixes and their KV states.
#[derive(Debug)]
pub(crate) struct PrefixCache<S> {
    entries: Vec<CachedPrefix<S>>,
    /// Most tokens kept over all entries.
    max_tokens: usize,
    clock: u64,
}

impl<S> PrefixCache<S> {
    /// An empty cache of at most `max_tokens` tokens (0 keeps nothing).
    pub(crate) fn new(max_tokens: usize) -> Self {
        Self {
            entries: Vec::new(),
            max_tokens,
            clock: 0,
        }
    }

    /// The cached entry of `space` sharing the longest prefix with `prompt`; the entry
    /// counts as used.
    pub(crate) fn longest_match(&mut self, space: Space, prompt: &[TokenId]) -> Option<PrefixMatch<'_, S>> {
        self.clock += 1;
        let clock = self.clock;
        let (len, entry) = self
            .entries
            .iter_mut()
            .filter(|e| e.space == space)
            .map(|e| (common_prefix(&e.tokens, prompt), e))
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, _)| *n)?;
        entry.last_used = clock;
        let logits = entry
            .prompt_logits
            .as_ref()
            .filter(|(n, _)| *n == prompt.len() && len >= prompt.len())
            .map(|(_, logits)| logits.clone());
        Some(PrefixMatch {
            state: &entry.state,
            len,
            logits,
        })
    }

    /// Whether an entry for `tokens` in `space` would be kept: the cache is on, the entry
    /// fits, and no entry of the space already holds `tokens` as its prefix.
    pub(crate) fn wants(&self, space: Space, tokens: &[TokenId]) -> bool {
        !tokens.is_empty()
            && tokens.len() <= self.max_tokens
            && !self
                .entries
                .iter()
                .any(|e| e.space == space && e.tokens.starts_with(tokens))
    }

    /// Keeps `state`, the KV of `tokens` (and the logits after its first tokens, when
    /// known), if [`Self::wants`] it. Entries it makes redundant (its prefixes) leave, and
    /// the least recently used ones while the cache holds too many tokens.
    pub(crate) fn insert(
        &mut self,
        space: Space,
        state: S,
        tokens: Vec<TokenId>,
        prompt_logits: Option<(usize, Vec<f32>)>,
    ) {
        if !self.wants(space, &tokens) {
            return;
        }
        self.entries
            .retain(|e| e.space != space || !tokens.starts_with(&e.tokens));
        self.clock += 1;
        self.entries.push(CachedPrefix {
            space,
            state,
            tokens,
            prompt_logits,
            last_used: self.clock,
        });
        while self.cached_tokens() > self.max_tokens {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used) else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
    }

    /// Whether it keeps anything at all.
    pub(crate) fn enabled(&self) -> bool {
        self.max_tokens > 0
    }

    /// Tokens over all entries (each entry holds its own copy of its KV).
    pub(crate) fn cached_tokens(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }
}

/// Length of the longest common prefix of `a` and `b`.
pub(crate) fn common_prefix(a: &[TokenId], b: &[TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Runs the operations `data` encodes on a cache and checks its invariants after each:
/// the token cap holds, no entry is a prefix of another, a lookup finds an entry sharing
/// the longest prefix any entry shares with the prompt, and logits come back only for the
/// exact prompt that left them, and only from the prompt's own space. Tokens come from a
/// 4-symbol alphabet so that prompts share prefixes often; the top bit of an operation's
/// first byte picks one of two spaces. (The entry point of the `prefix_cache` fuzz target.)
pub fn fuzz_operations(data: &[u8]) {
    let Some((&cap, ops)) = data.split_first() else { return };
    let mut cache = PrefixCache::<usize>::new(usize::from(cap));
    let mut next_state = 0usize;
    for op in ops.chunks(9) {
        let (&kind, rest) = op.split_first().expect("chunks are not empty");
        let space: Space = (u64::from(kind >> 7), 0);
        let tokens: Vec<TokenId> = rest
            .iter()
            .take(usize::from(kind >> 2) % 9)
            .map(|b| TokenId::from(b & 3))
            .collect();
        if kind & 1 == 0 {
            let logits = (kind & 2 != 0).then(|| (tokens.len(), vec![tokens.len() as f32]));
            cache.insert(space, next_state, tokens, logits);
            next_state += 1;
        } else {
            let best = cache
                .entries
                .iter()
                .filter(|e| e.space == space)
                .map(|e| common_prefix(&e.tokens, &tokens))
                .max()
                .unwrap_or(0);
            let states: Vec<(usize, Vec<TokenId>, Option<usize>)> = cache
                .entries
                .iter()
                .filter(|e| e.space == space)
                .map(|e| (e.state, e.tokens.clone(), e.prompt_logits.as_ref().map(|(n, _)| *n)))
                .collect();
            match cache.longest_match(space, &tokens) {
                None => assert_eq!(best, 0, "no match although an entry shares {best} tokens"),
                Some(found) => {
                    assert_eq!(found.len, best, "the match is not the longest");
                    let (_, entry, logits_at) = states
                        .iter()
                        .find(|(s, _, _)| s == found.state)
                        .expect("a cached state");
                    assert_eq!(common_prefix(entry, &tokens), found.len);
                    if found.logits.is_some() {
                        assert_eq!(*logits_at, Some(tokens.len()));
                        assert!(found.len >= tokens.len());
                    }
                }
            }
        }
        assert!(cache.cached_tokens() <= cache.max_tokens, "over the token cap");
        for (i, a) in cache.entries.iter().enumerate() {
            for (j, b) in cache.entries.iter().enumerate() {
                assert!(
                    i == j || a.space != b.space || !b.tokens.starts_with(&a.tokens),
                    "an entry is a prefix of another in its space"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Space = (0, 0);

    fn found(cache: &mut PrefixCache<u32>, prompt: &[TokenId]) -> Option<(u32, usize)> {
        cache.longest_match(BASE, prompt).map(|m| (*m.state, m.len))
    }

    fn states(cache: &PrefixCache<u32>) -> Vec<u32> {
        let mut states: Vec<u32> = cache.entries.iter().map(|e| e.state).collect();
        states.sort_unstable();
        states
    }

    #[test]
    fn a_repeated_prompt_gets_its_logits_back_and_only_it() {
        let mut cache = PrefixCache::new(100);
        cache.insert(BASE, 1, vec![1, 2, 3, 4], Some((2, vec![0.5, 1.5])));
        assert_eq!(cache.longest_match(BASE, &[1, 2]).unwrap().logits, Some(vec![0.5, 1.5]));
        assert_eq!(cache.longest_match(BASE, &[1, 2, 3]).unwrap().logits, None);
        assert_eq!(cache.longest_match(BASE, &[1]).unwrap().logits, None);
    }

    #[test]
    fn the_longest_shared_prefix_wins() {
        let mut cache = PrefixCache::new(100);
        cache.insert(BASE, 1, vec![1, 2, 3], None);
        cache.insert(BASE, 2, vec![1, 2, 9, 9], None);
        assert_eq!(found(&mut cache, &[1, 2, 9, 5]), Some((2, 3)));
        assert_eq!(found(&mut cache, &[1, 2, 3, 4]), Some((1, 3)));
        assert_eq!(found(&mut cache, &[7]), None);
    }

    #[test]
    fn a_prefix_of_a_cached_entry_is_not_kept_and_an_extension_replaces_it() {
        let mut cache = PrefixCache::new(100);
        cache.insert(BASE, 1, vec![1, 2, 3], None);
        assert!(!cache.wants(BASE, &[1, 2]));
        cache.insert(BASE, 2, vec![1, 2], None);
        assert_eq!(states(&cache), vec![1]);
        cache.insert(BASE, 3, vec![1, 2, 3, 4], None);
        assert_eq!(states(&cache), vec![3]);
        assert_eq!(found(&mut cache, &[1, 2, 3, 4, 5]), Some((3, 4)));
    }

    #[test]
    fn least_recently_used_entries_leave_first_when_over_the_token_cap() {
        let mut cache = PrefixCache::new(8);
        cache.insert(BASE, 1, vec![1, 1, 1, 1], None);
        cache.insert(BASE, 2, vec![2, 2, 2, 2], None);
        cache.longest_match(BASE, &[1, 1]);
        // Entry 2 is now the least recently used.
        cache.insert(BASE, 3, vec![3, 3, 3], None);
        assert_eq!(states(&cache), vec![1, 3]);
        assert_eq!(cache.cached_tokens(), 7);
    }

    #[test]
    fn an_entry_larger_than_the_cap_or_an_empty_cache_keeps_nothing() {
        let mut cache = PrefixCache::new(3);
        cache.insert(BASE, 1, vec![1, 2, 3, 4], None);
        assert_eq!(cache.cached_tokens(), 0);
        let mut off = PrefixCache::new(0);
        assert!(!off.enabled());
        off.insert(BASE, 1, vec![1], None);
        assert_eq!(found(&mut off, &[1]), None);
    }

    #[test]
    fn an_entry_serves_only_prompts_of_its_own_space() {
        let adapter: Space = (7, 1.0f32.to_bits());
        let mut cache = PrefixCache::new(100);
        cache.insert(BASE, 1, vec![1, 2, 3], Some((3, vec![0.5])));
        assert!(cache.longest_match(adapter, &[1, 2, 3]).is_none());
        // The same tokens under the adapter are an entry of their own, beside the base's.
        assert!(cache.wants(adapter, &[1, 2]));
        cache.insert(adapter, 2, vec![1, 2], None);
        assert_eq!(states(&cache), vec![1, 2]);
        assert_eq!(
            cache.longest_match(adapter, &[1, 2, 3]).map(|m| (*m.state, m.len)),
            Some((2, 2))
        );
        assert_eq!(found(&mut cache, &[1, 2, 3]), Some((1, 3)));
        // Another scale of the same adapter is another space.
        assert!(cache.longest_match((7, 0.5f32.to_bits()), &[1, 2]).is_none());
    }
}
