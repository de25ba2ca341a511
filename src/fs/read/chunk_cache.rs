//! A chunk cache shared by every open file of a mount, bounded in bytes.
//!
//! Keys are `(file version id, chunk index)`; a chunk holds whole storage
//! tiles. A slot is either `Loading` (one thread is reading it from TileDB;
//! others wait on the condvar instead of reading it again) or `Ready`.
//! Ready slots are evicted least recently used first once the cache holds
//! more than its limit. The lock is never held across a read from the
//! source. Chunks read together in one query share one buffer, which is
//! freed when the last of them is evicted and no reader holds it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::data::Data;
use super::source::ChunkSource;
use crate::fs::counters::Counters;
use crate::fs::error::{CoreError, Result};

type Key = (u64, u64);

/// The bytes of one chunk: a window into a buffer read in one query.
#[derive(Clone)]
pub struct Chunk {
    buf: Arc<Vec<u8>>,
    start: usize,
    len: usize,
}

impl Chunk {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

enum Slot {
    Loading,
    Ready { chunk: Chunk, tick: u64 },
}

#[derive(Default)]
struct State {
    slots: HashMap<Key, Slot>,
    /// Ready slots by last use.
    lru: BTreeMap<u64, Key>,
    bytes: u64,
    tick: u64,
}

/// Who asked for a chunk: a reader waits for it and counts hits and misses;
/// read-ahead only starts loads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Demand,
    Prefetch,
}

pub struct ChunkCache {
    state: Mutex<State>,
    loaded: Condvar,
    cap_bytes: u64,
    counters: Arc<Counters>,
}

impl ChunkCache {
    /// A cache holding at most `cap_bytes` of chunks (plus what readers hold).
    pub fn new(cap_bytes: u64, counters: Arc<Counters>) -> Self {
        ChunkCache {
            state: Mutex::new(State::default()),
            loaded: Condvar::new(),
            cap_bytes,
            counters,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters and slots,
        // which stay consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of ready chunks held now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Reads up to `buf.len()` bytes at `offset` of `src` through the cache,
    /// loading missing chunks (contiguous ones in one query). Returns the
    /// bytes read: fewer only at the end of the file.
    pub fn read(&self, src: &dyn ChunkSource, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = src.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = (size - offset).min(buf.len() as u64);
        let cb = src.chunk_bytes();
        let first = offset / cb;
        let last = (offset + len - 1) / cb;
        let chunks = self.load(src, first, last + 1, Want::Demand)?;
        let mut copied = 0usize;
        for (i, chunk) in chunks.iter().enumerate() {
            let chunk_start = first.saturating_add(i as u64).saturating_mul(cb);
            let from = offset.max(chunk_start) - chunk_start;
            let bytes = chunk.as_ref().map(Chunk::bytes).unwrap_or_default();
            let want = (len as usize - copied).min(bytes.len().saturating_sub(from as usize));
            buf[copied..copied + want].copy_from_slice(&bytes[from as usize..from as usize + want]);
            copied += want;
        }
        if copied as u64 != len {
            return Err(CoreError::ShortAssembly {
                what: src.describe().to_string(),
                got: copied,
                wanted: len,
                offset,
            }
            .into());
        }
        Ok(copied)
    }

    /// Reads up to `len` bytes at `offset` of `src` through the cache, as
    /// [`ChunkCache::read`] does, sharing the cached bytes rather than
    /// copying them when they lie in one buffer.
    pub fn read_data(&self, src: &dyn ChunkSource, offset: u64, len: u32) -> Result<Data> {
        let size = src.size();
        if offset >= size || len == 0 {
            return Ok(Data::from(Vec::new()));
        }
        let len = (size - offset).min(len as u64);
        let cb = src.chunk_bytes();
        let first = offset / cb;
        let last = (offset + len - 1) / cb;
        let chunks = self.load(src, first, last + 1, Want::Demand)?;
        let from = (offset - first * cb) as usize;
        if let Some(data) = one_buffer(&chunks, from, len as usize) {
            return Ok(data);
        }
        // Spread over buffers of several queries: copied, not zeroed first.
        let mut out = Vec::with_capacity(len as usize);
        for (i, chunk) in chunks.iter().enumerate() {
            let bytes = chunk.as_ref().map(Chunk::bytes).unwrap_or_default();
            let skip = if i == 0 { from.min(bytes.len()) } else { 0 };
            let want = (len as usize - out.len()).min(bytes.len() - skip);
            out.extend_from_slice(&bytes[skip..skip + want]);
        }
        if out.len() as u64 != len {
            return Err(CoreError::ShortAssembly {
                what: src.describe().to_string(),
                got: out.len(),
                wanted: len,
                offset,
            }
            .into());
        }
        Ok(Data::from(out))
    }

    /// Starts loading chunks `[first, end)` of `src` that are neither cached
    /// nor loading, and returns once they are in. Errors are the reader's to
    /// report, so they are only returned here.
    pub fn prefetch(&self, src: &dyn ChunkSource, first: u64, end: u64) -> Result<()> {
        self.load(src, first, end, Want::Prefetch).map(|_| ())
    }

    fn load(&self, src: &dyn ChunkSource, first: u64, end: u64, want: Want) -> Result<Vec<Option<Chunk>>> {
        let id = src.id();
        let n = end.saturating_sub(first) as usize;
        let mut got: Vec<Option<Chunk>> = vec![None; n];
        let mut mine: Vec<u64> = Vec::new();
        {
            let mut st = self.lock();
            for c in first..end {
                let tick = st.tick + 1;
                match st.slots.get_mut(&(id, c)) {
                    Some(Slot::Ready { chunk, tick: t }) => {
                        let old = std::mem::replace(t, tick);
                        got[(c - first) as usize] = Some(chunk.clone());
                        st.tick = tick;
                        st.lru.remove(&old);
                        st.lru.insert(tick, (id, c));
                        if want == Want::Demand {
                            Counters::add(&self.counters.cache_hits, 1);
                        }
                    }
                    Some(Slot::Loading) => {
                        if want == Want::Demand {
                            Counters::add(&self.counters.cache_hits, 1);
                        }
                    }
                    None => {
                        st.slots.insert((id, c), Slot::Loading);
                        mine.push(c);
                    }
                }
            }
        }
        let mut i = 0;
        while i < mine.len() {
            let mut j = i + 1;
            while j < mine.len() && mine[j] == mine[j - 1] + 1 {
                j += 1;
            }
            match self.fetch_run(src, mine[i], mine[j - 1] + 1) {
                Ok(chunks) => {
                    for (k, chunk) in chunks.into_iter().enumerate() {
                        got[(mine[i] + k as u64 - first) as usize] = Some(chunk);
                    }
                    let counter = match want {
                        Want::Demand => &self.counters.cache_misses,
                        Want::Prefetch => &self.counters.prefetch_chunks,
                    };
                    Counters::add(counter, (j - i) as u64);
                }
                Err(e) => {
                    let mut st = self.lock();
                    for c in &mine[i..] {
                        st.slots.remove(&(id, *c));
                    }
                    drop(st);
                    self.loaded.notify_all();
                    return Err(e);
                }
            }
            i = j;
        }
        if want == Want::Prefetch {
            return Ok(got);
        }
        for (k, slot) in got.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let c = first + k as u64;
            // Loaded by another thread: wait for it. If that load failed or
            // the chunk was already evicted, load it here.
            let waited = {
                let mut st = self.lock();
                loop {
                    match st.slots.get(&(id, c)) {
                        Some(Slot::Ready { chunk, .. }) => break Some(chunk.clone()),
                        Some(Slot::Loading) => st = self.loaded.wait(st).unwrap_or_else(|p| p.into_inner()),
                        None => break None,
                    }
                }
            };
            *slot = match waited {
                Some(chunk) => Some(chunk),
                None => self.fetch_alone(src, c)?,
            };
        }
        Ok(got)
    }

    /// Loads one chunk for a reader whose earlier wait came to nothing.
    fn fetch_alone(&self, src: &dyn ChunkSource, c: u64) -> Result<Option<Chunk>> {
        {
            let mut st = self.lock();
            st.slots.entry((src.id(), c)).or_insert(Slot::Loading);
        }
        match self.fetch_run(src, c, c + 1) {
            Ok(mut v) => {
                Counters::add(&self.counters.cache_misses, 1);
                Ok(v.pop())
            }
            Err(e) => {
                self.lock().slots.remove(&(src.id(), c));
                self.loaded.notify_all();
                Err(e)
            }
        }
    }

    /// Reads chunks `[first, end)` in one query and makes them ready.
    fn fetch_run(&self, src: &dyn ChunkSource, first: u64, end: u64) -> Result<Vec<Chunk>> {
        let cb = src.chunk_bytes();
        // Saturating: a file may end within one chunk of u64::MAX.
        let start = first.saturating_mul(cb);
        let stop = end.saturating_mul(cb).min(src.size());
        let len = stop.saturating_sub(start) as usize;
        Counters::add(&self.counters.tiledb_reads, 1);
        Counters::add(&self.counters.tiledb_bytes, len as u64);
        let read = src.read_exact(start, len)?;
        let (base, total, buf) = (read.start, read.len, read.buf);
        let chunks: Vec<Chunk> = (first..end)
            .map(|c| {
                let s = usize::try_from((c - first).saturating_mul(cb)).unwrap_or(usize::MAX);
                Chunk {
                    buf: buf.clone(),
                    start: base + s.min(total),
                    len: (cb as usize).min(total.saturating_sub(s)),
                }
            })
            .collect();
        let mut st = self.lock();
        for (k, chunk) in chunks.iter().enumerate() {
            st.tick += 1;
            let tick = st.tick;
            let key = (src.id(), first + k as u64);
            st.bytes += chunk.len as u64;
            if let Some(Slot::Ready { chunk: old, tick: t }) = st.slots.insert(
                key,
                Slot::Ready {
                    chunk: chunk.clone(),
                    tick,
                },
            ) {
                st.bytes -= old.len as u64;
                st.lru.remove(&t);
            }
            st.lru.insert(tick, key);
        }
        self.evict(&mut st);
        drop(st);
        self.loaded.notify_all();
        Ok(chunks)
    }

    fn evict(&self, st: &mut State) {
        while st.bytes > self.cap_bytes {
            let Some((_, key)) = st.lru.pop_first() else { break };
            if let Some(Slot::Ready { chunk, .. }) = st.slots.remove(&key) {
                st.bytes -= chunk.len as u64;
                Counters::add(&self.counters.cache_evictions, 1);
            }
        }
    }
}

/// `len` bytes from `from` in the first chunk on, when the chunks are
/// consecutive windows of one buffer.
fn one_buffer(chunks: &[Option<Chunk>], from: usize, len: usize) -> Option<Data> {
    let first = chunks.first()?.as_ref()?;
    let mut end = first.start;
    for c in chunks {
        let c = c.as_ref()?;
        if !Arc::ptr_eq(&c.buf, &first.buf) || c.start != end {
            return None;
        }
        end += c.len;
    }
    let start = first.start.checked_add(from)?;
    (start.checked_add(len)? <= end).then(|| Data::shared(first.buf.clone(), start, len))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::source::testing::MemSource;
    use super::*;
    use proptest::prelude::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn cache(cap: u64) -> (ChunkCache, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (ChunkCache::new(cap, counters.clone()), counters)
    }

    #[test]
    fn reads_cover_only_the_chunks_asked_for() {
        let src = MemSource::new(1, data(10_000), 1000);
        let (c, counters) = cache(1 << 20);
        let mut buf = vec![0u8; 10];
        assert_eq!(c.read(src.as_ref(), 2995, &mut buf).unwrap(), 10);
        assert_eq!(buf, &src.data[2995..3005]);
        let s = counters.snapshot();
        assert_eq!((s.tiledb_reads, s.tiledb_bytes, s.cache_misses), (1, 2000, 2));
        c.read(src.as_ref(), 2000, &mut buf).unwrap();
        assert_eq!(counters.snapshot().cache_hits, 1);
        assert_eq!(src.reads.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn read_data_shares_one_query_and_copies_across_queries() {
        let src = MemSource::new(1, data(10_000), 1000);
        let (c, _) = cache(1 << 20);
        // Chunks 2 and 3 come from one query: shared.
        let d = c.read_data(src.as_ref(), 2500, 1000).unwrap();
        assert_eq!(&d[..], &src.data[2500..3500]);
        // Chunk 4 from another query: the read spanning 3 and 4 is copied.
        c.read_data(src.as_ref(), 4000, 10).unwrap();
        assert_eq!(
            &c.read_data(src.as_ref(), 3900, 200).unwrap()[..],
            &src.data[3900..4100]
        );
        assert_eq!(&c.read_data(src.as_ref(), 9990, 100).unwrap()[..], &src.data[9990..]);
        assert!(c.read_data(src.as_ref(), 10_000, 100).unwrap().is_empty());
    }

    proptest! {
        /// Whatever was loaded before and how, read_data returns the bytes.
        #[test]
        fn read_data_returns_the_bytes(
            reads in proptest::collection::vec((0u64..5000, 1u32..3000), 1..20),
        ) {
            let src = MemSource::new(1, data(4321), 700);
            let (c, _) = cache(2000);
            for (off, len) in reads {
                let d = c.read_data(src.as_ref(), off, len).unwrap();
                let end = (off + len as u64).min(4321);
                let want = if off >= 4321 { &[][..] } else { &src.data[off as usize..end as usize] };
                prop_assert_eq!(&d[..], want);
            }
        }
    }

    #[test]
    fn end_of_file_is_short_then_empty() {
        let src = MemSource::new(1, data(2500), 1000);
        let (c, _) = cache(1 << 20);
        let mut buf = vec![0u8; 1000];
        assert_eq!(c.read(src.as_ref(), 2000, &mut buf).unwrap(), 500);
        assert_eq!(&buf[..500], &src.data[2000..]);
        assert_eq!(c.read(src.as_ref(), 2500, &mut buf).unwrap(), 0);
        assert_eq!(c.read(src.as_ref(), 9999, &mut buf).unwrap(), 0);
    }

    #[test]
    fn size_limit_holds_and_lru_goes_first() {
        let src = MemSource::new(1, data(10_000), 1000);
        let (c, counters) = cache(3000);
        let mut buf = vec![0u8; 1];
        for off in [0, 1000, 2000, 0, 3000] {
            c.read(src.as_ref(), off, &mut buf).unwrap();
            assert!(c.bytes() <= 3000);
        }
        // Chunk 1 was least recently used: gone; chunk 0 stays.
        let before = src.reads.load(Ordering::Relaxed);
        c.read(src.as_ref(), 0, &mut buf).unwrap();
        assert_eq!(src.reads.load(Ordering::Relaxed), before);
        c.read(src.as_ref(), 1000, &mut buf).unwrap();
        assert_eq!(src.reads.load(Ordering::Relaxed), before + 1);
        assert!(counters.snapshot().cache_evictions >= 2);
    }

    #[test]
    fn failures_are_reported_and_not_cached() {
        let src = MemSource::new(1, data(5000), 1000);
        src.failing.lock().unwrap().push(1500..1600);
        let (c, _) = cache(1 << 20);
        let mut buf = vec![0u8; 100];
        assert_eq!(c.read(src.as_ref(), 1000, &mut buf).unwrap_err().errno, libc::EIO);
        assert_eq!(c.read(src.as_ref(), 0, &mut buf).unwrap(), 100);
        src.failing.lock().unwrap().clear();
        assert_eq!(c.read(src.as_ref(), 1000, &mut buf).unwrap(), 100);
        assert_eq!(buf, &src.data[1000..1100]);
    }

    #[test]
    fn prefetched_chunks_serve_later_reads() {
        let src = MemSource::new(1, data(8000), 1000);
        let (c, counters) = cache(1 << 20);
        c.prefetch(src.as_ref(), 2, 6).unwrap();
        assert_eq!(src.reads.load(Ordering::Relaxed), 1);
        let mut buf = vec![0u8; 4000];
        c.read(src.as_ref(), 2000, &mut buf).unwrap();
        assert_eq!(buf, &src.data[2000..6000]);
        assert_eq!(src.reads.load(Ordering::Relaxed), 1);
        assert_eq!(counters.snapshot().prefetch_chunks, 4);
        assert_eq!(counters.snapshot().cache_hits, 4);
    }

    #[test]
    fn concurrent_readers_load_each_chunk_once() {
        let src = MemSource::new(1, data(64_000), 1000);
        let (c, _) = cache(1 << 20);
        let c = Arc::new(c);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (c, src) = (c.clone(), src.clone());
                std::thread::spawn(move || {
                    for i in 0..64u64 {
                        let off = ((i * 7 + t * 13) % 64) * 1000;
                        let mut buf = vec![0u8; 1500];
                        let n = c.read(src.as_ref(), off, &mut buf).unwrap();
                        assert_eq!(&buf[..n], &src.data[off as usize..off as usize + n]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(src.reads.load(Ordering::Relaxed) <= 64 * 2);
    }

    /// A file of zeros ending at `u64::MAX`, as a hostile array's size key
    /// can claim.
    struct EndOfRange;

    impl ChunkSource for EndOfRange {
        fn id(&self) -> u64 {
            1
        }
        fn size(&self) -> u64 {
            u64::MAX
        }
        fn chunk_bytes(&self) -> u64 {
            1 << 20
        }
        fn read_exact(&self, _offset: u64, len: usize) -> Result<crate::fs::store::QueryBuf> {
            Ok(vec![0; len].into())
        }
        fn describe(&self) -> &str {
            "end of range"
        }
    }

    #[test]
    fn issue_13_reads_near_u64_max_do_not_overflow() {
        let (c, _) = cache(4 << 20);
        for offset in [u64::MAX - 1, u64::MAX - (1 << 20), u64::MAX - (3 << 19)] {
            let mut buf = [1u8; 4096];
            let n = c.read(&EndOfRange, offset, &mut buf).unwrap();
            assert_eq!(n as u64, (u64::MAX - offset).min(4096));
            assert!(buf[..n].iter().all(|&b| b == 0));
        }
    }

    proptest! {
        #[test]
        fn any_read_matches_the_model(
            len in 0usize..20_000,
            chunk in 1u64..3000,
            cap in 0u64..20_000,
            reads in proptest::collection::vec((0u64..25_000, 0usize..5000), 1..30),
        ) {
            let src = MemSource::new(7, data(len), chunk);
            let (c, _) = cache(cap);
            for (off, n) in reads {
                let mut buf = vec![0u8; n];
                let got = c.read(src.as_ref(), off, &mut buf).unwrap();
                let want = &src.data[(off as usize).min(len)..(off as usize + n).min(len)];
                prop_assert_eq!(&buf[..got], want);
                prop_assert!(c.bytes() <= cap);
            }
        }
    }
}
