//! The pool's logic on fake models of chosen sizes whose loads the test holds and
//! releases: eviction by each policy among models of different sizes, the order of
//! requests waiting for room (FIFO; only the victims chosen for the head are drained, a
//! request for any other loaded model is served at once, however long the head waits),
//! a load handing its leases to every request that waited for it, failed loads, dead
//! workers, unloads during a load, full queues, timeouts and clients that leave.
//!
//! No model files and no timing: each test runs in milliseconds. `tests/pool.rs` runs the
//! same pool on the real models.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use minerva_pool::estimate::Footprint;
use minerva_pool::{
    AcquireOptions, Budget, EvictionPolicy, EvictionReason, KeepAlive, Lease, Loader, ModelPool, PoolConfig, PoolError,
};
use minerva_store::ModelId;
use minerva_workers::pressure::{MemorySource, SystemMemory};

const MIB: u64 = 1 << 20;

/// A model that is only its id and a switch that kills its "worker".
struct FakeModel {
    alive: Arc<AtomicBool>,
}

/// A load the test holds until it opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
}

/// Models by name with their sizes; loads count, may be gated or fail.
#[derive(Default)]
struct FakeLoader {
    sizes: HashMap<String, u64>,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    /// Gates and failures of the n-th load (counting from 1), whatever its model.
    numbered_gates: Mutex<HashMap<usize, Arc<Gate>>>,
    failing_loads: Mutex<Vec<usize>>,
    failing: Mutex<Vec<String>>,
    loads: Mutex<HashMap<String, usize>>,
    started: AtomicUsize,
    switches: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

impl FakeLoader {
    fn new(models: &[(&str, u64)]) -> Self {
        Self {
            sizes: models.iter().map(|(n, s)| (n.to_string(), s * MIB)).collect(),
            ..Self::default()
        }
    }

    /// Holds the next loads of `name` until the returned gate opens.
    fn gate(&self, name: &str) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        self.gates.lock().unwrap().insert(name.into(), Arc::clone(&gate));
        gate
    }

    /// Holds the `n`-th load (counting from 1) until the returned gate opens.
    fn gate_load(&self, n: usize) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        self.numbered_gates.lock().unwrap().insert(n, Arc::clone(&gate));
        gate
    }

    fn kill(&self, name: &str) {
        self.switches.lock().unwrap()[name].store(false, Ordering::SeqCst);
    }
}

impl Loader for FakeLoader {
    type Model = FakeModel;

    fn footprint(&self, id: &ModelId, _budget: u64) -> Result<Footprint, PoolError> {
        let bytes = *self.sizes.get(id.as_str()).ok_or_else(|| {
            PoolError::Store(minerva_store::StoreError::UnknownModel {
                id: id.to_string(),
                root: "fake".into(),
            })
        })?;
        Ok(Footprint {
            weights: bytes,
            kv_cache: 0,
            scratch: 0,
            prefix_cache: 0,
            shape: None,
            embedding_dtype: None,
            keep_alive: None,
            pinned: false,
        })
    }

    fn load(&self, id: &ModelId, _footprint: &Footprint) -> Result<(FakeModel, u64), PoolError> {
        let number = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let gate = self.gates.lock().unwrap().get(id.as_str()).cloned();
        let numbered = self.numbered_gates.lock().unwrap().get(&number).cloned();
        for gate in [gate, numbered].into_iter().flatten() {
            gate.wait();
        }
        *self.loads.lock().unwrap().entry(id.to_string()).or_default() += 1;
        let fails = self.failing.lock().unwrap().iter().any(|f| f == id.as_str())
            || self.failing_loads.lock().unwrap().contains(&number);
        if fails {
            return Err(PoolError::Interrupted(id.clone()));
        }
        let alive = Arc::new(AtomicBool::new(true));
        self.switches.lock().unwrap().insert(id.to_string(), Arc::clone(&alive));
        Ok((FakeModel { alive }, self.sizes[id.as_str()]))
    }

    fn is_alive(&self, model: &FakeModel) -> bool {
        model.alive.load(Ordering::SeqCst)
    }
}

/// Plenty of free memory: no pressure, the budget stays as configured.
struct AmpleMemory;

impl MemorySource for AmpleMemory {
    fn read(&self) -> std::io::Result<SystemMemory> {
        Ok(SystemMemory {
            total: 64 << 30,
            available: 60 << 30,
        })
    }
}

fn id(s: &str) -> ModelId {
    ModelId::new(s).unwrap()
}

fn config(policy: EvictionPolicy, budget_mib: u64) -> PoolConfig {
    PoolConfig {
        budget: Budget::Fixed(budget_mib * MIB),
        policy,
        keep_alive: KeepAlive::Forever,
        wait_timeout: Duration::from_secs(30),
        ..PoolConfig::new(1, 512)
    }
}

fn pool(models: &[(&str, u64)], config: PoolConfig) -> Arc<ModelPool<FakeLoader>> {
    Arc::new(ModelPool::with_loader(
        FakeLoader::new(models),
        config,
        Arc::new(AmpleMemory),
        None,
    ))
}

fn loaded(pool: &ModelPool<FakeLoader>) -> Vec<String> {
    pool.loaded().iter().map(|m| m.id.to_string()).collect()
}

async fn use_in_order(pool: &ModelPool<FakeLoader>, order: &[&str]) {
    for name in order {
        drop(pool.acquire(&id(name)).await.unwrap());
    }
}

fn spawn_acquire(
    pool: &Arc<ModelPool<FakeLoader>>,
    name: &str,
) -> tokio::task::JoinHandle<Result<Lease<FakeModel>, PoolError>> {
    let pool = Arc::clone(pool);
    let name = id(name);
    tokio::spawn(async move { pool.acquire(&name).await })
}

/// Lets the spawned requests reach the pool and the pool handle them.
async fn until(pool: &ModelPool<FakeLoader>, what: impl Fn(&ModelPool<FakeLoader>) -> bool) {
    for _ in 0..10_000 {
        pool.sync().await;
        if what(pool) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the pool never got there: {:?}", pool.totals());
}

fn evictions(pool: &ModelPool<FakeLoader>, name: &str, reason: EvictionReason) -> u64 {
    pool.stats()
        .into_iter()
        .find(|(i, _)| i.as_str() == name)
        .and_then(|(_, s)| s.evictions_by_reason.get(&reason).copied())
        .unwrap_or(0)
}

#[tokio::test]
async fn each_policy_picks_its_victim_among_models_of_different_sizes() {
    // small (100), mid (300) and big (500) fill 900; "new" (250) needs 250 of it. big is
    // the most recent but was used once; small and mid three times each.
    let models = [("small", 100), ("mid", 300), ("big", 500), ("new", 250)];
    let order = ["small", "mid", "small", "small", "mid", "mid", "big"];
    let mut gone_by_policy = Vec::new();
    for policy in [
        EvictionPolicy::Lru,
        EvictionPolicy::Fifo,
        EvictionPolicy::Lfu,
        EvictionPolicy::CostAware,
        EvictionPolicy::CountLru { max_models: 3 },
    ] {
        let pool = pool(&models, config(policy, 900));
        use_in_order(&pool, &order).await;
        drop(pool.acquire(&id("new")).await.unwrap());
        let gone: Vec<&str> = ["big", "mid", "small"]
            .into_iter()
            .filter(|n| evictions(&pool, n, EvictionReason::Budget) > 0)
            .collect();
        if !matches!(policy, EvictionPolicy::CountLru { .. }) {
            assert!(pool.totals().peak_bytes <= 900 * MIB, "{policy:?}: {:?}", pool.totals());
        }
        gone_by_policy.push(gone);
    }
    // LRU and FIFO take small first (least recent, first loaded); its 100 are not enough,
    // so mid goes too: two models reloaded later.
    assert_eq!(gone_by_policy[0], ["mid", "small"], "LRU");
    assert_eq!(gone_by_policy[1], ["mid", "small"], "FIFO");
    // LFU: big was used once.
    assert_eq!(gone_by_policy[2], ["big"], "LFU");
    // Cost-aware: the set whose reloads cost least by use: big alone.
    assert_eq!(gone_by_policy[3], ["big"], "cost-aware");
    // Count-LRU at three models: one model leaves, whatever its size: the least recent.
    assert_eq!(gone_by_policy[4], ["small"], "count-LRU");
}

#[tokio::test]
async fn a_request_for_a_loaded_model_is_never_queued_behind_one_waiting_for_room() {
    tokio::time::pause();
    let pool = pool(&[("a", 100), ("b", 100), ("c", 100)], config(EvictionPolicy::Lru, 200));
    let a = pool.acquire(&id("a")).await.unwrap();
    let b = pool.acquire(&id("b")).await.unwrap();
    // c waits; LRU drains a (least recent) for it.
    let c = spawn_acquire(&pool, "c");
    until(&pool, |p| p.totals().waiting == 1).await;
    // However long c waits, requests for b (not a victim) go straight through.
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..3 {
        let again = pool.acquire(&id("b")).await.expect("b is served while c waits");
        drop(again);
    }
    // A request for a, the drained victim, waits behind c.
    let a_again = spawn_acquire(&pool, "a");
    until(&pool, |p| p.totals().waiting == 2).await;
    assert!(!c.is_finished() && !a_again.is_finished());
    // a's lease ends: a leaves for c; the request for a then waits for room again, and
    // gets it when b's lease ends (b is now the victim).
    drop(a);
    let c = c.await.unwrap().unwrap();
    assert_eq!(c.id.as_str(), "c");
    until(&pool, |p| p.totals().waiting == 1).await;
    drop(b);
    let a_again = a_again.await.unwrap().unwrap();
    assert_eq!(loaded(&pool), ["a", "c"]);
    assert_eq!(evictions(&pool, "a", EvictionReason::Budget), 1);
    assert_eq!(evictions(&pool, "b", EvictionReason::Budget), 1);
    drop((a_again, c));
}

#[tokio::test]
async fn requests_waiting_for_room_are_served_first_come_first_served() {
    let pool = pool(
        &[("a", 100), ("c", 100), ("d", 100), ("e", 100)],
        config(EvictionPolicy::Lru, 100),
    );
    let a = pool.acquire(&id("a")).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for name in ["c", "d", "e"] {
        let task_pool = Arc::clone(&pool);
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let pool = task_pool;
            let lease = pool.acquire(&id(name)).await.unwrap();
            order.lock().unwrap().push(name);
            // Each holds its model until the next one is queued behind, then yields it.
            drop(lease);
        }));
        let queued = tasks.len();
        until(&pool, |p| p.totals().waiting == queued).await;
    }
    drop(a);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["c", "d", "e"]);
}

#[tokio::test]
async fn a_finished_load_hands_its_model_to_every_request_that_waited_even_with_keep_alive_zero() {
    let pool = pool(
        &[("a", 100)],
        PoolConfig {
            keep_alive: KeepAlive::For(Duration::ZERO),
            ..config(EvictionPolicy::Lru, 1000)
        },
    );
    let gate = pool.loader().gate("a");
    let waiters: Vec<_> = (0..8).map(|_| spawn_acquire(&pool, "a")).collect();
    until(&pool, |p| {
        p.loader().started.load(Ordering::SeqCst) == 1 && p.stats().first().is_some_and(|s| s.1.misses == 8)
    })
    .await;
    gate.open();
    let leases: Vec<_> = futures_join(waiters).await;
    assert_eq!(pool.loader().loads.lock().unwrap()["a"], 1, "one load for all");
    assert_eq!(pool.stats()[0].1.leases, 8);
    drop(leases);
    // The last lease ends: keep-alive zero unloads it.
    until(&pool, |p| p.loaded().is_empty()).await;
    assert_eq!(evictions(&pool, "a", EvictionReason::Idle), 1);
}

async fn futures_join(
    tasks: Vec<tokio::task::JoinHandle<Result<Lease<FakeModel>, PoolError>>>,
) -> Vec<Lease<FakeModel>> {
    let mut leases = Vec::new();
    for task in tasks {
        leases.push(task.await.unwrap().unwrap());
    }
    leases
}

#[tokio::test]
async fn a_failed_load_fails_every_waiter_and_leaves_nothing_and_the_next_request_tries_again() {
    let pool = pool(&[("a", 100)], config(EvictionPolicy::Lru, 1000));
    pool.loader().failing.lock().unwrap().push("a".into());
    let gate = pool.loader().gate("a");
    let waiters: Vec<_> = (0..3).map(|_| spawn_acquire(&pool, "a")).collect();
    until(&pool, |p| p.stats().first().is_some_and(|s| s.1.misses == 3)).await;
    gate.open();
    for w in waiters {
        let err = w.await.unwrap().err().expect("the load failed");
        assert!(matches!(err, PoolError::LoadFailed { .. }), "{err}");
    }
    assert!(pool.loaded().is_empty());
    assert_eq!(pool.totals().bytes_in_use, 0);
    pool.loader().failing.lock().unwrap().clear();
    drop(pool.acquire(&id("a")).await.unwrap());
    assert_eq!(pool.loader().loads.lock().unwrap()["a"], 2);
}

#[tokio::test]
async fn a_model_whose_worker_died_is_unloaded_and_loaded_again_by_the_next_request() {
    let pool = pool(&[("a", 100)], config(EvictionPolicy::Lru, 1000));
    drop(pool.acquire(&id("a")).await.unwrap());
    pool.loader().kill("a");
    let lease = pool.acquire(&id("a")).await.unwrap();
    assert!(pool.loader().is_alive(&lease.model), "a fresh model, not the dead one");
    assert_eq!(evictions(&pool, "a", EvictionReason::WorkerDied), 1);
    assert_eq!(pool.loader().loads.lock().unwrap()["a"], 2);
    assert_eq!(pool.totals().bytes_in_use, 100 * MIB, "the dead model's bytes are gone");
}

#[tokio::test]
async fn unloading_a_loading_model_interrupts_its_waiters_and_drops_the_late_model() {
    let pool = pool(&[("a", 100)], config(EvictionPolicy::Lru, 1000));
    let gate = pool.loader().gate("a");
    let waiter = spawn_acquire(&pool, "a");
    until(&pool, |p| p.is_resident(&id("a"))).await;
    assert!(!pool.unload(&id("a")).await, "not loaded yet");
    let err = waiter.await.unwrap().err().expect("interrupted");
    assert!(matches!(err, PoolError::Interrupted(_)), "{err}");
    gate.open();
    until(&pool, |p| p.loader().loads.lock().unwrap().get("a") == Some(&1)).await;
    pool.sync().await;
    assert!(pool.loaded().is_empty());
    assert_eq!(pool.totals().bytes_in_use, 0);
}

#[tokio::test]
async fn an_abandoned_load_that_fails_leaves_the_models_next_load_alone() {
    let pool = pool(&[("a", 100)], config(EvictionPolicy::Lru, 1000));
    let first = pool.loader().gate_load(1);
    let second = pool.loader().gate_load(2);
    pool.loader().failing_loads.lock().unwrap().push(1);
    let abandoned = spawn_acquire(&pool, "a");
    until(&pool, |p| p.loader().started.load(Ordering::SeqCst) == 1).await;
    assert!(!pool.unload(&id("a")).await, "still loading");
    assert!(matches!(abandoned.await.unwrap(), Err(PoolError::Interrupted(_))));
    // A new request loads the model again while the abandoned load still runs.
    let fresh = spawn_acquire(&pool, "a");
    until(&pool, |p| p.loader().started.load(Ordering::SeqCst) == 2).await;
    first.open();
    until(&pool, |p| p.loader().loads.lock().unwrap().get("a") == Some(&1)).await;
    pool.sync().await;
    let still_loading = pool.is_resident(&id("a"));
    second.open();
    assert!(still_loading, "the abandoned load's failure took the new load's entry");
    let lease = fresh.await.unwrap().expect("the new load serves its request");
    assert_eq!(lease.id.as_str(), "a");
    assert_eq!(pool.totals().bytes_in_use, 100 * MIB);
}

#[tokio::test]
async fn a_full_queue_and_a_long_wait_are_busy_errors_and_a_preload_never_waits() {
    tokio::time::pause();
    let pool = pool(
        &[("a", 100), ("b", 100)],
        PoolConfig {
            max_waiting: 2,
            wait_timeout: Duration::from_secs(10),
            ..config(EvictionPolicy::Lru, 100)
        },
    );
    let a = pool.acquire(&id("a")).await.unwrap();
    let waiting: Vec<_> = (0..2).map(|_| spawn_acquire(&pool, "b")).collect();
    until(&pool, |p| p.totals().waiting == 2).await;
    let full = pool.acquire(&id("b")).await.err().expect("queue full");
    assert!(full.to_string().contains("queue for memory is full"), "{full}");
    let preload = pool.preload(&id("b")).await.err().expect("a preload never waits");
    assert!(matches!(preload, PoolError::Busy { .. }), "{preload}");
    tokio::time::advance(Duration::from_secs(11)).await;
    for w in waiting {
        let err = w.await.unwrap().err().expect("timed out");
        assert!(err.to_string().contains("timed out"), "{err}");
    }
    assert_eq!(pool.totals().waiting, 0);
    assert_eq!(loaded(&pool), ["a"]);
    drop(a);
}

#[tokio::test]
async fn a_client_that_leaves_while_waiting_holds_nothing() {
    let pool = pool(&[("a", 100), ("b", 100)], config(EvictionPolicy::Lru, 100));
    let a = pool.acquire(&id("a")).await.unwrap();
    let gone = spawn_acquire(&pool, "b");
    until(&pool, |p| p.totals().waiting == 1).await;
    gone.abort();
    let _ = gone.await;
    drop(a);
    // b's would-be request is gone: a stays loaded and idle, and a request for a works.
    pool.sync().await;
    let again = pool.acquire(&id("a")).await.unwrap();
    assert_eq!(loaded(&pool), ["a"]);
    assert_eq!(pool.totals().waiting, 0);
    assert_eq!(pool.stats()[0].1.leases, 1);
    drop(again);
}

#[tokio::test]
async fn keep_alive_and_pinning_on_virtual_time() {
    tokio::time::pause();
    let pool = pool(
        &[("a", 100), ("b", 100), ("pinned", 100)],
        PoolConfig {
            keep_alive: KeepAlive::For(Duration::from_secs(60)),
            pinned: vec![id("pinned")],
            ..config(EvictionPolicy::Lru, 300)
        },
    );
    use_in_order(&pool, &["pinned", "a"]).await;
    let short = AcquireOptions {
        keep_alive: Some(KeepAlive::For(Duration::from_secs(10))),
        ..Default::default()
    };
    drop(pool.acquire_with(&id("b"), short).await.unwrap());
    // The lease's end reaches the pool before the clock moves.
    pool.sync().await;
    tokio::time::advance(Duration::from_secs(11)).await;
    until(&pool, |p| loaded(p) == ["a", "pinned"]).await;
    tokio::time::advance(Duration::from_secs(50)).await;
    until(&pool, |p| loaded(p) == ["pinned"]).await;
    // A zero keep-alive on a pinned model does not unload it.
    let zero = AcquireOptions {
        keep_alive: Some(KeepAlive::For(Duration::ZERO)),
        ..Default::default()
    };
    drop(pool.acquire_with(&id("pinned"), zero.clone()).await.unwrap());
    pool.sync().await;
    tokio::time::advance(Duration::from_secs(3600)).await;
    pool.sync().await;
    assert_eq!(loaded(&pool), ["pinned"]);
    // Nor when that request is the one that loads it.
    pool.unload(&id("pinned")).await;
    drop(pool.acquire_with(&id("pinned"), zero).await.unwrap());
    pool.sync().await;
    tokio::time::advance(Duration::from_secs(3600)).await;
    pool.sync().await;
    assert_eq!(loaded(&pool), ["pinned"], "a pinned model's first request expired it");
}

#[tokio::test]
async fn an_unknown_model_and_a_model_bigger_than_the_budget_are_clear_errors() {
    let pool = pool(&[("huge", 2000)], config(EvictionPolicy::Lru, 1000));
    let unknown = pool.acquire(&id("nope")).await.err().expect("unknown");
    assert!(matches!(unknown, PoolError::Store(_)), "{unknown}");
    let huge = pool.acquire(&id("huge")).await.err().expect("too large");
    assert!(matches!(huge, PoolError::TooLarge { .. }), "{huge}");
    assert_eq!(pool.loader().started.load(Ordering::SeqCst), 0, "nothing was loaded");
}

/// A load that must not displace some models (a route's fallback, which leaves the routes'
/// first models alone) evicts the policy's next choice instead, and is refused at once
/// when only the protected models could make room.
#[tokio::test]
async fn a_load_never_evicts_the_models_it_protects() {
    let pool = pool(
        &[("primary", 300), ("other", 300), ("fallback", 300)],
        config(EvictionPolicy::Lru, 600),
    );
    use_in_order(&pool, &["primary", "other"]).await;
    // LRU alone would evict "primary", the least recent.
    let protect = AcquireOptions {
        protect: vec![id("primary")],
        ..Default::default()
    };
    drop(pool.acquire_with(&id("fallback"), protect.clone()).await.unwrap());
    assert_eq!(evictions(&pool, "primary", EvictionReason::Budget), 0);
    assert_eq!(evictions(&pool, "other", EvictionReason::Budget), 1);
    let mut now = loaded(&pool);
    now.sort();
    assert_eq!(now, ["fallback", "primary"]);
    // With "fallback" protected too, "other" finds no room it may take: as a fallback, it
    // is refused at once instead of holding up the queue for memory.
    let both = AcquireOptions {
        protect: vec![id("primary"), id("fallback")],
        ..Default::default()
    };
    let refused = pool.acquire_with(&id("other"), both).await;
    assert!(matches!(refused, Err(PoolError::Busy { .. })), "{:?}", refused.err());
    assert_eq!(pool.totals().waiting, 0);
    assert_eq!(evictions(&pool, "primary", EvictionReason::Budget), 0);
}

/// A LoRA adapter loaded for a model is counted with it (`Lease::charge`): the pool's
/// bytes grow by the adapter's, an idle model leaves when the budget is then exceeded
/// (never the model in use), and the bytes go with the model when it unloads.
#[tokio::test]
async fn an_adapters_bytes_count_with_its_model_and_push_idle_models_out() {
    let pool = pool(&[("base", 300), ("other", 300)], config(EvictionPolicy::Lru, 700));
    use_in_order(&pool, &["other"]).await;
    let base = pool.acquire(&id("base")).await.unwrap();
    assert_eq!(pool.totals().bytes_in_use, 600 * MIB);
    base.charge(50 * MIB);
    pool.sync().await;
    assert_eq!(pool.totals().bytes_in_use, 650 * MIB);
    assert_eq!(loaded(&pool).len(), 2, "it still fits");
    // Another adapter: over the budget; the idle model leaves, the leased one stays.
    base.charge(100 * MIB);
    pool.sync().await;
    assert_eq!(loaded(&pool), ["base"]);
    assert_eq!(evictions(&pool, "other", EvictionReason::Budget), 1);
    assert_eq!(pool.totals().bytes_in_use, 450 * MIB);
    drop(base);
    assert!(pool.unload(&id("base")).await);
    assert_eq!(pool.totals().bytes_in_use, 0);
}
