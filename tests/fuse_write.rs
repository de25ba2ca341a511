//! Writes through real FUSE mounts: copies in, versions, refusals with the
//! right errno at close, crash safety, memory, and the semantics table.

mod common;

use std::ffi::CString;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use modelfs::registry::{Entry, FileArray, Registry, Storage, file_array};
use modelfs::tiledb::{Context, Datatype, MetaValue, Schema};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Closes `file` and returns close()'s errno, if it failed.
fn close_errno(file: std::fs::File) -> Option<i32> {
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just taken out of the File, so it is closed once.
    let rc = unsafe { libc::close(fd) };
    (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

fn version_of(reg_uri: &str) -> Option<u64> {
    let ctx = Context::new().unwrap();
    let reg = Registry::new(ctx.clone()).unwrap();
    let entry = reg.resolve(reg_uri).unwrap()?;
    file_array::read_meta(&ctx, &entry.uri).unwrap().timestamp
}

#[test]
fn cp_r_in_then_export_and_remount_are_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let model = make_hf_model(tmp.path(), 66);
    std::fs::write(model.join("empty.bin"), b"").unwrap();
    let reg;
    {
        let (r, mnt) = mounted(tmp.path(), &[]);
        reg = r;
        let st = Command::new("cp")
            .args(["-r", s(&model), s(&mnt.dir.join("tiny"))])
            .status()
            .unwrap();
        assert!(st.success());
        let stats = mnt.stats();
        assert_eq!(stats["staged_files"], 0, "{stats}");
        assert_same_tree(&model, &mnt.dir.join("tiny"));
    }
    let out = tmp.path().join("exported");
    modelfs_ok(&["export", &format!("{reg}/tiny"), s(&out)]);
    assert_same_tree(&model, &out);
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt2"), &["--read-only"]);
    assert_same_tree(&model, &mnt.dir.join("tiny"));
    let info = modelfs_ok(&["info", &format!("{reg}/tiny/model.safetensors")]);
    assert!(info.contains("tensors:    320"), "{info}");
}

/// The datatype of the `contents` attribute of the file at `reg_uri`.
fn contents_type(reg_uri: &str) -> Datatype {
    let ctx = Context::new().unwrap();
    let entry = Registry::new(ctx.clone()).unwrap().resolve(reg_uri).unwrap().unwrap();
    let attrs = Schema::load(&ctx, &entry.uri).unwrap().attributes().unwrap();
    assert_eq!(attrs.len(), 1, "{reg_uri}");
    attrs[0].datatype
}

/// New file arrays hold their bytes as BLOB, as TileDB's filestore does:
/// TileDB then writes them without computing a minimum, maximum and sum
/// over every byte of every tile (UINT8 did, at half of the daemon's CPU
/// in a `cp` of a 1 GiB model into the mount).
#[test]
fn new_files_are_stored_as_blobs_through_every_write_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    std::fs::write(mnt.dir.join("model.safetensors"), safetensors_bytes(4, 1 << 20)).unwrap();
    std::fs::write(mnt.dir.join("small.json"), b"{}").unwrap();
    // Written out of order: staged on disk, then copied in at close.
    let staged = std::fs::File::create(mnt.dir.join("staged.bin")).unwrap();
    staged.write_all_at(b"tail", 9 << 20).unwrap();
    staged.write_all_at(b"head", 0).unwrap();
    drop(staged);
    assert_eq!(mnt.stats()["staged_files"], 1);
    for name in ["seed.txt", "model.safetensors", "small.json", "staged.bin"] {
        assert_eq!(contents_type(&format!("{reg}/{name}")), Datatype::BLOB, "{name}");
    }
    let staged = std::fs::read(mnt.dir.join("staged.bin")).unwrap();
    assert_eq!((&staged[..4], &staged[9 << 20..]), (&b"head"[..], &b"tail"[..]));
}

/// Arrays written before BLOB (UINT8, 256 KiB tiles) and by TileDB's
/// filestore (BLOB, 1 KiB tiles) take new versions, through a mount and
/// through `import --force`, and keep their schema.
#[test]
fn earlier_arrays_take_new_versions_and_keep_their_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_uri(tmp.path());
    let seed = tmp.path().join("seed.txt");
    std::fs::write(&seed, b"seed").unwrap();
    modelfs_ok(&["import", s(&seed), &format!("{reg}/seed.txt")]);
    let ctx = Context::new().unwrap();
    let registry = Registry::new(ctx.clone()).unwrap();
    let root = registry.resolve(&reg).unwrap().unwrap();
    let old = pseudo_random(1, 600_000);
    for (name, datatype, extent) in [
        ("old.bin", Datatype::UINT8, 256 << 10),
        ("filestore.bin", Datatype::BLOB, 1024),
    ] {
        let uri = format!("{reg}/{name}");
        let size = [("file_size", MetaValue::u64(old.len() as u64))];
        dense_array_of(&ctx, &uri, "position", extent, datatype, &["contents"], &old, &size);
        let entry = Entry {
            name: name.into(),
            uri,
            storage: Storage::Array,
        };
        registry.link(&root, &entry).unwrap();
    }
    let by_mount = pseudo_random(2, 300_001);
    let by_import = pseudo_random(3, 1_000_003);
    let src = tmp.path().join("new.bin");
    std::fs::write(&src, &by_import).unwrap();
    {
        let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &[]);
        for name in ["old.bin", "filestore.bin"] {
            let path = mnt.dir.join(name);
            assert!(std::fs::read(&path).unwrap() == old, "{name} before");
            std::fs::write(&path, &by_mount).unwrap();
            assert!(
                std::fs::read(&path).unwrap() == by_mount,
                "{name} after a write through the mount"
            );
        }
    }
    for (name, datatype) in [("old.bin", Datatype::UINT8), ("filestore.bin", Datatype::BLOB)] {
        let uri = format!("{reg}/{name}");
        modelfs_ok(&["import", "--force", s(&src), &uri]);
        let out = tmp.path().join(format!("{name}.out"));
        modelfs_ok(&["export", &uri, s(&out)]);
        assert!(std::fs::read(&out).unwrap() == by_import, "{name} after import --force");
        assert_eq!(contents_type(&uri), datatype, "{name}");
    }
}

#[test]
fn overwrite_makes_a_new_version_and_keeps_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let path = mnt.dir.join("weights.bin");
    let v1 = pseudo_random(1, 3 << 20);
    let v2 = pseudo_random(2, 1 << 20);
    std::fs::write(&path, &v1).unwrap();
    let uri = format!("{reg}/weights.bin");
    let t1 = version_of(&uri).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    std::fs::write(&path, &v2).unwrap();
    let t2 = version_of(&uri).unwrap();
    assert!(t2 > t1);
    // Opens after the commit read the new version.
    assert!(std::fs::read(&path).unwrap() == v2);
    // The old version is still in TileDB, readable at its timestamp.
    let ctx = Context::new().unwrap();
    let entry = Registry::new(ctx.clone()).unwrap().resolve(&uri).unwrap().unwrap();
    let mut meta = file_array::read_meta(&ctx, &entry.uri).unwrap();
    meta.timestamp = Some(t1);
    meta.size = v1.len() as u64;
    let old = FileArray::open_version(&ctx, &entry.uri, meta).unwrap();
    let mut all = vec![0u8; v1.len()];
    old.read_at(0, &mut all).unwrap();
    assert!(all == v1);
}

#[test]
fn invalid_safetensors_fail_at_close_with_einval_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let good = safetensors_bytes(10, 100_000);
    let path = mnt.dir.join("model.safetensors");
    std::fs::write(&path, &good).unwrap();
    let uri = format!("{reg}/model.safetensors");
    let before = version_of(&uri).unwrap();

    let mut truncated = good.clone();
    truncated.truncate(good.len() - 100);
    let mut bad_header = good.clone();
    bad_header[8] = b'!';
    for (what, bytes) in [("truncated", truncated), ("bad header", bad_header)] {
        let mut f = std::fs::File::create(&path).unwrap();
        let _ = f.write_all(&bytes);
        assert_eq!(close_errno(f), Some(libc::EINVAL), "{what}");
        assert_eq!(version_of(&uri), Some(before), "{what}: a version was committed");
        assert!(std::fs::read(&path).unwrap() == good, "{what}: old file changed");
    }
    // A new invalid file leaves nothing behind.
    let new_path = mnt.dir.join("new.safetensors");
    let mut f = std::fs::File::create(&new_path).unwrap();
    f.write_all(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
        .unwrap();
    assert_eq!(close_errno(f), Some(libc::EINVAL));
    assert!(!new_path.exists());
    assert!(mnt.log_text().contains("new.safetensors"), "no log line names the file");
    drop(mnt);
    assert_eq!(modelfs_ok(&["ls", &reg]), "model.safetensors\nseed.txt\n");
}

#[test]
fn second_writers_share_the_bytes_and_a_streamed_file_takes_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, mnt) = mounted(tmp.path(), &[]);
    let path = mnt.dir.join("a.txt");
    let mut w = std::fs::File::create(&path).unwrap();
    w.write_all(b"first").unwrap();
    // As two descriptors of one local file: the same bytes.
    let second = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    second.write_all_at(b"F", 0).unwrap();
    w.write_all(b"+").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"First+");
    drop(w);
    // The first close committed; the second writer goes on.
    second.write_all_at(b"!", 6).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"First+!");
    drop(second);
    assert_eq!(std::fs::read(&path).unwrap(), b"First+!");
    // O_TRUNC by a second writer truncates the shared bytes.
    let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    w.write_all(b"xx").unwrap();
    let mut t = std::fs::File::create(&path).unwrap();
    t.write_all(b"t").unwrap();
    drop(t);
    drop(w);
    assert_eq!(std::fs::read(&path).unwrap(), b"t");

    // A .safetensors file streamed into storage takes one writer.
    let st = mnt.dir.join("m.safetensors");
    let bytes = safetensors_bytes(10, 4 << 20);
    let mut w = std::fs::File::create(&st).unwrap();
    w.write_all(&bytes[..bytes.len() / 2]).unwrap();
    let err = std::fs::OpenOptions::new().write(true).open(&st).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
    w.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(w);
    std::fs::OpenOptions::new().write(true).open(&st).unwrap();
    assert_eq!(std::fs::read(&st).unwrap(), bytes);
}

/// Runs each shell script in its own process, all at once; each must
/// succeed.
fn run_at_once(mnt: &MountGuard, scripts: impl IntoIterator<Item = String>) {
    let workers: Vec<_> = scripts
        .into_iter()
        .map(|script| Command::new("sh").arg("-c").arg(script).spawn().unwrap())
        .collect();
    for mut w in workers {
        assert!(w.wait().unwrap().success(), "a worker failed:\n{}", mnt.log_text());
    }
}

#[test]
fn processes_taking_turns_on_a_lock_file() {
    // The lock-file pattern of `filelock` (huggingface_hub, datasets, pip):
    // every waiting process opens the lock file for writing with O_TRUNC
    // and `flock`s it; they used to get EBUSY from the second open.
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, mnt) = mounted(tmp.path(), &[]);
    let lock = mnt.dir.join("x.lock");
    let log = mnt.dir.join("log.txt");
    std::fs::write(&log, b"").unwrap();
    run_at_once(
        &mnt,
        (0..4).map(|i| {
            format!(
                "for n in 1 2 3; do flock {lock} sh -c 'cat {log} > {log}.tmp.{i} && echo {i} >> {log}.tmp.{i} && sleep 0.05 && mv {log}.tmp.{i} {log}' || exit 1; done",
                lock = s(&lock),
                log = s(&log),
            )
        }),
    );
    // Each turn read the log and wrote it back with one line more: none lost.
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 12, "{text}");
}

#[test]
fn directories_rename_unlink_truncate() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let d = mnt.dir.join("run-1");
    std::fs::create_dir(&d).unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(d.join("sub/a.json"), b"{\"a\": 1}").unwrap();
    assert_eq!(std::fs::create_dir(&d).unwrap_err().raw_os_error(), Some(libc::EEXIST));
    assert_eq!(
        std::fs::remove_dir(d.join("sub")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    // Rename within a directory, across directories, and of a directory.
    std::fs::rename(d.join("sub/a.json"), d.join("sub/b.json")).unwrap();
    std::fs::rename(d.join("sub/b.json"), d.join("c.json")).unwrap();
    std::fs::rename(d.join("sub"), d.join("sub2")).unwrap();
    std::fs::write(d.join("sub2/x.txt"), b"x").unwrap();
    std::fs::rename(&d, mnt.dir.join("run-2")).unwrap();
    let d = mnt.dir.join("run-2");
    assert_eq!(std::fs::read(d.join("c.json")).unwrap(), b"{\"a\": 1}");
    assert_eq!(std::fs::read(d.join("sub2/x.txt")).unwrap(), b"x");
    // Replace an existing file by rename.
    std::fs::write(d.join("old.txt"), b"old").unwrap();
    std::fs::rename(d.join("c.json"), d.join("old.txt")).unwrap();
    assert_eq!(std::fs::read(d.join("old.txt")).unwrap(), b"{\"a\": 1}");
    // A new file may reuse a renamed-away name without touching the renamed file.
    std::fs::write(d.join("c.json"), b"new c").unwrap();
    assert_eq!(std::fs::read(d.join("old.txt")).unwrap(), b"{\"a\": 1}");
    // Truncate, extend, O_TRUNC, and unlink.
    let f = d.join("c.json");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"new");
    Command::new("truncate").args(["-s", "6", s(&f)]).status().unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"new\0\0\0");
    std::fs::OpenOptions::new().write(true).truncate(true).open(&f).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"");
    std::fs::remove_file(&f).unwrap();
    assert!(!f.exists());
    std::fs::remove_file(d.join("sub2/x.txt")).unwrap();
    std::fs::remove_dir(d.join("sub2")).unwrap();
    // Appending to an existing file keeps what was there.
    let mut a = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("old.txt"))
        .unwrap();
    a.write_all(b" and more").unwrap();
    drop(a);
    assert_eq!(std::fs::read(d.join("old.txt")).unwrap(), b"{\"a\": 1} and more");
    drop(mnt);
    let listing = modelfs_ok(&["ls", &format!("{reg}/run-2")]);
    assert_eq!(listing, "old.txt\n");
}

#[test]
fn unlinked_open_file_stays_readable_until_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, mnt) = mounted(tmp.path(), &["--cache-size", "1M"]);
    let path = mnt.dir.join("big.bin");
    let data = pseudo_random(9, 4 << 20);
    std::fs::write(&path, &data).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    let mut buf = vec![0u8; 1 << 20];
    f.read_exact_at(&mut buf, 3 << 20).unwrap();
    assert!(buf == data[3 << 20..]);
}

#[test]
fn unsupported_operations_return_the_documented_errno() {
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, mnt) = mounted(tmp.path(), &[]);
    let file = mnt.dir.join("seed.txt");
    let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        errno(std::os::unix::fs::symlink("seed.txt", mnt.dir.join("l"))),
        Some(libc::ENOTSUP)
    );
    assert_eq!(errno(std::fs::hard_link(&file, mnt.dir.join("h"))), Some(libc::ENOTSUP));
    let c = |p: &Path| CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe { libc::mkfifo(c(&mnt.dir.join("fifo")).as_ptr(), 0o644) };
    assert_eq!(
        (rc, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EPERM))
    );
    let name = CString::new("user.test").unwrap();
    // SAFETY: valid strings and buffer.
    let rc = unsafe { libc::setxattr(c(&file).as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(
        (rc, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::ENOTSUP))
    );
    let ro = MountGuard::new(&_reg, &tmp.path().join("ro"), &["--read-only"]);
    assert_eq!(errno(std::fs::write(ro.dir.join("x"), b"x")), Some(libc::EROFS));
    assert_eq!(errno(std::fs::create_dir(ro.dir.join("d"))), Some(libc::EROFS));
    assert_eq!(errno(std::fs::remove_file(ro.dir.join("seed.txt"))), Some(libc::EROFS));
}

/// Writes `data` to `path` from a thread, reporting the bytes written after
/// each MiB and `usize::MAX` just before it closes the file.
fn start_writer(path: PathBuf, data: std::sync::Arc<Vec<u8>>) -> std::sync::mpsc::Receiver<usize> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok(mut f) = std::fs::File::create(&path) else {
            return;
        };
        let mut done = 0;
        for chunk in data.chunks(1 << 20) {
            if f.write_all(chunk).is_err() {
                return;
            }
            done += chunk.len();
            let _ = tx.send(done);
        }
        let _ = tx.send(usize::MAX);
        drop(f);
    });
    rx
}

#[test]
fn sigkill_mid_write_leaves_the_old_version_or_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_uri(tmp.path());
    let old = pseudo_random(3, 5 << 20);
    std::fs::write(tmp.path().join("old.bin"), &old).unwrap();
    modelfs_ok(&["import", s(&tmp.path().join("old.bin")), &format!("{reg}/big.bin")]);
    let big = std::sync::Arc::new(safetensors_bytes(64, 256 << 20));
    let plain = std::sync::Arc::new(pseudo_random(4, 256 << 20));
    // Killed 100 MiB into the write, and while close() commits the whole
    // staged file.
    let cases = [
        ("new.safetensors", big, 100 << 20),
        ("big.bin", plain.clone(), 100 << 20),
        ("big.bin", plain.clone(), usize::MAX),
    ];
    for (i, (name, data, kill_at)) in cases.into_iter().enumerate() {
        let mut mnt = MountGuard::new(&reg, &tmp.path().join(format!("mnt-{i}")), &[]);
        let progress = start_writer(mnt.dir.join(name), data);
        while progress.recv().is_ok_and(|n| n < kill_at) {}
        if kill_at == usize::MAX {
            // close() has started: its commit uploads 256 MiB.
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        Command::new("kill")
            .args(["-KILL", &mnt.pid().to_string()])
            .status()
            .unwrap();
        assert!(mnt.wait_exit(10));
        drop(mnt);
        let again = MountGuard::new(&reg, &tmp.path().join(format!("again-{i}")), &[]);
        match name {
            "new.safetensors" => assert!(!again.dir.join(name).exists(), "a partial new file is visible"),
            _ => {
                let now = std::fs::read(again.dir.join(name)).unwrap();
                let same = now.iter().zip(old.iter()).take_while(|(a, b)| a == b).count();
                if kill_at == usize::MAX && now == *plain {
                    eprintln!("the commit finished before the kill: the new version is whole");
                    continue;
                }
                assert!(
                    now == old,
                    "the old version is not intact: {} bytes, first {same} equal\n{}",
                    now.len(),
                    again.log_text()
                );
            }
        }
    }
}

#[test]
fn one_gib_safetensors_cp_streams_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("model.safetensors");
    std::fs::write(&src, safetensors_bytes(300, 1 << 30)).unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let st = Command::new("cp")
        .args([s(&src), s(&mnt.dir.join("model.safetensors"))])
        .status()
        .unwrap();
    assert!(st.success());
    let hwm_kib = proc_status_bytes(&mnt.pid().to_string(), "VmHWM").unwrap() / 1024;
    let stats = mnt.stats();
    assert_eq!(stats["staged_files"], 0, "a staging file was made: {stats}");
    assert!(hwm_kib < 256 * 1024, "daemon peak RSS {hwm_kib} KiB");
    eprintln!("1 GiB cp into the mount: daemon peak RSS {} MiB", hwm_kib / 1024);
    drop(mnt);
    let info = modelfs_ok(&["info", &format!("{reg}/model.safetensors")]);
    assert!(info.contains("tensors:    300"), "{info}");
    assert!(info.contains(&format!("size:       {} bytes", std::fs::metadata(&src).unwrap().len())));
}

#[test]
fn shell_redirection_into_a_safetensors_file_commits_the_whole_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    let src = tmp.path().join("src.safetensors");
    std::fs::write(&src, safetensors_bytes(12, 3 << 20)).unwrap();
    // The shell opens the file, moves it onto stdout and closes the first
    // descriptor before `cat` writes a byte.
    let dest = mnt.dir.join("r.safetensors");
    let cmd = format!("cat {} > {}", s(&src), s(&dest));
    assert!(Command::new("sh").args(["-c", &cmd]).status().unwrap().success());
    let dd = format!(
        "dd if={} of={} bs=1M status=none",
        s(&src),
        s(&mnt.dir.join("d.safetensors"))
    );
    assert!(Command::new("sh").args(["-c", &dd]).status().unwrap().success());
    drop(mnt);
    let out = tmp.path().join("out");
    modelfs_ok(&["export", &format!("{reg}/r.safetensors"), s(&out)]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap());
    let out = tmp.path().join("out-dd");
    modelfs_ok(&["export", &format!("{reg}/d.safetensors"), s(&out)]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap());
}

#[test]
fn a_new_file_never_touches_an_unlinked_array_at_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, mnt) = mounted(tmp.path(), &[]);
    // Another mount's write in progress (or a crashed one): an array where
    // the new name would be stored, not yet a member.
    let ctx = Context::new().unwrap();
    let registry = Registry::new(ctx.clone()).unwrap();
    let other = registry.create_file_at("x.bin", &format!("{reg}/x.bin")).unwrap();
    let mut w = file_array::FileWriter::begin(&ctx, &other.uri, "x.bin", 5).unwrap();
    w.write(b"other").unwrap();
    std::fs::write(mnt.dir.join("x.bin"), b"mine").unwrap();
    assert_eq!(std::fs::read(mnt.dir.join("x.bin")).unwrap(), b"mine");
    // The other writer's array is still there and still commits.
    w.commit(&file_array::FileKind::Plain).unwrap();
    let meta = file_array::read_meta(&ctx, &other.uri).unwrap();
    let mut buf = vec![0u8; 5];
    FileArray::open_version(&ctx, &other.uri, meta)
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(buf, b"other");
}

#[test]
fn another_descriptor_reads_what_this_mount_has_written_so_far() {
    // As on a local file system: `git index-pack` writes a pack through one
    // descriptor and reads it back through others before closing it.
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, mnt) = mounted(tmp.path(), &[]);
    let path = mnt.dir.join("pack");
    let mut w = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let first = pseudo_random(1, 100_000);
    w.write_all(&first).unwrap();
    let r = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; first.len()];
    r.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, first, "a new file, before its first close");
    // Past the in-memory limit, in a staging file.
    let more = pseudo_random(2, 9 << 20);
    w.write_all(&more).unwrap();
    let mut tail = vec![0u8; 4096];
    r.read_exact_at(&mut tail, (first.len() + more.len() - 4096) as u64)
        .unwrap();
    assert_eq!(tail, more[more.len() - 4096..]);
    drop(w);
    // The writer closed (committed): the same descriptor reads the version.
    r.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, first, "after the close");
    drop(r);

    // An existing file rewritten: what is written, not the old bytes.
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mnt.dir.join("seed.txt"))
        .unwrap();
    w.write_all(b"rewritten").unwrap();
    assert_eq!(std::fs::read(mnt.dir.join("seed.txt")).unwrap(), b"rewritten");
    drop(w);
    assert_eq!(std::fs::read(mnt.dir.join("seed.txt")).unwrap(), b"rewritten");

    // A `.safetensors` file streamed into storage keeps nothing to read
    // back: a reader sees the committed version until the close.
    let st = safetensors_bytes(4, 1 << 20);
    std::fs::write(mnt.dir.join("m.safetensors"), &st).unwrap();
    let mut w = std::fs::File::create(mnt.dir.join("m.safetensors")).unwrap();
    let new = safetensors_bytes(4, 2 << 20);
    w.write_all(&new[..new.len() / 2]).unwrap();
    assert_eq!(std::fs::read(mnt.dir.join("m.safetensors")).unwrap()[..64], st[..64]);
    w.write_all(&new[new.len() / 2..]).unwrap();
    drop(w);
    assert_eq!(std::fs::read(mnt.dir.join("m.safetensors")).unwrap(), new);

    // A new file unlinked before its first close: its bytes have no other
    // copy, and a reader opened beside the writer reads them on after the
    // writer's close (it read nothing there).
    let path = mnt.dir.join("scratch");
    let mut w = std::fs::File::create_new(&path).unwrap();
    w.write_all(&first).unwrap();
    let r = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    drop(w);
    r.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, first, "an unlinked new file after its writer's close");
}

#[test]
fn a_reader_follows_a_shell_redirection_while_it_runs() {
    // `cmd > log`: the shell opens the file, hands the descriptor to the
    // command as a copy and closes its own (a flush, not the end of the
    // writer); the command writes for a while. `tail -f` and friends read
    // along in the same mount.
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, mnt) = mounted(tmp.path(), &[]);
    let log = mnt.dir.join("train.log");
    let mut cmd = Command::new("sh")
        .arg("-c")
        .arg(format!("exec > {}; echo one; sleep 4; echo two; sleep 4", s(&log)))
        .spawn()
        .unwrap();
    // Within the command's sleeps (an object store's first commit takes a
    // moment), while it still runs.
    let shows = |want: &[u8], secs: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let got = std::fs::read(&log).unwrap_or_default();
            if got == want || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    assert_eq!(shows(b"one\n", 3), b"one\n");
    let reader = std::fs::File::open(&log).unwrap();
    assert!(cmd.try_wait().unwrap().is_none(), "the command ended early");
    assert_eq!(shows(b"one\ntwo\n", 7), b"one\ntwo\n");
    let mut buf = [0u8; 8];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"one\ntwo\n");
    assert!(cmd.try_wait().unwrap().is_none(), "the command ended early");
    assert!(cmd.wait().unwrap().success());
    assert_eq!(std::fs::read(&log).unwrap(), b"one\ntwo\n");
}

#[test]
fn processes_appending_to_one_new_log_lose_no_line() {
    // Workers of one job logging to one file with `>>`: each opens it with
    // O_CREAT|O_APPEND while the others have it open (the second used to
    // get EBUSY), or creates it at the same moment as another (which
    // truncated it: O_CREAT alone does not).
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, mnt) = mounted(tmp.path(), &[]);
    for round in 0..3 {
        let log = mnt.dir.join(format!("log{round}.txt"));
        run_at_once(
            &mnt,
            ["A", "B", "C"].map(|w| format!("for i in $(seq 100); do echo {w} $i; done >> {}", s(&log))),
        );
        let text = std::fs::read_to_string(&log).unwrap();
        for w in ["A", "B", "C"] {
            let n = text.lines().filter(|l| l.starts_with(w)).count();
            assert_eq!(n, 100, "round {round}: {n} lines of {w}:\n{text}");
        }
    }
}

#[test]
fn a_file_renames_right_after_its_close() {
    // The kernel sends a handle's release after close() has returned: a
    // rename right after must not find the file still being written
    // (EBUSY), for a new file (`touch a && mv a b`) or a rewritten one.
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, mnt) = mounted(tmp.path(), &[]);
    let (a, b) = (mnt.dir.join("a"), mnt.dir.join("b"));
    // Each round is five commits: fewer on an object store.
    let rounds: u32 = if on_s3() { 20 } else { 100 };
    for i in 0..rounds {
        std::fs::write(&a, i.to_le_bytes()).unwrap();
        std::fs::rename(&a, &b).unwrap_or_else(|e| panic!("rename {i} of a new file: {e}"));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&b)
            .unwrap()
            .write_all(b"again")
            .unwrap();
        std::fs::rename(&b, &a).unwrap_or_else(|e| panic!("rename {i} of a rewritten file: {e}"));
        std::fs::rename(&a, &b).unwrap();
    }
    assert_eq!(std::fs::read(&b).unwrap(), b"again");
}

#[test]
fn lines_appended_and_synced_while_the_log_is_renamed_are_all_kept() {
    // Log rotation racing the logger: lines written with O_APPEND and
    // fsync'd one by one while another thread renames the file back and
    // forth. A lookup that read the file's node from storage just before a
    // commit stored it in the inode after that commit, and answered with
    // its older size: the kernel took it for the file's end, and the next
    // append landed over the line just synced (lines lost, each write and
    // fsync having succeeded). In a group and in a plain folder.
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, group_mnt) = mounted(tmp.path(), &[]);
    let mut mounts = vec![group_mnt];
    if !on_s3() {
        let plain = registry_uri(&tmp.path().join("plain"));
        std::fs::create_dir_all(&plain).unwrap();
        mounts.push(MountGuard::new(&plain, &tmp.path().join("plain-mnt"), &[]));
    }
    let lines: usize = if on_s3() { 30 } else { 120 };
    for mnt in &mounts {
        let names = [mnt.dir.join("app.log"), mnt.dir.join("app.log.1")];
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&names[0])
            .unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renamer = {
            let (done, names) = (done.clone(), names.clone());
            std::thread::spawn(move || {
                let (mut at, mut renames) = (0, 0);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    // EBUSY while a line is written and not yet synced.
                    if std::fs::rename(&names[at], &names[1 - at]).is_ok() {
                        at = 1 - at;
                        renames += 1;
                    }
                }
                (names[at].clone(), renames)
            })
        };
        for i in 0..lines {
            log.write_all(format!("line {i}\n").as_bytes()).unwrap();
            log.sync_all().unwrap();
        }
        drop(log);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (at, renames) = renamer.join().unwrap();
        assert!(renames > 0, "{}: no rename raced the writer", mnt.dir.display());
        let want: String = (0..lines).map(|i| format!("line {i}\n")).collect();
        let got = std::fs::read_to_string(&at).unwrap();
        let missing: Vec<&str> = want.lines().filter(|l| !got.lines().any(|g| g == *l)).collect();
        assert!(got == want, "{}: lines lost: {missing:?}", mnt.dir.display());
    }
}
