//! Changes to directories' entries: mkdir, unlink, rmdir and rename.
//!
//! Each asks the registry itself (never a cached listing) before changing
//! it, changes storage first and the inode table after, and drops the
//! directory's cached listing. Storage of a removed entry is deleted when
//! nothing uses it any more: at once, or when the last handle of a file
//! open at its unlink closes; never when it lies outside the registry or
//! another entry still names it.

use std::sync::Arc;
use std::time::Instant;

use log::{debug, info, warn};

use super::error::{CoreError, Error, Result};
use super::inode::{Inode, NodeState, Seen};
use super::namespace::Listed;
use super::stat::Owner;
use super::{Attr, Ino, ModelFs, invalid_name, lock};
use crate::registry::file_array::{now_ms, now_ns};
use crate::registry::{Attrs, Entry, Storage};

/// Where a change of a directory's entries went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DirChange {
    /// To storage: every mount sees it.
    Stored,
    /// Nowhere yet: a new file before its first commit, or renamed then.
    HereOnly,
    /// Nowhere, ever: a new file unlinked before its first commit. The
    /// directory shows its stored times again, as every other mount does
    /// (its own creation moved them here only).
    Undone,
}

impl ModelFs {
    /// Directory `ino`'s entries changed through this mount: its cached
    /// listing (if any) gets the same change, keeping the time it was read
    /// (so what other mounts did still shows within the TTL), and its
    /// mtime and ctime become the change's time. Re-reading either would
    /// cost an open of the directory, whose price grows with its number of
    /// entries. A change that reached storage takes the time the store
    /// stamped on it, the one every other mount reads (a time of this
    /// mount's own would differ, across a second's boundary too, and make
    /// `rsync -a` copy it again); one only this mount knows takes now, to
    /// the millisecond as stamps are. Times a tool stored later stay, as
    /// they do when read from storage.
    pub(super) fn touch_dir(&self, ino: Ino, removed: &[&str], added: Option<&Entry>, change: DirChange) {
        self.stat_ahead.changed();
        let Some(dir) = self.inodes.get(ino) else { return };
        let changed_ms = match change {
            DirChange::Stored => self.store.dir_changed_ms(&dir.entry()).unwrap_or_else(now_ms),
            DirChange::HereOnly => now_ms(),
            DirChange::Undone => 0,
        };
        let changed = Some(changed_ms.saturating_mul(1_000_000));
        let mut c = dir.lock();
        // A count told by the parent's read is no longer true.
        c.subdirs = None;
        if let Some((_, list)) = &mut c.listing {
            // In place unless a directory handle still reads it: copying
            // a listing of 10,000 entries at every change would make a
            // change cost O(entries). Listings are sorted by name.
            let edited = Arc::make_mut(list);
            let gone = removed.iter().copied().chain(added.map(|a| a.name.as_str()));
            for name in gone.collect::<Vec<_>>() {
                if let Ok(i) = edited.binary_search_by(|e| e.name.as_str().cmp(name)) {
                    edited.remove(i);
                }
            }
            if let Some(a) = added {
                let at = edited.partition_point(|e| e.name < a.name);
                edited.insert(at, a.clone());
            }
        }
        if change == DirChange::Undone {
            // Read again at the next stat.
            c.read_at = None;
            return;
        }
        if let NodeState::Dir(a) = &mut c.node
            && a.ctime_ns < changed
        {
            a.mtime_ns = changed;
            a.ctime_ns = changed;
        }
    }

    /// Creates directory `name` in `parent` (a group, linked into its parent).
    /// `mode` has the umask applied; `who` makes it.
    pub fn mkdir(&self, parent: Ino, name: &str, mode: u32, who: Owner) -> Result<Attr> {
        self.check_writable(name)?;
        let dir = self.changeable_dir(parent, "mkdir")?;
        self.refuse_versions_name(&dir, name, "mkdir")?;
        self.check_dir_still_shown(&dir)?;
        // The registry refuses a name it holds; one being created is known
        // here alone.
        if self.creating_child(&dir, name).is_some() {
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
        self.touch_dir(parent, &[], Some(&entry), DirChange::Stored);
        let node = NodeState::Dir(attrs);
        let inode = self.inodes.upsert(parent, entry, node.clone(), Seen::Read);
        self.inodes.remember(&inode);
        Ok(self.attr_of(inode.ino, &node))
    }

    /// Removes file `name` from `parent`. Its storage is retired (see
    /// [`super::Store::retire`]: kept for snapshots by the TileDB registry) now,
    /// or when the last open handle closes. A new file not committed yet
    /// has none: its handles keep their bytes and commit nothing.
    pub fn unlink(&self, parent: Ino, name: &str) -> Result<()> {
        self.check_writable(name)?;
        let dir = self.changeable_dir(parent, "unlink")?;
        self.refuse_versions_name(&dir, name, "unlink")?;
        // A group's listing also tells whether another entry names the same
        // storage, so it is read once, not again before the deletion.
        let listing = match (self.creating_child(&dir, name), dir.entry().storage) {
            (None, Storage::Group) => Some(self.store.list(&dir.entry())?),
            _ => None,
        };
        let (entry, known) = match &listing {
            Some(list) => list.iter().find(|e| e.name == name).map(|e| (e.clone(), None)),
            None => self.child(&dir, name, Listed::Fresh)?,
        }
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
        let change = if linked { DirChange::Stored } else { DirChange::Undone };
        self.touch_dir(parent, &[name], None, change);
        self.inodes.remove_name(parent, name);
        let open = self.mark_unlinked(inode.as_deref());
        if let Some(i) = &inode {
            i.lock().delete_on_close &= stored;
        }
        if stored && !open {
            self.delete_unlinked(&dir, &entry, listing.as_deref());
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

    /// Retires the storage of `entry`, just taken out of directory `dir`
    /// (deleted, or kept for snapshots: [`super::Store::retire`]), unless it lies
    /// outside the registry or another entry of `dir` still names it
    /// (written so by another tool), which leaves it alone. Failures are
    /// logged: the entry is gone either way. `listing` is the directory's,
    /// read just before the entry was taken out, when the caller has it.
    pub(super) fn delete_unlinked(&self, dir: &Inode, entry: &Entry, listing: Option<&[Entry]>) {
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
        let names = match (dir_entry.storage, listing) {
            (Storage::Group, Some(list)) => Ok(list.iter().filter(|e| e.name != entry.name).cloned().collect()),
            (Storage::Group, None) => self.store.list(&dir_entry),
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
        if let Err(e) = self.store.retire(&dir_entry, entry) {
            warn!("{}: removed, but deleting its storage failed: {e}", entry.uri);
        }
    }

    /// Removes the empty directory `name` from `parent`. ENOTEMPTY when it
    /// holds anything, shown or not (arrays that are not files, entries
    /// with names that cannot be shown, files being created).
    pub fn rmdir(&self, parent: Ino, name: &str) -> Result<()> {
        self.check_writable(name)?;
        let dir = self.changeable_dir(parent, "rmdir")?;
        self.refuse_versions_name(&dir, name, "rmdir")?;
        let (entry, _) = self
            .child(&dir, name, Listed::Fresh)?
            .ok_or_else(|| Error::not_found(name))?;
        self.check_removable_dir(parent, &entry)?;
        self.store.unlink(&dir.entry(), &entry)?;
        self.touch_dir(parent, &[name], None, DirChange::Stored);
        let child = self.inodes.find(parent, name);
        self.inodes.remove_name(parent, name);
        self.mark_unlinked(child.as_deref());
        self.delete_unlinked(&dir, &entry, None);
        info!("removed directory {}", entry.uri);
        Ok(())
    }

    /// A rename moved storage from `from` to `to` (out of or into a plain
    /// directory, where a name is where the storage is): what this mount
    /// knows there (the kernel's inodes, the versions open descriptors
    /// read, the writers' places) now points where the storage went.
    fn storage_moved(&self, from: &str, to: &str) {
        for inode in self.inodes.stored_at_or_inside(from) {
            let Some(uri) = crate::registry::uri::rebase(&inode.entry().uri, from, to) else {
                continue;
            };
            self.inodes.set_uri(&inode, uri.clone());
            let (version, writer) = {
                let mut c = inode.lock();
                // A directory's listing names its entries' old places.
                c.listing = None;
                (c.version.clone(), c.active_writer())
            };
            if let Some(v) = version {
                let meta = v.meta().clone();
                if let Err(e) = v.relocate(|| Ok(self.store.open_version(&uri, meta)?)) {
                    warn!("{uri}: moved from {from}, but cannot be opened there: {e}");
                    inode.lock().version = None;
                }
            }
            if let Some(w) = writer {
                lock(&w).storage_moved(from, to);
            }
        }
    }

    /// Undoes [`super::Store::set_aside`] of `old` (now at `aside`) after
    /// the rename it made way for failed: the file is back under its name,
    /// and its descriptors with it (best effort: logged).
    fn put_back(&self, old: &Entry, aside: &str) {
        match self.store.put_back(old, aside) {
            Ok(()) => self.storage_moved(aside, &old.uri),
            Err(e) => log::error!(
                "{aside}: {} was set aside for a rename that failed, and cannot go back: it is kept there, hidden (remove its __modelfs_removed file and move it back by hand): {e}",
                old.uri
            ),
        }
    }

    /// EBUSY when a file stored at or under `entry` streams into storage
    /// from this mount: its open TileDB write would not follow a move.
    fn check_nothing_streams_inside(&self, entry: &Entry) -> Result<()> {
        for inode in self.inodes.stored_at_or_inside(&entry.uri) {
            let writer = inode.lock().active_writer();
            if writer.is_some_and(|w| lock(&w).is_streaming()) {
                return Err(CoreError::BeingWritten {
                    what: inode.entry().uri,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Ok when `entry` (in `parent`) is a directory holding nothing.
    fn check_removable_dir(&self, parent: Ino, entry: &Entry) -> Result<()> {
        if !entry.is_dir() {
            if let Ok(Some(NodeState::View(_))) = self.node_of(entry) {
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
        self.refuse_versions_name(&dir, name, "rename")?;
        self.refuse_versions_name(&new_dir, new_name, "rename")?;
        if parent != new_parent {
            self.check_dir_still_shown(&new_dir)?;
        }
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
        let mut replaced = target.map(|(t, _)| t);
        let new_dir_entry = new_dir.entry();
        if dir.entry().storage != Storage::Group || new_dir_entry.storage != Storage::Group {
            self.check_nothing_streams_inside(&entry)?;
        }
        // In a plain directory the replaced file's storage is its name: one
        // open here moves out of the way first, its descriptors following
        // it, as a local file's inode outlives its name.
        // Every inode of that storage counts: the name may have a newer
        // one (see `pinned_differs`) while an older one is still open.
        let set_aside = match &replaced {
            Some(old) if new_dir_entry.storage != Storage::Group => {
                let inodes = self.inodes.stored_at(&old.uri);
                if inodes.iter().any(|i| i.lock().open_handles > 0) {
                    let aside = self.store.set_aside(&new_dir_entry, old)?;
                    self.storage_moved(&old.uri, &aside);
                    self.forget_history(&old.uri);
                    Some((inodes, old.clone(), aside))
                } else {
                    None
                }
            }
            _ => None,
        };
        if set_aside.is_some() {
            replaced = None;
        }
        let moved = match self
            .store
            .rename(&dir.entry(), &entry, &new_dir_entry, new_name, replaced.as_ref())
        {
            Ok(moved) => moved,
            Err(e) => {
                if let Some((_, old, aside)) = &set_aside {
                    self.put_back(old, aside);
                }
                return Err(e.into());
            }
        };
        if let Some((inodes, old, aside)) = &set_aside {
            // Open, its name gone: its storage goes at its last close, or
            // now if that came meanwhile.
            self.inodes.remove_name(new_parent, new_name);
            let mut open = false;
            for inode in inodes {
                open |= self.mark_unlinked(Some(inode));
            }
            if !open {
                let entry = Entry {
                    uri: aside.clone(),
                    ..old.clone()
                };
                self.delete_unlinked(&new_dir, &entry, None);
            }
            info!("{new_name}: replaced while open, its storage set aside at {aside} until closed");
        }
        if !crate::registry::uri::same(&moved.uri, &entry.uri) {
            self.storage_moved(&entry.uri, &moved.uri);
            self.forget_history(&entry.uri);
            self.forget_history(&moved.uri);
        }
        if let Some(old) = &replaced {
            self.forget_history(&old.uri);
        }
        self.touch_dir(parent, &[name], None, DirChange::Stored);
        self.touch_dir(new_parent, &[new_name], Some(&moved), DirChange::Stored);
        if let Some(old) = &replaced {
            let old_inode = self.inodes.find(new_parent, new_name);
            self.inodes.remove_name(new_parent, new_name);
            // A plain directory's target was deleted by the move itself.
            if !self.mark_unlinked(old_inode.as_deref()) && new_dir_entry.storage == Storage::Group {
                self.delete_unlinked(&new_dir, old, None);
            }
        }
        match self.inodes.find(parent, name) {
            Some(inode) => {
                self.inodes.rename(&inode, new_parent, moved.clone());
                // An idle writer (its bytes committed, a descriptor still
                // open) commits its next bytes to the file's new name.
                let writer = inode.lock().active_writer();
                if let Some(w) = writer {
                    lock(&w).retarget(new_dir_entry.clone(), moved.clone(), true, None);
                }
            }
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
        // Streaming into an array of its own, named by where it is in a
        // plain directory: it can take a new name only once it is closed.
        let plain = |e: &Entry| e.storage != crate::registry::Storage::Group;
        if w.has_own_array() && (plain(&w.target().dir) || plain(&dir_entry)) {
            return Err(CoreError::BeingWritten {
                what: w.target().entry.uri.clone(),
            }
            .into());
        }
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
        // The registry's entries change at the commit; until then the
        // listings are read again.
        self.forget_listing(inode.parent());
        self.forget_listing(new_dir.ino);
        self.touch_dir(inode.parent(), &[], None, DirChange::HereOnly);
        self.touch_dir(new_dir.ino, &[], None, DirChange::HereOnly);
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
}
