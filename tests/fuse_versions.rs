//! Versions through real mounts on real TileDB (issue #15): the hidden
//! `.versions` directories, restore by `cp`, snapshot mounts (`--at`),
//! tags, `modelfs log`, and pruning beside readers. Each runs on S3 too
//! (`MODELFS_TEST_S3`, see `scripts/test_s3.sh`).

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use modelfs::registry::Registry;
use modelfs::registry::version_time;
use modelfs::tiledb::{self, Context, Group, GroupMode, Vfs};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// The entries of `dir`, sorted by name, with their sizes.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.metadata().unwrap().len())
        })
        .collect();
    out.sort();
    out
}

/// The version names (times) in `.versions/<file>/`, oldest first; tags
/// left out.
fn version_names(versions_dir: &Path) -> Vec<String> {
    listing(versions_dir)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| version_time::parse(n).is_some())
        .collect()
}

/// Writes `versions` one after another as `path`, each a commit.
fn write_versions(path: &Path, versions: &[Vec<u8>]) {
    for v in versions {
        std::fs::write(path, v).unwrap();
    }
}

/// The storage URI of the entry at `uri`.
fn storage_uri(uri: &str) -> String {
    Registry::new(Context::new().unwrap())
        .unwrap()
        .resolve(uri)
        .unwrap()
        .unwrap_or_else(|| panic!("{uri} not found"))
        .uri
}

/// Bytes stored under `uri` (every file of the array), as the storage
/// counts them.
fn stored_bytes(uri: &str) -> u64 {
    let ctx = Context::new().unwrap();
    Vfs::new(&ctx).unwrap().dir_size(uri).unwrap()
}

#[test]
fn three_versions_written_through_the_mount_are_listed_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, mnt) = mounted(tmp.path(), &[]);
    let dir = mnt.dir.join("m");
    std::fs::create_dir(&dir).unwrap();
    let contents = [
        pseudo_random(1, 300_000),
        pseudo_random(2, 1_000_003),
        b"three".to_vec(),
    ];
    write_versions(&dir.join("w.bin"), &contents);

    // Hidden from listings, found by name, in every directory.
    let names: Vec<String> = listing(&dir).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["w.bin".to_string()]);
    assert!(!listing(&mnt.dir).iter().any(|(n, _)| n == ".versions"));
    assert_eq!(
        listing(&mnt.dir.join(".versions")),
        vec![("seed.txt".to_string(), 0)],
        "one directory per file, none for subdirectories"
    );
    assert_eq!(listing(&dir.join(".versions")).len(), 1);

    let vdir = dir.join(".versions").join("w.bin");
    let listed = listing(&vdir);
    assert_eq!(listed.len(), 3, "{listed:?}");
    for ((name, size), want) in listed.iter().zip(&contents) {
        assert_eq!(name.len(), "2026-12-01T21:28:59.119Z".len(), "{name}");
        assert!(name.ends_with('Z'), "{name}");
        assert_eq!(*size, want.len() as u64, "{name}");
        let path = vdir.join(name);
        assert_eq!(&std::fs::read(&path).unwrap(), want, "{name}");
        let meta = std::fs::metadata(&path).unwrap();
        let mtime_ms = meta.modified().unwrap().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert_eq!(
            Some(mtime_ms),
            version_time::parse(name),
            "{name}: mtime is the commit time"
        );
        assert!(meta.permissions().readonly());
    }
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0), "sorted by time");
    // Random reads of a past version through the same read path.
    let f = std::fs::File::open(vdir.join(&listed[1].0)).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 700_001).unwrap();
    assert_eq!(&buf[..], &contents[1][700_001..704_097]);

    // Changes inside are refused with EROFS.
    let v0 = vdir.join(&listed[0].0);
    assert_eq!(errno(std::fs::File::create(vdir.join("new"))), Some(libc::EROFS));
    assert_eq!(
        errno(std::fs::OpenOptions::new().write(true).open(&v0)),
        Some(libc::EROFS)
    );
    assert_eq!(errno(std::fs::remove_file(&v0)), Some(libc::EROFS));
    assert_eq!(
        errno(std::fs::set_permissions(
            &v0,
            std::os::unix::fs::PermissionsExt::from_mode(0o600)
        )),
        Some(libc::EROFS)
    );
    // truncate(2) by path: a setattr of the size (root passes the mode).
    let c_path = std::ffi::CString::new(s(&v0)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::truncate(c_path.as_ptr(), 0) };
    assert_eq!(
        (rc, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EROFS))
    );
    assert_eq!(errno(std::fs::rename(&v0, vdir.join("x"))), Some(libc::EROFS));
    assert_eq!(errno(std::fs::create_dir(vdir.join("d"))), Some(libc::EROFS));
    assert_eq!(errno(std::fs::remove_dir(dir.join(".versions"))), Some(libc::EROFS));
    // The kernel sees a directory there and refuses the rename itself.
    assert_eq!(
        errno(std::fs::rename(dir.join("w.bin"), dir.join(".versions"))),
        Some(libc::EISDIR)
    );
    // The file itself is untouched.
    assert_eq!(std::fs::read(dir.join("w.bin")).unwrap(), contents[2]);
}

#[test]
fn restore_by_cp_makes_the_old_version_current() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let path = mnt.dir.join("weights.bin");
    let old = pseudo_random(7, 2_000_000);
    let new = pseudo_random(8, 1_500_000);
    write_versions(&path, &[old.clone(), new.clone()]);
    let vdir = mnt.dir.join(".versions").join("weights.bin");
    let names = version_names(&vdir);
    assert_eq!(names.len(), 2);

    let out = std::process::Command::new("cp")
        .arg(vdir.join(&names[0]))
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&path).unwrap(), old);
    let after = version_names(&vdir);
    assert_eq!(after.len(), 3, "the restore is a new version: {after:?}");
    assert_eq!(std::fs::read(vdir.join(&after[2])).unwrap(), old);
    assert_eq!(std::fs::read(vdir.join(&after[1])).unwrap(), new);
    // Seen outside the mount too.
    let exported = tmp.path().join("out.bin");
    modelfs_ok(&["export", &format!("{reg}/weights.bin"), s(&exported)]);
    assert_eq!(std::fs::read(&exported).unwrap(), old);
}

#[test]
fn a_snapshot_mount_shows_the_tree_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let dir = mnt.dir.join("m");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.bin"), b"first a").unwrap();
    std::fs::write(dir.join("dropped.txt"), b"dropped later").unwrap();
    std::fs::write(dir.join("unlinked.txt"), b"unlinked later").unwrap();
    std::fs::write(dir.join("replaced.txt"), b"replaced later").unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let between = tiledb::now_ms();
    std::thread::sleep(Duration::from_millis(30));
    std::fs::write(dir.join("a.bin"), b"second version of a").unwrap();
    std::fs::write(dir.join("new.txt"), b"made later").unwrap();
    std::fs::create_dir(mnt.dir.join("later")).unwrap();
    std::fs::remove_file(dir.join("unlinked.txt")).unwrap();
    // A write-then-rename saver replaces a file: the replaced one's storage
    // stays too.
    std::fs::write(dir.join("tmp~"), b"renamed over").unwrap();
    std::fs::rename(dir.join("tmp~"), dir.join("replaced.txt")).unwrap();
    // Another tool takes `dropped.txt` out of the directory, leaving its
    // storage: a snapshot from before still shows it.
    let group_uri = storage_uri(&format!("{reg}/m"));
    let ctx = Context::new().unwrap();
    wait_member(&group_uri, "dropped.txt");
    let mut group = Group::open(&ctx, &group_uri, GroupMode::Write).unwrap();
    group.remove_member("dropped.txt").unwrap();
    group.close().unwrap();

    for at in [
        version_time::format_ms(between),
        format!("ms:{between}"),
        // `modelfs ls -l`'s spelling.
        version_time::format_ms(between).replace('T', " ").replace('Z', " UTC"),
    ] {
        let snap = MountGuard::new(&reg, &tmp.path().join("snap"), &["--at", &at]);
        let names: Vec<String> = listing(&snap.dir).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["m", "seed.txt"], "{at}");
        let m = snap.dir.join("m");
        let names: Vec<String> = listing(&m).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            vec!["a.bin", "dropped.txt", "replaced.txt", "unlinked.txt"],
            "{at}\n{}",
            snap.log_text()
        );
        assert_eq!(std::fs::read(m.join("a.bin")).unwrap(), b"first a");
        assert_eq!(std::fs::read(m.join("dropped.txt")).unwrap(), b"dropped later");
        assert_eq!(std::fs::read(m.join("unlinked.txt")).unwrap(), b"unlinked later");
        assert_eq!(std::fs::read(m.join("replaced.txt")).unwrap(), b"replaced later");
        assert_eq!(version_names(&m.join(".versions").join("a.bin")).len(), 1);
        assert_eq!(errno(std::fs::write(m.join("a.bin"), b"x")), Some(libc::EROFS));
        assert_eq!(errno(std::fs::create_dir(snap.dir.join("d"))), Some(libc::EROFS));
    }
    // The live mount is unchanged by all this.
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), b"second version of a");
    assert_eq!(std::fs::read(dir.join("replaced.txt")).unwrap(), b"renamed over");
    assert!(!dir.join("unlinked.txt").exists());
    assert!(
        modelfs(&["mount", "--at", "no-such-tag", &reg, s(&tmp.path().join("snap"))])
            .status
            .code()
            .is_some_and(|c| c != 0)
    );
}

#[test]
fn tags_are_listed_beside_the_times_and_usable_with_at() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &["--metadata-ttl", "0.2"]);
    let path = mnt.dir.join("model.bin");
    let contents = [b"one".to_vec(), b"two!".to_vec(), b"three".to_vec()];
    write_versions(&path, &contents);
    let vdir = mnt.dir.join(".versions").join("model.bin");
    let names = version_names(&vdir);
    let uri = format!("{reg}/model.bin");
    modelfs_ok(&["tag", &uri, "production", "--at", &names[0]]);
    modelfs_ok(&["tag", &uri, "latest"]);
    // Names that read as times, or hold a slash, are refused.
    assert!(!modelfs(&["tag", &uri, "2026-01-01"]).status.success());
    assert!(!modelfs(&["tag", &uri, "a/b"]).status.success());
    std::thread::sleep(Duration::from_millis(400));

    let listed = listing(&vdir);
    let tags: Vec<&(String, u64)> = listed.iter().filter(|(n, _)| !names.contains(n)).collect();
    assert_eq!(
        tags,
        vec![&("latest".to_string(), 5), &("production".to_string(), 3)],
        "{listed:?}"
    );
    assert_eq!(std::fs::read(vdir.join("production")).unwrap(), b"one");
    assert_eq!(std::fs::read(vdir.join("latest")).unwrap(), b"three");
    let log = modelfs_ok(&["log", &uri]);
    assert!(
        log.contains(&format!("{}               3 bytes  file  tags: production", names[0])),
        "{log}"
    );

    // A snapshot at a tag shows the tagged version.
    let snap = MountGuard::new(&reg, &tmp.path().join("snap"), &["--at", "production"]);
    assert_eq!(std::fs::read(snap.dir.join("model.bin")).unwrap(), b"one");
    drop(snap);

    modelfs_ok(&["tag", "--delete", &uri, "production"]);
    std::thread::sleep(Duration::from_millis(400));
    assert!(!listing(&vdir).iter().any(|(n, _)| n == "production"));
    assert!(!modelfs(&["tag", "--delete", &uri, "production"]).status.success());
}

#[test]
fn prune_keeps_the_current_the_newest_and_the_tagged_and_frees_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    // A long TTL: the kernel keeps the pruned version's name, so its open
    // reaches the daemon.
    let (reg, mnt) = mounted(tmp.path(), &["--metadata-ttl", "60"]);
    let path = mnt.dir.join("ckpt.bin");
    let contents: Vec<Vec<u8>> = (0..5).map(|i| pseudo_random(100 + i, 1 << 20)).collect();
    write_versions(&path, &contents);
    let vdir = mnt.dir.join(".versions").join("ckpt.bin");
    let names = version_names(&vdir);
    assert_eq!(names.len(), 5);
    let uri = format!("{reg}/ckpt.bin");
    modelfs_ok(&["tag", &uri, "keep-me", "--at", &names[1]]);
    // Looked up before the prune (the kernel keeps the entry).
    std::fs::metadata(vdir.join(&names[0])).unwrap();

    let storage = storage_uri(&uri);
    let before = stored_bytes(&storage);
    let out = modelfs_ok(&["prune", &uri, "--keep", "2"]);
    let after = stored_bytes(&storage);
    assert!(out.contains("2 versions pruned"), "{out}");
    assert!(out.contains(&format!("pruned {storage} {}", names[0])), "{out}");
    assert!(out.contains(&format!("pruned {storage} {}", names[2])), "{out}");
    let freed = before - after;
    assert!(freed >= 2 << 20, "freed {freed} of {before} bytes");
    assert!(after >= 3 << 20, "kept versions still stored: {after} bytes");
    assert!(out.contains(&format!("{freed} bytes freed")), "{out}");
    eprintln!("prune: {before} bytes stored before, {after} after, {freed} freed");

    // A fresh mount lists what was kept, each byte-identical.
    let other = MountGuard::new(&reg, &tmp.path().join("other"), &[]);
    let odir = other.dir.join(".versions").join("ckpt.bin");
    let kept = version_names(&odir);
    assert_eq!(kept, vec![names[1].clone(), names[3].clone(), names[4].clone()]);
    for (name, want) in [(1, &contents[1]), (3, &contents[3]), (4, &contents[4])] {
        assert_eq!(&std::fs::read(odir.join(&names[name])).unwrap(), want);
    }
    assert_eq!(&std::fs::read(other.dir.join("ckpt.bin")).unwrap(), &contents[4]);
    drop(other);

    // The first mount, reading a pruned version it still knows: EIO and a
    // log line naming the version, never other bytes.
    assert_eq!(errno(std::fs::read(vdir.join(&names[0]))), Some(libc::EIO));
    let log = mnt.log_text();
    assert!(
        log.contains(&format!("version {} is no longer stored (pruned)", names[0])),
        "{log}"
    );
    assert_eq!(&std::fs::read(&path).unwrap(), &contents[4]);

    // --untag lets a tagged version go; --keep 1 keeps the current only.
    let out = modelfs_ok(&["prune", &uri, "--keep", "1", "--untag", "keep-me"]);
    assert!(out.contains("2 versions pruned"), "{out}");
    let log = modelfs_ok(&["log", &uri]);
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(!log.contains("keep-me"), "{log}");
}

#[test]
fn the_current_version_reads_correctly_while_a_prune_runs_beside_a_reader() {
    let tmp = tempfile::tempdir().unwrap();
    // A small chunk cache, so reads keep reaching TileDB.
    let (reg, mnt) = mounted(tmp.path(), &["--cache-size", "1M"]);
    let path = mnt.dir.join("live.bin");
    let contents: Vec<Vec<u8>> = (0..12).map(|i| pseudo_random(500 + i, 2 << 20)).collect();
    write_versions(&path, &contents);
    let current = Arc::new(contents.last().unwrap().clone());
    // A handle opened before the prune, read throughout.
    let held = std::fs::File::open(&path).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads, current, path) = (stop.clone(), reads.clone(), current.clone(), path.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                drop_page_cache(&held);
                let offset = (i * 300_007) % ((2 << 20) - 65_536);
                let mut buf = vec![0u8; 65_536];
                held.read_exact_at(&mut buf, offset)
                    .expect("read through the held handle");
                assert_eq!(&buf[..], &current[offset as usize..offset as usize + 65_536]);
                let f = std::fs::File::open(&path).expect("open the current version");
                drop_page_cache(&f);
                let whole = std::fs::read(&path).expect("read the current version");
                assert!(whole == *current, "the current version read other bytes");
                reads.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    while reads.load(Ordering::Relaxed) < 2 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let during = reads.load(Ordering::Relaxed);
    let out = modelfs_ok(&["prune", &format!("{reg}/live.bin"), "--keep", "1"]);
    let after_prune = reads.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("the reader saw wrong bytes or an error");
    assert!(out.contains("11 versions pruned"), "{out}");
    assert!(after_prune > during, "no read ran beside the prune");
    eprintln!(
        "{} whole reads in all, {} while the prune ran",
        reads.load(Ordering::Relaxed),
        after_prune - during
    );
    assert_eq!(version_names(&mnt.dir.join(".versions").join("live.bin")).len(), 1);
}

/// Drops what the page cache holds of `f`, so the next read reaches the
/// daemon.
fn drop_page_cache(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; advice only.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

#[test]
fn log_lists_every_file_under_a_directory_with_tensor_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let dir = mnt.dir.join("bert");
    std::fs::create_dir(&dir).unwrap();
    let st = |tensors: &[(&str, &[f32])]| -> Vec<u8> {
        let owned: Vec<(String, Vec<u8>, usize)> = tensors
            .iter()
            .map(|(n, v)| (n.to_string(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.len()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
            .iter()
            .map(|(n, b, len)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], b).unwrap(),
                )
            })
            .collect();
        safetensors::tensor::serialize(views, None).unwrap()
    };
    let file = dir.join("model.safetensors");
    std::fs::write(&file, st(&[("a", &[1.0, 2.0]), ("b", &[3.0])])).unwrap();
    std::fs::write(&file, st(&[("a", &[1.0, 2.5]), ("c", &[4.0, 5.0, 6.0])])).unwrap();
    std::fs::write(&file, st(&[("a", &[1.0, 2.5]), ("c", &[4.0, 5.0])])).unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    let log = modelfs_ok(&["log", &format!("{reg}/bert")]);
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines[0].ends_with("/config.json"), "{log}");
    assert!(lines[1].contains("2 bytes  file"), "{log}");
    assert!(lines[2].ends_with("/model.safetensors"), "{log}");
    let body = lines[3..].join("\n");
    for want in [
        "+ a F32 [2]",
        "+ b F32 [1]",
        "~ a F32 [2] (values)",
        "+ c F32 [3]",
        "- b F32 [1]",
        "~ c F32 [3] -> F32 [2]",
    ] {
        assert!(body.contains(want), "missing {want:?} in\n{log}");
    }
    assert_eq!(body.matches("~ a").count(), 1, "{log}");
    let quick = modelfs_ok(&["log", "--quick", &format!("{reg}/bert/model.safetensors")]);
    assert!(!quick.contains("(values)"), "{quick}");
}

#[test]
fn deleted_files_stay_for_snapshots_until_a_prune_frees_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let dir = mnt.dir.join("d");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let old = pseudo_random(9, 1 << 20);
    std::fs::write(dir.join("old.bin"), &old).unwrap();
    std::fs::write(dir.join("sub").join("inner.txt"), b"inner").unwrap();
    let storage = storage_uri(&format!("{reg}/d/old.bin"));
    let sub_storage = storage_uri(&format!("{reg}/d/sub"));
    std::thread::sleep(Duration::from_millis(30));
    let before = tiledb::now_ms();
    std::thread::sleep(Duration::from_millis(30));
    std::fs::remove_file(dir.join("old.bin")).unwrap();
    std::fs::remove_file(dir.join("sub").join("inner.txt")).unwrap();
    std::fs::remove_dir(dir.join("sub")).unwrap();
    // A new file of the same name gets storage of its own.
    std::fs::write(dir.join("old.bin"), b"new one").unwrap();
    let ctx = Context::new().unwrap();
    assert_eq!(tiledb::object_type(&ctx, &storage).unwrap(), tiledb::ObjectType::Array);
    assert_ne!(storage_uri(&format!("{reg}/d/old.bin")), storage);

    let at = version_time::format_ms(before);
    {
        let snap = MountGuard::new(&reg, &tmp.path().join("snap"), &["--at", &at]);
        assert_eq!(std::fs::read(snap.dir.join("d/old.bin")).unwrap(), old);
        assert_eq!(std::fs::read(snap.dir.join("d/sub/inner.txt")).unwrap(), b"inner");
    }
    let stored = stored_bytes(&storage);
    // Not yet: deleted less than an hour ago.
    let out = modelfs_ok(&["prune", &reg, "--older-than", "1h"]);
    assert!(out.contains("0 deleted entries freed"), "{out}");
    let out = modelfs_ok(&["prune", &reg, "--keep", "1"]);
    assert!(out.contains("2 deleted entries freed"), "{out}");
    assert!(out.contains(&format!("freed {storage} (deleted ")), "{out}");
    assert!(out.contains(&format!("{stored} bytes")), "{out}");
    assert_eq!(
        tiledb::object_type(&ctx, &storage).unwrap(),
        tiledb::ObjectType::Invalid
    );
    assert_eq!(
        tiledb::object_type(&ctx, &sub_storage).unwrap(),
        tiledb::ObjectType::Invalid
    );
    // The live tree is untouched; the snapshot no longer has them.
    assert_eq!(std::fs::read(dir.join("old.bin")).unwrap(), b"new one");
    let snap = MountGuard::new(&reg, &tmp.path().join("snap2"), &["--at", &at]);
    let names: Vec<String> = listing(&snap.dir.join("d")).into_iter().map(|(n, _)| n).collect();
    assert!(names.is_empty(), "{names:?}");
    let again = modelfs_ok(&["prune", &reg, "--keep", "1"]);
    assert!(again.contains("0 deleted entries freed"), "{again}");
}
