//! The memory-budgeted pool on real models: eviction order of each policy (and the
//! cost-aware policy's choice between models of different sizes), leases that block
//! eviction, two models taking turns under a one-model budget, single-flight loads,
//! preloads that displace only what they may, a budget too small, keep-alive on virtual
//! time, and memory pressure from a simulated system. (Memory returned after an unload is
//! `unload_memory.rs`, a process of its own.)
//!
//! Three copies of all-MiniLM-L6-v2 (hard links of the real files under the ids a, b, c)
//! make three models of the same size, so a budget of two estimates holds two of them.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minerva_pool::{
    AcquireOptions, Budget, Displace, EvictionPolicy, EvictionReason, KeepAlive, ModelPool, PoolConfig, PoolError,
};
use minerva_store::{ModelId, ModelStore};
use minerva_workers::pressure::{MemorySource, SystemMemory};

const EMBED: &str = "all-minilm-l6-v2";

/// The pool measures a load as the growth of the process's resident memory, so the tests
/// of this binary run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Links (or copies) `from` into `to`, recursively.
fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            link_tree(&entry.path(), &target);
        } else if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A models directory with three same-sized embedding models `a`, `b`, `c`.
fn three_models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for id in ["a", "b", "c"] {
        link_tree(&common::models_dir(&[EMBED]).join(EMBED), &dir.path().join(id));
    }
    dir
}

fn id(s: &str) -> ModelId {
    ModelId::new(s).unwrap()
}

/// The estimated footprint of one of the copies.
fn one_model_bytes(dir: &Path) -> u64 {
    let store = ModelStore::new(dir);
    let entry = store.resolve(&id("a")).unwrap();
    minerva_pool::estimate::estimate(&entry, PoolConfig::new(1, 512).session_shape())
        .unwrap()
        .total()
}

fn config(policy: EvictionPolicy, budget: u64) -> PoolConfig {
    PoolConfig {
        budget: Budget::Fixed(budget),
        policy,
        keep_alive: KeepAlive::Forever,
        wait_timeout: Duration::from_secs(30),
        ..PoolConfig::new(1, 512)
    }
}

fn loaded(pool: &ModelPool) -> Vec<String> {
    pool.loaded().iter().map(|m| m.id.to_string()).collect()
}

/// Uses the models in `order` one after the other (each lease ends before the next use).
async fn use_in_order(pool: &ModelPool, order: &[&str]) {
    for name in order {
        drop(pool.acquire(&id(name)).await.unwrap());
    }
}

async fn victim_after(policy: EvictionPolicy, order: &[&str]) -> String {
    let dir = three_models();
    let pool = ModelPool::new(
        ModelStore::new(dir.path()),
        config(policy, one_model_bytes(dir.path()) * 2),
    );
    use_in_order(&pool, order).await;
    assert_eq!(pool.loaded().len(), 2, "the budget holds two models");
    drop(pool.acquire(&id("c")).await.unwrap());
    let now = loaded(&pool);
    assert_eq!(now.len(), 2, "{now:?} {:?}", pool.totals());
    assert!(now.contains(&"c".to_owned()));
    let evicted: Vec<_> = pool.stats().into_iter().filter(|(_, s)| s.evictions > 0).collect();
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].1.evictions_by_reason.get(&EvictionReason::Budget), Some(&1));
    evicted[0].0.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_evicts_its_own_victim() {
    let _serial = SERIAL.lock().await;
    // a is loaded first and used three times; b is loaded second and used last.
    let order = ["a", "b", "a", "a", "b"];
    assert_eq!(
        victim_after(EvictionPolicy::Lru, &order).await,
        "a",
        "least recently used"
    );
    assert_eq!(victim_after(EvictionPolicy::Fifo, &order).await, "a", "first loaded");
    assert_eq!(victim_after(EvictionPolicy::Lfu, &order).await, "b", "least used");
    assert_eq!(
        victim_after(EvictionPolicy::CostAware, &order).await,
        "b",
        "least credit"
    );
    // Where recency and frequency agree, so do the policies.
    let order = ["a", "b", "b", "a", "a"];
    assert_eq!(victim_after(EvictionPolicy::Lru, &order).await, "b");
    assert_eq!(victim_after(EvictionPolicy::Fifo, &order).await, "a");
    assert_eq!(
        victim_after(EvictionPolicy::CountLru { max_models: 2 }, &order).await,
        "b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_model_is_never_evicted_and_waiters_get_room_when_a_lease_ends() {
    let _serial = SERIAL.lock().await;
    let dir = three_models();
    let pool = Arc::new(ModelPool::new(
        ModelStore::new(dir.path()),
        PoolConfig {
            wait_timeout: Duration::from_secs(2),
            ..config(EvictionPolicy::Lru, one_model_bytes(dir.path()) * 2)
        },
    ));
    let a = pool.acquire(&id("a")).await.unwrap();
    let b = pool.acquire(&id("b")).await.unwrap();
    // Both in use: c cannot load, and its request times out waiting for room.
    let err = pool
        .acquire(&id("c"))
        .await
        .err()
        .expect("no room while a and b are in use");
    assert!(matches!(err, PoolError::Busy { .. }), "{err}");
    assert_eq!(loaded(&pool), ["a", "b"]);
    // A preload never waits and never evicts a model in use.
    assert!(matches!(pool.preload(&id("c")).await, Err(PoolError::Busy { .. })));

    let waiter = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.acquire(&id("c")).await.map(|l| l.id.to_string()) })
    };
    while pool.totals().waiting == 0 {
        tokio::task::yield_now().await;
    }
    // b's lease ends: the queued request gets b's place; a, still leased, stays.
    drop(b);
    assert_eq!(waiter.await.unwrap().unwrap(), "c");
    assert_eq!(loaded(&pool), ["a", "c"]);
    let stats: std::collections::HashMap<_, _> = pool.stats().into_iter().collect();
    assert_eq!(stats[&id("a")].evictions, 0);
    assert_eq!(stats[&id("b")].evictions, 1);
    drop(a);
}

/// [`config`] with one sequence and no prefix cache.
fn one_slot_config(policy: EvictionPolicy, budget: u64) -> PoolConfig {
    PoolConfig {
        parallel: 1,
        prefix_cache_tokens: 0,
        ..config(policy, budget)
    }
}

/// The footprint the pool reserves for model `name` of `dir` under [`one_slot_config`].
fn estimated(dir: &Path, name: &str) -> u64 {
    let entry = ModelStore::new(dir).resolve(&id(name)).unwrap();
    let shape = one_slot_config(EvictionPolicy::Lru, 0).session_shape();
    minerva_pool::estimate::estimate(&entry, shape).unwrap().total()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_aware_evicts_one_big_model_where_lru_evicts_a_small_one_with_it() {
    let _serial = SERIAL.lock().await;
    // A small embedding model and two copies of a bigger language model; the budget holds
    // the small one and one big one.
    let dir = tempfile::tempdir().unwrap();
    link_tree(&common::models_dir(&[EMBED]).join(EMBED), &dir.path().join("small"));
    for big in ["big1.gguf", "big2.gguf"] {
        std::fs::hard_link(
            common::models_dir(&[EMBED]).join("gemma-3-270m.gguf"),
            dir.path().join(big),
        )
        .or_else(|_| {
            std::fs::copy(
                common::models_dir(&[EMBED]).join("gemma-3-270m.gguf"),
                dir.path().join(big),
            )
            .map(drop)
        })
        .unwrap();
    }
    let budget = estimated(dir.path(), "small") + estimated(dir.path(), "big1") + (1 << 20);
    let mut kept = Vec::new();
    for policy in [EvictionPolicy::Lru, EvictionPolicy::CostAware] {
        let pool = ModelPool::new(ModelStore::new(dir.path()), one_slot_config(policy, budget));
        use_in_order(&pool, &["small", "big1"]).await;
        assert_eq!(loaded(&pool), ["big1", "small"], "both fit");
        // big2 needs the room of big1 (small alone is not enough). LRU takes small first,
        // as the least recently used, and then big1 as well.
        drop(pool.acquire(&id("big2")).await.unwrap());
        assert!(pool.totals().peak_bytes <= budget, "{:?}", pool.totals());
        kept.push(loaded(&pool));
    }
    assert_eq!(kept[0], ["big2"], "LRU");
    assert_eq!(kept[1], ["big2", "small"], "cost-aware keeps the small model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_taking_turns_under_a_one_model_budget_all_get_served() {
    let _serial = SERIAL.lock().await;
    let dir = three_models();
    let budget = one_model_bytes(dir.path()) * 3 / 2;
    let pool = Arc::new(ModelPool::new(
        ModelStore::new(dir.path()),
        config(EvictionPolicy::CostAware, budget),
    ));
    // Sixteen concurrent requests alternating between a and b: each model must load,
    // serve the requests that waited for it, and make way for the other (no livelock in
    // which each evicts the other before it is used).
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let name = if i % 2 == 0 { "a" } else { "b" };
                let lease = pool.acquire(&id(name)).await?;
                tokio::task::yield_now().await;
                drop(lease);
                Ok::<_, PoolError>(())
            })
        })
        .collect();
    let all = async {
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every request served within a minute");
    let totals = pool.totals();
    assert!(totals.peak_bytes <= budget, "{totals:?}");
    assert_eq!(totals.hits + totals.misses, 16);
    // Each load serves the requests that waited for it: two models that took turns one
    // request at a time would load 16 times.
    assert!(totals.loads <= 8, "the models thrashed: {totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preload_displaces_only_the_models_it_may_and_requests_are_announced_as_they_end() {
    let _serial = SERIAL.lock().await;
    let dir = three_models();
    let pool = ModelPool::new(
        ModelStore::new(dir.path()),
        config(EvictionPolicy::Lru, one_model_bytes(dir.path()) * 2),
    );
    let mut ended = pool.requests();
    use_in_order(&pool, &["a", "b"]).await;
    assert_eq!(ended.recv().await.unwrap(), id("a"));
    assert_eq!(ended.recv().await.unwrap(), id("b"));
    // c may displace nothing: no room, and a preload does not wait.
    let err = pool
        .preload_displacing(&id("c"), Displace::Only(Vec::new()))
        .await
        .err();
    assert!(matches!(err, Some(PoolError::Busy { .. })), "{err:?}");
    // c may displace b (the most recently used): b leaves, a stays.
    drop(
        pool.preload_displacing(&id("c"), Displace::Only(vec![id("b")]))
            .await
            .unwrap(),
    );
    assert_eq!(loaded(&pool), ["a", "c"]);
    // A preload is not a request: nothing announced.
    assert!(ended.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_room_does_not_hold_up_requests_for_loaded_models() {
    let _serial = SERIAL.lock().await;
    let dir = three_models();
    let pool = Arc::new(ModelPool::new(
        ModelStore::new(dir.path()),
        config(EvictionPolicy::Lru, one_model_bytes(dir.path()) * 2),
    ));
    let a = pool.acquire(&id("a")).await.unwrap();
    let b = pool.acquire(&id("b")).await.unwrap();
    let waiter = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.acquire(&id("c")).await.map(|l| l.id.to_string()) })
    };
    while pool.totals().waiting == 0 {
        tokio::task::yield_now().await;
    }
    // c waits for a lease to end (LRU chose a to leave for it); a second request for b,
    // loaded and not chosen, is served meanwhile.
    let again = tokio::time::timeout(Duration::from_secs(10), pool.acquire(&id("b")))
        .await
        .expect("a loaded model is served while another request waits for room")
        .unwrap();
    assert!(!waiter.is_finished());
    drop((again, b));
    assert_eq!(waiter.await.unwrap().unwrap(), "c");
    assert_eq!(loaded(&pool), ["a", "c"]);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_load() {
    let _serial = SERIAL.lock().await;
    let dir = three_models();
    let pool = Arc::new(ModelPool::new(
        ModelStore::new(dir.path()),
        config(EvictionPolicy::Lru, 4 << 30),
    ));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.acquire(&id("a")).await.map(|l| l.bytes) })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = &pool.stats()[0].1;
    assert_eq!(stats.loads, 1, "{stats:?}");
    assert_eq!(stats.hits + stats.misses, 4);
    assert!(stats.misses >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_budget_shrinks_a_language_models_kv_cache_and_only_a_model_that_cannot_fit_is_refused() {
    let _serial = SERIAL.lock().await;
    const SMOL: &str = "smollm2-135m-instruct";
    let store = ModelStore::new(common::models_dir(&[EMBED]));
    let serving = PoolConfig::new(1, 4096);
    let entry = store.resolve(&id(SMOL)).unwrap();
    let full = minerva_pool::estimate::estimate(&entry, serving.session_shape()).unwrap();
    let full_shape = full.shape.expect("a language model's session");
    // 60 MiB short of the serving session: the model loads with fewer KV cells and slots.
    let budget = full.total() - (60 << 20);
    let pool = ModelPool::new(
        ModelStore::new(common::models_dir(&[EMBED])),
        PoolConfig {
            budget: Budget::Fixed(budget),
            ..serving.clone()
        },
    );
    let lease = pool
        .acquire(&id(SMOL))
        .await
        .expect("the model fits once its KV shrinks");
    let shape = lease.estimate.shape.expect("a language model's session");
    assert!(lease.estimate.total() <= budget, "{:?} over {budget}", lease.estimate);
    assert!(shape.n_ctx < full_shape.n_ctx, "{shape:?} vs {full_shape:?}");
    assert!(shape.n_seq_max < full_shape.n_seq_max, "{shape:?} vs {full_shape:?}");
    assert!(pool.totals().peak_bytes <= budget, "{:?}", pool.totals());
    // And it serves: a short greedy generation within its smaller context.
    let llm = lease.into_llm().map_err(|_| "not an LLM").unwrap();
    assert!(llm.n_ctx() <= shape.n_ctx);
    let prompt = llm.model().tokenize("Once upon a time", true, false).unwrap();
    let options = minerva_engine::generate::GenerateOptions {
        max_tokens: 8,
        constraint: None,
        context_shift: None,
        n_ctx: None,
        stop: vec![],
        sampling: minerva_engine::sampling::SamplingParams::default(),
    };
    let mut events = llm.submit(prompt, options);
    let mut generated = None;
    while let Some(event) = events.recv().await {
        if let minerva_workers::GenerationEvent::Done(result) = event {
            generated = Some(result.expect("the shrunk session generates"));
        }
    }
    assert_eq!(generated.expect("a result").tokens.len(), 8);
    drop(llm);

    // Below the weights plus one sequence's smallest context: refused, with what the
    // smallest session needs (far less than the serving one).
    let tiny = full.weights + (4 << 20);
    let pool = ModelPool::new(
        ModelStore::new(common::models_dir(&[EMBED])),
        PoolConfig {
            budget: Budget::Fixed(tiny),
            ..serving
        },
    );
    match pool.acquire(&id(SMOL)).await {
        Err(PoolError::TooLarge { needed, budget, .. }) => {
            assert_eq!(budget, tiny);
            assert!(
                needed > tiny && needed < full.total(),
                "needs {needed} of {}",
                full.total()
            );
        }
        other => panic!("expected TooLarge, got {:?}", other.map(|l| l.id.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_bigger_than_the_budget_is_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let dir = three_models();
    let pool = ModelPool::new(ModelStore::new(dir.path()), config(EvictionPolicy::Lru, 10 << 20));
    let err = pool.acquire(&id("a")).await.err().expect("too large");
    let message = err.to_string();
    assert!(matches!(err, PoolError::TooLarge { .. }), "{message}");
    assert!(
        message.contains("needs") && message.contains(&(10u64 << 20).to_string()),
        "{message}"
    );
    assert!(pool.loaded().is_empty());
    assert_eq!(pool.totals().bytes_in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_leaves_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.gguf"), b"GGUF but not really").unwrap();
    let pool = ModelPool::new(ModelStore::new(dir.path()), config(EvictionPolicy::Lru, 1 << 30));
    assert!(pool.acquire(&id("broken")).await.is_err());
    assert!(pool.loaded().is_empty());
    assert_eq!(pool.totals().bytes_in_use, 0);
}

#[tokio::test]
async fn keep_alive_unloads_idle_models_on_virtual_time() {
    let _serial = SERIAL.lock().await;
    let dir = three_models();
    let pool = ModelPool::new(
        ModelStore::new(dir.path()),
        PoolConfig {
            keep_alive: KeepAlive::For(Duration::from_secs(300)),
            ..config(EvictionPolicy::Lru, 4 << 30)
        },
    );
    // Loads run on real time; the keep-alive is then checked on paused time.
    let a = pool.acquire(&id("a")).await.unwrap();
    let b = pool
        .acquire_with(
            &id("b"),
            AcquireOptions {
                keep_alive: Some(KeepAlive::Forever),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let c = pool
        .acquire_with(
            &id("c"),
            AcquireOptions {
                keep_alive: Some(KeepAlive::For(Duration::ZERO)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::pause();
    drop((a, b));
    drop(c);
    settle().await;
    assert_eq!(
        loaded(&pool),
        ["a", "b"],
        "keep_alive 0 unloads as soon as the request ends"
    );
    tokio::time::advance(Duration::from_secs(299)).await;
    settle().await;
    assert_eq!(loaded(&pool), ["a", "b"]);
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(loaded(&pool), ["b"], "a's five minutes ran out; b stays forever");
    let a_stats = pool.stats().into_iter().find(|(i, _)| i.as_str() == "a").unwrap().1;
    assert_eq!(a_stats.evictions_by_reason.get(&EvictionReason::Idle), Some(&1));
    // A new request restarts the clock.
    tokio::time::resume();
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// System memory the test sets by hand.
struct SimulatedMemory(Mutex<SystemMemory>);

impl MemorySource for SimulatedMemory {
    fn read(&self) -> std::io::Result<SystemMemory> {
        Ok(*self.0.lock().unwrap())
    }
}

#[tokio::test]
async fn memory_pressure_unloads_idle_models_coldest_first_and_the_budget_follows_the_system() {
    let _serial = SERIAL.lock().await;
    const GIB: u64 = 1 << 30;
    let dir = three_models();
    let memory = Arc::new(SimulatedMemory(Mutex::new(SystemMemory {
        total: 16 * GIB,
        available: 12 * GIB,
    })));
    let pool = ModelPool::with_memory_source(
        ModelStore::new(dir.path()),
        PoolConfig {
            budget: Budget::Dynamic {
                strategy: minerva_workers::pressure::BudgetStrategy::Balanced,
                min: 0,
                max: u64::MAX,
            },
            budget_interval: Duration::from_secs(5),
            keep_alive: KeepAlive::Forever,
            ..PoolConfig::new(1, 512)
        },
        memory.clone(),
    );
    // Balanced keeps 40 % of 16 GiB free: 12 - 6.4 = 5.6 GiB for models.
    assert_eq!(pool.totals().budget_bytes, 12 * GIB - (16 * GIB * 4 / 10));
    use_in_order(&pool, &["a", "b", "a"]).await;
    let held = pool.acquire(&id("c")).await.unwrap();
    tokio::time::pause();
    // 90 % used: b (least recent) then a go; c is in use and stays.
    *memory.0.lock().unwrap() = SystemMemory {
        total: 16 * GIB,
        available: 16 * GIB / 10,
    };
    tokio::time::advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(loaded(&pool), ["c"]);
    let stats: std::collections::HashMap<_, _> = pool.stats().into_iter().collect();
    assert_eq!(
        stats[&id("b")].evictions_by_reason.get(&EvictionReason::Pressure),
        Some(&1)
    );
    assert_eq!(
        stats[&id("a")].evictions_by_reason.get(&EvictionReason::Pressure),
        Some(&1)
    );
    // The budget shrank with the system: what c holds plus nothing (available < reserve).
    assert_eq!(pool.totals().budget_bytes, pool.totals().bytes_in_use);
    drop(held);
    tokio::time::resume();
}
