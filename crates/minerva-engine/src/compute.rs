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
//! So every forward pass of every model runs inside [`exclusive`], and so does the work
//! that follows it on the same thread (a language model's scheduler samples from the
//! logits inside the same turn): one turn at a time on all the cores. Waiting turns are
//! granted by fair share of time, not by arrival: each thread that computes is charged
//! the time its turns took, and the waiter charged least goes next (as Linux's CFS
//! schedules tasks). Two busy models thus split the cores by time, whatever the length of
//! their passes — a language model's 10 ms decode beside an encoder's 100 ms batch gets
//! its half, not one turn in two. Turns nest: a pass inside a turn of the same thread
//! runs at once.
//!
//! Between turns no engine thread spins: llama.cpp is built without OpenMP and starts its
//! threads for each pass (ggml's own thread pool, tens of microseconds against passes of
//! milliseconds), so an idle model costs no CPU at all.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// Who has the cores and who waits for them.
struct Cores {
    state: Mutex<State>,
    granted: Condvar,
}

/// How long the cores stay free for a thread that just ended a turn while every waiter
/// is charged more than it: a language model's scheduler asks again microseconds after
/// its turn, and handing the cores to a waiter in that gap would give the turn to
/// whoever waits, however much more time they have had.
const GRACE: Duration = Duration::from_millis(2);

#[derive(Default)]
struct State {
    /// A turn is running.
    busy: bool,
    /// The cores are kept free for this thread until then (see [`GRACE`]).
    held_for: Option<(ThreadId, Instant)>,
    /// Threads waiting for a turn, with the time they are charged.
    waiting: Vec<(ThreadId, u64)>,
    /// Time charged to each thread that computed lately, in nanoseconds.
    charged: HashMap<ThreadId, u64>,
    /// The least charge of a turn granted lately: a thread charged less (new, or back
    /// after a pause) starts here, so it cannot claim the cores for the time it did not
    /// want them.
    floor: u64,
    stats: ComputeStats,
}

impl State {
    /// Whether `me`, charged `charge`, may take the cores now.
    fn may_take(&self, me: ThreadId, charge: u64, now: Instant) -> bool {
        if self.busy {
            return false;
        }
        if let Some((thread, until)) = self.held_for
            && thread != me
            && now < until
        {
            return false;
        }
        self.waiting.iter().all(|&(thread, c)| thread == me || c >= charge)
    }

    fn take(&mut self, me: ThreadId, charge: u64) {
        self.busy = true;
        self.held_for = None;
        self.waiting.retain(|&(thread, _)| thread != me);
        self.floor = self.floor.max(charge);
        self.stats.turns += 1;
    }
}

impl Cores {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a turn; returns the charge this thread starts it with.
    fn acquire(&self, me: ThreadId) -> u64 {
        let mut state = self.lock();
        let charge = state.charged.get(&me).copied().unwrap_or(0).max(state.floor);
        if state.may_take(me, charge, Instant::now()) {
            state.take(me, charge);
            return charge;
        }
        let asked = Instant::now();
        state.waiting.push((me, charge));
        loop {
            let now = Instant::now();
            if state.may_take(me, charge, now) {
                break;
            }
            state = match state.held_for {
                Some((_, until)) if until > now && !state.busy => {
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
        }
        state.take(me, charge);
        state.stats.contended += 1;
        state.stats.waited += asked.elapsed();
        charge
    }

    /// Ends a turn that took `took`; the waiter charged least goes next, or this thread
    /// if it asks again within [`GRACE`] while it is charged less than every waiter.
    fn release(&self, me: ThreadId, charge: u64, took: Duration) {
        let mut state = self.lock();
        let charged = charge.saturating_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        state.charged.insert(me, charged);
        state.busy = false;
        let least_waiting = state.waiting.iter().map(|&(_, c)| c).min();
        state.held_for = match least_waiting {
            Some(least) if least > charged => Some((me, Instant::now() + GRACE)),
            _ => None,
        };
        // Threads charged no more than the floor start at the floor anyway.
        let floor = state.floor;
        state.charged.retain(|_, c| *c > floor);
        drop(state);
        self.granted.notify_all();
    }
}

static CORES: LazyLock<Cores> = LazyLock::new(|| Cores {
    state: Mutex::new(State::default()),
    granted: Condvar::new(),
});

thread_local! {
    /// Whether this thread holds the cores now.
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

/// Ends the turn even when the work panics.
struct Turn {
    me: ThreadId,
    charge: u64,
    started: Instant,
}

impl Drop for Turn {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(false));
        CORES.release(self.me, self.charge, self.started.elapsed());
    }
}

/// Runs `work` (a forward pass, or a pass and what the same thread does with its
/// result) with the process's cores to itself, when its fair share says it is its turn.
/// Inside a turn of the same thread it runs at once.
pub fn exclusive<R>(work: impl FnOnce() -> R) -> R {
    if HOLDING.with(Cell::get) {
        return work();
    }
    let me = std::thread::current().id();
    let charge = CORES.acquire(me);
    HOLDING.with(|h| h.set(true));
    let _turn = Turn {
        me,
        charge,
        started: Instant::now(),
    };
    work()
}

/// How the cores have been shared since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ComputeStats {
    /// Turns run.
    pub turns: u64,
    /// Turns that had to wait for another thread's turn.
    pub contended: u64,
    /// Time turns spent waiting for the cores, in total.
    pub waited: Duration,
}

/// The counters of [`exclusive`].
pub fn stats() -> ComputeStats {
    CORES.lock().stats
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
}
