//! Continuous batching for one language model: the scheduler owns the llama.cpp session
//! and steps every running generation together.
//!
//! Each step is at most two forward passes: the next token of every decoding sequence
//! plus short prompts, then one chunk (within a token budget, so that a long prompt never
//! stalls running streams) of the oldest long prompt. Requests join between steps (FIFO, while a
//! sequence slot and KV cells are free); a finished or abandoned one leaves at once.
//!
//! Prefix reuse: a new prompt starts from the longest prefix whose KV is already there,
//! in the prefix cache (snapshots of finished sequences, restored with
//! [`Session::restore_sequence`]) or in a running sequence (shared with
//! [`Session::copy_sequence`]). When several queued prompts share a prefix that a running
//! sequence is still prefilling, they wait for it instead of computing it again.
//!
//! The cache keeps its KV outside the session on purpose: llama.cpp's attention walks
//! every cell up to the highest one in use, masked or not, so cached prefixes left in the
//! session's cells would slow every forward pass of every running sequence.

use std::collections::VecDeque;
use std::sync::{Arc, mpsc};

use minerva_engine::generate::{FinishReason, GenerateOptions, SequenceGenerator, Step, TokenSink};
use minerva_engine::llm::{LogitsWanted, SequenceInput, SequenceSnapshot};
use minerva_engine::{EngineError, LanguageModel, SeqId, Session, TokenId, compute};
use tokio::sync::mpsc as async_mpsc;

use crate::llm_worker::GenerationEvent;
use crate::prefix_cache::{PrefixCache, common_prefix};

/// Most tokens one step evaluates (decodes plus prefill chunks).
const STEP_TOKENS: usize = 512;

/// Forward passes of this many tokens or more take other kernels in llama.cpp (tiled
/// flash attention) that round differently: decode tokens never share such a pass, and a
/// prompt chunk of that size has it to itself, as it would alone, so that a stream's
/// output does not depend on its batch mates.
const LARGE_PASS: usize = 64;

/// A shared prefix shorter than this is recomputed rather than waited for.
const MIN_SHARED_PREFIX: usize = 32;

/// A generation request as the worker's handle sends it.
pub(crate) struct Job {
    pub(crate) prompt: Vec<TokenId>,
    pub(crate) options: GenerateOptions,
    pub(crate) events: async_mpsc::UnboundedSender<GenerationEvent>,
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
}

impl Running {
    /// The tokens this sequence's KV will hold once its prompt is in, and how many of
    /// them are there now.
    fn known_tokens(&self) -> (&[TokenId], usize) {
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
        }
    }

    /// Runs until every handle is gone and no request is left.
    pub(crate) fn run(mut self) {
        loop {
            if self.running.is_empty() && self.queue.is_empty() {
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
            self.step();
        }
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
            });
            self.plan_prefix(self.running.len() - 1);
        }
    }

    /// Decides where the prompt of a sequence without KV starts: from a cached prefix,
    /// from a running sequence's KV, or after waiting for a running sequence to compute a
    /// prefix they share.
    fn plan_prefix(&mut self, index: usize) {
        let prompt_len = self.running[index].prompt.len();
        // The last prompt token is always evaluated: its logits give the first token.
        let usable = prompt_len - 1;
        let mut found = self.cache.longest_match(&self.running[index].prompt);
        let cached = found.as_ref().map_or(0, |m| m.len.min(usable));
        if let Some(m) = found.as_mut()
            && let Some(logits) = m.logits.take()
            && restore_prefix(self.session.as_mut(), &mut self.running[index], m.state, prompt_len)
        {
            self.running[index].ready = Some(logits);
            return;
        }
        let prompt = &self.running[index].prompt;
        let mut shared: Option<(usize, usize, usize)> = None; // (index, shared, available now)
        for (i, other) in self.running.iter().enumerate() {
            if i == index || matches!(other.phase, Phase::Waiting { .. }) {
                continue;
            }
            let (tokens, available) = other.known_tokens();
            let n = common_prefix(tokens, prompt).min(usable);
            if shared.is_none_or(|(_, best, _)| n > best) {
                shared = Some((i, n, available.min(n)));
            }
        }
        if let Some((leader, n, available)) = shared
            && available < n
            && n >= cached + MIN_SHARED_PREFIX
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

    /// The step's first forward pass: every decoding sequence's next token and the short
    /// prompt chunks that fit, fewer than [`LARGE_PASS`] tokens in all.
    fn plan_small_pass(&self) -> Vec<Member> {
        let mut members = Vec::new();
        let mut used = 0;
        for (index, r) in self.running.iter().enumerate() {
            if let Phase::Decode(_) = r.phase {
                let at = r.kv.len();
                members.push(Member {
                    index,
                    from: at,
                    to: at + 1,
                    logits: true,
                });
                used += 1;
            }
        }
        for (index, r) in self.running.iter().enumerate() {
            if r.phase != Phase::Prefill || r.ready.is_some() {
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
            });
        }
        members
    }

    /// The step's second forward pass: the next chunk (up to the step's budget) of the
    /// oldest prompt with [`LARGE_PASS`] tokens or more still to evaluate, alone; else a
    /// short prompt the small pass had no room for.
    fn plan_large_pass(&self) -> Vec<Member> {
        let budget = STEP_TOKENS.min(self.session.params().n_batch as usize);
        let pending = |r: &&Running, min: usize| {
            r.phase == Phase::Prefill && r.ready.is_none() && r.prompt.len().saturating_sub(r.kv.len()) >= min
        };
        let chosen = (self.running.iter().enumerate().find(|(_, r)| pending(r, LARGE_PASS)))
            .or_else(|| self.running.iter().enumerate().find(|(_, r)| pending(r, 1)));
        chosen
            .map(|(index, r)| {
                let from = r.kv.len();
                let to = r.prompt.len().min(from + budget);
                vec![Member {
                    index,
                    from,
                    to,
                    logits: to == r.prompt.len(),
                }]
            })
            .unwrap_or_default()
    }

    /// One step: the small pass, then the large one.
    /// Each pass and the sampling from its logits take one turn of the process's cores
    /// ([`compute::exclusive`]): no other model's pass runs beside this model's sampling.
    fn step(&mut self) {
        let small = self.plan_small_pass();
        if !small.is_empty() {
            compute::exclusive(|| self.forward(small));
        }
        let large = self.plan_large_pass();
        if !large.is_empty() {
            compute::exclusive(|| self.forward(large));
        }
    }

    /// One forward pass, then sampling for every sequence that got logits.
    fn forward(&mut self, members: Vec<Member>) {
        if members.is_empty() {
            return;
        }
        let running = &self.running;
        let next_tokens: Vec<TokenId> = members
            .iter()
            .map(|m| match running[m.index].phase {
                Phase::Decode(token) => token,
                _ => 0,
            })
            .collect();
        let inputs: Vec<SequenceInput<'_>> = members
            .iter()
            .zip(&next_tokens)
            .map(|(m, token)| {
                let r = &running[m.index];
                SequenceInput {
                    seq: r.seq,
                    tokens: match r.phase {
                        Phase::Decode(_) => std::slice::from_ref(token),
                        _ => &r.prompt[m.from..m.to],
                    },
                    start_pos: m.from as u32,
                    logits: if m.logits {
                        LogitsWanted::Last
                    } else {
                        LogitsWanted::None
                    },
                }
            })
            .collect();
        let rows = match self.session.decode(&inputs) {
            Ok(rows) => rows,
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
                    let r = self.running.remove(index);
                    self.session.free_sequence(r.seq);
                    self.free_seqs.push(r.seq);
                    let _ = r
                        .events
                        .send(GenerationEvent::Done(Err(EngineError::Decode(message.clone()))));
                }
                return;
            }
        };
        let mut finished = Vec::new();
        for (member, row) in members.iter().zip(&rows) {
            let r = &mut self.running[member.index];
            match r.phase {
                Phase::Decode(token) => r.kv.push(token),
                _ => r.kv.extend_from_slice(&r.prompt[member.from..member.to]),
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
        finished.sort_unstable_by_key(|&(index, _)| std::cmp::Reverse(index));
        for (index, reason) in finished {
            self.finish(index, reason);
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
        let r = self.running.remove(index);
        let mut sink = ChannelSink(&r.events);
        let generation = r.generator.finish(reason, &mut sink);
        let _ = r.events.send(GenerationEvent::Done(Ok(generation)));
        if self.cache.wants(&r.kv) {
            match self.session.save_sequence(r.seq) {
                Ok(snapshot) => {
                    let prompt_logits = r.prompt_logits.map(|logits| (r.prompt.len(), logits));
                    self.cache.insert(snapshot, r.kv, prompt_logits);
                }
                Err(e) => tracing::warn!(error = %e, "cannot keep a finished sequence's KV"),
            }
        }
        self.session.free_sequence(r.seq);
        self.free_seqs.push(r.seq);
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
