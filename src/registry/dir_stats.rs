//! Subdirectories' stats from one listing of their parent's folder.
//!
//! A subdirectory's stat (its attributes, and its link count, which counts
//! its own subdirectories) is a read of its group: on an object store five
//! listings and a few reads, so `ls -l` of 10,000 directories took minutes.
//! Here one listing of every file under the parent (one request per 1,000
//! files on an object store, whatever the depth) tells, for each
//! subdirectory, the names of the files its stat is read from: its member
//! lists (`__group/`), its metadata (`__meta/`) and its journal
//! (`__modelfs_journal/`). TileDB and modelfs never change such a file
//! (a change adds one), so those names are a fingerprint of the stat.
//!
//! - A subdirectory with none of them is an empty group with nothing
//!   stored: its stat is known from the listing alone.
//! - Else a summary labelled with the same fingerprint, left by a mount
//!   that read the stat before (an empty file in the parent's
//!   `__modelfs_stats/` folder whose name holds the stat), tells it.
//! - Else it is read as before, and the mount leaves a summary for the
//!   next one.
//!
//! A summary is only used while its fingerprint is the subdirectory's, so
//! a stale one (a change by another mount, a tool, a crash after a change)
//! is never shown: it costs a read. Summaries of removed entries stay until
//! their directory is deleted (a few hundred bytes of listing each).

use std::collections::HashMap;

use log::debug;

use super::attrs::Attrs;
use super::error::Result;
use super::journal::JOURNAL_DIR;
use super::names::last_component;
use super::tree::{Entry, Registry, Storage};
use super::uri::canonical;
use crate::tiledb::{Group, GroupFile, Vfs};

/// The folder inside a group's folder holding its subdirectories' summaries.
pub const STATS_DIR: &str = "__modelfs_stats";

/// Files listed per subdirectory at most before a listing is given up (the
/// subdirectories hold much more than their own files: their entries'
/// arrays): reading them one by one then costs less.
const FILES_PER_SUBDIR: usize = 24;

/// Entries of a directory read whole at most (the names kept from its
/// listing take about 500 bytes per entry).
const MOST_ENTRIES: usize = 1 << 16;

/// Files listed beyond [`FILES_PER_SUBDIR`] per entry: a directory of a few
/// entries is still read whole when they hold a few models' files.
const LISTING_SLACK: usize = 4096;

/// What a stat of a directory shows that is not in its parent's listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirStat {
    pub attrs: Attrs,
    /// Its entries that are directories (its link count is 2 more).
    pub subdirs: u32,
}

/// Where a subdirectory's summary goes once its stat is read: its
/// fingerprint as listed before the read, and the summaries it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatLabel {
    key: String,
    stale: Vec<String>,
}

impl DirStat {
    /// An empty group with nothing stored.
    pub const EMPTY: DirStat = DirStat {
        attrs: Attrs {
            mode: None,
            uid: None,
            gid: None,
            mtime_ns: None,
            atime_ns: None,
            ctime_ns: None,
        },
        subdirs: 0,
    };
}

impl StatLabel {
    /// A label for a store of another kind (in memory): `key` names the
    /// state the stat will be read from.
    pub fn new(key: String) -> Self {
        StatLabel { key, stale: Vec::new() }
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The stats one listing of a directory tells, by subdirectory URI, and the
/// labels of those it does not.
#[derive(Debug, Default)]
pub struct Summaries {
    pub known: HashMap<String, DirStat>,
    pub unknown: HashMap<String, StatLabel>,
}

/// One subdirectory's files as listed: whether it is a group, and the
/// names (relative to it) of the files its stat is read from.
#[derive(Default)]
struct ChildFiles {
    group: bool,
    own: Vec<String>,
}

impl Registry {
    /// The stats of `children` (entries of group `dir`) that one listing of
    /// `dir`'s folder tells, and labels for the others; `None` when that
    /// listing would cost more than reading them (too many files) or
    /// cannot tell (a snapshot, a plain directory).
    pub fn dir_stats(&self, dir: &Entry, children: &[Entry]) -> Result<Option<Summaries>> {
        if self.snapshot_time().is_some() || dir.storage != Storage::Group || children.len() > MOST_ENTRIES {
            return Ok(None);
        }
        let base = format!("{}/", canonical(&dir.uri));
        // Subdirectories stored in the folder, by storage name; only their
        // names are kept from the listing (it may hold millions).
        let mut inside: HashMap<&str, &Entry> = HashMap::new();
        for c in children.iter().filter(|e| e.storage == Storage::Group) {
            if let Some(name) = canonical(&c.uri)
                .strip_prefix(base.as_str())
                .filter(|n| !n.contains('/'))
            {
                inside.insert(name, c);
            }
        }
        let ids: HashMap<String, &str> = inside.keys().map(|n| (name_id(n), *n)).collect();
        let limit = FILES_PER_SUBDIR * children.len() + LISTING_SLACK;
        let mut files = 0;
        let mut listed: HashMap<&str, ChildFiles> = HashMap::new();
        let mut kept: HashMap<&str, Vec<String>> = HashMap::new();
        let mut orphans = Vec::new();
        let whole = self.vfs().ls_recursive(&dir.uri, &mut |path, _| {
            files += 1;
            if files > limit {
                return false;
            }
            let Some((child, inner)) = canonical(path)
                .strip_prefix(base.as_str())
                .and_then(|r| r.split_once('/'))
            else {
                return true;
            };
            if child == STATS_DIR {
                match inner.split_once(SEP).map(|(id, _)| ids.get(id)) {
                    Some(Some(name)) => kept.entry(*name).or_default().push(path.to_string()),
                    // Of an entry removed since (or another tool's file).
                    _ if parse_summary(inner).is_some() => orphans.push(path.to_string()),
                    _ => {}
                }
                return true;
            }
            let Some((&name, _)) = inside.get_key_value(child) else {
                return true;
            };
            match Group::file_kind(inner) {
                GroupFile::Marker => listed.entry(name).or_default().group = true,
                GroupFile::State => listed.entry(name).or_default().own.push(inner.to_string()),
                GroupFile::Other if in_folder(inner, JOURNAL_DIR) => {
                    listed.entry(name).or_default().own.push(inner.to_string())
                }
                GroupFile::Other => {}
            }
            true
        })?;
        if !whole {
            debug!(
                "{}: over {limit} files under it: subdirectories read one by one",
                dir.uri
            );
            return Ok(None);
        }
        let mut out = Summaries::default();
        for (id, name) in &ids {
            let child = inside[name];
            let Some(l) = listed.get_mut(name).filter(|l| l.group) else {
                continue;
            };
            if l.own.is_empty() {
                out.known.insert(child.uri.clone(), DirStat::EMPTY);
                continue;
            }
            l.own.sort_unstable();
            let key = format!("{id}{SEP}{}", fingerprint(&l.own));
            let mut stale = Vec::new();
            for path in kept.get(name).into_iter().flatten() {
                let Some((label, stat)) = parse_summary(last_component(path)) else {
                    continue;
                };
                if label == key && !out.known.contains_key(&child.uri) {
                    out.known.insert(child.uri.clone(), stat);
                } else {
                    stale.push(path.clone());
                }
            }
            if !out.known.contains_key(&child.uri) {
                // Summaries of removed entries go with the first one kept.
                stale.append(&mut orphans);
                out.unknown.insert(child.uri.clone(), StatLabel { key, stale });
            }
        }
        Ok(Some(out))
    }

    /// Leaves the summary of a subdirectory of `dir`, read as `stat` after
    /// the listing that gave `label`, and removes those it replaces.
    pub fn save_dir_stat(&self, dir: &Entry, label: &StatLabel, stat: &DirStat) -> Result<()> {
        let folder = stats_dir(&dir.uri);
        let vfs: &Vfs = self.vfs();
        if super::uri::is_local(&dir.uri) {
            // Object stores have no folders.
            vfs.create_dir(&folder)?;
        }
        vfs.touch(&format!("{folder}/{}{SEP}{}", label.key, format_stat(stat)))?;
        for old in &label.stale {
            if let Err(e) = vfs.remove_file(old) {
                debug!("{old}: stale summary not removed: {e}");
            }
        }
        Ok(())
    }
}

/// Removes group `dir_uri`'s summaries (with the group's own files).
pub(super) fn remove_all(vfs: &Vfs, dir_uri: &str) -> Result<()> {
    let folder = stats_dir(dir_uri);
    if vfs.is_dir(&folder)? {
        vfs.remove_dir(&folder)?;
    }
    Ok(())
}

/// Separates the fields of a summary's name.
const SEP: char = '_';

/// The folder of group `dir_uri`'s summaries.
fn stats_dir(dir_uri: &str) -> String {
    format!("{}/{STATS_DIR}", dir_uri.trim_end_matches('/'))
}

/// Whether `inner` (a path relative to a subdirectory) is a file right
/// inside its folder `dir`.
fn in_folder(inner: &str, dir: &str) -> bool {
    (inner.strip_prefix(dir))
        .and_then(|r| r.strip_prefix('/'))
        .is_some_and(|f| !f.is_empty() && !f.contains('/'))
}

/// A short stable name for a subdirectory's storage name (which may be
/// long or hold any character).
fn name_id(name: &str) -> String {
    hex(&blake3::hash(name.as_bytes()).as_bytes()[..8])
}

/// The fingerprint of a subdirectory's own files, by their sorted names,
/// and of how a stat is derived from them (a version that derives it
/// otherwise changes the tag, so it trusts no summary of this one).
fn fingerprint(sorted: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"modelfs dir stat 1\n");
    for f in sorted {
        h.update(f.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize().as_bytes()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn format_stat(s: &DirStat) -> String {
    let f = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let a = &s.attrs;
    [
        f(a.mode.map(u64::from)),
        f(a.uid.map(u64::from)),
        f(a.gid.map(u64::from)),
        f(a.mtime_ns),
        f(a.atime_ns),
        f(a.ctime_ns),
        s.subdirs.to_string(),
    ]
    .join(&SEP.to_string())
}

/// A summary's name, as its label (`<id>_<fingerprint>`) and stat; `None`
/// for a name this version does not write.
fn parse_summary(name: &str) -> Option<(&str, DirStat)> {
    let mut cut = name.match_indices(SEP).map(|(i, _)| i);
    let (_, end) = (cut.next()?, cut.next()?);
    Some((&name[..end], parse_stat(&name[end + 1..])?))
}

/// The stat a summary's name holds after its label.
fn parse_stat(fields: &str) -> Option<DirStat> {
    let parts: Vec<&str> = fields.split(SEP).collect();
    let [mode, uid, gid, mtime, atime, ctime, subdirs] = parts.as_slice() else {
        return None;
    };
    let f = |v: &str| -> Option<Option<u64>> {
        match v {
            "-" => Some(None),
            v => v.parse().ok().map(Some),
        }
    };
    let id = |v: &str| -> Option<Option<u32>> { f(v)?.map(u32::try_from).transpose().ok() };
    Some(DirStat {
        attrs: Attrs {
            mode: id(mode)?.map(|m| m & super::attrs::MODE_BITS),
            uid: id(uid)?,
            gid: id(gid)?,
            mtime_ns: f(mtime)?,
            atime_ns: f(atime)?,
            ctime_ns: f(ctime)?,
        },
        subdirs: subdirs.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_reads_back_from_its_summary_name() {
        let stats = [
            DirStat {
                attrs: Attrs::default(),
                subdirs: 0,
            },
            DirStat {
                attrs: Attrs {
                    mode: Some(0o1755),
                    uid: Some(u32::MAX),
                    gid: Some(0),
                    mtime_ns: Some(u64::MAX),
                    atime_ns: None,
                    ctime_ns: Some(1_764_000_000_123_456_789),
                },
                subdirs: u32::MAX,
            },
        ];
        for s in stats {
            assert_eq!(parse_stat(&format_stat(&s)), Some(s));
        }
        for bad in [
            "",
            "1_2_3",
            "x_-_-_-_-_-_0",
            "-_-_-_-_-_-_0_9",
            "-_99999999999_-_-_-_-_0",
        ] {
            assert_eq!(parse_stat(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_a_subdirectory_s_own_files_count() {
        let own = |f: &str| Group::file_kind(f) == GroupFile::State || in_folder(f, JOURNAL_DIR);
        for yes in ["__group/__1_2_abc_2", "__meta/x", "__modelfs_journal/0001_ab.json"] {
            assert!(own(yes), "{yes}");
        }
        for no in [
            "__group/",
            "__groupx/a",
            "m/__meta/x",
            "__meta/a/b",
            "__tiledb_group.tdb",
            "f/__schema/1",
        ] {
            assert!(!own(no), "{no}");
        }
        assert_eq!(Group::file_kind("__tiledb_group.tdb"), GroupFile::Marker);
        let name = format!("{}_{}_{}", "ab", "cd", format_stat(&DirStat::EMPTY));
        assert_eq!(parse_summary(&name), Some(("ab_cd", DirStat::EMPTY)));
        assert_eq!(parse_summary("ab_cd"), None);
    }

    #[test]
    fn fingerprints_differ_when_any_file_does() {
        let a = vec!["__group/a".to_string(), "__meta/b".to_string()];
        let b = vec!["__group/a".to_string(), "__meta/c".to_string()];
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_eq!(name_id("model-00001").len(), 16);
    }
}
