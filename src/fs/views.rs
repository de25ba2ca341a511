//! Nodes the core generates rather than stores: a TileDB-ML model array
//! shown as a read-only directory of files decoded from its fields, and
//! the root's `.modelfs-stats` file (the counters as JSON, made at open).
//!
//! Decoded models are kept (at most [`ML_MODELS_KEPT`], each holding its
//! fields' bytes) while their array has no newer write. Nothing inside a
//! view can be changed: every change there is EROFS.

use std::sync::Arc;
use std::time::SystemTime;

use super::error::{CoreError, Result};
use super::inode::{Inode, NodeState};
use super::{Attr, Ino, Kind, ModelFs, lock};
use crate::registry::Entry;
use crate::registry::tiledb_ml::{TileDbMlModel, ViewLimits};

/// TileDB-ML models kept decoded at once (each holds its fields' bytes).
const ML_MODELS_KEPT: usize = 4;

/// The root's hidden file holding the counters as JSON.
pub const STATS_NAME: &str = ".modelfs-stats";

impl ModelFs {
    /// The decoded TileDB-ML model at `uri`, reusing the one kept while the
    /// array has no newer write.
    pub(super) fn ml_model(&self, uri: &str) -> crate::registry::Result<Arc<TileDbMlModel>> {
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
    pub(super) fn ml_child(model: &Arc<TileDbMlModel>, prefix: &str, name: &str) -> Option<NodeState> {
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
    pub(super) fn ml_listing(model: &TileDbMlModel, prefix: &str) -> Vec<(String, bool)> {
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
    pub(super) fn ml_entry(dir: &Inode, name: &str) -> Entry {
        let parent = dir.entry();
        Entry {
            name: name.to_string(),
            uri: format!("{}/{name}", parent.uri),
            storage: crate::registry::Storage::Array,
        }
    }

    /// Directory `ino`, for a change (`what`) in it: EROFS inside a
    /// TileDB-ML model's view.
    pub(super) fn changeable_dir(&self, ino: Ino, what: &str) -> Result<Arc<Inode>> {
        let dir = self.dir_inode(ino)?;
        self.refuse_ml_change(&dir, what)?;
        Ok(dir)
    }

    /// EROFS for changes inside a TileDB-ML model's view, with a log line.
    pub(super) fn refuse_ml_change(&self, dir: &Inode, what: &str) -> Result<()> {
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
}
