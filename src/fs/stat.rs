//! What `stat` shows and what `setattr` changes: sizes, modes, owners and
//! times. Stored attributes (see [`crate::registry::attrs`]) are laid over
//! the mount's defaults; a change of mode, owner or times is stored at once
//! without a new version, and a size change is a truncate (`files.rs`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::{CoreError, Result};
use super::inode::{Inode, NodeState, subdirs_in};
use super::{Attr, Fh, Ino, Kind, ModelFs, STATS_NAME, lock, read_only};
use crate::registry::Attrs;
use crate::registry::file_array::now_ns;

impl ModelFs {
    /// What `stat` shows for `node`: stored modes, owners and times over
    /// the mount's defaults (0644 files, 0755 directories, owned by the
    /// mounting user; a version's commit time as its mtime).
    pub(super) fn attr_of(&self, ino: Ino, node: &NodeState) -> Attr {
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
            NodeState::View(view) => view.attr(base),
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

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        if ino == Ino::STATS {
            return Ok(self.stats_attr());
        }
        let inode = self.inode(ino)?;
        let node = match self.shown_node(&inode) {
            // Another mount removed the file while it is open here (the
            // kernel asks by inode for `fstat`, with no handle): it is
            // still open, so it shows as removed, as one this mount
            // removed while open does, not ESTALE. Not open, the ESTALE
            // makes the kernel look its name up again.
            Err(e) if (e.errno == libc::ESTALE || e.errno == libc::ENOENT) && inode.lock().open_handles > 0 => {
                let node = inode.lock().node.clone();
                let mut attr = self.attr_of(ino, &node);
                attr.nlink = 0;
                return Ok(attr);
            }
            r => r?,
        };
        let mut attr = self.attr_of(ino, &node);
        if matches!(node, NodeState::Dir(_)) {
            attr.nlink = self.dir_links(&inode);
        }
        let c = inode.lock();
        if c.unlinked {
            // Open but removed from its directory (`fstat`).
            attr.nlink = 0;
        }
        attr.changing = c.active_writer().is_some();
        Ok(attr)
    }

    /// A directory's link count: 2 and one per subdirectory (its `..`),
    /// from its listing (cached for the metadata TTL; 2 when it cannot be
    /// listed).
    pub(super) fn dir_links(&self, dir: &Inode) -> u32 {
        // A count its parent's read told serves only while no listing does.
        let told = dir.lock().subdirs.filter(|(at, _)| self.within_ttl(Some(*at)));
        let subdirs = match told {
            Some((_, n)) if self.fresh_listing(dir).is_none() => n,
            _ => self.entries(dir).map_or(0, |list| subdirs_in(&list)),
        };
        2u32.saturating_add(subdirs)
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
        if let NodeState::View(_) = node {
            self.refuse_view_change(inode, "changing attributes")?;
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
            let stored = self.store.set_attrs(&inode.entry(), &change)?;
            self.stat_ahead.changed();
            stored
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

    /// The attributes a new entry made by `who` with `mode` stores: its
    /// mode, and its owner where that is not the mounting user.
    pub(super) fn new_attrs(&self, mode: u32, who: Owner) -> Attrs {
        Attrs {
            mode: Some(mode & crate::registry::attrs::MODE_BITS),
            uid: (who.uid != self.config.uid).then_some(who.uid),
            gid: (who.gid != self.config.gid).then_some(who.gid),
            ..Attrs::default()
        }
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
    // Every commit and attribute change stores the ctime it makes.
    let ctime = attrs.ctime_ns.map(at_ns).or(committed).unwrap_or(attr.ctime);
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
