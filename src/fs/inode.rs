//! The inode table: stable inode numbers for registry entries, found by
//! `(parent, name)`, with what each entry held when last looked at.
//!
//! An inode's number never changes; its place (parent and entry) changes
//! only on rename. Cached state (the `Node` and when it was read, the open
//! file version, the active writer, open handles) sits behind the inode's
//! own mutex, which is never held across TileDB I/O (a writer's lock is
//! held across its commit, so an inode's is never taken while holding a
//! writer's). Lock order: the table's maps, then an inode's place, then its
//! cached state, then its writer's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Instant;

use super::attr::Ino;
use super::read::FileVersion;
use super::views::ViewNode;
use super::write::Writer;
use crate::registry::{Attrs, Entry, FileMeta};

/// What an inode was found to be.
#[derive(Debug, Clone)]
pub enum NodeState {
    /// A directory, with its stored attributes.
    Dir(Attrs),
    File(FileMeta),
    /// A TileDB-ML model array or a folder or file of its view: read-only,
    /// generated (see `views.rs`).
    View(ViewNode),
}

impl NodeState {
    pub fn is_dir(&self) -> bool {
        match self {
            NodeState::Dir(_) => true,
            NodeState::File(_) => false,
            NodeState::View(v) => v.is_dir(),
        }
    }

    /// Generated inside a TileDB-ML view: refreshed through its model.
    pub fn is_inside_view(&self) -> bool {
        matches!(self, NodeState::View(v) if v.is_inside())
    }
}

/// Equal when they stand for the same bytes: attributes aside, so a
/// `chmod` keeps the open version and the page cache.
impl PartialEq for NodeState {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (NodeState::Dir(_), NodeState::Dir(_)) => true,
            (NodeState::File(a), NodeState::File(b)) => a.same_data(b),
            (NodeState::View(a), NodeState::View(b)) => a == b,
            _ => false,
        }
    }
}

/// Whether a node handed to [`InodeTable::upsert`] was just read from the
/// registry (it is fresh from now), taken from the cache (its age stays),
/// or only partly known (a directory from a listing: read it before use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Read,
    Cached,
    Partial,
}

/// What a stat of a directory read besides its attributes: its entries,
/// or only how many are directories (told by its parent's read).
pub enum DirShape {
    Entries(Arc<Vec<Entry>>),
    Subdirs(u32),
}

/// How many of `entries` are directories (a directory's link count is 2
/// more).
pub fn subdirs_in(entries: &[Entry]) -> u32 {
    u32::try_from(entries.iter().filter(|e| e.is_dir()).count()).unwrap_or(u32::MAX)
}

/// Cached, refreshable state of an inode.
pub struct Cached {
    pub node: NodeState,
    /// When `node` was read from the registry; `None` when it was never
    /// read whole (a directory known from its parent's listing).
    pub read_at: Option<Instant>,
    /// The open array for `node`'s version, made at the first open.
    pub version: Option<Arc<FileVersion>>,
    /// The version whose bytes the kernel may hold in its page cache.
    pub page_cache_version: Option<u64>,
    /// The handle writing this file, if any (one writer at a time).
    pub writer: Weak<Mutex<Writer>>,
    /// Open handles on this inode.
    pub open_handles: u32,
    /// The versions this inode's open read handles read (by version id),
    /// with how many read each. The kernel keeps one page cache per inode:
    /// a handle on an older version fills it with that version's bytes,
    /// so while one is open, opens of another version bypass it.
    pub reading: Vec<(u64, u32)>,
    /// Removed from its directory.
    pub unlinked: bool,
    /// References the kernel holds (entries it was given, not yet
    /// forgotten).
    pub lookups: u64,
    /// Removed while open: its storage is deleted when the last handle
    /// closes.
    pub delete_on_close: bool,
    /// The version the kernel reads from a disk cache file (FUSE
    /// passthrough) and how many open handles use it. While any does, every
    /// open of this inode must name that file (the kernel's rule): a newer
    /// version gets a new inode at the next lookup, and writers wait.
    pub pinned: Option<(Arc<FileVersion>, u32)>,
    /// A directory's entries and when they were listed: lookups and
    /// listings within the metadata TTL use them instead of asking the
    /// registry (one group read on object stores is several requests).
    pub listing: Option<(Instant, Arc<Vec<Entry>>)>,
    /// A directory's count of subdirectories when only that was read (its
    /// parent's read told it), and when: its link count within the TTL.
    pub subdirs: Option<(Instant, u32)>,
}

impl Cached {
    /// One more open handle reads version `id`. Returns whether another
    /// version is read through an open handle too.
    pub fn start_reading(&mut self, id: u64) -> bool {
        let others = self.reading.iter().any(|&(v, _)| v != id);
        match self.reading.iter_mut().find(|(v, _)| *v == id) {
            Some((_, n)) => *n += 1,
            None => self.reading.push((id, 1)),
        }
        others
    }

    /// A handle reading version `id` closed.
    pub fn stop_reading(&mut self, id: u64) {
        if let Some(i) = self.reading.iter().position(|&(v, _)| v == id) {
            self.reading[i].1 -= 1;
            if self.reading[i].1 == 0 {
                self.reading.swap_remove(i);
            }
        }
    }

    fn new(node: NodeState) -> Self {
        Cached {
            node,
            read_at: Some(Instant::now()),
            version: None,
            page_cache_version: None,
            writer: Weak::new(),
            open_handles: 0,
            reading: Vec::new(),
            unlinked: false,
            lookups: 0,
            delete_on_close: false,
            listing: None,
            subdirs: None,
            pinned: None,
        }
    }

    /// Keeps what a directory's stat read besides its attributes, read at
    /// `at`.
    pub fn keep_shape(&mut self, shape: DirShape, at: Instant) {
        match shape {
            DirShape::Entries(list) => self.listing = Some((at, list)),
            DirShape::Subdirs(n) => self.subdirs = Some((at, n)),
        }
    }

    /// The version passed through to open handles, if any handle uses it.
    pub fn pinned_version(&self) -> Option<Arc<FileVersion>> {
        self.pinned.as_ref().filter(|(_, n)| *n > 0).map(|(v, _)| v.clone())
    }

    /// Whether `node` holds other bytes than the version passed through.
    pub fn pinned_differs(&self, node: &NodeState) -> bool {
        match (self.pinned_version(), node) {
            (Some(v), NodeState::File(meta)) => !v.meta().same_data(meta),
            (Some(_), _) => true,
            (None, _) => false,
        }
    }

    pub fn active_writer(&self) -> Option<Arc<Mutex<Writer>>> {
        self.writer.upgrade()
    }

    /// `writer` no longer writes the file, if it still did.
    pub fn detach_writer(&mut self, writer: &Arc<Mutex<Writer>>) {
        if self.active_writer().is_some_and(|a| Arc::ptr_eq(&a, writer)) {
            self.writer = std::sync::Weak::new();
        }
    }
}

pub struct Inode {
    pub ino: Ino,
    place: RwLock<(Ino, Entry)>,
    pub cached: Mutex<Cached>,
}

impl Inode {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn entry(&self) -> Entry {
        self.place.read().unwrap_or_else(PoisonError::into_inner).1.clone()
    }

    pub fn parent(&self) -> Ino {
        self.place.read().unwrap_or_else(PoisonError::into_inner).0
    }

    /// Its directory and entry, read together (a rename changes both).
    pub fn place(&self) -> (Ino, Entry) {
        self.place.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[derive(Default)]
pub struct InodeTable {
    by_ino: RwLock<HashMap<Ino, Arc<Inode>>>,
    by_name: RwLock<HashMap<(Ino, String), Ino>>,
    next: AtomicU64,
}

impl InodeTable {
    pub fn new(root: Entry) -> Self {
        let t = InodeTable {
            next: AtomicU64::new(Ino::FIRST_FREE),
            ..Default::default()
        };
        // Never read yet: its stored attributes come at the first look.
        let mut cached = Cached::new(NodeState::Dir(Attrs::default()));
        cached.read_at = None;
        let root = Arc::new(Inode {
            ino: Ino::ROOT,
            place: RwLock::new((Ino::ROOT, root)),
            cached: Mutex::new(cached),
        });
        t.by_ino
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Ino::ROOT, root);
        t
    }

    pub fn get(&self, ino: Ino) -> Option<Arc<Inode>> {
        self.by_ino
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ino)
            .cloned()
    }

    /// The inode known for `name` in `parent`, if any.
    pub fn find(&self, parent: Ino, name: &str) -> Option<Arc<Inode>> {
        let ino = *self
            .by_name
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(parent, name.to_string()))?;
        self.get(ino)
    }

    /// The inode for `entry` in `parent`: the existing one when it still
    /// stands for the same storage, a new one otherwise.
    pub fn upsert(&self, parent: Ino, entry: Entry, node: NodeState, seen: Seen) -> Arc<Inode> {
        self.upsert_inner(parent, entry, node, seen, None).0
    }

    /// [`Inodes::upsert`] of a node read from storage by a read that began
    /// at `started`: a file's inode refreshed since (a commit here while
    /// the read ran, its writer gone by now) keeps its newer node. Returns
    /// the inode and whether it took `node`.
    pub fn upsert_read_since(
        &self,
        parent: Ino,
        entry: Entry,
        node: NodeState,
        started: Instant,
    ) -> (Arc<Inode>, bool) {
        self.upsert_inner(parent, entry, node, Seen::Read, Some(started))
    }

    fn upsert_inner(
        &self,
        parent: Ino,
        entry: Entry,
        node: NodeState,
        seen: Seen,
        read_since: Option<Instant>,
    ) -> (Arc<Inode>, bool) {
        let key = (parent, entry.name.clone());
        let mut by_name = self.by_name.write().unwrap_or_else(PoisonError::into_inner);
        let mut by_ino = self.by_ino.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(ino) = by_name.get(&key)
            && let Some(inode) = by_ino.get(ino)
            && inode.entry().same_storage(&entry)
            && !inode.lock().pinned_differs(&node)
        {
            let inode = inode.clone();
            drop((by_name, by_ino));
            let mut c = inode.lock();
            if seen == Seen::Partial && c.node.is_dir() {
                // What the listing knows adds nothing to a directory's node.
                return (inode.clone(), false);
            }
            if seen == Seen::Cached {
                // `node` is a copy of this inode's own: what a commit set
                // since is newer.
                return (inode.clone(), false);
            }
            if c.active_writer().is_some() && matches!(c.node, NodeState::File(_)) {
                // A file being written keeps the node its writer's commits
                // set (as `fresh_node` does): one read before the latest
                // of them, by a lookup racing it, would take its size back
                // and the kernel's with it, so the next `O_APPEND` write
                // would land over the last one.
                return (inode.clone(), false);
            }
            if matches!(c.node, NodeState::File(_))
                && read_since.is_some_and(|since| c.read_at.is_some_and(|at| at > since))
            {
                return (inode.clone(), false);
            }
            if c.node != node {
                c.version = None;
            }
            c.node = node;
            if seen == Seen::Read {
                c.read_at = Some(Instant::now());
            }
            drop(c);
            return (inode, true);
        }
        let ino = Ino(self.next.fetch_add(1, Ordering::Relaxed));
        let mut cached = Cached::new(node);
        if seen == Seen::Partial {
            cached.read_at = None;
        }
        let inode = Arc::new(Inode {
            ino,
            place: RwLock::new((parent, entry)),
            cached: Mutex::new(cached),
        });
        by_name.insert(key, ino);
        by_ino.insert(ino, inode.clone());
        (inode, true)
    }

    /// Forgets the name `name` in `parent` (the inode stays while handles
    /// or the kernel refer to it).
    pub fn remove_name(&self, parent: Ino, name: &str) {
        self.by_name
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(parent, name.to_string()));
    }

    /// Moves `inode` to `entry` in `parent`.
    pub fn rename(&self, inode: &Inode, parent: Ino, entry: Entry) {
        let mut by_name = self.by_name.write().unwrap_or_else(PoisonError::into_inner);
        let mut place = inode.place.write().unwrap_or_else(PoisonError::into_inner);
        by_name.remove(&(place.0, place.1.name.clone()));
        by_name.insert((parent, entry.name.clone()), inode.ino);
        *place = (parent, entry);
    }

    /// Inodes whose storage is at `uri` (a file may have several: see
    /// `pinned_differs`).
    pub fn stored_at(&self, uri: &str) -> Vec<Arc<Inode>> {
        let mut found = self.stored_at_or_inside(uri);
        found.retain(|i| crate::registry::uri::same(&i.entry().uri, uri));
        found
    }

    /// Inodes whose storage is at `uri` or inside it.
    pub fn stored_at_or_inside(&self, uri: &str) -> Vec<Arc<Inode>> {
        let by_ino = self.by_ino.read().unwrap_or_else(PoisonError::into_inner);
        by_ino
            .values()
            .filter(|i| {
                let at = &i.place.read().unwrap_or_else(PoisonError::into_inner).1.uri;
                crate::registry::uri::same(at, uri) || crate::registry::uri::is_inside(at, uri)
            })
            .cloned()
            .collect()
    }

    /// Points `inode` at storage `uri` (moved there), under the same name.
    pub fn set_uri(&self, inode: &Inode, uri: String) {
        inode.place.write().unwrap_or_else(PoisonError::into_inner).1.uri = uri;
    }

    /// Inodes named in `parent` that have a writer but no committed
    /// version yet (new files being written), shown in listings.
    pub fn uncommitted_children(&self, parent: Ino) -> Vec<Arc<Inode>> {
        let inos: Vec<Ino> = self
            .by_name
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((p, _), _)| *p == parent)
            .map(|(_, ino)| *ino)
            .collect();
        inos.into_iter()
            .filter_map(|i| self.get(i))
            .filter(|i| {
                // Taken apart: never hold an inode's lock while taking a writer's.
                let writer = i.lock().active_writer();
                writer.is_some_and(|w| !w.lock().unwrap_or_else(PoisonError::into_inner).target().exists)
            })
            .collect()
    }

    /// The kernel was given `inode` in an entry reply. A `forget` of its
    /// earlier references may have dropped it since it was found: it is
    /// put back (and under its name, unless that now names another).
    pub fn remember(&self, inode: &Arc<Inode>) {
        {
            // Still in the table (the usual case): a read lock suffices, as
            // `forget` removes only under the write lock, after checking
            // the count again.
            let by_ino = self.by_ino.read().unwrap_or_else(PoisonError::into_inner);
            if by_ino.contains_key(&inode.ino) {
                inode.lock().lookups += 1;
                return;
            }
        }
        let mut by_name = self.by_name.write().unwrap_or_else(PoisonError::into_inner);
        let mut by_ino = self.by_ino.write().unwrap_or_else(PoisonError::into_inner);
        by_ino.entry(inode.ino).or_insert_with(|| inode.clone());
        let (parent, entry) = inode.place.read().unwrap_or_else(PoisonError::into_inner).clone();
        by_name.entry((parent, entry.name)).or_insert(inode.ino);
        inode.lock().lookups += 1;
    }

    /// The kernel dropped `n` references to `ino`; with none left and no
    /// open handle, the inode is dropped (the root never is) and returned.
    pub fn forget(&self, ino: Ino, n: u64) -> Option<Arc<Inode>> {
        if ino == Ino::ROOT {
            return None;
        }
        let inode = self.get(ino)?;
        {
            let mut c = inode.lock();
            c.lookups = c.lookups.saturating_sub(n);
            if c.lookups > 0 || c.open_handles > 0 || c.active_writer().is_some() {
                return None;
            }
        }
        let mut by_name = self.by_name.write().unwrap_or_else(PoisonError::into_inner);
        let mut by_ino = self.by_ino.write().unwrap_or_else(PoisonError::into_inner);
        // Looked up again meanwhile: keep it.
        if inode.lock().lookups > 0 {
            return None;
        }
        let (parent, entry) = inode.place.read().unwrap_or_else(PoisonError::into_inner).clone();
        let key = (parent, entry.name);
        if by_name.get(&key) == Some(&ino) {
            by_name.remove(&key);
        }
        by_ino.remove(&ino)
    }

    /// Number of inodes known.
    pub fn count(&self) -> usize {
        self.by_ino.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}
