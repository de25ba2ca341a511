//! The filesystem core: the registry as inodes, directory listings, open
//! handles and the read path. It knows nothing of FUSE; `crate::fuse` adapts
//! it, and tests drive it directly.

pub mod attr;
pub mod counters;
pub mod error;
mod handles;
mod inode;
pub mod read;
pub mod store;
pub mod write;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

pub use attr::{Attr, DirItem, Fh, FsStats, Ino, Kind, Opened};
pub use counters::{Counters, Snapshot};
pub use error::{CoreError, Error, Result};

use crate::registry::file_array::now_ns;
use crate::registry::tiledb_ml::{MemoryPool, TileDbMlModel, ViewEntry, ViewLimits};
use crate::registry::{Attrs, Entry, Node, Storage};
use handles::{FileHandle, Handle, HandleTable, WriteHandle};
use inode::{Inode, InodeTable, NodeState, Seen};
use read::{ChunkCache, ChunkSource, FileVersion, PrefetchPool, Prefetcher};
pub use store::{FailingStore, MemStore, Store};
use write::{StagingArea, Target, Writer};

/// TileDB-ML models kept decoded at once (each holds its fields' bytes).
const ML_MODELS_KEPT: usize = 4;

/// Entries of one listing whose arrays are opened at once: on an object
/// store each open is a few round trips, so a model directory's files are
/// stat'ed in parallel rather than one after another.
const NODE_READS_IN_FLIGHT: usize = 8;

/// Whether a name may be answered from a directory's cached listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    /// Within the metadata TTL, the cached listing answers (lookups).
    Cached,
    /// Ask the registry (before changing it).
    Fresh,
}

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
    /// Directory for staging files written out of order.
    pub staging_dir: PathBuf,
    /// Most bytes staged at once, over all files being written.
    pub staging_limit_bytes: u64,
    /// Most bytes the TileDB-ML views of all decoded models may
    /// materialise (own rather than borrow from their fields), in bytes.
    pub view_memory_bytes: u64,
    pub uid: u32,
    pub gid: u32,
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
            staging_dir: std::env::temp_dir().join("modelfs-staging"),
            staging_limit_bytes: 64 << 30,
            view_memory_bytes: 2 << 30,
            uid: 0,
            gid: 0,
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
    counters: Arc<Counters>,
    staging: Arc<StagingArea>,
    next_version: std::sync::atomic::AtomicU64,
    started: SystemTime,
    /// Decoded TileDB-ML models by array URI, with the array version they
    /// were read at; at most [`ML_MODELS_KEPT`].
    ml_models: Mutex<Vec<(String, u64, Arc<TileDbMlModel>)>>,
    /// URIs already warned about, so a bad entry logs once, not per listing.
    warned: Mutex<HashSet<String>>,
    /// What the TileDB-ML views of every decoded model materialise.
    view_memory: MemoryPool,
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
        let staging =
            StagingArea::new(&config.staging_dir, config.staging_limit_bytes, counters.clone()).map_err(|error| {
                CoreError::StagingDir {
                    dir: config.staging_dir.clone(),
                    error,
                }
            })?;
        let cache = Arc::new(ChunkCache::new(config.cache_bytes, counters.clone()));
        let view_memory = MemoryPool::new(config.view_memory_bytes);
        let prefetch = PrefetchPool::new(
            cache.clone(),
            counters.clone(),
            config.prefetch_threads,
            config.prefetch_fetch_bytes,
            256,
        );
        Ok(ModelFs {
            store,
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
            ml_models: Mutex::new(Vec::new()),
            view_memory,
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

    /// What `entry` shows as, or `None` when it is not shown (arrays that
    /// are not files). Failures name the entry.
    fn node_of(&self, entry: &Entry) -> Result<Option<NodeState>> {
        if !entry.is_dir() {
            Counters::add(&self.counters.registry_node_reads, 1);
        }
        match self.store.node(entry) {
            Ok(Node::Dir(attrs)) => Ok(Some(NodeState::Dir(attrs))),
            Ok(Node::File(meta)) => Ok(Some(NodeState::File(meta))),
            Ok(Node::TileDbMl { .. }) => match self.ml_model(&entry.uri) {
                Ok(model) => Ok(Some(NodeState::MlDir {
                    model,
                    prefix: String::new(),
                })),
                Err(e) => {
                    self.warn_once(
                        &entry.uri,
                        format_args!("{}: TileDB-ML model cannot be read: {e}", entry.uri),
                    );
                    Err(e.into())
                }
            },
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

    /// The decoded TileDB-ML model at `uri`, reusing the one kept while the
    /// array has no newer write.
    fn ml_model(&self, uri: &str) -> crate::registry::Result<Arc<TileDbMlModel>> {
        let version = self.store.array_version(uri)?;
        {
            let kept = lock(&self.ml_models);
            if let Some((_, _, m)) = kept.iter().find(|(u, v, _)| u == uri && *v == version) {
                return Ok(m.clone());
            }
        }
        let model = Arc::new(
            self.store
                .tiledb_ml_model(uri, &self.view_memory, ViewLimits::default())?,
        );
        for failure in model.failures() {
            self.warn_once(&format!("{uri}#{}", failure.field), format_args!("{failure}"));
        }
        let mut kept = lock(&self.ml_models);
        kept.retain(|(u, _, _)| u != uri);
        if kept.len() >= ML_MODELS_KEPT {
            kept.remove(0);
        }
        kept.push((uri.to_string(), version, model.clone()));
        Ok(model)
    }

    /// The node for `name` inside the TileDB-ML view folder `prefix`.
    fn ml_child(model: &Arc<TileDbMlModel>, prefix: &str, name: &str) -> Option<NodeState> {
        let path = format!("{prefix}{name}");
        if model.entry(&path).is_some() {
            return Some(NodeState::MlFile {
                model: model.clone(),
                path,
            });
        }
        let folder = format!("{path}/");
        model
            .entries()
            .iter()
            .any(|(p, _)| p.starts_with(&folder))
            .then(|| NodeState::MlDir {
                model: model.clone(),
                prefix: folder,
            })
    }

    /// The names directly inside TileDB-ML view folder `prefix`, each with
    /// whether it is a folder.
    fn ml_listing(model: &TileDbMlModel, prefix: &str) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = Vec::new();
        for (path, _) in model.entries() {
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            let (name, is_dir) = match rest.split_once('/') {
                Some((dir, _)) => (dir, true),
                None => (rest, false),
            };
            if !out.iter().any(|(n, _)| n == name) {
                out.push((name.to_string(), is_dir));
            }
        }
        out
    }

    /// The synthetic entry of `name` inside a TileDB-ML view folder `dir`
    /// (never looked up in the registry).
    fn ml_entry(dir: &Inode, name: &str) -> Entry {
        let parent = dir.entry();
        Entry {
            name: name.to_string(),
            uri: format!("{}/{name}", parent.uri),
            storage: crate::registry::Storage::Array,
        }
    }

    /// Directory `ino`, for a change (`what`) in it: EROFS inside a
    /// TileDB-ML model's view.
    fn changeable_dir(&self, ino: Ino, what: &str) -> Result<Arc<Inode>> {
        let dir = self.dir_inode(ino)?;
        self.refuse_ml_change(&dir, what)?;
        Ok(dir)
    }

    /// EROFS for changes inside a TileDB-ML model's view, with a log line.
    fn refuse_ml_change(&self, dir: &Inode, what: &str) -> Result<()> {
        let node = dir.lock().node.clone();
        if matches!(node, NodeState::MlDir { .. } | NodeState::MlFile { .. }) {
            return Err(CoreError::ReadOnlyView {
                change: format!("{what} in"),
                uri: dir.entry().uri,
            }
            .into());
        }
        Ok(())
    }

    /// What `stat` shows for `node`: stored modes, owners and times over
    /// the mount's defaults (0644 files, 0755 directories, owned by the
    /// mounting user; a version's commit time as its mtime).
    fn attr_of(&self, ino: Ino, node: &NodeState) -> Attr {
        let w = if self.config.read_only { 0 } else { 0o200 };
        let base = Attr {
            ino,
            kind: Kind::File,
            size: 0,
            mtime: self.started,
            atime: self.started,
            ctime: self.started,
            perm: 0o444 | w,
            nlink: 1,
            uid: self.config.uid,
            gid: self.config.gid,
            changing: false,
        };
        let at_ms = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        match node {
            NodeState::Dir(attrs) => with_attrs(
                Attr {
                    kind: Kind::Dir,
                    perm: 0o555 | w,
                    nlink: 2,
                    ..base
                },
                attrs,
                None,
            ),
            NodeState::MlDir { model, .. } => {
                let t = at_ms(model.version());
                Attr {
                    kind: Kind::Dir,
                    perm: 0o555,
                    nlink: 2,
                    mtime: t,
                    atime: t,
                    ctime: t,
                    ..base
                }
            }
            NodeState::MlFile { model, path } => {
                let t = at_ms(model.version());
                Attr {
                    size: match model.entry(path) {
                        Some(ViewEntry::Ready(f)) => f.len(),
                        _ => 0,
                    },
                    perm: 0o444,
                    mtime: t,
                    atime: t,
                    ctime: t,
                    ..base
                }
            }
            NodeState::File(meta) => with_attrs(
                Attr {
                    size: meta.size,
                    ..base
                },
                &meta.attrs,
                meta.timestamp.map(at_ms),
            ),
        }
    }

    fn stats_attr(&self) -> Attr {
        let now = SystemTime::now();
        Attr {
            ino: Ino::STATS,
            kind: Kind::File,
            size: 0,
            mtime: now,
            atime: now,
            ctime: now,
            perm: 0o444,
            nlink: 1,
            uid: self.config.uid,
            gid: self.config.gid,
            changing: true,
        }
    }

    /// What `stat` shows of `inode`: its node, with the size its writer has
    /// reached while it is being written.
    fn shown_node(&self, inode: &Inode) -> Result<NodeState> {
        let node = self.fresh_node(inode)?;
        let writer = inode.lock().active_writer();
        match (node, writer) {
            (NodeState::File(mut meta), Some(w)) => {
                meta.size = lock(&w).size();
                Ok(NodeState::File(meta))
            }
            (node, _) => Ok(node),
        }
    }

    /// The committed node of `inode`, read again when older than the TTL.
    fn fresh_node(&self, inode: &Inode) -> Result<NodeState> {
        let (writer, node, fresh, read_at) = {
            let c = inode.lock();
            let fresh = c.unlinked || c.node.is_ml_child() || self.within_ttl(c.read_at);
            (c.active_writer(), c.node.clone(), fresh, c.read_at)
        };
        // A file being written keeps its node: a new one is not in the
        // registry yet, and the writer's commit refreshes it.
        if fresh || writer.is_some() {
            return Ok(node);
        }
        let entry = inode.entry();
        let node = self
            .node_of(&entry)?
            .ok_or_else(|| CoreError::NoLongerShown { uri: entry.uri.clone() })?;
        let mut c = inode.lock();
        if c.read_at != read_at {
            // Refreshed while this read ran (a commit here): that is newer.
            return Ok(c.node.clone());
        }
        if c.node != node {
            c.version = None;
        }
        c.node = node.clone();
        c.read_at = Some(Instant::now());
        Ok(node)
    }

    fn dir_inode(&self, ino: Ino) -> Result<Arc<Inode>> {
        let dir = self.inode(ino)?;
        if !self.fresh_node(&dir)?.is_dir() {
            return Err(CoreError::NotADirectory { what: dir.entry().uri }.into());
        }
        Ok(dir)
    }

    /// The entry named `name` in directory inode `dir`: a file being
    /// created here first, then the registry. `Listed::Cached` answers from
    /// the directory's listing while it is within the metadata TTL (for
    /// lookups); changes ask the registry itself.
    fn child(&self, dir: &Inode, name: &str, how: Listed) -> Result<Option<(Entry, Option<Arc<Inode>>)>> {
        if let NodeState::MlDir { .. } = dir.lock().node {
            return Ok(None);
        }
        if let Some(inode) = self.inodes.find(dir.ino, name)
            && inode.lock().active_writer().is_some()
        {
            return Ok(Some((inode.entry(), Some(inode))));
        }
        let dir_entry = dir.entry();
        let listed =
            how == Listed::Cached && (dir_entry.storage == Storage::Group || self.fresh_listing(dir).is_some());
        if listed {
            return Ok(self
                .entries(dir)?
                .iter()
                .find(|e| e.name == name)
                .map(|e| (e.clone(), None)));
        }
        Ok(self.store.lookup(&dir_entry, name)?.map(|e| (e, None)))
    }

    /// Whether something read from the registry at `at` is still trusted.
    fn within_ttl(&self, at: Option<Instant>) -> bool {
        at.is_some_and(|at| at.elapsed() < self.config.metadata_ttl)
    }

    fn fresh_listing(&self, dir: &Inode) -> Option<Arc<Vec<Entry>>> {
        match &dir.lock().listing {
            Some((at, list)) if self.within_ttl(Some(*at)) => Some(list.clone()),
            _ => None,
        }
    }

    /// The entries of directory inode `dir`: its listing from within the
    /// metadata TTL, or a new one from the registry.
    fn entries(&self, dir: &Inode) -> Result<Arc<Vec<Entry>>> {
        if let Some(list) = self.fresh_listing(dir) {
            return Ok(list);
        }
        Counters::add(&self.counters.registry_listings, 1);
        let list = Arc::new(self.store.list(&dir.entry())?);
        dir.lock().listing = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Drops directory `ino`'s listing: this mount just changed it.
    fn forget_listing(&self, ino: Ino) {
        if let Some(dir) = self.inodes.get(ino) {
            dir.lock().listing = None;
        }
    }

    /// What the inode known for `entry` in `parent` held when read within
    /// the metadata TTL, if there is one.
    fn known_node(&self, parent: Ino, entry: &Entry) -> Option<NodeState> {
        let inode = self.inodes.find(parent, &entry.name)?;
        if !crate::registry::uri::same(&inode.entry().uri, &entry.uri) {
            return None;
        }
        let c = inode.lock();
        (self.within_ttl(c.read_at) && !c.unlinked).then(|| c.node.clone())
    }

    /// The nodes of `entries` (in `parent`), `None` for those not shown or
    /// unreadable, each with whether it was just read. Nodes not known
    /// within the TTL are read several at a time, since on object stores
    /// each is a few round trips.
    fn nodes_of(&self, parent: Ino, entries: &[Entry]) -> Vec<Option<(NodeState, Seen)>> {
        let mut out: Vec<Option<Option<(NodeState, Seen)>>> = entries
            .iter()
            .map(|e| {
                match self.known_node(parent, e) {
                    Some(n) => Some(Some((n, Seen::Cached))),
                    // A directory's kind is known from the listing; its
                    // attributes are read when it is looked up.
                    None if e.is_dir() => Some(Some((NodeState::Dir(Attrs::default()), Seen::Partial))),
                    None => None,
                }
            })
            .collect();
        let missing: Vec<usize> = (0..entries.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let per_thread = missing.len().div_ceil(NODE_READS_IN_FLIGHT);
            let read: Vec<(usize, Option<(NodeState, Seen)>)> = std::thread::scope(|scope| {
                let workers: Vec<_> = missing
                    .chunks(per_thread)
                    .map(|chunk| {
                        scope.spawn(move || {
                            chunk
                                .iter()
                                .map(|&i| (i, self.node_of(&entries[i]).ok().flatten().map(|n| (n, Seen::Read))))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
            });
            for (i, node) in read {
                out[i] = Some(node);
            }
        }
        out.into_iter().map(Option::flatten).collect()
    }

    /// Looks up `name` in directory `parent`.
    /// The kernel holds a reference to the inode returned until it forgets
    /// it ([`ModelFs::forget`]).
    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Attr> {
        let (mut attr, inode) = self.lookup_inner(parent, name)?;
        if let Some(inode) = inode {
            self.inodes.remember(&inode);
            attr.changing |= inode.lock().active_writer().is_some();
        }
        Ok(attr)
    }

    /// The kernel dropped `n` references to `ino`: an inode no longer
    /// referenced nor open is dropped with what it caches.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes.forget(ino, n);
    }

    fn lookup_inner(&self, parent: Ino, name: &str) -> Result<(Attr, Option<Arc<Inode>>)> {
        Counters::add(&self.counters.lookups, 1);
        if name.len() > crate::registry::names::NAME_MAX_BYTES {
            return Err(invalid_name(name, "longer than 255 bytes"));
        }
        if parent == Ino::ROOT && name == STATS_NAME {
            return Ok((self.stats_attr(), None));
        }
        let dir = self.dir_inode(parent)?;
        let dir_node = dir.lock().node.clone();
        if let NodeState::MlDir { model, prefix } = dir_node {
            let node = Self::ml_child(&model, &prefix, name)
                .ok_or_else(|| Error::not_found(format!("{}/{prefix}{name}", dir.entry().uri)))?;
            let entry = Self::ml_entry(&dir, name);
            let inode = self.inodes.upsert(parent, entry, node.clone(), Seen::Read);
            return Ok((self.attr_of(inode.ino, &node), Some(inode)));
        }
        let (entry, known) = self
            .child(&dir, name, Listed::Cached)?
            .ok_or_else(|| Error::not_found(format!("{}/{name}", dir.entry().uri)))?;
        if let Some(inode) = known {
            let node = self.shown_node(&inode)?;
            return Ok((self.attr_of(inode.ino, &node), Some(inode)));
        }
        if let Some(node) = self.known_node(parent, &entry) {
            let inode = self.inodes.upsert(parent, entry, node.clone(), Seen::Cached);
            return Ok((self.attr_of(inode.ino, &node), Some(inode)));
        }
        let node = self.node_of(&entry)?.ok_or_else(|| Error::not_found(&entry.uri))?;
        let inode = self.inodes.upsert(parent, entry, node.clone(), Seen::Read);
        Ok((self.attr_of(inode.ino, &node), Some(inode)))
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        if ino == Ino::STATS {
            return Ok(self.stats_attr());
        }
        let inode = self.inode(ino)?;
        let node = self.shown_node(&inode)?;
        let mut attr = self.attr_of(ino, &node);
        let c = inode.lock();
        if c.unlinked {
            // Open but removed from its directory (`fstat`).
            attr.nlink = 0;
        }
        attr.changing = c.active_writer().is_some();
        Ok(attr)
    }

    /// Opens a directory: its listing is taken now and read by offset.
    pub fn opendir(&self, ino: Ino) -> Result<Fh> {
        let dir = self.dir_inode(ino)?;
        let mut items = vec![
            DirItem {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
                next_offset: 1,
            },
            DirItem {
                ino: dir.parent(),
                kind: Kind::Dir,
                name: "..".into(),
                next_offset: 2,
            },
        ];
        let dir_node = dir.lock().node.clone();
        if let NodeState::MlDir { model, prefix } = dir_node {
            for (name, _) in Self::ml_listing(&model, &prefix) {
                let Some(node) = Self::ml_child(&model, &prefix, &name) else {
                    continue;
                };
                let kind = if node.is_dir() { Kind::Dir } else { Kind::File };
                let child = self.inodes.upsert(ino, Self::ml_entry(&dir, &name), node, Seen::Read);
                let next_offset = items.len() as u64 + 1;
                items.push(DirItem {
                    ino: child.ino,
                    kind,
                    name,
                    next_offset,
                });
            }
            return Ok(self.handles.insert(Handle::Dir { items }));
        }
        let mut names = HashSet::new();
        let entries = self.entries(&dir)?;
        let nodes = self.nodes_of(ino, &entries);
        for (entry, node) in entries.iter().zip(nodes) {
            if ino == Ino::ROOT && entry.name == STATS_NAME {
                continue;
            }
            // A bad entry is left out (and logged once); the rest is listed.
            let Some((node, seen)) = node else { continue };
            let kind = if node.is_dir() { Kind::Dir } else { Kind::File };
            let name = entry.name.clone();
            let child = self.inodes.upsert(ino, entry.clone(), node, seen);
            names.insert(name.clone());
            let next_offset = items.len() as u64 + 1;
            items.push(DirItem {
                ino: child.ino,
                kind,
                name,
                next_offset,
            });
        }
        for child in self.inodes.uncommitted_children(ino) {
            let name = child.entry().name;
            if names.insert(name.clone()) {
                let next_offset = items.len() as u64 + 1;
                items.push(DirItem {
                    ino: child.ino,
                    kind: Kind::File,
                    name,
                    next_offset,
                });
            }
        }
        Ok(self.handles.insert(Handle::Dir { items }))
    }

    /// Entries from `offset` on (0 is the start; each item names the next).
    pub fn readdir(&self, fh: Fh, offset: u64) -> Result<Vec<DirItem>> {
        match self.handles.get(fh).as_deref() {
            Some(Handle::Dir { items, .. }) => Ok(items.iter().skip(offset as usize).cloned().collect()),
            _ => Err(CoreError::BadHandle { fh: fh.0 }.into()),
        }
    }

    pub fn releasedir(&self, fh: Fh) {
        self.handles.remove(fh);
    }

    fn check_writable(&self, what: &str) -> Result<()> {
        if self.config.read_only {
            return Err(read_only(what));
        }
        Ok(())
    }

    /// Opens a file; `write` for writing (`truncate` for `O_TRUNC`). A
    /// second writer of one file gets EBUSY.
    pub fn open(&self, ino: Ino, write: bool, truncate: bool, opener: Option<u32>) -> Result<Opened> {
        if ino == Ino::STATS {
            if write {
                return Err(read_only(STATS_NAME));
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
        let node = self.fresh_node(&inode)?;
        if let NodeState::MlFile { model, path } = &node {
            if write {
                self.refuse_ml_change(&inode, "open for writing")?;
            }
            return match model.entry(path) {
                Some(ViewEntry::Ready(file)) => {
                    Counters::add(&self.counters.opens, 1);
                    Ok(Opened {
                        fh: self.handles.insert(Handle::View(file.clone())),
                        keep_cache: true,
                        direct_io: false,
                    })
                }
                Some(ViewEntry::Failed(e)) => Err(crate::registry::Error::from(e.clone()).into()),
                None => Err(Error::not_found(path)),
            };
        }
        if write {
            self.check_writable(&inode.entry().uri)?;
            return self.open_writer(&inode, truncate, opener);
        }
        let NodeState::File(meta) = node else {
            return Err(CoreError::IsADirectory {
                what: inode.entry().uri,
            }
            .into());
        };
        if meta.timestamp.is_none() && meta.kind.is_none() && inode.lock().active_writer().is_some() {
            // A new file not committed yet reads as empty.
            return Ok(self.open_generated(&inode, Vec::new()));
        }
        let existing = inode.lock().version.clone();
        let version = match existing {
            Some(v) if v.file().meta().same_data(&meta) => v,
            _ => {
                let file = self.store.open_version(&inode.entry().uri, meta)?;
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
            c.open_handles += 1;
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

    fn open_generated(&self, inode: &Inode, bytes: Vec<u8>) -> Opened {
        inode.lock().open_handles += 1;
        Opened {
            fh: self.handles.insert(Handle::Generated(bytes)),
            keep_cache: false,
            direct_io: false,
        }
    }

    fn open_writer(&self, inode: &Arc<Inode>, truncate: bool, opener: Option<u32>) -> Result<Opened> {
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
        self.attach_writer(inode, writer, opener)
    }

    fn attach_writer(&self, inode: &Arc<Inode>, writer: Writer, opener: Option<u32>) -> Result<Opened> {
        let writer = Arc::new(Mutex::new(writer));
        {
            let mut c = inode.lock();
            if c.active_writer().is_some() {
                return Err(CoreError::AlreadyOpenForWriting { uri: inode.entry().uri }.into());
            }
            c.writer = Arc::downgrade(&writer);
            c.open_handles += 1;
            c.page_cache_version = None;
        }
        Counters::add(&self.counters.opens, 1);
        let fh = self.handles.insert(Handle::Write(WriteHandle {
            ino: inode.ino,
            writer,
            opener,
        }));
        Ok(Opened {
            fh,
            keep_cache: false,
            direct_io: false,
        })
    }

    /// Creates (or, without `exclusive`, opens and truncates) file `name` in
    /// `parent` for writing. It is listed at once and committed at close.
    /// `mode` has the umask applied; `who` makes it.
    pub fn create(
        &self,
        parent: Ino,
        name: &str,
        exclusive: bool,
        opener: Option<u32>,
        mode: u32,
        who: Owner,
    ) -> Result<(Attr, Opened)> {
        self.check_writable(name)?;
        let dir = self.changeable_dir(parent, "create")?;
        if let Some(reason) = crate::registry::names::invalid_name_reason(name) {
            return Err(invalid_name(name, reason));
        }
        if let Some((entry, known)) = self.child(&dir, name, Listed::Fresh)? {
            if exclusive {
                return Err(CoreError::Exists { what: entry.uri }.into());
            }
            let inode = match known {
                Some(i) => i,
                None => {
                    let node = self
                        .node_of(&entry)?
                        .ok_or_else(|| CoreError::ExistsNotAFile { uri: entry.uri.clone() })?;
                    self.inodes.upsert(parent, entry, node, Seen::Read)
                }
            };
            let opened = self.open_writer(&inode, true, opener)?;
            self.inodes.remember(&inode);
            return Ok((self.getattr(inode.ino)?, opened));
        }
        let dir_entry = dir.entry();
        let uri = self.store.new_child_uri(&dir_entry, name)?;
        let entry = Entry {
            name: name.to_string(),
            uri,
            storage: crate::registry::Storage::Array,
        };
        let attrs = self.new_attrs(mode, who);
        let blank = crate::registry::FileMeta {
            size: 0,
            timestamp: None,
            kind: None,
            tensors: None,
            attrs,
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
        let opened = self.attach_writer(&inode, writer, opener)?;
        self.touch_dir(parent, false);
        self.inodes.remember(&inode);
        Ok((self.attr_of(inode.ino, &NodeState::File(blank)), opened))
    }

    /// Writes `data` at `offset` through a handle open for writing.
    pub fn write(&self, fh: Fh, offset: u64, data: &[u8]) -> Result<u32> {
        let handle = self.handles.get(fh).ok_or(CoreError::BadHandle { fh: fh.0 })?;
        let Handle::Write(w) = handle.as_ref() else {
            return Err(CoreError::NotOpenForWriting.into());
        };
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
        let result = self.commit(w);
        // `release` reaches the daemon only after `close()` has returned, so
        // the file is free for the next writer from here on.
        if let Some(inode) = self.inodes.get(w.ino) {
            let mut c = inode.lock();
            if c.active_writer().is_some_and(|a| Arc::ptr_eq(&a, &w.writer)) {
                c.writer = std::sync::Weak::new();
            }
            drop(c);
            // A new file whose first commit failed does not exist.
            if result.is_err() && !lock(&w.writer).target().exists {
                self.inodes.remove_name(inode.parent(), &inode.entry().name);
            }
        }
        result
    }

    fn commit(&self, w: &WriteHandle) -> Result<()> {
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
        if committed.is_some()
            && let Some(inode) = self.inodes.get(w.ino)
        {
            if was_new {
                self.touch_dir(inode.parent(), true);
            } else {
                self.forget_listing(inode.parent());
            }
            let entry = lock(&w.writer).target().entry.clone();
            // The new version becomes what lookups and opens see, also
            // through the inode now holding the name if it is another one
            // for the same storage (a file renamed over this one while
            // open).
            if let Ok(Node::File(meta)) = self.store.node(&entry) {
                let named = self
                    .inodes
                    .find(inode.parent(), &entry.name)
                    .filter(|o| !Arc::ptr_eq(o, &inode) && crate::registry::uri::same(&o.entry().uri, &entry.uri));
                for i in std::iter::once(&inode).chain(named.as_ref()) {
                    let mut c = i.lock();
                    c.node = NodeState::File(meta.clone());
                    c.read_at = Some(Instant::now());
                    c.version = None;
                    c.page_cache_version = None;
                }
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
            Handle::File(f) => f.ino,
            Handle::Write(w) => {
                let dirty = lock(&w.writer).needs_commit();
                if dirty && let Err(e) = self.commit(w) {
                    log::log!(e.level, "release: {e}");
                }
                w.ino
            }
            Handle::View(_) | Handle::Generated(_) | Handle::Dir { .. } => return,
        };
        debug!("release ino={} fh={}", ino.0, fh.0);
        if let Some(inode) = self.inodes.get(ino) {
            let delete = {
                let mut c = inode.lock();
                c.open_handles = c.open_handles.saturating_sub(1);
                c.open_handles == 0 && std::mem::take(&mut c.delete_on_close)
            };
            if delete && let Some(dir) = self.inodes.get(inode.parent()) {
                self.delete_unlinked(&dir, &inode.entry());
            }
        }
    }

    /// Reads up to `size` bytes at `offset`; short only at the end.
    pub fn read(&self, fh: Fh, offset: u64, size: u32) -> Result<Vec<u8>> {
        let handle = self.handles.get(fh).ok_or(CoreError::BadHandle { fh: fh.0 })?;
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
                let n = self
                    .cache
                    .read(f.source.as_ref(), offset, &mut buf)
                    .map_err(|e| CoreError::Read {
                        what: f.source.describe().to_string(),
                        offset,
                        error: Box::new(e),
                    })?;
                buf.truncate(n);
                buf
            }
            Handle::Write(w) => lock(&w.writer).read(self.store.as_ref(), offset, size)?,
            Handle::View(file) => {
                let mut buf = vec![0u8; size as usize];
                let n = file.read_at(offset, &mut buf);
                buf.truncate(n);
                buf
            }
            Handle::Generated(bytes) => {
                let start = (offset as usize).min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                bytes[start..end].to_vec()
            }
            Handle::Dir { .. } => return Err(CoreError::ReadOfDirectory.into()),
        };
        Counters::add(&self.counters.reads_served, 1);
        Counters::add(&self.counters.bytes_served, out.len() as u64);
        Ok(out)
    }

    /// Changes attributes: the size (truncate / extend, as a new version or
    /// through the open writer `fh`), and the mode, owner and times, stored
    /// without a new version (see [`crate::registry::attrs`]).
    pub fn setattr(&self, ino: Ino, change: SetAttr) -> Result<Attr> {
        if ino == Ino::STATS {
            return Err(read_only(STATS_NAME));
        }
        let inode = self.inode(ino)?;
        if let Some(size) = change.size {
            self.truncate(&inode, size, change.fh)?;
        }
        let attrs = change.stored()?;
        if !attrs.is_empty() {
            self.set_attrs(&inode, attrs)?;
        }
        self.getattr(ino)
    }

    fn truncate(&self, inode: &Arc<Inode>, size: u64, fh: Option<Fh>) -> Result<()> {
        self.check_writable(&inode.entry().uri)?;
        // Through the handle it came with, or the file's open writer (the
        // kernel truncates for `O_TRUNC` without naming the handle).
        let writer = match fh.and_then(|fh| self.handles.get(fh)).as_deref() {
            Some(Handle::Write(w)) => Some(w.writer.clone()),
            _ => inode.lock().active_writer(),
        };
        if let Some(w) = writer {
            return lock(&w).truncate(self.store.as_ref(), size);
        }
        // Nobody writes it: a new version of `size` bytes, committed now.
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

    /// Stores `change` for `inode`: at once, and with its writer's next
    /// commit when one is open (a commit resets the times it does not
    /// carry). A new file not committed yet gets them at its first commit.
    fn set_attrs(&self, inode: &Arc<Inode>, change: Attrs) -> Result<()> {
        let node = self.fresh_node(inode)?;
        let current = self.attr_of(inode.ino, &node);
        let unchanged = change.mtime_ns.is_none()
            && change.atime_ns.is_none()
            && change.mode.is_none_or(|m| m == u32::from(current.perm))
            && change.uid.is_none_or(|u| u == current.uid)
            && change.gid.is_none_or(|g| g == current.gid);
        if unchanged {
            return Ok(());
        }
        if matches!(node, NodeState::MlDir { .. } | NodeState::MlFile { .. }) {
            self.refuse_ml_change(inode, "changing attributes")?;
        }
        self.check_writable(&inode.entry().uri)?;
        let writer = inode.lock().active_writer();
        let committed = match writer {
            Some(w) => {
                let mut w = lock(&w);
                w.set_attrs(change);
                w.target().exists
            }
            None => true,
        };
        // The ctime shown is the one stored, so it does not move when the
        // node is read again (tar checks it).
        let change = if committed {
            self.store.set_attrs(&inode.entry(), &change)?
        } else {
            Attrs {
                ctime_ns: Some(now_ns()),
                ..change
            }
        };
        let mut c = inode.lock();
        match &mut c.node {
            NodeState::Dir(a) => *a = a.with(&change),
            NodeState::File(meta) => meta.attrs = meta.attrs.with(&change),
            _ => {}
        }
        Ok(())
    }

    /// Directory `ino`'s entries changed: its listing is dropped, and its
    /// times are re-read from the registry (which stamped them as it
    /// changed the group), or, for a change not stored yet (a file being
    /// created), set to now until then.
    fn touch_dir(&self, ino: Ino, stored: bool) {
        let Some(dir) = self.inodes.get(ino) else { return };
        let mut c = dir.lock();
        c.listing = None;
        if stored {
            c.read_at = None;
        } else if let NodeState::Dir(a) = &mut c.node {
            let now = Some(now_ns());
            a.mtime_ns = now;
            a.ctime_ns = now;
        }
    }

    /// The attributes a new entry made by `who` with `mode` stores: its
    /// mode, and its owner where that is not the mounting user.
    fn new_attrs(&self, mode: u32, who: Owner) -> Attrs {
        Attrs {
            mode: Some(mode & crate::registry::attrs::MODE_BITS),
            uid: (who.uid != self.config.uid).then_some(who.uid),
            gid: (who.gid != self.config.gid).then_some(who.gid),
            ..Attrs::default()
        }
    }

    /// Creates directory `name` in `parent` (a group, linked into its parent).
    /// `mode` has the umask applied; `who` makes it.
    pub fn mkdir(&self, parent: Ino, name: &str, mode: u32, who: Owner) -> Result<Attr> {
        self.check_writable(name)?;
        let dir = self.changeable_dir(parent, "mkdir")?;
        if self.child(&dir, name, Listed::Fresh)?.is_some() {
            return Err(CoreError::Exists { what: name.to_string() }.into());
        }
        // Its times are stored from the start, so every mount shows the
        // same ones (not its own start time).
        let now = Some(now_ns());
        let attrs = Attrs {
            mtime_ns: now,
            ctime_ns: now,
            ..self.new_attrs(mode, who)
        };
        let entry = self.store.mkdir(&dir.entry(), name, &attrs)?;
        self.touch_dir(parent, true);
        let node = NodeState::Dir(attrs);
        let inode = self.inodes.upsert(parent, entry, node.clone(), Seen::Read);
        self.inodes.remember(&inode);
        Ok(self.attr_of(inode.ino, &node))
    }

    /// Removes file `name` from `parent`. Its storage is deleted now, or
    /// when the last open handle closes. A new file not committed yet has
    /// none: its handles keep their bytes and commit nothing.
    pub fn unlink(&self, parent: Ino, name: &str) -> Result<()> {
        self.check_writable(name)?;
        let dir = self.changeable_dir(parent, "unlink")?;
        let (entry, known) = self
            .child(&dir, name, Listed::Fresh)?
            .ok_or_else(|| Error::not_found(name))?;
        if entry.is_dir() {
            return Err(CoreError::IsADirectory { what: entry.uri }.into());
        }
        let inode = known.or_else(|| self.inodes.find(parent, name));
        let writer = inode.as_ref().and_then(|i| i.lock().active_writer());
        // Linked: a member of the directory; stored: it has storage.
        let (linked, stored) = match &writer {
            Some(w) => {
                let mut w = lock(w);
                if !w.target().exists {
                    w.discard();
                }
                (w.target().exists, w.target().exists || w.has_own_array())
            }
            None => (true, true),
        };
        if linked {
            self.store.unlink(&dir.entry(), &entry)?;
        }
        self.touch_dir(parent, linked);
        self.inodes.remove_name(parent, name);
        let open = self.mark_unlinked(inode.as_deref());
        if let Some(i) = &inode {
            i.lock().delete_on_close &= stored;
        }
        if stored && !open {
            self.delete_unlinked(&dir, &entry);
        }
        info!("removed {}", entry.uri);
        Ok(())
    }

    /// Marks `inode` (if known) removed from its directory; true when it is
    /// still open, so its storage goes when the last handle closes.
    fn mark_unlinked(&self, inode: Option<&Inode>) -> bool {
        inode.is_some_and(|i| {
            let mut c = i.lock();
            c.unlinked = true;
            c.delete_on_close = c.open_handles > 0;
            c.delete_on_close
        })
    }

    /// Deletes the storage of `entry`, just taken out of directory `dir`,
    /// unless it lies outside the registry or another entry of `dir` still
    /// names it (written so by another tool). Failures are logged: the
    /// entry is gone either way.
    fn delete_unlinked(&self, dir: &Inode, entry: &Entry) {
        let root = self.inodes.get(Ino::ROOT).map(|r| r.entry().uri).unwrap_or_default();
        if !crate::registry::uri::is_inside(&entry.uri, &root) {
            warn!(
                "{}: storage outside the registry {root}; removed from the directory, not deleted",
                entry.uri
            );
            return;
        }
        let dir_entry = dir.entry();
        // A plain directory lists what is stored in it: no other names.
        let names = match dir_entry.storage {
            Storage::Group => self.store.list(&dir_entry),
            _ => Ok(Vec::new()),
        };
        match names {
            Ok(list) if list.iter().any(|e| crate::registry::uri::same(&e.uri, &entry.uri)) => {
                info!("{}: still named by another entry; not deleted", entry.uri);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                warn!("{}: not deleted, its directory cannot be listed: {e}", entry.uri);
                return;
            }
        }
        if let Err(e) = self.store.delete_storage(entry) {
            warn!("{}: removed, but deleting its storage failed: {e}", entry.uri);
        }
    }

    /// Removes the empty directory `name` from `parent`. ENOTEMPTY when it
    /// holds anything, shown or not (arrays that are not files, entries
    /// with names that cannot be shown, files being created).
    pub fn rmdir(&self, parent: Ino, name: &str) -> Result<()> {
        self.check_writable(name)?;
        let dir = self.changeable_dir(parent, "rmdir")?;
        let (entry, _) = self
            .child(&dir, name, Listed::Fresh)?
            .ok_or_else(|| Error::not_found(name))?;
        self.check_removable_dir(parent, &entry)?;
        self.store.unlink(&dir.entry(), &entry)?;
        self.touch_dir(parent, true);
        let child = self.inodes.find(parent, name);
        self.inodes.remove_name(parent, name);
        self.mark_unlinked(child.as_deref());
        self.delete_unlinked(&dir, &entry);
        info!("removed directory {}", entry.uri);
        Ok(())
    }

    /// Ok when `entry` (in `parent`) is a directory holding nothing.
    fn check_removable_dir(&self, parent: Ino, entry: &Entry) -> Result<()> {
        if !entry.is_dir() {
            if let Ok(Some(NodeState::MlDir { .. })) = self.node_of(entry) {
                return Err(CoreError::ReadOnlyView {
                    change: "rmdir of".to_string(),
                    uri: entry.uri.clone(),
                }
                .into());
            }
            return Err(CoreError::NotADirectory {
                what: entry.uri.clone(),
            }
            .into());
        }
        let child = self.inodes.find(parent, &entry.name);
        let busy = child
            .as_ref()
            .is_some_and(|c| !self.inodes.uncommitted_children(c.ino).is_empty());
        if busy || !self.store.is_empty_dir(entry)? {
            return Err(CoreError::NotEmpty { uri: entry.uri.clone() }.into());
        }
        Ok(())
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent`, replacing a
    /// file or an empty directory already there (POSIX), at no instant
    /// leaving the new name empty. Files being written cannot replace or be
    /// replaced (EBUSY) except by the writer's own rename.
    pub fn rename(&self, parent: Ino, name: &str, new_parent: Ino, new_name: &str) -> Result<()> {
        self.check_writable(name)?;
        let dir = self.changeable_dir(parent, "rename")?;
        let new_dir = self.changeable_dir(new_parent, "rename")?;
        if let Some(reason) = crate::registry::names::invalid_name_reason(new_name) {
            return Err(invalid_name(new_name, reason));
        }
        let (entry, known) = self
            .child(&dir, name, Listed::Fresh)?
            .ok_or_else(|| Error::not_found(name))?;
        if parent == new_parent && name == new_name {
            return Ok(());
        }
        if let Some(inode) = known {
            return self.rename_written(&inode, &new_dir, new_name);
        }
        if entry.is_dir() && self.is_ancestor_or_self(parent, new_parent, &entry)? {
            return Err(CoreError::MoveIntoItself.into());
        }
        let target = self.child(&new_dir, new_name, Listed::Fresh)?;
        if let Some((target, target_known)) = &target {
            if target_known.is_some() {
                return Err(CoreError::BeingWritten {
                    what: target.uri.clone(),
                }
                .into());
            }
            if crate::registry::uri::same(&target.uri, &entry.uri) {
                // Two names of one stored entry: POSIX renames of hard
                // links to each other do nothing.
                return Ok(());
            }
            match (entry.is_dir(), target.is_dir()) {
                (false, true) => return Err(CoreError::TargetIsADirectory.into()),
                (true, false) => return Err(CoreError::TargetNotADirectory.into()),
                (true, true) => self.check_removable_dir(new_parent, target)?,
                (false, false) => {}
            }
        }
        let replaced = target.map(|(t, _)| t);
        let new_dir_entry = new_dir.entry();
        let moved = self
            .store
            .rename(&dir.entry(), &entry, &new_dir_entry, new_name, replaced.as_ref())?;
        self.touch_dir(parent, true);
        self.touch_dir(new_parent, true);
        if let Some(old) = &replaced {
            let old_inode = self.inodes.find(new_parent, new_name);
            self.inodes.remove_name(new_parent, new_name);
            // A plain directory's target was deleted by the move itself.
            if !self.mark_unlinked(old_inode.as_deref()) && new_dir_entry.storage == Storage::Group {
                self.delete_unlinked(&new_dir, old);
            }
        }
        match self.inodes.find(parent, name) {
            Some(inode) => self.inodes.rename(&inode, new_parent, moved.clone()),
            None => {
                let node = self.node_of(&moved)?.unwrap_or(NodeState::Dir(Attrs::default()));
                self.inodes.upsert(new_parent, moved.clone(), node, Seen::Read);
            }
        }
        info!("renamed {}/{name} to {}/{new_name}", dir.entry().uri, new_dir_entry.uri);
        Ok(())
    }

    /// Renames a file that is open for writing: the bytes go to the new name
    /// at commit. Over an existing file they become its new version (or, if
    /// already streaming into an array of their own, take its place), so
    /// the old content stays until the commit succeeds.
    fn rename_written(&self, inode: &Arc<Inode>, new_dir: &Arc<Inode>, new_name: &str) -> Result<()> {
        let Some(writer) = inode.lock().active_writer() else {
            return Err(CoreError::ClosedDuringRename.into());
        };
        // Looked up before the writer is locked: lock order is an inode's
        // cached state, then a writer.
        let existing = self.child(new_dir, new_name, Listed::Fresh)?;
        let mut w = lock(&writer);
        if w.target().exists {
            return Err(CoreError::RenameWhileWritten {
                uri: w.target().entry.uri.clone(),
            }
            .into());
        }
        let dir_entry = new_dir.entry();
        let (entry, exists, replaces) = match existing {
            Some((_, Some(other))) if !Arc::ptr_eq(&other, inode) => {
                return Err(CoreError::BeingWritten {
                    what: new_name.to_string(),
                }
                .into());
            }
            Some((target, _)) if target.is_dir() => {
                return Err(CoreError::IsADirectory { what: target.uri }.into());
            }
            Some((target, _)) if w.has_own_array() => {
                let own = Entry {
                    name: new_name.to_string(),
                    ..w.target().entry.clone()
                };
                (own, false, Some(target))
            }
            Some((target, _)) => (target, true, None),
            None if w.has_own_array() => (
                Entry {
                    name: new_name.to_string(),
                    ..w.target().entry.clone()
                },
                false,
                None,
            ),
            None => (
                Entry {
                    name: new_name.to_string(),
                    uri: self.store.new_child_uri(&dir_entry, new_name)?,
                    storage: crate::registry::Storage::Array,
                },
                false,
                None,
            ),
        };
        // Over a committed file: until the commit, readers see its bytes.
        let replaced_node = if exists { self.node_of(&entry)? } else { None };
        let old_name = w.target().entry.name.clone();
        w.retarget(dir_entry, entry.clone(), exists, replaces);
        drop(w);
        self.touch_dir(inode.parent(), false);
        self.touch_dir(new_dir.ino, false);
        self.inodes.remove_name(new_dir.ino, new_name);
        self.inodes.rename(inode, new_dir.ino, entry);
        if let Some(node) = replaced_node {
            let mut c = inode.lock();
            c.node = node;
            c.version = None;
            c.read_at = Some(Instant::now());
        }
        debug!("renamed {old_name} (open for writing) to {new_name}");
        Ok(())
    }

    /// Whether directory `entry` (in `parent`) is `dir` or one of its
    /// ancestors, walking up from `dir`.
    fn is_ancestor_or_self(&self, parent: Ino, dir: Ino, entry: &Entry) -> Result<bool> {
        let Some(moving) = self.inodes.find(parent, &entry.name) else {
            return Ok(false);
        };
        let mut cur = dir;
        loop {
            if cur == moving.ino {
                return Ok(true);
            }
            if cur == Ino::ROOT {
                return Ok(false);
            }
            cur = self.inode(cur)?.parent();
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

/// The changes a `setattr` asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Times to set (`utimensat`; "now" already resolved by the adapter).
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
    /// The handle the change came through, if any (`ftruncate`).
    pub fh: Option<Fh>,
}

impl SetAttr {
    /// The attributes this change stores; EINVAL for times before 1970,
    /// which are not stored.
    fn stored(&self) -> Result<Attrs> {
        let ns = |t: Option<SystemTime>| -> Result<Option<u64>> {
            t.map(|t| {
                t.duration_since(UNIX_EPOCH)
                    .ok()
                    .and_then(|d| u64::try_from(d.as_nanos()).ok())
                    .ok_or_else(|| CoreError::UnstorableTime { time: t }.into())
            })
            .transpose()
        };
        Ok(Attrs {
            mode: self.mode.map(|m| m & crate::registry::attrs::MODE_BITS),
            uid: self.uid,
            gid: self.gid,
            mtime_ns: ns(self.mtime)?,
            atime_ns: ns(self.atime)?,
            ctime_ns: None,
        })
    }
}

/// Who asks for a new entry: it is theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// `attr` with what `attrs` stores; `committed` is the version's commit
/// time (a file's mtime unless a tool set one).
fn with_attrs(attr: Attr, attrs: &Attrs, committed: Option<SystemTime>) -> Attr {
    let at_ns = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
    let mtime = attrs.mtime_ns.map(at_ns).or(committed).unwrap_or(attr.mtime);
    let ctime = committed.max(attrs.ctime_ns.map(at_ns)).unwrap_or(attr.ctime);
    Attr {
        mtime,
        atime: attrs.atime_ns.map_or(mtime, at_ns),
        ctime,
        perm: attrs
            .mode
            .map_or(attr.perm, |m| (m & crate::registry::attrs::MODE_BITS) as u16),
        uid: attrs.uid.unwrap_or(attr.uid),
        gid: attrs.gid.unwrap_or(attr.gid),
        ..attr
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
