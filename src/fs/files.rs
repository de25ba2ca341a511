//! Files: open, create, read, write, commit, release and truncate.
//!
//! A file has at most one writer at a time (a second open for writing is
//! EBUSY). The writer commits when its opener closes it (`flush`) or at
//! `fsync`, and their errors are what `close()` and `fsync()` return;
//! `release` only cleans up (and commits what no `flush` did, logging
//! errors). A reader keeps the version it opened; a commit makes the new
//! version what later lookups and opens see.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a writer waits for passthrough readers of its file to close.
const UNPIN_WAIT: Duration = Duration::from_secs(1);

use log::debug;

use super::counters::Counters;
use super::dirs::DirChange;
use super::error::{CoreError, Error, Result};
use super::handles::{FileHandle, FollowHandle, Handle, WriteHandle};
use super::inode::{Inode, NodeState, Seen};
use super::read::{ChunkSource, Data, FileVersion, Prefetcher};
use super::stat::Owner;
use super::write::{Target, Writer};
use super::{Attr, Backing, CreateFlags, Fh, Ino, ModelFs, Opened, invalid_name, lock};
use crate::registry::Attrs;
use crate::registry::file_array::now_ns;
use crate::registry::{Entry, FileMeta, NameSlot, Node};

impl ModelFs {
    /// Opens a file; `write` for writing (`truncate` for `O_TRUNC`). A
    /// second writer of one file gets EBUSY.
    pub fn open(&self, ino: Ino, write: bool, truncate: bool, opener: Option<u32>) -> Result<Opened> {
        if ino == Ino::STATS {
            return self.open_stats(write);
        }
        let inode = self.inode(ino)?;
        // A change asks the registry, not the TTL's cache (see
        // `registry_node`); before the passthrough wait below, as readers
        // opening meanwhile would pin the file again.
        let node = if write && !self.config.read_only && !self.writer_busy(&inode) {
            self.registry_node(&inode)?
        } else {
            self.fresh_node(&inode)?
        };
        if let NodeState::View(view) = &node
            && !view.is_dir()
        {
            return self.open_view(&inode, view, write);
        }
        if write {
            self.check_writable(&inode.entry().uri)?;
            self.wait_unpinned(&inode)?;
            return self.open_writer(&inode, truncate, opener);
        }
        let NodeState::File(meta) = node else {
            return Err(CoreError::IsADirectory {
                what: inode.entry().uri,
            }
            .into());
        };
        let writer = inode.lock().active_writer();
        if let Some(writer) = writer {
            return Ok(self.open_following(&inode, &writer));
        }
        let uri = inode.entry().uri;
        let known = (meta.size, meta.timestamp);
        self.open_read(&inode, &uri, meta, false)
            .map_err(|e| self.stale_unless_unchanged(&inode, known, e))
    }

    /// `e`, a failed open of `inode` as read before (`known`: its size and
    /// version), or, when the file was since removed or replaced by
    /// another mount (the open trusted a lookup within the metadata TTL),
    /// [`CoreError::GoneSinceLookup`].
    fn stale_unless_unchanged(&self, inode: &Inode, known: (u64, Option<u64>), e: Error) -> Error {
        let entry = inode.entry();
        let changed = match self.store.node(&entry) {
            Ok(Node::File(now)) => (now.size, now.timestamp) != known,
            Ok(_) => true,
            Err(err) => matches!(err, crate::registry::Error::NotFound { .. }),
        };
        if !changed {
            return e;
        }
        self.forget_stale(inode, e)
    }

    /// Opens for reading a file this mount is writing (see [`FollowHandle`]).
    fn open_following(&self, inode: &Inode, writer: &Arc<Mutex<Writer>>) -> Opened {
        // It reads the latest bytes: past the page cache while a handle
        // reads a version (maybe an older one; see `Cached::reading`).
        let direct_io = {
            let mut c = inode.lock();
            c.open_handles += 1;
            !c.reading.is_empty() && self.direct_io_mmap()
        };
        Counters::add(&self.counters.opens, 1);
        let fh = self.handles.insert(Handle::Follow(FollowHandle {
            ino: inode.ino,
            writer: writer.clone(),
        }));
        debug!(
            "open ino={} fh={} following its writer, direct_io={direct_io}",
            inode.ino.0, fh.0
        );
        Opened {
            fh,
            keep_cache: false,
            direct_io,
            passthrough: None,
        }
    }

    /// A read of a [`FollowHandle`]: from the file's writer while it holds
    /// the bytes (or, for a new file unlinked before its first commit, from
    /// the writer it was opened beside), else from the latest committed
    /// version (nothing for a new file never committed).
    fn read_following(&self, f: &FollowHandle, offset: u64, size: u32) -> Result<Data> {
        let inode = self.inode(f.ino)?;
        let current = inode.lock().active_writer();
        let writer = match current {
            Some(w) => Some(w),
            None => lock(&f.writer).is_discarded().then(|| f.writer.clone()),
        };
        if let Some(writer) = writer {
            let w = lock(&writer);
            if w.serves_reads() {
                return Ok(Data::from(w.read(self.store.as_ref(), offset, size)?));
            }
        }
        let NodeState::File(meta) = self.fresh_node(&inode)? else {
            return Err(CoreError::IsADirectory {
                what: inode.entry().uri,
            }
            .into());
        };
        if meta.timestamp.is_none() && meta.kind.is_none() {
            return Ok(Data::from(Vec::new()));
        }
        let version = self.version_for(&inode, &inode.entry().uri, meta, false)?;
        let source: Arc<dyn ChunkSource> = version;
        self.read_source(&source, None, offset, size)
    }

    /// Opens version `meta` of the file stored at `uri` for reading, as
    /// inode `inode`: the current version, or (`past`) one of its
    /// `.versions`, read from its own storage only. The open version is
    /// kept by the inode and shared by its handles.
    pub(super) fn open_read(&self, inode: &Arc<Inode>, uri: &str, meta: FileMeta, past: bool) -> Result<Opened> {
        let ino = inode.ino;
        let version = self.version_for(inode, uri, meta, past)?;
        Counters::add(&self.counters.opens, 1);
        let source: Arc<dyn ChunkSource> = version.clone();
        let prefetch = Prefetcher::new(
            source.size(),
            source.chunk_bytes(),
            self.config.prefetch_window_bytes,
            self.config.prefetch_fetch_bytes,
        );
        let passthrough = match version.local_file() {
            Some(file) if self.config.passthrough => {
                let mut c = inode.lock();
                let n = match &c.pinned {
                    Some((v, n)) if v.id() == version.id() => *n,
                    _ => 0,
                };
                c.pinned = Some((version.clone(), n + 1));
                Some(Backing {
                    file,
                    version: version.id(),
                })
            }
            Some(_) => {
                Counters::add(&self.counters.passthrough_fallbacks, 1);
                None
            }
            None => None,
        };
        let (keep_cache, direct_io) = {
            let mut c = inode.lock();
            c.open_handles += 1;
            let others = c.start_reading(version.id());
            // The inode's page cache holds one version's bytes: while a
            // handle on another version is open (one opened before a
            // commit), its reads may put that version's there, so this
            // handle reads past it.
            let direct = others && passthrough.is_none() && self.direct_io_mmap();
            let keep = !direct && c.page_cache_version == Some(version.id());
            if !direct {
                c.page_cache_version = Some(version.id());
            }
            (keep, direct)
        };
        let fh = self.handles.insert(Handle::File(FileHandle {
            ino,
            version: version.id(),
            source,
            prefetch: std::sync::Mutex::new(prefetch),
            pinned: std::sync::atomic::AtomicBool::new(passthrough.is_some()),
        }));
        debug!(
            "open ino={} fh={} keep_cache={keep_cache} direct_io={direct_io} passthrough={}",
            ino.0,
            fh.0,
            passthrough.is_some()
        );
        Ok(Opened {
            fh,
            keep_cache,
            direct_io,
            passthrough,
        })
    }

    /// The version `meta` of the file stored at `uri`, as inode `inode`
    /// reads it: the one the kernel passes through to while it does, the
    /// inode's open version when it is that one, else opened now and kept
    /// by the inode.
    fn version_for(&self, inode: &Inode, uri: &str, meta: FileMeta, past: bool) -> Result<Arc<FileVersion>> {
        let (existing, pinned) = {
            let c = inode.lock();
            (c.version.clone(), c.pinned_version())
        };
        Ok(match (existing, pinned) {
            // Every open of an inode the kernel passes through to a cache
            // file must name that file: until the next lookup gives the
            // name a new inode, it is the version served.
            (_, Some(v)) => v,
            (Some(v), None) if v.meta().same_data(&meta) => v,
            _ => {
                let file = if past {
                    self.store.open_past_version(uri, meta)?
                } else {
                    self.store.open_version(uri, meta)?
                };
                let id = self.next_version.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tile = file.tile_bytes();
                let v = FileVersion::new(id, file, tile);
                inode.lock().version = Some(v.clone());
                v
            }
        })
    }

    /// Reads `size` bytes at `offset` of `source`: through the chunk cache
    /// with read-ahead (when `prefetch` plans it), or straight from a
    /// complete disk cache file, whose page cache is the cache.
    fn read_source(
        &self,
        source: &Arc<dyn ChunkSource>,
        prefetch: Option<&std::sync::Mutex<Prefetcher>>,
        offset: u64,
        size: u32,
    ) -> Result<Data> {
        let failed = |e| CoreError::Read {
            what: source.describe().to_string(),
            offset,
            error: Box::new(e),
        };
        if source.is_local() {
            let len = source.size().saturating_sub(offset).min(size as u64);
            let buf = source.read_exact(offset, len as usize).map_err(failed)?;
            return Ok(Data::from(buf));
        }
        if let Some(prefetch) = prefetch {
            let (plan, streak_start) = {
                let mut p = prefetch.lock().unwrap_or_else(PoisonError::into_inner);
                (p.on_read(offset, size as u64), p.streak_start())
            };
            if let Some(range) = plan {
                self.prefetch.submit(source, range, streak_start);
            }
        }
        Ok(self.cache.read_data(source.as_ref(), offset, size).map_err(failed)?)
    }

    fn open_writer(&self, inode: &Arc<Inode>, truncate: bool, opener: Option<u32>) -> Result<Opened> {
        // Claimed under the inode's lock, which a release holds to detach
        // a writer whose last handle went: never both.
        let shared = {
            let mut c = inode.lock();
            match c.active_writer() {
                Some(writer) => {
                    let mut w = lock(&writer);
                    if w.is_streaming() {
                        return Err(CoreError::AlreadyOpenForWriting { uri: inode.entry().uri }.into());
                    }
                    w.handles += 1;
                    drop(w);
                    c.open_handles += 1;
                    Some(writer)
                }
                None => None,
            }
        };
        if let Some(writer) = shared {
            return self.share_writer(inode, writer, truncate, opener);
        }
        let entry = inode.entry();
        let NodeState::File(meta) = self.fresh_node(inode)? else {
            return Err(CoreError::IsADirectory { what: entry.uri }.into());
        };
        let dir = self.inode(inode.parent())?.entry();
        let target = Target {
            dir,
            entry,
            exists: true,
        };
        let writer = Writer::new(target, truncate, self.staging.clone(), meta.size);
        self.attach_writer(inode, writer, opener, truncate)
    }

    /// A second open for writing of a file this mount is writing: the
    /// handles share its writer, as descriptors of one local file share
    /// its bytes (lock files: `filelock`, as `huggingface_hub` uses it,
    /// opens the lock file for writing in every process that waits for
    /// it), and each opener's close commits what is there. A file
    /// streamed into storage takes one writer (EBUSY). The caller counted
    /// the new handle in the writer's and the inode's.
    fn share_writer(
        &self,
        inode: &Inode,
        writer: Arc<Mutex<Writer>>,
        truncate: bool,
        opener: Option<u32>,
    ) -> Result<Opened> {
        if truncate && let Err(e) = lock(&writer).truncate(self.store.as_ref(), 0) {
            let mut c = inode.lock();
            c.open_handles = c.open_handles.saturating_sub(1);
            let mut w = lock(&writer);
            w.handles = w.handles.saturating_sub(1);
            return Err(e);
        }
        let opened = self.write_handle(inode, writer, opener, truncate);
        debug!("open ino={} fh={} sharing its writer", inode.ino.0, opened.fh.0);
        Ok(opened)
    }

    /// A new handle on `writer` (counted in the inode's open handles by
    /// the caller); `wrote`: opened with `O_TRUNC` or created.
    fn write_handle(&self, inode: &Inode, writer: Arc<Mutex<Writer>>, opener: Option<u32>, wrote: bool) -> Opened {
        Counters::add(&self.counters.opens, 1);
        let fh = self.handles.insert(Handle::Write(WriteHandle {
            ino: inode.ino,
            writer,
            opener,
            wrote: AtomicBool::new(wrote),
        }));
        Opened {
            fh,
            keep_cache: false,
            direct_io: false,
            passthrough: None,
        }
    }

    /// Makes `writer` the inode's, unless another open made one meanwhile:
    /// then that one is shared (see [`ModelFs::share_writer`]; `truncate`
    /// for `O_TRUNC` or a create).
    fn attach_writer(
        &self,
        inode: &Arc<Inode>,
        mut writer: Writer,
        opener: Option<u32>,
        truncate: bool,
    ) -> Result<Opened> {
        writer.handles = 1;
        let writer = Arc::new(Mutex::new(writer));
        {
            let mut c = inode.lock();
            if let Some(other) = c.active_writer() {
                drop(c);
                return self.share_writer(inode, other, truncate, opener);
            }
            c.writer = Arc::downgrade(&writer);
            c.open_handles += 1;
            c.page_cache_version = None;
        }
        Ok(self.write_handle(inode, writer, opener, truncate))
    }

    /// Creates file `name` in `parent` for writing; when it exists (made
    /// meanwhile by another process), see [`CreateFlags`]. It is listed at
    /// once and committed at close. `mode` has the umask applied; `who`
    /// makes it.
    pub fn create(
        &self,
        parent: Ino,
        name: &str,
        flags: CreateFlags,
        opener: Option<u32>,
        mode: u32,
        who: Owner,
    ) -> Result<(Attr, Opened)> {
        self.check_writable(name)?;
        let dir = self.changeable_dir(parent, "create")?;
        self.refuse_versions_name(&dir, name, "create")?;
        self.check_dir_still_shown(&dir)?;
        if let Some(reason) = crate::registry::names::invalid_name_reason(name) {
            return Err(invalid_name(name, reason));
        }
        let dir_entry = dir.entry();
        // One listing tells whether the name is taken and, if not, where a
        // new file goes.
        let uri = match self.creating_child(&dir, name) {
            Some(inode) => {
                return self.create_existing(parent, inode.entry(), Some(inode), flags, opener);
            }
            None => match self.store.claim_name(&dir_entry, name)? {
                NameSlot::Taken(entry) => {
                    return self.create_existing(parent, entry, None, flags, opener);
                }
                NameSlot::Free(uri) => uri,
            },
        };
        let entry = Entry {
            name: name.to_string(),
            uri,
            storage: crate::registry::Storage::Array,
        };
        let attrs = self.new_attrs(mode, who);
        // Until its first commit the file shows its creation time; the
        // commit's time then becomes its mtime (so it is not stored).
        let now = Some(now_ns());
        let blank = crate::registry::FileMeta {
            size: 0,
            timestamp: None,
            kind: None,
            tensors: None,
            attrs: Attrs {
                mtime_ns: now,
                atime_ns: now,
                ctime_ns: now,
                ..attrs
            },
        };
        let inode = self
            .inodes
            .upsert(parent, entry.clone(), NodeState::File(blank.clone()), Seen::Read);
        let target = Target {
            dir: dir_entry,
            entry,
            exists: false,
        };
        let mut writer = Writer::new(target, true, self.staging.clone(), 0);
        writer.set_attrs(attrs);
        if let Some(created) = now {
            writer.set_created(created);
        }
        let opened = self.attach_writer(&inode, writer, opener, true)?;
        self.touch_dir(parent, &[], None, DirChange::HereOnly);
        self.inodes.remember(&inode);
        Ok((self.attr_of(inode.ino, &NodeState::File(blank)), opened))
    }

    /// `create` of a name that is taken: EEXIST with `O_EXCL`, else the file
    /// opened for writing as `open` would (truncated only for `O_TRUNC`).
    fn create_existing(
        &self,
        parent: Ino,
        entry: Entry,
        known: Option<Arc<Inode>>,
        flags: CreateFlags,
        opener: Option<u32>,
    ) -> Result<(Attr, Opened)> {
        if flags.exclusive {
            return Err(CoreError::Exists { what: entry.uri }.into());
        }
        let inode = match known {
            Some(i) => i,
            None => {
                let started = Instant::now();
                let node = self
                    .node_of(&entry)?
                    .ok_or_else(|| CoreError::ExistsNotAFile { uri: entry.uri.clone() })?;
                self.inodes.upsert_read_since(parent, entry, node, started).0
            }
        };
        self.wait_unpinned(&inode)?;
        let opened = self.open_writer(&inode, flags.truncate, opener)?;
        self.inodes.remember(&inode);
        Ok((self.getattr(inode.ino)?, opened))
    }

    /// Writes `data` at `offset` through a handle open for writing.
    pub fn write(&self, fh: Fh, offset: u64, data: &[u8]) -> Result<u32> {
        let handle = self.handles.get(fh).ok_or(CoreError::BadHandle { fh: fh.0 })?;
        let Handle::Write(w) = handle.as_ref() else {
            return Err(CoreError::NotOpenForWriting.into());
        };
        if !data.is_empty() {
            w.wrote.store(true, Ordering::Release);
        }
        let n = lock(&w.writer).write(self.store.as_ref(), offset, data)?;
        Counters::add(&self.counters.bytes_written, n as u64);
        Ok(n as u32)
    }

    /// Commits a writing handle's changes when its opener closes it (`close`
    /// calls this for every descriptor; `caller` is the closing process);
    /// its errors are what `close()` returns.
    pub fn flush(&self, fh: Fh, caller: Option<u32>) -> Result<()> {
        let Some(handle) = self.handles.get(fh) else {
            return Ok(());
        };
        let Handle::Write(w) = handle.as_ref() else {
            return Ok(());
        };
        if w.opener.is_some() && caller.is_some() && w.opener != caller {
            debug!(
                "flush fh={} by process {caller:?}, not the opener {:?}: not committed",
                fh.0, w.opener
            );
            return Ok(());
        }
        // Commits what this handle changed (another sharing the writer
        // commits its own).
        let by_path = std::mem::take(&mut lock(&w.writer).changed_by_path);
        let result = if w.wrote.swap(false, Ordering::AcqRel) || by_path {
            self.commit(w)
        } else {
            Ok(())
        };
        let (alone, failed, new) = {
            let writer = lock(&w.writer);
            (writer.handles == 1, writer.has_failed(), !writer.target().exists)
        };
        // A flush is not the end of the handle (a shell closes the
        // descriptor it opened and writes through its copy: `cmd >> log`
        // from several processes), so the writer stays the file's: later
        // opens share it, readers follow it. With nothing left to commit
        // it is idle: the file renames and is replaced as any other
        // (`creating_child`). A failed writer is nobody's.
        if let Some(inode) = self.inodes.get(w.ino) {
            if failed {
                inode.lock().detach_writer(&w.writer);
            }
            // A new file whose first commit failed (or was refused) does
            // not exist, unless another handle still writes it.
            if result.is_err() && new && alone {
                self.inodes.remove_name(inode.parent(), &inode.entry().name);
            }
        }
        result
    }

    fn commit(&self, w: &WriteHandle) -> Result<()> {
        // A new file's first commit links it into its directory: not into
        // one another mount removed since the create (it was empty then).
        // `create` checked the directory: again only for a file open longer
        // than the metadata TTL (each check reads the directory's parent:
        // about 16 requests on S3), so short writes keep their cost.
        let links = {
            let writer = lock(&w.writer);
            let ttl_ns = u64::try_from(self.config.metadata_ttl.as_nanos()).unwrap_or(u64::MAX);
            let checked_lately = writer
                .created_ns()
                .is_some_and(|t| crate::registry::file_array::now_ns().saturating_sub(t) < ttl_ns);
            !writer.target().exists && writer.needs_commit() && !checked_lately
        };
        if links
            && let Some(dir) = self.inodes.get(w.ino).and_then(|i| self.inodes.get(i.parent()))
            && let Err(e) = self.check_dir_still_shown(&dir)
        {
            log::warn!("commit of {} refused: {e}", lock(&w.writer).target().entry.uri);
            Counters::add(&self.counters.commit_failures, 1);
            return Err(e);
        }
        let (committed, was_new) = {
            let mut writer = lock(&w.writer);
            let was_new = !writer.target().exists;
            (writer.commit(self.store.as_ref()), was_new)
        };
        let committed = committed.inspect_err(|_| {
            Counters::add(&self.counters.commit_failures, 1);
        })?;
        if committed.is_some() {
            Counters::add(&self.counters.commits, 1);
        }
        if let Some(committed) = committed
            && let Some(inode) = self.inodes.get(w.ino)
        {
            if was_new {
                let entry = lock(&w.writer).target().entry.clone();
                self.touch_dir(inode.parent(), &[], Some(&entry), DirChange::Stored);
            } else {
                self.forget_listing(inode.parent());
            }
            let entry = lock(&w.writer).target().entry.clone();
            self.forget_history(&entry.uri);
            // The new version becomes what lookups and opens see, also
            // through the inode now holding the name if it is another one
            // for the same storage (a file renamed over this one while
            // open).
            // A first version's metadata is what its commit wrote; a later
            // one's also holds what earlier writes left, so it is read.
            let meta = committed.meta.or_else(|| match self.store.node(&entry) {
                Ok(Node::File(meta)) => Some(meta),
                _ => None,
            });
            if let Some(meta) = meta {
                let named = self
                    .inodes
                    .find(inode.parent(), &entry.name)
                    .filter(|o| !Arc::ptr_eq(o, &inode) && o.entry().same_storage(&entry));
                for i in std::iter::once(&inode).chain(named.as_ref()) {
                    let mut c = i.lock();
                    // Another handle's commit of the writer, made later,
                    // may have stored its node first.
                    if matches!(&c.node, NodeState::File(m) if m.timestamp > meta.timestamp) {
                        continue;
                    }
                    c.node = NodeState::File(meta.clone());
                    c.read_at = Some(Instant::now());
                    c.version = None;
                    c.page_cache_version = None;
                }
                lock(&w.writer).settle(committed.timestamp);
            }
        }
        Ok(())
    }

    pub fn fsync(&self, fh: Fh) -> Result<()> {
        let Some(handle) = self.handles.get(fh) else {
            return Ok(());
        };
        let Handle::Write(w) = handle.as_ref() else {
            return Ok(());
        };
        self.commit(w)
    }

    /// Closes a handle. A writer with uncommitted changes (no `flush` came)
    /// is committed here; errors can only be logged.
    pub fn release(&self, fh: Fh) {
        let Some(h) = self.handles.remove(fh) else { return };
        let ino = match h.as_ref() {
            Handle::File(f) => {
                if f.pinned.swap(false, std::sync::atomic::Ordering::AcqRel) {
                    self.unpin(f.ino);
                }
                if let Some(inode) = self.inodes.get(f.ino) {
                    inode.lock().stop_reading(f.version);
                }
                f.ino
            }
            Handle::Write(w) => {
                // Its own changes, or anything left when no other handle
                // will commit it (a truncation by path meanwhile).
                let ours = w.wrote.swap(false, Ordering::AcqRel);
                let (dirty, last) = {
                    let mut writer = lock(&w.writer);
                    writer.handles = writer.handles.saturating_sub(1);
                    let last = writer.handles == 0;
                    ((ours || last) && writer.needs_commit(), last)
                };
                if dirty && let Err(e) = self.commit(w) {
                    log::log!(e.level, "release: {e}");
                }
                // Nobody writes the file any more, though readers that
                // followed the writer may still hold it. Checked again under
                // the inode's lock: an open may have shared it meanwhile.
                if last && let Some(inode) = self.inodes.get(w.ino) {
                    let mut c = inode.lock();
                    if lock(&w.writer).handles == 0 {
                        c.detach_writer(&w.writer);
                    }
                }
                w.ino
            }
            Handle::Follow(f) => f.ino,
            Handle::View(_) | Handle::Generated(_) | Handle::Dir { .. } => return,
        };
        debug!("release ino={} fh={}", ino.0, fh.0);
        if let Some(inode) = self.inodes.get(ino) {
            let delete = {
                let mut c = inode.lock();
                c.open_handles = c.open_handles.saturating_sub(1);
                c.open_handles == 0 && std::mem::take(&mut c.delete_on_close)
            };
            // Another inode of the same storage still open (the name got a
            // newer inode meanwhile) deletes it at its own last close.
            let entry = inode.entry();
            let shared = || {
                self.inodes
                    .stored_at(&entry.uri)
                    .iter()
                    .any(|o| !Arc::ptr_eq(o, &inode) && o.lock().open_handles > 0)
            };
            if delete
                && !shared()
                && let Some(dir) = self.inodes.get(inode.parent())
            {
                self.delete_unlinked(&dir, &entry, None);
            }
        }
    }

    /// The adapter answered open `fh` without passthrough although it was
    /// offered: the handle no longer holds its inode's pinned version.
    pub fn passthrough_declined(&self, fh: Fh) {
        if let Some(h) = self.handles.get(fh)
            && let Handle::File(f) = h.as_ref()
            && f.pinned.swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            self.unpin(f.ino);
        }
    }

    /// The adapter refuses the writer `fh` just opened on inode `ino`
    /// (the kernel passes that inode through to a cache file): it is closed
    /// without committing anything. Returns the error to answer with.
    pub fn abandon_writer(&self, fh: Fh, ino: u64) -> super::Error {
        if let Some(h) = self.handles.get(fh)
            && let Handle::Write(w) = h.as_ref()
        {
            lock(&w.writer).discard();
        }
        self.release(fh);
        let uri = self.inodes.get(Ino(ino)).map(|i| i.entry().uri).unwrap_or_default();
        CoreError::PassedThrough { uri }.into()
    }

    fn unpin(&self, ino: Ino) {
        if let Some(inode) = self.inodes.get(ino) {
            let mut c = inode.lock();
            if let Some((_, n)) = &mut c.pinned {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.pinned = None;
                }
            }
        }
    }

    /// Waits a little for the handles reading `inode` through passthrough
    /// to close (the kernel sends their release after `close()` returns),
    /// then refuses a writer: the kernel would send its writes to the
    /// cache file (ETXTBSY, as for a running executable).
    fn wait_unpinned(&self, inode: &Inode) -> Result<()> {
        let start = Instant::now();
        while inode.lock().pinned_version().is_some() {
            if start.elapsed() > UNPIN_WAIT {
                return Err(CoreError::PassedThrough { uri: inode.entry().uri }.into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Reads up to `size` bytes at `offset`; short only at the end.
    pub fn read(&self, fh: Fh, offset: u64, size: u32) -> Result<Data> {
        let handle = self.handles.get(fh).ok_or(CoreError::BadHandle { fh: fh.0 })?;
        let out = match handle.as_ref() {
            Handle::File(f) => self.read_source(&f.source, Some(&f.prefetch), offset, size)?,
            Handle::Follow(f) => self.read_following(f, offset, size)?,
            Handle::Write(w) => Data::from(lock(&w.writer).read(self.store.as_ref(), offset, size)?),
            Handle::View(file) => {
                let mut buf = vec![0u8; size as usize];
                let n = file
                    .read_at(offset, &mut buf)
                    .map_err(|error| CoreError::ViewSpillRead { offset, error })?;
                buf.truncate(n);
                Data::from(buf)
            }
            Handle::Generated(bytes) => {
                let start = (offset as usize).min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                Data::from(bytes[start..end].to_vec())
            }
            Handle::Dir { .. } => return Err(CoreError::ReadOfDirectory.into()),
        };
        Counters::add(&self.counters.reads_served, 1);
        Counters::add(&self.counters.bytes_served, out.len() as u64);
        Ok(out)
    }

    pub(super) fn truncate(&self, inode: &Arc<Inode>, size: u64, fh: Option<Fh>) -> Result<()> {
        self.check_writable(&inode.entry().uri)?;
        // A generated file (a version, a TileDB-ML view's): EROFS.
        if matches!(inode.lock().node, NodeState::View(_)) {
            self.refuse_view_change(inode, "truncate")?;
        }
        // Through the handle it came with, or the file's open writer (the
        // kernel truncates for `O_TRUNC` without naming the handle).
        let (writer, by_path) = match fh.and_then(|fh| self.handles.get(fh)).as_deref() {
            Some(Handle::Write(w)) => {
                w.wrote.store(true, Ordering::Release);
                (Some(w.writer.clone()), false)
            }
            _ => (inode.lock().active_writer(), true),
        };
        if let Some(w) = writer {
            let mut w = lock(&w);
            w.changed_by_path |= by_path;
            return w.truncate(self.store.as_ref(), size);
        }
        // Nobody writes it: a new version of `size` bytes, committed now
        // (to what the name holds now: `truncate(2)` by path).
        self.registry_node(inode)?;
        let opened = self.open_writer(inode, size == 0, None)?;
        let result = match self.handles.get(opened.fh).as_deref() {
            Some(Handle::Write(w)) => {
                let truncated = lock(&w.writer).truncate(self.store.as_ref(), size);
                truncated.and_then(|()| self.commit(w))
            }
            _ => Ok(()),
        };
        self.release(opened.fh);
        result
    }
}
