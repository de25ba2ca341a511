//! New and removed entries of a directory, recorded before they reach its
//! member list.
//!
//! A TileDB group writes its whole member list at every change and reads it
//! whole at every open, so adding an entry to a directory of N costs O(N).
//! A mount instead records each new entry, and each removal whose storage
//! stays for snapshots, as one small file in the directory's
//! `__modelfs_journal/` folder (O(1)), shows the change from there at once,
//! and merges the records into the member list in the background, many per
//! group write ([`super::Registry::merge_journal`]). Records apply in the
//! order of their times; a removal takes the name out only while it names
//! the removed storage.
//!
//! A merge writes the member list (stamped with its newest record's time,
//! so the directory's mtime stays when it changed), then a marker file
//! holding the records it merged and that time, then deletes their files.
//! A record no marker names counts; one merged does not, even if a later
//! change removed its entry. A snapshot as of T counts the records made by
//! T that were not merged by T (from the markers), so it shows the entries
//! exactly. Markers are deleted once their list is older than the oldest
//! list kept as history ([`crate::tiledb::HISTORY_KEPT`]). TileDB tools
//! reading the group see an entry once it is merged (within 2 s in a
//! mount; `modelfs compact` merges what a stopped mount left).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use log::warn;
use serde::{Deserialize, Serialize};

use crate::tiledb::Vfs;

use super::error::Result;
use super::names::last_component;
use super::tree::Storage;

/// The folder inside a group's folder holding its records.
pub(super) const JOURNAL_DIR: &str = "__modelfs_journal";
const RECORD_SUFFIX: &str = ".json";
const MARKER_SUFFIX: &str = ".merged";

/// One entry added to or removed from a directory, and not yet merged
/// (maybe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    /// When it was made (ms), ordered after the member list it followed.
    pub time: u64,
    /// The record file's URI, as listed.
    pub file: String,
    pub name: String,
    /// The member URI as the group stores it: relative to the directory
    /// when `relative`.
    pub uri: String,
    pub relative: bool,
    pub storage: Storage,
    /// A removal: the entry named so and stored at `uri` goes, its storage
    /// kept for snapshots (the merge records it as `modelfs.deleted.*`).
    pub removed: bool,
    /// The time of the member list that merged it, if one did.
    pub merged: Option<u64>,
}

/// A directory's journal as listed.
#[derive(Debug, Default)]
pub(super) struct Journal {
    /// Record files, oldest first (those a marker names were merged and
    /// are being deleted). The markers hold the merged ones.
    pub records: Vec<Record>,
    /// Marker files with the time of the list each wrote, and the record
    /// files each names.
    pub markers: Vec<Marker>,
}

/// Cheap to clone: a marker's records are parsed once and shared by every
/// read of the journal while the marker lasts (thousands of records when
/// entries are made quickly: copying them on every read made a `mkdir`
/// cost grow with the pace of changes).
#[derive(Debug, Clone)]
pub(super) struct Marker {
    pub file: String,
    pub time: u64,
    /// The records it merged (their files are deleted after it is written).
    pub records: Arc<Vec<Record>>,
    /// The file names of those records.
    ids: Arc<HashSet<String>>,
}

impl Marker {
    fn new(file: String, time: u64, records: Vec<Record>) -> Self {
        let ids = records.iter().map(|r| record_id(r).to_string()).collect();
        Marker {
            file,
            time,
            records: Arc::new(records),
            ids: Arc::new(ids),
        }
    }

    /// Whether it merged the record whose file is named `id`.
    pub fn merged(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

/// A merged record, one JSON line of a marker.
#[derive(Serialize, Deserialize)]
struct MergedLine {
    /// The record file's name.
    file: String,
    time: u64,
    #[serde(flatten)]
    body: Body,
}

/// What a record file holds.
#[derive(Serialize, Deserialize)]
pub(super) struct Body {
    name: String,
    uri: String,
    relative: bool,
    dir: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    removed: bool,
}

impl Body {
    /// Entry `name` (member URI `uri`, relative to the directory when
    /// `relative`) added, or removed when `removed`.
    pub fn new(name: &str, (uri, relative): (String, bool), storage: Storage, removed: bool) -> Self {
        Body {
            name: name.to_string(),
            uri,
            relative,
            dir: storage == Storage::Group,
            removed,
        }
    }

    fn of(a: &Record) -> Self {
        Body {
            name: a.name.clone(),
            uri: a.uri.clone(),
            relative: a.relative,
            dir: a.storage == Storage::Group,
            removed: a.removed,
        }
    }

    /// The record of file `file`, made at `time`.
    fn into_record(self, time: u64, file: String, merged: Option<u64>) -> Record {
        Record {
            time,
            file,
            name: self.name,
            uri: self.uri,
            relative: self.relative,
            storage: if self.dir { Storage::Group } else { Storage::Array },
            removed: self.removed,
            merged,
        }
    }
}

/// The record file's name alone: records are compared by it, as listings
/// and markers spell the folder differently.
pub(super) fn record_id(a: &Record) -> &str {
    last_component(&a.file)
}

pub(super) fn journal_dir(dir_uri: &str) -> String {
    format!("{}/{JOURNAL_DIR}", dir_uri.trim_end_matches('/'))
}

fn record_name(time: u64) -> String {
    timed_name(time, RECORD_SUFFIX)
}

fn timed_name(time: u64, suffix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let salt = (u64::from(nanos) << 20) ^ u64::from(std::process::id()) ^ rand_bits();
    format!("{time:013}_{salt:016x}{suffix}")
}

/// A few bits that differ between calls within one nanosecond and process.
fn rand_bits() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The time a record's or marker's file name carries.
fn name_time(file: &str, suffix: &str) -> Option<u64> {
    let stem = last_component(file).strip_suffix(suffix)?;
    stem.split('_').next()?.parse().ok()
}

fn record_time(file: &str) -> Option<u64> {
    name_time(file, RECORD_SUFFIX)
}

/// Writes the marker of a merge of `records` into the list of `time` (ms),
/// holding them whole: their files are deleted after, and snapshots of a
/// time before the merge still count them.
pub(super) fn write_marker(vfs: &Vfs, dir_uri: &str, time: u64, records: &[Record]) -> Result<()> {
    let mut lines = String::new();
    for a in records {
        let line = MergedLine {
            file: record_id(a).to_string(),
            time: a.time,
            body: Body::of(a),
        };
        lines.push_str(&serde_json::to_string(&line).expect("a record serializes"));
        lines.push('\n');
    }
    let file = format!("{}/{}", journal_dir(dir_uri), timed_name(time, MARKER_SUFFIX));
    vfs.write_file(&file, lines.as_bytes())?;
    Ok(())
}

/// A parsed journal file (they never change).
#[derive(Clone)]
enum Parsed1 {
    Record(Record),
    Marker(Marker),
}

/// Writes record `body` of directory `dir_uri`, made at `time` (ms).
pub(super) fn write(vfs: &Vfs, dir_uri: &str, time: u64, body: &Body) -> Result<()> {
    let folder = journal_dir(dir_uri);
    if super::uri::is_local(dir_uri) && !vfs.is_dir(&folder)? {
        vfs.create_dir(&folder)?;
    }
    let bytes = serde_json::to_vec(body).expect("a record serializes");
    vfs.write_file(&format!("{folder}/{}", record_name(time)), &bytes)?;
    Ok(())
}

/// Records read before, by file URI (a record never changes), per
/// directory: the listing tells which are still there.
#[derive(Default)]
pub(super) struct Parsed {
    by_dir: Mutex<HashMap<String, HashMap<String, Parsed1>>>,
}

/// Directories whose parsed records are kept at most; beyond that the
/// least recently listed are dropped (and read again when listed).
const PARSED_DIRS: usize = 4096;

impl Parsed {
    /// The journal of directory `dir_uri`. A file that cannot be read yet
    /// (being written on a local disk) or at all is left out with a
    /// warning; one deleted since the listing is left out.
    pub(super) fn read(&self, vfs: &Vfs, dir_uri: &str) -> Result<Journal> {
        let folder = journal_dir(dir_uri);
        // Locally one stat answers for the many directories without one;
        // on an object store a listing of nothing costs the same.
        let local = super::uri::is_local(dir_uri);
        let files = if local && !vfs.is_dir(&folder)? {
            Vec::new()
        } else {
            match vfs.ls(&folder) {
                Ok(f) => f,
                Err(_) if !vfs.is_dir(&folder)? => Vec::new(),
                Err(e) => return Err(e.into()),
            }
        };
        let mut known = self
            .by_dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(dir_uri)
            .unwrap_or_default();
        let mut now = HashMap::new();
        for file in files {
            let (record, time) = match (record_time(&file), name_time(&file, MARKER_SUFFIX)) {
                (Some(t), _) => (true, t),
                (None, Some(t)) => (false, t),
                (None, None) => continue,
            };
            if let Some(p) = known.remove(&file) {
                now.insert(file, p);
                continue;
            }
            let bytes = match vfs.read_file(&file) {
                Ok(b) => b,
                Err(_) if !vfs.is_file(&file)? => continue,
                Err(e) => return Err(e.into()),
            };
            if !record {
                let mut records = Vec::new();
                for line in String::from_utf8_lossy(&bytes).lines() {
                    match serde_json::from_str::<MergedLine>(line) {
                        Ok(l) => records.push(l.body.into_record(l.time, format!("{folder}/{}", l.file), Some(time))),
                        // Cut short by a crash: what it lists counts as
                        // not merged (a merge again is harmless).
                        Err(e) => warn!("{file}: a line is not a merged record ({e}); ignored"),
                    }
                }
                now.insert(file.clone(), Parsed1::Marker(Marker::new(file, time, records)));
                continue;
            }
            match serde_json::from_slice::<Body>(&bytes) {
                Ok(b) => {
                    let record = b.into_record(time, file.clone(), None);
                    now.insert(file, Parsed1::Record(record));
                }
                Err(e) => warn!("{file}: not a record of an entry ({e}); ignored"),
            }
        }
        let mut out = Journal::default();
        for p in now.values() {
            match p {
                Parsed1::Record(a) => out.records.push(a.clone()),
                Parsed1::Marker(m) => out.markers.push(m.clone()),
            }
        }
        mark_merged(&mut out);
        out.records.sort_by(|a, b| (a.time, &a.file).cmp(&(b.time, &b.file)));
        let mut by_dir = self.by_dir.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if by_dir.len() >= PARSED_DIRS {
            by_dir.clear();
        }
        if !now.is_empty() {
            by_dir.insert(dir_uri.to_string(), now);
        }
        Ok(out)
    }
}

/// Sorts the markers by time and marks each record file a marker names
/// (its deletion after the merge was cut short) as merged by the first
/// marker that names it: a merge cut short may have been done again.
fn mark_merged(journal: &mut Journal) {
    journal.markers.sort_by_key(|m| m.time);
    for a in &mut journal.records {
        a.merged = journal.markers.iter().find(|m| m.merged(record_id(a))).map(|m| m.time);
    }
}

impl Journal {
    /// The merged records whose files are gone, held by the markers.
    pub fn merged_only(&self) -> impl Iterator<Item = &Record> {
        let files: HashSet<&str> = self.records.iter().map(record_id).collect();
        (self.markers.iter().flat_map(|m| m.records.iter())).filter(move |r| !files.contains(record_id(r)))
    }

    /// Whether a marker names the record whose file is named `id`.
    pub fn is_merged(&self, id: &str) -> bool {
        self.markers.iter().any(|m| m.merged(id))
    }
}

/// Deletes the markers of merges into lists older than `horizon` (ms),
/// which no reader counts any more: the current lists hold what they
/// merged, and snapshots before the oldest kept list cannot be exact
/// anyway.
pub(super) fn forget_before(vfs: &Vfs, journal: &Journal, horizon: u64) -> Result<()> {
    for m in journal.markers.iter().filter(|m| m.time < horizon) {
        let records: Vec<String> = m.records.iter().map(|r| r.file.clone()).collect();
        remove(vfs, &records)?;
        remove(vfs, std::slice::from_ref(&m.file))?;
    }
    Ok(())
}

/// Deletes the files `files`; one already gone is no error.
pub(super) fn remove(vfs: &Vfs, files: &[String]) -> Result<()> {
    for f in files {
        if let Err(e) = vfs.remove_file(f)
            && vfs.is_file(f)?
        {
            return Err(e.into());
        }
    }
    Ok(())
}

/// Deletes directory `dir_uri`'s journal folder, records and all.
pub(super) fn remove_all(vfs: &Vfs, dir_uri: &str) -> Result<()> {
    let folder = journal_dir(dir_uri);
    if vfs.is_dir(&folder)? {
        vfs.remove_dir(&folder)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(file: &str) -> Record {
        Record {
            time: 1,
            file: format!("file:///d/{JOURNAL_DIR}/{file}"),
            name: "x".to_string(),
            uri: "x".to_string(),
            relative: true,
            storage: crate::registry::Storage::Group,
            removed: false,
            merged: None,
        }
    }

    #[test]
    fn a_record_two_merges_name_counts_from_the_first() {
        let mut j = Journal {
            records: vec![record("a.json"), record("b.json"), record("c.json")],
            markers: vec![
                Marker::new("m2".to_string(), 20, vec![record("a.json"), record("b.json")]),
                Marker::new("m1".to_string(), 10, vec![record("a.json")]),
            ],
        };
        mark_merged(&mut j);
        let merged: Vec<Option<u64>> = j.records.iter().map(|r| r.merged).collect();
        assert_eq!(merged, [Some(10), Some(20), None]);
        assert!(j.is_merged("b.json") && !j.is_merged("c.json"));
        assert_eq!(j.markers[0].time, 10);
    }

    #[test]
    fn record_names_carry_their_time_and_differ() {
        let a = record_name(1_796_207_933_572);
        let b = record_name(1_796_207_933_572);
        assert_ne!(a, b);
        assert_eq!(
            record_time(&format!("s3://b/d/{JOURNAL_DIR}/{a}")),
            Some(1_796_207_933_572)
        );
        assert_eq!(record_time("file:///d/__modelfs_journal/x.tmp"), None);
        // Zero-padded: names sort as their times do.
        assert!(record_name(99) < record_name(100));
    }
}
