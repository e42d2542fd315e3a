//! Continuous batching for one language model: the scheduler owns the llama.cpp session
//! and steps every running generation together.
//!
//! Each step is at most two forward passes: the next token of every decoding sequence
//! plus short prompts, then the prompts still to read, several to a pass up to the
//! session's batch (so a long prompt goes in chunks and never stalls running streams, and
//! a burst of new prompts is read in few passes). Requests join between steps (FIFO, while a
//! sequence slot and KV cells are free); a finished or abandoned one leaves at once.
//!
//! Prefix reuse: a new prompt starts from the longest prefix whose KV is already there,
//! in the prefix cache (snapshots of finished sequences, restored with
//! [`Session::restore_sequence`]) or in a running sequence (shared with
//! [`Session::copy_sequence`]). When several queued prompts share a prefix that a running
//! sequence is still prefilling, they wait for it instead of computing it again.
//!
//! LoRA adapters: a request may carry an adapter and scale. llama.cpp applies adapters
//! per context, so each step runs one small pass per adapter setting among the decoding
//! sequences (requests with the same setting batch together), and KV computed under an
//! adapter is shared or cached only within that setting.
//!
//! The cache keeps its KV outside the session on purpose: llama.cpp's attention walks
//! every cell up to the highest one in use, masked or not, so cached prefixes left in the
//! session's cells would slow every forward pass of every running sequence.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use minerva_engine::generate::{ContextShift, FinishReason, GenerateOptions, SequenceGenerator, Step, TokenSink};
use minerva_engine::llm::{AdapterSet, LogitsWanted, SequenceInput, SequenceSnapshot};
use minerva_engine::sampling::{SampledToken, log_probabilities};
use minerva_engine::{EngineError, LanguageModel, SeqId, Session, TokenId, compute};
use tokio::sync::mpsc as async_mpsc;

use crate::draft::{Acceptance, MatchKind, PassCost, best_length, lookup};
use crate::draft_model::{DraftModel, Want};
use crate::llm_worker::GenerationEvent;
use crate::prefix_cache::{PrefixCache, Space, common_prefix};

/// Forward passes of this many tokens or more take other kernels in llama.cpp (tiled
/// flash attention, tiled matrix products) that round differently: decode tokens never
/// share such a pass, so that a stream's tokens, once its prompt is in, do not depend on
/// which prompts arrive beside it. Prompts do share it: a prompt read beside others rounds
/// its KV in the last bits as a larger pass does, which the batching tests bound by their
/// near-tie rule.
const LARGE_PASS: usize = 64;

/// Failures of the draft model after which the scheduler drops it.
const MAX_DRAFT_FAILURES: u32 = 3;

/// A shared prefix shorter than this is recomputed rather than waited for.
const MIN_SHARED_PREFIX: usize = 32;

/// A generation request as the worker's handle sends it.
pub(crate) struct Job {
    pub(crate) prompt: Vec<TokenId>,
    pub(crate) options: GenerateOptions,
    pub(crate) events: async_mpsc::UnboundedSender<GenerationEvent>,
    /// Score instead of generate: the log-probability of every prompt token from this
    /// index on, given the ones before it, comes back as the result's `logprobs`.
    pub(crate) score_from: Option<usize>,
    /// The LoRA adapters and scales its passes apply (empty: the base alone).
    pub(crate) adapter: AdapterSet,
}

/// How the scheduler shares its session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchedulerLimits {
    /// Sequences generating at once.
    pub(crate) parallel: usize,
    /// Context of one request (prompt plus generated tokens).
    pub(crate) n_ctx: u32,
    /// KV cells of the session, shared by all sequences.
    pub(crate) kv_cells: usize,
    /// Longest speculative draft per sequence and step (0: no drafting).
    pub(crate) draft_max: usize,
}

/// Where a running sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for request `leader` to compute the first `upto` tokens of its prompt,
    /// which this one shares.
    Waiting { leader: u64, upto: usize },
    /// Evaluating its prompt.
    Prefill,
    /// This token is to be evaluated next.
    Decode(TokenId),
}

/// A request holding a sequence of the session.
struct Running {
    /// Arrival number: identifies the request even after its sequence id is reused.
    serial: u64,
    seq: SeqId,
    prompt: Vec<TokenId>,
    /// The tokens whose KV the sequence holds, from position 0.
    kv: Vec<TokenId>,
    phase: Phase,
    generator: SequenceGenerator,
    events: async_mpsc::UnboundedSender<GenerationEvent>,
    /// Logits after the whole prompt, known without a forward pass (a repeated prompt).
    ready: Option<Vec<f32>>,
    /// The logits after the prompt, kept for the prefix cache.
    prompt_logits: Option<Vec<f32>>,
    /// After a context shift: how many tokens at the start of `kv` are still the KV of
    /// `kv` computed from position 0 (the rest attended to tokens since dropped, so no
    /// other prompt may reuse it).
    shifted: Option<usize>,
    /// The request's context shift, when it asked for one.
    context_shift: Option<ContextShift>,
    /// The request's context (the session's, or less).
    n_ctx: usize,
    /// It may carry speculative drafts: greedy requests only. A sampled one would get
    /// the same distribution, but its logits would round by the draft lengths chosen
    /// (which follow the scheduler's timing), and a seed must repeat its output.
    drafts: bool,
    /// Its last speculative draft was accepted whole (it is copying a run).
    in_run: bool,
    /// A scoring request: the prompt index its scores start at, and the scores so far.
    score_from: Option<usize>,
    scores: Vec<SampledToken>,
    /// Its adapter setting, and the cache space that setting's KV belongs to.
    adapter: AdapterSet,
    space: Space,
}

impl Running {
    /// Most draft tokens this decoding sequence may carry in a pass with `room` left: a
    /// draft of k tokens yields up to k + 1, all inside its context and its token limit.
    fn draft_limit(&self, draft_max: usize, room: usize) -> usize {
        room.min(if self.drafts { draft_max } else { 0 })
            .min(self.generator.remaining().saturating_sub(1))
            .min(self.n_ctx.saturating_sub(self.kv.len() + 1))
    }

    /// The tokens this sequence's KV will hold once its prompt is in, and how many of
    /// them are there now.
    fn known_tokens(&self) -> (&[TokenId], usize) {
        if let Some(kept) = self.shifted {
            return (&self.kv[..kept], kept);
        }
        match self.phase {
            Phase::Decode(_) => (&self.kv, self.kv.len()),
            Phase::Prefill | Phase::Waiting { .. } => (&self.prompt, self.kv.len()),
        }
    }
}

/// One sequence's part of a step's batch.
struct Member {
    index: usize,
    /// Range of the tokens evaluated, within the sequence.
    from: usize,
    to: usize,
    logits: bool,
    /// For a decoding sequence: the tokens guessed to follow its next one, verified in
    /// the same pass.
    draft: Vec<TokenId>,
    /// The kind of match the draft came from.
    kind: Option<MatchKind>,
}

struct ChannelSink<'a>(&'a async_mpsc::UnboundedSender<GenerationEvent>);

impl TokenSink for ChannelSink<'_> {
    fn text(&mut self, text: &str) {
        // The receiver may be gone; the next step notices and ends the sequence.
        let _ = self.0.send(GenerationEvent::Text(text.to_owned()));
    }

    fn cancelled(&self) -> bool {
        self.0.is_closed()
    }
}

/// What a scheduler has done, counted as it works (read by `/metrics`).
#[derive(Debug, Default)]
pub struct SchedulerCounters {
    /// Prompt tokens run through the model (not those whose KV was reused).
    pub prompt_tokens_evaluated: AtomicU64,
    /// Forward passes that read prompt tokens (several prompts may share one).
    pub prompt_passes: AtomicU64,
    /// Context shifts done.
    pub context_shifts: AtomicU64,
    /// Speculative draft tokens evaluated.
    pub draft_tokens: AtomicU64,
    /// Draft tokens the model chose itself (each saved a pass of its own).
    pub draft_accepted: AtomicU64,
    /// Prompt tokens whose KV came from the prefix cache.
    pub prompt_tokens_cached: AtomicU64,
    /// Requests generating now (a slot each).
    pub running: AtomicU64,
    /// Requests queued for a slot or for KV cells.
    pub waiting: AtomicU64,
    /// KV cells the running requests hold, and how many the session has.
    pub kv_cells_used: AtomicU64,
    pub kv_cells: AtomicU64,
}

/// A copy of [`SchedulerCounters`].
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SchedulerStats {
    pub prompt_tokens_evaluated: u64,
    pub prompt_passes: u64,
    pub context_shifts: u64,
    pub draft_tokens: u64,
    pub draft_accepted: u64,
    pub prompt_tokens_cached: u64,
    pub running: u64,
    pub waiting: u64,
    pub kv_cells_used: u64,
    pub kv_cells: u64,
}

impl SchedulerStats {
    /// The share of the KV cache the running requests hold (0 to 1).
    pub fn kv_usage(&self) -> f64 {
        if self.kv_cells == 0 {
            0.0
        } else {
            (self.kv_cells_used as f64 / self.kv_cells as f64).min(1.0)
        }
    }
}

impl SchedulerCounters {
    pub(crate) fn snapshot(&self) -> SchedulerStats {
        SchedulerStats {
            prompt_tokens_evaluated: self.prompt_tokens_evaluated.load(Ordering::Relaxed),
            prompt_passes: self.prompt_passes.load(Ordering::Relaxed),
            context_shifts: self.context_shifts.load(Ordering::Relaxed),
            draft_tokens: self.draft_tokens.load(Ordering::Relaxed),
            draft_accepted: self.draft_accepted.load(Ordering::Relaxed),
            prompt_tokens_cached: self.prompt_tokens_cached.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            kv_cells_used: self.kv_cells_used.load(Ordering::Relaxed),
            kv_cells: self.kv_cells.load(Ordering::Relaxed),
        }
    }
}

/// The batching loop of one model.
pub(crate) struct Scheduler {
    model: Arc<dyn LanguageModel>,
    session: Box<dyn Session>,
    limits: SchedulerLimits,
    inbox: mpsc::Receiver<Job>,
    queue: VecDeque<(u64, Job)>,
    running: Vec<Running>,
    free_seqs: Vec<SeqId>,
    cache: PrefixCache<SequenceSnapshot>,
    next_serial: u64,
    stats: Arc<SchedulerCounters>,
    /// The model's name in metrics.
    name: String,
    /// How often drafts of each kind are right, and what a pass costs by its tokens.
    acceptance: Acceptance,
    pass_cost: PassCost,
    /// Counts drafts declined, so that a kind of match that stopped paying is tried again
    /// now and then (its acceptance may have changed).
    declined: u64,
    /// The draft model that guesses for greedy sequences, when the model has one.
    drafter: Option<DraftModel>,
    /// How often the draft model failed (at [`MAX_DRAFT_FAILURES`] it is dropped).
    draft_failures: u32,
}

impl Scheduler {
    /// A scheduler over `session` with a prefix cache of `prefix_cache_tokens` tokens at
    /// most.
    pub(crate) fn new(
        model: Arc<dyn LanguageModel>,
        session: Box<dyn Session>,
        limits: SchedulerLimits,
        prefix_cache_tokens: usize,
        inbox: mpsc::Receiver<Job>,
        stats: Arc<SchedulerCounters>,
        name: String,
        drafter: Option<DraftModel>,
    ) -> Self {
        let n_seq = session.params().n_seq_max as usize;
        Self {
            model,
            session,
            limits,
            inbox,
            queue: VecDeque::new(),
            running: Vec::new(),
            free_seqs: (0..n_seq as u32).rev().map(SeqId).collect(),
            cache: PrefixCache::new(prefix_cache_tokens),
            next_serial: 0,
            stats,
            name,
            acceptance: Acceptance::default(),
            pass_cost: PassCost::default(),
            declined: 0,
            drafter,
            draft_failures: 0,
        }
    }

    /// Runs until every handle is gone and no request is left.
    pub(crate) fn run(mut self) {
        loop {
            if self.running.is_empty() && self.queue.is_empty() {
                self.publish_load();
                // Nothing to do: sleep until a request arrives or the handles are gone.
                match self.inbox.recv() {
                    Ok(job) => self.enqueue(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = self.inbox.try_recv() {
                self.enqueue(job);
            }
            self.drop_abandoned();
            self.admit();
            self.resolve_waiting();
            self.accept_ready();
            self.publish_load();
            self.step();
        }
    }

    /// Publishes how busy the model is (running, waiting, KV usage) for `/metrics`.
    fn publish_load(&self) {
        let stats = &self.stats;
        stats.running.store(self.running.len() as u64, Ordering::Relaxed);
        stats.waiting.store(self.queue.len() as u64, Ordering::Relaxed);
        stats.kv_cells_used.store(self.cells_in_use() as u64, Ordering::Relaxed);
        stats.kv_cells.store(self.limits.kv_cells as u64, Ordering::Relaxed);
    }

    fn enqueue(&mut self, job: Job) {
        self.next_serial += 1;
        self.queue.push_back((self.next_serial, job));
    }

    /// Ends the requests whose client went away, queued or running.
    fn drop_abandoned(&mut self) {
        self.queue.retain(|(_, job)| !job.events.is_closed());
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].events.is_closed() {
                self.finish(i, FinishReason::Cancelled);
            } else {
                i += 1;
            }
        }
    }

    /// KV cells the running sequences hold or will hold for their prompts.
    fn cells_in_use(&self) -> usize {
        self.running.iter().map(|r| r.prompt.len().max(r.kv.len()) + 1).sum()
    }

    /// Starts queued requests in arrival order while a slot and KV cells are free.
    fn admit(&mut self) {
        while self.running.len() < self.limits.parallel {
            let Some((_, job)) = self.queue.front() else { return };
            if !self.running.is_empty() && self.cells_in_use() + job.prompt.len() + 1 > self.limits.kv_cells {
                return;
            }
            let Some((serial, job)) = self.queue.pop_front() else {
                return;
            };
            let generator =
                match SequenceGenerator::new(self.model.as_ref(), &job.prompt, &job.options, self.limits.n_ctx) {
                    Ok(generator) => generator,
                    Err(e) => {
                        let _ = job.events.send(GenerationEvent::Done(Err(e)));
                        continue;
                    }
                };
            let Some(seq) = self.free_seqs.pop() else {
                // Cannot happen: the session has a sequence id per slot.
                self.queue.push_front((serial, job));
                return;
            };
            self.running.push(Running {
                serial,
                seq,
                prompt: job.prompt,
                kv: Vec::new(),
                phase: Phase::Prefill,
                generator,
                events: job.events,
                ready: None,
                prompt_logits: None,
                shifted: None,
                context_shift: job.options.context_shift,
                n_ctx: job.options.context(self.limits.n_ctx) as usize,
                drafts: job.options.sampling.is_greedy() && job.score_from.is_none(),
                in_run: false,
                score_from: job.score_from,
                scores: Vec::new(),
                space: job.adapter.key(),
                adapter: job.adapter,
            });
            self.plan_prefix(self.running.len() - 1);
        }
    }

    /// Decides where the prompt of a sequence without KV starts: from a cached prefix,
    /// from a running sequence's KV, or after waiting for a running sequence to compute a
    /// prefix they share.
    fn plan_prefix(&mut self, index: usize) {
        let prompt_len = self.running[index].prompt.len();
        // The last prompt token is always evaluated: its logits give the first token. A
        // scoring request evaluates every token whose logits score the next one.
        let scoring = self.running[index].score_from;
        let usable = (prompt_len - 1).min(scoring.map_or(usize::MAX, |f| f.saturating_sub(1)));
        let space = self.running[index].space;
        let mut found = self.cache.longest_match(space, &self.running[index].prompt);
        let cached = found.as_ref().map_or(0, |m| m.len.min(usable));
        if let Some(m) = found.as_mut()
            && scoring.is_none()
            && let Some(logits) = m.logits.take()
            && restore_prefix(self.session.as_mut(), &mut self.running[index], m.state, prompt_len)
        {
            self.running[index].ready = Some(logits);
            return;
        }
        let prompt = &self.running[index].prompt;
        let mut shared: Option<(usize, usize, usize)> = None; // (index, shared, available now)
        for (i, other) in self.running.iter().enumerate() {
            if i == index || other.space != space || matches!(other.phase, Phase::Waiting { .. }) {
                continue;
            }
            let (tokens, available) = other.known_tokens();
            let n = common_prefix(tokens, prompt).min(usable);
            if shared.is_none_or(|(_, best, _)| n > best) {
                shared = Some((i, n, available.min(n)));
            }
        }
        // A short prefix is recomputed rather than waited for, unless it is the whole
        // prompt (the choices of `n > 1`, a burst of one request).
        if let Some((leader, n, available)) = shared
            && available < n
            && (n >= cached + MIN_SHARED_PREFIX || (n == usable && n > cached))
        {
            self.running[index].phase = Phase::Waiting {
                leader: self.running[leader].serial,
                upto: n,
            };
            return;
        }
        match shared {
            Some((i, _, now)) if now > cached => {
                let src = self.running[i].seq;
                self.start_from(index, src, now);
            }
            // Without free cells for the snapshot, the whole prompt is computed.
            _ => {
                if let Some(m) = found.filter(|_| cached > 0) {
                    restore_prefix(self.session.as_mut(), &mut self.running[index], m.state, cached);
                }
            }
        }
    }

    /// Gives sequence `index` the first `n` tokens of its prompt from `src`'s KV.
    fn start_from(&mut self, index: usize, src: SeqId, n: usize) {
        let running = &mut self.running[index];
        self.session.copy_sequence(src, running.seq, n as u32);
        running.kv.extend_from_slice(&running.prompt[..n]);
        running.generator.set_cached_tokens(n);
        running.phase = Phase::Prefill;
    }

    /// Lets waiting sequences go on once their leader has computed the shared prefix, or
    /// plans them again when the leader is gone.
    fn resolve_waiting(&mut self) {
        for index in 0..self.running.len() {
            let Phase::Waiting { leader, upto } = self.running[index].phase else {
                continue;
            };
            match self.running.iter().find(|r| r.serial == leader) {
                Some(l) if l.kv.len() >= upto => {
                    let src = l.seq;
                    self.start_from(index, src, upto);
                }
                Some(_) => {}
                None => {
                    self.running[index].phase = Phase::Prefill;
                    self.plan_prefix(index);
                }
            }
        }
    }

    /// Samples the first token of sequences whose prompt's logits were cached.
    fn accept_ready(&mut self) {
        let mut finished = Vec::new();
        for (index, r) in self.running.iter_mut().enumerate() {
            let Some(logits) = r.ready.take() else { continue };
            let mut sink = ChannelSink(&r.events);
            match r.generator.accept(self.model.as_ref(), &logits, &mut sink) {
                Step::Continue(token) => r.phase = Phase::Decode(token),
                Step::Finished(reason) => finished.push((index, reason)),
            }
            r.prompt_logits = Some(logits);
        }
        for (index, reason) in finished.into_iter().rev() {
            self.finish(index, reason);
        }
    }

    /// The draft model's guesses for the decoding sequences of `space` (the base model's
    /// only: the draft model knows no adapter), by index into `running`, within `room`
    /// draft tokens in all; none without a draft model.
    fn model_drafts(&mut self, space: Space, room: usize) -> Vec<Option<Vec<TokenId>>> {
        let mut drafts = vec![None; self.running.len()];
        let Some(drafter) = self.drafter.as_mut() else {
            return drafts;
        };
        let mut left = room;
        let mut wants = Vec::new();
        let mut owners = Vec::new();
        for (index, r) in self.running.iter().enumerate() {
            let Phase::Decode(next) = r.phase else { continue };
            if r.space != space || !r.adapter.is_empty() {
                continue;
            }
            let limit = r.draft_limit(self.limits.draft_max, left);
            if limit == 0 {
                continue;
            }
            left -= limit;
            wants.push(Want {
                seq: r.seq,
                kv: &r.kv,
                next,
                limit,
            });
            owners.push(index);
        }
        if wants.is_empty() {
            return drafts;
        }
        match compute::share_unless_fixed(drafter.fixed_threads(), |_| drafter.draft(&wants)) {
            Ok(guesses) => {
                for (index, guess) in owners.into_iter().zip(guesses) {
                    drafts[index] = Some(guess);
                }
            }
            Err(e) => {
                drafter.reset();
                self.draft_failures += 1;
                if self.draft_failures >= MAX_DRAFT_FAILURES {
                    // A draft model that keeps failing (one whose KV cannot be cut back,
                    // or too small a session) would re-read every history at each step.
                    tracing::warn!(error = %e, "the draft model failed again; it drafts no more for this model");
                    self.drafter = None;
                } else {
                    tracing::warn!(error = %e, "the draft model failed; this step drafts by prompt lookup");
                }
            }
        }
        drafts
    }

    /// The step's first forward pass for the sequences of one adapter setting: every
    /// decoding sequence's next token (and its speculative draft, while the pass and the
    /// KV cells have room) and the short prompt chunks that fit, fewer than
    /// [`LARGE_PASS`] tokens in all.
    fn plan_small_pass(&mut self, space: Space) -> Vec<Member> {
        let mut members = Vec::new();
        let mut used = 0;
        let decoding = self
            .running
            .iter()
            .filter(|r| r.space == space && matches!(r.phase, Phase::Decode(_)))
            .count();
        let mut room = match self.limits.draft_max {
            0 => 0,
            _ => (LARGE_PASS - 1)
                .saturating_sub(decoding)
                .min(self.limits.kv_cells.saturating_sub(self.cells_in_use())),
        };
        let fixed = self.pass_cost.fixed_per_token();
        let mut model_drafts = self.model_drafts(space, room);
        for (index, r) in self.running.iter().enumerate() {
            if r.space != space {
                continue;
            }
            if let Phase::Decode(token) = r.phase {
                let at = r.kv.len();
                let limit = r.draft_limit(self.limits.draft_max, room);
                let from_model = model_drafts.get_mut(index).and_then(Option::take);
                let (kind, draft) = match from_model.map(|d| d.into_iter().take(room).collect::<Vec<_>>()) {
                    Some(draft) => (None, draft),
                    None => match lookup(&r.kv, token, limit) {
                        Some((ngram, mut candidate)) => {
                            let kind = MatchKind {
                                ngram,
                                in_run: r.in_run,
                            };
                            let alpha = self.acceptance.alpha(kind);
                            let mut k = best_length(alpha, fixed, decoding, candidate.len());
                            if k == 0 {
                                self.declined += 1;
                                if self.declined % 16 == 0 {
                                    k = 1;
                                }
                            }
                            candidate.truncate(k);
                            (Some(kind).filter(|_| k > 0), candidate)
                        }
                        None => (None, Vec::new()),
                    },
                };
                room -= draft.len();
                used += 1 + draft.len();
                members.push(Member {
                    index,
                    from: at,
                    to: at + 1 + draft.len(),
                    logits: true,
                    draft,
                    kind,
                });
            }
        }
        for (index, r) in self.running.iter().enumerate() {
            if r.space != space || r.phase != Phase::Prefill || r.ready.is_some() {
                continue;
            }
            // A prefilling sequence's KV holds part of its prompt, never more.
            let rest = r.prompt.len().saturating_sub(r.kv.len());
            if rest >= LARGE_PASS || used + rest >= LARGE_PASS {
                continue;
            }
            used += rest;
            members.push(Member {
                index,
                from: r.kv.len(),
                to: r.prompt.len(),
                logits: true,
                draft: Vec::new(),
                kind: None,
            });
        }
        members
    }

    /// The step's second forward pass: the prompts still to read, up to the session's
    /// batch (the model's `batch` setting) in all: first the oldest with [`LARGE_PASS`]
    /// tokens or more to go, then the others in arrival order (short prompts the small pass
    /// had no room for among them), the last one cut to what fits. Several prompts share
    /// the pass, so that a burst of new requests is read in as few passes as the batch
    /// allows. Only prompts of one adapter setting share it (the session applies one).
    fn plan_large_pass(&self) -> Vec<Member> {
        let budget = self.session.params().n_batch as usize;
        let rest = |r: &Running| r.prompt.len().saturating_sub(r.kv.len());
        let pending = |r: &Running| r.phase == Phase::Prefill && r.ready.is_none() && rest(r) > 0;
        let first = (self.running.iter().position(|r| pending(r) && rest(r) >= LARGE_PASS))
            .or_else(|| self.running.iter().position(pending));
        let Some(first) = first else {
            return Vec::new();
        };
        let space = self.running[first].space;
        let order = std::iter::once(first).chain((0..self.running.len()).filter(|&i| i != first));
        let mut members = Vec::new();
        let mut left = budget;
        for index in order {
            let r = &self.running[index];
            if left == 0 {
                break;
            }
            if !pending(r) || r.space != space {
                continue;
            }
            let from = r.kv.len();
            let to = r.prompt.len().min(from + left);
            left -= to - from;
            members.push(Member {
                index,
                from,
                to,
                logits: to == r.prompt.len(),
                draft: Vec::new(),
                kind: None,
            });
        }
        members
    }

    /// One step: the small pass of each adapter setting in use (the base's alone when no
    /// request has an adapter), then the large one.
    /// Each pass and the sampling from its logits take one turn on the model's share of
    /// the process's cores ([`compute::share`]): all of them while no other model
    /// computes, half of them beside one other busy model.
    fn step(&mut self) {
        self.shift_full_contexts();
        // A session whose thread count is fixed takes every core instead.
        let fixed = self.session.fixed_threads();
        let mut spaces: Vec<Space> = Vec::new();
        for r in &self.running {
            if !spaces.contains(&r.space) {
                spaces.push(r.space);
            }
        }
        for space in spaces {
            let small = self.plan_small_pass(space);
            if !small.is_empty() && self.apply_adapter(space) {
                compute::share_unless_fixed(fixed, |_| self.forward(small));
            }
        }
        let large = self.plan_large_pass();
        if let Some(first) = large.first()
            && self.apply_adapter(self.running[first.index].space)
        {
            compute::share_unless_fixed(fixed, |_| self.forward(large));
        }
    }

    /// Sets the session's adapter to that of `space` (a no-op when it is set already).
    /// When llama.cpp refuses, the sequences of that setting end with the error.
    fn apply_adapter(&mut self, space: Space) -> bool {
        let adapter = self
            .running
            .iter()
            .find(|r| r.space == space)
            .map(|r| r.adapter.clone())
            .unwrap_or_default();
        let Err(e) = self.session.set_adapters(adapter) else {
            return true;
        };
        tracing::error!(error = %e, "cannot apply a LoRA adapter");
        let message = e.to_string();
        for index in (0..self.running.len()).rev() {
            if self.running[index].space == space {
                self.fail(index, &message);
            }
        }
        false
    }

    /// Frees a sequence's cells, in the session and the draft model's, and its id.
    fn release(&mut self, seq: SeqId) {
        self.session.free_sequence(seq);
        if let Some(drafter) = self.drafter.as_mut() {
            drafter.forget(seq);
        }
        self.free_seqs.push(seq);
    }

    /// Ends sequence `index` with an engine error, freeing its cells.
    fn fail(&mut self, index: usize, message: &str) {
        let r = self.running.remove(index);
        self.release(r.seq);
        let _ = r
            .events
            .send(GenerationEvent::Done(Err(EngineError::Decode(message.to_owned()))));
    }

    /// One forward pass, then sampling for every sequence that got logits.
    fn forward(&mut self, members: Vec<Member>) {
        if members.is_empty() {
            return;
        }
        let running = &self.running;
        // A decoding sequence evaluates its next token, then its draft.
        let decode_tokens: Vec<Vec<TokenId>> = members
            .iter()
            .map(|m| match running[m.index].phase {
                Phase::Decode(token) => std::iter::once(token).chain(m.draft.iter().copied()).collect(),
                _ => Vec::new(),
            })
            .collect();
        let inputs: Vec<SequenceInput<'_>> = members
            .iter()
            .zip(&decode_tokens)
            .map(|(m, tokens)| {
                let r = &running[m.index];
                SequenceInput {
                    seq: r.seq,
                    tokens: match r.phase {
                        Phase::Decode(_) => tokens,
                        _ => &r.prompt[m.from..m.to],
                    },
                    start_pos: m.from as u32,
                    logits: match (m.logits, m.draft.is_empty()) {
                        // A scoring prompt: a row after every token from the one before
                        // the first scored.
                        _ if r.score_from.is_some() && r.phase == Phase::Prefill => {
                            let first = r.score_from.unwrap_or(0).saturating_sub(1);
                            if m.to > first {
                                LogitsWanted::From(first.saturating_sub(m.from))
                            } else {
                                LogitsWanted::None
                            }
                        }
                        (false, _) => LogitsWanted::None,
                        (true, true) => LogitsWanted::Last,
                        // A row after every token: each verifies the draft token after it.
                        (true, false) => LogitsWanted::From(0),
                    },
                }
            })
            .collect();
        let pass_tokens: usize = inputs.iter().map(|i| i.tokens.len()).sum();
        let reads_prompts = members
            .iter()
            .any(|m| !matches!(running[m.index].phase, Phase::Decode(_)));
        let started = std::time::Instant::now();
        let rows = match self.session.decode(&inputs) {
            Ok(rows) => {
                if reads_prompts {
                    self.stats.prompt_passes.fetch_add(1, Ordering::Relaxed);
                }
                if pass_tokens < LARGE_PASS {
                    self.pass_cost.record(pass_tokens, started.elapsed().as_secs_f64());
                }
                rows
            }
            Err(EngineError::ContextOverflow { .. }) => {
                self.make_room();
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "batched decode failed");
                let message = e.to_string();
                let mut failed: Vec<usize> = members.iter().map(|m| m.index).collect();
                failed.sort_unstable();
                for index in failed.into_iter().rev() {
                    self.fail(index, &message);
                }
                return;
            }
        };
        let mut finished = Vec::new();
        // Sequences whose draft was cut short, and the length their KV keeps.
        let mut trims = Vec::new();
        for (member, row) in members.iter().zip(&rows) {
            let r = &mut self.running[member.index];
            match r.phase {
                Phase::Decode(token) => {
                    r.kv.push(token);
                    let mut sink = ChannelSink(&r.events);
                    // Row i follows the token and the first i draft tokens: sample from it,
                    // and go on while what the model chose is the next draft token.
                    let mut accepted = 0;
                    loop {
                        match r.generator.accept(self.model.as_ref(), row[accepted], &mut sink) {
                            Step::Continue(next) if member.draft.get(accepted) == Some(&next) => {
                                r.kv.push(next);
                                accepted += 1;
                            }
                            Step::Continue(next) => {
                                r.phase = Phase::Decode(next);
                                break;
                            }
                            Step::Finished(reason) => {
                                finished.push((member.index, reason));
                                break;
                            }
                        }
                    }
                    r.in_run = !member.draft.is_empty() && accepted == member.draft.len();
                    if !member.draft.is_empty() {
                        if let Some(kind) = member.kind {
                            self.acceptance.record(kind, member.draft.len(), accepted);
                        }
                        self.stats
                            .draft_tokens
                            .fetch_add(member.draft.len() as u64, Ordering::Relaxed);
                        self.stats.draft_accepted.fetch_add(accepted as u64, Ordering::Relaxed);
                        metrics::counter!("minerva_draft_tokens_total", "model" => self.name.clone())
                            .increment(member.draft.len() as u64);
                        metrics::counter!("minerva_draft_accepted_tokens_total", "model" => self.name.clone())
                            .increment(accepted as u64);
                        if accepted < member.draft.len() {
                            trims.push((member.index, r.seq, r.kv.len() as u32));
                        }
                    }
                    continue;
                }
                _ => {
                    r.kv.extend_from_slice(&r.prompt[member.from..member.to]);
                    let n = (member.to - member.from) as u64;
                    self.stats.prompt_tokens_evaluated.fetch_add(n, Ordering::Relaxed);
                    metrics::counter!("minerva_prompt_tokens_evaluated_total", "model" => self.name.clone())
                        .increment(n);
                }
            }
            if let Some(from) = r.score_from {
                // Row i follows prompt position `first + i`: it scores the token after it.
                let first = member.from.max(from.saturating_sub(1));
                for (i, logits) in row.iter().enumerate() {
                    let Some(&token) = r.prompt.get(first + i + 1) else {
                        break;
                    };
                    let (logprob, _) = log_probabilities(logits, token, 0);
                    r.scores.push(SampledToken {
                        token,
                        logprob,
                        top: Vec::new(),
                    });
                }
                if member.to == r.prompt.len() {
                    finished.push((member.index, FinishReason::Stop));
                }
                continue;
            }
            if !member.logits {
                continue;
            }
            if r.phase == Phase::Prefill && self.cache.enabled() {
                r.prompt_logits = Some(row[0].to_vec());
            }
            let mut sink = ChannelSink(&r.events);
            match r.generator.accept(self.model.as_ref(), row[0], &mut sink) {
                Step::Continue(token) => r.phase = Phase::Decode(token),
                Step::Finished(reason) => finished.push((member.index, reason)),
            }
        }
        drop(rows);
        for (index, seq, len) in trims {
            if let Err(e) = self.session.truncate_sequence(seq, len) {
                // A cache that cannot drop a tail: no more drafting, and this generation,
                // whose KV now holds rejected tokens, ends here.
                tracing::warn!(error = %e, "a rejected draft cannot be dropped; drafting is off for this model");
                self.limits.draft_max = 0;
                if !finished.iter().any(|&(i, _)| i == index) {
                    finished.push((index, FinishReason::Length));
                }
            }
        }
        finished.sort_unstable_by_key(|&(index, _)| std::cmp::Reverse(index));
        for (index, reason) in finished {
            self.finish(index, reason);
        }
    }

    /// Context shift for every decoding sequence whose next token would not fit its
    /// context (only those whose request asked for it reach this point: the others end
    /// with `length` first).
    fn shift_full_contexts(&mut self) {
        let mut failed = Vec::new();
        for (index, r) in self.running.iter_mut().enumerate() {
            let (Phase::Decode(_), Some(shift)) = (r.phase, r.context_shift) else {
                continue;
            };
            if r.kv.len() < r.n_ctx {
                continue;
            }
            let (n_keep, n_discard) = shift.plan(r.kv.len(), r.n_ctx);
            match self.session.shift_sequence(r.seq, n_keep as u32, n_discard as u32) {
                Ok(()) => {
                    r.kv.drain(n_keep..n_keep + n_discard);
                    r.shifted = Some(r.shifted.unwrap_or(n_keep).min(n_keep));
                    self.stats.context_shifts.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("minerva_context_shifts_total", "model" => self.name.clone()).increment(1);
                    tracing::debug!(seq = r.seq.0, n_keep, n_discard, "context shift");
                }
                Err(e) => failed.push((index, e)),
            }
        }
        for (index, e) in failed.into_iter().rev() {
            tracing::warn!(error = %e, "context shift failed; the generation ends here");
            self.finish(index, FinishReason::Length);
        }
    }

    /// The KV cache is full: end the newest request early (its context ends here).
    fn make_room(&mut self) {
        if let Some(newest) = (0..self.running.len()).max_by_key(|&i| self.running[i].serial) {
            tracing::warn!("KV cache full: the newest generation ends early");
            self.finish(newest, FinishReason::Length);
        }
    }

    /// Removes sequence `index`, reports its result, keeps a snapshot of its KV in the
    /// prefix cache and frees its cells.
    fn finish(&mut self, index: usize, reason: FinishReason) {
        let mut r = self.running.remove(index);
        let mut sink = ChannelSink(&r.events);
        let mut generation = r.generator.finish(reason, &mut sink);
        if r.score_from.is_some() {
            generation.logprobs = std::mem::take(&mut r.scores);
        }
        self.stats
            .prompt_tokens_cached
            .fetch_add(generation.cached_tokens as u64, Ordering::Relaxed);
        let _ = r.events.send(GenerationEvent::Done(Ok(generation)));
        // A shifted sequence's KV is no longer what its tokens give from position 0.
        if r.shifted.is_none() && self.cache.wants(r.space, &r.kv) {
            match self.session.save_sequence(r.seq) {
                Ok(snapshot) => {
                    let prompt_logits = r.prompt_logits.map(|logits| (r.prompt.len(), logits));
                    self.cache.insert(r.space, snapshot, r.kv, prompt_logits);
                }
                Err(e) => tracing::warn!(error = %e, "cannot keep a finished sequence's KV"),
            }
        }
        self.release(r.seq);
    }
}

/// Gives `running` the first `n` tokens of its prompt from a cached snapshot that holds
/// them. False when the session has no free cells for the snapshot.
fn restore_prefix(session: &mut dyn Session, running: &mut Running, snapshot: &SequenceSnapshot, n: usize) -> bool {
    if let Err(e) = session.restore_sequence(snapshot, running.seq, n as u32) {
        tracing::debug!(error = %e, "cached prefix not restored; the prompt is computed");
        return false;
    }
    running.kv.extend_from_slice(&running.prompt[..n]);
    running.generator.set_cached_tokens(n);
    running.phase = Phase::Prefill;
    true
}
