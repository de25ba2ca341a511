//! The disk cache: whole file versions kept as local files in one
//! directory, kept across remounts, shared by every mount of one user on
//! one host, and bounded in bytes (least recently used versions go first).
//! A version complete here is read from its local file, by the daemon or,
//! through FUSE passthrough, by the kernel itself.
//!
//! Layout of `DIR/v1/`:
//! - `<name>.data`: the version's bytes, exactly (passthrough exposes the
//!   file as it is, so nothing else may be in it);
//! - `<name>.meta`: JSON with the key, a CRC-32 of the bytes and the data
//!   file's identity (inode, mtime, ctime) when it was last verified; its
//!   own mtime is the entry's last use;
//! - `<tag>.<pid>.<seq>.<size>.part`: an entry being written, flock'ed by
//!   its writer for as long as it lives, its declared size in its name;
//! - `lock`: flock'ed around every change to the set of entries.
//!
//! `<name>` is a hash of the key: the registry's namespace, the array URI,
//! the version's timestamp and its size. Versions never change once
//! committed and each new one gets a strictly greater timestamp, so an
//! entry can only hold its key's bytes: a stale version cannot be served.
//!
//! Invariants:
//! - An entry appears by two renames under the lock, data then meta; a
//!   reader that finds the meta finds complete data. Data without meta, or
//!   meta without data, found under the lock, are leftovers of a crash.
//! - The bytes of all data files plus the declared sizes of live parts stay
//!   within the limit: room is made (evicting) under the lock before a part
//!   is created. Entries evicted while open stay readable through their
//!   open descriptors.
//! - A data file whose size is not its key's, or whose identity changed
//!   since its last verification (written to, replaced, restored), is
//!   checked against its CRC before use; on a mismatch it is removed and
//!   the version is read from the registry again.

mod fill;
mod store;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use log::{debug, warn};
use serde::{Deserialize, Serialize};

pub use fill::{BOUNCE_BYTES, Fill};
pub use store::{CachingStore, FILL_GAP_BYTES, FILL_START_BYTES};

use super::counters::Counters;

/// The layout's folder under the cache directory; a new layout gets a new
/// folder, so an older daemon never misreads a newer one's entries.
const LAYOUT: &str = "v1";

/// Bytes read at a time to verify an entry's checksum.
const VERIFY_CHUNK_BYTES: usize = 4 << 20;

/// Where and how big.
#[derive(Debug, Clone)]
pub struct DiskCacheConfig {
    pub dir: PathBuf,
    /// Most bytes of cached versions kept, over all mounts sharing `dir`.
    pub limit_bytes: u64,
}

/// The default cache directory: `modelfs` under the user's cache directory
/// (`$XDG_CACHE_HOME`, else `~/.cache`), or under the temporary directory
/// when there is no home.
pub fn default_dir() -> PathBuf {
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("modelfs")
}

/// What identifies one version of one file, everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionKey {
    /// The registry and the storage it lives on.
    pub namespace: String,
    pub uri: String,
    /// The version's timestamp (ms), strictly increasing per array.
    pub timestamp: u64,
    pub size: u64,
}

impl VersionKey {
    /// The entry's file name stem: a hash of the whole key.
    pub fn file_name(&self) -> String {
        let mut h = blake3::Hasher::new();
        for part in [self.namespace.as_bytes(), self.uri.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(&self.timestamp.to_le_bytes());
        h.update(&self.size.to_le_bytes());
        h.finalize().to_hex()[..32].to_string()
    }
}

/// The data file as it was when last verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EntryMeta {
    key: VersionKey,
    crc32: u32,
    verified: Stamp,
}

/// One cached version found in a scan.
struct Found {
    name: String,
    bytes: u64,
    used: SystemTime,
}

/// What the directory holds, as seen under the lock.
#[derive(Default)]
struct Usage {
    entries: Vec<Found>,
    /// Data bytes plus declared bytes of live parts.
    bytes: u64,
    /// Tags of live parts.
    filling: Vec<String>,
}

/// The cache directory of one mount (other mounts may share it).
pub struct DiskCache {
    dir: PathBuf,
    limit_bytes: u64,
    namespace: String,
    counters: Arc<Counters>,
    seq: AtomicU64,
    /// The writer thread's queue, started at the first write behind.
    behind: Mutex<Option<SyncSender<WriteJob>>>,
}

/// Bytes to write into an entry, and what follows.
pub(crate) type WriteJob = Box<dyn FnOnce() + Send>;

/// Writes a reader may leave behind it at once; more are written by the
/// reader itself. Each holds one query's buffer (8 MiB on object stores),
/// most often still held by the chunk cache too; with the one being
/// written, `--cache-size` counts them.
pub const WRITES_BEHIND: usize = 1;

impl DiskCache {
    /// Opens (creating) the cache in `config.dir` for versions of the
    /// registry `namespace`; clears what crashed writers left and evicts
    /// down to the limit.
    pub fn open(config: &DiskCacheConfig, namespace: &str, counters: Arc<Counters>) -> io::Result<Arc<Self>> {
        let dir = config.dir.join(LAYOUT);
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let cache = DiskCache {
            dir,
            limit_bytes: config.limit_bytes,
            namespace: namespace.to_string(),
            counters,
            seq: AtomicU64::new(0),
            behind: Mutex::new(None),
        };
        let lock = cache.lock()?;
        let usage = cache.scan(&lock)?;
        cache.make_room(&lock, usage, 0);
        Ok(Arc::new(cache))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// The key of version `timestamp` (`size` bytes) of the array at `uri`.
    pub fn key(&self, uri: &str, timestamp: u64, size: u64) -> VersionKey {
        VersionKey {
            namespace: self.namespace.clone(),
            // One spelling per array: a file written through the mount is
            // named without `file://`, the same file listed with it.
            uri: crate::registry::uri::canonical(uri).to_string(),
            timestamp,
            size,
        }
    }

    /// Holds the directory's lock until the returned file is dropped.
    fn lock(&self) -> io::Result<File> {
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.dir.join("lock"))?;
        f.lock()?;
        Ok(f)
    }

    fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.data"))
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.meta"))
    }

    /// The local file holding `key`'s bytes, verified, or `None`. A damaged
    /// entry is removed (and counted) here.
    pub fn lookup(&self, key: &VersionKey) -> Option<Arc<File>> {
        let name = key.file_name();
        let data = match File::open(self.data_path(&name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!("disk cache: {}: {e}", self.data_path(&name).display());
                return None;
            }
        };
        // No meta: the entry is being committed, or a crash left it.
        let meta: EntryMeta = fs::read(self.meta_path(&name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())?;
        if meta.key != *key {
            debug!("disk cache: {name} holds another key");
            return None;
        }
        let st = data.metadata().ok()?;
        if st.len() != key.size {
            self.remove_damaged(&name, &format!("{} bytes, expected {}", st.len(), key.size));
            return None;
        }
        let stamp = Stamp::of(&st);
        if stamp != meta.verified {
            match crc_of(&data, key.size) {
                Ok(crc) if crc == meta.crc32 => {
                    let verified = EntryMeta {
                        verified: stamp,
                        ..meta
                    };
                    if let Ok(_lock) = self.lock()
                        && let Err(e) = self.write_meta(&name, &verified)
                    {
                        debug!("disk cache: {name}: recording the verification: {e}");
                    }
                }
                Ok(crc) => {
                    let why = format!("checksum {crc:08x}, expected {:08x}", meta.crc32);
                    self.remove_damaged(&name, &why);
                    return None;
                }
                Err(e) => {
                    self.remove_damaged(&name, &format!("unreadable: {e}"));
                    return None;
                }
            }
        }
        self.touch(&name);
        Counters::add(&self.counters.disk_cache_hits, 1);
        Some(Arc::new(data))
    }

    fn remove_damaged(&self, name: &str, why: &str) {
        warn!(
            "disk cache: {} is damaged ({why}); removed, the version is read from the registry again",
            self.data_path(name).display()
        );
        Counters::add(&self.counters.disk_cache_damaged, 1);
        if let Ok(_lock) = self.lock() {
            self.remove_entry(name);
        }
    }

    fn remove_entry(&self, name: &str) {
        // Meta first: without it the data is never used.
        let _ = fs::remove_file(self.meta_path(name));
        let _ = fs::remove_file(self.data_path(name));
    }

    /// Marks an entry as just used (eviction takes the least recent first).
    fn touch(&self, name: &str) {
        let touched = File::options()
            .write(true)
            .open(self.meta_path(name))
            .and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = touched {
            debug!("disk cache: {name}: marking its use: {e}");
        }
    }

    fn write_meta(&self, name: &str, meta: &EntryMeta) -> io::Result<()> {
        let tmp = self.dir.join(format!("{name}.meta.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec(meta).map_err(io::Error::other)?;
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, self.meta_path(name))
    }

    /// Hands `job` to the cache's writer thread, so that the read whose
    /// bytes it writes does not wait on the disk; gives it back when that
    /// thread has [`WRITES_BEHIND`] jobs waiting already, or cannot start.
    pub(crate) fn write_behind(&self, job: WriteJob) -> std::result::Result<(), WriteJob> {
        let mut behind = self.behind.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if behind.is_none() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<WriteJob>(WRITES_BEHIND);
            let spawned = std::thread::Builder::new()
                .name("modelfs-cache-writer".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                });
            match spawned {
                Ok(_) => *behind = Some(tx),
                Err(e) => {
                    debug!("disk cache: no writer thread: {e}");
                    return Err(job);
                }
            }
        }
        let tx = behind.as_ref().expect("started above");
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => Err(job),
        }
    }

    /// Starts an entry of `size` bytes, making room for it first. `tag`
    /// names what is filled (a key's file name). An empty version, one
    /// larger than the whole cache, or a cache failure gives
    /// [`NoFill::Never`]; a version another mount is filling already, or
    /// no room left beside entries being written, [`NoFill::NotNow`].
    pub fn begin_fill(&self, tag: &str, size: u64) -> Result<Arc<Fill>, NoFill> {
        if size == 0 {
            return Err(NoFill::Never);
        }
        if size > self.limit_bytes {
            debug!("disk cache: {tag}: {size} bytes is more than the cache holds");
            return Err(NoFill::Never);
        }
        let started = (|| -> io::Result<Result<Arc<Fill>, NoFill>> {
            let lock = self.lock()?;
            let usage = self.scan(&lock)?;
            if usage.filling.iter().any(|t| t == tag) {
                debug!("disk cache: {tag}: another mount is filling it");
                return Ok(Err(NoFill::NotNow));
            }
            if !self.make_room(&lock, usage, size) {
                debug!("disk cache: {tag}: no room for {size} bytes beside entries being written");
                return Ok(Err(NoFill::NotNow));
            }
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!("{tag}.{}.{seq}.{size}.part", std::process::id()));
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            // Held while the part lives: a part nobody holds is a leftover.
            file.try_lock().map_err(io::Error::other)?;
            match Fill::new(path.clone(), file, size) {
                Ok(fill) => Ok(Ok(Arc::new(fill))),
                Err(e) => {
                    // Dropping the part here would need the fill; remove it.
                    let _ = fs::remove_file(&path);
                    Err(e)
                }
            }
        })();
        started.unwrap_or_else(|e| {
            warn!("disk cache: starting an entry in {}: {e}", self.dir.display());
            Err(NoFill::Never)
        })
    }

    /// Makes `fill` the entry of `key`: its bytes synced, renamed into
    /// place, its checksum recorded. Returns the entry's file.
    pub fn commit(&self, fill: &Fill, key: &VersionKey) -> io::Result<Arc<File>> {
        let crc = fill
            .checksum()
            .ok_or_else(|| io::Error::other("the entry is incomplete"))?;
        if key.size != fill.size() {
            return Err(io::Error::other(format!(
                "the entry holds {} bytes, the version {}",
                fill.size(),
                key.size
            )));
        }
        fill.file.sync_all()?;
        let name = key.file_name();
        let _lock = self.lock()?;
        let data_path = self.data_path(&name);
        fs::rename(&fill.path, &data_path)?;
        let verified = Stamp::of(&fs::metadata(&data_path)?);
        let meta = EntryMeta {
            key: key.clone(),
            crc32: crc,
            verified,
        };
        if let Err(e) = self.write_meta(&name, &meta) {
            let _ = fs::remove_file(&data_path);
            return Err(e);
        }
        Counters::add(&self.counters.disk_cache_fills, 1);
        Counters::add(&self.counters.disk_cache_fill_bytes, key.size);
        debug!("disk cache: {} ({} bytes) kept as {name}", key.uri, key.size);
        Ok(Arc::new(File::open(&data_path)?))
    }

    /// What the directory holds; clears crash leftovers on the way. Called
    /// with the lock held (`_lock`).
    fn scan(&self, _lock: &File) -> io::Result<Usage> {
        let mut usage = Usage::default();
        for item in fs::read_dir(&self.dir)? {
            let item = item?;
            let file_name = item.file_name();
            let Some(file_name) = file_name.to_str() else { continue };
            if let Some(name) = file_name.strip_suffix(".data") {
                let Ok(meta) = fs::metadata(self.meta_path(name)) else {
                    self.remove_entry(name);
                    continue;
                };
                let bytes = item.metadata().map(|m| m.len()).unwrap_or(0);
                usage.bytes = usage.bytes.saturating_add(bytes);
                usage.entries.push(Found {
                    name: name.to_string(),
                    bytes,
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            } else if let Some(name) = file_name.strip_suffix(".meta") {
                if !self.data_path(name).exists() {
                    let _ = fs::remove_file(item.path());
                }
            } else if let Some(part) = file_name.strip_suffix(".part") {
                self.scan_part(&item.path(), part, &mut usage);
            } else if file_name.ends_with(".tmp") {
                let _ = fs::remove_file(item.path());
            }
        }
        Ok(usage)
    }

    fn scan_part(&self, path: &Path, part: &str, usage: &mut Usage) {
        let mut fields = part.rsplitn(4, '.');
        let declared: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let tag = fields.nth(2).unwrap_or_default().to_string();
        let live = match File::open(path) {
            Ok(f) => f.try_lock().is_err(),
            Err(_) => return,
        };
        if live {
            usage.bytes = usage.bytes.saturating_add(declared);
            usage.filling.push(tag);
        } else {
            debug!("disk cache: removing {}, left by a writer that is gone", path.display());
            let _ = fs::remove_file(path);
        }
    }

    /// Evicts least recently used entries until `want` more bytes fit;
    /// false when they cannot.
    fn make_room(&self, _lock: &File, mut usage: Usage, want: u64) -> bool {
        usage.entries.sort_by_key(|e| e.used);
        let mut oldest = usage.entries.into_iter();
        while usage.bytes.saturating_add(want) > self.limit_bytes {
            let Some(victim) = oldest.next() else { return false };
            self.remove_entry(&victim.name);
            usage.bytes = usage.bytes.saturating_sub(victim.bytes);
            Counters::add(&self.counters.disk_cache_evictions, 1);
            debug!("disk cache: evicted {} ({} bytes)", victim.name, victim.bytes);
        }
        true
    }

    /// Bytes of committed entries and live parts now (takes the lock).
    pub fn usage_bytes(&self) -> io::Result<u64> {
        let lock = self.lock()?;
        Ok(self.scan(&lock)?.bytes)
    }
}

/// Why [`DiskCache::begin_fill`] started no entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoFill {
    /// Not for this version: empty, larger than the cache, or the cache
    /// failed.
    Never,
    /// Not now: another mount is filling it, or entries being written
    /// leave no room.
    NotNow,
}

/// The CRC-32 of the first `size` bytes of `file`.
fn crc_of(file: &File, size: u64) -> io::Result<u32> {
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; VERIFY_CHUNK_BYTES];
    let mut at = 0u64;
    while at < size {
        let want = (size - at).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "shorter than its key"));
        }
        crc.update(&buf[..n]);
        at += n as u64;
    }
    Ok(crc.finalize())
}

#[cfg(test)]
mod tests;
