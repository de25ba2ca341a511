//! The registry as a tree: directories (TileDB groups, or plain VFS
//! directories holding TileDB objects) whose entries are file arrays,
//! subdirectories and other arrays. Listing, resolving a URI to an entry,
//! telling what an entry is, and creating, linking and removing entries.

use log::{debug, warn};

use crate::tiledb::{self, Array, Context, Group, GroupMode, MembersChange, MetaValue, ObjectType, Vfs};

use super::attrs::Attrs;
use super::error::{Error, Result};
use super::file_array::{self, FileMeta, now_ns};
use super::names::{invalid_name_reason, is_tiledb_reserved, last_component, storage_name};
use super::uri::{canonical, join, split_parent};

/// Array metadata key that marks a TileDB-ML model array.
pub const TILEDB_ML_FRAMEWORK_KEY: &str = "TILEDB_ML_MODEL_ML_FRAMEWORK";

/// How an entry is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// A TileDB group: entries are its named members.
    Group,
    /// A plain directory: entries are the TileDB objects and directories in it.
    PlainDir,
    /// A TileDB array.
    Array,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// Where the group, directory or array is.
    pub uri: String,
    pub storage: Storage,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        matches!(self.storage, Storage::Group | Storage::PlainDir)
    }

    /// Whether `other` stands for the same storage: the same URI, holding
    /// the same kind of object. A URI freed by a deletion (another mount's,
    /// or in a plain directory, where a name is its storage) may come back
    /// holding a directory where a file was.
    pub fn same_storage(&self, other: &Entry) -> bool {
        self.storage == other.storage && super::uri::same(&self.uri, &other.uri)
    }
}

/// What an entry holds, as far as modelfs is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A directory, with what tools stored of its attributes (nothing for
    /// plain directories).
    Dir(Attrs),
    /// A file array, at its latest committed version.
    File(FileMeta),
    /// A TileDB-ML model array, with its framework.
    TileDbMl { framework: String },
    /// An array modelfs does not show, and why.
    Other { reason: String },
}

/// What a name in a directory holds, for a change about to make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameSlot {
    /// The entry named so.
    Taken(Entry),
    /// Nothing: a storage URI where nothing is stored yet.
    Free(String),
}

/// A registry reached through one TileDB context.
pub struct Registry {
    ctx: Context,
    vfs: Vfs,
    /// Directory locks, recorded entries to merge, replaced list files to
    /// delete, and the listing caches (see [`super::compaction::Upkeep`]).
    pub(super) upkeep: std::sync::Arc<super::compaction::Upkeep>,
    /// Set on writable mounts: see [`Registry::tidy_directories_when_listed`].
    pub(super) tidying: Option<super::compaction::Tidying>,
    /// A snapshot's time (ms): arrays are read as of it. Its groups are
    /// read as of it through the context's `sm.group.timestamp_end` (see
    /// [`Registry::snapshot`]).
    at: Option<u64>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.upkeep.stop_worker();
        self.upkeep.merge_all_now(&self.ctx);
    }
}

impl Registry {
    pub fn new(ctx: Context) -> Result<Self> {
        let vfs = Vfs::new(&ctx)?;
        Ok(Registry {
            ctx,
            vfs,
            upkeep: Default::default(),
            tidying: None,
            at: None,
        })
    }

    /// The registry as it was at `at` (ms), for reading only: directories
    /// list the members they had then, files show the version current
    /// then, and a file's history ends there. `config` is the context's
    /// configuration; groups are read as of `at` through its
    /// `sm.group.timestamp_end`.
    pub fn snapshot(mut config: tiledb::Config, at: u64) -> Result<Self> {
        config.set("sm.group.timestamp_end", &at.to_string())?;
        let mut reg = Registry::new(Context::with_config(&config)?)?;
        reg.at = Some(at);
        Ok(reg)
    }

    /// The snapshot time, for a registry made by [`Registry::snapshot`].
    pub fn snapshot_time(&self) -> Option<u64> {
        self.at
    }

    /// Opens the array at `uri` for reading: with every write there is, or
    /// as of the snapshot time.
    fn open_array(&self, uri: &str) -> Result<Array> {
        match self.at {
            Some(at) => Array::open_at(&self.ctx, uri, tiledb::Mode::Read, Some(at)),
            None => Array::open_latest(&self.ctx, uri),
        }
        .map_err(|e| file_array::unless_removed(&self.ctx, uri, e))
    }

    /// The versions and tags of the file array at `uri` (up to the snapshot
    /// time in a snapshot).
    pub fn history(&self, uri: &str) -> Result<super::versions::History> {
        let history = super::versions::history(&self.ctx, &self.vfs, uri)?;
        Ok(match self.at {
            Some(at) => history.until(at),
            None => history,
        })
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    pub fn vfs(&self) -> &Vfs {
        &self.vfs
    }

    /// The entry at `uri`, found by walking group member names from the
    /// nearest plain ancestor, or `None` when nothing is there. A group or
    /// array stored right at `uri` but not a member of its parent group
    /// (made by another tool) is found too: the URI names it. So is a
    /// plain directory there (a folder of TileDB-ML arrays under a bucket
    /// whose root is a registry group), unless its name is one TileDB or
    /// modelfs keep their own files under.
    pub fn resolve(&self, uri: &str) -> Result<Option<Entry>> {
        self.resolve_as(uri, true)
    }

    /// [`Registry::resolve`]; `named`: `uri` is the one asked for, not an
    /// ancestor of it. A plain directory inside a group that does not list
    /// it is found only when named: what is made under an ancestor must be
    /// made a member, not hidden in an unlisted folder.
    fn resolve_as(&self, uri: &str, named: bool) -> Result<Option<Entry>> {
        if let Some((parent_uri, name)) = split_parent(uri)
            && let Some(parent) = self.resolve_as(&parent_uri, false)?
        {
            if parent.storage == Storage::Group {
                if let Some(entry) = self.lookup(&parent, &name)? {
                    return Ok(Some(entry));
                }
                let plain_named = named && !name.starts_with("__");
                return Ok(self
                    .probe(uri, &name)?
                    .filter(|e| e.storage != Storage::PlainDir || plain_named));
            }
            if parent.storage == Storage::Array {
                return Ok(None);
            }
        }
        self.probe(uri, last_component(uri))
    }

    /// What is stored at `uri`, named `name`, ignoring group membership.
    fn probe(&self, uri: &str, name: &str) -> Result<Option<Entry>> {
        let storage = match tiledb::object_type(&self.ctx, uri)? {
            ObjectType::Group => Storage::Group,
            ObjectType::Array if self.vfs.is_file(&removed_marker(uri))? => {
                debug!("{uri}: a file removed while open, not shown");
                return Ok(None);
            }
            ObjectType::Array => Storage::Array,
            ObjectType::Invalid if self.vfs.is_dir(uri)? => {
                if self.vfs.is_file(&removed_marker(uri))? {
                    debug!("{uri}: what a removed directory left, not shown");
                    return Ok(None);
                }
                Storage::PlainDir
            }
            ObjectType::Invalid => return Ok(None),
        };
        Ok(Some(Entry {
            name: name.to_string(),
            uri: uri.to_string(),
            storage,
        }))
    }

    /// The entries of directory `dir`, sorted by name. Entries whose names
    /// cannot be file names are left out with a warning.
    pub fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        let out = match dir.storage {
            Storage::Group => self.list_group(dir)?,
            Storage::PlainDir => self.list_plain(dir)?,
            Storage::Array => return Err(Error::NotADirectory { uri: dir.uri.clone() }),
        };
        Ok(sorted_unique(dir, out))
    }

    /// Directory `dir`'s attributes and entries (as [`Registry::node`] and
    /// [`Registry::list`]) from one open: opening a group reads its whole
    /// member list, so a `stat` that needs both (the link count counts
    /// subdirectories) pays once.
    pub fn dir_with_entries(&self, dir: &Entry) -> Result<(Attrs, Vec<Entry>)> {
        match dir.storage {
            Storage::Group => {
                let mut view = self.view(&dir.uri)?;
                let attrs = self.dir_attrs(&dir.uri, &mut view)?;
                let entries = self.group_entries(dir, &view)?;
                Ok((attrs, sorted_unique(dir, entries)))
            }
            Storage::PlainDir => Ok((Attrs::default(), self.list(dir)?)),
            Storage::Array => Err(Error::NotADirectory { uri: dir.uri.clone() }),
        }
    }

    fn list_group(&self, dir: &Entry) -> Result<Vec<Entry>> {
        let view = self.view(&dir.uri)?;
        self.group_entries(dir, &view)
    }

    /// Group `uri` as this registry reads it: its member list (cached while
    /// its list files stay the same) and the new and removed entries recorded beside.
    fn view(&self, uri: &str) -> Result<super::members::View> {
        super::members::view(&self.ctx, &self.vfs, &self.upkeep, uri, self.at)
    }

    /// The entries group `dir` (read as `view`) shows. In a snapshot older
    /// than the directory's kept member lists (see
    /// [`tiledb::HISTORY_KEPT`]), those of its oldest kept list that
    /// existed at the snapshot's time, with a warning.
    fn group_entries(&self, dir: &Entry, view: &super::members::View) -> Result<Vec<Entry>> {
        let out = self.group_entries_of(dir, &view.members.list, &view.records)?;
        self.snapshot_fallback(dir, view, out)
    }

    /// The entries shown of `members` and, over them, of `records` in
    /// order (a removal takes a name only while it names what was removed).
    fn group_entries_of(
        &self,
        dir: &Entry,
        members: &[tiledb::Member],
        records: &[super::journal::Record],
    ) -> Result<Vec<Entry>> {
        let mut out = self.members_shown(dir, members)?;
        for a in records {
            if let Some(reason) = invalid_name_reason(&a.name) {
                warn!("{}: recorded entry {:?} left out: name {reason}", dir.uri, a.name);
                continue;
            }
            let recorded = super::members::record_entry(&dir.uri, a);
            if a.removed {
                out.retain(|e| e.name != a.name || canonical(&e.uri) != canonical(&recorded.uri));
                continue;
            }
            out.retain(|e| e.name != a.name);
            if self.at.is_some() && tiledb::object_type(&self.ctx, &recorded.uri)? == ObjectType::Invalid {
                debug!(
                    "{}: recorded entry {:?} ({}) is no longer stored",
                    dir.uri, a.name, recorded.uri
                );
                continue;
            }
            out.push(recorded);
        }
        Ok(out)
    }

    /// In a snapshot older than the directory's kept member lists, `out`
    /// is empty: see [`Registry::group_entries`].
    fn snapshot_fallback(&self, dir: &Entry, view: &super::members::View, out: Vec<Entry>) -> Result<Vec<Entry>> {
        let Some(at) = self.at else { return Ok(out) };
        if !out.is_empty() {
            return Ok(out);
        }
        let lists = &view.lists;
        let Some(oldest) = lists.oldest().filter(|&o| o > at) else {
            return Ok(out);
        };
        warn!(
            "{}: its member lists before {} are compacted away; shown as of then, without the files made after the snapshot's time",
            dir.uri,
            super::version_time::format_ms(oldest)
        );
        let then = Group::open_at(&self.ctx, &dir.uri, GroupMode::Read, Some(oldest))?;
        let mut out = self.members_shown(dir, &then.members()?)?;
        out.retain(|e| {
            e.storage != Storage::Array
                || tiledb::fragments(&self.ctx, &e.uri).is_ok_and(|f| f.iter().any(|f| f.timestamp_range.0 <= at))
        });
        Ok(out)
    }

    /// The entry named `name` of group `dir` (read as `view`), found
    /// through the view's index: the cost does not grow with the entries.
    fn find_in_view(&self, dir: &Entry, view: &super::members::View, name: &str) -> Result<Option<Entry>> {
        let member = view.members.named(name).map(std::slice::from_ref).unwrap_or_default();
        let records: Vec<_> = view.records.iter().filter(|a| a.name == name).cloned().collect();
        Ok(self.group_entries_of(dir, member, &records)?.pop())
    }

    /// The members (of `dir`) that can be shown.
    fn members_shown(&self, dir: &Entry, members: &[tiledb::Member]) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for m in members.iter().cloned() {
            let name = m.name.clone().unwrap_or_else(|| last_component(&m.uri).to_string());
            if let Some(reason) = invalid_name_reason(&name) {
                warn!("{}: member {:?} ({}) left out: name {reason}", dir.uri, name, m.uri);
                continue;
            }
            let storage = match m.object_type {
                ObjectType::Group => Storage::Group,
                ObjectType::Array => Storage::Array,
                ObjectType::Invalid => {
                    warn!(
                        "{}: member {name:?} ({}) is neither an array nor a group; left out",
                        dir.uri, m.uri
                    );
                    continue;
                }
            };
            // A snapshot's member whose storage went since (freed by a
            // prune) is not shown.
            if self.at.is_some() && tiledb::object_type(&self.ctx, &m.uri)? == ObjectType::Invalid {
                debug!("{}: member {name:?} ({}) is no longer stored", dir.uri, m.uri);
                continue;
            }
            out.push(Entry {
                name,
                uri: m.uri,
                storage,
            });
        }
        Ok(out)
    }

    fn list_plain(&self, dir: &Entry) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for child in self.vfs.ls(&dir.uri)? {
            let name = last_component(&child).to_string();
            if let Some(reason) = invalid_name_reason(&name) {
                warn!("{}: {child} left out: name {reason}", dir.uri);
                continue;
            }
            let uri = join(&dir.uri, &name);
            match self.probe(&uri, &name)? {
                Some(e) => out.push(e),
                None => debug!("{uri}: a plain file, not shown"),
            }
        }
        Ok(out)
    }

    /// The entry named `name` in directory `dir`.
    pub fn lookup(&self, dir: &Entry, name: &str) -> Result<Option<Entry>> {
        match dir.storage {
            Storage::Group => {
                let view = self.view(&dir.uri)?;
                if self.at.is_some() {
                    return Ok(self.group_entries(dir, &view)?.into_iter().find(|e| e.name == name));
                }
                self.find_in_view(dir, &view, name)
            }
            Storage::PlainDir => {
                if invalid_name_reason(name).is_some() {
                    return Ok(None);
                }
                self.probe(&join(&dir.uri, name), name)
            }
            Storage::Array => Err(Error::NotADirectory { uri: dir.uri.clone() }),
        }
    }

    /// Tells what `entry` holds, reading the array's schema and metadata.
    pub fn node(&self, entry: &Entry) -> Result<Node> {
        match entry.storage {
            Storage::Group => {
                let mut view = self.view(&entry.uri)?;
                return Ok(Node::Dir(self.dir_attrs(&entry.uri, &mut view)?));
            }
            Storage::PlainDir => return Ok(Node::Dir(Attrs::default())),
            Storage::Array => {}
        }
        let mut array = self.open_array(&entry.uri)?;
        let schema = array.schema()?;
        let meta = array.metadata()?;
        match file_array::check_schema(&schema) {
            Ok(()) => Ok(Node::File(file_array::parse_meta(&entry.uri, &meta)?)),
            Err(reason) => match meta.iter().find(|(k, _)| k == TILEDB_ML_FRAMEWORK_KEY) {
                Some((_, v)) => Ok(Node::TileDbMl {
                    framework: v.as_str().unwrap_or("?").to_string(),
                }),
                None => Ok(Node::Other { reason }),
            },
        }
    }

    /// A storage URI for a new entry `name` in `dir` where nothing is
    /// stored yet: the escaped name, or the escaped name with `~N` appended
    /// when that is taken, by a current entry (a renamed one) or by
    /// anything else: an entry another mount of the same registry is
    /// writing right now (it becomes a member only at its first commit), or
    /// one a crashed write left. Such arrays are never removed here, since
    /// from one mount the two cannot be told apart.
    pub fn new_child_uri(&self, dir: &Entry, name: &str) -> Result<String> {
        match dir.storage {
            Storage::Group => self.free_child_uri(dir, name, &self.view(&dir.uri)?),
            _ => self.plain_free_uri(dir, name),
        }
    }

    /// [`plain_child_uri`] where nothing is stored yet. A folder a removed
    /// directory left there (not shown, see [`Registry::delete_group`])
    /// takes the name: a file's storage there would take what is in the
    /// folder with it when deleted.
    fn plain_free_uri(&self, dir: &Entry, name: &str) -> Result<String> {
        let uri = plain_child_uri(dir, name)?;
        if self.vfs.is_dir(&uri)? && !self.free_removed_file(&uri)? {
            return Err(Error::AlreadyExists { uri });
        }
        Ok(uri)
    }

    /// Deletes the array at `uri` if it is a file removed from a plain
    /// directory (marked, see [`Registry::remove`]) that no descriptor of
    /// this process holds: one a crash left, or whose remover is gone. The
    /// name is free then. A remover still holding it keeps it (`false`).
    fn free_removed_file(&self, uri: &str) -> Result<bool> {
        if !self.is_removed_leftover(uri)? {
            return Ok(false);
        }
        log::info!("{uri}: storage of a removed file, left by a crash or another mount, deleted");
        tiledb::object_remove(&self.ctx, uri)?;
        Ok(true)
    }

    /// The entry named `name` in `dir`, or a storage URI for a new one
    /// there (see [`Registry::new_child_uri`]), from one listing.
    pub fn claim_name(&self, dir: &Entry, name: &str) -> Result<NameSlot> {
        if dir.storage != Storage::Group {
            return Ok(match self.lookup(dir, name)? {
                Some(e) => NameSlot::Taken(e),
                None => NameSlot::Free(self.plain_free_uri(dir, name)?),
            });
        }
        let view = self.view(&dir.uri)?;
        if let Some(e) = self.find_in_view(dir, &view, name)? {
            return Ok(NameSlot::Taken(e));
        }
        Ok(NameSlot::Free(self.free_child_uri(dir, name, &view)?))
    }

    fn free_child_uri(&self, dir: &Entry, name: &str, view: &super::members::View) -> Result<String> {
        let base = storage_name(name);
        // Members come back as `file:///...` where `dir.uri` may be a plain
        // path: compare both in one spelling. Any folder already there is
        // taken, a TileDB object or not (another tool's files, a delete cut
        // short): nothing is written into it. On S3 that is one listing,
        // where asking for an object type was six requests.
        let taken = |uri: &str| -> Result<bool> {
            Ok(view.members.names_storage(uri)
                || view
                    .records
                    .iter()
                    .any(|a| canonical(&super::members::added_uri(&dir.uri, a)) == canonical(uri))
                || self.vfs.is_dir(uri)?)
        };
        let mut uri = join(&dir.uri, &base);
        let mut n = 1u32;
        while taken(&uri)? {
            uri = join(&dir.uri, &format!("{base}~{n}"));
            n += 1;
        }
        check_path_length(&uri)?;
        Ok(uri)
    }

    fn check_new_name(name: &str) -> Result<()> {
        match invalid_name_reason(name) {
            Some(reason) => Err(Error::InvalidName {
                name: name.to_string(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Creates directory `name` in `dir` as a group with `attrs` and links it.
    pub fn mkdir(&self, dir: &Entry, name: &str, attrs: &Attrs) -> Result<Entry> {
        Self::check_new_name(name)?;
        let uri = if dir.storage == Storage::Group {
            match self.claim_name(dir, name)? {
                NameSlot::Taken(e) => return Err(Error::AlreadyExists { uri: e.uri }),
                NameSlot::Free(uri) => uri,
            }
        } else {
            if let Some(e) = self.lookup(dir, name)? {
                return Err(Error::AlreadyExists { uri: e.uri });
            }
            // Not `plain_free_uri`: a group may be made over what a
            // removed directory left, never over a file removed while open.
            let uri = plain_child_uri(dir, name)?;
            // The lookup found nothing: anything there is marked removed.
            if self.vfs.is_file(&removed_marker(&uri))?
                && tiledb::object_type(&self.ctx, &uri)? == ObjectType::Array
                && !self.free_removed_file(&uri)?
            {
                return Err(Error::AlreadyExists { uri });
            }
            uri
        };
        Group::create(&self.ctx, &uri)?;
        if dir.storage != Storage::Group {
            // Made over a folder a removed directory left (a group keeps
            // whatever else its folder holds): the folder shows again.
            let marker = removed_marker(&uri);
            if self.vfs.is_file(&marker)? {
                self.vfs.remove_file(&marker)?;
            }
        }
        let entry = Entry {
            name: name.to_string(),
            uri,
            storage: Storage::Group,
        };
        // Stored as given, times too: the caller shows these at once.
        if !attrs.is_empty() {
            put_group_attrs(&self.ctx, &entry.uri, attrs)?;
        }
        self.link(dir, &entry)?;
        Ok(entry)
    }

    /// Creates an empty, unlinked file array for a new file `name` in `dir`.
    /// It becomes visible when [`Registry::link`] adds it after its first
    /// commit.
    pub fn create_file(&self, dir: &Entry, name: &str) -> Result<Entry> {
        Self::check_new_name(name)?;
        let uri = self.new_child_uri(dir, name)?;
        self.create_file_at(name, &uri)
    }

    /// Creates an empty, unlinked file array named `name` at `uri`.
    pub fn create_file_at(&self, name: &str, uri: &str) -> Result<Entry> {
        Self::check_new_name(name)?;
        file_array::create(&self.ctx, uri)?;
        Ok(Entry {
            name: name.to_string(),
            uri: uri.to_string(),
            storage: Storage::Array,
        })
    }

    /// Makes `entry` a member of `dir` when `dir` is a group (entries of a
    /// plain directory are found by listing it).
    /// In a mount, the new member is recorded in the directory's journal,
    /// which costs the same however many entries it has, and merged into
    /// its member list soon after (see [`super::journal`]).
    pub fn link(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        if dir.storage != Storage::Group {
            return Ok(());
        }
        // A new file renamed to another directory while it streamed into
        // an array of its own, made in its first directory's folder.
        if deleted_key(&dir.uri, entry).is_none() {
            self.mark_moved_out(entry)?;
        }
        if !self.upkeep.journaling() {
            return self.change_members(&dir.uri, |g| self.add_member(g, dir, entry));
        }
        let member = super::members::member_uri(&dir.uri, &entry.uri);
        self.record(
            dir,
            &super::journal::Body::new(&entry.name, member, entry.storage, false),
        )
    }

    /// Records `body` in group `dir`'s journal and has it merged soon.
    fn record(&self, dir: &Entry, body: &super::journal::Body) -> Result<()> {
        // Without the directory's lock: a merge running now did not read
        // this record, which no marker names, so it counts until the next.
        // Stamped after the newest list, so the directory's mtime moves on.
        let newest = tiledb::list_files(&self.vfs, &dir.uri)?.newest().unwrap_or(0);
        let time = self.upkeep.record_stamp(&dir.uri, newest);
        super::journal::write(&self.vfs, &dir.uri, time, body)?;
        self.upkeep.merge_later(&self.ctx, &dir.uri);
        Ok(())
    }

    fn add_member(&self, group: &mut Group, dir: &Entry, entry: &Entry) -> Result<()> {
        let (uri, relative) = super::members::member_uri(&dir.uri, &entry.uri);
        let ty = super::members::object_type(entry.storage);
        group.add_member(&uri, relative, &entry.name, ty)?;
        Ok(())
    }

    /// Puts `new` in `dir` in place of `old` (same name) in one group change,
    /// so readers see one or the other, never neither.
    pub fn replace_member(&self, dir: &Entry, old: &Entry, new: &Entry) -> Result<()> {
        if dir.storage != Storage::Group {
            return Ok(());
        }
        self.change_members(&dir.uri, |g| {
            g.remove_member(&old.name)?;
            self.add_member(g, dir, new)?;
            if !canonical(&old.uri).eq(canonical(&new.uri)) {
                mark_deleted(g, &dir.uri, old)?;
            }
            Ok(())
        })?;
        self.metadata_written(&dir.uri);
        Ok(())
    }

    /// Deletes `entry` from `dir`: the member goes and, in the same group
    /// write, the group records when (`modelfs.deleted.<storage name>`),
    /// so [`Registry::retire`] keeps its storage for snapshots until a
    /// prune frees it ([`Registry::free_deleted`]). In a plain directory,
    /// where a file's name is its storage, the file is marked removed:
    /// listings no longer show it while its storage stays for descriptors
    /// still open on it (after a crash, it stays hidden rather than coming
    /// back), and the name is taken until the storage goes. A directory
    /// there goes its own way (see [`Registry::delete_group`]).
    ///
    /// In a mount, a removal whose storage stays is recorded in the
    /// directory's journal instead, which costs the same however many
    /// entries it has, and merged with its `modelfs.deleted.*` key soon
    /// after (see [`super::journal`]). One whose storage goes changes the
    /// member list at once, so TileDB tools never see a member whose
    /// storage is gone.
    pub fn remove(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        if dir.storage != Storage::Group {
            if entry.storage == Storage::Array {
                self.upkeep.hold_removed(&entry.uri, true);
                self.vfs.touch(&removed_marker(&entry.uri))?;
            }
            return Ok(());
        }
        if self.upkeep.journaling() && deleted_key(&dir.uri, entry).is_some() {
            let member = super::members::member_uri(&dir.uri, &entry.uri);
            let body = super::journal::Body::new(&entry.name, member, entry.storage, true);
            return self.record(dir, &body);
        }
        self.change_members(&dir.uri, |g| {
            g.remove_member(&entry.name)?;
            mark_deleted(g, &dir.uri, entry)
        })?;
        self.metadata_written(&dir.uri);
        Ok(())
    }

    /// What happens to the storage of `entry` once it was removed from
    /// `dir` and nothing refers to it: kept when the removal recorded it
    /// (a group member whose storage is in the group's folder: snapshot
    /// mounts of earlier times show it, and `modelfs prune` frees it),
    /// deleted otherwise (a file never linked, or a plain directory's).
    pub fn retire(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        if dir.storage == Storage::Group
            && let Some(key) = deleted_key(&dir.uri, entry)
        {
            let journal = self.upkeep.parsed.read(&self.vfs, &dir.uri)?;
            let recorded = journal.records.iter().any(|r| {
                r.removed
                    && r.name == entry.name
                    && canonical(&super::members::added_uri(&dir.uri, r)) == canonical(&entry.uri)
            });
            if recorded {
                debug!(
                    "{}: removal recorded in {}, storage kept for snapshots",
                    entry.uri, dir.uri
                );
                return Ok(());
            }
            if Group::read_metadata(&self.ctx, &dir.uri)?
                .iter()
                .any(|(k, _)| *k == key)
            {
                debug!("{}: removed from {}, storage kept for snapshots", entry.uri, dir.uri);
                return Ok(());
            }
        }
        self.delete_storage(entry)
    }

    /// The entries removed from group `dir` whose storage was kept, with
    /// when they were removed (ms): `(storage name, storage URI, time)`.
    pub fn deleted(&self, dir: &Entry) -> Result<Vec<(String, String, u64)>> {
        if dir.storage != Storage::Group {
            return Ok(Vec::new());
        }
        // Removals recorded and not merged yet get their keys when merged
        // (by the mount that made them: merging here could race it). The
        // records are read before the keys: a merge in between then shows
        // its removals twice (one is kept), where the other order missed
        // them (the keys read before it, the records after).
        let view = self.view(&dir.uri)?;
        let removals = view.fates(&dir.uri).1;
        let mut out: Vec<(String, String, u64)> = Group::read_metadata(&self.ctx, &dir.uri)?
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(DELETED_KEY_PREFIX)?;
                Some((name.to_string(), join(&dir.uri, name), v.as_u64()?))
            })
            .collect();
        for (removed, time) in super::members::kept_removals(&self.ctx, &dir.uri, &removals)? {
            let Some(key) = deleted_key(&dir.uri, &removed) else {
                continue;
            };
            let name = &key[DELETED_KEY_PREFIX.len()..];
            if !out.iter().any(|(n, _, _)| n == name) {
                out.push((name.to_string(), join(&dir.uri, name), time));
            }
        }
        Ok(out)
    }

    /// Frees the kept storage `name` of an entry removed from group `dir`
    /// (see [`Registry::remove`]) and forgets the record; returns the bytes
    /// freed. Storage a member of `dir` names again is only forgotten. A
    /// directory goes with what was removed from it.
    pub fn free_deleted(&self, dir: &Entry, name: &str) -> Result<u64> {
        let uri = join(&dir.uri, name);
        let named = self
            .list_group(dir)?
            .iter()
            .any(|e| canonical(&e.uri) == canonical(&uri));
        let mut freed = 0;
        if !named {
            freed = self.free_storage(&uri)?;
        }
        let mut group = Group::open(&self.ctx, &dir.uri, GroupMode::Write)?;
        group.delete_metadata(&format!("{DELETED_KEY_PREFIX}{name}"))?;
        group.close()?;
        Ok(freed)
    }

    /// Deletes the array or group stored at `uri` (a group with what was
    /// removed from it); returns the bytes it held.
    fn free_storage(&self, uri: &str) -> Result<u64> {
        let bytes = if self.vfs.is_dir(uri)? {
            self.vfs.dir_size(uri)?
        } else {
            0
        };
        match tiledb::object_type(&self.ctx, uri)? {
            ObjectType::Array => tiledb::object_remove(&self.ctx, uri)?,
            ObjectType::Group => self.delete_group(uri)?,
            ObjectType::Invalid => {}
        }
        Ok(bytes)
    }

    /// Takes `entry` out of `dir` without deleting its storage (a group
    /// member is removed; a plain directory's entry cannot be, so nothing
    /// happens there).
    pub fn unlink(&self, dir: &Entry, entry: &Entry) -> Result<()> {
        if dir.storage == Storage::Group {
            self.change_members(&dir.uri, |g| Ok(g.remove_member(&entry.name)?))?;
        }
        Ok(())
    }

    /// Whether directory `dir` holds nothing: a group without members (shown
    /// or not), or a plain directory with nothing in it at all.
    pub fn is_empty_dir(&self, dir: &Entry) -> Result<bool> {
        match dir.storage {
            Storage::Group => Ok(self.view(&dir.uri)?.is_empty(&dir.uri)),
            Storage::PlainDir => {
                for child in self.vfs.ls(&dir.uri)? {
                    if !self.is_removed_leftover(&child)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Storage::Array => Err(Error::NotADirectory { uri: dir.uri.clone() }),
        }
    }

    /// Whether `uri` is the storage of a file removed from a plain
    /// directory (or set aside there) that no descriptor of this process
    /// holds: what a crash left, shown nowhere (see
    /// [`Registry::free_removed_file`]).
    fn is_removed_leftover(&self, uri: &str) -> Result<bool> {
        Ok(!self.upkeep.removed_held(uri)
            && self.vfs.is_file(&removed_marker(uri))?
            && tiledb::object_type(&self.ctx, uri)? == ObjectType::Array)
    }

    /// Deletes what `entry` stores: an array; for a directory its own files
    /// (see [`Registry::delete_group`]) or an empty plain directory, never
    /// what else is stored under it.
    pub fn delete_storage(&self, entry: &Entry) -> Result<()> {
        match entry.storage {
            Storage::PlainDir => {
                // What crashes left in it goes with it; anything else keeps it.
                let children = self.vfs.ls(&entry.uri)?;
                for child in &children {
                    if !self.is_removed_leftover(child)? {
                        return Ok(());
                    }
                }
                for child in &children {
                    log::info!("{child}: storage of a removed file, left by a crash or another mount, deleted");
                    tiledb::object_remove(&self.ctx, child)?;
                }
                self.vfs.remove_dir(&entry.uri)?;
            }
            Storage::Group => self.delete_group(&entry.uri)?,
            Storage::Array => {
                tiledb::object_remove(&self.ctx, &entry.uri)?;
                self.upkeep.hold_removed(&entry.uri, false);
            }
        }
        Ok(())
    }

    /// Deletes group `uri`: its own files (member lists, metadata, journal,
    /// stat summaries) and the storage it kept of entries removed from it,
    /// which only snapshots of the group could show and which goes with it.
    /// Anything else in its folder stays (a file moved elsewhere keeps its
    /// storage there; another mount may be writing a new file inside), and
    /// a marker then tells listings of a plain parent not to show the
    /// folder as a directory of storage names. The marker comes first, so
    /// a crash part-way never shows the folder either.
    fn delete_group(&self, uri: &str) -> Result<()> {
        // Nothing merges into it or vacuums it meanwhile or afterwards:
        // either would write its folder again.
        let lock = self.upkeep.dir_lock(uri);
        let _one_at_a_time = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.upkeep.forget_dir(uri);
        let marker = removed_marker(uri);
        self.vfs.touch(&marker)?;
        let dir = Entry {
            name: last_component(uri).to_string(),
            uri: uri.to_string(),
            storage: Storage::Group,
        };
        // What it kept goes with it, as far as it can: the group goes
        // either way (a failure leaves storage, hidden, never a name).
        let kept = self.list_group(&dir).and_then(|named| {
            Ok(self
                .deleted(&dir)?
                .into_iter()
                .filter(|(_, child, _)| !named.iter().any(|e| canonical(&e.uri) == canonical(child)))
                .collect::<Vec<_>>())
        });
        match kept {
            Ok(kept) => {
                for (_, child, _) in kept {
                    if let Err(e) = self.free_storage(&child) {
                        warn!("{child}: kept for snapshots of {uri}, which is deleted; not freed: {e}");
                    }
                }
            }
            Err(e) => warn!("{uri}: what it kept for snapshots cannot be listed, not freed: {e}"),
        }
        super::journal::remove_all(&self.vfs, uri)?;
        super::dir_stats::remove_all(&self.vfs, uri)?;
        Group::remove_own_files(&self.ctx, uri)?;
        // Its own markers are all that may be left of it.
        let left = self.vfs.ls(uri)?;
        if left
            .iter()
            .all(|f| matches!(last_component(f), REMOVED_MARKER | MOVED_OUT_MARKER))
        {
            for f in &left {
                self.vfs.remove_file(f)?;
            }
            self.vfs.remove_dir(uri)?;
        }
        Ok(())
    }

    /// Renames `entry` of `dir` to `new_name` in `new_dir`, in place of
    /// `replaced` (the entry named so there, if any; its storage is left
    /// for the caller to delete). No data moves: the new member names the
    /// same storage. Within one group it is one group write, so readers
    /// see the old or the new state, never a mix. Across directories the
    /// new member (replacing `replaced` in the same write) comes before the
    /// old one is removed: a crash in between shows the entry under both
    /// names, never under neither.
    pub fn rename(
        &self,
        dir: &Entry,
        entry: &Entry,
        new_dir: &Entry,
        new_name: &str,
        replaced: Option<&Entry>,
    ) -> Result<Entry> {
        Self::check_new_name(new_name)?;
        if dir.storage != Storage::Group || new_dir.storage != Storage::Group {
            return self.rename_moving(dir, entry, new_dir, new_name, replaced);
        }
        let moved = Entry {
            name: new_name.to_string(),
            uri: entry.uri.clone(),
            storage: entry.storage,
        };
        // Leaving a folder that keeps its storage (marked first: a
        // failure later leaves a mark that only costs a copy).
        if dir.uri != new_dir.uri && deleted_key(&dir.uri, entry).is_some() {
            self.mark_moved_out(entry)?;
        }
        self.change_members(&new_dir.uri, |g| {
            if let Some(old) = replaced {
                g.remove_member(&old.name)?;
                mark_deleted(g, &new_dir.uri, old)?;
            }
            if dir.uri == new_dir.uri {
                g.remove_member(&entry.name)?;
            }
            self.add_member(g, new_dir, &moved)
        })?;
        if replaced.is_some() {
            self.metadata_written(&new_dir.uri);
        }
        if dir.uri != new_dir.uri {
            self.unlink(dir, entry)?;
            // Back in the directory whose folder holds its storage: that
            // folder may move again (best effort: a mark left only costs
            // a copy).
            if deleted_key(&new_dir.uri, entry).is_some() {
                let marker = moved_out_marker(&entry.uri);
                if let Err(e) = self
                    .vfs
                    .is_file(&marker)
                    .and_then(|m| if m { self.vfs.remove_file(&marker) } else { Ok(()) })
                {
                    warn!("{marker}: not removed ({e}): a rename moving its folder will copy it");
                }
            }
        }
        Ok(moved)
    }

    /// A rename out of or into a plain directory, where a name is where the
    /// storage is: the storage moves (a plain directory's folder with all
    /// it holds). In a plain directory, `replaced` is deleted first (there
    /// is no other way to take its name).
    fn rename_moving(
        &self,
        dir: &Entry,
        entry: &Entry,
        new_dir: &Entry,
        new_name: &str,
        replaced: Option<&Entry>,
    ) -> Result<Entry> {
        // A group names TileDB objects only: a plain folder cannot be its
        // member (EXDEV: `mv` copies it, making a group).
        if entry.storage == Storage::PlainDir && new_dir.storage == Storage::Group {
            return Err(Error::PlainDirIntoGroup {
                uri: entry.uri.clone(),
                group: new_dir.uri.clone(),
            });
        }
        if entry.storage != Storage::Array {
            self.check_nothing_named_from_outside(entry)?;
        }
        let to = match (new_dir.storage, replaced) {
            (Storage::PlainDir, Some(old)) => {
                let to = plain_child_uri(new_dir, new_name)?;
                if old.storage == Storage::Group {
                    self.check_nothing_named_from_outside(old)?;
                }
                self.delete_storage(old)?;
                // What a removed directory left stays (see `delete_group`).
                if self.vfs.is_dir(&to)? {
                    return Err(Error::AlreadyExists { uri: to });
                }
                to
            }
            (Storage::PlainDir, None) => self.plain_free_uri(new_dir, new_name)?,
            _ => self.new_child_uri(new_dir, new_name)?,
        };
        match entry.storage {
            Storage::PlainDir => self.vfs.move_dir(&entry.uri, &to)?,
            _ => tiledb::object_move(&self.ctx, &entry.uri, &to)?,
        }
        self.upkeep.rebase_held(&entry.uri, &to);
        let moved = Entry {
            name: new_name.to_string(),
            uri: to,
            storage: entry.storage,
        };
        if new_dir.storage == Storage::Group {
            self.change_members(&new_dir.uri, |g| {
                if let Some(old) = replaced {
                    g.remove_member(&old.name)?;
                    mark_deleted(g, &new_dir.uri, old)?;
                }
                self.add_member(g, new_dir, &moved)
            })?;
            if replaced.is_some() {
                self.metadata_written(&new_dir.uri);
            }
        }
        self.unlink(dir, entry)?;
        Ok(moved)
    }

    /// Moves file `entry` of plain directory `dir` out of the way of a
    /// rename over it, for descriptors this process still has open on it:
    /// marked removed (hidden from listings, held), then moved to a fresh
    /// name in the same folder, whose storage the caller deletes once the
    /// last descriptor closes. Returns that storage's URI. On failure the
    /// file stays where it was, shown again unless its mark cannot be
    /// removed (see `unmark_removed`).
    pub fn set_aside(&self, dir: &Entry, entry: &Entry) -> Result<String> {
        let stamp = now_ns();
        let mut n = 0;
        let aside = loop {
            let uri = plain_child_uri(dir, &format!("{SET_ASIDE_PREFIX}{stamp}-{n}"))?;
            if !self.vfs.is_dir(&uri)? {
                break uri;
            }
            n += 1;
        };
        let marker = removed_marker(&entry.uri);
        // Held from the mark on, wherever it is: this process never frees
        // it as a crash's leftover.
        self.upkeep.hold_removed(&entry.uri, true);
        let moved = self
            .vfs
            .touch(&marker)
            .and_then(|()| tiledb::object_move(&self.ctx, &entry.uri, &aside));
        if let Err(e) = moved {
            self.unmark_removed(&entry.uri);
            return Err(e.into());
        }
        self.upkeep.rebase_held(&entry.uri, &aside);
        Ok(aside)
    }

    /// Undoes [`Registry::set_aside`]: the file set aside at `aside` goes
    /// back to `entry`'s place and shows again. Once it is back in place
    /// this succeeds; a mark that cannot be removed then is logged.
    pub fn put_back(&self, entry: &Entry, aside: &str) -> Result<()> {
        tiledb::object_move(&self.ctx, aside, &entry.uri)?;
        self.upkeep.rebase_held(aside, &entry.uri);
        self.unmark_removed(&entry.uri);
        Ok(())
    }

    /// Shows the file at `uri` again, marked removed by
    /// [`Registry::set_aside`], and lets it go. A mark that stays keeps it
    /// held (this process never frees it), and says how to show it.
    fn unmark_removed(&self, uri: &str) {
        let marker = removed_marker(uri);
        match self.vfs.remove_file(&marker) {
            Ok(()) => self.upkeep.hold_removed(uri, false),
            Err(e) => log::error!("{marker}: not removed ({e}): {uri} is hidden; remove that file to show it again"),
        }
    }

    /// Marks the storage of `entry`, named now from a directory other
    /// than the one whose folder holds it: that folder must not move (or
    /// go) with it inside. Callers mark only storage right in that folder
    /// (what modelfs put there), and only arrays and groups are marked.
    fn mark_moved_out(&self, entry: &Entry) -> Result<()> {
        if matches!(entry.storage, Storage::Array | Storage::Group) {
            self.vfs.touch(&moved_out_marker(&entry.uri))?;
        }
        Ok(())
    }

    /// Refuses to move the folder of directory `entry` (EXDEV: `mv` then
    /// copies) when it holds the storage of an entry moved out of it
    /// (marked at that rename): the entry's new directory names it there,
    /// and would lose it.
    fn check_nothing_named_from_outside(&self, entry: &Entry) -> Result<()> {
        let own_marker = moved_out_marker(&entry.uri);
        let own = canonical(&own_marker);
        let mut found = None;
        self.vfs.ls_recursive(&entry.uri, &mut |path, _| {
            if last_component(path) == MOVED_OUT_MARKER && canonical(path) != own {
                found = split_parent(path).map(|(inside, _)| inside);
                return false;
            }
            true
        })?;
        match found {
            Some(inside) => Err(Error::NamedFromOutside {
                uri: entry.uri.clone(),
                inside,
            }),
            None => Ok(()),
        }
    }

    /// Changes the members of group `uri` with `f`: one change at a time
    /// per directory within this process (TileDB groups have no locking; two
    /// writers of one group at once can undo each other's removals).
    /// Recorded entries are merged first, in a write of their own, so
    /// the change applies to the list they make.
    fn change_members(&self, uri: &str, f: impl FnOnce(&mut Group) -> Result<()>) -> Result<()> {
        let merged = {
            let lock = self.upkeep.dir_lock(uri);
            let _one_at_a_time = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let merged = super::members::merge_journal(&self.ctx, &self.vfs, &self.upkeep, uri)?;
            let mut change = MembersChange::begin(&self.ctx, uri)?;
            f(change.group())?;
            commit_change(&self.upkeep, change)?;
            merged
        };
        if merged.removals > 0 {
            self.metadata_written(uri);
        }
        Ok(())
    }

    /// The time (ms) this process stamped on its newest change of directory
    /// `uri`'s entries, if it remembers one: what a stat of the directory
    /// read from storage shows as its mtime once that change is stored,
    /// unless a tool set one since or another process changed it later.
    pub fn last_change_ms(&self, uri: &str) -> Option<u64> {
        self.upkeep.last_change(uri)
    }

    /// A change of group `uri` also wrote metadata (a removal's key): see
    /// [`super::compaction::Upkeep::metadata_written`].
    fn metadata_written(&self, uri: &str) {
        self.upkeep.metadata_written(&self.ctx, uri);
    }

    /// What a directory's stat shows of group `uri`, read as `view`: the
    /// attributes tools stored, with the time of the last change of its
    /// entries as its mtime (unless a tool set one since) and ctime. That
    /// time is read from the member-list files' names, so a change of
    /// entries writes no metadata (each metadata write is one more file
    /// every open reads).
    fn dir_attrs(&self, uri: &str, view: &mut super::members::View) -> Result<Attrs> {
        let mut attrs = match view.group.take() {
            // The view's open may have listed a metadata file still being
            // written; the stored attributes read it again.
            Some(g) => match g.metadata() {
                Ok(meta) => Attrs::parse(&meta),
                Err(e) if e.is_vanished_file() => self.stored_dir_attrs(uri)?,
                Err(e) => return Err(e.into()),
            },
            None => self.stored_dir_attrs(uri)?,
        };
        self.tidy_if_grown(uri, view.lists.count());
        let Some(changed_ms) = view.changed_ms() else {
            return Ok(attrs);
        };
        let changed = changed_ms.saturating_mul(1_000_000);
        // Stored attributes carry the time they were stored as their ctime.
        let set_since = attrs.ctime_ns.is_some_and(|c| c >= changed);
        if !set_since {
            attrs.mtime_ns = Some(changed);
            attrs.ctime_ns = Some(changed);
        }
        Ok(attrs)
    }

    /// The attributes tools stored for group `uri`: cached while its
    /// metadata files stay the same (one listing checks it), since opening
    /// the group reads its whole member list.
    fn stored_dir_attrs(&self, uri: &str) -> Result<Attrs> {
        let open = || -> Result<Attrs> { Ok(Attrs::parse(&Group::read_metadata(&self.ctx, uri)?)) };
        if self.at.is_some() {
            return open();
        }
        let fingerprint = tiledb::metadata_fingerprint(&self.vfs, uri)?;
        if let Some(attrs) = self.upkeep.attrs.get(uri, fingerprint) {
            return Ok(attrs);
        }
        // Read after the listing: at least what it listed.
        let attrs = open()?;
        self.upkeep.attrs.put(uri, fingerprint, attrs);
        Ok(attrs)
    }

    /// The directory at `uri`, created (with missing ancestors, as groups
    /// linked into their parents) when absent.
    pub fn ensure_dir(&self, uri: &str) -> Result<Entry> {
        // An unlisted plain folder inside a group is not taken: what is
        // made here must show in the group.
        if let Some(e) = self.resolve_as(uri, false)? {
            return if e.is_dir() {
                Ok(e)
            } else {
                Err(Error::NotADirectory { uri: uri.to_string() })
            };
        }
        let made = match split_parent(uri) {
            Some((parent_uri, name)) => {
                let parent = self.ensure_dir(&parent_uri)?;
                self.mkdir(&parent, &name, &Attrs::default())
            }
            None => {
                // A bucket or filesystem root that does not list as a
                // directory: make the registry group right there.
                Group::create(&self.ctx, uri).map_err(Error::from).map(|()| Entry {
                    name: last_component(uri).to_string(),
                    uri: uri.to_string(),
                    storage: Storage::Group,
                })
            }
        };
        // Another process may have made it meanwhile: that one will do.
        match made {
            Ok(e) => Ok(e),
            Err(e) => match self.resolve_as(uri, false)? {
                Some(found) if found.is_dir() => Ok(found),
                _ => Err(e),
            },
        }
    }

    /// Stores `change` (modes, owners, times) for `entry` without touching
    /// its data: array or group metadata, with its ctime. Plain directories
    /// cannot hold any (`Unsupported`). Returns what was stored.
    pub fn set_attrs(&self, entry: &Entry, change: &Attrs) -> Result<Attrs> {
        match entry.storage {
            Storage::Array => file_array::set_attrs(&self.ctx, &entry.uri, change),
            Storage::Group => {
                let ctime = now_ns();
                let change = Attrs {
                    ctime_ns: Some(ctime),
                    ..*change
                };
                put_group_attrs(&self.ctx, &entry.uri, &change)?;
                // The next change of its entries is stamped after this one
                // (stamps are ms; within the same ms it looked older, and
                // the times set here stayed).
                self.upkeep.list_stamped(&entry.uri, ctime.div_ceil(1_000_000));
                Ok(change)
            }
            Storage::PlainDir => Err(Error::Unsupported {
                uri: entry.uri.clone(),
                what: "attributes of a plain directory (not a TileDB group)",
            }),
        }
    }

    /// The newest write to the array at `uri` (its latest fragment's
    /// timestamp, ms; 0 when empty): changes whenever a new version lands.
    pub fn array_version(&self, uri: &str) -> Result<u64> {
        Ok(tiledb::fragments(&self.ctx, uri)?
            .iter()
            .map(|f| f.timestamp_range.1)
            .max()
            .unwrap_or(0))
    }

    /// Every metadata key and value of the array at `uri`, latest version.
    pub fn array_metadata(&self, uri: &str) -> Result<Vec<(String, MetaValue)>> {
        Ok(self.open_array(uri)?.metadata()?)
    }
}

/// Writes a membership change of a group. Its time is the directory's
/// mtime and ctime from then on (see [`Registry::dir_attrs`]); the change
/// retires the member-list files it makes redundant (see
/// [`MembersChange`]), deleted once their grace period is over.
pub(super) fn commit_change(upkeep: &std::sync::Arc<super::compaction::Upkeep>, change: MembersChange) -> Result<()> {
    let uri = change.uri().to_string();
    let ctx = change.context().clone();
    let stamp = change.stamp();
    let committed = change.commit()?;
    upkeep.list_stamped(&uri, stamp);
    match committed {
        Ok(r) => {
            if r.deleted.files > 0 {
                debug!(
                    "{uri}: deleted {} old member-list files ({} bytes)",
                    r.deleted.files, r.deleted.bytes
                );
            }
            if r.pending {
                upkeep.retire_later(&ctx, &uri);
            }
        }
        // Only slower opens follow; the change itself is done.
        Err(e) => warn!("{uri}: retiring old member-list files failed: {e}"),
    }
    Ok(())
}

/// Writes `attrs` into group `uri`'s metadata.
fn put_group_attrs(ctx: &Context, uri: &str, attrs: &Attrs) -> Result<()> {
    let mut group = Group::open(ctx, uri, GroupMode::Write)?;
    for (key, value) in attrs.entries() {
        group.put_metadata(key, &value)?;
    }
    group.close()?;
    Ok(())
}

/// Prefix of the group metadata keys recording entries removed from the
/// group whose storage is kept: `modelfs.deleted.<storage name>` = when
/// (ms since the epoch, UINT64).
pub const DELETED_KEY_PREFIX: &str = "modelfs.deleted.";

/// A file in the storage folder of an entry moved to another directory
/// while its storage stayed in its old one (see
/// [`Registry::check_nothing_named_from_outside`]).
pub const MOVED_OUT_MARKER: &str = "__modelfs_moved_out";

/// A file left in the folder of a deleted group that still holds storage
/// (see [`Registry::delete_group`]): the folder is not shown.
pub const REMOVED_MARKER: &str = "__modelfs_removed";

/// How the folder of a file replaced while open in a plain directory is
/// named once set aside (see [`Registry::set_aside`]).
pub const SET_ASIDE_PREFIX: &str = ".modelfs-replaced-";

fn removed_marker(uri: &str) -> String {
    join(uri, REMOVED_MARKER)
}

fn moved_out_marker(uri: &str) -> String {
    join(uri, MOVED_OUT_MARKER)
}

/// The key recording the removal of `entry` from group `dir_uri`, when
/// its storage lies right in the group's folder (others are not kept).
fn deleted_key(dir_uri: &str, entry: &Entry) -> Option<String> {
    let prefix = format!("{}/", canonical(dir_uri));
    let name = canonical(&entry.uri).strip_prefix(&prefix)?;
    (!name.is_empty() && !name.contains('/')).then(|| format!("{DELETED_KEY_PREFIX}{name}"))
}

/// Records in the open group `group` (at `dir_uri`) that `entry` was
/// removed now, keeping its storage.
fn mark_deleted(group: &mut Group, dir_uri: &str, entry: &Entry) -> Result<()> {
    mark_deleted_at(group, dir_uri, entry, tiledb::now_ms())
}

/// [`mark_deleted`], removed at `time` (ms).
pub(super) fn mark_deleted_at(group: &mut Group, dir_uri: &str, entry: &Entry, time: u64) -> Result<()> {
    if let Some(key) = deleted_key(dir_uri, entry) {
        group.put_metadata(&key, &MetaValue::u64(time))?;
    }
    Ok(())
}

/// Room kept for TileDB's own files inside an array or group folder
/// (`__fragments/__<t>_<t>_<uuid>_<v>/a0.tdb`, ...).
const TILEDB_SUFFIX_BYTES: usize = 128;
/// Longest object key on S3, Azure and GCS.
const OBJECT_KEY_MAX_BYTES: usize = 1024;

/// `PathTooLong` (ENAMETOOLONG) when a new entry at `uri` on an object
/// store would leave no room under 1,024 bytes of key for TileDB's files.
/// `out` sorted by name, the first of two entries with one name kept.
fn sorted_unique(dir: &Entry, mut out: Vec<Entry>) -> Vec<Entry> {
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|b, a| {
        let dup = a.name == b.name;
        if dup {
            warn!("{}: two entries named {:?}; showing {}", dir.uri, a.name, a.uri);
        }
        dup
    });
    out
}

fn check_path_length(uri: &str) -> Result<()> {
    if super::uri::is_local(uri) {
        // The OS decides (its "File name too long" is ENAMETOOLONG too):
        // paths relative to a deep working directory go past `PATH_MAX`.
        return Ok(());
    }
    // `scheme://bucket/key`: the key is what the limit counts, less room for
    // TileDB's own files under it.
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let len = rest.split_once('/').map_or(0, |(_, key)| key.len());
    let max = OBJECT_KEY_MAX_BYTES - TILEDB_SUFFIX_BYTES;
    if len > max {
        return Err(Error::PathTooLong {
            uri: uri.to_string(),
            max,
        });
    }
    Ok(())
}

/// Where entry `name` of plain directory `dir` is stored: right at its name
/// (that is how a plain directory lists), so names TileDB keeps for itself
/// are refused.
fn plain_child_uri(dir: &Entry, name: &str) -> Result<String> {
    if is_tiledb_reserved(name) {
        return Err(Error::InvalidName {
            name: name.to_string(),
            reason: "reserved by TileDB inside a plain directory (not a TileDB group)",
        });
    }
    let uri = join(&dir.uri, name);
    check_path_length(&uri)?;
    Ok(uri)
}
