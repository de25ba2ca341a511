//! Modes, owners and times through real mounts (issue #12): what `chmod`,
//! `chown` and `utimensat` store, that storing them writes no new data
//! version, and that they survive a remount and reach other mounts.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use modelfs::registry::{Registry, file_array};
use modelfs::tiledb::Context;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn version_of(reg_uri: &str) -> Option<u64> {
    let ctx = Context::new().unwrap();
    let reg = Registry::new(ctx.clone()).unwrap();
    let entry = reg.resolve(reg_uri).unwrap()?;
    file_array::read_meta(&ctx, &entry.uri).unwrap().timestamp
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

const OLD: Duration = Duration::from_nanos(1_600_000_000_123_456_789);

#[test]
fn chmod_chown_utimens_are_stored_without_a_new_version_and_survive_remount() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let file = mnt.dir.join("seed.txt");
    let before = version_of(&format!("{reg}/seed.txt"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(&file, Some(1234), Some(5678)).unwrap();
    set_times(&file, UNIX_EPOCH + OLD, UNIX_EPOCH + OLD);
    let dir = mnt.dir.join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    set_times(&dir, UNIX_EPOCH + OLD, UNIX_EPOCH + OLD);
    // chown to the current owner and chmod to the current mode succeed.
    std::os::unix::fs::chown(&file, Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(
        version_of(&format!("{reg}/seed.txt")),
        before,
        "attributes wrote a data version"
    );
    drop(mnt);

    let mnt = MountGuard::new(&reg, &tmp.path().join("again"), &[]);
    let m = std::fs::metadata(mnt.dir.join("seed.txt")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o750);
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!(m.modified().unwrap(), UNIX_EPOCH + OLD, "mtime kept to the ns");
    assert_eq!(std::fs::read(mnt.dir.join("seed.txt")).unwrap(), b"seed");
    let d = std::fs::metadata(mnt.dir.join("d")).unwrap();
    assert_eq!(d.mode() & 0o7777, 0o700);
    assert_eq!(d.modified().unwrap(), UNIX_EPOCH + OLD);
}

#[test]
fn a_new_version_takes_its_commit_time_and_keeps_the_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, mnt) = mounted(tmp.path(), &[]);
    let file = mnt.dir.join("seed.txt");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    set_times(&file, UNIX_EPOCH + OLD, UNIX_EPOCH + OLD);
    let start = SystemTime::now() - Duration::from_secs(1);
    std::fs::write(&file, b"second version").unwrap();
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert!(
        m.modified().unwrap() >= start,
        "mtime {:?} is not the commit's",
        m.modified()
    );
    assert!(m.len() == 14);
}

#[test]
fn create_and_mkdir_store_the_mode_with_the_umask_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let script = mnt.dir.join("run.sh");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o775)
            .open(&script)
            .unwrap();
        f.write_all(b"#!/bin/sh\necho hi\n").unwrap();
    }
    std::fs::create_dir(mnt.dir.join("private")).unwrap();
    std::fs::set_permissions(mnt.dir.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    // The test process's umask (usually 022) applies to create.
    let umask = {
        // SAFETY: umask only swaps the process's mask; restored at once.
        let old = unsafe { libc::umask(0o022) };
        unsafe { libc::umask(old) };
        old as u32
    };
    assert_eq!(mode(&script), 0o775 & !umask);
    drop(mnt);
    let mnt = MountGuard::new(&reg, &tmp.path().join("again"), &[]);
    assert_eq!(mode(&mnt.dir.join("run.sh")), 0o775 & !umask);
    assert_eq!(mode(&mnt.dir.join("private")), 0o700);
    let out = std::process::Command::new(mnt.dir.join("run.sh")).output().unwrap();
    assert_eq!(out.stdout, b"hi\n");
}

#[test]
fn fchmod_and_futimens_on_a_file_being_written_are_committed_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let path = mnt.dir.join("new.bin");
    let f = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    (&f).write_all(&pseudo_random(3, 100_000)).unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(0o640)).unwrap();
    f.set_modified(UNIX_EPOCH + OLD).unwrap();
    drop(f);
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!((m.mode() & 0o7777, m.modified().unwrap()), (0o640, UNIX_EPOCH + OLD));
    drop(mnt);
    let mnt = MountGuard::new(&reg, &tmp.path().join("again"), &[]);
    let m = std::fs::metadata(mnt.dir.join("new.bin")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.modified().unwrap()), (0o640, UNIX_EPOCH + OLD));
}

#[test]
fn directory_mtime_changes_when_entries_come_and_go() {
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, mnt) = mounted(tmp.path(), &[]);
    let dir = mnt.dir.join("d");
    std::fs::create_dir(&dir).unwrap();
    set_times(&dir, UNIX_EPOCH + OLD, UNIX_EPOCH + OLD);
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(mtime(&dir), UNIX_EPOCH + OLD);
    std::fs::write(dir.join("f"), b"x").unwrap();
    let after_create = mtime(&dir);
    assert!(after_create > UNIX_EPOCH + OLD, "create left the directory's mtime");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    set_times(&dir, UNIX_EPOCH + OLD, UNIX_EPOCH + OLD);
    std::fs::remove_file(dir.join("f")).unwrap();
    assert!(mtime(&dir) > UNIX_EPOCH + OLD, "unlink left the directory's mtime");
}

#[test]
fn another_mount_sees_a_chmod_within_the_ttl() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, a) = mounted(tmp.path(), &[]);
    let b = MountGuard::new(&reg, &tmp.path().join("b"), &[]);
    assert_eq!(mode(&b.dir.join("seed.txt")), 0o644);
    std::fs::set_permissions(a.dir.join("seed.txt"), std::fs::Permissions::from_mode(0o604)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(mode(&b.dir.join("seed.txt")), 0o604);
}

#[test]
fn info_shows_the_commit_time_and_the_stored_attributes() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    std::fs::set_permissions(mnt.dir.join("seed.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    set_times(&mnt.dir.join("seed.txt"), UNIX_EPOCH + OLD, UNIX_EPOCH + OLD);
    let info = modelfs_ok(&["info", &format!("{reg}/seed.txt")]);
    assert!(info.contains("version:"), "{info}");
    assert!(info.contains("mode:       0600"), "{info}");
    assert!(info.contains("mtime:      2020-09-13 12:26:40.123 UTC"), "{info}");
}

/// Runs `sh -c script` as the user `nobody` (65534) and returns its exit
/// status and stderr.
fn as_nobody(script: &str) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn with_allow_other_the_kernel_enforces_the_stored_modes() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (reg, mnt) = mounted(tmp.path(), &["--allow-other"]);
    let secret = mnt.dir.join("seed.txt");
    let q = |p: &Path| format!("'{}'", s(p));
    assert!(
        as_nobody(&format!("cat {}", q(&secret))).0,
        "a 0644 file is readable by others"
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, err) = as_nobody(&format!("cat {}", q(&secret)));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = as_nobody(&format!("echo x > {}", q(&mnt.dir.join("new"))));
    assert!(!ok && err.contains("Permission denied"), "the root is 0755: {err}");
    // Another user's own directory: theirs to write in.
    let shared = mnt.dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(65534), Some(65534)).unwrap();
    let (ok, err) = as_nobody(&format!("echo mine > {}/f", q(&shared)));
    assert!(ok, "{err}");
    let m = std::fs::metadata(shared.join("f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534), "a file is its creator's");
    drop(mnt);
    // After a remount the same holds: modes and owners are stored.
    let mnt = MountGuard::new(&reg, &tmp.path().join("again"), &["--allow-other"]);
    let (ok, _) = as_nobody(&format!("cat {}", q(&mnt.dir.join("seed.txt"))));
    assert!(!ok);
    let m = std::fs::metadata(mnt.dir.join("shared/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
}

/// A change made to the entries of the directory it is given.
type Change = dyn Fn(&Path);

#[test]
fn a_directory_shows_the_same_times_after_its_changes_as_a_fresh_mount_does() {
    dir_times_match_a_fresh_mount(&["--no-disk-cache"]);
}

#[test]
fn a_directory_shows_the_same_times_with_the_disk_cache_on() {
    let cache = tempfile::tempdir().unwrap();
    dir_times_match_a_fresh_mount(&["--disk-cache", cache.path().to_str().unwrap()]);
}

/// The mount that changes a directory's entries shows the times the
/// registry stamped on the change, to the nanosecond: a time of its own
/// would differ from every other mount's and, across a second's boundary,
/// make `rsync -a` copy the directory's time again.
fn dir_times_match_a_fresh_mount(flags: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), flags);
    let times = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
    };
    // (what, whether the directory first gets `old` and `olddir`, the change)
    let changes: [(&str, bool, &Change); 7] = [
        ("create", true, &|d| std::fs::write(d.join("f"), b"x").unwrap()),
        ("mkdir", true, &|d| std::fs::create_dir(d.join("sub")).unwrap()),
        ("unlink", true, &|d| std::fs::remove_file(d.join("old")).unwrap()),
        ("rmdir", true, &|d| std::fs::remove_dir(d.join("olddir")).unwrap()),
        ("rename within", true, &|d| {
            std::fs::rename(d.join("old"), d.join("new")).unwrap()
        }),
        ("rename out", true, &|d| {
            std::fs::rename(d.join("old"), d.join("../moved")).unwrap()
        }),
        // Merged together, they change no name in the member list.
        ("create and unlink of one file", false, &|d| {
            std::fs::write(d.join("f"), b"x").unwrap();
            std::fs::remove_file(d.join("f")).unwrap();
        }),
    ];
    // Read right after each change, well within the metadata TTL: what
    // the mount shows of its own change, not what it read again.
    let mut shown = Vec::new();
    for (i, (_, prepare, change)) in changes.iter().enumerate() {
        let d = mnt.dir.join(format!("d{i}"));
        std::fs::create_dir(&d).unwrap();
        if *prepare {
            std::fs::write(d.join("old"), b"old").unwrap();
            std::fs::create_dir(d.join("olddir")).unwrap();
        }
        change(&d);
        shown.push(times(&d));
    }
    // The directory made by mkdir: its own times as stored.
    let made = times(&mnt.dir.join("d1/sub"));
    // The unmount merges every directory's journal: the fresh mount reads
    // the merged state.
    drop(mnt);
    let again = MountGuard::new(&reg, &tmp.path().join("again"), flags);
    let mut diffs = Vec::new();
    for (i, (what, _, _)) in changes.iter().enumerate() {
        let fresh = times(&again.dir.join(format!("d{i}")));
        if fresh != shown[i] {
            diffs.push(format!(
                "after {what}: the mount showed {:?}, a fresh mount {fresh:?}",
                shown[i]
            ));
        }
    }
    let fresh = times(&again.dir.join("d1/sub"));
    if fresh != made {
        diffs.push(format!(
            "the new directory: the mount showed {made:?}, a fresh mount {fresh:?}"
        ));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn statfs_shows_the_space_of_the_registry() {
    // `datasets` refuses to cache into a directory with less free space
    // than it needs: 0 bytes free (what statfs said) stopped it.
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let shown = nix::sys::statvfs::statvfs(&mnt.dir).unwrap();
    let bytes = |blocks: u64, v: &nix::sys::statvfs::Statvfs| blocks * v.fragment_size();
    let available = bytes(shown.blocks_available(), &shown);
    if on_s3() {
        assert_eq!(available, modelfs::fs::OBJECT_STORE_BYTES);
        return;
    }
    // The file system holding the registry, give or take what others
    // wrote meanwhile.
    let under = nix::sys::statvfs::statvfs(std::path::Path::new(&reg)).unwrap();
    assert_eq!(bytes(shown.blocks(), &shown) >> 20, bytes(under.blocks(), &under) >> 20);
    let under_available = bytes(under.blocks_available(), &under);
    assert!(
        available.abs_diff(under_available) < 256 << 20,
        "{available} bytes available shown, {under_available} under the registry"
    );
    assert!(available > 0);
}
