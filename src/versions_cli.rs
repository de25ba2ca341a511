//! `modelfs log`, `modelfs tag` and `modelfs prune`: a file's versions as
//! text (with the tensors each safetensors version added, removed or
//! changed), naming versions, and freeing the storage of old ones; and the
//! `--at` time of a snapshot mount (a time or a tag).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};

use modelfs::registry::version_time::{self, format_ms};
use modelfs::registry::versions::{self, PrunePolicy};
use modelfs::registry::{Entry, FileArray, Node, Registry, Storage, TensorEntry, Version};

/// Bytes compared at a time when telling whether a tensor changed.
const COMPARE_BYTES: usize = 8 << 20;

/// Every file under `entry` (itself when it is a file), depth first, by name.
fn files_under(reg: &Registry, entry: &Entry) -> Result<Vec<Entry>> {
    if !entry.is_dir() {
        return Ok(vec![entry.clone()]);
    }
    let mut out = Vec::new();
    for child in reg.list(entry).with_context(|| entry.uri.clone())? {
        match child.storage {
            Storage::Array => {
                if matches!(reg.node(&child), Ok(Node::File(_))) {
                    out.push(child);
                }
            }
            Storage::Group | Storage::PlainDir => out.extend(files_under(reg, &child)?),
        }
    }
    Ok(out)
}

/// `modelfs log URI`: the versions of a file, or of every file under a
/// directory, oldest first.
pub fn log(reg: &Registry, entry: &Entry, contents: bool) -> Result<()> {
    for file in files_under(reg, entry)? {
        let history = reg.history(&file.uri).with_context(|| file.uri.clone())?;
        out!("{}", file.uri);
        let mut previous: Option<&Version> = None;
        for v in &history.versions {
            let tags: Vec<&str> = history.tags_of(v.timestamp).collect();
            let tags = if tags.is_empty() {
                String::new()
            } else {
                format!("  tags: {}", tags.join(", "))
            };
            let kind = v.meta.kind.as_deref().unwrap_or("file");
            out!("  {}  {:>14} bytes  {kind}{tags}", v.name(), v.meta.size);
            for line in tensor_changes(reg, &file.uri, previous, v, contents)? {
                out!("      {line}");
            }
            previous = Some(v);
        }
        if history.versions.is_empty() {
            out!("  (no versions written by modelfs)");
        }
    }
    Ok(())
}

/// What version `now` of a safetensors file added (`+`), removed (`-`)
/// and changed (`~`: dtype, shape or, with `contents`, bytes) against
/// `before`.
fn tensor_changes(
    reg: &Registry,
    uri: &str,
    before: Option<&Version>,
    now: &Version,
    contents: bool,
) -> Result<Vec<String>> {
    let Some(index) = &now.meta.tensors else {
        return Ok(Vec::new());
    };
    let old: BTreeMap<&str, &TensorEntry> = before
        .and_then(|b| b.meta.tensors.as_ref())
        .map(|i| i.tensors.iter().map(|t| (t.name.as_str(), t)).collect())
        .unwrap_or_default();
    let new: BTreeMap<&str, &TensorEntry> = index.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let describe = |t: &TensorEntry| format!("{} {:?}", t.dtype, t.shape);
    let mut lines = Vec::new();
    let mut files = None;
    for (name, t) in &new {
        match old.get(name) {
            None => lines.push(format!("+ {name} {}", describe(t))),
            Some(o) if o.dtype != t.dtype || o.shape != t.shape => {
                lines.push(format!("~ {name} {} -> {}", describe(o), describe(t)))
            }
            Some(o) if contents => {
                if files.is_none() {
                    let Some(b) = before else { continue };
                    files = Some((
                        FileArray::open_past(reg.context(), uri, b.meta.clone())?,
                        FileArray::open_past(reg.context(), uri, now.meta.clone())?,
                    ));
                }
                let Some((a, b)) = &files else { continue };
                if !same_bytes(a, o.range, b, t.range).with_context(|| format!("{uri}: tensor {name}"))? {
                    lines.push(format!("~ {name} {} (values)", describe(t)));
                }
            }
            Some(_) => {}
        }
    }
    for (name, o) in &old {
        if !new.contains_key(name) {
            lines.push(format!("- {name} {}", describe(o)));
        }
    }
    Ok(lines)
}

/// Whether bytes `ra` of `a` equal bytes `rb` of `b`.
fn same_bytes(a: &FileArray, ra: [u64; 2], b: &FileArray, rb: [u64; 2]) -> Result<bool> {
    if ra[1] - ra[0] != rb[1] - rb[0] {
        return Ok(false);
    }
    let len = ra[1] - ra[0];
    let mut done = 0u64;
    let mut x = vec![0u8; COMPARE_BYTES];
    let mut y = vec![0u8; COMPARE_BYTES];
    while done < len {
        let n = (len - done).min(COMPARE_BYTES as u64) as usize;
        let got_a = a.read_at(ra[0] + done, &mut x[..n])?;
        let got_b = b.read_at(rb[0] + done, &mut y[..n])?;
        if got_a != n || got_b != n || x[..n] != y[..n] {
            return Ok(false);
        }
        done += n as u64;
    }
    Ok(true)
}

/// `modelfs tag URI NAME [--at TIME]` and `--delete`.
pub fn tag(reg: &Registry, entry: &Entry, name: &str, at: Option<&str>, delete: bool) -> Result<()> {
    if entry.is_dir() {
        bail!("{}: a directory; tags name versions of files", entry.uri);
    }
    if delete {
        let history = reg.history(&entry.uri).with_context(|| entry.uri.clone())?;
        if !history.tags.iter().any(|(t, _)| t == name) {
            bail!("{}: no tag {name:?}", entry.uri);
        }
        versions::set_tag(reg.context(), &entry.uri, name, None).with_context(|| entry.uri.clone())?;
        eprintln!("deleted tag {name} of {}", entry.uri);
        return Ok(());
    }
    let history = reg.history(&entry.uri).with_context(|| entry.uri.clone())?;
    let version = match at {
        None => history.versions.last(),
        Some(text) => match history.find(text) {
            Some(v) => Some(v),
            None => history.as_of(parse_time_only(text)?),
        },
    };
    let Some(version) = version else {
        bail!("{}: no version at {}", entry.uri, at.unwrap_or("now"));
    };
    versions::set_tag(reg.context(), &entry.uri, name, Some(version.timestamp)).with_context(|| entry.uri.clone())?;
    eprintln!("tagged {} version {} as {name}", entry.uri, version.name());
    Ok(())
}

/// `modelfs prune URI --keep N --older-than DURATION [--untag TAG]`.
pub fn prune(
    reg: &Registry,
    entry: &Entry,
    keep: Option<usize>,
    older_than: Option<&str>,
    untag: Vec<String>,
) -> Result<()> {
    if keep.is_none() && older_than.is_none() {
        bail!("prune needs --keep N, --older-than DURATION, or both");
    }
    let newer_than = match older_than {
        None => None,
        Some(text) => {
            let age = version_time::parse_duration(text)
                .with_context(|| format!("--older-than {text:?}: expected a duration like 90s, 12h, 7d or 2w"))?;
            Some(modelfs::tiledb::now_ms().saturating_sub(age))
        }
    };
    let policy = PrunePolicy {
        keep,
        newer_than,
        untag,
    };
    let (mut pruned, mut freed) = (0usize, 0u64);
    for file in files_under(reg, entry)? {
        let report = versions::prune(reg.context(), reg.vfs(), &file.uri, &policy).with_context(|| file.uri.clone())?;
        for t in &report.pruned {
            out!("pruned {} {}", file.uri, format_ms(*t));
        }
        pruned += report.pruned.len();
        freed += report.freed();
        if !report.pruned.is_empty() {
            out!(
                "{}: {} versions kept, {} pruned, {} bytes freed ({} -> {})",
                file.uri,
                report.kept.len(),
                report.pruned.len(),
                report.freed(),
                report.bytes_before,
                report.bytes_after
            );
        }
    }
    // Files and directories deleted (through a mount) under a directory:
    // their storage was kept for snapshots; freed when deleted before the
    // --older-than cutoff (all of them with --keep alone).
    let mut removed = 0usize;
    for dir in groups_under(reg, entry)? {
        for (name, uri, when) in reg.deleted(&dir).with_context(|| dir.uri.clone())? {
            if newer_than.is_some_and(|cutoff| when >= cutoff) {
                continue;
            }
            let bytes = reg.free_deleted(&dir, &name).with_context(|| uri.clone())?;
            out!("freed {uri} (deleted {}): {bytes} bytes", format_ms(when));
            removed += 1;
            freed += bytes;
        }
    }
    out!("{pruned} versions pruned, {removed} deleted entries freed, {freed} bytes freed");
    Ok(())
}

/// Every TileDB group at or under `entry`, parents first.
fn groups_under(reg: &Registry, entry: &Entry) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    if entry.storage == Storage::Group {
        out.push(entry.clone());
    }
    if entry.is_dir() {
        for child in reg.list(entry).with_context(|| entry.uri.clone())? {
            if child.is_dir() {
                out.extend(groups_under(reg, &child)?);
            }
        }
    }
    Ok(out)
}

/// A time as `--at` takes it, not a tag.
fn parse_time_only(text: &str) -> Result<u64> {
    version_time::parse(text).with_context(|| {
        format!("{text:?}: not a time (ISO 8601 like 2026-12-01T21:28:59.119Z, or ms:<milliseconds>) nor a tag")
    })
}

/// The time `--at` names for a mount of `root`: a time, or for a tag the
/// last instant the version it names was current on every file under
/// `root` holding that tag (a new file joins its directory a moment after
/// its first version's commit, so the tagged version's own commit time
/// may not show it yet). Tags naming versions that were never current
/// together are refused, naming two of the files.
pub fn snapshot_time(reg: &Registry, root: &str, at: &str) -> Result<u64> {
    if let Some(t) = version_time::parse(at) {
        return Ok(t);
    }
    let entry = crate::resolve(reg, root)?;
    // For each file holding the tag: [tagged version, last instant current].
    let mut spans: Vec<(String, u64, u64)> = Vec::new();
    for file in files_under(reg, &entry)? {
        let Ok(history) = reg.history(&file.uri) else {
            continue;
        };
        let Some((_, t)) = history.tags.iter().find(|(n, _)| n == at) else {
            continue;
        };
        let until = history
            .versions
            .iter()
            .find(|v| v.timestamp > *t)
            .map_or_else(modelfs::tiledb::now_ms, |v| v.timestamp - 1);
        spans.push((file.uri.clone(), *t, until));
    }
    let Some(latest_start) = spans.iter().max_by_key(|s| s.1) else {
        return Err(parse_time_only(at).unwrap_err());
    };
    let earliest_end = spans.iter().min_by_key(|s| s.2).unwrap_or(latest_start);
    if earliest_end.2 < latest_start.1 {
        bail!(
            "tag {at:?} names versions never current together: {} on {} was replaced at {}, before {} on {}",
            format_ms(earliest_end.1),
            earliest_end.0,
            format_ms(earliest_end.2 + 1),
            format_ms(latest_start.1),
            latest_start.0
        );
    }
    Ok(earliest_end.2)
}
