//! What a group directory holds: its member list, read through a cache that
//! one listing of its `__group/` folder validates (opening a group reads
//! its whole list, O(entries); the listing is O(1) in them), plus the new
//! and removed entries its journal records ([`super::journal`]), and the
//! merge of those into the list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use log::debug;

use crate::tiledb::{self, Context, Group, GroupMode, ListFiles, Member, MembersChange, ObjectType, Vfs};

use super::attrs::Attrs;
use super::compaction::Upkeep;
use super::error::Result;
use super::journal::{self, Record};
use super::tree::Storage;
use super::uri::{canonical, join};

/// Members the listing cache holds at most, over all directories, unless
/// set otherwise (`--listing-cache-entries`): about 100 bytes each.
pub const DEFAULT_LISTING_CACHE_ENTRIES: usize = 200_000;

/// A group's member list, indexed by name and by storage.
pub(super) struct Members {
    pub list: Vec<Member>,
    /// Index in `list` by name.
    by_name: HashMap<String, usize>,
    /// Every member's canonical URI.
    uris: std::collections::HashSet<String>,
}

impl Members {
    fn new(list: Vec<Member>) -> Self {
        let by_name = list
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((m.name.clone()?, i)))
            .collect();
        let uris = list.iter().map(|m| canonical(&m.uri).to_string()).collect();
        Members { list, by_name, uris }
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    pub fn has_name(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The member named `name`.
    pub fn named(&self, name: &str) -> Option<&Member> {
        self.by_name.get(name).map(|&i| &self.list[i])
    }

    /// Whether a member's storage is at `uri`.
    pub fn names_storage(&self, uri: &str) -> bool {
        self.uris.contains(canonical(uri))
    }

    /// Whether a member named `name` names `uri`.
    fn holds(&self, name: &str, uri: &str) -> bool {
        self.named(name).is_some_and(|m| canonical(&m.uri) == canonical(uri))
    }
}

/// Member lists by directory URI, each valid while the `__group/` folder
/// lists the same names.
pub(super) struct MemberCache {
    map: Mutex<CacheMap>,
    limit: usize,
}

#[derive(Default)]
struct CacheMap {
    lists: HashMap<String, Cached>,
    members: usize,
    clock: u64,
}

struct Cached {
    fingerprint: u64,
    members: Arc<Members>,
    used: u64,
}

impl Default for MemberCache {
    fn default() -> Self {
        MemberCache::new(DEFAULT_LISTING_CACHE_ENTRIES)
    }
}

impl MemberCache {
    pub(super) fn new(limit: usize) -> Self {
        MemberCache {
            map: Mutex::default(),
            limit,
        }
    }

    fn get(&self, uri: &str, fingerprint: u64) -> Option<Arc<Members>> {
        let mut m = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        m.clock += 1;
        let now = m.clock;
        let c = m.lists.get_mut(uri).filter(|c| c.fingerprint == fingerprint)?;
        c.used = now;
        Some(c.members.clone())
    }

    fn put(&self, uri: &str, fingerprint: u64, members: Arc<Members>) {
        if members.len() > self.limit {
            return;
        }
        let mut m = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        m.clock += 1;
        let used = m.clock;
        let n = members.len();
        if let Some(old) = m.lists.insert(
            uri.to_string(),
            Cached {
                fingerprint,
                members,
                used,
            },
        ) {
            m.members -= old.members.len();
        }
        m.members += n;
        // Least recently used first, until within the limit.
        while m.members > self.limit {
            let Some(oldest) = m.lists.iter().min_by_key(|(_, c)| c.used).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(c) = m.lists.remove(&oldest) {
                m.members -= c.members.len();
            }
        }
    }
}

/// Directories' stored attributes by URI, each valid while the group's
/// `__meta/` folder lists the same files: a stat of a large directory
/// reads them without opening the group, which reads (and on S3 lists)
/// everything the directory holds.
#[derive(Default)]
pub(super) struct AttrsCache {
    map: Mutex<HashMap<String, (u64, Attrs)>>,
}

/// Directories whose attributes are kept at most (about 100 bytes each);
/// past it the cache starts again empty.
const ATTRS_CACHED_DIRS: usize = 65_536;

impl AttrsCache {
    pub fn get(&self, uri: &str, fingerprint: u64) -> Option<Attrs> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(uri).filter(|(f, _)| *f == fingerprint).map(|(_, a)| *a)
    }

    pub fn put(&self, uri: &str, fingerprint: u64, attrs: Attrs) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= ATTRS_CACHED_DIRS && !map.contains_key(uri) {
            map.clear();
        }
        map.insert(uri.to_string(), (fingerprint, attrs));
    }
}

/// Member lists shorter than this are not cached: checking one costs a
/// listing more than reading it.
const CACHED_FROM: usize = 64;

/// A group directory as a reader sees it.
pub(super) struct View {
    pub members: Arc<Members>,
    pub lists: ListFiles,
    /// Recorded new and removed entries not in `members` yet, oldest
    /// first.
    pub records: Vec<Record>,
    /// The journal they come from.
    pub journal: journal::Journal,
    /// The newest merge seen (its marker's time, ms): one that changed no
    /// name (an entry made and removed before it) writes no list.
    pub merged_ms: Option<u64>,
    /// The group, when reading the view opened it.
    pub group: Option<Group>,
}

impl View {
    /// When its entries last changed (ms).
    pub fn changed_ms(&self) -> Option<u64> {
        self.records
            .last()
            .map(|a| a.time)
            .max(self.lists.newest())
            .max(self.merged_ms)
    }

    /// What became of each name the records touch, replayed in order over
    /// the member list: the record that added its entry last, or `None`
    /// when a removal took it; with the removals that applied.
    pub fn fates(&self, dir_uri: &str) -> (HashMap<&str, Option<&Record>>, Vec<&Record>) {
        let mut fate: HashMap<&str, Option<&Record>> = HashMap::new();
        let mut removals = Vec::new();
        for r in &self.records {
            if !r.removed {
                fate.insert(r.name.as_str(), Some(r));
                continue;
            }
            let current = match fate.get(r.name.as_str()) {
                Some(Some(a)) => Some(added_uri(dir_uri, a)),
                Some(None) => None,
                None => self.members.named(&r.name).map(|m| m.uri.clone()),
            };
            // A removal takes the name only while it names what was removed.
            if current.is_some_and(|c| canonical(&c) == canonical(&added_uri(dir_uri, r))) {
                fate.insert(r.name.as_str(), None);
                removals.push(r);
            }
        }
        (fate, removals)
    }

    /// Whether the directory holds nothing, shown or not.
    pub fn is_empty(&self, dir_uri: &str) -> bool {
        let (fate, _) = self.fates(dir_uri);
        let added = fate.values().filter(|f| f.is_some()).count();
        let removed = self.members.list.iter().filter(|m| {
            let name = m.name.as_deref().unwrap_or_default();
            fate.get(name).is_some_and(Option::is_none)
        });
        added == 0 && removed.count() == self.members.list.len()
    }
}

/// Group `uri` as of now, or as of `at` (ms) for a snapshot (whose context
/// opens groups as of then).
pub(super) fn view(ctx: &Context, vfs: &Vfs, upkeep: &Upkeep, uri: &str, at: Option<u64>) -> Result<View> {
    let mut attempt = 0;
    loop {
        let v = view_once(ctx, vfs, upkeep, uri, at)?;
        attempt += 1;
        if at.is_some() || v.records.is_empty() || attempt == 3 {
            return Ok(v);
        }
        // A record counted here but merged since may have been merged, and
        // its entry removed, before the member list was read: then it
        // would show again. Read again when one was.
        let again = upkeep.parsed.read(vfs, uri)?;
        if !v.records.iter().any(|a| again.is_merged(journal::record_id(a))) {
            return Ok(v);
        }
    }
}

fn view_once(ctx: &Context, vfs: &Vfs, upkeep: &Upkeep, uri: &str, at: Option<u64>) -> Result<View> {
    // Records first: a merge writes its list before its marker.
    let journal = upkeep.parsed.read(vfs, uri)?;
    let (members, lists, group) = match at {
        Some(_) => {
            let g = Group::open(ctx, uri, GroupMode::Read)?;
            (
                Arc::new(Members::new(g.members()?)),
                tiledb::list_files(vfs, uri)?,
                Some(g),
            )
        }
        None => cached_members(ctx, vfs, upkeep, uri)?,
    };
    let records = match at {
        None => journal.records.iter().filter(|a| a.merged.is_none()).cloned().collect(),
        Some(at) => {
            let mut then: Vec<Record> = (journal.records.iter().chain(journal.merged_only()))
                .filter(|a| a.time <= at && a.merged.is_none_or(|m| m > at))
                .cloned()
                .collect();
            then.sort_by(|a, b| (a.time, &a.file).cmp(&(b.time, &b.file)));
            then
        }
    };
    let merged_ms = journal
        .markers
        .iter()
        .map(|m| m.time)
        .filter(|&t| at.is_none_or(|at| t <= at))
        .max();
    Ok(View {
        members,
        lists,
        records,
        journal,
        merged_ms,
        group,
    })
}

/// The current member list of group `uri`, its lists as listed just before
/// it was read, and the group if it was opened: from the cache when the
/// lists match, else read (and cached if the folder did not change
/// meanwhile).
fn cached_members(
    ctx: &Context,
    vfs: &Vfs,
    upkeep: &Upkeep,
    uri: &str,
) -> Result<(Arc<Members>, ListFiles, Option<Group>)> {
    let mut attempt = 0;
    loop {
        let lists = tiledb::list_files(vfs, uri)?;
        if let Some(m) = upkeep.members.get(uri, lists.fingerprint) {
            return Ok((m, lists, None));
        }
        let group = Group::open(ctx, uri, GroupMode::Read)?;
        let members = Arc::new(Members::new(group.members()?));
        // A short list is read again as cheaply as it is checked.
        if members.len() < CACHED_FROM {
            return Ok((members, lists, Some(group)));
        }
        let after = tiledb::list_files(vfs, uri)?;
        if after.fingerprint == lists.fingerprint {
            upkeep.members.put(uri, lists.fingerprint, members.clone());
            return Ok((members, lists, Some(group)));
        }
        attempt += 1;
        if attempt == 3 {
            // Changing under every read: the list read lies between the
            // two listings; the earlier one may show an entry merged since
            // twice, never miss one.
            return Ok((members, lists, Some(group)));
        }
    }
}

/// The member URI group `dir_uri` stores for an entry at `uri`: relative
/// when it lies right in the group's folder.
pub(super) fn member_uri(dir_uri: &str, uri: &str) -> (String, bool) {
    let dir_prefix = format!("{}/", dir_uri.trim_end_matches('/'));
    match uri.strip_prefix(&dir_prefix).filter(|r| !r.contains('/')) {
        Some(rel) => (rel.to_string(), true),
        None => (uri.to_string(), false),
    }
}

/// The entry record `a` of directory `dir_uri` names.
pub(super) fn record_entry(dir_uri: &str, a: &Record) -> super::tree::Entry {
    super::tree::Entry {
        name: a.name.clone(),
        uri: added_uri(dir_uri, a),
        storage: a.storage,
    }
}

/// The entries `removals` (recorded removals of directory `dir_uri`) took
/// whose storage is still there, with when each was removed: a prune may
/// have freed one before its record was merged, and it is deleted storage
/// no more (its merge writes no key for it).
pub(super) fn kept_removals(
    ctx: &Context,
    dir_uri: &str,
    removals: &[&Record],
) -> Result<Vec<(super::tree::Entry, u64)>> {
    let mut kept = Vec::new();
    for r in removals {
        let removed = record_entry(dir_uri, r);
        if tiledb::object_type(ctx, &removed.uri)? != ObjectType::Invalid {
            kept.push((removed, r.time));
        }
    }
    Ok(kept)
}

/// The absolute URI of a recorded entry of directory `dir_uri`,
/// spelled as TileDB spells its members (local paths as `file://` URIs),
/// so an entry's URI does not change when it is merged.
pub(super) fn added_uri(dir_uri: &str, a: &Record) -> String {
    let uri = if a.relative {
        join(dir_uri, &a.uri)
    } else {
        a.uri.clone()
    };
    if super::uri::is_local(&uri) && !uri.starts_with("file://") {
        return format!("file://{}", super::uri::normalize(&uri));
    }
    uri
}

/// The TileDB object a member of `storage` is.
pub(super) fn object_type(storage: Storage) -> ObjectType {
    if storage == Storage::Array {
        ObjectType::Array
    } else {
        ObjectType::Group
    }
}

/// What a merge of a directory's journal did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Merged {
    /// Names whose entry changed in the member list.
    pub names: usize,
    /// Removals' `modelfs.deleted.*` keys written.
    pub removals: usize,
}

/// Merges directory `uri`'s recorded new and removed entries into its
/// member list in one group write, stamped with the newest record's time
/// (so the directory's mtime stays when it was changed), with the
/// removals' `modelfs.deleted.*` keys, then deletes the records. The
/// caller holds the directory's lock.
pub(super) fn merge_journal(ctx: &Context, vfs: &Vfs, upkeep: &Arc<Upkeep>, uri: &str) -> Result<Merged> {
    let v = view(ctx, vfs, upkeep, uri, None)?;
    let mut merged = Merged::default();
    if let Some(newest) = v.records.last().map(|a| a.time) {
        // What the list holds already (a merge that stopped before its
        // marker) needs no write.
        let (fate, removals) = v.fates(uri);
        let mut todo: Vec<(&str, Option<&Record>)> = fate
            .into_iter()
            .filter(|(name, f)| match f {
                Some(a) => !v.members.holds(name, &added_uri(uri, a)),
                None => v.members.has_name(name),
            })
            .collect();
        todo.sort_by_key(|(name, f)| (f.map(|a| a.time), *name));
        let mut stamp = newest;
        // Removals whose storage is still there get their keys; one a
        // prune freed first (it reads recorded removals too) gets none.
        let keys = kept_removals(ctx, uri, &removals)?;
        merged.removals = keys.len();
        if !todo.is_empty() {
            let mut change = MembersChange::begin_at(ctx, uri, Some(newest))?;
            stamp = change.stamp();
            let g = change.group();
            for (name, f) in &todo {
                if v.members.has_name(name) {
                    g.remove_member(name)?;
                }
                if let Some(a) = f {
                    g.add_member(&a.uri, a.relative, &a.name, object_type(a.storage))?;
                }
            }
            for (removed, time) in &keys {
                super::tree::mark_deleted_at(g, uri, removed, *time)?;
            }
            super::tree::commit_change(upkeep, change)?;
        } else if !keys.is_empty() {
            // Made and removed before one merge: no name changes, but the
            // kept storage needs its key, or no prune would ever free it.
            // A metadata write alone: a member-list change with no member
            // changed would retire the lists it does not replace.
            let mut g = Group::open(ctx, uri, GroupMode::Write)?;
            for (removed, time) in &keys {
                super::tree::mark_deleted_at(&mut g, uri, removed, *time)?;
            }
            g.close()?;
        }
        journal::write_marker(vfs, uri, stamp, &v.records)?;
        let files: Vec<String> = v.records.iter().map(|a| a.file.clone()).collect();
        journal::remove(vfs, &files)?;
        merged.names = todo.len();
        debug!("{uri}: merged {} recorded entries into its member list", merged.names);
    }
    if let Some(oldest) = v.lists.oldest() {
        journal::forget_before(vfs, &v.journal, oldest)?;
    }
    Ok(merged)
}
