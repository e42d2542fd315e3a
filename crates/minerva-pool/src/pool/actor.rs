//! The pool's actor: one task owns the pool's [`State`] and handles its messages in
//! order — acquire, release, a load's end, unload — plus its timers (keep-alive deadlines,
//! the deadlines of waiting requests, the memory interval).
//!
//! Order is explicit:
//! - A request for a loaded model gets its lease at once, unless that model is one of
//!   the victims drained for the request at the head of the queue for room.
//! - A request for a loading model joins that load's waiters; the load's end hands each
//!   of them its lease in the same step, so nothing can evict the model in between.
//! - A request for a model that does not fit waits in one FIFO queue. Only its head makes
//!   room: it evicts idle models by policy, or, when idle ones are not enough, chooses the
//!   victims among the models in use and drains them (they take no new lease and leave
//!   when their last lease ends). Requests for every other loaded model go on.
//!
//! After each batch of messages the actor publishes a [`Snapshot`] (what the pool's
//! synchronous getters read) and only then answers, so an answer is never ahead of the
//! snapshot.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::loader::Loader;
use super::state::{Entry, Phase, Room, Snapshot, State, Waiter};
use super::usage::UsageRecord;
use super::{EvictionPolicy, EvictionReason, Lease, ModelLease, PoolConfig, PoolError, Purpose};
use crate::keep_alive::KeepAlive;
use minerva_store::ModelId;
use minerva_workers::pressure::MemorySource;

/// What the actor is told.
pub(super) enum Msg<M> {
    Acquire(Waiter<M>),
    /// A lease ended (it hands back its reference to the model).
    Release {
        model: Arc<ModelLease<M>>,
        request: bool,
    },
    Loaded {
        id: ModelId,
        generation: u64,
        result: Result<(M, u64), PoolError>,
        elapsed: Duration,
    },
    Unload {
        id: ModelId,
        reply: oneshot::Sender<Option<Arc<ModelLease<M>>>>,
    },
    /// A loaded model (of this load) holds `bytes` more: a LoRA adapter loaded for it.
    Charge {
        id: ModelId,
        generation: u64,
        bytes: u64,
    },
    /// Answered once everything sent before has been handled.
    Sync(oneshot::Sender<()>),
}

type Reply = Box<dyn FnOnce() + Send>;

pub(super) struct Actor<L: Loader> {
    pub loader: Arc<L>,
    pub config: PoolConfig,
    pub memory: Arc<dyn MemorySource>,
    pub state: State<L::Model>,
    /// Requests waiting for room, first come first served.
    pub queue: VecDeque<Waiter<L::Model>>,
    /// For the leases it hands out; weak, so that the actor ends with the last handle.
    pub mailbox: mpsc::WeakUnboundedSender<Msg<L::Model>>,
    pub snapshot: watch::Sender<Arc<Snapshot<L::Model>>>,
    pub requests: broadcast::Sender<ModelId>,
    pub usage: Option<Sender<UsageRecord>>,
    /// Answers, sent after the snapshot is published.
    pub outbox: Vec<Reply>,
    /// Models that left, freed on blocking threads after the snapshot no longer names them.
    pub to_free: Vec<Arc<ModelLease<L::Model>>>,
}

impl<L: Loader> Actor<L> {
    /// Handles messages and timers until every handle and lease is gone.
    pub async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Msg<L::Model>>) {
        let interval = self.config.budget_interval;
        let mut memory_tick = tokio::time::interval_at(Instant::now() + interval, interval);
        memory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = [
                self.state.next_idle_deadline(),
                self.queue.iter().map(|w| w.deadline).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = inbox.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    while let Ok(msg) = inbox.try_recv() {
                        self.handle(msg);
                    }
                }
                () = sleep => {}
                _ = memory_tick.tick() => self.refresh_budget(),
            }
            self.step();
        }
        for entry in std::mem::take(&mut self.state.entries).into_values() {
            if let Phase::Ready(model) = entry.phase {
                free_in_background(model);
            }
        }
    }

    /// After messages or a timer: unloads what expired, serves the queue, publishes the
    /// snapshot, then frees and answers.
    pub fn step(&mut self) {
        let now = Instant::now();
        self.expire_idle(now);
        self.expire_waiters(now);
        self.pump();
        self.publish();
        self.to_free.drain(..).for_each(free_in_background);
        for reply in self.outbox.drain(..) {
            reply();
        }
    }

    fn handle(&mut self, msg: Msg<L::Model>) {
        match msg {
            Msg::Acquire(waiter) => {
                if let Some(waiter) = self.place(waiter, false) {
                    self.wait_for_room(waiter);
                }
            }
            Msg::Release { model, request } => self.release(model, request),
            Msg::Loaded {
                id,
                generation,
                result,
                elapsed,
            } => self.finish_load(&id, generation, result, elapsed),
            Msg::Unload { id, reply } => {
                let model = self.state.evict(&id, EvictionReason::Manual);
                if let Some(waiters) = self.state.take_loading(&id) {
                    for w in waiters {
                        self.answer(w.reply, Err(PoolError::Interrupted(id.clone())));
                    }
                }
                self.outbox.push(Box::new(move || {
                    let _ = reply.send(model);
                }));
            }
            Msg::Charge { id, generation, bytes } => self.charge(&id, generation, bytes),
            Msg::Sync(reply) => self.outbox.push(Box::new(move || {
                let _ = reply.send(());
            })),
        }
    }

    /// Counts `bytes` more for model `id` (if still this load of it) until it unloads; over
    /// the byte budget then, idle models leave by policy as they would for a load (models
    /// in use keep the pool over it until they are idle, and loads wait meanwhile).
    fn charge(&mut self, id: &ModelId, generation: u64, bytes: u64) {
        let Some(e) = self.state.entries.get_mut(id) else {
            return;
        };
        if e.generation != generation || !matches!(e.phase, Phase::Ready(_)) {
            return;
        }
        e.bytes = e.bytes.saturating_add(bytes);
        tracing::info!(model = %id, bytes, total = e.bytes, "counting an adapter's memory");
        if !matches!(self.config.policy, EvictionPolicy::CountLru { .. })
            && let Room::Made(evicted) = self.state.make_room(id, 0, &self.config, &Purpose::Request, &[])
        {
            self.to_free.extend(evicted);
        }
        self.state.peak_bytes = self.state.peak_bytes.max(self.state.bytes_in_use());
    }

    /// Serves `w` now if its model is loaded (and not drained) or loading; starts its load
    /// if it fits. Returns it when it must wait for room. `head`: it is the queue's head.
    fn place(&mut self, w: Waiter<L::Model>, head: bool) -> Option<Waiter<L::Model>> {
        if w.reply.is_closed() {
            return None;
        }
        self.state.tick += 1;
        self.revive_if_dead(&w.id);
        let ready = self
            .state
            .entries
            .get(&w.id)
            .map(|e| matches!(e.phase, Phase::Ready(_)));
        match ready {
            Some(true) if head || !self.state.draining.contains(&w.id) => {
                self.grant(w);
                None
            }
            Some(true) => Some(w),
            Some(false) => {
                self.join_load(w);
                None
            }
            None if !head && !self.queue.is_empty() => Some(w),
            None => self.try_load(w),
        }
    }

    /// A model whose worker thread died leaves the pool; the request loads it anew.
    fn revive_if_dead(&mut self, id: &ModelId) {
        let dead = match self.state.entries.get(id).map(|e| &e.phase) {
            Some(Phase::Ready(model)) => !self.loader.is_alive(&model.model),
            _ => false,
        };
        if dead {
            tracing::error!(model = %id, "the model's worker thread died; unloading it");
            self.to_free.extend(self.state.evict(id, EvictionReason::WorkerDied));
        }
    }

    fn wait_for_room(&mut self, w: Waiter<L::Model>) {
        let reason = if matches!(w.purpose, Purpose::Preload(_)) {
            "a preload never waits"
        } else if !w.protect.is_empty() {
            // A route's fallback: another model may serve; it never holds up the queue.
            "a fallback that must not displace the routes' first models never waits"
        } else if self.queue.len() >= self.config.max_waiting {
            "the queue for memory is full"
        } else {
            self.queue.push_back(w);
            return;
        };
        let id = w.id.clone();
        self.answer(w.reply, Err(PoolError::Busy { id, reason }));
    }

    /// Starts the load of `w`'s model when room can be made now; returns `w` otherwise.
    fn try_load(&mut self, w: Waiter<L::Model>) -> Option<Waiter<L::Model>> {
        let needed = w.footprint.total();
        match self
            .state
            .make_room(&w.id, needed, &self.config, &w.purpose, &w.protect)
        {
            Room::Never => {
                let err = PoolError::TooLarge {
                    id: w.id.clone(),
                    needed,
                    budget: self.state.budget,
                };
                self.answer(w.reply, Err(err));
                None
            }
            Room::NotNow => Some(w),
            Room::Made(evicted) => {
                self.start_load(w, evicted);
                None
            }
        }
    }

    /// Serves the queue for room from its head, until a request must wait on.
    fn pump(&mut self) {
        loop {
            self.state.draining.clear();
            let Some(w) = self.queue.pop_front() else {
                return;
            };
            if let Some(w) = self.place(w, true) {
                let needed = w.footprint.total();
                let protect = w.protect.clone();
                self.queue.push_front(w);
                self.state.choose_drain(needed, &self.config, &protect);
                return;
            }
        }
    }

    /// Answers the waiting requests whose wait timed out; forgets those whose client left.
    fn expire_waiters(&mut self, now: Instant) {
        let (expired, waiting): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .filter(|w| !w.reply.is_closed())
            .partition(|w| w.deadline <= now);
        self.queue = waiting;
        for w in expired {
            let id = w.id.clone();
            let reason = "timed out waiting for a model to become idle";
            self.answer(w.reply, Err(PoolError::Busy { id, reason }));
        }
    }

    fn join_load(&mut self, mut w: Waiter<L::Model>) {
        if !w.counted {
            w.counted = true;
            if matches!(w.purpose, Purpose::Request) {
                self.state.stats.entry(w.id.clone()).or_default().misses += 1;
            }
        }
        if let Some(Entry {
            phase: Phase::Loading(waiters),
            ..
        }) = self.state.entries.get_mut(&w.id)
        {
            waiters.push(w);
        }
    }

    /// Hands `w` a lease on its loaded model.
    fn grant(&mut self, w: Waiter<L::Model>) {
        if w.reply.is_closed() {
            return;
        }
        let Some(mailbox) = self.mailbox.upgrade() else {
            return;
        };
        let request = matches!(w.purpose, Purpose::Request);
        let tick = self.state.tick;
        let floor = self.state.credit_floor;
        let Some(e) = self.state.entries.get_mut(&w.id) else {
            return;
        };
        let Phase::Ready(model) = &e.phase else {
            return;
        };
        let model = Arc::clone(model);
        let first_use = request && std::mem::take(&mut e.unused_preload);
        e.leases += 1;
        if request {
            e.uses += 1;
            e.last_used_tick = tick;
            e.keep_alive = if e.pinned { KeepAlive::Forever } else { w.keep_alive };
            e.idle_deadline = None;
            e.credit = EvictionPolicy::credit(floor, e.uses, e.load_ms, e.bytes);
        }
        let leases = e.leases;
        let s = self.state.stats.entry(w.id.clone()).or_default();
        if !w.counted && request {
            s.hits += 1;
        }
        if first_use {
            s.preloads_used += 1;
        }
        s.leases = leases;
        s.expires_at = None;
        s.last_used = unix_at(Instant::now());
        let lease = Lease::new(model, mailbox, request);
        self.answer(w.reply, Ok(lease));
    }

    /// Sends `result` after this step's snapshot is published. A lease whose request has
    /// gone is dropped there, which ends it like any other.
    fn answer(
        &mut self,
        reply: oneshot::Sender<Result<Lease<L::Model>, PoolError>>,
        result: Result<Lease<L::Model>, PoolError>,
    ) {
        self.outbox.push(Box::new(move || {
            let _ = reply.send(result);
        }));
    }

    /// A lease ended: when it was the model's last, its keep-alive starts (or, for a
    /// keep-alive of zero, it leaves now).
    fn release(&mut self, model: Arc<ModelLease<L::Model>>, request: bool) {
        if request {
            let _ = self.requests.send(model.id.clone());
        }
        let id = model.id.clone();
        let current = self
            .state
            .entries
            .get(&id)
            .is_some_and(|e| e.generation == model.generation);
        // The lease's reference may be the model's last (it was unloaded meanwhile).
        self.to_free.push(model);
        if !current {
            return;
        }
        let Some(e) = self.state.entries.get_mut(&id) else {
            return;
        };
        e.leases = e.leases.saturating_sub(1);
        let leases = e.leases;
        let mut expires = None;
        if leases == 0 {
            if e.pinned {
                // Pinned: never unloaded for idleness, whatever keep-alive a request gave.
                e.idle_deadline = None;
            } else if e.keep_alive == KeepAlive::For(Duration::ZERO) {
                self.to_free.extend(self.state.evict(&id, EvictionReason::Idle));
            } else {
                e.idle_deadline = e.keep_alive.deadline(Instant::now());
                expires = e.idle_deadline;
            }
        }
        if let Some(s) = self.state.stats.get_mut(&id) {
            s.leases = leases;
            s.expires_at = expires.and_then(unix_at);
        }
    }

    /// Registers the load of `w`'s model and runs it: the models it evicts are freed
    /// first, then the loader runs on a blocking thread; its end comes back as a message.
    fn start_load(&mut self, mut w: Waiter<L::Model>, evicted: Vec<Arc<ModelLease<L::Model>>>) {
        let Some(mailbox) = self.mailbox.upgrade() else {
            return;
        };
        let id = w.id.clone();
        let s = self.state.stats.entry(id.clone()).or_default();
        if !w.counted {
            w.counted = true;
            match w.purpose {
                Purpose::Request => s.misses += 1,
                Purpose::Preload(_) => s.preloads += 1,
            }
        }
        s.estimated_bytes = w.footprint.total();

        self.state.generation += 1;
        let generation = self.state.generation;
        let tick = self.state.tick;
        self.state.loads_running += 1;
        let footprint = w.footprint;
        let entry = Entry {
            footprint,
            generation,
            bytes: w.footprint.total(),
            leases: 0,
            loaded_tick: tick,
            last_used_tick: tick,
            uses: 0,
            load_ms: 0.0,
            credit: self.state.credit_floor,
            keep_alive: self.config.keep_alive,
            idle_deadline: None,
            unused_preload: matches!(w.purpose, Purpose::Preload(_)),
            pinned: self.config.pinned.contains(&id) || w.footprint.pinned,
            phase: Phase::Loading(vec![w]),
        };
        self.state.entries.insert(id.clone(), entry);
        self.state.peak_bytes = self.state.peak_bytes.max(self.state.bytes_in_use());
        let loader = Arc::clone(&self.loader);
        // The load runs in its own task: a request that goes away does not cancel it.
        tokio::spawn(async move {
            for model in evicted {
                free(model).await;
            }
            let started = Instant::now();
            let task_id = id.clone();
            let result = tokio::task::spawn_blocking(move || loader.load(&task_id, &footprint))
                .await
                .unwrap_or_else(|_| Err(PoolError::Interrupted(id.clone())));
            let elapsed = started.elapsed();
            let _ = mailbox.send(Msg::Loaded {
                id,
                generation,
                result,
                elapsed,
            });
        });
    }

    /// A load ended: the model becomes ready with its measured size and every request
    /// that waited for it gets its lease, or the entry disappears and they get the error.
    fn finish_load(
        &mut self,
        id: &ModelId,
        generation: u64,
        result: Result<(L::Model, u64), PoolError>,
        elapsed: Duration,
    ) {
        let alone = self.state.loads_running == 1;
        self.state.loads_running = self.state.loads_running.saturating_sub(1);
        let current = self
            .state
            .entries
            .get(id)
            .is_some_and(|e| e.generation == generation && matches!(e.phase, Phase::Loading(_)));
        match result {
            Ok((model, measured)) if current => self.ready(id, generation, model, measured, alone, elapsed),
            Ok((model, _)) => {
                // Unloaded while it loaded: dropped, nothing registered.
                tokio::task::spawn_blocking(move || drop(model));
            }
            Err(e) if !current => {
                // A load that was unloaded meanwhile: its requests were answered then, and
                // a newer load of the model (if any) is not its business.
                tracing::warn!(model = %id, error = %e, "an abandoned load failed");
            }
            Err(e) => {
                tracing::warn!(model = %id, error = %e, "load failed");
                let cause = Arc::new(e);
                for w in self.state.take_loading(id).into_iter().flatten() {
                    let err = PoolError::LoadFailed {
                        id: id.clone(),
                        cause: Arc::clone(&cause),
                    };
                    self.answer(w.reply, Err(err));
                }
            }
        }
        self.state.peak_bytes = self.state.peak_bytes.max(self.state.bytes_in_use());
    }

    fn ready(&mut self, id: &ModelId, generation: u64, model: L::Model, measured: u64, alone: bool, elapsed: Duration) {
        let load_ms = elapsed.as_secs_f64() * 1e3;
        let floor = self.state.credit_floor;
        let Some(e) = self.state.entries.get_mut(id) else {
            return;
        };
        // The weights and KV cache it must hold: a lower bound for the measurement.
        let resident_floor = e.footprint.weights.saturating_add(e.footprint.kv_cache);
        // The RSS delta is noisy: it under-counts when the allocator hands out memory
        // freed earlier and over-counts when other models allocate at the same time. So
        // it is kept between the weights and KV the model must hold and its reservation,
        // and with other loads running the reservation stays.
        let reserved = e.bytes;
        let bytes = if alone {
            measured.clamp(resident_floor.min(reserved), reserved)
        } else {
            reserved
        };
        let model = Arc::new(ModelLease {
            id: id.clone(),
            model,
            bytes,
            loaded_at: SystemTime::now(),
            estimate: e.footprint,
            generation,
        });
        let Phase::Loading(waiters) = std::mem::replace(&mut e.phase, Phase::Ready(model)) else {
            return;
        };
        e.bytes = bytes;
        e.load_ms = load_ms;
        e.credit = EvictionPolicy::credit(floor, 1, load_ms, bytes);
        e.idle_deadline = e.keep_alive.deadline(Instant::now());
        let s = self.state.stats.entry(id.clone()).or_default();
        s.loaded = true;
        s.bytes = bytes;
        s.measured_bytes = measured;
        s.loads += 1;
        s.load_ms = load_ms;
        s.total_load_ms += load_ms;
        if let Some(usage) = &self.usage {
            let _ = usage.send(UsageRecord::Load(id.clone(), load_ms as u64));
        }
        let estimated = s.estimated_bytes;
        tracing::info!(model = %id, bytes, measured, estimated, load_ms, "model ready");
        for w in waiters {
            self.grant(w);
        }
    }

    /// Unloads the idle models whose keep-alive ran out by `now`.
    fn expire_idle(&mut self, now: Instant) {
        let expired: Vec<ModelId> = self
            .state
            .entries
            .iter()
            .filter(|(_, e)| e.leases == 0 && !e.pinned && e.idle_deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            tracing::info!(model = %id, "keep-alive ran out");
            self.to_free.extend(self.state.evict(&id, EvictionReason::Idle));
        }
    }

    /// Publishes what the getters read.
    pub fn publish(&mut self) {
        self.snapshot
            .send_replace(Arc::new(self.state.snapshot(self.queue.len())));
    }
}

/// Drops a model on a blocking thread (freeing a model joins threads and unmaps memory)
/// and returns when it is gone — if this was its last reference.
pub(super) async fn free<M: Send + Sync + 'static>(model: Arc<ModelLease<M>>) {
    let _ = tokio::task::spawn_blocking(move || drop_model(model)).await;
}

/// Drops a reference to a model; the last one is dropped on a blocking thread.
fn free_in_background<M: Send + Sync + 'static>(model: Arc<ModelLease<M>>) {
    if let Some(model) = Arc::into_inner(model) {
        tokio::task::spawn_blocking(move || {
            drop(model);
            minerva_workers::memory::return_free_memory();
        });
    }
}

fn drop_model<M>(model: Arc<ModelLease<M>>) {
    let last = Arc::into_inner(model);
    let was_last = last.is_some();
    drop(last);
    if was_last {
        // The model is gone: give its memory back to the system.
        minerva_workers::memory::return_free_memory();
    }
}

/// The wall-clock second of a Tokio instant; `None` beyond what the clock can name (a
/// client may ask for a keep-alive of billions of years).
fn unix_at(at: Instant) -> Option<u64> {
    let from_now = at.checked_duration_since(Instant::now()).unwrap_or_default();
    SystemTime::now()
        .checked_add(from_now)?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}
