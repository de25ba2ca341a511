//! A store that passes every call to another and fails from its n-th
//! change on, as if the daemon died right before that change: the crash
//! tests run each multi-step operation over real TileDB with the failure at
//! each step in turn, restart, and check every name.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Store, StoredVersion, VersionWriter};
use crate::registry::tiledb_ml::{ModelOptions, TileDbMlModel};
use crate::registry::{
    Attrs, Committed, DirStat, Entry, Error, FileKind, FileMeta, History, NameSlot, Node, Result, StatLabel, Summaries,
};

/// Counts changes and refuses those from `crash_at` on.
#[derive(Default)]
struct Countdown {
    steps: AtomicU64,
    /// The first change that fails; `u64::MAX` for none.
    crash_at: AtomicU64,
}

impl Countdown {
    fn step(&self, what: &str, uri: &str) -> Result<()> {
        let n = self.steps.fetch_add(1, Ordering::SeqCst);
        if n >= self.crash_at.load(Ordering::SeqCst) {
            return Err(Error::Corrupt {
                uri: uri.to_string(),
                reason: format!("injected crash at step {n} ({what})"),
            });
        }
        Ok(())
    }
}

/// `S` with changes failing from a chosen step on.
pub struct FailingStore<S> {
    inner: S,
    countdown: Arc<Countdown>,
}

impl<S: Store> FailingStore<S> {
    pub fn new(inner: S) -> Self {
        let countdown = Countdown::default();
        countdown.crash_at.store(u64::MAX, Ordering::SeqCst);
        FailingStore {
            inner,
            countdown: Arc::new(countdown),
        }
    }

    /// Makes change number `step` (counted from now) and all later ones
    /// fail; `None` lets them through.
    pub fn crash_at(&self, step: Option<u64>) {
        let now = self.countdown.steps.load(Ordering::SeqCst);
        let at = step.map_or(u64::MAX, |k| now + k);
        self.countdown.crash_at.store(at, Ordering::SeqCst);
    }

    /// Changes attempted so far.
    pub fn steps(&self) -> u64 {
        self.countdown.steps.load(Ordering::SeqCst)
    }

    /// Whether the crash happened.
    pub fn crashed(&self) -> bool {
        self.steps() > self.countdown.crash_at.load(Ordering::SeqCst)
    }
}

struct FailingWriter {
    inner: Box<dyn VersionWriter>,
    countdown: Arc<Countdown>,
    uri: String,
}

impl VersionWriter for FailingWriter {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.inner.write(data)
    }

    fn written(&self) -> u64 {
        self.inner.written()
    }

    fn set_attrs(&mut self, attrs: Attrs) {
        self.inner.set_attrs(attrs)
    }

    fn commit(self: Box<Self>, kind: &FileKind) -> Result<Committed> {
        self.countdown.step("commit", &self.uri)?;
        self.inner.commit(kind)
    }
}

impl<S: Store> Store for FailingStore<S> {
    fn resolve(&self, uri: &str) -> Result<Option<Entry>> {
        self.inner.resolve(uri)
    }

    fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        self.inner.list(dir)
    }

    fn lookup(&self, dir: &Entry, name: &str) -> Result<Option<Entry>> {
        self.inner.lookup(dir, name)
    }

    fn node(&self, entry: &Entry) -> Result<Node> {
        self.inner.node(entry)
    }

    fn array_version(&self, uri: &str) -> Result<u64> {
        self.inner.array_version(uri)
    }

    fn tiledb_ml_model(&self, uri: &str, options: &ModelOptions) -> Result<TileDbMlModel> {
        self.inner.tiledb_ml_model(uri, options)
    }

    fn open_version(&self, uri: &str, meta: FileMeta) -> Result<Box<dyn StoredVersion>> {
        self.inner.open_version(uri, meta)
    }

    fn history(&self, uri: &str) -> Result<History> {
        self.inner.history(uri)
    }

    fn open_past_version(&self, uri: &str, meta: FileMeta) -> Result<Box<dyn StoredVersion>> {
        self.inner.open_past_version(uri, meta)
    }

    fn new_child_uri(&self, dir: &Entry, name: &str) -> Result<String> {
        self.inner.new_child_uri(dir, name)
    }

    fn dir_with_entries(&self, dir: &Entry) -> Result<(Attrs, Vec<Entry>)> {
        self.inner.dir_with_entries(dir)
    }

    fn dir_stats(&self, dir: &Entry, children: &[Entry]) -> Result<Option<Summaries>> {
        self.inner.dir_stats(dir, children)
    }

    fn save_dir_stat(&self, dir: &Entry, label: &StatLabel, stat: &DirStat) -> Result<()> {
        self.inner.save_dir_stat(dir, label, stat)
    }

    fn claim_name(&self, dir: &Entry, name: &str) -> Result<NameSlot> {
        self.inner.claim_name(dir, name)
    }

    fn create_file(&self, name: &str, uri: &str) -> Result<Entry> {
        self.countdown.step("create file", uri)?;
        self.inner.create_file(name, uri)
    }

    fn begin_version(&self, uri: &str, name: &str, size: u64) -> Result<Box<dyn VersionWriter>> {
        Ok(Box::new(FailingWriter {
            inner: self.inner.begin_version(uri, name, size)?,
            countdown: self.countdown.clone(),
            uri: uri.to_string(),
        }))
    }

    fn begin_first_version(&self, uri: &str, name: &str, size: u64) -> Result<Box<dyn VersionWriter>> {
        Ok(Box::new(FailingWriter {
            inner: self.inner.begin_first_version(uri, name, size)?,
            countdown: self.countdown.clone(),
            uri: uri.to_string(),
        }))
    }

    fn mkdir(&self, dir: &Entry, name: &str, attrs: &Attrs) -> Result<Entry> {
        self.countdown.step("mkdir", &dir.uri)?;
        self.inner.mkdir(dir, name, attrs)
    }

    fn link(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        self.countdown.step("link", &dir.uri)?;
        self.inner.link(dir, entry)
    }

    fn replace_member(&self, dir: &Entry, old: &Entry, new: &Entry) -> Result<()> {
        self.countdown.step("replace member", &dir.uri)?;
        self.inner.replace_member(dir, old, new)
    }

    fn unlink(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        self.countdown.step("unlink", &dir.uri)?;
        self.inner.unlink(dir, entry)
    }

    fn is_empty_dir(&self, dir: &Entry) -> Result<bool> {
        self.inner.is_empty_dir(dir)
    }

    fn delete_storage(&self, entry: &Entry) -> Result<()> {
        self.countdown.step("delete storage", &entry.uri)?;
        self.inner.delete_storage(entry)
    }

    fn retire(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        self.countdown.step("retire storage", &entry.uri)?;
        self.inner.retire(dir, entry)
    }

    fn set_aside(&self, dir: &Entry, entry: &Entry) -> Result<String> {
        self.countdown.step("set aside", &entry.uri)?;
        self.inner.set_aside(dir, entry)
    }

    fn put_back(&self, entry: &Entry, aside: &str) -> Result<()> {
        self.countdown.step("put back", &entry.uri)?;
        self.inner.put_back(entry, aside)
    }

    fn rename(
        &self,
        dir: &Entry,
        entry: &Entry,
        new_dir: &Entry,
        new_name: &str,
        replaced: Option<&Entry>,
    ) -> Result<Entry> {
        self.countdown.step("rename", &new_dir.uri)?;
        self.inner.rename(dir, entry, new_dir, new_name, replaced)
    }

    fn set_attrs(&self, entry: &Entry, change: &Attrs) -> Result<Attrs> {
        self.countdown.step("set attributes", &entry.uri)?;
        self.inner.set_attrs(entry, change)
    }

    fn dir_changed_ms(&self, dir: &Entry) -> Option<u64> {
        self.inner.dir_changed_ms(dir)
    }
}
