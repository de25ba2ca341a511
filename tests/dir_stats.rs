//! Subdirectories' stats from one listing of their parent (issue #16's
//! `ls -l` on object stores): a summary is used only while the files it was
//! read from are the subdirectory's, so no change, by a mount, by another
//! registry or by another TileDB tool, ever shows a stale stat. Real TileDB,
//! local and on S3 when `MODELFS_TEST_S3` is set; and through real mounts.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use modelfs::registry::{Attrs, DirStat, Entry, Registry};
use modelfs::tiledb::{Context, Group, GroupMode, ObjectType};

fn registry() -> Registry {
    Registry::new(Context::new().unwrap()).unwrap()
}

/// Each subdirectory's stat as a read of its group gives it.
fn read_one_by_one(reg: &Registry, children: &[Entry]) -> BTreeMap<String, DirStat> {
    let mut out = BTreeMap::new();
    for c in children.iter().filter(|c| c.is_dir()) {
        let (attrs, list) = reg.dir_with_entries(c).unwrap();
        let subdirs = list.iter().filter(|e| e.is_dir()).count() as u32;
        out.insert(c.uri.clone(), DirStat { attrs, subdirs });
    }
    out
}

/// Checks what one listing of `dir` tells against reads one by one, saves
/// the stats it did not tell as a mount would, and returns how many it
/// told.
fn check_and_save(reg: &Registry, dir: &Entry) -> usize {
    let children = reg.list(dir).unwrap();
    let truth = read_one_by_one(reg, &children);
    let s = reg.dir_stats(dir, &children).unwrap().expect("a listing tells");
    for (uri, stat) in &s.known {
        assert_eq!(Some(stat), truth.get(uri), "{uri}: told a stat that is not its own");
    }
    assert_eq!(
        s.known.len() + s.unknown.len(),
        truth.len(),
        "every subdirectory told or labelled"
    );
    for (uri, label) in &s.unknown {
        reg.save_dir_stat(dir, label, &truth[uri]).unwrap();
    }
    s.known.len()
}

#[test]
fn a_listing_tells_subdirectory_stats_only_while_they_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = registry_uri(tmp.path());
    let reg = registry();
    let root = reg.ensure_dir(&uri).unwrap();
    let mode = |m| Attrs {
        mode: Some(m),
        ..Attrs::default()
    };
    let mut dirs = Vec::new();
    for i in 0..12 {
        dirs.push(reg.mkdir(&root, &format!("m{i:02}"), &mode(0o755)).unwrap());
    }
    reg.mkdir(&dirs[1], "sub", &mode(0o755)).unwrap();
    reg.mkdir(&dirs[2], "a", &mode(0o700)).unwrap();
    reg.mkdir(&dirs[2], "b", &mode(0o700)).unwrap();
    // A group another tool made, with nothing stored: known at once.
    Group::create(reg.context(), &format!("{uri}/plain")).unwrap();
    let mut g = Group::open(reg.context(), &uri, GroupMode::Write).unwrap();
    g.add_member("plain", true, "plain", ObjectType::Group).unwrap();
    drop(g);

    assert_eq!(
        check_and_save(&reg, &root),
        1,
        "only the empty group is told before any summary"
    );
    assert_eq!(
        check_and_save(&registry(), &root),
        13,
        "a fresh registry is told every stat kept"
    );

    // Changes by another registry, and by a TileDB tool behind modelfs's
    // back: each makes that subdirectory's summary stale, and only it.
    let other = registry();
    other.mkdir(&dirs[3], "new", &mode(0o755)).unwrap();
    other.set_attrs(&dirs[4], &mode(0o750)).unwrap();
    let mut g = Group::open(other.context(), &dirs[5].uri, GroupMode::Write).unwrap();
    Group::create(other.context(), &format!("{}/x", dirs[5].uri)).unwrap();
    g.add_member("x", true, "x", ObjectType::Group).unwrap();
    drop(g);
    let (_, sub1) = reg.dir_with_entries(&dirs[1]).unwrap();
    other.remove(&dirs[1], &sub1[0]).unwrap();
    assert_eq!(
        check_and_save(&registry(), &root),
        9,
        "the four changed subdirectories are read again"
    );
    assert_eq!(check_and_save(&registry(), &root), 13);
}

/// Deleting a directory's storage takes its summaries with it: its folder
/// goes, as it did before there were any.
#[test]
fn deleting_a_directory_s_storage_takes_its_summaries() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = registry_uri(tmp.path());
    let reg = registry();
    let root = reg.ensure_dir(&uri).unwrap();
    let attrs = Attrs {
        mode: Some(0o755),
        ..Attrs::default()
    };
    let parent = reg.mkdir(&root, "p", &attrs).unwrap();
    reg.mkdir(&parent, "c", &attrs).unwrap();
    assert_eq!(check_and_save(&reg, &parent), 0);
    assert_eq!(check_and_save(&reg, &parent), 1, "the summary was kept");
    let (_, inside) = reg.dir_with_entries(&parent).unwrap();
    reg.remove(&parent, &inside[0]).unwrap();
    reg.delete_storage(&inside[0]).unwrap();
    reg.delete_storage(&parent).unwrap();
    let vfs = modelfs::tiledb::Vfs::new(reg.context()).unwrap();
    let left = vfs.ls(&parent.uri).unwrap_or_default();
    assert!(left.is_empty() || !vfs.is_dir(&parent.uri).unwrap(), "{left:?}");
}

/// The link counts and modes `ls -l` shows for `dir`'s entries.
fn long_listing(dir: &Path) -> BTreeMap<String, (u64, u32, i64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            (
                e.file_name().into_string().unwrap(),
                (m.nlink(), m.mode(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
            )
        })
        .collect()
}

fn counter(m: &MountGuard, name: &str) -> u64 {
    m.stats()[name].as_u64().unwrap()
}

/// What `ls -l` of the root of a fresh mount shows, with the mount's
/// counters of subdirectories told by the root's listing and read one by
/// one.
fn fresh_ls_l(reg: &str, tmp: &Path, extra: &[&str]) -> (BTreeMap<String, (u64, u32, i64)>, u64, u64) {
    let m = MountGuard::new(reg, &tmp.join("fresh"), extra);
    let shown = long_listing(&tmp.join("fresh"));
    (shown, counter(&m, "stat_ahead_told"), counter(&m, "stat_ahead_saved"))
}

#[test]
fn ls_l_on_a_fresh_mount_shows_the_same_stats_told_or_read() {
    const DIRS: usize = 200;
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let root = tmp.path().join("mnt");
    for i in 0..DIRS {
        std::fs::create_dir(root.join(format!("m{i:03}"))).unwrap();
    }
    std::fs::create_dir(root.join("m001/sub")).unwrap();
    std::fs::write(root.join("m002/f"), b"x").unwrap();
    std::fs::set_permissions(root.join("m003"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    drop(mnt);

    // The truth: every subdirectory read on its own.
    let (truth, told, _) = fresh_ls_l(&reg, tmp.path(), &["--stat-ahead", "0"]);
    assert_eq!(told, 0);
    assert_eq!(truth.len(), DIRS + 1);
    assert_eq!(truth["m001"].0, 3, "{truth:?}");
    // The first listing is told nothing at first (modelfs's mkdir stores
    // attributes) and keeps what it reads (a listing longer than the TTL
    // reads the root again, and is then told what it kept); the next is
    // told nearly everything.
    let (first, told, saved) = fresh_ls_l(&reg, tmp.path(), &["--stat-whole-from", "100"]);
    assert_eq!(first, truth);
    assert!((saved + told) as usize >= DIRS - 10, "saved {saved}, told {told}");
    let (second, told, _) = fresh_ls_l(&reg, tmp.path(), &["--stat-whole-from", "100"]);
    assert_eq!(second, truth);
    assert!(told as usize >= DIRS - 10, "told {told}");

    // Changes through another mount: the changed directories show their
    // new stats, the others are still told.
    {
        let other = MountGuard::new(&reg, &tmp.path().join("other"), &[]);
        let o = tmp.path().join("other");
        std::fs::create_dir(o.join("m010/new")).unwrap();
        std::fs::set_permissions(o.join("m011"), std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
        std::fs::remove_dir(o.join("m001/sub")).unwrap();
        drop(other);
    }
    let (truth, ..) = fresh_ls_l(&reg, tmp.path(), &["--stat-ahead", "0"]);
    assert_eq!(
        (truth["m010"].0, truth["m011"].1 & 0o777, truth["m001"].0),
        (3, 0o750, 2)
    );
    let (after, told, _) = fresh_ls_l(&reg, tmp.path(), &["--stat-whole-from", "100"]);
    assert_eq!(after, truth);
    assert!(told as usize >= DIRS - 13, "told {told}");
}
