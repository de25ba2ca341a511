//! TileDB 2.30's thread pool waits for its tasks by calling `sched_yield`
//! in a loop (`ThreadPool::wait`, `wait_all_status`). A query waiting on
//! storage keeps its thread spinning for as long as the I/O takes: a
//! `perf` profile of a cold 1 GiB read from S3 put over half of the
//! daemon's CPU in that loop, taken from the object store client and the
//! readers on the same cores.
//!
//! This module defines `sched_yield` in the executable, so the dynamic
//! linker binds libtiledb's calls (and everyone else's) to it. On a thread
//! running a read query ([`NapsWhileReading`]), the first few yields of a
//! spin are real ones, so short waits stay short, and from then on each
//! call sleeps instead, a little longer each time (50 us doubling up to
//! 800 us: a cold 1 GiB read from S3 took 4,000 naps instead of 27,000,
//! and 1.6-1.7 s of CPU instead of 1.7-2.05 s). Everywhere else a yield
//! stays a yield: writes wait mostly on compute tasks (filtering tiles),
//! where a nap only adds latency, and other callers (spin locks' and
//! channels' back-off) are left as their authors tuned them.
//!
//! A spin is a series of calls from one thread, each made within
//! [`SPIN_GAP`] of the end of the one before. The gap is generous because
//! TileDB's loop at times runs one of its queued tasks between two calls:
//! with 50 us, spins kept restarting and a cold 1 GiB read from S3 took
//! 2.2 s of CPU instead of 1.6-2.0 s.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Real yields at the start of a spin before naps begin: a task that
/// finishes within them (most compute tasks) is picked up at once.
const SPIN_YIELDS: u32 = 8;

/// A spin's first nap; about twice that with the kernel's default timer
/// slack. A wait this long is on I/O (a local storage read takes a
/// millisecond or more), so a nap adds a few percent to it at most.
const NAP: Duration = Duration::from_micros(50);

/// Naps double from one to the next up to this. A GET of a few MiB waits
/// tens of milliseconds, which 50 us naps cut into hundreds of context
/// switches; by the time naps are this long, the wait has lasted over
/// 1.5 ms, and one more nap adds half that at most.
const LONGEST_NAP: Duration = Duration::from_micros(800);

/// A call made longer than this after the end of the previous one starts
/// a new spin.
const SPIN_GAP: Duration = Duration::from_millis(1);

static NAPS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Calls in the current spin, and when the last one ended.
    static SPIN: Cell<(u32, Option<Instant>)> = const { Cell::new((0, None)) };
    /// Whether this thread's spins may nap.
    static NAPPING: Cell<bool> = const { Cell::new(false) };
}

/// While alive, the spins of this thread nap: made around a read query.
pub(crate) struct NapsWhileReading {
    was: bool,
}

impl NapsWhileReading {
    /// Also starts a new spin: a query's first waits begin with real
    /// yields, however long the thread's last wait napped.
    pub(crate) fn start() -> Self {
        SPIN.with(|spin| spin.set((0, None)));
        NapsWhileReading {
            was: NAPPING.with(|n| n.replace(true)),
        }
    }
}

impl Drop for NapsWhileReading {
    fn drop(&mut self) {
        NAPPING.with(|n| n.set(self.was));
    }
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

/// The number of calls in the spin a call made at `now` belongs to,
/// given the spin before it (its calls, and when the last one ended).
fn calls_in_spin(spin: (u32, Option<Instant>), now: Instant) -> u32 {
    match spin {
        (calls, Some(ended)) if now.saturating_duration_since(ended) <= SPIN_GAP => calls.saturating_add(1),
        _ => 1,
    }
}

/// The `n`th nap of a spin (from 1): [`NAP`], doubling from one nap to
/// the next up to [`LONGEST_NAP`].
fn nap_length(n: u32) -> Duration {
    // 2^16 naps is past any longest nap worth having: no overflow.
    NAP.saturating_mul(1 << n.saturating_sub(1).min(16)).min(LONGEST_NAP)
}

/// libc's `sched_yield`, which this module's definition hides.
fn real_yield() {
    // SAFETY: the raw system call takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_sched_yield) };
}

/// Called in place of libc's `sched_yield`; the same contract: always
/// succeeds (returns 0).
#[unsafe(no_mangle)]
pub extern "C" fn sched_yield() -> libc::c_int {
    // Threads being torn down have no state left: they yield for real.
    if !NAPPING.try_with(Cell::get).unwrap_or(false) {
        real_yield();
        return 0;
    }
    let calls = SPIN
        .try_with(|spin| calls_in_spin(spin.get(), Instant::now()))
        .unwrap_or(0);
    if calls <= SPIN_YIELDS {
        real_yield();
    } else {
        NAPS.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(nap_length(calls - SPIN_YIELDS));
    }
    // The gap to the next call is measured from here, so a long nap or a
    // slow yield on a busy machine does not end the spin.
    let _ = SPIN.try_with(|spin| spin.set((calls, Some(Instant::now()))));
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
    fn calls_close_together_make_one_spin_and_a_pause_starts_another() {
        let t0 = Instant::now();
        assert_eq!(calls_in_spin((0, None), t0), 1);
        let mut spin = (1, Some(t0));
        for i in 1..20u64 {
            let now = t0 + Duration::from_micros(i);
            spin = (calls_in_spin(spin, now), Some(now));
        }
        assert_eq!(spin.0, 20);
        let later = spin.1.unwrap() + SPIN_GAP + Duration::from_micros(1);
        assert_eq!(calls_in_spin(spin, later), 1);
    }

    #[test]
    fn a_spinning_caller_naps_after_the_first_yields() {
        // Its own thread, so the spin is this loop's alone. A preemption
        // between two calls starts a new spin, so loop until the naps show
        // (five after eight yields in a row), within a bound.
        let (spin, napped) = std::thread::spawn(|| {
            let _reading = NapsWhileReading::start();
            let before = naps();
            let spin = || SPIN.with(|s| s.get().0);
            let mut calls = 0;
            while spin() < SPIN_YIELDS + 5 && calls < 100_000 {
                // SAFETY: no arguments; the call binds to this module's definition.
                unsafe { libc::sched_yield() };
                calls += 1;
            }
            (spin(), naps() - before)
        })
        .join()
        .unwrap();
        assert_eq!(spin, SPIN_YIELDS + 5, "no spin of {} calls in 100,000", SPIN_YIELDS + 5);
        // Other tests' threads may nap meanwhile: at least this spin's five.
        assert!(napped >= 5, "{napped} naps");
    }

    #[test]
    fn a_new_read_starts_a_new_spin() {
        let spin = std::thread::spawn(|| {
            SPIN.with(|s| s.set((SPIN_YIELDS + 20, Some(Instant::now()))));
            let _reading = NapsWhileReading::start();
            SPIN.with(|s| s.get())
        })
        .join()
        .unwrap();
        assert_eq!(spin, (0, None));
    }

    #[test]
    fn naps_double_up_to_the_longest() {
        let lengths: Vec<u128> = (1..=7).map(|n| nap_length(n).as_micros()).collect();
        assert_eq!(lengths, [50, 100, 200, 400, 800, 800, 800]);
        assert_eq!(nap_length(u32::MAX), LONGEST_NAP);
    }

    #[test]
    fn outside_a_read_every_yield_is_a_real_one() {
        let spin = std::thread::spawn(|| {
            for _ in 0..1000 {
                // SAFETY: no arguments; the call binds to this module's definition.
                unsafe { libc::sched_yield() };
            }
            // No spin was even counted, so none could nap.
            SPIN.with(|s| s.get().0)
        })
        .join()
        .unwrap();
        assert_eq!(spin, 0);
    }
}
