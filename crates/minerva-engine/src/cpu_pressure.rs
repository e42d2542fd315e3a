//! Whether work outside the compute budget is waiting for the cores.
//!
//! The budget ([`crate::compute`]) shares the cores among forward passes, but the
//! process does other CPU work too (HTTP, JSON, the embedding cache, the registry), and so
//! does the rest of the machine. A pass that uses every core beside such work has its
//! threads preempted, and llama.cpp's threads wait for a preempted one at a spinning
//! barrier after every operation: a client flooding cached embedding requests (no pass at
//! all) made a busy chat model decode at 0.03x of its speed alone on two cores. A pass on
//! fewer threads than cores leaves the other work a core and is not stalled by it.
//!
//! The signal is Linux's pressure stall information for the CPU (`/proc/pressure/cpu`,
//! the "some" line): the time during which at least one runnable task waited for a core.
//! It is read at most every [`EVERY`], and the share of the time since the last reading
//! that was stalled decides, with hysteresis: above [`CONTENDED`] the cores count as
//! contended, below [`FREE`] as free again. Two threads of a lone pass on two cores,
//! with their server streaming tokens to 8 clients, stall 2 % of the time; beside the
//! cached-embedding flood, 73–81 %. Without the file (kernels without PSI), the cores
//! never count as contended and shares are as before.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The stall counter is read at most this often.
const EVERY: Duration = Duration::from_millis(50);

/// Stalled share of the time above which the cores count as contended.
const CONTENDED: f64 = 0.10;

/// Stalled share of the time below which contended cores count as free again.
const FREE: f64 = 0.05;

/// Reads the total time, in microseconds, that some task waited for a core.
pub(crate) type Source = fn() -> Option<u64>;

/// The contention state, re-read from its source when it is old.
pub(crate) struct CpuPressure {
    source: Option<Source>,
    /// The last reading: when, and the counter then.
    last: Mutex<Option<(Instant, u64)>>,
    contended: AtomicBool,
}

impl CpuPressure {
    /// The machine's pressure stall information.
    pub(crate) fn system() -> Self {
        Self::from_source(Some(read_proc))
    }

    /// No signal: the cores never count as contended.
    #[cfg(test)]
    pub(crate) fn none() -> Self {
        Self::from_source(None)
    }

    pub(crate) fn from_source(source: Option<Source>) -> Self {
        Self {
            source,
            last: Mutex::new(None),
            contended: AtomicBool::new(false),
        }
    }

    /// Whether work outside the budget waits for the cores now. Reads the counter if the
    /// last reading is older than [`EVERY`] and no other thread is reading it.
    pub(crate) fn contended(&self, now: Instant) -> bool {
        if let Some(read) = self.source
            && let Ok(mut last) = self.last.try_lock()
        {
            let due = last.is_none_or(|(at, _)| now.saturating_duration_since(at) >= EVERY);
            if due && let Some(total) = read() {
                self.observe(&mut last, now, total);
            }
        }
        self.contended.load(Ordering::Relaxed)
    }

    fn observe(&self, last: &mut Option<(Instant, u64)>, now: Instant, total: u64) {
        if let Some((at, before)) = *last {
            let window = now.saturating_duration_since(at).as_micros() as f64;
            if window > 0.0 {
                let stalled = total.saturating_sub(before) as f64 / window;
                let was = self.contended.load(Ordering::Relaxed);
                let is = if was { stalled > FREE } else { stalled > CONTENDED };
                self.contended.store(is, Ordering::Relaxed);
            }
        }
        *last = Some((now, total));
    }
}

/// The "some" total of `/proc/pressure/cpu`.
fn read_proc() -> Option<u64> {
    parse(&std::fs::read_to_string("/proc/pressure/cpu").ok()?)
}

fn parse(text: &str) -> Option<u64> {
    text.lines()
        .find(|line| line.starts_with("some "))?
        .split_whitespace()
        .find_map(|field| field.strip_prefix("total="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use super::*;

    static STALLED_US: AtomicU64 = AtomicU64::new(0);

    fn fake() -> Option<u64> {
        Some(STALLED_US.load(Ordering::SeqCst))
    }

    #[test]
    fn stalls_above_a_tenth_of_the_time_mean_contended_until_they_fall_below_a_twentieth() {
        let pressure = CpuPressure::from_source(Some(fake));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let stall = |ms: u64| STALLED_US.fetch_add(ms * 1000, Ordering::SeqCst);
        assert!(!pressure.contended(at(0)), "one reading is no window");
        stall(4); // 8 % of 50 ms: below the threshold
        assert!(!pressure.contended(at(50)));
        stall(30); // 60 %: the flood beside a pass
        assert!(!pressure.contended(at(60)), "read at most every 50 ms");
        assert!(pressure.contended(at(100)));
        stall(4); // 8 %: still above the level that frees them
        assert!(pressure.contended(at(150)));
        stall(1); // 2 %: a lone pass streaming to its clients
        assert!(!pressure.contended(at(200)));
    }

    #[test]
    fn the_stall_counter_is_the_some_line_total() {
        let text = "some avg10=0.27 avg60=2.01 avg300=15.12 total=16190099245\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse(text), Some(16_190_099_245));
        assert_eq!(parse("full avg10=0.00 total=5\n"), None);
        assert!(!CpuPressure::none().contended(Instant::now()));
    }

    #[test]
    fn threads_outnumbering_the_cores_are_seen_as_contention() {
        if read_proc().is_none() {
            eprintln!("no /proc/pressure/cpu on this kernel: nothing to read");
            return;
        }
        let pressure = CpuPressure::system();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let stop = Arc::new(AtomicBool::new(false));
        let hogs: Vec<_> = (0..2 * cores + 1)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = false;
        while !seen && Instant::now() < deadline {
            std::thread::sleep(EVERY);
            seen = pressure.contended(Instant::now());
        }
        stop.store(true, Ordering::Relaxed);
        for hog in hogs {
            hog.join().unwrap();
        }
        assert!(
            seen,
            "{} spinning threads on {cores} cores were not seen as contention",
            2 * cores + 1
        );
    }
}
