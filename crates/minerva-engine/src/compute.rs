//! One compute budget for every model of the process.
//!
//! A forward pass uses every core it is given: llama.cpp splits each operation of the
//! graph over its threads and joins them at a spinning barrier after each one (hundreds
//! per pass), Candle's matrix products split over Rayon's pool. Two passes at once on the
//! same cores therefore do not share them, they collapse: a thread spinning at a barrier
//! waits for one that the kernel has descheduled to run the other pass. The same holds
//! for any CPU work beside a pass, such as sampling from another model's logits. And
//! thread teams that outnumber the cores make OpenMP stop spinning between parallel
//! regions altogether, so that even a lone busy model decodes at sleep-and-wake speed (a
//! second loaded, idle model made the first one 4.5x slower that way).
//!
//! So every forward pass of every model runs inside a turn, and so does the work that
//! follows it on the same thread (a language model's scheduler samples from the logits
//! inside the same turn). A turn has a width: [`exclusive`] takes every core (a pass
//! whose thread count is fixed), [`share`] an even share of them among the threads
//! asking for shares (llama.cpp, which takes a thread count per pass, and the encoder,
//! whose kernels run in a Rayon pool of the share's width: [`share_rayon`]). Turns
//! never hold more threads than there are cores, so nothing collapses; alone, a share is
//! every core, and two busy language models on two cores each decode on one at once
//! rather than taking turns on both, which does more work, since a pass gains far less
//! than twice from twice the threads; so do an encoder batch and a busy language model.
//! Waiting turns are granted by fair share of time, not by arrival: each thread that
//! computes is charged the time its turns took (times the share of the cores they held),
//! and the waiter charged least goes next (as Linux's CFS schedules tasks). Two busy
//! models thus split the cores by time, whatever the length of their passes — a language
//! model's 10 ms decode beside an encoder's 100 ms batch gets its half, not one turn in
//! two. Turns nest: a pass inside a turn of the same thread runs at once, on that turn's
//! cores.
//!
//! Work outside the budget counts too: while other runnable work waits for a core
//! ([`crate::cpu_pressure`]: a client flooding the embedding cache, another program), a
//! share counts it as one more sharer, so a lone pass on two cores runs on one and leaves
//! the other to that work, instead of stalling at its barriers whenever the kernel
//! preempts one of its threads.
//!
//! Between turns no engine thread spins: llama.cpp is built without OpenMP and starts its
//! threads for each pass (ggml's own thread pool, tens of microseconds against passes of
//! milliseconds), so an idle model costs no CPU at all.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::cpu_pressure::CpuPressure;

/// Who has the cores and who waits for them.
struct Cores {
    /// Cores of the process (the widest turn).
    cores: usize,
    state: Mutex<State>,
    granted: Condvar,
    /// Whether work outside the budget waits for the cores.
    pressure: CpuPressure,
}

/// How long the cores stay free for a thread that just ended a turn while every waiter
/// is charged more than it: a language model's scheduler asks again microseconds after
/// its turn, and handing the cores to a waiter in that gap would give the turn to
/// whoever waits, however much more time they have had.
const GRACE: Duration = Duration::from_millis(2);

/// How long after its last turn a thread still counts as one that shares the cores: a
/// busy model's scheduler asks again within microseconds, and a share computed in that
/// gap without it would hand the other model every core, turn after turn.
const RECENT: Duration = Duration::from_millis(10);

/// What a turn asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Every core (a pass whose thread count is fixed, such as the encoder's).
    All,
    /// A fair share of the cores among the threads that ask for shares now: all of them
    /// when it is alone (a llama.cpp pass, which takes its thread count per pass).
    Share,
}

#[derive(Default)]
struct State {
    /// Cores the running turns use.
    in_use: usize,
    /// Threads running a turn, with its width and what they asked for.
    running: Vec<(ThreadId, usize, Ask)>,
    /// The cores this thread's last turn had stay free for it until then (see [`GRACE`]).
    held_for: Option<(ThreadId, Instant, usize)>,
    /// Threads waiting for a turn, with the time they are charged and what they ask for.
    waiting: Vec<(ThreadId, u64, Ask)>,
    /// When each thread that took shares lately ended its last one.
    recent: HashMap<ThreadId, Instant>,
    /// Time charged to each thread that computed lately, in nanoseconds of all the cores.
    charged: HashMap<ThreadId, u64>,
    /// The least charge of a turn granted lately: a thread charged less (new, or back
    /// after a pause) starts here, so it cannot claim the cores for the time it did not
    /// want them.
    floor: u64,
    stats: ComputeStats,
}

impl State {
    /// The cores a turn of `me` asking `ask` gets now: all of them, or for a share, the
    /// cores split evenly among the threads running, waiting for or lately ending shares,
    /// and the work outside the budget when it is `pressed` for cores (at least one).
    fn width(&self, me: ThreadId, ask: Ask, cores: usize, now: Instant, pressed: bool) -> usize {
        match ask {
            Ask::All => cores,
            Ask::Share => {
                let others = self
                    .running
                    .iter()
                    .map(|&(t, _, a)| (t, a))
                    .chain(self.waiting.iter().map(|&(t, _, a)| (t, a)))
                    .filter(|&(_, a)| a == Ask::Share)
                    .map(|(t, _)| t)
                    .chain(
                        self.recent
                            .iter()
                            .filter(|&(_, &ended)| now.saturating_duration_since(ended) < RECENT)
                            .map(|(&t, _)| t),
                    )
                    .filter(|&t| t != me)
                    .collect::<std::collections::HashSet<_>>()
                    .len();
                (cores / (others + 1 + usize::from(pressed))).max(1)
            }
        }
    }

    /// Whether `me`, charged `charge`, may take `width` cores now.
    fn may_take(&self, me: ThreadId, charge: u64, width: usize, cores: usize, now: Instant) -> bool {
        let held = match self.held_for {
            Some((thread, until, held)) if thread != me && now < until => held,
            _ => 0,
        };
        if self.in_use + width + held > cores {
            return false;
        }
        self.waiting.iter().all(|&(thread, c, _)| thread == me || c >= charge)
    }

    fn take(&mut self, me: ThreadId, charge: u64, width: usize, ask: Ask, pressed: bool) {
        if matches!(self.held_for, Some((thread, _, _)) if thread == me) {
            self.held_for = None;
        }
        if !self.running.is_empty() {
            self.stats.concurrent += 1;
        }
        if ask == Ask::Share && pressed {
            self.stats.pressed += 1;
        }
        self.in_use += width;
        self.running.push((me, width, ask));
        self.waiting.retain(|&(thread, _, _)| thread != me);
        self.floor = self.floor.max(charge);
        self.stats.turns += 1;
    }
}

impl Cores {
    /// A budget of `cores` that sees no work outside it (the tests' budgets).
    #[cfg(test)]
    fn new(cores: usize) -> Self {
        Self::with_pressure(cores, CpuPressure::none())
    }

    fn with_pressure(cores: usize, pressure: CpuPressure) -> Self {
        Self {
            cores: cores.max(1),
            state: Mutex::new(State::default()),
            granted: Condvar::new(),
            pressure,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a turn; returns the charge this thread starts it with and the cores it
    /// got.
    fn acquire(&self, me: ThreadId, ask: Ask) -> (u64, usize) {
        // Read before the lock: the reading (a small file, every 50 ms) is no one else's wait.
        let pressed = ask == Ask::Share && self.pressure.contended(Instant::now());
        let mut state = self.lock();
        let charge = state.charged.get(&me).copied().unwrap_or(0).max(state.floor);
        let now = Instant::now();
        let width = state.width(me, ask, self.cores, now, pressed);
        if state.may_take(me, charge, width, self.cores, now) {
            state.take(me, charge, width, ask, pressed);
            return (charge, width);
        }
        let asked = Instant::now();
        state.waiting.push((me, charge, ask));
        let width = loop {
            let now = Instant::now();
            // Threads come and go while this one waits: its share follows them.
            let width = state.width(me, ask, self.cores, now, pressed);
            if state.may_take(me, charge, width, self.cores, now) {
                break width;
            }
            state = match state.held_for {
                Some((_, until, _)) if until > now => {
                    self.granted
                        .wait_timeout(state, until - now)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
                _ => self
                    .granted
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            };
        };
        state.take(me, charge, width, ask, pressed);
        state.stats.contended += 1;
        state.stats.waited += asked.elapsed();
        (charge, width)
    }

    /// Ends a turn of `width` cores that took `took`; it is charged its share of the
    /// cores' time. The waiter charged least goes next, or this thread if it asks again
    /// within [`GRACE`] while it is charged less than every waiter.
    fn release(&self, me: ThreadId, charge: u64, width: usize, took: Duration) {
        let mut state = self.lock();
        let used = took.as_nanos().saturating_mul(width as u128) / self.cores as u128;
        let charged = charge.saturating_add(u64::try_from(used).unwrap_or(u64::MAX));
        state.charged.insert(me, charged);
        state.in_use -= width;
        if let Some(at) = state.running.iter().position(|&(t, _, _)| t == me) {
            let (_, _, ask) = state.running.swap_remove(at);
            let now = Instant::now();
            state
                .recent
                .retain(|_, &mut ended| now.saturating_duration_since(ended) < RECENT);
            if ask == Ask::Share {
                state.recent.insert(me, now);
            }
        }
        let least_waiting = state.waiting.iter().map(|&(_, c, _)| c).min();
        state.held_for = match least_waiting {
            Some(least) if least > charged => Some((me, Instant::now() + GRACE, width)),
            _ => None,
        };
        // Threads charged no more than the floor start at the floor anyway.
        let floor = state.floor;
        state.charged.retain(|_, c| *c > floor);
        drop(state);
        self.granted.notify_all();
    }

    /// Runs `work` in a turn of this thread (at once inside one, with its cores).
    fn run<R>(&self, ask: Ask, work: impl FnOnce(usize) -> R) -> R {
        let held = HOLDING.with(Cell::get);
        if held > 0 {
            return work(held);
        }
        let me = std::thread::current().id();
        let (charge, width) = self.acquire(me, ask);
        HOLDING.with(|h| h.set(width));
        let _turn = Turn {
            cores: self,
            me,
            charge,
            width,
            started: Instant::now(),
        };
        work(width)
    }
}

impl Cores {
    /// [`Cores::run`] of a share whose `work` splits over Rayon's pool (see [`share_rayon`]).
    fn run_rayon<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        self.run(Ask::Share, |width| {
            // Every core: Rayon's global pool, which has a thread per core. Only one turn
            // of every core runs at a time, so it is this turn's alone.
            if width >= self.cores {
                return work();
            }
            match Lent::new(width) {
                Some(lent) => lent.pool().install(|| {
                    // The work runs on one of the pool's threads: a pass it nests runs
                    // inside this turn, as on the asking thread.
                    let outer = HOLDING.with(|h| h.replace(width));
                    let _restore = Restore(outer);
                    work()
                }),
                // No threads to be had: the global pool, as before shares (a rare
                // oversubscription beats failing the request).
                None => work(),
            }
        })
    }
}

static CORES: LazyLock<Cores> = LazyLock::new(|| Cores::with_pressure(default_threads(), CpuPressure::system()));

thread_local! {
    /// The cores this thread's turn has now (0: it holds no turn).
    static HOLDING: Cell<usize> = const { Cell::new(0) };
}

/// Ends the turn even when the work panics.
struct Turn<'a> {
    cores: &'a Cores,
    me: ThreadId,
    charge: u64,
    width: usize,
    started: Instant,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(0));
        self.cores
            .release(self.me, self.charge, self.width, self.started.elapsed());
    }
}

/// Runs `work` (a forward pass, or a pass and what the same thread does with its
/// result) with the process's cores to itself, when its fair share says it is its turn.
/// Inside a turn of the same thread it runs at once.
pub fn exclusive<R>(work: impl FnOnce() -> R) -> R {
    CORES.run(Ask::All, |_| work())
}

/// Runs `work` on a fair share of the process's cores, when its fair share of time says
/// it is its turn: `work` gets the number of cores it may use, and must use no more
/// threads than that. Alone it gets every core; while other threads ask for shares too,
/// the cores are split evenly and the turns run side by side (two busy language models
/// on two cores each decode on one, at once, instead of taking turns on both: a pass
/// gains less than twice from twice the threads). Inside a turn of the same thread it runs
/// at once, with that turn's cores.
pub fn share<R>(work: impl FnOnce(usize) -> R) -> R {
    CORES.run(Ask::Share, work)
}

/// [`share`], or [`exclusive`] (every core, passed as the width) when `fixed` says the
/// work's thread count cannot follow a share: a session created with a thread count it
/// cannot change, whose passes nested in a narrower share would run more threads than
/// the turn has cores.
pub fn share_unless_fixed<R>(fixed: bool, work: impl FnOnce(usize) -> R) -> R {
    CORES.run(if fixed { Ask::All } else { Ask::Share }, work)
}

/// [`share`] for work that splits over Rayon's pool (the encoder's kernels): `work` runs
/// in a Rayon pool of as many threads as the share has cores — the global pool when it
/// has them all, else a pool of that width lent to this turn alone (see [`Lent`]), kept
/// asleep between turns. So an encoder batch beside a busy language model runs on half the cores at
/// once with it, instead of the two taking turns on all of them.
pub fn share_rayon<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    CORES.run_rayon(work)
}

/// Puts a thread's turn back as it was, even when the work panics.
struct Restore(usize);

impl Drop for Restore {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(self.0));
    }
}

/// A Rayon pool of some width, lent to one turn of [`share_rayon`] and given back when
/// dropped. Each turn has a pool of its own: two turns in one pool would not only share
/// its threads, a thread of it waiting inside one turn's parallel loop may run the other
/// turn's work on its stack, and wait there for a lock the first turn holds.
struct Lent {
    width: usize,
    pool: Option<rayon::ThreadPool>,
}

/// Pools no turn uses now, by width: built on demand, asleep while idle (at most one per
/// turn that ran at once, so no more than the cores).
static IDLE_POOLS: LazyLock<Mutex<HashMap<usize, Vec<rayon::ThreadPool>>>> = LazyLock::new(Mutex::default);

impl Lent {
    /// An idle pool of `width` threads, or a new one; `None` when its threads cannot be
    /// started.
    fn new(width: usize) -> Option<Self> {
        let idle = IDLE_POOLS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_mut(&width)
            .and_then(Vec::pop);
        let pool = match idle {
            Some(pool) => pool,
            None => match rayon::ThreadPoolBuilder::new()
                .num_threads(width)
                .thread_name(move |i| format!("share{width}-{i}"))
                .build()
            {
                Ok(pool) => pool,
                Err(e) => {
                    tracing::warn!(width, error = %e, "could not start a pool for a share of the cores");
                    return None;
                }
            },
        };
        Some(Self {
            width,
            pool: Some(pool),
        })
    }

    fn pool(&self) -> &rayon::ThreadPool {
        self.pool.as_ref().expect("a lent pool is held until dropped")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            IDLE_POOLS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(self.width)
                .or_default()
                .push(pool);
        }
    }
}

/// How the cores have been shared since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ComputeStats {
    /// Turns run.
    pub turns: u64,
    /// Turns that had to wait for another thread's turn.
    pub contended: u64,
    /// Turns that ran beside another (shares of the cores).
    pub concurrent: u64,
    /// Shares taken while work outside the budget waited for the cores (each counted it
    /// as one more sharer).
    pub pressed: u64,
    /// Time turns spent waiting for the cores, in total.
    pub waited: Duration,
}

/// The counters of [`exclusive`] and [`share`].
pub fn stats() -> ComputeStats {
    CORES.lock().stats
}

/// The cores [`exclusive`] grants (a [`share`] gets this many while it is alone).
pub fn cores() -> usize {
    CORES.cores
}

/// Threads a forward pass should use when nobody said: every core this process may
/// run on (its CPU affinity and cgroup quota included).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    use super::*;

    fn spin(d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn turns_of_different_threads_never_overlap_and_nest_on_one() {
        let inside = Arc::new(AtomicUsize::new(0));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (inside, overlaps) = (Arc::clone(&inside), Arc::clone(&overlaps));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        exclusive(|| {
                            if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                                overlaps.fetch_add(1, Ordering::SeqCst);
                            }
                            // A pass inside the turn (the engine's decode inside the
                            // scheduler's turn) does not wait for itself.
                            exclusive(|| std::hint::black_box((0..2000u64).sum::<u64>()));
                            inside.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
        assert!(stats().turns >= 800);
    }

    #[test]
    fn two_busy_threads_share_the_cores_by_time_not_by_turns() {
        // One thread's turns take 1 ms, the other's 8 ms, and both ask again as soon as
        // a turn ends. Turn by turn the long one would get 8/9 of the time; by fair
        // share each gets about half.
        let stop = Arc::new(AtomicBool::new(false));
        let busy_ns = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let threads: Vec<_> = [Duration::from_millis(1), Duration::from_millis(8)]
            .into_iter()
            .enumerate()
            .map(|(i, length)| {
                let (stop, busy_ns) = (Arc::clone(&stop), Arc::clone(&busy_ns));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        exclusive(|| spin(length));
                        busy_ns[i].fetch_add(length.as_nanos() as u64, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        // Run until both together have had 600 ms of turns.
        while busy_ns.iter().map(|b| b.load(Ordering::SeqCst)).sum::<u64>() < 600_000_000 {
            // Polls without taking a core from the two.
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        let (short, long) = (busy_ns[0].load(Ordering::SeqCst), busy_ns[1].load(Ordering::SeqCst));
        let share = short as f64 / (short + long) as f64;
        assert!(
            (0.3..=0.7).contains(&share),
            "the short-turn thread got {:.0} % of the time",
            share * 100.0
        );
    }

    #[test]
    fn a_lone_share_leaves_a_core_to_outside_work_while_it_waits_for_one() {
        // The stall counter of a machine where other work waits all the time: every
        // reading adds more stalled time than any window between two readings lasts.
        static STALLED_US: AtomicU64 = AtomicU64::new(0);
        static FLOODED: AtomicBool = AtomicBool::new(true);
        fn read() -> Option<u64> {
            if FLOODED.load(Ordering::SeqCst) {
                STALLED_US.fetch_add(1_000_000_000, Ordering::SeqCst);
            }
            Some(STALLED_US.load(Ordering::SeqCst))
        }
        let cores = Cores::with_pressure(2, CpuPressure::from_source(Some(read)));
        let until = |width: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while cores.run(Ask::Share, |w| w) != width {
                assert!(Instant::now() < deadline, "a lone share never got {width} cores");
            }
        };
        assert_eq!(cores.run(Ask::Share, |w| w), 2, "one reading is no window yet");
        until(1);
        assert_eq!(
            cores.run(Ask::All, |w| w),
            2,
            "a pass of fixed threads still gets them all"
        );
        assert!(cores.lock().stats.pressed > 0);
        FLOODED.store(false, Ordering::SeqCst);
        until(2);
    }

    #[test]
    fn busy_sharers_split_the_cores_and_run_side_by_side_and_never_beside_a_whole_turn() {
        // Two cores; two threads asking for shares, one asking for all of them now and
        // then (the encoder). Each turn spins 1 ms and records the cores in use meanwhile.
        let cores = Arc::new(Cores::new(2));
        assert_eq!(cores.run(Ask::Share, |width| width), 2, "alone, a share is every core");
        let in_use = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let narrow = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = [Ask::Share, Ask::Share, Ask::All]
            .into_iter()
            .map(|ask| {
                let (cores, in_use, most, narrow) = (
                    Arc::clone(&cores),
                    Arc::clone(&in_use),
                    Arc::clone(&most),
                    Arc::clone(&narrow),
                );
                std::thread::spawn(move || {
                    let turns = if ask == Ask::All { 10 } else { 200 };
                    for _ in 0..turns {
                        cores.run(ask, |width| {
                            let now = in_use.fetch_add(width, Ordering::SeqCst) + width;
                            most.fetch_max(now, Ordering::SeqCst);
                            if width == 1 {
                                narrow.fetch_add(1, Ordering::SeqCst);
                            }
                            // A pass inside the turn runs at once, on the same cores.
                            assert_eq!(cores.run(Ask::Share, |inner| inner), width);
                            spin(Duration::from_millis(1));
                            in_use.fetch_sub(width, Ordering::SeqCst);
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2, "more threads than cores at once");
        let stats = cores.lock().stats;
        assert_eq!(stats.turns, 411);
        // The two sharers ran side by side on one core each for most of their turns.
        assert!(stats.concurrent >= 100, "{stats:?}");
        assert!(
            narrow.load(Ordering::SeqCst) >= 200,
            "{} turns on one core",
            narrow.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn rayon_work_beside_a_busy_sharer_runs_in_a_pool_of_its_share() {
        use rayon::prelude::*;
        // Two cores; one thread busy with 1 ms shares (a language model), another with
        // Rayon work (the encoder). Beside the busy one the Rayon work gets one core,
        // and runs on a pool of one thread: its parallel loops stay on one thread.
        let cores = Arc::new(Cores::new(2));
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let (cores, stop) = (Arc::clone(&cores), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    cores.run(Ask::Share, |_| spin(Duration::from_millis(1)));
                }
            })
        };
        let mut narrow = 0;
        for _ in 0..100 {
            let (pool_threads, used, width) = cores.run_rayon(|| {
                let used: std::collections::HashSet<_> = (0..64)
                    .into_par_iter()
                    .map(|_| {
                        spin(Duration::from_micros(20));
                        std::thread::current().id()
                    })
                    .collect();
                // A pass nested in the work runs at once, in the same turn: it gets the
                // turn's width.
                let width = cores.run(Ask::Share, |width| width);
                (rayon::current_num_threads(), used.len(), width)
            });
            assert!(used <= pool_threads, "{used} threads in a pool of {pool_threads}");
            assert!(width == 1 || width == 2, "a turn of {width} cores");
            if width == 1 {
                assert_eq!(pool_threads, 1, "a one-core turn ran in a pool of {pool_threads}");
                narrow += 1;
            }
        }
        stop.store(true, Ordering::SeqCst);
        busy.join().unwrap();
        let stats = cores.lock().stats;
        assert!(narrow >= 50, "only {narrow} of 100 turns ran on one core");
        assert!(stats.concurrent >= 50, "{stats:?}");
    }

    #[test]
    fn turns_at_once_get_pools_of_their_own_and_give_them_back() {
        // Two turns of one width at once never share a pool (a waiting thread of a shared
        // pool could run the other turn's work on its stack); one after the other, the
        // second reuses the first's pool and its threads.
        let width = 7; // no other test uses pools this wide
        let threads_of = |lent: &Lent| -> std::collections::HashSet<_> {
            lent.pool()
                .broadcast(|_| std::thread::current().id())
                .into_iter()
                .collect()
        };
        let (a, b) = (Lent::new(width).unwrap(), Lent::new(width).unwrap());
        let (threads_a, threads_b) = (threads_of(&a), threads_of(&b));
        assert_eq!(threads_a.len(), width);
        assert!(
            threads_a.is_disjoint(&threads_b),
            "two turns at once were lent one pool"
        );
        drop(a);
        let again = Lent::new(width).unwrap();
        assert_eq!(threads_of(&again), threads_a, "the idle pool was not reused");
        drop((again, b));
        assert_eq!(IDLE_POOLS.lock().unwrap()[&width].len(), 2);
    }
}
