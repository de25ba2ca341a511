//! Directories' member lists on real TileDB (issue #16): every membership
//! change retires the list files it makes redundant, `modelfs compact`
//! compacts what other tools grew, and neither ever loses an entry or
//! shows a removed one: after any change, after a crash at any point of a
//! compaction, and for a reader listing from another context while it runs.
//! Local, and on S3 when `MODELFS_TEST_S3` is set.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use modelfs::registry::{Attrs, Entry, Registry, Storage};
use modelfs::tiledb::{self, Context, Group, GroupMode, ObjectType, Vfs};

fn registry() -> Registry {
    Registry::new(Context::new().unwrap()).unwrap()
}

/// A registry as a mount has it: replaced member lists are deleted in the
/// background once their grace period is over.
fn mount_registry() -> Registry {
    let mut reg = registry();
    reg.retire_in_background();
    reg
}

fn names(reg: &Registry, dir: &Entry) -> BTreeSet<String> {
    reg.list(dir).unwrap().into_iter().map(|e| e.name).collect()
}

fn root(reg: &Registry, tmp: &std::path::Path) -> Entry {
    reg.ensure_dir(&registry_uri(tmp)).unwrap()
}

/// The directory entry of the group at `uri`.
fn group_at(uri: &str) -> Entry {
    Entry {
        name: String::new(),
        uri: uri.to_string(),
        storage: Storage::Group,
    }
}

/// What `ls` shows in `dir` (a mount's directory).
fn shown(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn list_dir(uri: &str) -> String {
    format!("{}/__group", uri.trim_end_matches('/'))
}

/// The files in the group's `__group/` folder: member lists and vacuum files.
fn list_folder(uri: &str) -> (Vec<String>, Vec<String>) {
    let vfs = Vfs::new(&Context::new().unwrap()).unwrap();
    let all = vfs.ls(&list_dir(uri)).unwrap();
    all.into_iter().partition(|f| !f.ends_with(".vac"))
}

/// What a fresh reader (its own context, nothing cached) lists.
fn fresh_names(uri: &str) -> BTreeSet<String> {
    let g = Group::open(&Context::new().unwrap(), uri, GroupMode::Read).unwrap();
    g.members().unwrap().into_iter().filter_map(|m| m.name).collect()
}

#[test]
fn every_change_keeps_the_members_exact_and_the_list_files_few() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = mount_registry();
    let dir = root(&reg, tmp.path());
    let mut model = BTreeSet::new();
    let mut rng = 0x5eed_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let steps = if on_s3() { 60 } else { 240 };
    for i in 0..steps {
        let r = next();
        let pick = |r: u64, m: &BTreeSet<String>| m.iter().nth((r as usize) % m.len().max(1)).cloned();
        match r % 4 {
            0 | 1 => {
                let name = format!("d{i}");
                reg.mkdir(&dir, &name, &Attrs::default()).unwrap();
                model.insert(name);
            }
            2 => {
                if let Some(name) = pick(r >> 8, &model) {
                    let e = reg.lookup(&dir, &name).unwrap().unwrap();
                    reg.unlink(&dir, &e).unwrap();
                    model.remove(&name);
                }
            }
            _ => {
                if let Some(name) = pick(r >> 8, &model) {
                    let e = reg.lookup(&dir, &name).unwrap().unwrap();
                    let new = format!("r{i}");
                    reg.rename(&dir, &e, &dir, &new, None).unwrap();
                    model.remove(&name);
                    model.insert(new);
                }
            }
        }
        assert_eq!(names(&reg, &dir), model, "after step {i}");
        // An open reads the newest list, and the list a change racing it
        // wrote: never more.
        let live = tiledb::live_list_files(&Context::new().unwrap(), &dir.uri).unwrap();
        assert!(live <= 2, "step {i}: an open reads {live} list files");
    }
    // What the changes replaced is deleted once the grace period is over,
    // by the registry's own background thread, but the newest lists (kept
    // for snapshots of recent times), named by one vacuum file: every open
    // reads each vacuum file there is (a request each on S3), and the
    // newest names all the older ones name.
    std::thread::sleep(tiledb::RETIRE_GRACE * 3);
    let (lists, vacs) = list_folder(&dir.uri);
    assert!(
        lists.len() <= tiledb::HISTORY_KEPT + 1 && vacs.len() <= 2,
        "{} list files and {} vacuum files left",
        lists.len(),
        vacs.len()
    );
    assert_eq!(fresh_names(&dir.uri), model);
    // Storage follows the entries and the kept history, not the changes
    // made (without retiring, every change's whole list would stay).
    let bytes = reg.dir_own_bytes(&dir).unwrap();
    assert!(
        bytes < 300 * 1024,
        "{bytes} bytes of member lists and metadata after {steps} changes"
    );
}

/// A directory grown by another tool: `changes` single-member writes, every
/// seventh member removed afterwards. Returns the members left.
fn grow_like_another_tool(ctx: &Context, uri: &str, changes: usize) -> BTreeSet<String> {
    Group::create(ctx, uri).unwrap();
    let mut model = BTreeSet::new();
    for i in 0..changes {
        let name = format!("m{i:04}");
        Group::create(ctx, &format!("{uri}/{name}")).unwrap();
        let mut g = Group::open(ctx, uri, GroupMode::Write).unwrap();
        g.add_member(&name, true, &name, ObjectType::Group).unwrap();
        g.close().unwrap();
        model.insert(name);
    }
    for i in (0..changes).step_by(7) {
        let name = format!("m{i:04}");
        let mut g = Group::open(ctx, uri, GroupMode::Write).unwrap();
        g.remove_member(&name).unwrap();
        g.close().unwrap();
        model.remove(&name);
    }
    model
}

#[test]
fn compact_shrinks_a_directory_grown_elsewhere_and_keeps_its_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = registry_uri(tmp.path());
    let ctx = Context::new().unwrap();
    let changes = if on_s3() { 40 } else { 150 };
    let model = grow_like_another_tool(&ctx, &uri, changes);
    let reg = registry();
    let dir = group_at(&uri);
    let before = reg.dir_own_bytes(&dir).unwrap();
    assert_eq!(
        tiledb::live_list_files(&ctx, &uri).unwrap(),
        changes + changes.div_ceil(7)
    );
    let out = modelfs_ok(&["compact", &uri, "--grace", "0.2"]);
    assert!(out.contains("member-list files to 1"), "{out}");
    assert_eq!(tiledb::live_list_files(&ctx, &uri).unwrap(), 1);
    let left = list_folder(&uri).0.len();
    assert!(
        left <= tiledb::HISTORY_KEPT,
        "{left} list files left: the replaced ones but the newest go"
    );
    assert_eq!(fresh_names(&uri), model);
    let after = reg.dir_own_bytes(&dir).unwrap();
    // The newest lists stay as history: on S3 (fewer changes) that is most.
    let factor = if on_s3() { 1 } else { 2 };
    assert!(after * factor < before, "{before} bytes before, {after} after");
}

#[test]
fn a_crash_at_any_point_of_a_compaction_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Context::new().unwrap();
    let vfs = Vfs::new(&ctx).unwrap();
    let base = registry_uri(tmp.path());
    let changes = if on_s3() { 12 } else { 30 };

    // Crash after the compacted list is written, before its vacuum file.
    let uri = format!("{base}/a");
    let model = grow_like_another_tool(&ctx, &uri, changes);
    tiledb::compact_members(&ctx, &uri).unwrap();
    let vac = list_folder(&uri).1;
    assert_eq!(vac.len(), 1);
    vfs.remove_file(&vac[0]).unwrap();
    assert_eq!(fresh_names(&uri), model, "compacted list without its vacuum file");

    // Crash while writing the vacuum file: any prefix of its lines, even
    // one cut inside a line (on a local disk; an object store shows a new
    // object whole or not at all).
    let text = String::from_utf8(vfs.read_file(&vac_of(&ctx, &uri)).unwrap()).unwrap();
    let full = vac_of(&ctx, &uri);
    let cuts: Vec<usize> = match on_s3() {
        true => vec![text.len()],
        false => (0..text.len())
            .step_by(text.len() / 25 + 1)
            .chain([text.len()])
            .collect(),
    };
    for cut in cuts {
        vfs.write_file(&full, &text.as_bytes()[..cut]).unwrap();
        assert_eq!(fresh_names(&uri), model, "vacuum file cut at byte {cut}");
    }

    // Crash while deleting what it names: oldest first, any number of them.
    let named: Vec<&str> = text.lines().collect();
    for (k, file) in named.iter().enumerate() {
        vfs.remove_file(file).unwrap();
        assert_eq!(fresh_names(&uri), model, "after deleting {} of {}", k + 1, named.len());
    }
    vfs.remove_file(&full).unwrap();
    assert_eq!(fresh_names(&uri), model, "all replaced files and the vacuum file gone");
}

/// Compacts `uri` once more and returns its vacuum file.
fn vac_of(ctx: &Context, uri: &str) -> String {
    let existing = list_folder(uri).1;
    if let Some(v) = existing.first() {
        return v.clone();
    }
    tiledb::compact_members(ctx, uri).unwrap();
    list_folder(uri).1.into_iter().next().expect("a vacuum file")
}

/// A writer (a mount) adds entries and removes odd ones while another
/// context lists the directory over and over: each listing holds every
/// entry added before it started and none removed before it started,
/// though the changes retire list files all along.
#[test]
fn a_listing_racing_changes_from_another_context_is_always_whole() {
    listing_race(false);
}

/// The same with `modelfs compact` running beside (a second writer of the
/// member list, so removals are left out: two writers of one TileDB group
/// can undo each other's removals, as the README says, never an addition).
#[test]
fn a_listing_racing_a_compaction_beside_a_mount_is_always_whole() {
    listing_race(true);
}

fn listing_race(with_compactor: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let writer = Arc::new(mount_registry());
    let dir = root(&writer, tmp.path());
    let rounds = if on_s3() { 40 } else { 150 };
    // Name i is added at round i; odd ones are removed at round i + 10.
    // Each counter only grows: names below `added` were added, below
    // `removing` their removal began, below `removed` it finished.
    let added = Arc::new(AtomicUsize::new(0));
    let removing = Arc::new(AtomicUsize::new(0));
    let removed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (added, removing, removed, done, uri) = (
            added.clone(),
            removing.clone(),
            removed.clone(),
            done.clone(),
            dir.uri.clone(),
        );
        std::thread::spawn(move || {
            let reg = registry();
            let dir = group_at(&uri);
            let mut listings = 0;
            while !done.load(Ordering::SeqCst) {
                let added_at_start = added.load(Ordering::SeqCst);
                let removed_at_start = removed.load(Ordering::SeqCst);
                let seen: BTreeSet<String> = match reg.list(&dir) {
                    Ok(l) => l.into_iter().map(|e| e.name).collect(),
                    Err(e) => panic!("a listing failed during the changes: {e}"),
                };
                let removing_at_end = removing.load(Ordering::SeqCst);
                for i in 0..added_at_start {
                    if i % 2 == 1 && i < removing_at_end {
                        continue;
                    }
                    if !seen.contains(&format!("e{i:04}")) {
                        let vfs = Vfs::new(&Context::new().unwrap()).unwrap();
                        let mut files = vfs.ls(&list_dir(&dir.uri)).unwrap_or_default();
                        files.sort();
                        let detail: Vec<String> = files
                            .iter()
                            .map(|f| {
                                let body = if f.ends_with(".vac") {
                                    String::from_utf8_lossy(&vfs.read_file(f).unwrap_or_default()).replace('\n', " | ")
                                } else {
                                    String::new()
                                };
                                format!("{} {}", f.rsplit('/').next().unwrap(), body)
                            })
                            .collect();
                        panic!(
                            "e{i:04} was added before the listing and is missing; seen {} of {added_at_start}: {:?}\nfolder now:\n{}",
                            seen.len(),
                            seen.iter().take(5).collect::<Vec<_>>(),
                            detail.join("\n")
                        );
                    }
                }
                for i in (1..removed_at_start).step_by(2) {
                    assert!(
                        !seen.contains(&format!("e{i:04}")),
                        "e{i:04} was removed before the listing and shows"
                    );
                }
                listings += 1;
            }
            listings
        })
    };
    let compactor = with_compactor.then(|| {
        let (done, uri) = (done.clone(), dir.uri.clone());
        std::thread::spawn(move || {
            let reg = registry();
            let dir = group_at(&uri);
            // As `modelfs compact` does, over and over: compact, wait, delete.
            while !done.load(Ordering::SeqCst) {
                reg.compact_dir(&dir).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                reg.vacuum_dir(&dir, Duration::from_millis(300)).unwrap();
            }
        })
    });
    let removes = |i: usize| !with_compactor && i % 2 == 1 && i + 10 < rounds;
    for i in 0..rounds {
        let name = format!("e{i:04}");
        writer.mkdir(&dir, &name, &Attrs::default()).unwrap();
        added.store(i + 1, Ordering::SeqCst);
        if i >= 10 && removes(i - 10) {
            let j = i - 10;
            removing.store(j + 1, Ordering::SeqCst);
            let e = writer.lookup(&dir, &format!("e{j:04}")).unwrap().unwrap();
            writer.unlink(&dir, &e).unwrap();
            removed.store(j + 1, Ordering::SeqCst);
        }
    }
    done.store(true, Ordering::SeqCst);
    let listings = reader.join().expect("the reader saw every entry");
    if let Some(c) = compactor {
        c.join().unwrap();
    }
    assert!(listings > 5, "only {listings} listings raced the changes");
    wait_merged(&dir.uri);
    let expected: BTreeSet<String> = (0..rounds)
        .filter(|&i| !removes(i))
        .map(|i| format!("e{i:04}"))
        .collect();
    assert_eq!(fresh_names(&dir.uri), expected);
}

/// A writable mount compacts a directory another tool grew the first time
/// it lists it, and shows the same entries; a read-only mount leaves it.
#[test]
fn a_mount_compacts_a_directory_grown_elsewhere_when_it_first_lists_it() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = registry_uri(tmp.path());
    let ctx = Context::new().unwrap();
    let changes = if on_s3() { 15 } else { 40 };
    let model = grow_like_another_tool(&ctx, &uri, changes);
    let grown = tiledb::live_list_files(&ctx, &uri).unwrap();
    assert!(grown > 10, "{grown} list files");
    {
        let ro = MountGuard::new(&uri, &tmp.path().join("ro"), &["--read-only"]);
        let listed = shown(&ro.dir);
        assert_eq!(listed, model);
        assert_eq!(
            tiledb::live_list_files(&ctx, &uri).unwrap(),
            grown,
            "a read-only mount changed nothing"
        );
    }
    let rw = MountGuard::new(&uri, &tmp.path().join("rw"), &[]);
    let listed = shown(&rw.dir);
    assert_eq!(listed, model);
    assert_eq!(tiledb::live_list_files(&ctx, &uri).unwrap(), 1);
    assert!(rw.log_text().contains("compacted its member list"), "{}", rw.log_text());
    assert_eq!(fresh_names(&uri), model);
}

/// A mount that stopped within the grace period leaves the lists its last
/// changes retired, and a vacuum file naming each (one more request for
/// every open on S3). The next writable mount to list the directory
/// clears what can go, in the background; the entries stay.
#[test]
fn a_mount_clears_the_vacuum_files_a_stopped_mount_left() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = registry_uri(tmp.path());
    let mut model = BTreeSet::new();
    {
        let reg = mount_registry();
        reg.set_merge_delay(Duration::from_millis(1));
        let dir = reg.ensure_dir(&uri).unwrap();
        for i in 0..12 {
            reg.mkdir(&dir, &format!("e{i}"), &Attrs::default()).unwrap();
            model.insert(format!("e{i}"));
            wait_merged(&uri);
        }
    }
    // Those of the last 2 s (all 12 locally; on S3, where a change takes
    // longer, the mount cleared older ones as it went).
    let left = list_folder(&uri).1.len();
    assert!(left > 2, "only {left} vacuum files left to clear");
    let mnt = MountGuard::new(&uri, &tmp.path().join("mnt"), &[]);
    assert_eq!(shown(&mnt.dir), model);
    let deadline = std::time::Instant::now() + tiledb::RETIRE_GRACE * 10;
    while list_folder(&uri).1.len() > 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(list_folder(&uri).1.len() <= 2, "{:?}", list_folder(&uri).1);
    assert_eq!(shown(&mnt.dir), model);
    assert_eq!(fresh_names(&uri), model);
}

/// What a snapshot of an earlier time (`mount --at`) reads: the member list
/// current then, kept for a directory's last [`tiledb::HISTORY_KEPT`]
/// changes while older ones are deleted.
#[test]
fn an_open_as_of_a_recent_time_sees_the_members_of_then() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = mount_registry();
    let dir = root(&reg, tmp.path());
    for i in 0..4 {
        reg.mkdir(&dir, &format!("e{i}"), &Attrs::default()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(5));
    let then = tiledb::now_ms();
    std::thread::sleep(Duration::from_millis(5));
    let e1 = reg.lookup(&dir, "e1").unwrap().unwrap();
    reg.unlink(&dir, &e1).unwrap();
    for i in 4..6 {
        reg.mkdir(&dir, &format!("e{i}"), &Attrs::default()).unwrap();
    }
    // Past the grace period the registry's thread deletes retired lists.
    std::thread::sleep(tiledb::RETIRE_GRACE * 3);
    let ctx = Context::new().unwrap();
    let at = |t: u64| -> BTreeSet<String> {
        let g = Group::open_at(&ctx, &dir.uri, GroupMode::Read, Some(t)).unwrap();
        g.members().unwrap().into_iter().filter_map(|m| m.name).collect()
    };
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(at(then), names(&["e0", "e1", "e2", "e3"]));
    wait_merged(&dir.uri);
    assert_eq!(fresh_names(&dir.uri), names(&["e0", "e2", "e3", "e4", "e5"]));
    // Older than the kept history: the lists of then are gone. (New
    // entries are merged a burst at a time: one list each, here.)
    for i in 6..(7 + tiledb::HISTORY_KEPT) {
        reg.mkdir(&dir, &format!("e{i}"), &Attrs::default()).unwrap();
        wait_merged(&dir.uri);
    }
    std::thread::sleep(tiledb::RETIRE_GRACE * 3);
    assert!(at(then).is_empty(), "history older than the kept lists is gone");
    // A snapshot mount of then shows the oldest kept list instead (less
    // files made later), not an empty directory.
    let snapshot = Registry::snapshot(modelfs::tiledb::Config::new().unwrap(), then).unwrap();
    let shown: BTreeSet<String> = snapshot.list(&dir).unwrap().into_iter().map(|e| e.name).collect();
    assert!(shown.contains("e0") && shown.contains("e2"), "{shown:?}");
    assert_eq!(fresh_names(&dir.uri).len(), 5 + tiledb::HISTORY_KEPT + 1);
}

/// Vacuum files a newer one supersedes are deleted, so an open reads one
/// or two whatever the history kept; snapshots of every time within that
/// history then read more of the kept lists, and must still see exactly
/// the members of then (TileDB applies a group's lists in order). The
/// directory starts grown by another tool (removals included) and
/// compacted (a vacuum file naming only the lists an open read), and takes
/// more changes than the history keeps, so old lists are deleted too.
#[test]
fn snapshots_within_the_kept_history_stay_exact_when_vacuum_files_go() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = registry_uri(tmp.path());
    let ctx = Context::new().unwrap();
    let mut model = grow_like_another_tool(&ctx, &uri, 30);
    let reg = mount_registry();
    let dir = group_at(&uri);
    reg.compact_dir(&dir).unwrap();
    let at = |t: u64| -> BTreeSet<String> {
        let g = Group::open_at(&ctx, &uri, GroupMode::Read, Some(t)).unwrap();
        g.members().unwrap().into_iter().filter_map(|m| m.name).collect()
    };
    let mut then = Vec::new();
    let pause = || {
        std::thread::sleep(Duration::from_millis(5));
        let t = tiledb::now_ms();
        std::thread::sleep(Duration::from_millis(5));
        t
    };
    then.push((pause(), model.clone()));
    for i in 0..(tiledb::HISTORY_KEPT + 6) {
        if i % 3 == 2 {
            let name = model.iter().next().unwrap().clone();
            let e = reg.lookup(&dir, &name).unwrap().unwrap();
            reg.unlink(&dir, &e).unwrap();
            model.remove(&name);
        } else {
            reg.mkdir(&dir, &format!("e{i:02}"), &Attrs::default()).unwrap();
            model.insert(format!("e{i:02}"));
        }
        wait_merged(&uri);
        then.push((pause(), model.clone()));
    }
    std::thread::sleep(tiledb::RETIRE_GRACE * 3);
    let (lists, vacs) = list_folder(&uri);
    assert!(vacs.len() <= 2, "{} vacuum files left", vacs.len());
    assert!(lists.len() <= tiledb::HISTORY_KEPT + 1, "{} lists left", lists.len());
    // Times before the oldest list kept read as empty (documented), so
    // only those within the history are checked.
    let oldest_kept = tiledb::list_files(&Vfs::new(&ctx).unwrap(), &uri)
        .unwrap()
        .oldest()
        .unwrap();
    let mut checked = 0;
    for (t, m) in then.iter().filter(|(t, _)| *t >= oldest_kept) {
        assert_eq!(&at(*t), m, "as of {t}, after the vacuum files went");
        checked += 1;
    }
    assert!(
        checked >= tiledb::HISTORY_KEPT - 2,
        "only {checked} times within the history"
    );
    assert_eq!(fresh_names(&uri), model);
}

/// The names of directory `uri` whose records (new or removed entries)
/// are not merged yet, as a fresh registry (nothing cached) sees them:
/// where its listing and TileDB's own member list differ.
fn unmerged(uri: &str) -> BTreeSet<String> {
    let listed = names(&registry(), &group_at(uri));
    let members = fresh_names(uri);
    listed.symmetric_difference(&members).cloned().collect()
}

fn wait_merged(uri: &str) {
    let start = std::time::Instant::now();
    while !unmerged(uri).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not merged: {:?}",
            unmerged(uri)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// In a mount, a new entry is a record beside the member list: adding one
/// writes no member list (what made a `mkdir` cost O(entries)), shows at
/// once to every reader, and is merged into the member list soon after,
/// where TileDB tools see it.
#[test]
fn new_entries_are_recorded_then_merged_into_the_member_list() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = mount_registry();
    let dir = root(&reg, tmp.path());
    reg.mkdir(&dir, "first", &Attrs::default()).unwrap();
    wait_merged(&dir.uri);
    // Long enough for the adds below to end before a merge begins, on S3
    // too (a mount merges 0.2 s after the first).
    let delay = Duration::from_secs(if on_s3() { 30 } else { 5 });
    reg.set_merge_delay(delay);
    let (lists_before, _) = list_folder(&dir.uri);
    let made: BTreeSet<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    let start = std::time::Instant::now();
    for name in &made {
        reg.mkdir(&dir, name, &Attrs::default()).unwrap();
    }
    // No list written by the adds themselves.
    let (lists_now, _) = list_folder(&dir.uri);
    if start.elapsed() < delay {
        assert_eq!(lists_now, lists_before, "list files written by 20 adds");
    }
    let mut expected = made.clone();
    expected.insert("first".into());
    assert_eq!(
        names(&registry(), &dir),
        expected,
        "a fresh reader lists every new entry"
    );
    wait_merged(&dir.uri);
    assert_eq!(fresh_names(&dir.uri), expected);
    // Merged in one group write, not one per entry.
    let (lists_after, _) = list_folder(&dir.uri);
    if start.elapsed() < delay {
        assert!(lists_after.len() <= lists_before.len() + 1, "{lists_after:?}");
    }
}

/// In a mount, removing an entry whose storage stays for snapshots is a
/// record too: no member list written, gone at once for every reader,
/// merged later with its `modelfs.deleted.*` key; a name removed and made
/// again before the merge shows the new entry.
#[test]
fn removals_are_recorded_then_merged_with_their_deleted_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = mount_registry();
    let dir = root(&reg, tmp.path());
    let made: BTreeSet<String> = (0..12).map(|i| format!("m{i:02}")).collect();
    for name in &made {
        reg.mkdir(&dir, name, &Attrs::default()).unwrap();
    }
    wait_merged(&dir.uri);
    let delay = Duration::from_secs(if on_s3() { 30 } else { 5 });
    reg.set_merge_delay(delay);
    let (lists_before, _) = list_folder(&dir.uri);
    let start = std::time::Instant::now();
    let listed = reg.list(&dir).unwrap();
    let gone: Vec<&Entry> = listed.iter().filter(|e| e.name.as_str() < "m06").collect();
    for e in &gone {
        reg.remove(&dir, e).unwrap();
        reg.retire(&dir, e).unwrap();
    }
    let again = reg.mkdir(&dir, "m00", &Attrs::default()).unwrap();
    let (lists_now, _) = list_folder(&dir.uri);
    let expected: BTreeSet<String> = made
        .iter()
        .filter(|n| n.as_str() >= "m06" || *n == "m00")
        .cloned()
        .collect();
    if start.elapsed() < delay {
        assert_eq!(lists_now, lists_before, "list files written by 6 removals");
        assert_eq!(fresh_names(&dir.uri), made, "TileDB's list before the merge");
    }
    assert_eq!(names(&registry(), &dir), expected, "a fresh reader");
    assert_eq!(names(&reg, &dir), expected, "the mount itself");
    let shown = reg.lookup(&dir, "m00").unwrap().unwrap();
    assert!(
        modelfs::registry::uri::same(&shown.uri, &again.uri),
        "{} {}",
        shown.uri,
        again.uri
    );
    assert_stored(&gone);
    wait_merged(&dir.uri);
    assert_eq!(fresh_names(&dir.uri), expected);
    let deleted: BTreeSet<String> = reg.deleted(&dir).unwrap().into_iter().map(|d| d.1).collect();
    for e in &gone {
        assert!(
            deleted.iter().any(|d| d.ends_with(&format!("/{}", e.name))),
            "{} in {deleted:?}",
            e.name
        );
    }
}

/// A TileDB tool changing the group while new entries wait to be merged
/// (its list is newer than their records) loses none of them.
#[test]
fn a_tool_writing_the_group_while_entries_wait_loses_none() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = mount_registry();
    let dir = root(&reg, tmp.path());
    reg.mkdir(&dir, "a", &Attrs::default()).unwrap();
    reg.mkdir(&dir, "b", &Attrs::default()).unwrap();
    let ctx = Context::new().unwrap();
    let other = format!("{}/made-elsewhere", dir.uri);
    Group::create(&ctx, &other).unwrap();
    let mut g = Group::open(&ctx, &dir.uri, GroupMode::Write).unwrap();
    g.add_member("made-elsewhere", true, "ext", ObjectType::Group).unwrap();
    g.close().unwrap();
    let expected: BTreeSet<String> = ["a", "b", "ext"].map(String::from).into();
    assert_eq!(names(&registry(), &dir), expected);
    wait_merged(&dir.uri);
    assert_eq!(fresh_names(&dir.uri), expected);
}

/// A mount killed before it merged its new entries loses none: every
/// reader lists them from their records, and `modelfs compact` (or the
/// next change) merges them.
#[test]
fn entries_a_killed_mount_did_not_merge_show_and_compact_merges_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg_uri, mnt) = mounted(tmp.path(), &[]);
    let made: BTreeSet<String> = (0..15).map(|i| format!("k{i:02}")).collect();
    for name in &made {
        std::fs::create_dir(mnt.dir.join(name)).unwrap();
    }
    std::fs::write(mnt.dir.join("k-file.txt"), b"recorded").unwrap();
    // Within the merge delay.
    std::process::Command::new("kill")
        .args(["-9", &mnt.pid().to_string()])
        .status()
        .unwrap();
    drop(mnt);
    let reg = registry();
    let dir = reg.resolve(&reg_uri).unwrap().unwrap();
    let listed = names(&reg, &dir);
    assert!(made.is_subset(&listed) && listed.contains("k-file.txt"), "{listed:?}");
    let waiting = unmerged(&dir.uri);
    let out = modelfs_ok(&["compact", &reg_uri, "--grace", "0"]);
    if !waiting.is_empty() {
        assert!(out.contains("new entries merged"), "{out}");
    }
    assert!(unmerged(&dir.uri).is_empty());
    let members = fresh_names(&dir.uri);
    assert!(
        made.is_subset(&members) && members.contains("k-file.txt"),
        "{members:?}"
    );
    let again = MountGuard::new(&reg_uri, &tmp.path().join("again"), &[]);
    assert_eq!(std::fs::read(again.dir.join("k-file.txt")).unwrap(), b"recorded");
}

/// `ls -l` of a directory: what each entry's `lstat` shows, in listing order.
fn long_listing(dir: &std::path::Path) -> Vec<(String, u32, u64, i64, u32)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, m.mode(), m.nlink(), m.mtime(), m.uid())
        })
        .collect()
}

/// A lister's stats of many subdirectories are read ahead of it, several
/// at a time, and show exactly what they show one at a time.
#[test]
fn ls_l_of_many_directories_reads_them_ahead_and_shows_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    for i in 0..120 {
        let d = mnt.dir.join(format!("m{i:03}"));
        std::fs::create_dir(&d).unwrap();
        if i % 3 == 0 {
            std::fs::create_dir(d.join("sub")).unwrap();
        }
        if i % 5 == 0 {
            std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        }
    }
    std::fs::write(mnt.dir.join("notes.txt"), b"x").unwrap();
    drop(mnt);
    // Read one by one ahead (tests/dir_stats.rs covers reads of the
    // whole directory).
    let ahead = MountGuard::new(&reg, &tmp.path().join("ahead"), &["--stat-whole-from", "0"]);
    let listed = long_listing(&ahead.dir);
    let used = ahead.stats()["stat_ahead_used"].as_u64().unwrap();
    assert!(used >= 100, "{used} of 120 subdirectories read ahead");
    drop(ahead);
    let one_by_one = MountGuard::new(&reg, &tmp.path().join("one"), &["--stat-ahead", "0"]);
    assert_eq!(listed, long_listing(&one_by_one.dir));
    assert_eq!(one_by_one.stats()["stat_ahead_reads"], 0);
    assert_eq!(listed.len(), 122, "120 directories, notes.txt and seed.txt");
    assert!(listed.iter().any(|e| e.0 == "m000" && e.1 & 0o777 == 0o700 && e.2 == 3));
}

/// A large directory's stored attributes are read without opening its
/// group while its metadata files stay the same; another writer's change
/// of them shows at the next read.
#[test]
fn a_large_directorys_attributes_changed_elsewhere_show_at_the_next_read() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = mount_registry();
    let dir = root(&reg, tmp.path());
    for i in 0..70 {
        reg.mkdir(&dir, &format!("m{i:02}"), &Attrs::default()).unwrap();
    }
    wait_merged(&dir.uri);
    let mode_of = |reg: &Registry| match reg.node(&dir).unwrap() {
        modelfs::registry::Node::Dir(a) => a.mode,
        other => panic!("{other:?}"),
    };
    assert_eq!(mode_of(&reg), None);
    assert_eq!(mode_of(&reg), None, "read again from what was kept");
    let other = registry();
    let chmod = Attrs {
        mode: Some(0o700),
        ..Attrs::default()
    };
    other.set_attrs(&dir, &chmod).unwrap();
    assert_eq!(mode_of(&reg), Some(0o700));
    other
        .set_attrs(
            &dir,
            &Attrs {
                mode: Some(0o750),
                ..Attrs::default()
            },
        )
        .unwrap();
    assert_eq!(mode_of(&reg), Some(0o750));
}

/// The `modelfs.deleted.*` keys group `uri` holds (what the merges wrote).
fn deleted_keys(uri: &str) -> BTreeSet<String> {
    let g = Group::open(&Context::new().unwrap(), uri, GroupMode::Read).unwrap();
    let meta = g.metadata().unwrap();
    meta.into_iter()
        .filter_map(|(k, _)| k.strip_prefix("modelfs.deleted.").map(String::from))
        .collect()
}

/// Entries made and removed at once, before any merge (records of one
/// name within a millisecond): each stays removed, and its kept storage
/// gets its key, so a prune can free it.
#[test]
fn entries_made_and_removed_before_a_merge_stay_removed_and_get_their_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = mount_registry();
    let dir = root(&reg, tmp.path());
    reg.mkdir(&dir, "kept", &Attrs::default()).unwrap();
    wait_merged(&dir.uri);
    let mut made = Vec::new();
    for i in 0..20 {
        let e = reg.mkdir(&dir, &format!("t{i:02}"), &Attrs::default()).unwrap();
        reg.remove(&dir, &e).unwrap();
        reg.retire(&dir, &e).unwrap();
        made.push(e);
    }
    let only_kept: BTreeSet<String> = ["kept".to_string()].into();
    assert_eq!(names(&registry(), &dir), only_kept, "a fresh reader");
    assert_eq!(
        reg.deleted(&dir).unwrap().len(),
        20,
        "recorded removals count for prune"
    );
    let start = std::time::Instant::now();
    while deleted_keys(&dir.uri).len() < 20 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "keys: {:?}",
            deleted_keys(&dir.uri)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fresh_names(&dir.uri), only_kept);
    assert_eq!(names(&registry(), &dir), only_kept);
    assert_eq!(reg.deleted(&dir).unwrap().len(), 20);
    assert_stored(&made);
}

/// Every entry of `entries` still has its storage (kept for snapshots).
fn assert_stored<E: std::borrow::Borrow<Entry>>(entries: &[E]) {
    let ctx = Context::new().unwrap();
    for e in entries {
        let uri = &e.borrow().uri;
        assert_ne!(
            tiledb::object_type(&ctx, uri).unwrap(),
            ObjectType::Invalid,
            "{uri} kept"
        );
    }
}

/// While merges run in the background, the removals a prune sees never
/// drop: each one counts, as a record or as a key, at every moment. (It
/// read the keys, then the records: a merge in between hid its removals.)
#[test]
fn removals_stay_counted_while_merges_run() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = mount_registry();
    let dir = root(&reg, tmp.path());
    let start = std::time::Instant::now();
    let mut removed = 0;
    while start.elapsed() < Duration::from_secs(if on_s3() { 20 } else { 6 }) {
        let e = reg.mkdir(&dir, &format!("t{removed:04}"), &Attrs::default()).unwrap();
        reg.remove(&dir, &e).unwrap();
        reg.retire(&dir, &e).unwrap();
        removed += 1;
        // Bursts and pauses, so merges start while the counts are read.
        for _ in 0..if removed % 8 == 0 { 20 } else { 1 } {
            let seen = reg.deleted(&dir).unwrap().len();
            assert_eq!(seen, removed, "removals counted after {removed} made");
        }
    }
    assert!(removed >= 8, "only {removed} removals made");
}
