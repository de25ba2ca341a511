//! What the filesystem core needs from the registry, as one trait: resolve
//! and list entries, tell what an entry holds, read a version, write and
//! commit a new one, and change the namespace (mkdir, link, unlink, rename,
//! delete storage, attributes).
//!
//! [`crate::registry::Registry`] implements it over TileDB (`registry.rs`);
//! [`MemStore`] implements it in memory, so the core is explored over
//! thousands of random sequences against a reference model
//! (`tests/reftest.rs`) without TileDB or FUSE; [`FailingStore`] wraps any
//! store and fails its n-th change, to check that every multi-step
//! operation leaves each name in its old or its new state.
//!
//! Only registry data types cross this seam (entries, nodes, metadata,
//! attributes), never a TileDB handle.

mod failing;
mod memory;
mod registry;

use crate::registry::tiledb_ml::{ModelOptions, TileDbMlModel};
use crate::registry::{
    Attrs, Committed, DirStat, Entry, FileKind, FileMeta, History, NameSlot, Node, Result, StatLabel, Summaries,
};

pub use failing::FailingStore;
pub use memory::MemStore;

/// One committed version of a file, open for reads of any byte range.
pub trait StoredVersion: Send + Sync {
    fn meta(&self) -> &FileMeta;
    /// The file's size, in bytes.
    fn size(&self) -> u64 {
        self.meta().size
    }
    /// The storage's tile, in bytes: reads are cached in whole tiles.
    fn tile_bytes(&self) -> u64;
    fn uri(&self) -> &str;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// Appends up to `len` bytes at `offset` to `out`; fewer only at the
    /// end. Stores that can read into `out`'s spare room without zeroing
    /// it first do.
    fn read_append(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<usize> {
        append_zeroed(out, len, |buf| self.read_at(offset, buf))
    }
    /// Reads up to `len` bytes at `offset` into a buffer of their own,
    /// placed on a memory page (see [`page_aligned`]); fewer only at the end.
    fn read_query(&self, offset: u64, len: usize) -> Result<QueryBuf> {
        query_by_append(self, offset, len)
    }
    /// A local file holding exactly this version's bytes, when there is one
    /// (a complete disk cache entry).
    fn local_file(&self) -> Option<std::sync::Arc<std::fs::File>> {
        None
    }
}

/// [`StoredVersion::read_query`] over [`StoredVersion::read_append`].
pub fn query_by_append<V: StoredVersion + ?Sized>(v: &V, offset: u64, len: usize) -> Result<QueryBuf> {
    let (mut buf, start) = page_aligned(len);
    let len = v.read_append(offset, len, &mut buf)?;
    Ok(QueryBuf {
        buf: std::sync::Arc::new(buf),
        start,
        len,
    })
}

/// Bytes read in one query, shared by whatever keeps them (the chunks of
/// the chunk cache, a disk cache entry's pending write).
#[derive(Clone)]
pub struct QueryBuf {
    /// The buffer the bytes were read into.
    pub buf: std::sync::Arc<Vec<u8>>,
    /// Where in `buf` they start (after the padding that puts them on a
    /// memory page).
    pub start: usize,
    /// How many there are.
    pub len: usize,
}

impl QueryBuf {
    /// The bytes read.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl From<Vec<u8>> for QueryBuf {
    fn from(buf: Vec<u8>) -> Self {
        let len = buf.len();
        QueryBuf {
            buf: std::sync::Arc::new(buf),
            start: 0,
            len,
        }
    }
}

/// Memory page size, for the placement of query bytes.
const PAGE_BYTES: usize = 4096;

/// An empty buffer with room for `len` bytes that start on a page boundary
/// once its first `start` bytes (padding, returned) are in: a disk cache
/// entry takes them with direct writes straight from there. The room is a
/// little more than `len`: a read of tiles as stored takes their headers
/// in too (a few bytes per 64 KiB) before it drops them, and a buffer it
/// had to grow would move off the page boundary.
pub fn page_aligned(len: usize) -> (Vec<u8>, usize) {
    let room = len.saturating_add(len / 1024).saturating_add(PAGE_BYTES);
    let mut buf: Vec<u8> = Vec::with_capacity(room);
    let start = buf.as_ptr().align_offset(PAGE_BYTES).min(PAGE_BYTES - 1);
    buf.resize(start, 0);
    (buf, start)
}

/// Appends `len` zeroed bytes to `out`, lets `read` fill them, and keeps
/// those it read (none on an error): [`StoredVersion::read_append`] over
/// [`StoredVersion::read_at`].
pub fn append_zeroed(out: &mut Vec<u8>, len: usize, read: impl FnOnce(&mut [u8]) -> Result<usize>) -> Result<usize> {
    let start = out.len();
    out.resize(start + len, 0);
    let n = read(&mut out[start..]);
    out.truncate(start + n.as_ref().map_or(0, |n| *n));
    n
}

/// A new version being written, bytes in order; nothing is visible before
/// [`VersionWriter::commit`] succeeds.
pub trait VersionWriter: Send {
    /// Appends the next bytes.
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Attributes committed with the version.
    fn set_attrs(&mut self, attrs: Attrs);
    /// Commits; returns the version's timestamp and, for a first version,
    /// the file's metadata.
    fn commit(self: Box<Self>, kind: &FileKind) -> Result<Committed>;
}

/// The registry as the core sees it. Every method names the entries it
/// acts on; errors carry the URI and the cause.
pub trait Store: Send + Sync {
    /// The entry at `uri`, or `None` when nothing is there.
    fn resolve(&self, uri: &str) -> Result<Option<Entry>>;
    /// The entries of directory `dir`, sorted by name.
    fn list(&self, dir: &Entry) -> Result<Vec<Entry>>;
    /// The entry named `name` in `dir`.
    fn lookup(&self, dir: &Entry, name: &str) -> Result<Option<Entry>>;
    /// What `entry` holds now.
    fn node(&self, entry: &Entry) -> Result<Node>;
    /// Directory `dir`'s attributes and entries, read together where that
    /// costs one read instead of two.
    fn dir_with_entries(&self, dir: &Entry) -> Result<(Attrs, Vec<Entry>)> {
        let attrs = match self.node(dir)? {
            Node::Dir(a) => a,
            _ => Attrs::default(),
        };
        Ok((attrs, self.list(dir)?))
    }
    /// The stats of subdirectories `children` of `dir` that one cheap read
    /// of `dir` tells, and labels for the others (see
    /// [`crate::registry::dir_stats`]); `None` when it has no such read or
    /// it would cost more than reading them one by one. No default: a
    /// store wrapping another must pass it on.
    fn dir_stats(&self, dir: &Entry, children: &[Entry]) -> Result<Option<Summaries>>;
    /// Keeps `stat`, read after the [`Store::dir_stats`] that gave
    /// `label`, for later ones.
    fn save_dir_stat(&self, dir: &Entry, label: &StatLabel, stat: &DirStat) -> Result<()>;
    /// The newest write to the array at `uri` (changes with each version).
    fn array_version(&self, uri: &str) -> Result<u64>;
    /// The TileDB-ML model array at `uri`, decoded within `pool`.
    fn tiledb_ml_model(&self, uri: &str, options: &ModelOptions) -> Result<TileDbMlModel>;
    /// The version of the file at `uri` that `meta` describes.
    fn open_version(&self, uri: &str, meta: FileMeta) -> Result<Box<dyn StoredVersion>>;
    /// The committed versions (oldest first) and tags of the file at `uri`.
    fn history(&self, uri: &str) -> Result<History>;
    /// Past version `meta` (as [`Store::history`] lists it) of the file at
    /// `uri`, read from that version's own storage only;
    /// [`crate::registry::Error::VersionGone`] once it was pruned.
    fn open_past_version(&self, uri: &str, meta: FileMeta) -> Result<Box<dyn StoredVersion>>;
    /// A storage URI for a new entry `name` in `dir`, where nothing is.
    fn new_child_uri(&self, dir: &Entry, name: &str) -> Result<String>;
    /// The entry named `name` in `dir`, or else a storage URI for a new
    /// one: [`Store::lookup`] and [`Store::new_child_uri`] in one (a
    /// directory's listing costs as much as its number of entries).
    fn claim_name(&self, dir: &Entry, name: &str) -> Result<NameSlot> {
        Ok(match self.lookup(dir, name)? {
            Some(e) => NameSlot::Taken(e),
            None => NameSlot::Free(self.new_child_uri(dir, name)?),
        })
    }
    /// Makes an empty, unlinked file named `name` at `uri`.
    fn create_file(&self, name: &str, uri: &str) -> Result<Entry>;
    /// Starts a new version of `size` bytes of the file at `uri`.
    fn begin_version(&self, uri: &str, name: &str, size: u64) -> Result<Box<dyn VersionWriter>>;
    /// Starts the first version of the file [`Store::create_file`] just
    /// made at `uri` (nothing else wrote there since), which can skip
    /// reading what a new file is known not to have.
    fn begin_first_version(&self, uri: &str, name: &str, size: u64) -> Result<Box<dyn VersionWriter>> {
        self.begin_version(uri, name, size)
    }
    /// Makes directory `name` in `dir` with `attrs`, linked.
    fn mkdir(&self, dir: &Entry, name: &str, attrs: &Attrs) -> Result<Entry>;
    /// Makes `entry` a member of `dir`.
    fn link(&self, dir: &Entry, entry: &Entry) -> Result<()>;
    /// Puts `new` in place of `old` in `dir`, in one change.
    fn replace_member(&self, dir: &Entry, old: &Entry, new: &Entry) -> Result<()>;
    /// Takes `entry` out of `dir`, leaving its storage.
    fn unlink(&self, dir: &Entry, entry: &Entry) -> Result<()>;
    /// Whether directory `dir` holds nothing at all.
    fn is_empty_dir(&self, dir: &Entry) -> Result<bool>;
    /// Deletes what `entry` stores (a directory's own files only).
    fn delete_storage(&self, entry: &Entry) -> Result<()>;
    /// What becomes of the storage of `entry`, taken out of `dir` and named
    /// by nothing: deleted, or kept for snapshot mounts until a prune (the
    /// TileDB registry keeps what `unlink` and a replacing `rename` took out
    /// of a group; see [`crate::registry::Registry::retire`]).
    fn retire(&self, dir: &Entry, entry: &Entry) -> Result<()>;
    /// Moves file `entry` of plain directory `dir` out of the way of a
    /// rename over it, hidden, for descriptors still open on it; returns
    /// its storage's new URI. See [`crate::registry::Registry::set_aside`].
    fn set_aside(&self, dir: &Entry, entry: &Entry) -> Result<String>;
    /// Undoes [`Store::set_aside`] of `entry`, now at `aside`.
    fn put_back(&self, entry: &Entry, aside: &str) -> Result<()>;
    /// Renames `entry` of `dir` to `new_name` in `new_dir`, in place of
    /// `replaced`; see [`crate::registry::Registry::rename`].
    fn rename(
        &self,
        dir: &Entry,
        entry: &Entry,
        new_dir: &Entry,
        new_name: &str,
        replaced: Option<&Entry>,
    ) -> Result<Entry>;
    /// Stores attributes without a new version; returns what was stored.
    fn set_attrs(&self, entry: &Entry, change: &Attrs) -> Result<Attrs>;
    /// When (ms) the newest change this store made to directory `dir`'s
    /// entries was stamped, as a stat read from storage would show it;
    /// `None` when it keeps no such time. No default: a store wrapping
    /// another must pass it on.
    fn dir_changed_ms(&self, dir: &Entry) -> Option<u64>;
}
