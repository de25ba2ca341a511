//! TileDB 2.30's thread pool waits for its tasks by calling `sched_yield`
//! in a loop (`ThreadPool::wait`, `wait_all_status`). A query waiting on
//! storage keeps its thread spinning for as long as the I/O takes: a
//! `perf` profile of a cold 1 GiB read from S3 put over half of the
//! daemon's CPU in that loop, taken from the object store client and the
//! readers on the same cores.
//!
//! This module defines `sched_yield` in the executable, so the dynamic
//! linker binds libtiledb's calls (and everyone else's) to it: the first
//! few yields of a run are real ones, so short waits stay short, and from
//! then on each call sleeps briefly instead. A run is a series of calls
//! from one thread less than [`RUN_GAP`] apart; TileDB's loop calls it
//! every few microseconds, anything else far less often.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Real yields at the start of a run before naps begin: a task that
/// finishes within them (most compute tasks) is picked up at once.
const SPIN_YIELDS: u32 = 8;

/// One nap. A wait this long is on I/O (a storage read is a millisecond
/// or more), so a nap adds a few percent to it at most.
const NAP: Duration = Duration::from_micros(50);

/// Calls further apart than this start a new run.
const RUN_GAP: Duration = Duration::from_millis(1);

static NAPS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Calls in the current run, and when the last one was made.
    static RUN: Cell<(u32, Option<Instant>)> = const { Cell::new((0, None)) };
}

/// How many yields became naps, over the life of the process.
pub fn naps() -> u64 {
    NAPS.load(Ordering::Relaxed)
}

/// Whether symbol lookups in this process find this module's
/// `sched_yield`, as libtiledb's calls do: false when the executable does
/// not export it (the symbol is then only used from within the executable).
pub fn interposed() -> bool {
    // SAFETY: a lookup by a NUL-terminated name in the global scope.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"sched_yield".as_ptr()) };
    std::ptr::eq(found, sched_yield as *const libc::c_void)
}

/// The run after a call at `now`, given the run before it: the number
/// of calls in it and the time of the last.
fn next_run(run: (u32, Option<Instant>), now: Instant) -> (u32, Option<Instant>) {
    match run {
        (calls, Some(last)) if now.saturating_duration_since(last) < RUN_GAP => (calls.saturating_add(1), Some(now)),
        _ => (1, Some(now)),
    }
}

/// Called in place of libc's `sched_yield`; the same contract: always
/// succeeds (returns 0).
#[unsafe(no_mangle)]
pub extern "C" fn sched_yield() -> libc::c_int {
    let now = Instant::now();
    // Threads being torn down have no state left: they yield for real.
    let calls = RUN
        .try_with(|run| {
            let next = next_run(run.get(), now);
            run.set(next);
            next.0
        })
        .unwrap_or(0);
    if calls <= SPIN_YIELDS {
        // SAFETY: the raw system call takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_sched_yield) };
    } else {
        NAPS.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(NAP);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_exports_the_yield_libtiledb_calls() {
        assert!(interposed(), "sched_yield is not taken from the executable");
    }

    #[test]
    fn calls_close_together_make_one_run_and_a_pause_starts_another() {
        let t0 = Instant::now();
        let mut run = next_run((0, None), t0);
        assert_eq!(run.0, 1);
        for i in 1..20u32 {
            run = next_run(run, t0 + Duration::from_micros(5 * i as u64));
        }
        assert_eq!(run.0, 20);
        let later = t0 + Duration::from_micros(100) + RUN_GAP;
        assert_eq!(next_run(run, later).0, 1);
    }

    #[test]
    fn a_spinning_caller_naps_after_the_first_yields() {
        // Its own thread, so the run is this loop's alone.
        let napped = std::thread::spawn(|| {
            let before = naps();
            for _ in 0..SPIN_YIELDS + 5 {
                // SAFETY: no arguments; the call binds to this module's definition.
                unsafe { libc::sched_yield() };
            }
            naps() - before
        })
        .join()
        .unwrap();
        // Other tests' threads may nap meanwhile: at least this loop's five.
        assert!(napped >= 5, "{napped} naps");
    }
}
