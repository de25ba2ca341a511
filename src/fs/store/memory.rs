//! A registry in memory with the same rules as the TileDB one: directories
//! are groups of named members pointing at storage URIs, files are arrays
//! of committed versions, a new version is visible only once committed,
//! and renames re-link without moving storage.
//!
//! Every change to storage is one numbered step. [`MemStore::crash_at`]
//! makes step `k` and every later one fail, as if the daemon died there:
//! the reference-model test then restarts the core and checks that every
//! name shows its old or its new state.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Store, StoredVersion, VersionWriter};
use crate::registry::names::{last_component, storage_name};
use crate::registry::tiledb_ml::{ModelOptions, TileDbMlModel};
use crate::registry::uri::join;
use crate::registry::{
    Attrs, Committed, DirStat, Entry, Error, FileKind, FileMeta, History, Node, Result, StatLabel, Storage, Summaries,
    Version,
};

/// Tile of in-memory files: small, so reads cross many cache chunks.
const TILE_BYTES: u64 = 4096;

/// A group's members: name -> (storage URI, kind).
type Members = BTreeMap<String, (String, Storage)>;

enum Object {
    Group {
        members: Members,
        attrs: Attrs,
    },
    File {
        /// Committed versions, oldest first: (timestamp, bytes).
        versions: Vec<(u64, std::sync::Arc<Vec<u8>>)>,
        kind: Option<String>,
        attrs: Attrs,
    },
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Object>,
    /// Changes made so far (the next one is numbered `steps`).
    steps: u64,
    /// The first step that fails, and all after it.
    crash_at: Option<u64>,
    /// Subdirectories' stats kept by [`Store::save_dir_stat`], by the
    /// label's key (the state they were read from).
    dir_stats: BTreeMap<String, DirStat>,
}

/// An in-memory registry rooted at `mem://registry`.
pub struct MemStore {
    inner: Arc<Inner>,
    root: String,
}

/// What writers share with their store.
struct Inner {
    state: Mutex<State>,
    clock_ms: AtomicU64,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// An empty registry: a root group and nothing else.
    pub fn new() -> Self {
        let root = "mem://registry".to_string();
        let mut state = State::default();
        state.objects.insert(
            root.clone(),
            Object::Group {
                members: BTreeMap::new(),
                attrs: Attrs::default(),
            },
        );
        MemStore {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                clock_ms: AtomicU64::new(0),
            }),
            root,
        }
    }

    /// The registry's root URI.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Makes change number `step` (counted from now) and every later change
    /// fail; `None` lets changes through again (a restarted daemon).
    pub fn crash_at(&self, step: Option<u64>) {
        let mut s = self.lock();
        s.crash_at = step.map(|k| s.steps + k);
    }

    /// Whether a crash set with [`MemStore::crash_at`] has happened.
    pub fn crashed(&self) -> bool {
        let s = self.lock();
        s.crash_at.is_some_and(|k| s.steps >= k)
    }

    /// Changes made so far.
    pub fn steps(&self) -> u64 {
        self.lock().steps
    }

    /// Storage objects that no member names (a file being created, or what
    /// a crash left): for checks that nothing leaks beyond what is open.
    pub fn unreferenced(&self) -> Vec<String> {
        let s = self.lock();
        let named: std::collections::HashSet<&String> = s
            .objects
            .values()
            .filter_map(|o| match o {
                Object::Group { members, .. } => Some(members.values().map(|(u, _)| u)),
                Object::File { .. } => None,
            })
            .flatten()
            .collect();
        s.objects
            .keys()
            .filter(|u| **u != self.root && !named.contains(u))
            .cloned()
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }

    fn tick(&self) -> u64 {
        self.inner.tick()
    }

    fn stamp(&self, attrs: &mut Attrs) {
        self.inner.stamp(attrs)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next time (ms): the wall clock's, as the registry stamps
    /// changes, but strictly increasing.
    fn tick(&self) -> u64 {
        let now = crate::registry::file_array::now_ms();
        let next = |last: u64| last.max(now.saturating_sub(1)) + 1;
        let last = self
            .clock_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(next(c)))
            .unwrap_or_else(|c| c);
        next(last)
    }

    /// Counts one change; an error when the daemon is "dead".
    fn step(s: &mut State, what: &str, uri: &str) -> Result<()> {
        let n = s.steps;
        if s.crash_at.is_some_and(|k| n >= k) {
            return Err(Error::Corrupt {
                uri: uri.to_string(),
                reason: format!("injected crash at step {n} ({what})"),
            });
        }
        s.steps += 1;
        Ok(())
    }

    fn missing(uri: &str) -> Error {
        Error::Corrupt {
            uri: uri.to_string(),
            reason: "does not exist".into(),
        }
    }

    fn group_mut<'a>(s: &'a mut State, uri: &str) -> Result<(&'a mut Members, &'a mut Attrs)> {
        match s.objects.get_mut(uri) {
            Some(Object::Group { members, attrs }) => Ok((members, attrs)),
            Some(_) => Err(Error::NotADirectory { uri: uri.to_string() }),
            None => Err(Inner::missing(uri)),
        }
    }

    fn stamp(&self, attrs: &mut Attrs) {
        let ns = Some(self.tick() * 1_000_000);
        attrs.mtime_ns = ns;
        attrs.ctime_ns = ns;
    }

    fn commit_version(&self, uri: &str, bytes: Vec<u8>, kind: &FileKind, written: Attrs) -> Result<u64> {
        let mut s = self.lock();
        Inner::step(&mut s, "commit", uri)?;
        let now = self.tick();
        match s.objects.get_mut(uri) {
            Some(Object::File {
                versions,
                kind: k,
                attrs,
            }) => {
                let ts = versions.last().map_or(now, |(t, _)| now.max(t + 1));
                versions.push((ts, std::sync::Arc::new(bytes)));
                *k = Some(kind.name().to_string());
                let kept = Attrs {
                    mtime_ns: written.mtime_ns,
                    atime_ns: written.atime_ns,
                    ctime_ns: Some(written.ctime_ns.unwrap_or(ts.saturating_mul(1_000_000))),
                    ..attrs.with(&written)
                };
                *attrs = kept;
                Ok(ts)
            }
            _ => Err(Inner::missing(uri)),
        }
    }
}

/// One version of an in-memory file.
struct MemVersion {
    uri: String,
    meta: FileMeta,
    bytes: std::sync::Arc<Vec<u8>>,
}

impl StoredVersion for MemVersion {
    fn meta(&self) -> &FileMeta {
        &self.meta
    }

    fn tile_bytes(&self) -> u64 {
        TILE_BYTES
    }

    fn uri(&self) -> &str {
        &self.uri
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let len = self.bytes.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let n = (len - offset).min(buf.len() as u64) as usize;
        buf[..n].copy_from_slice(&self.bytes[offset as usize..offset as usize + n]);
        Ok(n)
    }
}

/// A version being written into a [`MemStore`].
struct MemWriter {
    store: Arc<Inner>,
    uri: String,
    size: u64,
    bytes: Vec<u8>,
    attrs: Attrs,
}

impl VersionWriter for MemWriter {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.bytes.len() as u64 + data.len() as u64 > self.size {
            return Err(Error::SizeMismatch {
                uri: self.uri.clone(),
                written: self.bytes.len() as u64 + data.len() as u64,
                expected: self.size,
            });
        }
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn set_attrs(&mut self, attrs: Attrs) {
        self.attrs = attrs;
    }

    fn commit(self: Box<Self>, kind: &FileKind) -> Result<Committed> {
        if self.bytes.len() as u64 != self.size {
            return Err(Error::SizeMismatch {
                uri: self.uri.clone(),
                written: self.bytes.len() as u64,
                expected: self.size,
            });
        }
        let timestamp = self.store.commit_version(&self.uri, self.bytes, kind, self.attrs)?;
        Ok(Committed { timestamp, meta: None })
    }
}

impl Store for MemStore {
    fn resolve(&self, uri: &str) -> Result<Option<Entry>> {
        let s = self.lock();
        Ok(s.objects.get(uri).map(|o| Entry {
            name: last_component(uri).to_string(),
            uri: uri.to_string(),
            storage: match o {
                Object::Group { .. } => Storage::Group,
                Object::File { .. } => Storage::Array,
            },
        }))
    }

    fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        let mut s = self.lock();
        let (members, _) = Inner::group_mut(&mut s, &dir.uri)?;
        Ok(members
            .iter()
            .map(|(name, (uri, storage))| Entry {
                name: name.clone(),
                uri: uri.clone(),
                storage: *storage,
            })
            .collect())
    }

    fn lookup(&self, dir: &Entry, name: &str) -> Result<Option<Entry>> {
        Ok(self.list(dir)?.into_iter().find(|e| e.name == name))
    }

    fn node(&self, entry: &Entry) -> Result<Node> {
        let s = self.lock();
        match s.objects.get(&entry.uri) {
            Some(Object::Group { attrs, .. }) => Ok(Node::Dir(*attrs)),
            Some(Object::File { versions, kind, attrs }) => match versions.last() {
                Some((ts, bytes)) => Ok(Node::File(FileMeta {
                    size: bytes.len() as u64,
                    timestamp: Some(*ts),
                    kind: kind.clone(),
                    tensors: None,
                    attrs: *attrs,
                })),
                None => Err(Error::Corrupt {
                    uri: entry.uri.clone(),
                    reason: "no committed version (an unfinished write?)".into(),
                }),
            },
            // As the registry: a file array no longer there is not found.
            None => Err(Error::NotFound { uri: entry.uri.clone() }),
        }
    }

    fn array_version(&self, uri: &str) -> Result<u64> {
        match self.lock().objects.get(uri) {
            Some(Object::File { versions, .. }) => Ok(versions.last().map_or(0, |(t, _)| *t)),
            _ => Err(Inner::missing(uri)),
        }
    }

    fn tiledb_ml_model(&self, uri: &str, _options: &ModelOptions) -> Result<TileDbMlModel> {
        Err(Error::NotATileDbMlModel {
            uri: uri.to_string(),
            reason: "the in-memory store holds no TileDB-ML arrays".into(),
        })
    }

    fn history(&self, uri: &str) -> Result<History> {
        let s = self.lock();
        let Some(Object::File { versions, kind, .. }) = s.objects.get(uri) else {
            return Err(Inner::missing(uri));
        };
        let versions = versions
            .iter()
            .map(|(t, bytes)| Version {
                timestamp: *t,
                meta: FileMeta {
                    size: bytes.len() as u64,
                    timestamp: Some(*t),
                    kind: kind.clone(),
                    tensors: None,
                    attrs: Attrs::default(),
                },
            })
            .collect();
        Ok(History {
            versions,
            tags: Vec::new(),
        })
    }

    fn open_past_version(&self, uri: &str, meta: FileMeta) -> Result<Box<dyn StoredVersion>> {
        self.open_version(uri, meta)
    }

    fn open_version(&self, uri: &str, meta: FileMeta) -> Result<Box<dyn StoredVersion>> {
        let s = self.lock();
        let Some(Object::File { versions, .. }) = s.objects.get(uri) else {
            return Err(Error::NotFound { uri: uri.to_string() });
        };
        let bytes = versions
            .iter()
            .find(|(t, _)| Some(*t) == meta.timestamp)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| Error::Corrupt {
                uri: uri.to_string(),
                reason: format!("no version {:?}", meta.timestamp),
            })?;
        Ok(Box::new(MemVersion {
            uri: uri.to_string(),
            meta,
            bytes,
        }))
    }

    fn new_child_uri(&self, dir: &Entry, name: &str) -> Result<String> {
        let s = self.lock();
        let base = storage_name(name);
        let named = |uri: &str| {
            s.objects.values().any(|o| match o {
                Object::Group { members, .. } => members.values().any(|(u, _)| u == uri),
                Object::File { .. } => false,
            })
        };
        let mut uri = join(&dir.uri, &base);
        let mut n = 1u32;
        while s.objects.contains_key(&uri) || named(&uri) {
            uri = join(&dir.uri, &format!("{base}~{n}"));
            n += 1;
        }
        Ok(uri)
    }

    fn create_file(&self, name: &str, uri: &str) -> Result<Entry> {
        let mut s = self.lock();
        Inner::step(&mut s, "create array", uri)?;
        if s.objects.contains_key(uri) {
            return Err(Error::AlreadyExists { uri: uri.to_string() });
        }
        s.objects.insert(
            uri.to_string(),
            Object::File {
                versions: Vec::new(),
                kind: None,
                attrs: Attrs::default(),
            },
        );
        Ok(Entry {
            name: name.to_string(),
            uri: uri.to_string(),
            storage: Storage::Array,
        })
    }

    fn begin_version(&self, uri: &str, _name: &str, size: u64) -> Result<Box<dyn VersionWriter>> {
        Ok(Box::new(MemWriter {
            store: self.inner.clone(),
            uri: uri.to_string(),
            size,
            bytes: Vec::new(),
            attrs: Attrs::default(),
        }))
    }

    fn mkdir(&self, dir: &Entry, name: &str, attrs: &Attrs) -> Result<Entry> {
        if self.lookup(dir, name)?.is_some() {
            return Err(Error::AlreadyExists {
                uri: join(&dir.uri, name),
            });
        }
        let uri = self.new_child_uri(dir, name)?;
        {
            let mut s = self.lock();
            Inner::step(&mut s, "create group", &uri)?;
            s.objects.insert(
                uri.clone(),
                Object::Group {
                    members: BTreeMap::new(),
                    attrs: *attrs,
                },
            );
        }
        let entry = Entry {
            name: name.to_string(),
            uri,
            storage: Storage::Group,
        };
        self.link(dir, &entry)?;
        Ok(entry)
    }

    fn link(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        let mut s = self.lock();
        Inner::step(&mut s, "link", &dir.uri)?;
        let (members, _) = Inner::group_mut(&mut s, &dir.uri)?;
        if members.contains_key(&entry.name) {
            return Err(Error::AlreadyExists {
                uri: join(&dir.uri, &entry.name),
            });
        }
        members.insert(entry.name.clone(), (entry.uri.clone(), entry.storage));
        let (_, attrs) = Inner::group_mut(&mut s, &dir.uri)?;
        self.stamp(attrs);
        Ok(())
    }

    fn replace_member(&self, dir: &Entry, old: &Entry, new: &Entry) -> Result<()> {
        let mut s = self.lock();
        Inner::step(&mut s, "replace member", &dir.uri)?;
        let (members, attrs) = Inner::group_mut(&mut s, &dir.uri)?;
        if members.remove(&old.name).is_none() {
            return Err(Inner::missing(&join(&dir.uri, &old.name)));
        }
        members.insert(new.name.clone(), (new.uri.clone(), new.storage));
        self.stamp(attrs);
        Ok(())
    }

    fn unlink(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        let mut s = self.lock();
        Inner::step(&mut s, "unlink", &dir.uri)?;
        let (members, attrs) = Inner::group_mut(&mut s, &dir.uri)?;
        if members.remove(&entry.name).is_none() {
            return Err(Inner::missing(&join(&dir.uri, &entry.name)));
        }
        self.stamp(attrs);
        Ok(())
    }

    fn is_empty_dir(&self, dir: &Entry) -> Result<bool> {
        Ok(self.list(dir)?.is_empty())
    }

    fn retire(&self, _dir: &Entry, entry: &Entry) -> Result<()> {
        self.delete_storage(entry)
    }

    fn set_aside(&self, _dir: &Entry, entry: &Entry) -> Result<String> {
        // Every directory here is a group: nothing is named by where it is.
        Err(Error::Unsupported {
            uri: entry.uri.clone(),
            what: "a file set aside (plain directories only)",
        })
    }

    fn put_back(&self, entry: &Entry, _aside: &str) -> Result<()> {
        Err(Error::Unsupported {
            uri: entry.uri.clone(),
            what: "a file set aside (plain directories only)",
        })
    }

    fn delete_storage(&self, entry: &Entry) -> Result<()> {
        let mut s = self.lock();
        Inner::step(&mut s, "delete", &entry.uri)?;
        s.objects
            .remove(&entry.uri)
            .map(|_| ())
            .ok_or_else(|| Inner::missing(&entry.uri))
    }

    fn rename(
        &self,
        dir: &Entry,
        entry: &Entry,
        new_dir: &Entry,
        new_name: &str,
        replaced: Option<&Entry>,
    ) -> Result<Entry> {
        let moved = Entry {
            name: new_name.to_string(),
            uri: entry.uri.clone(),
            storage: entry.storage,
        };
        {
            let mut s = self.lock();
            Inner::step(&mut s, "rename", &new_dir.uri)?;
            let (members, attrs) = Inner::group_mut(&mut s, &new_dir.uri)?;
            if let Some(old) = replaced {
                members.remove(&old.name);
            }
            if dir.uri == new_dir.uri {
                members.remove(&entry.name);
            }
            members.insert(moved.name.clone(), (moved.uri.clone(), moved.storage));
            self.stamp(attrs);
        }
        if dir.uri != new_dir.uri {
            self.unlink(dir, entry)?;
        }
        Ok(moved)
    }

    fn set_attrs(&self, entry: &Entry, change: &Attrs) -> Result<Attrs> {
        let mut s = self.lock();
        Inner::step(&mut s, "set attributes", &entry.uri)?;
        let stored = Attrs {
            ctime_ns: Some(self.tick() * 1_000_000),
            ..*change
        };
        match s.objects.get_mut(&entry.uri) {
            Some(Object::Group { attrs, .. } | Object::File { attrs, .. }) => {
                *attrs = attrs.with(&stored);
                Ok(stored)
            }
            None => Err(Inner::missing(&entry.uri)),
        }
    }

    fn dir_stats(&self, _dir: &Entry, children: &[Entry]) -> Result<Option<Summaries>> {
        // As the registry's: a group with nothing stored is known, else a
        // stat kept for its exact state is, else it gets a label naming
        // that state.
        let s = self.lock();
        let mut out = Summaries::default();
        for child in children {
            let Some(Object::Group { members, attrs }) = s.objects.get(&child.uri) else {
                continue;
            };
            if members.is_empty() && *attrs == Attrs::default() {
                out.known.insert(child.uri.clone(), DirStat::EMPTY);
                continue;
            }
            let key = format!("{} {members:?} {attrs:?}", child.uri);
            match s.dir_stats.get(&key) {
                Some(stat) => {
                    out.known.insert(child.uri.clone(), *stat);
                }
                None => {
                    out.unknown.insert(child.uri.clone(), StatLabel::new(key));
                }
            }
        }
        Ok(Some(out))
    }

    fn save_dir_stat(&self, _dir: &Entry, label: &StatLabel, stat: &DirStat) -> Result<()> {
        self.lock().dir_stats.insert(label.key().to_string(), *stat);
        Ok(())
    }

    fn dir_changed_ms(&self, dir: &Entry) -> Option<u64> {
        // Every change of a group's members stamps its times (and right
        // after one, which is when this is asked, its ctime is that stamp).
        match self.lock().objects.get(&dir.uri) {
            Some(Object::Group { attrs, .. }) => attrs.ctime_ns.map(|ns| ns / 1_000_000),
            _ => None,
        }
    }
}
