//! The filesystem core: the registry as inodes, directory listings, open
//! handles and the read path. It knows nothing of FUSE; `crate::fuse` adapts
//! it, and tests drive it directly.

pub mod attr;
pub mod counters;
pub mod error;
mod handles;
mod inode;
pub mod read;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

pub use attr::{Attr, DirItem, Fh, FsStats, Ino, Kind, Opened};
pub use counters::{Counters, Snapshot};
pub use error::{Error, Result};

use crate::registry::{Entry, FileArray, Node, Registry};
use handles::{FileHandle, Handle, HandleTable};
use inode::{Inode, InodeTable, NodeState};
use read::{ChunkCache, ChunkSource, FileVersion, PrefetchPool, Prefetcher};

/// The root's hidden file holding the counters as JSON.
pub const STATS_NAME: &str = ".modelfs-stats";

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
    pub uid: u32,
    pub gid: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            read_only: true,
            cache_bytes: 128 << 20,
            metadata_ttl: Duration::from_secs(1),
            prefetch_threads: 4,
            prefetch_window_bytes: 32 << 20,
            prefetch_fetch_bytes: 4 << 20,
            uid: 0,
            gid: 0,
        }
    }
}

/// A mounted registry.
pub struct ModelFs {
    registry: Registry,
    config: Config,
    inodes: InodeTable,
    handles: HandleTable,
    cache: Arc<ChunkCache>,
    prefetch: PrefetchPool,
    counters: Arc<Counters>,
    next_version: std::sync::atomic::AtomicU64,
    started: SystemTime,
    /// URIs already warned about, so a bad entry logs once, not per listing.
    warned: Mutex<HashSet<String>>,
}

impl ModelFs {
    /// Serves the directory at `root_uri`, which must exist.
    pub fn new(registry: Registry, root_uri: &str, config: Config) -> Result<Self> {
        let root = registry
            .resolve(root_uri)?
            .ok_or_else(|| Error::new(libc::ENOENT, log::Level::Error, format!("{root_uri}: no such registry")))?;
        if !root.is_dir() {
            return Err(Error::new(
                libc::ENOTDIR,
                log::Level::Error,
                format!("{root_uri}: not a directory (a TileDB group or a directory)"),
            ));
        }
        let counters = Arc::new(Counters::default());
        let cache = Arc::new(ChunkCache::new(config.cache_bytes, counters.clone()));
        let prefetch = PrefetchPool::new(
            cache.clone(),
            counters.clone(),
            config.prefetch_threads,
            config.prefetch_fetch_bytes,
            256,
        );
        Ok(ModelFs {
            registry,
            inodes: InodeTable::new(root),
            handles: HandleTable::default(),
            cache,
            prefetch,
            counters,
            config,
            next_version: std::sync::atomic::AtomicU64::new(1),
            started: SystemTime::now(),
            warned: Mutex::new(HashSet::new()),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn counters(&self) -> Snapshot {
        self.counters.snapshot()
    }

    /// Open handles (files and directories).
    pub fn open_handles(&self) -> usize {
        self.handles.count()
    }

    fn inode(&self, ino: Ino) -> Result<Arc<Inode>> {
        self.inodes
            .get(ino)
            .ok_or_else(|| Error::new(libc::ENOENT, log::Level::Debug, format!("inode {} unknown", ino.0)))
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

    /// What `entry` shows as, or `None` when it is not shown (arrays that
    /// are not files). Failures name the entry.
    fn node_of(&self, entry: &Entry) -> Result<Option<NodeState>> {
        match self.registry.node(entry) {
            Ok(Node::Dir) => Ok(Some(NodeState::Dir)),
            Ok(Node::File(meta)) => Ok(Some(NodeState::File(meta))),
            Ok(Node::TileDbMl { framework }) => {
                self.warn_once(
                    &entry.uri,
                    format_args!("{}: TileDB-ML {framework} model array; not shown yet", entry.uri),
                );
                Ok(None)
            }
            Ok(Node::Other { reason }) => {
                self.warn_once(
                    &entry.uri,
                    format_args!("{}: not shown: not a modelfs file ({reason})", entry.uri),
                );
                Ok(None)
            }
            Err(e) => {
                self.warn_once(&entry.uri, format_args!("{}: cannot be read: {e}", entry.uri));
                Err(e.into())
            }
        }
    }

    fn attr_of(&self, ino: Ino, node: &NodeState) -> Attr {
        let w = if self.config.read_only { 0 } else { 0o200 };
        match node {
            NodeState::Dir => Attr {
                ino,
                kind: Kind::Dir,
                size: 0,
                mtime: self.started,
                perm: 0o555 | w,
                nlink: 2,
                uid: self.config.uid,
                gid: self.config.gid,
            },
            NodeState::File(meta) => Attr {
                ino,
                kind: Kind::File,
                size: meta.size,
                mtime: meta
                    .timestamp
                    .map_or(self.started, |ms| UNIX_EPOCH + Duration::from_millis(ms)),
                perm: 0o444 | w,
                nlink: 1,
                uid: self.config.uid,
                gid: self.config.gid,
            },
        }
    }

    fn stats_attr(&self) -> Attr {
        Attr {
            ino: Ino::STATS,
            kind: Kind::File,
            size: 0,
            mtime: SystemTime::now(),
            perm: 0o444,
            nlink: 1,
            uid: self.config.uid,
            gid: self.config.gid,
        }
    }

    /// Re-reads an inode's node when it is older than the TTL.
    fn fresh_node(&self, inode: &Inode) -> Result<NodeState> {
        {
            let c = inode.lock();
            if inode.ino == Ino::ROOT || c.read_at.elapsed() < self.config.metadata_ttl {
                return Ok(c.node.clone());
            }
        }
        let node = self.node_of(&inode.entry)?.ok_or_else(|| {
            Error::new(
                libc::ENOENT,
                log::Level::Debug,
                format!("{}: no longer shown", inode.entry.uri),
            )
        })?;
        let mut c = inode.lock();
        if c.node != node {
            c.version = None;
        }
        c.node = node.clone();
        c.read_at = Instant::now();
        Ok(node)
    }

    /// Looks up `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Attr> {
        Counters::add(&self.counters.lookups, 1);
        if parent == Ino::ROOT && name == STATS_NAME {
            return Ok(self.stats_attr());
        }
        let dir = self.inode(parent)?;
        if self.fresh_node(&dir)? != NodeState::Dir {
            return Err(Error::new(
                libc::ENOTDIR,
                log::Level::Debug,
                format!("{}: not a directory", dir.entry.uri),
            ));
        }
        let entry = self
            .registry
            .lookup(&dir.entry, name)?
            .ok_or_else(|| Error::not_found(format!("{}/{name}", dir.entry.uri)))?;
        let node = self.node_of(&entry)?.ok_or_else(|| Error::not_found(&entry.uri))?;
        let inode = self.inodes.upsert(parent, entry, node.clone());
        Ok(self.attr_of(inode.ino, &node))
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        if ino == Ino::STATS {
            return Ok(self.stats_attr());
        }
        let inode = self.inode(ino)?;
        let node = self.fresh_node(&inode)?;
        Ok(self.attr_of(ino, &node))
    }

    /// Opens a directory: its listing is taken now and read by offset.
    pub fn opendir(&self, ino: Ino) -> Result<Fh> {
        let dir = self.inode(ino)?;
        if self.fresh_node(&dir)? != NodeState::Dir {
            return Err(Error::new(
                libc::ENOTDIR,
                log::Level::Debug,
                format!("{}: not a directory", dir.entry.uri),
            ));
        }
        let mut items = vec![
            DirItem {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
                next_offset: 1,
            },
            DirItem {
                ino: dir.parent,
                kind: Kind::Dir,
                name: "..".into(),
                next_offset: 2,
            },
        ];
        for entry in self.registry.list(&dir.entry)? {
            if ino == Ino::ROOT && entry.name == STATS_NAME {
                continue;
            }
            // A bad entry is left out (and logged once); the rest is listed.
            let Ok(Some(node)) = self.node_of(&entry) else { continue };
            let kind = match node {
                NodeState::Dir => Kind::Dir,
                NodeState::File(_) => Kind::File,
            };
            let name = entry.name.clone();
            let child = self.inodes.upsert(ino, entry, node);
            let next_offset = items.len() as u64 + 1;
            items.push(DirItem {
                ino: child.ino,
                kind,
                name,
                next_offset,
            });
        }
        Ok(self.handles.insert(Handle::Dir { items }))
    }

    /// Entries from `offset` on (0 is the start; each item names the next).
    pub fn readdir(&self, fh: Fh, offset: u64) -> Result<Vec<DirItem>> {
        match self.handles.get(fh).as_deref() {
            Some(Handle::Dir { items, .. }) => Ok(items.iter().skip(offset as usize).cloned().collect()),
            _ => Err(Error::bad_handle(fh.0)),
        }
    }

    pub fn releasedir(&self, fh: Fh) {
        self.handles.remove(fh);
    }

    /// Opens a file. Opening for writing on a read-only mount is EROFS.
    pub fn open(&self, ino: Ino, write: bool) -> Result<Opened> {
        if ino == Ino::STATS {
            if write {
                return Err(Error::read_only(STATS_NAME));
            }
            let json = serde_json::to_vec_pretty(&self.counters()).unwrap_or_default();
            let fh = self.handles.insert(Handle::Generated(json));
            return Ok(Opened {
                fh,
                keep_cache: false,
                direct_io: true,
            });
        }
        let inode = self.inode(ino)?;
        if write && self.config.read_only {
            return Err(Error::read_only(&inode.entry.uri));
        }
        let NodeState::File(meta) = self.fresh_node(&inode)? else {
            return Err(Error::new(
                libc::EISDIR,
                log::Level::Debug,
                format!("{}: is a directory", inode.entry.uri),
            ));
        };
        let existing = inode.lock().version.clone();
        let version = match existing {
            Some(v) if v.file().meta() == &meta => v,
            _ => {
                let file = FileArray::open_version(self.registry.context(), &inode.entry.uri, meta)?;
                let id = self.next_version.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tile = file.tile_bytes();
                let v = FileVersion::new(id, file, tile);
                inode.lock().version = Some(v.clone());
                v
            }
        };
        let keep_cache = {
            let mut c = inode.lock();
            let keep = c.page_cache_version == Some(version.id());
            c.page_cache_version = Some(version.id());
            keep
        };
        Counters::add(&self.counters.opens, 1);
        let source: Arc<dyn ChunkSource> = version;
        let prefetch = Prefetcher::new(source.size(), source.chunk_bytes(), self.config.prefetch_window_bytes);
        let fh = self.handles.insert(Handle::File(FileHandle {
            ino,
            source,
            prefetch: std::sync::Mutex::new(prefetch),
        }));
        debug!("open ino={} fh={} keep_cache={keep_cache}", ino.0, fh.0);
        Ok(Opened {
            fh,
            keep_cache,
            direct_io: false,
        })
    }

    /// Reads up to `size` bytes at `offset`; short only at the end.
    pub fn read(&self, fh: Fh, offset: u64, size: u32) -> Result<Vec<u8>> {
        let handle = self.handles.get(fh).ok_or_else(|| Error::bad_handle(fh.0))?;
        let out = match handle.as_ref() {
            Handle::File(f) => {
                let plan = f
                    .prefetch
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .on_read(offset, size as u64);
                if let Some(range) = plan {
                    self.prefetch.submit(&f.source, range);
                }
                let mut buf = vec![0u8; size as usize];
                let n = self.cache.read(f.source.as_ref(), offset, &mut buf).map_err(|e| {
                    Error::new(
                        e.errno,
                        e.level,
                        format!("read of {} at {offset}: {e}", f.source.describe()),
                    )
                })?;
                buf.truncate(n);
                buf
            }
            Handle::Generated(bytes) => {
                let start = (offset as usize).min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                bytes[start..end].to_vec()
            }
            Handle::Dir { .. } => return Err(Error::new(libc::EISDIR, log::Level::Debug, "read of a directory")),
        };
        Counters::add(&self.counters.reads_served, 1);
        Counters::add(&self.counters.bytes_served, out.len() as u64);
        Ok(out)
    }

    pub fn release(&self, fh: Fh) {
        if let Some(h) = self.handles.remove(fh)
            && let Handle::File(f) = h.as_ref()
        {
            debug!("release ino={} fh={}", f.ino.0, fh.0);
        }
    }

    pub fn statfs(&self) -> FsStats {
        FsStats {
            blocks: 0,
            files: self.inodes.count() as u64,
            block_size: 4096,
            name_max: crate::registry::names::NAME_MAX_BYTES as u32,
        }
    }

    /// Logs the mount's counters (at unmount).
    pub fn log_summary(&self) {
        info!("counters at unmount: {:?}", self.counters());
    }
}
