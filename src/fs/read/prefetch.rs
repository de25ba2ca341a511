//! Read-ahead for sequential readers: a pure planner per open file, and a
//! small pool of threads that carries the plans out through the cache.
//!
//! The planner watches each read's offset. A read that starts near where
//! the previous one ended (within the current window, since the kernel's
//! own readahead may deliver requests slightly out of order) continues a
//! streak; from the second read of a streak on, the window of bytes to keep
//! loaded ahead of the reader doubles, from one chunk up to the maximum. A
//! streak that starts at the file's start with a bulk read
//! ([`BULK_READ_BYTES`] or more: a whole-file copy) takes the whole window
//! at its second read instead. Near a streak's start the pool cuts jobs
//! no longer than their distance from it, so a window taken at once loads
//! in parallel and its first, small jobs come in first. A read elsewhere
//! ends the streak and the window. Each plan names only bytes
//! not planned before, rounded to whole chunks, and is made only once less
//! than half the window is left ahead, so plans are large. Once the window
//! holds a whole query, plans end on the last multiple of the query size
//! within it and the pool cuts them there: every query in a long read is a
//! full one, so an object store sees the fewest and largest range requests.

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use log::debug;

use super::chunk_cache::ChunkCache;
use super::source::ChunkSource;
use crate::fs::counters::Counters;

/// A streak's first read this large, at the file's start, marks a reader
/// of the whole file in large blocks (`cp`, `cat`, `rsync` and loaders'
/// buffered reads ask 128 KiB or more a time, and the kernel's readahead,
/// raised to 1 MiB when the daemon runs as root, at least doubles that),
/// not one reading a header a few KiB at a time. A loader mapping the file
/// starts the same way (the kernel faults in 1 MiB around an access): if
/// it then reads only the first tensors, up to a window more is read than
/// it asked. Elsewhere in a file such a streak is as likely one tensor
/// read through a mapping, for which a whole window would be waste.
///
/// On an object store one range request streams no faster than the store
/// reads one object (about 80 MB/s from a Garage node), so the reader's
/// speed comes from requests in parallel. Doubling per read, a cold 1 GiB
/// read from Garage passed 64 MiB 330-490 ms after its open (s3fs, which
/// starts five ranges at once: 240-270 ms); with the whole window at once,
/// at a median of 370 ms against 433 ms.
pub const BULK_READ_BYTES: u64 = 256 * 1024;

/// The read-ahead state of one open file. Does no I/O.
#[derive(Debug, Clone)]
pub struct Prefetcher {
    size: u64,
    chunk: u64,
    max_window: u64,
    /// The read-ahead query size, to which large plans are aligned.
    query: u64,
    /// Where a sequential reader's next read would start.
    next: u64,
    /// Bytes to keep loaded ahead of the reader; 0 when not sequential.
    window: u64,
    streak: u32,
    /// Where the current streak started.
    streak_start: u64,
    /// Whether it started with a bulk read.
    bulk: bool,
    /// Everything before this offset has been planned.
    planned_until: u64,
}

impl Prefetcher {
    /// A planner for a file of `size` bytes cached in `chunk`-byte chunks,
    /// reading at most `max_window` bytes ahead, in queries of `query`
    /// bytes (rounded down to whole chunks, as [`PrefetchPool::submit`]
    /// cuts them).
    pub fn new(size: u64, chunk: u64, max_window: u64, query: u64) -> Self {
        let chunk = chunk.max(1);
        Prefetcher {
            size,
            chunk,
            max_window: max_window.max(chunk),
            // Whole chunks, as the pool cuts jobs.
            query: (query / chunk).max(1) * chunk,
            next: 0,
            window: 0,
            streak: 0,
            streak_start: 0,
            bulk: false,
            planned_until: 0,
        }
    }

    /// Where the current streak started: [`PrefetchPool::submit`] cuts a
    /// plan's jobs growing from there.
    pub fn streak_start(&self) -> u64 {
        self.streak_start
    }

    /// Records a read of `len` bytes at `offset` and returns the byte range
    /// to load ahead of it, if any.
    pub fn on_read(&mut self, offset: u64, len: u64) -> Option<Range<u64>> {
        let slack = self.window.max(self.chunk);
        let sequential = offset <= self.next.saturating_add(slack) && offset.saturating_add(slack) >= self.next;
        let end = offset.saturating_add(len).min(self.size);
        if sequential && self.streak > 0 {
            self.streak += 1;
            self.window = if self.bulk {
                self.max_window
            } else {
                (self.window * 2).clamp(self.chunk, self.max_window)
            };
            self.next = self.next.max(end);
        } else {
            self.streak = 1;
            self.streak_start = offset;
            self.bulk = offset == 0 && len >= BULK_READ_BYTES;
            self.window = 0;
            self.next = end;
            self.planned_until = 0;
            return None;
        }
        let round_up = |x: u64| x.div_ceil(self.chunk).saturating_mul(self.chunk).min(self.size);
        // Top up only when less than half the window is left ahead, so each
        // plan (and the queries it becomes) covers half a window or more
        // instead of one chunk per read.
        if self.planned_until > end && self.planned_until - end >= self.window / 2 {
            return None;
        }
        let start = round_up(end).max(self.planned_until);
        // Within the window: on the last query boundary in it, once it
        // holds a query (and the plan would not be empty).
        let reach = end.saturating_add(self.window);
        let on_query = reach / self.query * self.query;
        let stop = if self.window >= self.query && on_query > start && reach < self.size {
            on_query
        } else {
            round_up(reach)
        };
        if stop > start {
            self.planned_until = stop;
            Some(start..stop)
        } else {
            None
        }
    }
}

struct Job {
    src: Arc<dyn ChunkSource>,
    chunks: Range<u64>,
}

impl Job {
    fn bytes(&self) -> u64 {
        (self.chunks.end - self.chunks.start).saturating_mul(self.src.chunk_bytes())
    }
}

/// Bytes of jobs being loaded, held under a limit: a job is one query, and
/// the memory a query takes follows its size. A job larger than the limit
/// (one chunk of an array with large tiles) runs alone.
struct InFlight {
    limit: u64,
    bytes: Mutex<u64>,
    freed: Condvar,
}

impl InFlight {
    fn new(limit: u64) -> Self {
        InFlight {
            limit,
            bytes: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self, n: u64) {
        let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        while *bytes > 0 && bytes.saturating_add(n) > self.limit {
            bytes = self.freed.wait(bytes).unwrap_or_else(PoisonError::into_inner);
        }
        *bytes += n;
    }

    fn release(&self, n: u64) {
        let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        *bytes = bytes.saturating_sub(n);
        self.freed.notify_all();
    }
}

/// Threads that load planned ranges into the cache in the background.
pub struct PrefetchPool {
    sender: Mutex<Option<SyncSender<Job>>>,
    workers: Vec<JoinHandle<()>>,
    fetch_bytes: u64,
    counters: Arc<Counters>,
}

impl PrefetchPool {
    /// `threads` workers, each loading up to `fetch_bytes` per query and
    /// all together at most `threads * fetch_bytes` at a time, with at
    /// most `queue` jobs waiting (more are dropped and counted).
    pub fn new(
        cache: Arc<ChunkCache>,
        counters: Arc<Counters>,
        threads: usize,
        fetch_bytes: u64,
        queue: usize,
    ) -> Self {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let in_flight = Arc::new(InFlight::new(fetch_bytes.saturating_mul(threads as u64)));
        let workers = (0..threads)
            .map(|i| {
                let (rx, cache, in_flight) = (rx.clone(), cache.clone(), in_flight.clone());
                std::thread::Builder::new()
                    .name(format!("modelfs-prefetch-{i}"))
                    .spawn(move || worker(&rx, &cache, &in_flight))
                    .expect("spawn a prefetch thread")
            })
            .collect();
        PrefetchPool {
            sender: Mutex::new(Some(tx)),
            workers,
            fetch_bytes,
            counters,
        }
    }

    /// Queues the loading of byte range `bytes` of `src`, read ahead of a
    /// streak that started at `streak_start`, split into jobs of at most
    /// the fetch size so several workers share a long range. Jobs are cut
    /// at multiples of the fetch size within the file, so plans that end
    /// there make only full jobs past their first; near the streak's start
    /// a job is no longer than the distance from it, so the first ones,
    /// small, come in first.
    pub fn submit(&self, src: &Arc<dyn ChunkSource>, bytes: Range<u64>, streak_start: u64) {
        let cb = src.chunk_bytes();
        let first = bytes.start / cb;
        let end = bytes.end.div_ceil(cb);
        let per_job = (self.fetch_bytes / cb).max(1);
        let guard = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = guard.as_ref() else { return };
        for chunks in job_ranges(first, end, per_job, streak_start / cb) {
            let n = chunks.end - chunks.start;
            let job = Job {
                src: src.clone(),
                chunks,
            };
            match tx.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    Counters::add(&self.counters.prefetch_dropped, n);
                }
            }
        }
    }
}

/// Chunks `first..end` cut at the multiples of `per_job`, each job at most
/// as long as the distance from chunk `origin` (one chunk at least).
fn job_ranges(first: u64, end: u64, per_job: u64, origin: u64) -> impl Iterator<Item = Range<u64>> {
    let per_job = per_job.max(1);
    let mut c = first;
    std::iter::from_fn(move || {
        if c >= end {
            return None;
        }
        let grown = c.saturating_add(c.saturating_sub(origin).max(1));
        let stop = (c / per_job)
            .saturating_add(1)
            .saturating_mul(per_job)
            .min(grown)
            .min(end);
        let job = c..stop;
        c = stop;
        Some(job)
    })
}

fn worker(rx: &Mutex<Receiver<Job>>, cache: &ChunkCache, in_flight: &InFlight) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
            rx.recv()
        };
        let Ok(job) = job else { return };
        let bytes = job.bytes();
        in_flight.acquire(bytes);
        let loaded = cache.prefetch(job.src.as_ref(), job.chunks.start, job.chunks.end);
        in_flight.release(bytes);
        if let Err(e) = loaded {
            // The reader that reaches these bytes reports the error.
            debug!(
                "read-ahead of {} chunks {:?} failed: {e}",
                job.src.describe(),
                job.chunks
            );
        }
    }
}

impl Drop for PrefetchPool {
    fn drop(&mut self) {
        self.sender.lock().unwrap_or_else(PoisonError::into_inner).take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn queries_in_flight_stay_within_the_limit_and_a_larger_one_runs_alone() {
        use std::sync::mpsc::channel;
        use std::time::Duration;
        let gate = Arc::new(InFlight::new(8 * MIB));
        gate.acquire(4 * MIB);
        gate.acquire(4 * MIB);
        let (tx, rx) = channel();
        let waiting = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.acquire(20 * MIB);
                tx.send(*gate.bytes.lock().unwrap()).unwrap();
                gate.release(20 * MIB);
            })
        };
        // Over the limit while others run: it waits.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        gate.release(4 * MIB);
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        gate.release(4 * MIB);
        // Alone, it runs, whatever its size.
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), 20 * MIB);
        waiting.join().unwrap();
        assert_eq!(*gate.bytes.lock().unwrap(), 0);
    }

    #[test]
    fn one_read_plans_nothing() {
        let mut p = Prefetcher::new(100 * MIB, MIB, 8 * MIB, MIB);
        assert_eq!(p.on_read(0, 4096), None);
    }

    #[test]
    fn sequential_reads_grow_the_window_to_the_limit() {
        let mut p = Prefetcher::new(1000 * MIB, MIB, 8 * MIB, MIB);
        let step = 128 * 1024;
        let mut planned = Vec::new();
        for i in 0..200u64 {
            if let Some(r) = p.on_read(i * step, step) {
                planned.push(r);
            }
        }
        // Contiguous, non-overlapping, chunk-aligned plans.
        for w in planned.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(planned.iter().all(|r| r.start % MIB == 0 && r.end % MIB == 0));
        let reader_end = 200 * step;
        let ahead = planned.last().unwrap().end - reader_end;
        assert!(ahead <= 8 * MIB + MIB, "{ahead}");
        assert!(ahead >= 4 * MIB - step, "{ahead}");
        // Once the window is full, plans come in half-window pieces.
        assert!(
            planned.iter().rev().take(3).all(|r| r.end - r.start >= 4 * MIB),
            "{planned:?}"
        );
    }

    #[test]
    fn a_long_read_is_planned_and_cut_in_whole_queries() {
        // An object store's settings (1 MiB chunks, 8 MiB queries, 96 MiB
        // read-ahead), and chunks of 3 MiB tiles that do not divide the
        // query (cut at 6 MiB); a reader of 128 KiB reads, the file ending
        // off any boundary.
        for (chunk, query) in [(MIB, 8 * MIB), (3 * MIB, 8 * MIB)] {
            let size = 1000 * MIB + 12345;
            let mut p = Prefetcher::new(size, chunk, 96 * MIB, query);
            let per_job = query / chunk;
            let step = 128 * 1024;
            let mut planned = Vec::new();
            for i in 0..=size / step {
                if let Some(r) = p.on_read(i * step, step) {
                    // Never past the window.
                    assert!(r.end <= (i + 1) * step + 96 * MIB + chunk, "{r:?} at read {i}");
                    planned.push(r);
                }
            }
            for w in planned.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            assert_eq!(planned.last().unwrap().end, size);
            let full = planned.iter().skip_while(|r| r.end - r.start < query);
            let jobs: Vec<_> = full
                .flat_map(|r| job_ranges(r.start / chunk, r.end.div_ceil(chunk), per_job, 0))
                .collect();
            assert!(jobs.len() > 50, "{planned:?}");
            // Past the first plan of a full window, every job but the
            // file's last is a whole query on a query boundary.
            let (last, jobs) = jobs.split_last().unwrap();
            assert!(
                jobs.iter()
                    .skip(1)
                    .all(|j| j.start % per_job == 0 && j.end - j.start == per_job),
                "{chunk}: {jobs:?}"
            );
            assert_eq!(last.end, size.div_ceil(chunk));
        }
    }

    #[test]
    fn jobs_are_cut_on_multiples_of_the_query() {
        let cut = |a, b| job_ranges(a, b, 8, 0).collect::<Vec<_>>();
        // Near the streak's start (chunk 0) a job is also no longer than
        // its distance from it: 3..6.
        assert_eq!(cut(3, 30), vec![3..6, 6..8, 8..16, 16..24, 24..30]);
        assert_eq!(cut(16, 32), vec![16..24, 24..32]);
        assert_eq!(cut(5, 6), vec![5..6]);
        assert!(cut(6, 6).is_empty());
    }

    #[test]
    fn jobs_near_the_streak_start_grow_from_it() {
        let cut = |a, b, origin| job_ranges(a, b, 8, origin).collect::<Vec<_>>();
        assert_eq!(cut(1, 40, 0), vec![1..2, 2..4, 4..8, 8..16, 16..24, 24..32, 32..40]);
        // A streak that started at chunk 100.
        assert_eq!(
            cut(100, 120, 100),
            vec![100..101, 101..102, 102..104, 104..108, 108..112, 112..120]
        );
        // Far from it, whole queries.
        assert_eq!(cut(200, 216, 100), vec![200..208, 208..216]);
    }

    #[test]
    fn a_bulk_streak_takes_the_whole_window_at_its_second_read() {
        let mut p = Prefetcher::new(1000 * MIB, 256 * 1024, 96 * MIB, 8 * MIB);
        assert_eq!(p.on_read(0, MIB), None);
        assert_eq!(p.on_read(MIB, MIB), Some(2 * MIB..96 * MIB));
        assert_eq!(p.streak_start(), 0);
        // Topped up once half the window is read.
        assert_eq!(p.on_read(2 * MIB, MIB), None);
        assert_eq!(p.on_read(49 * MIB, MIB), Some(96 * MIB..144 * MIB));
        // A streak of small reads (a header parsed) still starts small, and
        // so does one of large reads elsewhere (a tensor through a mapping).
        let mut p = Prefetcher::new(1000 * MIB, 256 * 1024, 96 * MIB, 8 * MIB);
        assert_eq!(p.on_read(0, 16 * 1024), None);
        let r = p.on_read(16 * 1024, 16 * 1024).unwrap();
        assert!(r.end <= 512 * 1024, "{r:?}");
        assert_eq!(p.on_read(300 * MIB, MIB), None);
        let r = p.on_read(301 * MIB, MIB).unwrap();
        assert!(r.end <= 303 * MIB, "{r:?}");
    }

    #[test]
    fn a_seek_resets_the_window() {
        let mut p = Prefetcher::new(1000 * MIB, MIB, 8 * MIB, MIB);
        for i in 0..20 {
            p.on_read(i * MIB, MIB);
        }
        assert_eq!(p.on_read(500 * MIB, 4096), None);
        let r = p.on_read(500 * MIB + 4096, 4096).unwrap();
        assert_eq!(r, 501 * MIB..502 * MIB);
    }

    #[test]
    fn never_plans_past_the_end() {
        let mut p = Prefetcher::new(3 * MIB + 5, MIB, 64 * MIB, 8 * MIB);
        for i in 0..10 {
            if let Some(r) = p.on_read(i * 65536, 65536) {
                assert!(r.end <= 3 * MIB + 5);
            }
        }
    }

    #[test]
    fn slightly_reordered_readahead_stays_sequential() {
        let mut p = Prefetcher::new(1000 * MIB, MIB, 8 * MIB, MIB);
        let k = 128 * 1024;
        for off in [0, k, 3 * k, 2 * k, 4 * k, 6 * k, 5 * k, 7 * k] {
            p.on_read(off, k);
        }
        assert!(p.window > 0);
    }

    proptest::proptest! {
        #[test]
        fn plans_stay_in_the_file_and_never_repeat(
            size in 0u64..(64 * MIB),
            reads in proptest::collection::vec((0u64..(70 * MIB), 0u64..(2 * MIB)), 1..50),
            query in proptest::sample::select(vec![256 * 1024, MIB, 3 * MIB + 7, 8 * MIB]),
        ) {
            let mut p = Prefetcher::new(size, 256 * 1024, 8 * MIB, query);
            let mut last_end = 0u64;
            for (off, len) in reads {
                if let Some(r) = p.on_read(off, len) {
                    proptest::prop_assert!(r.start < r.end && r.end <= size);
                    proptest::prop_assert!(r.end - r.start <= 8 * MIB + 512 * 1024);
                    if p.streak > 2 {
                        proptest::prop_assert!(r.start >= last_end.min(r.start));
                    }
                    last_end = r.end;
                }
            }
        }
    }
}
