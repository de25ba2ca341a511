//! Nodes the core generates rather than stores, behind one small interface
//! so the operations do not branch on what generates them:
//!
//! - a TileDB-ML model array, shown as a read-only directory of files
//!   decoded from its fields. Its nodes are `NodeState::View`s holding a
//!   [`ViewNode`]; the operations hand them to `lookup_in_view`,
//!   `list_view`, `open_view` and [`ViewNode::attr`], and refuse changes
//!   inside them with `refuse_view_change` (EROFS);
//! - the root's `.modelfs-stats` file: the mount's counters as JSON, made
//!   at each open (`stats_attr`, `open_stats`);
//! - the `.versions` directories, whose nodes are `ViewNode::Versions`
//!   (`versions.rs`).
//!
//! Decoded models are kept by `ml_models.rs`, within the `--view-memory`
//! budget, while their array has no newer write. A view's nodes hold their
//! model, so only the model array's own node is ever read again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::attr::push_dir_item;
use super::counters::Counters;
use super::error::{CoreError, Error, Result};
use super::handles::Handle;
use super::inode::{Inode, NodeState, Seen};
use super::versions::VersionNode;
use super::{Attr, DirItem, Ino, Kind, ModelFs, Opened, read_only};
use crate::registry::Entry;
use crate::registry::tiledb_ml::{TileDbMlModel, ViewEntry};

/// The root's hidden file holding the counters as JSON.
pub const STATS_NAME: &str = ".modelfs-stats";

/// A node of a TileDB-ML model's view.
#[derive(Debug, Clone)]
pub enum ViewNode {
    /// The model array itself (`prefix` empty) or a folder inside its view
    /// (`prefix` ends with `/`).
    Dir { model: Arc<TileDbMlModel>, prefix: String },
    /// A file of the view, at `path` in it.
    File { model: Arc<TileDbMlModel>, path: String },
    /// A node of a `.versions` directory (see `versions.rs`), boxed: a
    /// version carries its metadata.
    Versions(Box<VersionNode>),
}

impl ViewNode {
    /// The directory a model array shows as.
    fn root(model: Arc<TileDbMlModel>) -> Self {
        ViewNode::Dir {
            model,
            prefix: String::new(),
        }
    }

    /// The model array or a folder of its view.
    pub fn is_dir(&self) -> bool {
        match self {
            ViewNode::Versions(v) => v.is_dir(),
            _ => matches!(self, ViewNode::Dir { .. }),
        }
    }

    /// Inside the view rather than the model array itself: refreshed
    /// through its model, never read again on its own.
    pub fn is_inside(&self) -> bool {
        match self {
            ViewNode::Dir { prefix, .. } => !prefix.is_empty(),
            ViewNode::File { .. } | ViewNode::Versions(_) => true,
        }
    }

    /// The node for `name` in this folder, if there is one.
    fn child(&self, name: &str) -> Option<ViewNode> {
        let ViewNode::Dir { model, prefix } = self else {
            return None;
        };
        let path = format!("{prefix}{name}");
        if model.entry(&path).is_some() {
            return Some(ViewNode::File {
                model: model.clone(),
                path,
            });
        }
        let folder = format!("{path}/");
        model
            .entries()
            .iter()
            .any(|(p, _)| p.starts_with(&folder))
            .then(|| ViewNode::Dir {
                model: model.clone(),
                prefix: folder,
            })
    }

    /// The nodes directly in this folder with their names, in the model's
    /// order.
    fn children(&self) -> Vec<(String, ViewNode)> {
        let ViewNode::Dir { model, prefix } = self else {
            return Vec::new();
        };
        let mut names: Vec<&str> = Vec::new();
        for (path, _) in model.entries() {
            let Some(rest) = path.strip_prefix(prefix.as_str()) else {
                continue;
            };
            let name = rest.split_once('/').map_or(rest, |(dir, _)| dir);
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
            .into_iter()
            .filter_map(|name| Some((name.to_string(), self.child(name)?)))
            .collect()
    }

    /// What `stat` shows: `base` made read-only and timed at the model's
    /// version, with a file's size.
    pub fn attr(&self, base: Attr) -> Attr {
        let model = match self {
            ViewNode::Dir { model, .. } | ViewNode::File { model, .. } => model,
            ViewNode::Versions(v) => return v.attr(base),
        };
        let t = UNIX_EPOCH + Duration::from_millis(model.version());
        let timed = Attr {
            mtime: t,
            atime: t,
            ctime: t,
            ..base
        };
        match self {
            ViewNode::Dir { .. } => Attr {
                kind: Kind::Dir,
                perm: 0o555,
                nlink: 2,
                ..timed
            },
            ViewNode::Versions(_) => timed,
            ViewNode::File { model, path } => Attr {
                size: match model.entry(path) {
                    Some(ViewEntry::Ready(f)) => f.len(),
                    _ => 0,
                },
                perm: 0o444,
                ..timed
            },
        }
    }
}

/// Equal when they are the same place in the same decoded model.
impl PartialEq for ViewNode {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ViewNode::Dir { model: a, prefix: p }, ViewNode::Dir { model: b, prefix: q })
            | (ViewNode::File { model: a, path: p }, ViewNode::File { model: b, path: q }) => {
                Arc::ptr_eq(a, b) && p == q
            }
            (ViewNode::Versions(a), ViewNode::Versions(b)) => a == b,
            _ => false,
        }
    }
}

impl ModelFs {
    /// The directory the TileDB-ML model array `entry` shows as. A model
    /// that cannot be read is logged (once) and its error returned.
    pub(super) fn model_view(&self, entry: &Entry) -> Result<NodeState> {
        match self.ml_model(&entry.uri) {
            Ok(model) => Ok(NodeState::View(ViewNode::root(model))),
            Err(e) => {
                self.warn_once(
                    &entry.uri,
                    format_args!("{}: TileDB-ML model cannot be read: {e}", entry.uri),
                );
                Err(e.into())
            }
        }
    }

    /// The decoded TileDB-ML model at `uri`, reusing the one kept while the
    /// array has no newer write.
    fn ml_model(&self, uri: &str) -> crate::registry::Result<Arc<TileDbMlModel>> {
        let version = self.store.array_version(uri)?;
        let model = self.ml_models.get(self.store.as_ref(), uri, version)?;
        for failure in model.failures() {
            self.warn_once(&format!("{uri}#{}", failure.field), format_args!("{failure}"));
        }
        Ok(model)
    }

    /// Looks up `name` in `view`, the node of directory inode `dir`.
    pub(super) fn lookup_in_view(
        &self,
        dir: &Inode,
        view: &ViewNode,
        name: &str,
    ) -> Result<(Attr, Option<Arc<Inode>>)> {
        if let ViewNode::Versions(v) = view {
            return self.lookup_in_versions(dir, v, name);
        }
        let node = view.child(name).ok_or_else(|| {
            let prefix = match view {
                ViewNode::Dir { prefix, .. } => prefix.as_str(),
                ViewNode::File { .. } | ViewNode::Versions(_) => "",
            };
            Error::not_found(format!("{}/{prefix}{name}", dir.entry().uri))
        })?;
        let node = NodeState::View(node);
        let inode = self
            .inodes
            .upsert(dir.ino, view_entry(dir, name), node.clone(), Seen::Read);
        Ok((self.attr_of(inode.ino, &node), Some(inode)))
    }

    /// Adds what `view`, the node of directory inode `dir`, holds to a
    /// listing.
    pub(super) fn list_view(&self, dir: &Inode, view: &ViewNode, items: &mut Vec<DirItem>) -> Result<()> {
        if let ViewNode::Versions(v) = view {
            return self.list_versions(dir, v, items);
        }
        for (name, node) in view.children() {
            let kind = if node.is_dir() { Kind::Dir } else { Kind::File };
            let entry = view_entry(dir, &name);
            let child = self.inodes.upsert(dir.ino, entry, NodeState::View(node), Seen::Read);
            push_dir_item(items, child.ino, kind, name);
        }
        Ok(())
    }

    /// Opens `view`, the node of file inode `inode`; EROFS for writing,
    /// EIO when its field could not be decoded.
    pub(super) fn open_view(&self, inode: &Arc<Inode>, view: &ViewNode, write: bool) -> Result<Opened> {
        if write {
            self.refuse_view_change(inode, "open for writing")?;
        }
        if let ViewNode::Versions(v) = view {
            return self.open_version_file(inode, v);
        }
        let ViewNode::File { model, path } = view else {
            return Err(CoreError::IsADirectory {
                what: inode.entry().uri,
            }
            .into());
        };
        match model.entry(path) {
            Some(ViewEntry::Ready(file)) => {
                Counters::add(&self.counters.opens, 1);
                Ok(Opened {
                    fh: self.handles.insert(Handle::View(file.clone())),
                    keep_cache: true,
                    direct_io: false,
                    passthrough: None,
                })
            }
            Some(ViewEntry::Failed(e)) => Err(crate::registry::Error::from(e.clone()).into()),
            None => Err(Error::not_found(path)),
        }
    }

    /// Directory `ino`, for a change (`what`) in it: EROFS inside a
    /// TileDB-ML model's view.
    pub(super) fn changeable_dir(&self, ino: Ino, what: &str) -> Result<Arc<Inode>> {
        let dir = self.dir_inode(ino)?;
        self.refuse_view_change(&dir, what)?;
        Ok(dir)
    }

    /// EROFS for changes inside a TileDB-ML model's view, with a log line.
    pub(super) fn refuse_view_change(&self, dir: &Inode, what: &str) -> Result<()> {
        let node = dir.lock().node.clone();
        if let NodeState::View(ViewNode::Versions(_)) = node {
            return Err(CoreError::ReadOnlyVersions {
                change: format!("{what} in"),
                uri: dir.entry().uri,
            }
            .into());
        }
        if let NodeState::View(_) = node {
            return Err(CoreError::ReadOnlyView {
                change: format!("{what} in"),
                uri: dir.entry().uri,
            }
            .into());
        }
        Ok(())
    }

    /// What `stat` shows of the stats file: changing, so never cached.
    pub(super) fn stats_attr(&self) -> Attr {
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

    /// Opens the stats file: the counters as of now, read directly.
    pub(super) fn open_stats(&self, write: bool) -> Result<Opened> {
        if write {
            return Err(read_only(STATS_NAME));
        }
        let json = serde_json::to_vec_pretty(&self.counters()).unwrap_or_default();
        let fh = self.handles.insert(Handle::Generated(json));
        Ok(Opened {
            fh,
            keep_cache: false,
            direct_io: true,
            passthrough: None,
        })
    }
}

/// The entry of `name` inside view folder `dir`, made up from its URI
/// (never looked up in the registry).
fn view_entry(dir: &Inode, name: &str) -> Entry {
    let parent = dir.entry();
    Entry {
        name: name.to_string(),
        uri: format!("{}/{name}", parent.uri),
        storage: crate::registry::Storage::Array,
    }
}
