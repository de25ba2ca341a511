//! The disk cache as a store in front of another: versions complete in the
//! cache are read from their local files, others from the registry with the
//! bytes read kept on the way (a whole version, once its reads cover it),
//! and versions written through the mount are kept when they commit. Every
//! other call goes to the inner store unchanged. A failure of the cache
//! never fails a read or a write: the cache is left out for that version.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::{DiskCache, Fill, NoFill, VersionKey};
use crate::fs::counters::Counters;
use crate::fs::store::{QueryBuf, Store, StoredVersion, VersionWriter};
use crate::registry::tiledb_ml::{ModelOptions, TileDbMlModel};
use crate::registry::{
    Attrs, Committed, DirStat, Entry, FileKind, FileMeta, History, NameSlot, Node, Result, StatLabel, Summaries,
};

/// A reader starts an entry once it reads past this offset (or at once
/// for smaller files): a reader of a header alone (`safe_open`) must not
/// evict cached versions to make room for a file it will not read.
pub const FILL_START_BYTES: u64 = 16 << 20;

/// Once the reads have covered all but this many bytes of a version, the
/// rest (the start read before the entry began, or a few holes) is read
/// from the registry and the entry committed.
pub const FILL_GAP_BYTES: u64 = 64 << 20;

/// Bytes per registry read when completing an entry.
const GAP_READ_BYTES: u64 = 8 << 20;

/// `inner` with `cache` in front.
pub struct CachingStore {
    inner: Arc<dyn Store>,
    cache: Arc<DiskCache>,
    counters: Arc<Counters>,
}

impl CachingStore {
    pub fn new(inner: Arc<dyn Store>, cache: Arc<DiskCache>, counters: Arc<Counters>) -> Self {
        CachingStore { inner, cache, counters }
    }

    /// `inner`, with what it writes also kept as a cache entry.
    fn tee(&self, inner: Box<dyn VersionWriter>, uri: &str, size: u64) -> Box<dyn VersionWriter> {
        Box::new(TeeWriter {
            inner,
            cache: self.cache.clone(),
            uri: uri.to_string(),
            fill: self.cache.begin_fill("written", size).ok(),
        })
    }
}

enum Local {
    /// Not in the cache; nothing read far enough yet to start an entry.
    Idle,
    Filling(Arc<Fill>),
    Ready(Arc<File>),
    /// No entry could start (another mount was filling it, or entries
    /// being written left no room): looked for, and started, again from
    /// this instant on.
    Later(Instant),
    /// Not cached (no version timestamp, too large, a cache failure).
    Off,
}

/// How long a version whose entry could not start waits before trying
/// again: each try takes the cache's lock and lists its folder.
const FILL_RETRY: Duration = Duration::from_secs(1);

/// One version: its local file when complete, the registry otherwise.
struct CachedVersion {
    /// The version in the registry, opened at the first read the local
    /// file cannot serve: a version found in the cache costs no request.
    inner: Mutex<Option<Arc<dyn StoredVersion>>>,
    store: Arc<dyn Store>,
    uri: String,
    meta: FileMeta,
    cache: Arc<DiskCache>,
    counters: Arc<Counters>,
    key: Option<VersionKey>,
    local: Arc<Mutex<Local>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tile assumed for a version read from its local file, whose array
/// is not opened (the tile only sizes the chunks of registry reads).
const LOCAL_TILE_BYTES: u64 = 256 << 10;

impl CachedVersion {
    /// The version in the registry, opened now if it was not.
    fn inner(&self) -> Result<Arc<dyn StoredVersion>> {
        if let Some(v) = &*lock(&self.inner) {
            return Ok(v.clone());
        }
        // Opened without the lock (no lock is held across TileDB I/O); of
        // two racing opens the first one kept wins.
        let v: Arc<dyn StoredVersion> = Arc::from(self.store.open_version(&self.uri, self.meta.clone())?);
        Ok(lock(&self.inner).get_or_insert(v).clone())
    }

    /// Reads from the local file: `None` when there is none, or when it
    /// failed (the cache is then left out for this version).
    fn read_local(&self, offset: u64, buf: &mut [u8]) -> Option<usize> {
        let file = match &*lock(&self.local) {
            Local::Ready(f) => f.clone(),
            _ => return None,
        };
        let size = self.meta.size;
        let want = (size.saturating_sub(offset)).min(buf.len() as u64) as usize;
        match file.read_exact_at(&mut buf[..want], offset) {
            Ok(()) => {
                Counters::add(&self.counters.disk_cache_read_bytes, want as u64);
                Some(want)
            }
            Err(e) => {
                warn!(
                    "disk cache: reading {} from its cache file failed ({e}); reading the registry",
                    self.uri
                );
                *lock(&self.local) = Local::Off;
                None
            }
        }
    }

    /// The entry bytes read up to `end` go into: the one being filled, or
    /// one started now once the reads get far enough.
    ///
    /// Another mount may have completed the entry since this version was
    /// opened: it is then read from, from the next read on. A version
    /// whose entry could not start tries again after [`FILL_RETRY`].
    fn fill_for(&self, key: &VersionKey, end: u64) -> Option<Arc<Fill>> {
        let mut local = lock(&self.local);
        let far_enough = key.size <= FILL_START_BYTES || end >= FILL_START_BYTES;
        match &*local {
            Local::Filling(f) => return Some(f.clone()),
            Local::Idle if far_enough => {}
            Local::Later(at) if far_enough && Instant::now() >= *at => {}
            _ => return None,
        }
        if let Some(file) = self.cache.lookup(key) {
            *local = Local::Ready(file);
            return None;
        }
        match self.cache.begin_fill(&key.file_name(), key.size) {
            Ok(f) => {
                *local = Local::Filling(f.clone());
                Some(f)
            }
            Err(NoFill::NotNow) => {
                *local = Local::Later(Instant::now() + FILL_RETRY);
                None
            }
            Err(NoFill::Never) => {
                *local = Local::Off;
                None
            }
        }
    }

    /// Keeps `bytes`, read from the registry at `offset`, in the entry.
    fn tee(&self, inner: &Arc<dyn StoredVersion>, offset: u64, bytes: &[u8]) {
        let Some(key) = &self.key else { return };
        let end = offset.saturating_add(bytes.len() as u64);
        if let Some(fill) = self.fill_for(key, end) {
            self.keeper().keep(inner, &fill, key, offset, bytes);
        }
    }

    fn keeper(&self) -> Keeper {
        Keeper {
            uri: self.uri.clone(),
            cache: self.cache.clone(),
            local: self.local.clone(),
        }
    }

    /// [`CachedVersion::tee`] of a query's bytes, written behind the read
    /// by the cache's writer thread when it has room for them (the read
    /// then waits on the registry only), else here.
    fn tee_query(&self, inner: &Arc<dyn StoredVersion>, offset: u64, read: &QueryBuf) {
        let Some(key) = &self.key else { return };
        let Some(fill) = self.fill_for(key, offset.saturating_add(read.len as u64)) else {
            return;
        };
        let queued = fill.queue();
        let job = {
            let (keeper, inner, key, read) = (self.keeper(), inner.clone(), key.clone(), read.clone());
            Box::new(move || {
                keeper.keep(&inner, &fill, &key, offset, read.bytes());
                drop(queued);
            })
        };
        if let Err(job) = self.cache.write_behind(job) {
            job();
        }
    }
}

/// What keeping a version's bytes in its entry needs, apart from the
/// version: for the cache's writer thread.
struct Keeper {
    uri: String,
    cache: Arc<DiskCache>,
    local: Arc<Mutex<Local>>,
}

impl Keeper {
    /// Records `bytes` at `offset` in `fill`; completes the entry once the
    /// reads have covered nearly all of it.
    fn keep(&self, inner: &Arc<dyn StoredVersion>, fill: &Arc<Fill>, key: &VersionKey, offset: u64, bytes: &[u8]) {
        if let Err(e) = fill.record(offset, bytes) {
            warn!("disk cache: writing {} into the cache failed: {e}", self.uri);
            *lock(&self.local) = Local::Off;
            return;
        }
        if fill.covered().saturating_add(FILL_GAP_BYTES) >= key.size && fill.claim() {
            self.finish(inner.clone(), fill.clone(), key.clone());
        }
    }

    /// Completes and commits the entry on a thread of its own: the read
    /// that got here returns at once.
    fn finish(&self, inner: Arc<dyn StoredVersion>, fill: Arc<Fill>, key: VersionKey) {
        let cache = self.cache.clone();
        let local = self.local.clone();
        let spawned = std::thread::Builder::new()
            .name("modelfs-disk-cache".into())
            .spawn(move || {
                let done = complete(inner.as_ref(), &fill)
                    .and_then(|()| cache.commit(&fill, &key).map_err(|e| format!("committing: {e}")));
                let mut local = lock(&local);
                match done {
                    Ok(file) => *local = Local::Ready(file),
                    Err(e) => {
                        warn!("disk cache: {} not kept: {e}", key.uri);
                        *local = Local::Off;
                    }
                }
            });
        if let Err(e) = spawned {
            warn!("disk cache: starting a thread: {e}");
            *lock(&self.local) = Local::Off;
        }
    }
}

/// Reads the ranges `fill` lacks from the registry.
fn complete(inner: &dyn StoredVersion, fill: &Fill) -> std::result::Result<(), String> {
    // Bytes already read and waiting to be written are not read again.
    fill.settle();
    // A range another thread was recording while this one looked may be
    // left partly uncovered: look again.
    for _ in 0..3 {
        let missing = fill.missing();
        if missing.is_empty() {
            break;
        }
        read_into(inner, fill, &missing)?;
    }
    // What readers are still writing counts once written.
    fill.settle();
    Ok(())
}

fn read_into(
    inner: &dyn StoredVersion,
    fill: &Fill,
    missing: &[std::ops::Range<u64>],
) -> std::result::Result<(), String> {
    for gap in missing.iter().cloned() {
        let mut at = gap.start;
        while at < gap.end {
            let len = (gap.end - at).min(GAP_READ_BYTES) as usize;
            // Read as queries are, so the bytes go to disk without a copy.
            let read = inner
                .read_query(at, len)
                .map_err(|e| format!("reading the rest: {e}"))?;
            if read.len == 0 {
                return Err(format!("the registry gave nothing at byte {at}"));
            }
            fill.record(at, read.bytes()).map_err(|e| format!("writing: {e}"))?;
            at += read.len as u64;
        }
    }
    Ok(())
}

impl StoredVersion for CachedVersion {
    fn meta(&self) -> &FileMeta {
        &self.meta
    }

    fn tile_bytes(&self) -> u64 {
        match &*lock(&self.inner) {
            Some(v) => v.tile_bytes(),
            None => LOCAL_TILE_BYTES,
        }
    }

    fn uri(&self) -> &str {
        &self.uri
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if let Some(n) = self.read_local(offset, buf) {
            return Ok(n);
        }
        let inner = self.inner()?;
        let n = inner.read_at(offset, buf)?;
        self.tee(&inner, offset, &buf[..n]);
        Ok(n)
    }

    fn read_append(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<usize> {
        // From the local file (or, should that fail, the registry).
        if matches!(&*lock(&self.local), Local::Ready(_)) {
            return crate::fs::store::append_zeroed(out, len, |buf| self.read_at(offset, buf));
        }
        let inner = self.inner()?;
        let start = out.len();
        let n = inner.read_append(offset, len, out)?;
        self.tee(&inner, offset, &out[start..start + n]);
        Ok(n)
    }

    fn read_query(&self, offset: u64, len: usize) -> Result<QueryBuf> {
        if matches!(&*lock(&self.local), Local::Ready(_)) {
            return crate::fs::store::query_by_append(self, offset, len);
        }
        let inner = self.inner()?;
        let read = inner.read_query(offset, len)?;
        self.tee_query(&inner, offset, &read);
        Ok(read)
    }

    fn local_file(&self) -> Option<Arc<File>> {
        match &*lock(&self.local) {
            Local::Ready(f) => Some(f.clone()),
            _ => None,
        }
    }
}

/// A new version written to the registry and, on the side, to the cache.
struct TeeWriter {
    inner: Box<dyn VersionWriter>,
    cache: Arc<DiskCache>,
    uri: String,
    fill: Option<Arc<Fill>>,
}

impl VersionWriter for TeeWriter {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        let at = self.inner.written();
        self.inner.write(data)?;
        if let Some(fill) = &self.fill
            && let Err(e) = fill.record(at, data)
        {
            warn!("disk cache: writing {} into the cache failed: {e}", self.uri);
            self.fill = None;
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.inner.written()
    }

    fn set_attrs(&mut self, attrs: Attrs) {
        self.inner.set_attrs(attrs)
    }

    fn commit(self: Box<Self>, kind: &FileKind) -> Result<Committed> {
        let TeeWriter {
            inner,
            cache,
            uri,
            fill,
        } = *self;
        let size = inner.written();
        let committed = inner.commit(kind)?;
        if let Some(fill) = fill {
            let key = cache.key(&uri, committed.timestamp, size);
            // Synced and renamed off the `close()` path.
            let spawned = std::thread::Builder::new()
                .name("modelfs-disk-cache".into())
                .spawn(move || {
                    if let Err(e) = cache.commit(&fill, &key) {
                        debug!("disk cache: written version of {} not kept: {e}", key.uri);
                    }
                });
            if let Err(e) = spawned {
                warn!("disk cache: starting a thread: {e}");
            }
        }
        Ok(committed)
    }
}

impl Store for CachingStore {
    fn open_version(&self, uri: &str, meta: FileMeta) -> Result<Box<dyn StoredVersion>> {
        // Versions without a timestamp (written by other tools) are read as
        // of now: nothing identifies them, so they are never cached.
        let key = meta.timestamp.map(|ts| self.cache.key(uri, ts, meta.size));
        let local = match key.as_ref().map(|k| self.cache.lookup(k)) {
            Some(Some(file)) => Local::Ready(file),
            Some(None) => Local::Idle,
            None => Local::Off,
        };
        // Opened now unless cached, so an unreadable array fails the open.
        let inner = match local {
            Local::Ready(_) => None,
            _ => Some(Arc::from(self.inner.open_version(uri, meta.clone())?)),
        };
        Ok(Box::new(CachedVersion {
            inner: Mutex::new(inner),
            store: self.inner.clone(),
            uri: uri.to_string(),
            meta,
            cache: self.cache.clone(),
            counters: self.counters.clone(),
            key,
            local: Arc::new(Mutex::new(local)),
        }))
    }

    fn history(&self, uri: &str) -> Result<History> {
        self.inner.history(uri)
    }

    /// Past versions are read from storage: they are rarely read twice, and
    /// a pruned one must give its error, not bytes a cache kept.
    fn open_past_version(&self, uri: &str, meta: FileMeta) -> Result<Box<dyn StoredVersion>> {
        self.inner.open_past_version(uri, meta)
    }

    fn retire(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        self.inner.retire(dir, entry)
    }

    fn begin_version(&self, uri: &str, name: &str, size: u64) -> Result<Box<dyn VersionWriter>> {
        let inner = self.inner.begin_version(uri, name, size)?;
        Ok(self.tee(inner, uri, size))
    }

    fn begin_first_version(&self, uri: &str, name: &str, size: u64) -> Result<Box<dyn VersionWriter>> {
        let inner = self.inner.begin_first_version(uri, name, size)?;
        Ok(self.tee(inner, uri, size))
    }

    fn resolve(&self, uri: &str) -> Result<Option<Entry>> {
        self.inner.resolve(uri)
    }

    fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        self.inner.list(dir)
    }

    fn lookup(&self, dir: &Entry, name: &str) -> Result<Option<Entry>> {
        self.inner.lookup(dir, name)
    }

    fn node(&self, entry: &Entry) -> Result<Node> {
        self.inner.node(entry)
    }

    fn dir_with_entries(&self, dir: &Entry) -> Result<(Attrs, Vec<Entry>)> {
        self.inner.dir_with_entries(dir)
    }

    fn dir_stats(&self, dir: &Entry, children: &[Entry]) -> Result<Option<Summaries>> {
        self.inner.dir_stats(dir, children)
    }

    fn save_dir_stat(&self, dir: &Entry, label: &StatLabel, stat: &DirStat) -> Result<()> {
        self.inner.save_dir_stat(dir, label, stat)
    }

    fn array_version(&self, uri: &str) -> Result<u64> {
        self.inner.array_version(uri)
    }

    fn tiledb_ml_model(&self, uri: &str, options: &ModelOptions) -> Result<TileDbMlModel> {
        self.inner.tiledb_ml_model(uri, options)
    }

    fn new_child_uri(&self, dir: &Entry, name: &str) -> Result<String> {
        self.inner.new_child_uri(dir, name)
    }

    fn claim_name(&self, dir: &Entry, name: &str) -> Result<NameSlot> {
        self.inner.claim_name(dir, name)
    }

    fn create_file(&self, name: &str, uri: &str) -> Result<Entry> {
        self.inner.create_file(name, uri)
    }

    fn mkdir(&self, dir: &Entry, name: &str, attrs: &Attrs) -> Result<Entry> {
        self.inner.mkdir(dir, name, attrs)
    }

    fn link(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        self.inner.link(dir, entry)
    }

    fn replace_member(&self, dir: &Entry, old: &Entry, new: &Entry) -> Result<()> {
        self.inner.replace_member(dir, old, new)
    }

    fn unlink(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        self.inner.unlink(dir, entry)
    }

    fn is_empty_dir(&self, dir: &Entry) -> Result<bool> {
        self.inner.is_empty_dir(dir)
    }

    fn delete_storage(&self, entry: &Entry) -> Result<()> {
        self.inner.delete_storage(entry)
    }

    fn rename(
        &self,
        dir: &Entry,
        entry: &Entry,
        new_dir: &Entry,
        new_name: &str,
        replaced: Option<&Entry>,
    ) -> Result<Entry> {
        self.inner.rename(dir, entry, new_dir, new_name, replaced)
    }

    fn set_aside(&self, dir: &Entry, entry: &Entry) -> Result<String> {
        self.inner.set_aside(dir, entry)
    }

    fn put_back(&self, entry: &Entry, aside: &str) -> Result<()> {
        self.inner.put_back(entry, aside)
    }

    fn set_attrs(&self, entry: &Entry, change: &Attrs) -> Result<Attrs> {
        self.inner.set_attrs(entry, change)
    }

    fn dir_changed_ms(&self, dir: &Entry) -> Option<u64> {
        self.inner.dir_changed_ms(dir)
    }
}
