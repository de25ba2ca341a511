//! The store over the TileDB registry: each call is the registry's own.

use super::{Store, StoredVersion, VersionWriter};
use crate::registry::tiledb_ml::{ModelOptions, TileDbMlModel};
use crate::registry::{
    Attrs, Committed, DirStat, Entry, FileArray, FileKind, FileMeta, FileWriter, History, NameSlot, Node, Registry,
    Result, StatLabel, Summaries,
};

impl StoredVersion for FileArray {
    fn meta(&self) -> &FileMeta {
        FileArray::meta(self)
    }

    fn tile_bytes(&self) -> u64 {
        FileArray::tile_bytes(self)
    }

    fn uri(&self) -> &str {
        FileArray::uri(self)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        FileArray::read_at(self, offset, buf)
    }

    fn read_append(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<usize> {
        FileArray::read_append(self, offset, len, out)
    }
}

impl VersionWriter for FileWriter {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        FileWriter::write(self, data)
    }

    fn written(&self) -> u64 {
        FileWriter::written(self)
    }

    fn set_attrs(&mut self, attrs: Attrs) {
        FileWriter::set_attrs(self, attrs)
    }

    fn commit(self: Box<Self>, kind: &FileKind) -> Result<Committed> {
        FileWriter::commit(*self, kind)
    }
}

impl Store for Registry {
    fn resolve(&self, uri: &str) -> Result<Option<Entry>> {
        Registry::resolve(self, uri)
    }

    fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        Registry::list(self, dir)
    }

    fn lookup(&self, dir: &Entry, name: &str) -> Result<Option<Entry>> {
        Registry::lookup(self, dir, name)
    }

    fn node(&self, entry: &Entry) -> Result<Node> {
        Registry::node(self, entry)
    }

    fn dir_with_entries(&self, dir: &Entry) -> Result<(Attrs, Vec<Entry>)> {
        Registry::dir_with_entries(self, dir)
    }

    fn dir_stats(&self, dir: &Entry, children: &[Entry]) -> Result<Option<Summaries>> {
        Registry::dir_stats(self, dir, children)
    }

    fn save_dir_stat(&self, dir: &Entry, label: &StatLabel, stat: &DirStat) -> Result<()> {
        Registry::save_dir_stat(self, dir, label, stat)
    }

    fn array_version(&self, uri: &str) -> Result<u64> {
        Registry::array_version(self, uri)
    }

    fn tiledb_ml_model(&self, uri: &str, options: &ModelOptions) -> Result<TileDbMlModel> {
        TileDbMlModel::open_with(self.context(), uri, self.snapshot_time(), options)
    }

    fn open_version(&self, uri: &str, meta: FileMeta) -> Result<Box<dyn StoredVersion>> {
        Ok(Box::new(FileArray::open_version(self.context(), uri, meta)?))
    }

    fn history(&self, uri: &str) -> Result<History> {
        Registry::history(self, uri)
    }

    fn open_past_version(&self, uri: &str, meta: FileMeta) -> Result<Box<dyn StoredVersion>> {
        Ok(Box::new(FileArray::open_past(self.context(), uri, meta)?))
    }

    fn new_child_uri(&self, dir: &Entry, name: &str) -> Result<String> {
        Registry::new_child_uri(self, dir, name)
    }

    fn claim_name(&self, dir: &Entry, name: &str) -> Result<NameSlot> {
        Registry::claim_name(self, dir, name)
    }

    fn create_file(&self, name: &str, uri: &str) -> Result<Entry> {
        Registry::create_file_at(self, name, uri)
    }

    fn begin_version(&self, uri: &str, name: &str, size: u64) -> Result<Box<dyn VersionWriter>> {
        Ok(Box::new(FileWriter::begin(self.context(), uri, name, size)?))
    }

    fn begin_first_version(&self, uri: &str, name: &str, size: u64) -> Result<Box<dyn VersionWriter>> {
        Ok(Box::new(FileWriter::begin_first(self.context(), uri, name, size)?))
    }

    fn mkdir(&self, dir: &Entry, name: &str, attrs: &Attrs) -> Result<Entry> {
        Registry::mkdir(self, dir, name, attrs)
    }

    fn link(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        Registry::link(self, dir, entry)
    }

    fn replace_member(&self, dir: &Entry, old: &Entry, new: &Entry) -> Result<()> {
        Registry::replace_member(self, dir, old, new)
    }

    fn unlink(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        Registry::remove(self, dir, entry)
    }

    fn is_empty_dir(&self, dir: &Entry) -> Result<bool> {
        Registry::is_empty_dir(self, dir)
    }

    fn delete_storage(&self, entry: &Entry) -> Result<()> {
        Registry::delete_storage(self, entry)
    }

    fn retire(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        Registry::retire(self, dir, entry)
    }

    fn rename(
        &self,
        dir: &Entry,
        entry: &Entry,
        new_dir: &Entry,
        new_name: &str,
        replaced: Option<&Entry>,
    ) -> Result<Entry> {
        Registry::rename(self, dir, entry, new_dir, new_name, replaced)
    }

    fn set_aside(&self, dir: &Entry, entry: &Entry) -> Result<String> {
        Registry::set_aside(self, dir, entry)
    }

    fn put_back(&self, entry: &Entry, aside: &str) -> Result<()> {
        Registry::put_back(self, entry, aside)
    }

    fn set_attrs(&self, entry: &Entry, change: &Attrs) -> Result<Attrs> {
        Registry::set_attrs(self, entry, change)
    }

    fn dir_changed_ms(&self, dir: &Entry) -> Option<u64> {
        self.last_change_ms(&dir.uri)
    }
}
