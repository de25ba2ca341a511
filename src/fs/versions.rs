//! The `.versions` view: every directory holds a hidden, read-only
//! `.versions` directory (not listed, found by name, like
//! `.modelfs-stats`), holding one directory per file of its parent, which
//! lists every committed version of that file as a read-only file named by
//! its commit time (`2026-12-01T21:28:59.119Z`), beside one file per tag
//! naming a version. A version file has that version's size, its commit
//! time as mtime, and reads through the same read path as any file (chunk
//! cache, read-ahead), from that version's own storage only; once pruned
//! it reads as EIO naming the version. Any change inside is EROFS, so a
//! version is restored by copying it over the file (`cp .versions/f/T f`),
//! which commits its bytes as a new version.
//!
//! A file's history is read from the store once per metadata TTL
//! (`history_of`), so the lookups of a loader walking a version path cost
//! one read of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::attr::push_dir_item;
use super::error::{Error, Result};
use super::inode::{Inode, NodeState, Seen};
use super::namespace::Listed;
use super::views::ViewNode;
use super::{Attr, DirItem, Kind, ModelFs, Opened, lock};
use crate::registry::{Entry, History, Storage, Version};

/// The hidden directory of versions in every directory.
pub const VERSIONS_NAME: &str = ".versions";

/// A node of the `.versions` view.
#[derive(Debug, Clone, PartialEq)]
pub enum VersionNode {
    /// `.versions` of directory `dir`: one directory per file in it.
    Index { dir: Entry },
    /// The versions and tags of file `file`.
    File { file: Entry },
    /// One version of `file`, under its time or a tag.
    Version { file: Entry, version: Version },
}

impl VersionNode {
    pub fn is_dir(&self) -> bool {
        !matches!(self, VersionNode::Version { .. })
    }

    /// What `stat` shows: read-only directories, and each version with its
    /// size and its commit time as mtime, atime and ctime.
    pub fn attr(&self, base: Attr) -> Attr {
        match self {
            VersionNode::Index { .. } | VersionNode::File { .. } => Attr {
                kind: Kind::Dir,
                perm: 0o555,
                nlink: 2,
                ..base
            },
            VersionNode::Version { version, .. } => {
                let t = UNIX_EPOCH + Duration::from_millis(version.timestamp);
                Attr {
                    kind: Kind::File,
                    size: version.meta.size,
                    perm: 0o444,
                    nlink: 1,
                    mtime: t,
                    atime: t,
                    ctime: t,
                    ..base
                }
            }
        }
    }
}

/// Histories read within the metadata TTL, by file URI.
#[derive(Default)]
pub(super) struct Histories {
    map: Mutex<HashMap<String, (Instant, Arc<History>)>>,
}

impl ModelFs {
    /// The `.versions` directory of directory inode `dir`.
    pub(super) fn lookup_versions_index(&self, dir: &Inode) -> Result<(Attr, Option<Arc<Inode>>)> {
        let node = NodeState::View(ViewNode::Versions(Box::new(VersionNode::Index { dir: dir.entry() })));
        let inode = self
            .inodes
            .upsert(dir.ino, view_entry(dir, VERSIONS_NAME), node.clone(), Seen::Read);
        Ok((self.attr_of(inode.ino, &node), Some(inode)))
    }

    /// EROFS for a change (`what`) of the name `.versions` in directory
    /// `dir`: it shows the versions, and no entry of that name is stored.
    pub(super) fn refuse_versions_name(&self, dir: &Inode, name: &str, what: &str) -> Result<()> {
        if name != VERSIONS_NAME {
            return Ok(());
        }
        Err(super::CoreError::ReadOnlyVersions {
            change: what.to_string(),
            uri: format!("{}/{name}", dir.entry().uri),
        }
        .into())
    }

    /// Looks up `name` in `view`, the node of `.versions` inode `dir`.
    pub(super) fn lookup_in_versions(
        &self,
        dir: &Inode,
        view: &VersionNode,
        name: &str,
    ) -> Result<(Attr, Option<Arc<Inode>>)> {
        let missing = || Error::not_found(format!("{}/{name}", dir.entry().uri));
        let node = match view {
            VersionNode::Index { .. } => {
                let file = self.versioned_file(dir, name)?.ok_or_else(missing)?;
                VersionNode::File { file }
            }
            VersionNode::File { file } => {
                let history = self.history_of(&file.uri)?;
                let version = history.find(name).ok_or_else(missing)?.clone();
                VersionNode::Version {
                    file: file.clone(),
                    version,
                }
            }
            VersionNode::Version { .. } => return Err(missing()),
        };
        let node = NodeState::View(ViewNode::Versions(Box::new(node)));
        let inode = self
            .inodes
            .upsert(dir.ino, view_entry(dir, name), node.clone(), Seen::Read);
        Ok((self.attr_of(inode.ino, &node), Some(inode)))
    }

    /// The file named `name` in the directory whose `.versions` is inode
    /// `index`, when it is a file (not a directory nor a TileDB-ML array).
    fn versioned_file(&self, index: &Inode, name: &str) -> Result<Option<Entry>> {
        let real = self.dir_inode(index.parent())?;
        let Some((entry, known)) = self.child(&real, name, Listed::Cached)? else {
            return Ok(None);
        };
        if entry.storage != Storage::Array {
            return Ok(None);
        }
        let node = match known {
            Some(inode) => self.fresh_node(&inode)?,
            None => match self.node_of(&entry)? {
                Some(node) => node,
                None => return Ok(None),
            },
        };
        Ok(matches!(node, NodeState::File(_)).then_some(entry))
    }

    /// Adds what `view`, the node of `.versions` inode `dir`, holds to a
    /// listing: a directory per file, or the versions (oldest first) then
    /// the tags of one file.
    pub(super) fn list_versions(&self, dir: &Inode, view: &VersionNode, items: &mut Vec<DirItem>) -> Result<()> {
        match view {
            VersionNode::Index { .. } => {
                let real = self.dir_inode(dir.parent())?;
                let entries = self.entries(&real)?;
                let files: Vec<Entry> = entries
                    .iter()
                    .filter(|e| e.storage == Storage::Array)
                    .cloned()
                    .collect();
                for (entry, node) in files.iter().zip(self.nodes_of(real.ino, &files)) {
                    if !matches!(node, Some((NodeState::File(_), _))) {
                        continue;
                    }
                    let node = NodeState::View(ViewNode::Versions(Box::new(VersionNode::File { file: entry.clone() })));
                    let child = self
                        .inodes
                        .upsert(dir.ino, view_entry(dir, &entry.name), node, Seen::Read);
                    push_dir_item(items, child.ino, Kind::Dir, entry.name.clone());
                }
            }
            VersionNode::File { file } => {
                let history = self.history_of(&file.uri)?;
                let named = history
                    .versions
                    .iter()
                    .map(|v| (v.name(), v))
                    .chain(history.tags.iter().filter_map(|(tag, t)| {
                        let v = history.versions.iter().find(|v| v.timestamp == *t)?;
                        Some((tag.clone(), v))
                    }));
                for (name, version) in named {
                    let node = NodeState::View(ViewNode::Versions(Box::new(VersionNode::Version {
                        file: file.clone(),
                        version: version.clone(),
                    })));
                    let child = self.inodes.upsert(dir.ino, view_entry(dir, &name), node, Seen::Read);
                    push_dir_item(items, child.ino, Kind::File, name);
                }
            }
            VersionNode::Version { .. } => {}
        }
        Ok(())
    }

    /// Opens version file `inode` (node `view`) for reading, through the
    /// read path every file takes.
    pub(super) fn open_version_file(&self, inode: &Arc<Inode>, view: &VersionNode) -> Result<Opened> {
        let VersionNode::Version { file, version } = view else {
            return Err(super::CoreError::IsADirectory {
                what: inode.entry().uri,
            }
            .into());
        };
        self.open_read(inode, &file.uri, version.meta.clone(), true)
    }

    /// The history of the file at `uri`, read again once older than the
    /// metadata TTL.
    fn history_of(&self, uri: &str) -> Result<Arc<History>> {
        let key = crate::registry::uri::canonical(uri);
        if let Some((at, history)) = lock(&self.histories.map).get(key)
            && at.elapsed() < self.config.metadata_ttl
        {
            return Ok(history.clone());
        }
        let history = Arc::new(self.store.history(uri)?);
        lock(&self.histories.map).insert(key.to_string(), (Instant::now(), history.clone()));
        Ok(history)
    }

    /// Drops the cached history of the file at `uri`, and of any stored
    /// under it: this mount just committed a version of it, or a rename
    /// moved or replaced what is stored there (in a plain directory, a
    /// name's storage URI holds another file's history afterwards).
    pub(super) fn forget_history(&self, uri: &str) {
        use crate::registry::uri::{is_inside, same};
        lock(&self.histories.map).retain(|k, _| !same(k, uri) && !is_inside(k, uri));
    }
}

/// The entry of `name` inside `.versions` inode `dir`, made up from its
/// URI (never looked up in the registry).
fn view_entry(dir: &Inode, name: &str) -> Entry {
    Entry {
        name: name.to_string(),
        uri: format!("{}/{name}", dir.entry().uri),
        storage: Storage::Array,
    }
}
