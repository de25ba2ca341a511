//! The filesystem core: the registry as inodes, directory listings, open
//! handles and the read and write paths. It knows nothing of FUSE;
//! `crate::fuse` adapts it, and tests drive it directly.
//!
//! [`ModelFs`] is one struct whose operations live in a file per concern,
//! each an `impl ModelFs` block:
//!
//! - `namespace.rs`: lookup, directory listings and readdir, and the
//!   metadata-TTL cache of nodes and listings behind them;
//! - `views.rs`: nodes the core generates rather than stores: TileDB-ML
//!   model arrays shown as read-only directories of files, and the root's
//!   `.modelfs-stats` file;
//! - `versions.rs`: the hidden `.versions` directory of every directory,
//!   each file's committed versions as read-only files;
//! - `stat.rs`: what `stat` shows, and `setattr` (modes, owners, times);
//! - `files.rs`: open, create, read, write, commits at flush and fsync,
//!   release, truncate;
//! - `dirs.rs`: mkdir, unlink, rmdir and rename;
//!
//! over the state they share: `inode.rs` (the inode table and each inode's
//! cached state), `handles.rs` (open handles), `read/` (chunk cache and
//! read-ahead), `write/` (writers), `store/` (the storage seam) and
//! `error.rs` (the errno of every failure).
//!
//! Locks, in the order they may be taken: the inode table's maps, an
//! inode's place, an inode's cached state (`Inode::lock`). An inode's
//! cached state is never held across storage I/O nor while a writer's lock
//! is taken: read the writer out of the inode, let the inode go, then lock
//! the writer. A writer's lock is held across its storage I/O (one commit
//! per file at a time). The handle table, the model cache and the warned
//! set are leaf locks: held for one lookup or insert, nothing taken under
//! them.

pub mod attr;
pub mod counters;
mod dirs;
pub mod disk_cache;
pub mod error;
mod files;
mod handles;
mod inode;
mod ml_models;
mod namespace;
pub mod read;
mod stat;
mod stat_ahead;
pub mod store;
mod versions;
mod views;
pub mod write;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use log::{debug, info, warn};

pub use attr::{Attr, Backing, CreateFlags, DirItem, Fh, FsStats, Ino, Kind, Opened};
pub use counters::{Counters, Snapshot};
pub use error::{CoreError, Error, Result};
pub use stat::{Owner, SetAttr};
pub use store::{FailingStore, MemStore, Store};
pub use versions::VERSIONS_NAME;
pub use views::STATS_NAME;

use crate::registry::tiledb_ml::{MemoryPool, ModelOptions, SPILL_MIN_BYTES, ViewLimits};
use disk_cache::{CachingStore, DiskCache, DiskCacheConfig};
use handles::HandleTable;
use inode::{Inode, InodeTable};
use ml_models::MlModels;
use read::{ChunkCache, PrefetchPool};
use write::StagingArea;

/// The size and free space `statfs` shows for a registry on an object
/// store (1 PiB).
pub const OBJECT_STORE_BYTES: u64 = 1 << 50;

/// Settings of one mount.
#[derive(Debug, Clone)]
pub struct Config {
    pub read_only: bool,
    /// Limit of the chunk cache shared by all open files, in bytes.
    pub cache_bytes: u64,
    /// How long attributes and listings are trusted before the registry is
    /// asked again (also the kernel's attribute and entry TTL).
    pub metadata_ttl: Duration,
    /// Threads reading ahead of sequential readers.
    pub prefetch_threads: usize,
    /// Most bytes kept loaded ahead of one sequential reader.
    pub prefetch_window_bytes: u64,
    /// Bytes one read-ahead query asks TileDB for.
    pub prefetch_fetch_bytes: u64,
    /// Subdirectories read ahead of a lister, several at a time (0: none;
    /// see `fs/stat_ahead.rs`).
    pub stat_ahead: usize,
    /// Subdirectories from which a lister's directory is first read whole
    /// for their stats (0: never; see `fs/stat_ahead.rs`).
    pub stat_whole_from: usize,
    /// Directory for staging files written out of order.
    pub staging_dir: PathBuf,
    /// Most bytes staged at once, over all files being written.
    pub staging_limit_bytes: u64,
    /// The memory budget of everything TileDB-ML decoding keeps in memory,
    /// over all decoded models: fields while they are decoded, and what
    /// their views keep resident (fields and tensors of 1 MiB or more are
    /// spilled to unlinked files under `staging_dir` once decoded), in
    /// bytes.
    pub view_memory_bytes: u64,
    pub uid: u32,
    pub gid: u32,
    /// Keep whole versions in a local directory; `None` for no disk cache.
    pub disk_cache: Option<DiskCacheConfig>,
    /// What tells this registry's versions from another's in a shared disk
    /// cache (the registry URI and the storage endpoint).
    pub disk_cache_namespace: String,
    /// Offer versions complete in the disk cache to the kernel for FUSE
    /// passthrough.
    pub passthrough: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            read_only: true,
            // Measured on a 1 GiB cold sequential read (scripts/bench.sh): a
            // 64 MiB cache reads as fast as 128 MiB (1.2-1.3 s) with the
            // daemon's peak RSS at ~190 MiB instead of ~265 MiB; a 16 MiB
            // window was slower than 32 MiB (1.6 s against 1.2-1.3 s).
            cache_bytes: 64 << 20,
            metadata_ttl: Duration::from_secs(1),
            prefetch_threads: 4,
            prefetch_window_bytes: 32 << 20,
            prefetch_fetch_bytes: 4 << 20,
            stat_ahead: 64,
            stat_whole_from: 0,
            staging_dir: std::env::temp_dir().join("modelfs-staging"),
            staging_limit_bytes: 64 << 30,
            view_memory_bytes: 2 << 30,
            uid: 0,
            gid: 0,
            disk_cache: None,
            disk_cache_namespace: String::new(),
            passthrough: true,
        }
    }
}

/// A mounted registry.
pub struct ModelFs {
    store: Arc<dyn Store>,
    config: Config,
    inodes: InodeTable,
    handles: HandleTable,
    cache: Arc<ChunkCache>,
    prefetch: PrefetchPool,
    stat_ahead: stat_ahead::StatAhead,
    counters: Arc<Counters>,
    staging: Arc<StagingArea>,
    next_version: std::sync::atomic::AtomicU64,
    started: SystemTime,
    /// Decoded TileDB-ML models, within the `--view-memory` budget.
    ml_models: MlModels,
    /// URIs already warned about, so a bad entry logs once, not per listing.
    warned: Mutex<HashSet<String>>,
    /// Files' histories read within the metadata TTL (`.versions`).
    histories: versions::Histories,
    /// The kernel maps files opened with direct I/O (Linux 6.6+,
    /// `FUSE_DIRECT_IO_ALLOW_MMAP`); without it a shared mapping of one
    /// fails with ENODEV, so opens are never made direct to spare the page
    /// cache (see [`Cached::reading`](inode::Cached::reading)).
    direct_io_mmap: std::sync::atomic::AtomicBool,
}

impl ModelFs {
    /// Serves the directory at `root_uri`, which must exist.
    pub fn new(store: Arc<dyn Store>, root_uri: &str, config: Config) -> Result<Self> {
        let root = store.resolve(root_uri)?.ok_or_else(|| CoreError::NoRegistry {
            uri: root_uri.to_string(),
        })?;
        if !root.is_dir() {
            return Err(CoreError::RegistryNotADirectory {
                uri: root_uri.to_string(),
            }
            .into());
        }
        let counters = Arc::new(Counters::default());
        let store: Arc<dyn Store> = match &config.disk_cache {
            Some(dc) => {
                let cache = DiskCache::open(dc, &config.disk_cache_namespace, counters.clone()).map_err(|error| {
                    CoreError::DiskCacheDir {
                        dir: dc.dir.clone(),
                        error,
                    }
                })?;
                info!(
                    "disk cache in {}, up to {} bytes; FUSE passthrough {}",
                    cache.dir().display(),
                    cache.limit_bytes(),
                    if config.passthrough {
                        "when the kernel allows it"
                    } else {
                        "off (--no-passthrough): the daemon serves cached versions"
                    }
                );
                Arc::new(CachingStore::new(store, cache, counters.clone()))
            }
            None => {
                info!("no disk cache: every read goes to the registry");
                store
            }
        };
        let staging =
            StagingArea::new(&config.staging_dir, config.staging_limit_bytes, counters.clone()).map_err(|error| {
                CoreError::StagingDir {
                    dir: config.staging_dir.clone(),
                    error,
                }
            })?;
        let cache = Arc::new(ChunkCache::new(config.cache_bytes, counters.clone()));
        let ml_models = MlModels::new(
            ModelOptions {
                pool: MemoryPool::new(config.view_memory_bytes),
                limits: ViewLimits::default(),
                spill_dir: Some(config.staging_dir.clone()),
                spill_min_bytes: SPILL_MIN_BYTES,
            },
            counters.clone(),
        );
        let prefetch = PrefetchPool::new(
            cache.clone(),
            counters.clone(),
            config.prefetch_threads,
            config.prefetch_fetch_bytes,
            256,
        );
        let stat_ahead = stat_ahead::StatAhead::new(
            store.clone(),
            counters.clone(),
            config.metadata_ttl,
            config.stat_ahead,
            config.stat_whole_from,
            !config.read_only,
        );
        Ok(ModelFs {
            store,
            stat_ahead,
            inodes: InodeTable::new(root),
            handles: HandleTable::default(),
            cache,
            prefetch,
            counters,
            staging,
            config,
            next_version: std::sync::atomic::AtomicU64::new(1),
            started: SystemTime::now(),
            warned: Mutex::new(HashSet::new()),
            histories: Default::default(),
            ml_models,
            direct_io_mmap: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The kernel maps files opened with direct I/O (told at init).
    pub fn set_direct_io_mmap(&self, yes: bool) {
        self.direct_io_mmap.store(yes, std::sync::atomic::Ordering::Relaxed);
    }

    fn direct_io_mmap(&self) -> bool {
        self.direct_io_mmap.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn counters(&self) -> Snapshot {
        let c = &self.counters;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        c.view_memory_used.store(self.ml_models.memory().0, relaxed);
        c.ml_models_alive.store(self.ml_models.alive() as u64, relaxed);
        c.yield_naps.store(crate::registry::yield_naps(), relaxed);
        c.stored_tile_bytes.store(crate::registry::stored_tile_bytes(), relaxed);
        c.yield_interposed
            .store(u64::from(crate::registry::yield_interposed()), relaxed);
        c.snapshot()
    }

    /// Records whether an open offered for passthrough got it.
    pub fn count_passthrough(&self, used: bool) {
        let c = if used {
            &self.counters.passthrough_opens
        } else {
            &self.counters.passthrough_fallbacks
        };
        Counters::add(c, 1);
    }

    /// Open handles (files and directories).
    pub fn open_handles(&self) -> usize {
        self.handles.count()
    }

    fn inode(&self, ino: Ino) -> Result<Arc<Inode>> {
        self.inodes
            .get(ino)
            .ok_or_else(|| CoreError::UnknownInode { ino: ino.0 }.into())
    }

    fn warn_once(&self, uri: &str, message: std::fmt::Arguments<'_>) {
        let first = self
            .warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uri.to_string());
        if first {
            warn!("{message}");
        } else {
            debug!("{message}");
        }
    }

    fn check_writable(&self, what: &str) -> Result<()> {
        if self.config.read_only {
            return Err(read_only(what));
        }
        Ok(())
    }

    /// The space of the registry: a local one's file system's; an object
    /// store has no limit to ask, so [`OBJECT_STORE_BYTES`] free, as other
    /// object-store mounts do: tools that check the free space before they
    /// write (`datasets` refuses to cache into 0 bytes free) go on.
    pub fn statfs(&self) -> FsStats {
        const BLOCK: u64 = 4096;
        let root = self.inodes.get(Ino::ROOT).map(|r| r.entry().uri).unwrap_or_default();
        let local = crate::registry::uri::is_local(&root)
            .then(|| nix::sys::statvfs::statvfs(crate::registry::uri::canonical(&root)).ok())
            .flatten();
        let (blocks, free, available, files_free) = match local {
            Some(v) => {
                let unit = v.fragment_size().max(1);
                let blocks = |n: u64| n.saturating_mul(unit) / BLOCK;
                (
                    blocks(v.blocks()),
                    blocks(v.blocks_free()),
                    blocks(v.blocks_available()),
                    v.files_free(),
                )
            }
            None => {
                let blocks = OBJECT_STORE_BYTES / BLOCK;
                (blocks, blocks, blocks, u32::MAX as u64)
            }
        };
        // Inodes: the ones this mount knows are the used ones.
        FsStats {
            blocks,
            blocks_free: free,
            blocks_available: available,
            files: (self.inodes.count() as u64).saturating_add(files_free),
            files_free,
            block_size: BLOCK as u32,
            name_max: crate::registry::names::NAME_MAX_BYTES as u32,
        }
    }

    /// Logs the mount's counters (at unmount).
    pub fn log_summary(&self) {
        info!("counters at unmount: {:?}", self.counters());
    }
}

/// A name that cannot be stored, and why.
fn invalid_name(name: &str, reason: &'static str) -> Error {
    CoreError::InvalidName {
        name: name.to_string(),
        reason,
    }
    .into()
}

/// EROFS for a change to `what` on a read-only mount.
fn read_only(what: &str) -> Error {
    CoreError::ReadOnlyMount { what: what.to_string() }.into()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
