//! A group's member list over time, and its compaction.
//!
//! Every membership change makes TileDB write one more file in the group's
//! `__group/` folder holding the whole member list as the writer saw it
//! (plus the change), and every open, for reading or writing, reads and
//! applies all of them in timestamp order. A directory changed N times
//! therefore costs N file reads per open and O(N × members) bytes of
//! storage. Compaction writes the current list once more, through TileDB's
//! own group write, stamped with the newest change it covers, and names
//! the files it replaces in a vacuum file (`.vac`), which TileDB's open
//! already honours: it skips the files named there. The replaced files are
//! deleted later ([`vacuum_members`]), once a reader that listed the folder
//! just before the `.vac` appeared has had time to read them.
//!
//! Why it is safe: opens apply the files in order, an added member
//! overriding and a removed one erasing, and each file written by one
//! writer after another holds the whole list. Skipping every file up to the
//! newest one covered (oldest first) leaves the same result, since the
//! compacted list holds what they made. The lines of a `.vac` file are
//! written oldest first, so one cut short (a crash on a local disk) still
//! names a prefix of the history, which is equally safe to skip.

use std::collections::HashSet;
use std::time::Duration;

use super::context::Context;
use super::error::Result;
use super::group::{Group, GroupMode};
use super::vfs::Vfs;

const DETAILS_DIR: &str = "__group";
const META_DIR: &str = "__meta";
const VACUUM_SUFFIX: &str = ".vac";

/// One member-list file, as TileDB's listing spells its URI.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListFile {
    uri: String,
    /// The newest change it holds (ms).
    timestamp: u64,
}

/// A vacuum file: when it was written and which list files it replaces.
#[derive(Debug)]
struct VacuumFile {
    uri: String,
    /// `None` for another tool's, whose name does not say.
    written_ms: Option<u64>,
    names: Vec<String>,
}

impl VacuumFile {
    /// Written at least `grace_ms` ago; another tool's only with no grace.
    fn due(&self, now: u64, grace_ms: u64) -> bool {
        self.written_ms
            .map_or(grace_ms == 0, |w| now.saturating_sub(w) >= grace_ms)
    }
}

/// The state of a group's `__group/` folder.
#[derive(Debug, Default)]
struct History {
    /// Every list file, retired or not.
    all: Vec<ListFile>,
    /// List files no vacuum file names, oldest first: what an open reads.
    live: Vec<ListFile>,
    vacuum: Vec<VacuumFile>,
}

/// What one compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compaction {
    /// List files an open no longer reads.
    pub replaced: usize,
}

/// What one vacuum pass deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vacuumed {
    pub files: usize,
    pub bytes: u64,
}

fn details_dir(uri: &str) -> String {
    format!("{}/{DETAILS_DIR}", uri.trim_end_matches('/'))
}

fn last_part(uri: &str) -> &str {
    uri.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// The `(first, last)` timestamps of a TileDB timestamped name
/// (`__<t1>_<t2>_<id>[_<version>][.vac]`).
fn timestamps(name: &str) -> Option<(u64, u64)> {
    let mut parts = name.strip_prefix("__")?.split('_');
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some((first, last))
}

/// The time a vacuum file of ours was written: the first 16 hex digits of
/// its id (see [`vacuum_name`]); other tools' ones count as just written.
fn vacuum_written_ms(name: &str) -> Option<u64> {
    let id = name.strip_prefix("__")?.split('_').nth(2)?;
    u64::from_str_radix(id.get(..16)?, 16).ok()
}

/// When the vacuum file at `uri` was written, if it is one of ours.
fn written_ms_of(uri: &str) -> Option<u64> {
    last_part(uri).strip_suffix(VACUUM_SUFFIX).and_then(vacuum_written_ms)
}

/// A vacuum file's name: the range of list files it replaces, then an id
/// whose first half is the time of writing, so that a later pass knows how
/// long it has existed (object stores keep no usable modification time).
fn vacuum_name(first: u64, last: u64, now: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let salt = (u64::from(nanos) << 20) ^ u64::from(std::process::id());
    format!("__{first}_{last}_{now:016x}{salt:016x}_2{VACUUM_SUFFIX}")
}

/// The group's `__group/` folder as named: its list files, oldest first,
/// and its vacuum files (their URIs as TileDB's listing spells them).
fn list_folder(vfs: &Vfs, uri: &str) -> Result<(Vec<ListFile>, Vec<String>)> {
    let dir = details_dir(uri);
    let mut files = Vec::new();
    let mut vacuum = Vec::new();
    // Every group has the folder: listing it first saves a check (a stat
    // for each directory `ls -l` shows).
    let listed = match vfs.ls(&dir) {
        Ok(l) => l,
        Err(_) if !vfs.is_dir(&dir)? => return Ok((files, vacuum)),
        Err(e) => return Err(e),
    };
    for child in listed {
        let name = last_part(&child);
        if name.ends_with(VACUUM_SUFFIX) {
            vacuum.push(child);
        } else if let Some((_, last)) = timestamps(name) {
            files.push(ListFile {
                uri: child,
                timestamp: last,
            });
        }
    }
    files.sort_by(|a, b| (a.timestamp, &a.uri).cmp(&(b.timestamp, &b.uri)));
    Ok((files, vacuum))
}

fn read_history(vfs: &Vfs, uri: &str) -> Result<History> {
    let (files, vacuum_uris) = list_folder(vfs, uri)?;
    let mut vacuum = Vec::new();
    for child in vacuum_uris {
        let Some(names) = read_if_there(vfs, &child)? else {
            continue;
        };
        vacuum.push(VacuumFile {
            written_ms: written_ms_of(&child),
            names,
            uri: child,
        });
    }
    let replaced: HashSet<&str> = vacuum.iter().flat_map(|v| v.names.iter().map(String::as_str)).collect();
    let live: Vec<ListFile> = files
        .iter()
        .filter(|f| !replaced.contains(f.uri.as_str()))
        .cloned()
        .collect();
    Ok(History {
        all: files,
        live,
        vacuum,
    })
}

/// How long replaced list files stay after the vacuum file naming them is
/// written. An open fixes its timestamp, then lists the folder, then reads
/// the files up to that timestamp: one that fixed it just before a change
/// still needs the list files that change replaced, and finds them if it
/// lists within this time. An open that took longer would see the
/// directory as it was, or empty, never a wrong mix; it cannot tell.
pub const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// Retired member lists kept beside the current one: a snapshot of the
/// registry as of an earlier time (`mount --at`) reads the list that was
/// current then, so a directory's last this many changes can be looked back
/// on; before them it lists as empty. Each is the whole list, so this
/// bounds a directory's storage at this many times its list.
pub const HISTORY_KEPT: usize = 16;

/// A membership change that also retires the list files it makes
/// redundant. The folder is listed before the group is opened for writing,
/// so every file listed is one the write loads; the file the change writes
/// then holds all they held, and they are named in a vacuum file.
pub struct MembersChange {
    ctx: Context,
    uri: String,
    stamp: u64,
    group: Group,
    before: Vec<ListFile>,
    vacuum_before: Vec<String>,
}

impl MembersChange {
    /// Lists the group's `__group/` folder, then opens it for writing.
    pub fn begin(ctx: &Context, uri: &str) -> Result<Self> {
        Self::begin_at(ctx, uri, None)
    }

    /// As [`MembersChange::begin`], the change stamped `timestamp` (ms)
    /// instead of now: it must be later than every list file there is.
    pub fn begin_at(ctx: &Context, uri: &str, timestamp: Option<u64>) -> Result<Self> {
        let (before, vacuum_before) = list_folder(&Vfs::new(ctx)?, uri)?;
        // Later than every list there is, even one written this very
        // millisecond (or by a clock ahead): TileDB orders lists by their
        // time, and two of one time in no set order.
        let after_newest = before.last().map_or(0, |f| f.timestamp + 1);
        let stamp = timestamp.unwrap_or_else(super::now_ms).max(after_newest);
        let group = Group::open_at(ctx, uri, GroupMode::Write, Some(stamp))?;
        Ok(MembersChange {
            ctx: ctx.clone(),
            uri: uri.to_string(),
            stamp,
            group,
            before,
            vacuum_before,
        })
    }

    pub fn group(&mut self) -> &mut Group {
        &mut self.group
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The time (ms) the change's list file is stamped with.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// Writes the change (the outer result), then names the list files it
    /// made redundant in a vacuum file and deletes those replaced more than
    /// [`RETIRE_GRACE`] ago (the inner one: failing there only leaves opens
    /// slower).
    pub fn commit(self) -> Result<Result<Retired>> {
        self.group.close()?;
        Ok(retire(&self.ctx, &self.uri, &self.before, &self.vacuum_before))
    }
}

/// What a change retired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retired {
    pub deleted: Vacuumed,
    /// Replaced files are left to delete after the grace period.
    pub pending: bool,
}

/// Names `before` in a new vacuum file, then deletes what vacuum files
/// written more than [`RETIRE_GRACE`] ago name, and them.
fn retire(ctx: &Context, uri: &str, before: &[ListFile], vacuum_before: &[String]) -> Result<Retired> {
    let vfs = Vfs::new(ctx)?;
    let now = super::now_ms();
    if let Some(first) = before.first() {
        let lines: String = before.iter().map(|f| format!("{}\n", f.uri)).collect();
        // The range ends now, after the change's own file: an open as of an
        // earlier time does not apply it and still reads the files it names.
        let vac = format!("{}/{}", details_dir(uri), vacuum_name(first.timestamp, now, now));
        vfs.write_file(&vac, lines.as_bytes())?;
    }
    let grace_ms = RETIRE_GRACE.as_millis() as u64;
    let mut done = Retired {
        pending: !before.is_empty(),
        ..Retired::default()
    };
    let mut due = Vec::new();
    for v in vacuum_before {
        let vac = VacuumFile {
            uri: v.clone(),
            written_ms: written_ms_of(v),
            names: Vec::new(),
        };
        if !vac.due(now, grace_ms) {
            // Another tool's never comes due (see `vacuum_members`).
            done.pending |= vac.written_ms.is_some();
        } else if let Some(names) = read_if_there(&vfs, v)? {
            due.push(VacuumFile { names, ..vac });
        }
    }
    let present: HashSet<&str> = before.iter().map(|f| f.uri.as_str()).collect();
    let keep = history_kept(before.iter());
    done.deleted = delete_due(&vfs, &details_dir(uri), due, &present, &keep)?;
    Ok(done)
}

/// The lines of the vacuum file `vac`, or `None` when it is gone (another
/// pass deleted it since the folder was listed).
fn read_if_there(vfs: &Vfs, vac: &str) -> Result<Option<Vec<String>>> {
    match vfs.read_file(vac) {
        Ok(t) => Ok(Some(String::from_utf8_lossy(&t).lines().map(str::to_string).collect())),
        Err(_) if !vfs.is_file(vac)? => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes what the vacuum files `due` (written at least a grace period
/// ago) make redundant. First the vacuum files a newer one of them
/// supersedes: each change names every list file it found, so the newest
/// names everything older ones name that is still `present`, and an open
/// skips the same files without them. (A snapshot as of a time between the
/// two reads more files, to the same result.) Every vacuum file an open
/// finds costs it a request on S3, and they would otherwise stay as long as
/// the history they name. Then, oldest first, the list files the rest name
/// but those in `keep`, and each vacuum file once nothing it names is left.
fn delete_due(
    vfs: &Vfs,
    dir: &str,
    mut due: Vec<VacuumFile>,
    present: &HashSet<&str>,
    keep: &HashSet<String>,
) -> Result<Vacuumed> {
    let mut done = Vacuumed::default();
    // Another tool's first: the newest is one of ours when there is one.
    due.sort_by(|a, b| (a.written_ms, &a.uri).cmp(&(b.written_ms, &b.uri)));
    if let Some(newest) = due.pop() {
        let named: HashSet<&str> = newest.names.iter().map(String::as_str).collect();
        let mut rest = Vec::new();
        for v in due {
            // Another tool's stays until what it names is gone.
            let superseded = v.written_ms.is_some()
                && v.names
                    .iter()
                    .filter(|n| present.contains(n.as_str()))
                    .all(|n| named.contains(n.as_str()));
            if superseded {
                remove_counted(vfs, &v.uri, &mut done)?;
            } else {
                rest.push(v);
            }
        }
        rest.push(newest);
        due = rest;
    }
    for v in &due {
        let one = delete_vacuumed(vfs, dir, v, keep)?;
        done.files += one.files;
        done.bytes += one.bytes;
    }
    Ok(done)
}

/// Deletes the list files vacuum file `vac` names, oldest first, but those
/// in `keep`; then the vacuum file itself once nothing it names is left
/// (while a retired file stays, a vacuum file must keep naming it, or
/// opens would apply it again).
fn delete_vacuumed(vfs: &Vfs, dir: &str, vac: &VacuumFile, keep: &HashSet<String>) -> Result<Vacuumed> {
    let mut names: Vec<&str> = vac.names.iter().map(String::as_str).collect();
    names.sort_by_key(|n| timestamps(last_part(n)).map(|t| t.1).unwrap_or(0));
    let mut done = Vacuumed::default();
    let mut kept = false;
    for name in names {
        // Only files of this folder: what else a vacuum file names is not
        // ours to delete.
        if !same_dir(name, dir) {
            continue;
        }
        if keep.contains(name) {
            kept = true;
            continue;
        }
        remove_counted(vfs, name, &mut done)?;
    }
    if !kept {
        remove_counted(vfs, &vac.uri, &mut done)?;
    }
    Ok(done)
}

/// Removes `file`, counting it in `done`; one already gone (another pass,
/// another mount) is no error.
fn remove_counted(vfs: &Vfs, file: &str, done: &mut Vacuumed) -> Result<()> {
    let bytes = vfs.file_size(file).ok();
    match vfs.remove_file(file) {
        Ok(()) => {
            done.files += 1;
            done.bytes += bytes.unwrap_or(0);
            Ok(())
        }
        Err(_) if !vfs.is_file(file)? => Ok(()),
        Err(e) => Err(e),
    }
}

/// The newest [`HISTORY_KEPT`] of `files`: the member lists a snapshot of
/// a recent time still reads.
fn history_kept<'a>(files: impl Iterator<Item = &'a ListFile>) -> HashSet<String> {
    let mut all: Vec<&ListFile> = files.collect();
    all.sort_by(|a, b| (b.timestamp, &b.uri).cmp(&(a.timestamp, &a.uri)));
    all.into_iter().take(HISTORY_KEPT).map(|f| f.uri.clone()).collect()
}

/// How many member-list files an open of the group at `uri` reads.
pub fn live_list_files(ctx: &Context, uri: &str) -> Result<usize> {
    Ok(read_history(&Vfs::new(ctx)?, uri)?.live.len())
}

/// Compacts the member list of the group at `uri` when an open reads more
/// than one list file: the list as of the newest one is written once more
/// and the older files are named in a new vacuum file. Readers see the same
/// members before, during and after. A change another writer makes while
/// this runs is kept (its file is not replaced).
pub fn compact_members(ctx: &Context, uri: &str) -> Result<Compaction> {
    let vfs = Vfs::new(ctx)?;
    let history = read_history(&vfs, uri)?;
    let (Some(first), Some(last)) = (history.live.first(), history.live.last()) else {
        return Ok(Compaction::default());
    };
    if history.live.len() < 2 {
        return Ok(Compaction::default());
    }
    let (first_ts, last_ts) = (first.timestamp, last.timestamp);
    // The list as of the newest file; writing it again needs one change, so
    // one member is added once more, unchanged.
    let members = Group::open_at(ctx, uri, GroupMode::Read, Some(last_ts))?.members()?;
    if let Some(m) = members.first() {
        let base = format!("{}/", uri.trim_end_matches('/'));
        let relative = m
            .uri
            .strip_prefix(&base)
            .or_else(|| m.uri.strip_prefix("file://").and_then(|p| p.strip_prefix(&base)))
            .filter(|r| !r.contains('/'));
        let mut group = Group::open_at(ctx, uri, GroupMode::Write, Some(last_ts))?;
        let name = m.name.clone().unwrap_or_else(|| m.uri.clone());
        match relative {
            Some(rel) => group.add_member(rel, true, &name, m.object_type)?,
            None => group.add_member(&m.uri, false, &name, m.object_type)?,
        }
        group.close()?;
    }
    // With no members left, skipping every file shows the same (none).
    let lines: String = history.live.iter().map(|f| format!("{}\n", f.uri)).collect();
    let vac = format!(
        "{}/{}",
        details_dir(uri),
        vacuum_name(first_ts, last_ts, super::now_ms())
    );
    vfs.write_file(&vac, lines.as_bytes())?;
    Ok(Compaction {
        replaced: history.live.len(),
    })
}

/// Deletes the list files replaced by vacuum files written at least
/// `grace` ago, oldest first, then those vacuum files (see [`delete_due`]).
pub fn vacuum_members(ctx: &Context, uri: &str, grace: Duration) -> Result<Retired> {
    let vfs = Vfs::new(ctx)?;
    let history = read_history(&vfs, uri)?;
    let now = super::now_ms();
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    let (due, young): (Vec<VacuumFile>, Vec<VacuumFile>) =
        history.vacuum.into_iter().partition(|v| v.due(now, grace_ms));
    let present: HashSet<&str> = history.all.iter().map(|f| f.uri.as_str()).collect();
    // The current list is one of the newest; the rest are kept as history.
    let keep = history_kept(history.all.iter());
    Ok(Retired {
        // Another tool's vacuum file never comes due: waiting for it would
        // read the folder again every round for as long as the mount runs.
        pending: young.iter().any(|v| v.written_ms.is_some()),
        deleted: delete_due(&vfs, &details_dir(uri), due, &present, &keep)?,
    })
}

/// The member-list files of a group, from their names alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFiles {
    /// Each one's timestamp (ms), oldest first, retired or not.
    pub timestamps: Vec<u64>,
    /// A hash of every name in the folder (lists and vacuum files): it
    /// changes whenever what an open reads may have, and only then (files
    /// are never rewritten in place).
    pub fingerprint: u64,
}

impl ListFiles {
    /// The newest one's timestamp (ms): when the members last changed.
    pub fn newest(&self) -> Option<u64> {
        self.timestamps.last().copied()
    }

    /// The oldest one's: the history kept reaches back to it.
    pub fn oldest(&self) -> Option<u64> {
        self.timestamps.first().copied()
    }

    pub fn count(&self) -> usize {
        self.timestamps.len()
    }

    /// The newest timestamp up to `at` (ms): the list an open as of `at`
    /// reads last.
    pub fn newest_until(&self, at: u64) -> Option<u64> {
        self.timestamps.iter().rev().find(|&&t| t <= at).copied()
    }
}

/// The member-list files of the group at `uri` (see [`ListFiles`]).
pub fn list_files(vfs: &Vfs, uri: &str) -> Result<ListFiles> {
    use std::hash::{Hash, Hasher};
    let (files, vacuum) = list_folder(vfs, uri)?;
    let mut names: Vec<&str> = files.iter().map(|f| last_part(&f.uri)).collect();
    names.extend(vacuum.iter().map(|v| last_part(v)));
    names.sort_unstable();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    names.hash(&mut hasher);
    Ok(ListFiles {
        timestamps: files.iter().map(|f| f.timestamp).collect(),
        fingerprint: hasher.finish(),
    })
}

/// A hash of the names of group `uri`'s metadata files: the same names
/// hold the same metadata (TileDB never changes a file; a change, a
/// deletion or a consolidation adds one).
pub fn metadata_fingerprint(vfs: &Vfs, uri: &str) -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let dir = format!("{}/{META_DIR}", uri.trim_end_matches('/'));
    let listed = match vfs.ls(&dir) {
        Ok(l) => l,
        Err(_) if !vfs.is_dir(&dir)? => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut names: Vec<&str> = listed.iter().map(|f| last_part(f)).collect();
    names.sort_unstable();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    names.hash(&mut hasher);
    Ok(hasher.finish())
}

/// Bytes of the group's own files at `uri`: its member lists and
/// metadata (what grows with changes), not its members.
pub fn own_bytes(ctx: &Context, uri: &str) -> Result<u64> {
    let vfs = Vfs::new(ctx)?;
    let mut total = 0;
    for dir in [DETAILS_DIR, META_DIR] {
        let d = format!("{}/{dir}", uri.trim_end_matches('/'));
        if !vfs.is_dir(&d)? {
            continue;
        }
        for f in vfs.ls(&d)? {
            total += vfs.file_size(&f).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Whether `file` lies directly in `dir`, comparing local paths with and
/// without `file://`.
fn same_dir(file: &str, dir: &str) -> bool {
    let strip = |s: &str| s.strip_prefix("file://").unwrap_or(s).trim_end_matches('/').to_string();
    let f = strip(file);
    let parent = f.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap_or_default();
    parent == strip(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_timestamps_and_the_vacuum_time() {
        assert_eq!(timestamps("__17_18_0123456789abcdef0123456789abcdef_2"), Some((17, 18)));
        assert_eq!(timestamps("__group"), None);
        let name = vacuum_name(5, 9, 0x1234);
        assert_eq!(timestamps(&name), Some((5, 9)));
        assert!(name.ends_with("_2.vac"));
        let stem = name.strip_suffix(VACUUM_SUFFIX).unwrap();
        assert_eq!(vacuum_written_ms(stem), Some(0x1234));
        // Five underscores: TileDB reads it as a current timestamped name.
        assert_eq!(stem.matches('_').count(), 5);
    }

    #[test]
    fn same_dir_compares_local_spellings() {
        assert!(same_dir("file:///r/g/__group/__1_1_a_2", "/r/g/__group"));
        assert!(same_dir("s3://b/g/__group/__1_1_a_2", "s3://b/g/__group"));
        assert!(!same_dir("file:///r/other/__group/__1_1_a_2", "/r/g/__group"));
    }
}
