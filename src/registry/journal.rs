//! New entries of a directory, recorded before they reach its member list.
//!
//! A TileDB group writes its whole member list at every change and reads it
//! whole at every open, so adding an entry to a directory of N costs O(N).
//! A mount instead records each new entry as one small file in the
//! directory's `__modelfs_journal/` folder (O(1)), shows it from there at
//! once, and merges the records into the member list in the background,
//! many per group write ([`super::Registry::merge_journal`]).
//!
//! A record counts while its time is later than the group's newest member
//! list: the merge stamps the list it writes with the newest record's time,
//! and deletes the records after, so a record still there once merged is
//! ignored, as is one whose entry a later change removed. Readers list the
//! records before the group's lists, so a record deleted in between was
//! merged into a list they see. Records are written only while holding
//! the directory's lock, stamped after the newest list, so a merge never
//! writes a list that hides a record it did not read. TileDB tools reading
//! the group see an entry once it is merged (within a second in a mount;
//! `modelfs compact` merges what a stopped mount left).

use std::collections::HashMap;
use std::sync::Mutex;

use log::warn;
use serde::{Deserialize, Serialize};

use crate::tiledb::Vfs;

use super::error::Result;
use super::tree::Storage;

/// The folder inside a group's folder holding its records.
pub(super) const JOURNAL_DIR: &str = "__modelfs_journal";
const RECORD_SUFFIX: &str = ".json";

/// One entry added to a directory and not yet merged (maybe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Added {
    /// When it was added (ms), ordered after the member list it followed.
    pub time: u64,
    /// The record file's URI, as listed.
    pub file: String,
    pub name: String,
    /// The member URI as the group stores it: relative to the directory
    /// when `relative`.
    pub uri: String,
    pub relative: bool,
    pub storage: Storage,
}

#[derive(Serialize, Deserialize)]
struct Body {
    name: String,
    uri: String,
    relative: bool,
    dir: bool,
}

pub(super) fn journal_dir(dir_uri: &str) -> String {
    format!("{}/{JOURNAL_DIR}", dir_uri.trim_end_matches('/'))
}

fn record_name(time: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let salt = (u64::from(nanos) << 20) ^ u64::from(std::process::id()) ^ rand_bits();
    format!("{time:013}_{salt:016x}{RECORD_SUFFIX}")
}

/// A few bits that differ between calls within one nanosecond and process.
fn rand_bits() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The time a record's file name carries.
fn record_time(file: &str) -> Option<u64> {
    let name = file.trim_end_matches('/').rsplit('/').next()?;
    let stem = name.strip_suffix(RECORD_SUFFIX)?;
    stem.split('_').next()?.parse().ok()
}

/// Records that entry `name` (member URI `uri`, relative to the directory
/// when `relative`) was added to directory `dir_uri` at `time` (ms).
pub(super) fn write(
    vfs: &Vfs,
    dir_uri: &str,
    time: u64,
    name: &str,
    uri: &str,
    relative: bool,
    storage: Storage,
) -> Result<()> {
    let folder = journal_dir(dir_uri);
    if super::uri::is_local(dir_uri) && !vfs.is_dir(&folder)? {
        vfs.create_dir(&folder)?;
    }
    let body = serde_json::to_vec(&Body {
        name: name.to_string(),
        uri: uri.to_string(),
        relative,
        dir: storage == Storage::Group,
    })
    .expect("a record serializes");
    vfs.write_file(&format!("{folder}/{}", record_name(time)), &body)?;
    Ok(())
}

/// Records read before, by file URI (a record never changes), per
/// directory: the listing tells which are still there.
#[derive(Default)]
pub(super) struct Parsed {
    by_dir: Mutex<HashMap<String, HashMap<String, Added>>>,
}

/// Directories whose parsed records are kept at most; beyond that the
/// least recently listed are dropped (and read again when listed).
const PARSED_DIRS: usize = 4096;

impl Parsed {
    /// The records in directory `dir_uri`, oldest first. One that cannot
    /// be read yet (being written on a local disk) or at all is left out
    /// with a warning; one deleted since the listing was merged.
    pub(super) fn read(&self, vfs: &Vfs, dir_uri: &str) -> Result<Vec<Added>> {
        let folder = journal_dir(dir_uri);
        let files = match vfs.ls(&folder) {
            Ok(f) => f,
            Err(_) if !vfs.is_dir(&folder)? => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut known = self
            .by_dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(dir_uri)
            .unwrap_or_default();
        let mut now = HashMap::new();
        for file in files {
            let Some(time) = record_time(&file) else { continue };
            if let Some(a) = known.remove(&file) {
                now.insert(file, a);
                continue;
            }
            let bytes = match vfs.read_file(&file) {
                Ok(b) => b,
                Err(_) if !vfs.is_file(&file)? => continue,
                Err(e) => return Err(e.into()),
            };
            match serde_json::from_slice::<Body>(&bytes) {
                Ok(b) => {
                    let added = Added {
                        time,
                        file: file.clone(),
                        name: b.name,
                        uri: b.uri,
                        relative: b.relative,
                        storage: if b.dir { Storage::Group } else { Storage::Array },
                    };
                    now.insert(file, added);
                }
                Err(e) => warn!("{file}: not a record of a new entry ({e}); ignored"),
            }
        }
        let mut out: Vec<Added> = now.values().cloned().collect();
        out.sort_by(|a, b| (a.time, &a.file).cmp(&(b.time, &b.file)));
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

/// Deletes the record files `files`; one already gone is no error.
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

    #[test]
    fn record_names_carry_their_time_and_differ() {
        let a = record_name(1_796_207_933_572);
        let b = record_name(1_796_207_933_572);
        assert_ne!(a, b);
        assert_eq!(record_time(&format!("s3://b/d/{JOURNAL_DIR}/{a}")), Some(1_796_207_933_572));
        assert_eq!(record_time("file:///d/__modelfs_journal/x.tmp"), None);
        // Zero-padded: names sort as their times do.
        assert!(record_name(99) < record_name(100));
    }
}
