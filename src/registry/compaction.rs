//! Keeping directories' own storage small. Every membership change writes
//! the directory's whole member list once more (TileDB's group format), and
//! every open reads each list file not yet retired. Changes made through
//! modelfs retire the older ones as they go (`MembersChange`); directories
//! changed by other tools are compacted here: by `modelfs compact`, and by
//! a writable mount the first time it reads one that needs it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use log::{info, warn};

use crate::tiledb::{self, Group, Vacuumed};

use super::error::Result;
use super::tree::{Entry, Registry, Storage};

/// List files an open may read before a mount compacts the directory.
const LIST_FILES_TOLERATED: usize = 8;

/// What compacting one directory did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirCompaction {
    /// Member-list files an open read before.
    pub list_files_before: usize,
    /// Of those, the ones an open no longer reads.
    pub replaced: usize,
    /// Recorded entries (new and removed) merged into the member list.
    pub merged: usize,
}

/// The upkeep of directories' own storage in one process: the lock each
/// directory's changes and clean-ups take; directories whose recorded new
/// entries wait to be merged into their member lists ([`super::journal`]);
/// directories whose replaced list files wait for their grace period
/// ([`tiledb::RETIRE_GRACE`]); one background thread doing both, so that a
/// directory left alone does not keep them until its next change. Also
/// the caches that make reading a directory cost O(1) in its entries.
#[derive(Default)]
pub(super) struct Upkeep {
    pending: Mutex<HashSet<String>>,
    /// Directories with records to merge.
    merging: Mutex<HashSet<String>>,
    /// How long recorded entries wait to be merged, ms ([`MERGE_DELAY`] unless
    /// set: see [`Registry::set_merge_delay`]).
    merge_delay_ms: std::sync::atomic::AtomicU64,
    /// New entries recorded so far: tells the worker a burst goes on.
    adds: std::sync::atomic::AtomicU64,
    /// Set by [`Registry::retire_in_background`]: without it (a command
    /// that exits when done) the next change deletes what is due, and new
    /// entries are linked at once.
    enabled: std::sync::atomic::AtomicBool,
    pub(super) members: super::members::MemberCache,
    pub(super) attrs: super::members::AttrsCache,
    pub(super) parsed: super::journal::Parsed,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set when the registry goes: the worker ends, and is waited for, so
    /// it never touches storage while the process exits (the S3 client is
    /// torn down then).
    stop: Mutex<bool>,
    wake: std::sync::Condvar,
    dir_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Metadata writes this process made to each group since its metadata
    /// was last consolidated.
    metadata_writes: Mutex<HashMap<String, u32>>,
    /// The newest time (ms) this process stamped on a change of each
    /// directory's entries: a record's, or a member list's.
    change_stamps: Mutex<HashMap<String, u64>>,
    /// Files this process removed from plain directories whose storage it
    /// has not deleted yet (descriptors still read it).
    removed_held: Mutex<HashSet<String>>,
}

/// Metadata writes to one group after which its metadata is consolidated
/// (measured: 24 ms to open a group after 500 writes, 4 ms once
/// consolidated).
const METADATA_WRITES_PER_CONSOLIDATION: u32 = 32;

/// Directories whose newest change stamp is remembered; past it the
/// memory starts again empty (a new record is also stamped after the
/// newest list, and a mount that forgot a stamp shows its own time).
const STAMPED_DIRS: usize = 4096;

fn remember_stamp(stamps: &mut HashMap<String, u64>, uri: &str, time: u64) {
    if stamps.len() >= STAMPED_DIRS && !stamps.contains_key(uri) {
        stamps.clear();
    }
    stamps.insert(uri.to_string(), time);
}

impl Upkeep {
    /// A time (ms) for a new record of directory `uri`, after `newest_list`
    /// and after every change this process stamped there: records apply in
    /// the order of their times, so an add and a removal of one name made
    /// within one millisecond must not tie.
    pub(super) fn record_stamp(&self, uri: &str, newest_list: u64) -> u64 {
        let mut stamps = self.change_stamps.lock().unwrap_or_else(PoisonError::into_inner);
        let last = stamps.get(uri).copied().unwrap_or(0);
        let time = tiledb::now_ms().max(newest_list + 1).max(last + 1);
        remember_stamp(&mut stamps, uri, time);
        time
    }

    /// Directory `uri`'s member list was written stamped `time` (ms).
    pub(super) fn list_stamped(&self, uri: &str, time: u64) {
        let mut stamps = self.change_stamps.lock().unwrap_or_else(PoisonError::into_inner);
        let newest = stamps.get(uri).map_or(time, |&t| t.max(time));
        remember_stamp(&mut stamps, uri, newest);
    }

    /// The newest time (ms) this process stamped on a change of directory
    /// `uri`'s entries, if it remembers one.
    pub(super) fn last_change(&self, uri: &str) -> Option<u64> {
        let stamps = self.change_stamps.lock().unwrap_or_else(PoisonError::into_inner);
        stamps.get(uri).copied()
    }

    /// A metadata write was made to group `uri` (removals' keys): every
    /// [`METADATA_WRITES_PER_CONSOLIDATION`] of them its metadata
    /// files are merged, so an open reads few. The merged files are not
    /// deleted: TileDB 2.30 can crash consolidating a group's metadata
    /// while another process deletes merged files (reproduced with
    /// TileDB-Py alone), and mounts cannot coordinate. The caller does not
    /// hold the directory's lock.
    pub(super) fn metadata_written(&self, ctx: &tiledb::Context, uri: &str) {
        let due = {
            let mut counts = self.metadata_writes.lock().unwrap_or_else(PoisonError::into_inner);
            let n = counts.entry(uri.to_string()).or_insert(0);
            *n += 1;
            let due = *n >= METADATA_WRITES_PER_CONSOLIDATION;
            if due {
                *n = 0;
            }
            due
        };
        if !due {
            return;
        }
        let lock = self.dir_lock(uri);
        let _one_at_a_time = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = Group::consolidate_metadata(ctx, uri) {
            warn!("{uri}: consolidating its metadata failed: {e}");
        }
    }

    fn merge_delay(&self) -> Duration {
        match self.merge_delay_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => MERGE_DELAY,
            ms => Duration::from_millis(ms),
        }
    }

    /// Whether new entries and removals are recorded (and merged in the background)
    /// rather than linked at once.
    pub(super) fn journaling(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Deletes the list files group `uri` retired once their grace period
    /// is over, from the background thread.
    pub(super) fn retire_later(self: &Arc<Self>, ctx: &tiledb::Context, uri: &str) {
        if !self.journaling() {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uri.to_string());
        self.ensure_worker(ctx);
    }

    /// Merges the records of directory `uri` from the background thread,
    /// once the burst they belong to pauses (see [`upkeep_worker`]).
    pub(super) fn merge_later(self: &Arc<Self>, ctx: &tiledb::Context, uri: &str) {
        self.merging
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uri.to_string());
        self.adds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.ensure_worker(ctx);
        self.wake.notify_all();
    }

    fn ensure_worker(self: &Arc<Self>, ctx: &tiledb::Context) {
        let mut worker = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        if worker.is_some() {
            return;
        }
        let weak = Arc::downgrade(self);
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("modelfs-upkeep".into())
            .spawn(move || upkeep_worker(weak, ctx));
        match spawned {
            Ok(h) => *worker = Some(h),
            Err(e) => warn!("cannot start the thread merging recorded entries and deleting retired member lists: {e}"),
        }
    }

    /// Merges every directory's records now (the worker is stopped: a
    /// command ends, a mount goes).
    pub(super) fn merge_all_now(self: &Arc<Self>, ctx: &tiledb::Context) {
        let dirs = take_all(&self.merging);
        if dirs.is_empty() {
            return;
        }
        let Ok(vfs) = tiledb::Vfs::new(ctx) else { return };
        for uri in dirs {
            self.merge_one(ctx, &vfs, &uri);
        }
    }

    fn merge_one(self: &Arc<Self>, ctx: &tiledb::Context, vfs: &tiledb::Vfs, uri: &str) {
        let merged = {
            let lock = self.dir_lock(uri);
            let _one_at_a_time = lock.lock().unwrap_or_else(PoisonError::into_inner);
            if !group_stands(ctx, uri) {
                return;
            }
            super::members::merge_journal(ctx, vfs, self, uri)
        };
        match merged {
            Ok(m) if m.removals > 0 => self.metadata_written(ctx, uri),
            Ok(_) => {}
            // The records stay: readers still see them, the next change
            // or `modelfs compact` merges them.
            Err(e) => warn!("{uri}: merging recorded entries into its member list failed: {e}"),
        }
    }

    /// This process removed the file stored at `uri` from a plain
    /// directory and keeps its storage (`held`), or deleted it.
    pub(super) fn hold_removed(&self, uri: &str, held: bool) {
        let mut set = self.removed_held.lock().unwrap_or_else(PoisonError::into_inner);
        let key = super::uri::canonical(uri).to_string();
        if held {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    /// What was held at `from` or inside it moved to `to` (a plain
    /// directory's folder, a file set aside): held there now, so the move
    /// does not leave it free for the next use of its name to delete.
    pub(super) fn rebase_held(&self, from: &str, to: &str) {
        let mut set = self.removed_held.lock().unwrap_or_else(PoisonError::into_inner);
        let moved: Vec<(String, String)> = set
            .iter()
            .filter_map(|k| super::uri::rebase(k, from, to).map(|n| (k.clone(), n)))
            .collect();
        for (old, new) in moved {
            set.remove(&old);
            set.insert(super::uri::canonical(&new).to_string());
        }
    }

    /// Whether this process keeps the storage of a file it removed at `uri`.
    pub(super) fn removed_held(&self, uri: &str) -> bool {
        let set = self.removed_held.lock().unwrap_or_else(PoisonError::into_inner);
        set.contains(super::uri::canonical(uri))
    }

    /// Drops what is due for group `uri` and the groups inside it (they
    /// are being deleted): the caller holds `uri`'s lock, so the worker
    /// either did its part before or finds the group gone.
    pub(super) fn forget_dir(&self, uri: &str) {
        use super::uri::{is_inside, same};
        for set in [&self.pending, &self.merging] {
            set.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|d| !same(d, uri) && !is_inside(d, uri));
        }
    }

    /// Stops the worker, if one runs, and waits for it.
    pub(super) fn stop_worker(&self) {
        *self.stop.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
        let handle = self.worker.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            warn!("the thread merging recorded entries and deleting retired member lists panicked");
        }
    }

    /// The lock of directory `uri`.
    pub(super) fn dir_lock(&self, uri: &str) -> Arc<Mutex<()>> {
        let mut locks = self.dir_locks.lock().unwrap_or_else(PoisonError::into_inner);
        // One lock whichever way the URI is spelled (`file://` or a path).
        locks.entry(super::uri::canonical(uri).to_string()).or_default().clone()
    }
}

/// Directories a mount has checked since it started.
#[derive(Default)]
pub(super) struct Tidying {
    checked: Mutex<HashSet<String>>,
}

impl Registry {
    /// Compacts directory `dir`'s member list (when an open reads more than
    /// one list file) and merges its metadata files. Readers see the same
    /// entries throughout; what is replaced is deleted by
    /// [`Registry::vacuum_dir`].
    pub fn compact_dir(&self, dir: &Entry) -> Result<DirCompaction> {
        if dir.storage != Storage::Group {
            return Ok(DirCompaction::default());
        }
        let ctx = self.context();
        let lock = self.upkeep.dir_lock(&dir.uri);
        let _one_at_a_time = lock.lock().unwrap_or_else(PoisonError::into_inner);
        // Entries a mount recorded and did not merge (it stopped) go into
        // the list first.
        let merged = super::members::merge_journal(ctx, self.vfs(), &self.upkeep, &dir.uri)?.names;
        let before = tiledb::live_list_files(ctx, &dir.uri)?;
        let done = tiledb::compact_members(ctx, &dir.uri)?;
        Group::consolidate_metadata(ctx, &dir.uri)?;
        Ok(DirCompaction {
            list_files_before: before,
            replaced: done.replaced,
            merged,
        })
    }

    /// Deletes the member-list files compactions at least `grace` ago
    /// replaced. (The metadata files a consolidation merged stay: TileDB
    /// 2.30 can crash consolidating a group's metadata while another
    /// process deletes merged files, and they are few: metadata is written
    /// when a tool sets a directory's attributes and with removals' keys,
    /// at most one file per merge.)
    pub fn vacuum_dir(&self, dir: &Entry, grace: Duration) -> Result<Vacuumed> {
        if dir.storage != Storage::Group {
            return Ok(Vacuumed::default());
        }
        let ctx = self.context();
        let lock = self.upkeep.dir_lock(&dir.uri);
        let _one_at_a_time = lock.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(tiledb::vacuum_members(ctx, &dir.uri, grace)?.deleted)
    }

    /// From now on, new entries and removals are recorded and merged into their
    /// directory's member list by a background thread (see
    /// [`super::journal`]), and member lists replaced by changes are
    /// deleted by it once their grace period is over, even in a directory
    /// left alone after. What is left to merge when the registry goes is
    /// merged then.
    pub fn retire_in_background(&mut self) {
        self.upkeep.enabled.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// New entries wait `delay` (at least 1 ms) before the background
    /// thread merges them, instead of [`MERGE_DELAY`].
    pub fn set_merge_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
        self.upkeep
            .merge_delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Keeps at most `entries` directory members in memory (see
    /// [`super::members::MemberCache`]). Before the registry is first used.
    pub fn set_listing_cache_entries(&mut self, entries: usize) {
        match std::sync::Arc::get_mut(&mut self.upkeep) {
            Some(u) => u.members = super::members::MemberCache::new(entries),
            None => warn!("the listing cache is in use; its size stays"),
        }
    }

    /// Bytes of directory `dir`'s own files (member lists and metadata).
    pub fn dir_own_bytes(&self, dir: &Entry) -> Result<u64> {
        match dir.storage {
            Storage::Group => Ok(tiledb::own_bytes(self.context(), &dir.uri)?),
            _ => Ok(0),
        }
    }

    /// From now on, the first stat of each directory compacts it when an
    /// open reads more than [`LIST_FILES_TOLERATED`] list files (a
    /// directory grown by another tool). For writable mounts only.
    pub fn tidy_directories_when_listed(&mut self) {
        self.tidying = Some(Tidying::default());
    }

    /// Called when a directory's stat found `list_files` member-list files
    /// in group `uri` (some may be retired already): the first time it is
    /// more than [`LIST_FILES_TOLERATED`], the directory is checked and
    /// compacted if an open reads that many, else what retired lists can go
    /// goes in the background (see
    /// [`Registry::tidy_directories_when_listed`]). Failures only leave the
    /// directory as it was.
    pub(super) fn tidy_if_grown(&self, uri: &str, list_files: usize) {
        let Some(t) = &self.tidying else { return };
        if list_files <= LIST_FILES_TOLERATED {
            return;
        }
        let first = t
            .checked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uri.to_string());
        if !first {
            return;
        }
        let ctx = self.context();
        let lock = self.upkeep.dir_lock(uri);
        let _one_at_a_time = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if !group_stands(ctx, uri) {
            return;
        }
        match tiledb::live_list_files(ctx, uri) {
            Ok(n) if n > LIST_FILES_TOLERATED => match tiledb::compact_members(ctx, uri) {
                Ok(c) => {
                    info!("{uri}: compacted its member list ({} list files to one)", c.replaced);
                    self.upkeep.retire_later(ctx, uri);
                }
                Err(e) => warn!("{uri}: compacting its member list failed: {e}"),
            },
            // Retired lists (history for snapshots), and the vacuum files
            // naming them, which every open reads: a mount that stopped
            // within the grace period left them; the worker tidies them.
            Ok(_) => self.upkeep.retire_later(ctx, uri),
            Err(e) => warn!("{uri}: cannot check its member list files: {e}"),
        }
    }
}

/// How long new entries wait before the worker merges them, so that one
/// group write takes the entries of a burst (`cp -r`, `tar x`).
const MERGE_DELAY: Duration = Duration::from_millis(200);

/// The longest new entries wait while a burst goes on. Measured, growing a
/// directory to 10,000 one `mkdir` at a time: merging every 0.2 s took
/// the 2 cores from the `mkdir`s (the last ten 2.3x those near the 100th).
const MERGE_MAX_WAIT: Duration = Duration::from_secs(2);

/// Merges recorded entries once their burst pauses for [`MERGE_DELAY`] (or
/// after [`MERGE_MAX_WAIT`]), and every grace period deletes what the
/// pending directories retired long enough ago; ends when the registry is
/// gone.
fn upkeep_worker(upkeep: std::sync::Weak<Upkeep>, ctx: tiledb::Context) {
    let Ok(vfs) = tiledb::Vfs::new(&ctx) else {
        warn!("cannot start merging new entries: no VFS");
        return;
    };
    let mut last_retire = std::time::Instant::now();
    loop {
        {
            let Some(r) = upkeep.upgrade() else { return };
            let merges = |r: &Upkeep| !r.merging.lock().unwrap_or_else(PoisonError::into_inner).is_empty();
            let stop = r.stop.lock().unwrap_or_else(PoisonError::into_inner);
            // Until new entries come or a retiring round is due...
            let wait = tiledb::RETIRE_GRACE.saturating_sub(last_retire.elapsed());
            let (stop, _) = r
                .wake
                .wait_timeout_while(stop, wait, |stop| !*stop && !merges(&r))
                .unwrap_or_else(PoisonError::into_inner);
            if *stop {
                return;
            }
            // ...then until the burst pauses for the merge delay, or goes on
            // for MERGE_MAX_WAIT: each merge writes the whole member list.
            if merges(&r) {
                let first = std::time::Instant::now();
                let mut stop = stop;
                loop {
                    let seen = r.adds.load(std::sync::atomic::Ordering::Relaxed);
                    let (s, _) = r
                        .wake
                        .wait_timeout_while(stop, r.merge_delay(), |stop| !*stop)
                        .unwrap_or_else(PoisonError::into_inner);
                    stop = s;
                    if *stop {
                        return;
                    }
                    let quiet = r.adds.load(std::sync::atomic::Ordering::Relaxed) == seen;
                    if quiet || first.elapsed() >= MERGE_MAX_WAIT.max(r.merge_delay()) {
                        break;
                    }
                }
            }
        }
        let Some(r) = upkeep.upgrade() else { return };
        for uri in take_all(&r.merging) {
            if *r.stop.lock().unwrap_or_else(PoisonError::into_inner) {
                // Put back: the registry merges what is left as it goes.
                r.merging.lock().unwrap_or_else(PoisonError::into_inner).insert(uri);
                continue;
            }
            r.merge_one(&ctx, &vfs, &uri);
        }
        if last_retire.elapsed() < tiledb::RETIRE_GRACE {
            continue;
        }
        last_retire = std::time::Instant::now();
        retire_round(&r, &ctx);
    }
}

/// Whether a group is still at `uri`: one deleted since its upkeep was
/// due gets none (writing there would make its folder again). When that
/// cannot be told, the upkeep goes ahead and reports its own failure.
fn group_stands(ctx: &tiledb::Context, uri: &str) -> bool {
    !matches!(tiledb::object_type(ctx, uri), Ok(t) if t != tiledb::ObjectType::Group)
}

/// Empties `set`, returning what it held.
fn take_all(set: &Mutex<HashSet<String>>) -> Vec<String> {
    set.lock().unwrap_or_else(PoisonError::into_inner).drain().collect()
}

/// Deletes what the pending directories retired long enough ago.
fn retire_round(r: &Arc<Upkeep>, ctx: &tiledb::Context) {
    for uri in take_all(&r.pending) {
        if *r.stop.lock().unwrap_or_else(PoisonError::into_inner) {
            return;
        }
        let lock = r.dir_lock(&uri);
        let _one_at_a_time = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if !group_stands(ctx, &uri) {
            continue;
        }
        match tiledb::vacuum_members(ctx, &uri, tiledb::RETIRE_GRACE) {
            Ok(v) => {
                if v.deleted.files > 0 {
                    log::debug!("{uri}: deleted {} retired member-list files", v.deleted.files);
                }
                // Files retired since are left for the next round.
                if v.pending {
                    r.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(uri);
                }
            }
            Err(e) => warn!("{uri}: deleting retired member-list files failed: {e}"),
        }
    }
}
