//! Finding names: lookup, directory listings and readdir, and the cache
//! of what the registry held behind them.
//!
//! What an inode is (its node) and what a directory holds (its listing)
//! are trusted for the metadata TTL after they were read, then read again.
//! A file being written keeps its node until its commit refreshes it, an
//! unlinked one keeps its last, and nodes inside a TileDB-ML view change
//! only when their model array is read again. Changes ask the registry
//! itself ([`Listed::Fresh`]), never a cached listing. Storage is asked
//! with no inode locked (see the lock order in `fs/mod.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::attr::push_dir_item;
use super::counters::Counters;
use super::error::{Cause, CoreError, Error, Result};
use super::handles::Handle;
use super::inode::{DirShape, Inode, NodeState, Seen};
use super::views::ViewNode;
use super::{Attr, DirItem, Fh, Ino, Kind, ModelFs, STATS_NAME, VERSIONS_NAME, invalid_name, lock};
use crate::registry::{self, Attrs, Entry, Node, Storage};

/// Entries of one listing whose arrays are opened at once: on an object
/// store each open is a few round trips, so a model directory's files are
/// stat'ed in parallel rather than one after another.
const NODE_READS_IN_FLIGHT: usize = 8;

/// Whether a name may be answered from a directory's cached listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listed {
    /// Within the metadata TTL, the cached listing answers (lookups).
    Cached,
    /// Ask the registry (before changing it).
    Fresh,
}

impl ModelFs {
    /// What `entry` shows as, or `None` when it is not shown (arrays that
    /// are not files). Failures name the entry.
    pub(super) fn node_of(&self, entry: &Entry) -> Result<Option<NodeState>> {
        if !entry.is_dir() {
            Counters::add(&self.counters.registry_node_reads, 1);
        }
        match self.store.node(entry) {
            Ok(Node::Dir(attrs)) => Ok(Some(NodeState::Dir(attrs))),
            Ok(Node::File(meta)) => Ok(Some(NodeState::File(meta))),
            Ok(Node::TileDbMl { .. }) => self.model_view(entry).map(Some),
            Ok(Node::Other { reason }) => {
                self.warn_once(
                    &entry.uri,
                    format_args!("{}: not shown: not a modelfs file ({reason})", entry.uri),
                );
                Ok(None)
            }
            // Removed since it was listed: a race, not a bad entry.
            Err(e @ registry::Error::NotFound { .. }) => Err(e.into()),
            Err(e) => {
                self.warn_once(&entry.uri, format_args!("{}: cannot be read: {e}", entry.uri));
                Err(e.into())
            }
        }
    }

    /// [`ModelFs::node_of`], and for a directory also its listing: a
    /// directory's stat wants both (the link count counts subdirectories),
    /// and they come from one read (made ahead of this lookup, when a
    /// lister is going through the directory's parent). With when the
    /// answer came, from which the TTL counts.
    fn node_and_listing(&self, entry: &Entry) -> Result<(Option<NodeState>, Option<DirShape>, Instant)> {
        if !entry.is_dir() {
            let node = self.node_of(entry)?;
            return Ok((node, None, Instant::now()));
        }
        if let Some(((attrs, shape), at)) = self.stat_ahead.take(&entry.uri) {
            return Ok((Some(NodeState::Dir(attrs)), Some(shape), at));
        }
        Counters::add(&self.counters.registry_listings, 1);
        let (attrs, list) = self.store.dir_with_entries(entry).inspect_err(|e| {
            self.warn_once(&entry.uri, format_args!("{}: cannot be read: {e}", entry.uri));
        })?;
        let shape = DirShape::Entries(Arc::new(list));
        Ok((Some(NodeState::Dir(attrs)), Some(shape), Instant::now()))
    }

    /// A lookup reached `entry` of `dir`: when lookups go through `dir`'s
    /// listing in order, its next subdirectories are read ahead of the
    /// lookups a lister makes next (see `fs/stat_ahead.rs`).
    fn stat_ahead_of(&self, dir: &Inode, entry: &Entry) {
        let Some(listing) = self.fresh_listing(dir) else { return };
        let Ok(at) = listing.binary_search_by(|e| e.name.as_str().cmp(&entry.name)) else {
            return;
        };
        self.stat_ahead
            .ahead(&dir.entry(), &listing, at, |e| self.known_node(dir.ino, e).is_some());
    }

    /// What `stat` shows of `inode`: its node, with the size its writer has
    /// reached while it is being written.
    pub(super) fn shown_node(&self, inode: &Inode) -> Result<NodeState> {
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
    pub(super) fn fresh_node(&self, inode: &Inode) -> Result<NodeState> {
        self.node_read(inode, true)
    }

    /// The committed node of `inode` as the registry holds it now, for a
    /// change to the file. Another mount may have removed or replaced it,
    /// or committed a new version, since this mount's lookup, which this
    /// mount and the kernel trust for the metadata TTL: a write-open of
    /// storage the name no longer held wrote where no listing shows it (a
    /// directory keeps a removed file's array for snapshots), and an
    /// `O_APPEND` write went at the kernel's old size.
    /// [`CoreError::GoneSinceLookup`] (ESTALE) then, and the kernel looks
    /// the name up again (getting the new size) and retries once.
    pub(super) fn registry_node(&self, inode: &Inode) -> Result<NodeState> {
        let (unlinked, in_view, before) = {
            let c = inode.lock();
            (c.unlinked, c.node.is_inside_view(), c.node.clone())
        };
        if unlinked || in_view {
            return self.node_read(inode, false);
        }
        self.check_still_named(inode)?;
        let now = self.node_read(inode, false)?;
        if let (NodeState::File(was), NodeState::File(is)) = (&before, &now)
            && (was.size, was.timestamp) != (is.size, is.timestamp)
        {
            let uri = inode.entry().uri;
            return Err(self.forget_stale(inode, CoreError::NewVersionSinceLookup { uri }.into()));
        }
        Ok(now)
    }

    /// [`CoreError::GoneSinceLookup`] (ESTALE) when `inode`'s name, asked
    /// of the registry itself, no longer holds its storage: another mount
    /// may have removed or replaced it since this mount's lookup. Also
    /// when its directory, asked of its own parent, is gone (its storage
    /// with it, so the name cannot be asked of it). Other errors come as
    /// they are. The kernel retries a change that gets ESTALE once, after
    /// looking the path up again.
    pub(super) fn check_still_named(&self, inode: &Inode) -> Result<()> {
        match self.still_named(inode) {
            Err(e) if e.errno != libc::ESTALE => {
                // Only one level up: a storage outage must not walk to the
                // root, a timeout per level.
                let dir = self.inode(inode.parent())?;
                match self.still_named(&dir) {
                    Err(stale) if stale.errno == libc::ESTALE => Err(stale),
                    _ => Err(e),
                }
            }
            r => r,
        }
    }

    /// [`ModelFs::check_still_named`] for `inode` alone.
    fn still_named(&self, inode: &Inode) -> Result<()> {
        if inode.ino == Ino::ROOT {
            return Ok(());
        }
        let (parent, entry) = inode.place();
        let dir = self.inode(parent)?;
        match self.child(&dir, &entry.name, Listed::Fresh)? {
            Some((now, _)) if now.same_storage(&entry) => Ok(()),
            _ => {
                let gone = registry::Error::NotFound { uri: entry.uri.clone() };
                Err(self.forget_stale(inode, Error::from(gone)))
            }
        }
    }

    /// `e`, a failed read of directory `dir`, or ESTALE when that is
    /// because another mount removed it (see
    /// [`ModelFs::check_still_named`]).
    fn stale_or(&self, dir: &Inode, e: Error) -> Error {
        if e.errno == libc::ESTALE {
            return e;
        }
        match self.still_named(dir) {
            Err(stale) if stale.errno == libc::ESTALE => stale,
            _ => e,
        }
    }

    /// Directory `dir`, about to get a new entry: checked to be still
    /// shown (see [`ModelFs::check_still_named`]). A directory another
    /// mount removed keeps its storage for snapshots: what this mount
    /// added there was shown nowhere. One this mount removed (its
    /// descriptors still open) has no name to check: its own removal
    /// refuses the change further on.
    pub(super) fn check_dir_still_shown(&self, dir: &Inode) -> Result<()> {
        if dir.lock().unlinked {
            return Ok(());
        }
        self.check_still_named(dir)
    }

    /// `inode`'s node, read from the registry unless `trust_ttl` and it
    /// was read within the metadata TTL.
    fn node_read(&self, inode: &Inode, trust_ttl: bool) -> Result<NodeState> {
        let (writer, node, fresh, read_at) = {
            let c = inode.lock();
            let fresh = c.unlinked || c.node.is_inside_view() || (trust_ttl && self.within_ttl(c.read_at));
            (c.active_writer(), c.node.clone(), fresh, c.read_at)
        };
        // A file being written keeps its node: a new one is not in the
        // registry yet, and the writer's commit refreshes it.
        if fresh || writer.is_some() {
            return Ok(node);
        }
        let entry = inode.entry();
        let read = self.node_and_listing(&entry).map_err(|e| match e.cause {
            // Removed, or replaced, by another mount since the lookup.
            Cause::Registry(registry::Error::NotFound { .. }) => self.forget_stale(inode, e),
            _ => e,
        });
        let (node, listing, at) = match read? {
            (Some(node), listing, at) => (node, listing, at),
            (None, ..) => return Err(CoreError::NoLongerShown { uri: entry.uri.clone() }.into()),
        };
        let mut c = inode.lock();
        if c.read_at != read_at {
            // Refreshed while this read ran (a commit here): that is newer.
            return Ok(c.node.clone());
        }
        if let Some(shape) = listing {
            c.keep_shape(shape, at);
        }
        if c.node != node {
            c.version = None;
        }
        c.node = node.clone();
        c.read_at = Some(at);
        Ok(node)
    }

    /// [`CoreError::GoneSinceLookup`] for `inode`, whose storage is gone
    /// or holds another file than the one it was read as (`error` says
    /// how that showed): what was read of it and of its directory is
    /// forgotten, so that the lookup the kernel makes again on ESTALE asks
    /// the registry.
    pub(super) fn forget_stale(&self, inode: &Inode, error: Error) -> Error {
        {
            let mut c = inode.lock();
            c.read_at = None;
            c.version = None;
        }
        self.forget_listing(inode.parent());
        CoreError::GoneSinceLookup {
            uri: inode.entry().uri,
            error: Box::new(error),
        }
        .into()
    }

    pub(super) fn dir_inode(&self, ino: Ino) -> Result<Arc<Inode>> {
        let dir = self.inode(ino)?;
        let node = self.fresh_node(&dir).map_err(|e| self.stale_or(&dir, e))?;
        if !node.is_dir() {
            return Err(CoreError::NotADirectory { what: dir.entry().uri }.into());
        }
        Ok(dir)
    }

    /// The entry named `name` in directory inode `dir`: a file being
    /// created here first, then the registry. `Listed::Cached` answers from
    /// the directory's listing while it is within the metadata TTL (for
    /// lookups); changes ask the registry itself.
    pub(super) fn child(&self, dir: &Inode, name: &str, how: Listed) -> Result<Option<(Entry, Option<Arc<Inode>>)>> {
        if matches!(&dir.lock().node, NodeState::View(v) if v.is_dir()) {
            return Ok(None);
        }
        if let Some(inode) = self.creating_child(dir, name) {
            return Ok(Some((inode.entry(), Some(inode))));
        }
        let dir_entry = dir.entry();
        let listed =
            how == Listed::Cached && (dir_entry.storage == Storage::Group || self.fresh_listing(dir).is_some());
        if listed {
            // Listings are sorted by name (`Store::list`): `ls -l` of a
            // directory of N entries looks each up, so a scan would cost N².
            let list = self.entries(dir)?;
            let found = list.binary_search_by(|e| e.name.as_str().cmp(name)).ok();
            return Ok(found.map(|i| (list[i].clone(), None)));
        }
        Ok(self.store.lookup(&dir_entry, name)?.map(|e| (e, None)))
    }

    /// The inode named `name` in `dir` with a writer busy on it: a file
    /// being created (not in the registry until its first commit) or
    /// written, with bytes not committed yet, known to this mount alone.
    /// An idle writer (all committed, its handles not yet released) leaves
    /// the file to be renamed or replaced as any other.
    pub(super) fn creating_child(&self, dir: &Inode, name: &str) -> Option<Arc<Inode>> {
        self.inodes.find(dir.ino, name).filter(|inode| self.writer_busy(inode))
    }

    /// Whether a writer of this mount holds bytes of `inode` the registry
    /// does not have yet (a new file, or changes not committed): then this
    /// mount knows the file better than the registry. An idle writer
    /// (all committed, a descriptor still open) does not count.
    pub(super) fn writer_busy(&self, inode: &Inode) -> bool {
        let writer = inode.lock().active_writer();
        writer.is_some_and(|w| {
            let w = lock(&w);
            w.needs_commit() || !w.target().exists
        })
    }

    /// Whether something read from the registry at `at` is still trusted.
    pub(super) fn within_ttl(&self, at: Option<Instant>) -> bool {
        at.is_some_and(|at| at.elapsed() < self.config.metadata_ttl)
    }

    pub(super) fn fresh_listing(&self, dir: &Inode) -> Option<Arc<Vec<Entry>>> {
        match &dir.lock().listing {
            Some((at, list)) if self.within_ttl(Some(*at)) => Some(list.clone()),
            _ => None,
        }
    }

    /// The entries of directory inode `dir`: its listing from within the
    /// metadata TTL, or a new one from the registry.
    pub(super) fn entries(&self, dir: &Inode) -> Result<Arc<Vec<Entry>>> {
        if let Some(list) = self.fresh_listing(dir) {
            return Ok(list);
        }
        Counters::add(&self.counters.registry_listings, 1);
        let list = Arc::new(self.store.list(&dir.entry())?);
        dir.lock().listing = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Drops directory `ino`'s listing: this mount just changed it.
    pub(super) fn forget_listing(&self, ino: Ino) {
        self.stat_ahead.changed();
        if let Some(dir) = self.inodes.get(ino) {
            let mut c = dir.lock();
            c.listing = None;
            c.subdirs = None;
        }
    }

    /// What the inode known for `entry` in `parent` held when read within
    /// the metadata TTL, if there is one.
    fn known_node(&self, parent: Ino, entry: &Entry) -> Option<NodeState> {
        let inode = self.inodes.find(parent, &entry.name)?;
        if !inode.entry().same_storage(entry) {
            return None;
        }
        let c = inode.lock();
        (self.within_ttl(c.read_at) && !c.unlinked).then(|| c.node.clone())
    }

    /// The nodes of `entries` (in `parent`), `None` for those not shown or
    /// unreadable, each with whether it was just read. Nodes not known
    /// within the TTL are read several at a time, since on object stores
    /// each is a few round trips.
    pub(super) fn nodes_of(&self, parent: Ino, entries: &[Entry]) -> Vec<Option<(NodeState, Seen)>> {
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
            let (writer, dir) = {
                let c = inode.lock();
                (c.active_writer(), matches!(c.node, NodeState::Dir(_)))
            };
            if let Some(w) = &writer
                && !dir
            {
                // The size written so far, as `getattr` shows it: the
                // kernel takes it for the file's end (`O_APPEND` writes).
                attr.size = lock(w).size();
            }
            attr.changing |= writer.is_some();
            if dir {
                attr.nlink = self.dir_links(&inode);
            }
        }
        Ok(attr)
    }

    /// The kernel dropped `n` references to `ino`: an inode no longer
    /// referenced nor open is dropped with what it caches; a TileDB-ML
    /// model array's, with its decoded model (once no open file holds it).
    pub fn forget(&self, ino: Ino, n: u64) {
        let Some(gone) = self.inodes.forget(ino, n) else {
            return;
        };
        if let NodeState::View(ViewNode::Dir { model, prefix }) = &gone.lock().node
            && prefix.is_empty()
        {
            self.ml_models.forget(model);
        }
    }

    fn lookup_inner(&self, parent: Ino, name: &str) -> Result<(Attr, Option<Arc<Inode>>)> {
        Counters::add(&self.counters.lookups, 1);
        if name.len() > crate::registry::names::NAME_MAX_BYTES {
            return Err(invalid_name(name, "longer than 255 bytes"));
        }
        if parent == Ino::ROOT && name == STATS_NAME {
            return Ok((self.stats_attr(), None));
        }
        let dir = gone_is_empty(self.dir_inode(parent), || format!("{name} in directory {}", parent.0))?;
        let dir_node = dir.lock().node.clone();
        if let NodeState::View(view) = dir_node {
            return self.lookup_in_view(&dir, &view, name);
        }
        if name == VERSIONS_NAME {
            return self.lookup_versions_index(&dir);
        }
        let path = || format!("{}/{name}", dir.entry().uri);
        let found = self
            .child(&dir, name, Listed::Cached)
            .map_err(|e| self.stale_or(&dir, e));
        let (entry, known) = gone_is_empty(found, path)?.ok_or_else(|| Error::not_found(path()))?;
        self.stat_ahead_of(&dir, &entry);
        if let Some(inode) = known {
            let node = self.shown_node(&inode)?;
            // The kernel reads an older version of it from a disk cache
            // file: the name gets a new inode, which the kernel opens anew.
            let pinned = inode.lock().pinned_differs(&node);
            let inode = if pinned {
                self.inodes.upsert(parent, entry, node.clone(), Seen::Read)
            } else {
                inode
            };
            return Ok((self.attr_of(inode.ino, &node), Some(inode)));
        }
        if let Some(node) = self.known_node(parent, &entry) {
            let inode = self.inodes.upsert(parent, entry, node, Seen::Cached);
            let node = inode.lock().node.clone();
            return Ok((self.attr_of(inode.ino, &node), Some(inode)));
        }
        let started = Instant::now();
        let (node, listing, at) = self.node_and_listing(&entry)?;
        let node = node.ok_or_else(|| Error::not_found(&entry.uri))?;
        let (inode, took) = self.inodes.upsert_read_since(parent, entry, node, started);
        let node = {
            let mut c = inode.lock();
            // Trusted for the TTL from when it was answered (maybe ahead),
            // unless what it holds is newer than this read.
            if took {
                c.read_at = Some(at);
            }
            if let Some(shape) = listing {
                c.keep_shape(shape, at);
            }
            c.node.clone()
        };
        Ok((self.attr_of(inode.ino, &node), Some(inode)))
    }

    /// Opens a directory: its listing is taken now and read by offset.
    pub fn opendir(&self, ino: Ino) -> Result<Fh> {
        let dir = self.dir_inode(ino)?;
        let mut items = Vec::new();
        push_dir_item(&mut items, ino, Kind::Dir, ".".into());
        push_dir_item(&mut items, dir.parent(), Kind::Dir, "..".into());
        let dir_node = dir.lock().node.clone();
        if let NodeState::View(view) = dir_node {
            self.list_view(&dir, &view, &mut items)?;
            return Ok(self.handles.insert(Handle::Dir { items }));
        }
        let mut names = HashSet::new();
        let entries = self.entries(&dir)?;
        // What a commit here stored while the nodes were read is newer.
        let started = Instant::now();
        let nodes = self.nodes_of(ino, &entries);
        for (entry, node) in entries.iter().zip(nodes) {
            if ino == Ino::ROOT && entry.name == STATS_NAME {
                continue;
            }
            // A bad entry is left out (and logged once); the rest is listed.
            let Some((node, seen)) = node else { continue };
            let kind = if node.is_dir() { Kind::Dir } else { Kind::File };
            let name = entry.name.clone();
            let child = match seen {
                Seen::Read => self.inodes.upsert_read_since(ino, entry.clone(), node, started).0,
                _ => self.inodes.upsert(ino, entry.clone(), node, seen),
            };
            names.insert(name.clone());
            push_dir_item(&mut items, child.ino, kind, name);
        }
        for child in self.inodes.uncommitted_children(ino) {
            let name = child.entry().name;
            if names.insert(name.clone()) {
                push_dir_item(&mut items, child.ino, Kind::File, name);
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
}

/// A lookup's answer in a directory another mount removed since this
/// mount looked it up (ESTALE from the read of it): nothing is in it, so
/// ENOENT. The kernel does not retry the ESTALE of the lookup that
/// `mkdir` (and `mknod`, `symlink`) make of the new name, but retries the
/// change that follows, whose own check finds the directory gone, after
/// looking the path up again.
fn gone_is_empty<T>(r: Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    match r {
        Err(e) if e.errno == libc::ESTALE => Err(Error::not_found(what())),
        r => r,
    }
}
