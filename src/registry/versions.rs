//! A file's history: its committed versions, the tags naming some of them,
//! and pruning the storage of old ones.
//!
//! A version is a commit of [`super::file_array::FileWriter`]: data
//! fragments and one metadata write, all stamped with one timestamp `T`,
//! the metadata holding `modelfs.timestamp = T`. Every version writes all
//! of its cells `[0, file_size)`, so its bytes are exactly what its own
//! fragments hold: a version is read by opening the array at `[T, T]`,
//! which no older or newer write can change, and its storage is its own
//! fragments. So:
//!
//! - **listing**: the candidate times are those of the array's fragments
//!   stamped `[T, T]` and of its metadata writes (`__meta/__T_T_*`, for
//!   versions of 0 bytes, which write no fragment); each is opened at
//!   `[T, T]` and is a version when its metadata says `modelfs.timestamp
//!   = T` and its cells cover `[0, file_size)`. Attribute and tag writes
//!   carry no `modelfs.timestamp`; a write that died before its metadata
//!   left fragments but no metadata: neither is a version;
//! - **tags**: array metadata `modelfs.tag.<name>` = the version's
//!   timestamp (UINT64), written and deleted like attributes (stamped after
//!   every earlier write, with the ctime);
//! - **pruning**: deleting a version's fragments (`delete_fragments`), which
//!   no other version reads; the current version is never pruned, and the
//!   metadata writes stay (a few hundred bytes each), their times recorded
//!   in `modelfs.pruned` so listings skip them. A reader of a pruned
//!   version finds its cells gone and gets [`Error::VersionGone`], never
//!   another version's bytes.

use std::collections::BTreeSet;

use crate::tiledb::{self, Array, Context, MetaValue, Mode, Vfs};

use super::attrs::KEY_CTIME_NS;
use super::error::{Error, Result};
use super::file_array::{self, FileMeta};
use super::version_time::format_ms;

/// Prefix of the metadata keys holding tags.
pub const TAG_KEY_PREFIX: &str = "modelfs.tag.";

/// Metadata key listing the timestamps of pruned versions (UINT64 list):
/// their metadata writes stay, and listing the history skips them rather
/// than open each to find its cells gone.
pub const PRUNED_KEY: &str = "modelfs.pruned";

/// Versions opened at once when listing a file's history: on an object
/// store each open is a few round trips, so they overlap.
const OPENS_IN_FLIGHT: usize = 8;

/// Longest tag name, in bytes.
pub const TAG_MAX_BYTES: usize = 128;

/// One committed version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Its commit timestamp, ms since the epoch.
    pub timestamp: u64,
    /// What its own metadata write says (size, kind, tensor index);
    /// attributes set later are not in it.
    pub meta: FileMeta,
}

impl Version {
    /// The name `.versions/<file>/` shows it under.
    pub fn name(&self) -> String {
        format_ms(self.timestamp)
    }
}

/// A file's versions (oldest first) and tags (by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub versions: Vec<Version>,
    pub tags: Vec<(String, u64)>,
}

impl History {
    /// The version a tag or a version name stands for.
    pub fn find(&self, name: &str) -> Option<&Version> {
        let t = match self.tags.iter().find(|(tag, _)| tag == name) {
            Some((_, t)) => *t,
            None => super::version_time::parse(name)?,
        };
        self.versions.iter().find(|v| v.timestamp == t)
    }

    /// The newest version committed at or before `at` (ms).
    pub fn as_of(&self, at: u64) -> Option<&Version> {
        self.versions.iter().rev().find(|v| v.timestamp <= at)
    }

    /// Tags naming the version at `t`.
    pub fn tags_of(&self, t: u64) -> impl Iterator<Item = &str> {
        self.tags
            .iter()
            .filter(move |(_, at)| *at == t)
            .map(|(n, _)| n.as_str())
    }

    /// Only what existed at `at`: versions committed then or before.
    pub fn until(mut self, at: u64) -> Self {
        self.versions.retain(|v| v.timestamp <= at);
        self
    }
}

/// Why a tag name cannot be used, or `None` when it can: it must be a file
/// name (no `/`, not `.` or `..`, no NUL), at most [`TAG_MAX_BYTES`], and
/// must not read as a time (it would hide a version's name).
pub fn invalid_tag_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() || name == "." || name == ".." || name.starts_with('.') {
        return Some("empty or starting with a dot");
    }
    if name.len() > TAG_MAX_BYTES {
        return Some("longer than 128 bytes");
    }
    if name.contains(['/', '\0']) || name.chars().any(char::is_control) {
        return Some("holds a slash or a control character");
    }
    if super::version_time::parse(name).is_some() {
        return Some("reads as a time");
    }
    None
}

/// The tags in a metadata list.
pub fn parse_tags(meta: &[(String, MetaValue)]) -> Vec<(String, u64)> {
    let mut tags: Vec<(String, u64)> = meta
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(TAG_KEY_PREFIX)?;
            (invalid_tag_reason(name).is_none()).then_some(())?;
            Some((name.to_string(), v.as_u64()?))
        })
        .collect();
    tags.sort();
    tags
}

/// The versions of the file array at `uri` (oldest first) and its tags,
/// as of now.
pub fn history(ctx: &Context, vfs: &Vfs, uri: &str) -> Result<History> {
    let fragments = tiledb::fragments(ctx, uri)?;
    let mut candidates: BTreeSet<u64> = fragments
        .iter()
        .filter(|f| f.timestamp_range.0 == f.timestamp_range.1)
        .map(|f| f.timestamp_range.0)
        .collect();
    candidates.extend(metadata_write_times(vfs, uri)?);
    let latest = Array::open_latest(ctx, uri)?.metadata()?;
    for t in pruned_times(&latest) {
        candidates.remove(&t);
    }
    let candidates: Vec<u64> = candidates.into_iter().collect();
    let per_thread = candidates.len().div_ceil(OPENS_IN_FLIGHT).max(1);
    let found: Vec<Result<Vec<Version>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = candidates
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for &t in chunk {
                        out.extend(version_at(ctx, uri, t)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(Error::Corrupt {
                        uri: uri.to_string(),
                        reason: "listing its versions failed (a reader thread panicked)".into(),
                    })
                })
            })
            .collect()
    });
    let mut versions = Vec::new();
    for chunk in found {
        versions.extend(chunk?);
    }
    let tags = parse_tags(&latest);
    Ok(History { versions, tags })
}

/// The timestamps of pruned versions a metadata list records.
fn pruned_times(meta: &[(String, MetaValue)]) -> Vec<u64> {
    meta.iter()
        .find(|(k, _)| k == PRUNED_KEY)
        .and_then(|(_, v)| v.as_u64s())
        .unwrap_or_default()
}

/// Records that the versions at `times` of the file array at `uri` were
/// pruned, beside those recorded before; stamped after every earlier write.
fn record_pruned(ctx: &Context, uri: &str, times: &[u64]) -> Result<()> {
    if times.is_empty() {
        return Ok(());
    }
    let mut all: BTreeSet<u64> = pruned_times(&Array::open_latest(ctx, uri)?.metadata()?)
        .into_iter()
        .collect();
    all.extend(times);
    let all: Vec<u64> = all.into_iter().collect();
    let at = file_array::next_timestamp(ctx, uri)?;
    let mut array = Array::open_at(ctx, uri, Mode::Write, Some(at))?;
    array.put_metadata(PRUNED_KEY, &MetaValue::u64s(&all))?;
    array.close()?;
    Ok(())
}

/// The version committed at exactly `t`, if one was and its cells are all
/// still stored.
fn version_at(ctx: &Context, uri: &str, t: u64) -> Result<Option<Version>> {
    let mut array = Array::open_between(ctx, uri, t, t)?;
    let Ok(meta) = file_array::parse_meta(uri, &array.metadata()?) else {
        return Ok(None);
    };
    if meta.timestamp != Some(t) {
        return Ok(None);
    }
    let whole = file_array::covers(meta.size, array.non_empty_domain_u64(0)?);
    Ok(whole.then_some(Version { timestamp: t, meta }))
}

/// Timestamps of the single-time metadata writes of the array at `uri`,
/// from their names (`__meta/__<t>_<t>_<uuid>[_<v>]`); ranges left by a
/// consolidation of the metadata are skipped (their versions still have
/// fragments, unless they were of 0 bytes).
fn metadata_write_times(vfs: &Vfs, uri: &str) -> Result<Vec<u64>> {
    let dir = format!("{}/__meta", uri.trim_end_matches('/'));
    if !vfs.is_dir(&dir)? {
        return Ok(Vec::new());
    }
    Ok(vfs
        .ls(&dir)?
        .iter()
        .filter_map(|path| {
            let name = path.trim_end_matches('/').rsplit('/').next()?;
            let mut parts = name.strip_prefix("__")?.split('_');
            let t0: u64 = parts.next()?.parse().ok()?;
            let t1: u64 = parts.next()?.parse().ok()?;
            (t0 == t1).then_some(t0)
        })
        .collect())
}

/// Names version `t` of the file array at `uri` `name` (moving the tag if
/// it named another), or deletes tag `name` when `t` is `None`. Stamped
/// after every earlier write of the array, with the ctime.
pub fn set_tag(ctx: &Context, uri: &str, name: &str, t: Option<u64>) -> Result<()> {
    if let Some(reason) = invalid_tag_reason(name) {
        return Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        });
    }
    let at = file_array::next_timestamp(ctx, uri)?;
    let mut array = Array::open_at(ctx, uri, Mode::Write, Some(at))?;
    let key = format!("{TAG_KEY_PREFIX}{name}");
    match t {
        Some(t) => array.put_metadata(&key, &MetaValue::u64(t))?,
        None => array.delete_metadata(&key)?,
    }
    let ctime = file_array::now_ns().max(at.saturating_mul(1_000_000));
    array.put_metadata(KEY_CTIME_NS, &MetaValue::u64(ctime))?;
    array.close()?;
    Ok(())
}

/// Which versions a prune keeps.
#[derive(Debug, Clone, Default)]
pub struct PrunePolicy {
    /// Keep the newest `keep` versions.
    pub keep: Option<usize>,
    /// Keep versions committed at or after this time (ms).
    pub newer_than: Option<u64>,
    /// Tags whose versions may be pruned (other tagged versions are kept);
    /// the tags go with them.
    pub untag: Vec<String>,
}

/// What a prune of one file did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub kept: Vec<u64>,
    pub pruned: Vec<u64>,
    /// Bytes of the array's storage before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl PruneReport {
    pub fn freed(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

/// The timestamps of `history`'s versions that `policy` prunes: never the
/// newest (current) one, never a tagged one unless each of its tags is in
/// `untag`; with neither `keep` nor `newer_than`, none.
pub fn prune_plan(history: &History, policy: &PrunePolicy) -> Vec<u64> {
    if policy.keep.is_none() && policy.newer_than.is_none() {
        return Vec::new();
    }
    let n = history.versions.len();
    history
        .versions
        .iter()
        .enumerate()
        .filter(|(i, v)| {
            let from_newest = n - 1 - i;
            let kept_by_count = policy.keep.is_some_and(|k| from_newest < k.max(1));
            let kept_by_age = policy.newer_than.is_some_and(|t| v.timestamp >= t);
            let tagged = history
                .tags_of(v.timestamp)
                .any(|tag| !policy.untag.iter().any(|u| u == tag));
            let current = from_newest == 0;
            let keep = match (policy.keep, policy.newer_than) {
                (Some(_), Some(_)) => kept_by_count || kept_by_age,
                (Some(_), None) => kept_by_count,
                _ => kept_by_age,
            };
            !(keep || tagged || current)
        })
        .map(|(_, v)| v.timestamp)
        .collect()
}

/// Prunes the versions of the file array at `uri` that `policy` lets go:
/// deletes their fragments (and the tags in `policy.untag` naming them).
/// The current version and every kept one read exactly as before at every
/// instant: no fragment of theirs is touched.
pub fn prune(ctx: &Context, vfs: &Vfs, uri: &str, policy: &PrunePolicy) -> Result<PruneReport> {
    let history = history(ctx, vfs, uri)?;
    // A version of 0 bytes stores no data: nothing to free, and it would
    // stay listed (found by its metadata write), so it is kept.
    let empty: Vec<u64> = history
        .versions
        .iter()
        .filter(|v| v.meta.size == 0)
        .map(|v| v.timestamp)
        .collect();
    let pruned: Vec<u64> = prune_plan(&history, policy)
        .into_iter()
        .filter(|t| !empty.contains(t))
        .collect();
    let bytes_before = vfs.dir_size(uri)?;
    let doomed: Vec<String> = tiledb::fragments(ctx, uri)?
        .into_iter()
        .filter(|f| f.timestamp_range.0 == f.timestamp_range.1 && pruned.contains(&f.timestamp_range.0))
        .map(|f| f.uri)
        .collect();
    tiledb::delete_fragments(ctx, uri, &doomed)?;
    // Recorded after: a crash in between only leaves the history to find
    // their cells gone, never versions unlisted whose fragments stay.
    record_pruned(ctx, uri, &pruned)?;
    for (tag, t) in &history.tags {
        if pruned.contains(t) {
            set_tag(ctx, uri, tag, None)?;
        }
    }
    let kept = history
        .versions
        .iter()
        .map(|v| v.timestamp)
        .filter(|t| !pruned.contains(t))
        .collect();
    Ok(PruneReport {
        kept,
        pruned,
        bytes_before,
        bytes_after: vfs.dir_size(uri)?,
    })
}

/// [`Error::VersionGone`] for version `t` of `uri`.
pub fn gone(uri: &str, t: u64) -> Error {
    Error::VersionGone {
        uri: uri.to_string(),
        version: format_ms(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(times: &[u64], tags: &[(&str, u64)]) -> History {
        History {
            versions: times
                .iter()
                .map(|&t| Version {
                    timestamp: t,
                    meta: FileMeta {
                        size: 1,
                        timestamp: Some(t),
                        kind: None,
                        tensors: None,
                        attrs: Default::default(),
                    },
                })
                .collect(),
            tags: tags.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
        }
    }

    #[test]
    fn the_plan_keeps_the_newest_the_recent_and_the_tagged() {
        let h = history(&[10, 20, 30, 40, 50], &[("prod", 20)]);
        let keep = |k, newer, untag: &[&str]| {
            prune_plan(
                &h,
                &PrunePolicy {
                    keep: k,
                    newer_than: newer,
                    untag: untag.iter().map(|s| s.to_string()).collect(),
                },
            )
        };
        assert_eq!(keep(Some(2), None, &[]), vec![10, 30]);
        assert_eq!(keep(Some(2), None, &["prod"]), vec![10, 20, 30]);
        assert_eq!(keep(None, Some(35), &[]), vec![10, 30]);
        assert_eq!(keep(Some(4), Some(45), &[]), vec![10]);
        assert_eq!(keep(Some(0), None, &[]), vec![10, 30, 40]);
        assert_eq!(keep(None, None, &[]), Vec::<u64>::new());
        assert_eq!(keep(None, Some(u64::MAX), &["prod"]), vec![10, 20, 30, 40]);
    }

    #[test]
    fn tags_that_read_as_times_or_paths_are_refused() {
        assert!(invalid_tag_reason("production").is_none());
        assert!(invalid_tag_reason("v1.2").is_none());
        for bad in [
            "",
            ".hidden",
            "a/b",
            "2026-12-01",
            "2026-12-01T21:28:59.119Z",
            &"x".repeat(129),
        ] {
            assert!(invalid_tag_reason(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn find_takes_a_tag_or_a_version_name() {
        let h = history(&[1_796_196_396_224, 1_796_196_400_000], &[("prod", 1_796_196_396_224)]);
        assert_eq!(h.find("prod").map(|v| v.timestamp), Some(1_796_196_396_224));
        assert_eq!(
            h.find("2026-12-02T07:26:40.000Z").map(|v| v.timestamp),
            Some(1_796_196_400_000)
        );
        assert_eq!(h.find("2026-12-02T07:26:41.000Z"), None);
        assert_eq!(h.as_of(1_796_196_399_999).map(|v| v.timestamp), Some(1_796_196_396_224));
    }
}
