//! One cache entry being written: a temporary file, the byte ranges written
//! into it so far and a CRC-32 of each, combined in file order once the
//! ranges cover the whole version. Ranges arrive in any order and from
//! several threads (read-ahead loads chunks in parallel); a range that
//! overlaps one already recorded is skipped, since both hold the same bytes
//! of the same version.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use nix::fcntl::{FallocateFlags, fallocate};

/// File offsets, lengths and memory of direct writes are multiples of this
/// (the largest logical block size of common devices).
const DIRECT_ALIGN: usize = 4096;

/// Bytes copied into an aligned buffer per direct write. When every fill
/// went through one, a cold 1 GiB read from S3 filling the cache took 1.67
/// s of daemon CPU and 3.0 s with 1 MiB writes, 1.9-2.0 s and 3.2-3.7 s
/// with 256 KiB ones (each write a request to the device).
const DIRECT_CHUNK: usize = 1 << 20;

/// Aligned buffers for direct writes of bytes not on a memory page (files
/// written through the mount, arrays whose tiles are not whole pages),
/// shared by every thread: a writer waits for one when all are in use.
const BOUNCE_BUFFERS: usize = 2;

/// The memory of those buffers, counted in `--cache-size`.
pub const BOUNCE_BYTES: u64 = (BOUNCE_BUFFERS * (DIRECT_CHUNK + DIRECT_ALIGN)) as u64;

/// The [`BOUNCE_BUFFERS`], made as first needed and reused: fresh pages
/// cost what direct writes save.
struct BouncePool {
    /// Buffers not in use, and how many were made.
    free: Mutex<(Vec<Vec<u8>>, usize)>,
    returned: Condvar,
}

static BOUNCE: BouncePool = BouncePool {
    free: Mutex::new((Vec::new(), 0)),
    returned: Condvar::new(),
};

impl BouncePool {
    /// Runs `f` on a [`DIRECT_CHUNK`]-byte buffer aligned for direct writes.
    fn with<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut buf = {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(buf) = free.0.pop() {
                    break buf;
                }
                if free.1 < BOUNCE_BUFFERS {
                    free.1 += 1;
                    break vec![0; DIRECT_CHUNK + DIRECT_ALIGN];
                }
                free = self.returned.wait(free).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let r = f(&mut buf[start..start + DIRECT_CHUNK]);
        self.free.lock().unwrap_or_else(PoisonError::into_inner).0.push(buf);
        self.returned.notify_one();
        r
    }
}

/// A temporary entry file and what it holds so far.
pub struct Fill {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// The same file opened with `O_DIRECT`, for the aligned middle of each
    /// range: the bytes go to disk without taking page cache pages (which
    /// the reader's FUSE pages already double, and whose allocation cost a
    /// fill from S3 more CPU than the read itself). `None` where the file
    /// system refuses it.
    direct: Option<File>,
    /// A direct write was refused (alignment the device wants, say): the
    /// rest goes through `file`.
    direct_refused: AtomicBool,
    size: u64,
    state: Mutex<Ranges>,
    /// Set once by whoever takes the fill to completion.
    finishing: AtomicBool,
    /// Ranges read and queued for recording ([`Fill::queue`]), not
    /// recorded yet.
    queued: AtomicUsize,
}

#[derive(Default)]
struct Ranges {
    /// start -> (end, CRC-32 of the bytes in `[start, end)`).
    parts: BTreeMap<u64, (u64, crc32fast::Hasher)>,
    /// start -> end of ranges a thread is writing: nobody else writes them
    /// meanwhile (a page written partly through the page cache while a
    /// direct write covers it could be flushed over that write).
    writing: BTreeMap<u64, u64>,
    covered: u64,
    failed: bool,
}

impl Ranges {
    /// The parts of `r` neither recorded nor being written, in order.
    fn uncovered(&self, r: Range<u64>) -> Vec<Range<u64>> {
        // The ranges reaching into `r` (each map's ranges are disjoint, so
        // only the last one starting before `r` can), by start.
        let mut taken: Vec<(u64, u64)> = Vec::new();
        if let Some((s, (e, _))) = self.parts.range(..r.start).next_back() {
            taken.push((*s, *e));
        }
        taken.extend(self.parts.range(r.start..r.end).map(|(s, (e, _))| (*s, *e)));
        if let Some((s, e)) = self.writing.range(..r.start).next_back() {
            taken.push((*s, *e));
        }
        taken.extend(self.writing.range(r.start..r.end).map(|(s, e)| (*s, *e)));
        taken.sort_unstable();
        let mut out = Vec::new();
        let mut at = r.start;
        for (start, end) in taken {
            if start > at {
                out.push(at..start);
            }
            at = at.max(end);
        }
        if at < r.end {
            out.push(at..r.end);
        }
        out
    }
}

impl Fill {
    /// A fill of `size` bytes into `file` at `path`, its blocks reserved
    /// first: direct writes into them are overwrites, which ext4 runs in
    /// parallel (writes that allocate or extend the file take its inode
    /// lock one at a time). Where the file system cannot reserve blocks,
    /// writes allocate as they go; a full disk is an error.
    pub(super) fn new(path: PathBuf, file: File, size: u64) -> io::Result<Self> {
        if let Ok(len) = libc::off_t::try_from(size)
            && len > 0
            && let Err(e) = fallocate(&file, FallocateFlags::empty(), 0, len)
        {
            if e == nix::errno::Errno::ENOSPC {
                return Err(e.into());
            }
            log::debug!("{}: no blocks reserved: {e}", path.display());
        }
        let direct = File::options()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .ok();
        Ok(Fill {
            path,
            file,
            direct,
            direct_refused: AtomicBool::new(false),
            size,
            state: Mutex::new(Ranges::default()),
            finishing: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
        })
    }

    /// The version's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ranges> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `bytes`, the version's bytes at `offset`: the parts of them
    /// not recorded yet. A failed write makes the fill useless (it is never
    /// committed), not the read that fed it.
    pub fn record(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset.saturating_add(bytes.len() as u64);
        if bytes.is_empty() || end > self.size {
            return Ok(());
        }
        let todo = {
            let mut st = self.lock();
            // Never committed: nothing more is worth writing.
            if st.failed {
                return Ok(());
            }
            let todo = st.uncovered(offset..end);
            for r in &todo {
                st.writing.insert(r.start, r.end);
            }
            todo
        };
        for (i, r) in todo.iter().enumerate() {
            let part = &bytes[(r.start - offset) as usize..(r.end - offset) as usize];
            let written = self.write_at(part, r.start);
            let mut crc = crc32fast::Hasher::new();
            crc.update(part);
            let mut st = self.lock();
            st.writing.remove(&r.start);
            if let Err(e) = written {
                st.failed = true;
                for r in &todo[i + 1..] {
                    st.writing.remove(&r.start);
                }
                return Err(e);
            }
            st.parts.insert(r.start, (r.end, crc));
            st.covered += r.end - r.start;
        }
        Ok(())
    }

    /// Counts a range read and queued for recording until the guard
    /// returned goes (recorded, or dropped unrecorded): [`Fill::settle`]
    /// waits for it.
    pub fn queue(self: &Arc<Self>) -> Queued {
        self.queued.fetch_add(1, Ordering::AcqRel);
        Queued(self.clone())
    }

    /// Waits (up to a minute) for the ranges other threads are writing or
    /// have queued.
    pub fn settle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while (self.queued.load(Ordering::Acquire) > 0 || !self.lock().writing.is_empty())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Writes `part` at `at`: its aligned middle directly to disk when the
    /// file system takes it, the rest through the page cache.
    fn write_at(&self, part: &[u8], at: u64) -> io::Result<()> {
        let align = DIRECT_ALIGN as u64;
        let end = at + part.len() as u64;
        let (mid_start, mid_end) = (at.next_multiple_of(align), end / align * align);
        let direct = self
            .direct
            .as_ref()
            .filter(|_| !self.direct_refused.load(Ordering::Relaxed));
        let Some(direct) = direct.filter(|_| mid_start < mid_end) else {
            return self.file.write_all_at(part, at);
        };
        let (head, rest) = part.split_at((mid_start - at) as usize);
        let (mid, tail) = rest.split_at((mid_end - mid_start) as usize);
        self.file.write_all_at(head, at)?;
        self.file.write_all_at(tail, mid_end)?;
        // Query buffers place their bytes on a page boundary: those go
        // straight to disk, in one write.
        let written = if mid.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
            direct.write_all_at(mid, mid_start)
        } else {
            Self::write_bounced(direct, mid, mid_start)
        };
        match written {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!(
                    "{}: direct writes refused ({e}), writing through the page cache",
                    self.path.display()
                );
                self.direct_refused.store(true, Ordering::Relaxed);
                self.file.write_all_at(mid, mid_start)
            }
            r => r,
        }
    }

    /// Writes `mid` at `at` (both aligned) with direct writes, through an
    /// aligned buffer of the pool.
    fn write_bounced(direct: &File, mid: &[u8], at: u64) -> io::Result<()> {
        BOUNCE.with(|aligned| -> io::Result<()> {
            let mut pos = at;
            for piece in mid.chunks(DIRECT_CHUNK) {
                aligned[..piece.len()].copy_from_slice(piece);
                direct.write_all_at(&aligned[..piece.len()], pos)?;
                pos += piece.len() as u64;
            }
            Ok(())
        })
    }

    /// Bytes recorded so far.
    pub fn covered(&self) -> u64 {
        self.lock().covered
    }

    pub fn failed(&self) -> bool {
        self.lock().failed
    }

    /// The ranges neither recorded nor being written, in file order.
    pub fn missing(&self) -> Vec<Range<u64>> {
        self.lock().uncovered(0..self.size)
    }

    /// Claims the right to complete this fill; true for the first caller.
    pub fn claim(&self) -> bool {
        !self.finishing.swap(true, Ordering::AcqRel)
    }

    /// The CRC-32 of the whole version, once every byte is recorded.
    pub fn checksum(&self) -> Option<u32> {
        let st = self.lock();
        if st.failed || st.covered != self.size {
            return None;
        }
        let mut whole = crc32fast::Hasher::new();
        for (_, part) in st.parts.values() {
            whole.combine(part);
        }
        Some(whole.finalize())
    }
}

/// A range counted by [`Fill::queue`].
pub struct Queued(Arc<Fill>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // A committed part was renamed away; an abandoned one goes.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fill(size: u64) -> (tempfile::TempDir, Fill) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.part");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        (dir, Fill::new(path, file, size).unwrap())
    }

    proptest! {
        /// Whatever the order and overlap of the ranges recorded, once they
        /// cover the file the checksum is the CRC-32 of the bytes, and the
        /// file holds them.
        #[test]
        fn ranges_in_any_order_give_the_file_and_its_crc(
            data in proptest::collection::vec(any::<u8>(), 1..40_000),
            cuts in proptest::collection::vec(any::<u16>(), 0..12),
            aligned_cuts in proptest::collection::vec(0u64..10, 0..4),
            order in any::<u64>(),
        ) {
            // Sizes and cuts on and off 4 KiB boundaries: a range's aligned
            // middle is written directly, its ends through the page cache.
            let size = data.len() as u64;
            let mut bounds: Vec<u64> = cuts.iter().map(|c| *c as u64 % size).collect();
            bounds.extend(aligned_cuts.iter().map(|k| (k * DIRECT_ALIGN as u64).min(size)));
            bounds.push(0);
            bounds.push(size);
            bounds.sort();
            bounds.dedup();
            let mut ranges: Vec<Range<u64>> = bounds.windows(2).map(|w| w[0]..w[1]).collect();
            // A duplicate of one range, as a retried load would record.
            ranges.push(ranges[0].clone());
            let n = ranges.len();
            ranges.rotate_left((order % n as u64) as usize);
            let (_dir, f) = fill(size);
            for r in &ranges {
                f.record(r.start, &data[r.start as usize..r.end as usize]).unwrap();
            }
            prop_assert!(f.missing().is_empty());
            prop_assert_eq!(f.checksum(), Some(crc32fast::hash(&data)));
            prop_assert_eq!(std::fs::read(&f.path).unwrap(), data);
        }
    }

    #[test]
    fn overlapping_records_fill_only_what_is_missing() {
        let (_dir, f) = fill(100);
        f.record(10, &[1; 20]).unwrap();
        f.record(50, &[2; 10]).unwrap();
        f.record(0, &[3; 100]).unwrap();
        assert!(f.missing().is_empty());
        let mut want = vec![3u8; 100];
        want[10..30].fill(1);
        want[50..60].fill(2);
        assert_eq!(std::fs::read(&f.path).unwrap(), want);
        assert_eq!(f.checksum(), Some(crc32fast::hash(&want)));
    }

    #[test]
    fn aligned_middles_go_directly_where_the_file_system_takes_it() {
        let (_dir, f) = fill(3 * DIRECT_ALIGN as u64 + 100);
        let takes_direct = File::options()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&f.path)
            .is_ok();
        assert_eq!(f.direct.is_some(), takes_direct);
        let data: Vec<u8> = (0..f.size()).map(|i| (i % 251) as u8).collect();
        f.record(10, &data[10..]).unwrap();
        f.record(0, &data[..10]).unwrap();
        assert!(!f.direct_refused.load(Ordering::Relaxed));
        assert_eq!(std::fs::read(&f.path).unwrap(), data);
        assert_eq!(f.checksum(), Some(crc32fast::hash(&data)));
    }

    #[test]
    fn bytes_on_a_page_boundary_go_straight_to_disk_and_land_where_they_belong() {
        let size = 3 * DIRECT_CHUNK as u64 + 5000;
        let (_dir, f) = fill(size);
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        // As a query buffer holds them: padded so they start on a page.
        let mut held = vec![0u8; data.len() + DIRECT_ALIGN];
        let pad = held.as_ptr().align_offset(DIRECT_ALIGN);
        held[pad..pad + data.len()].copy_from_slice(&data);
        let aligned = &held[pad..pad + data.len()];
        let cut = DIRECT_CHUNK + 2 * DIRECT_ALIGN;
        f.record(0, &aligned[..cut]).unwrap();
        // One part not on a page in memory, then the rest, which is.
        f.record(cut as u64 + 7, &data[cut + 7..cut + 7 + DIRECT_ALIGN])
            .unwrap();
        f.record(cut as u64, &aligned[cut..]).unwrap();
        assert!(f.missing().is_empty());
        assert_eq!(std::fs::read(&f.path).unwrap(), data);
        assert_eq!(f.checksum(), Some(crc32fast::hash(&data)));
    }

    #[test]
    fn threads_recording_overlapping_ranges_write_each_byte_once() {
        // Read-ahead threads and the completing thread record overlapping
        // ranges with different bounds at once: each range is written by
        // one of them, so no page is written both directly and through the
        // page cache at the same time.
        let size = 1 << 20;
        let (_dir, f) = fill(size);
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (f, data) = (&f, &data);
                s.spawn(move || {
                    let step = 65_536 + t * 1_000 + 1;
                    let mut at = t * 333;
                    while at < size {
                        let end = (at + step).min(size);
                        f.record(at, &data[at as usize..end as usize]).unwrap();
                        at = end;
                    }
                    f.record(0, &data[..(t * 333) as usize]).unwrap();
                });
            }
        });
        f.settle();
        assert!(f.missing().is_empty());
        assert_eq!(f.covered(), size);
        assert_eq!(std::fs::read(&f.path).unwrap(), data);
        assert_eq!(f.checksum(), Some(crc32fast::hash(&data)));
    }

    #[test]
    fn missing_lists_the_gaps() {
        let (_dir, f) = fill(100);
        f.record(10, &[1; 20]).unwrap();
        f.record(50, &[2; 10]).unwrap();
        assert_eq!(f.missing(), vec![0..10, 30..50, 60..100]);
        assert_eq!(f.covered(), 30);
        assert!(f.checksum().is_none());
        assert!(f.claim());
        assert!(!f.claim());
    }
}
