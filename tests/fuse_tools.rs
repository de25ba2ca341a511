//! Everyday tools into and out of a real read-write mount: `cp -a`,
//! `cp -rp`, `rsync -a` (again: nothing to do; after a source change: just
//! that), `tar cf` / `tar xpf`, a second `cp -a` / `tar xpf` over the copy,
//! `cp -a` and `rsync -a` back out. Each copy is checked in the writing mount
//! and after an unmount in a fresh mount: bytes, permission bits, owners and
//! mtimes of every file and directory, the copy's root included; and the
//! times the writing mount showed must be those it stored.
//!
//! Modification times are compared to the nanosecond for `cp` and `rsync`
//! into the mount: the source files carry sub-second times (as on ext4 or
//! xfs) and both tools set them with `utimensat`; modelfs keeps a time set
//! that way to the nanosecond. (The second is what the tools themselves
//! need: `rsync`'s quick check compares whole seconds, so a copy that lost
//! its seconds would be copied again by every later `rsync -a`.) The tar
//! copy is compared to the second: `tar cf`'s default (GNU) format stores
//! whole seconds.
//!
//! The registry is `registry_uri`, so `scripts/test_s3.sh` runs this file on
//! S3 too.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// How precisely a copy must keep modification times.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Precision {
    Nanos,
    Seconds,
}

/// What the tree comparison looks at for one file or directory.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    dir: bool,
    /// Permission bits, `mode & 0o7777`.
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    /// Not compared with the source (no tool can set it).
    ctime: (i64, i64),
}

/// Every file and directory under `root` (the root itself as ""), not
/// following symbolic links.
fn scan(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        assert!(
            m.is_dir() || m.is_file(),
            "{}: neither a file nor a directory ({:o})",
            p.display(),
            m.mode()
        );
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap_or_else(|e| panic!("readdir {}: {e}", p.display())) {
                stack.push(e.unwrap().path());
            }
        }
        out.insert(
            p.strip_prefix(root).unwrap().to_path_buf(),
            Entry {
                dir: m.is_dir(),
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if m.is_dir() { 0 } else { m.len() },
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            },
        );
    }
    out
}

/// A relative path as the messages show it, "(root)" for the root.
fn show_name(name: &Path) -> String {
    if name.as_os_str().is_empty() {
        "(root)".to_string()
    } else {
        name.display().to_string()
    }
}

fn show_time((sec, nsec): (i64, i64)) -> String {
    format!("{sec}.{nsec:09}")
}

/// How `copy` differs from `src`: files and directories missing or extra,
/// bytes, permission bits, owners and modification times (to `precision`);
/// empty when it is an exact copy. Each line is headed by `what`.
fn copy_diffs(what: &str, src: &Path, copy: &Path, precision: Precision) -> Vec<String> {
    let (a, b) = (scan(src), scan(copy));
    let mut diffs = Vec::new();
    for name in a.keys().filter(|k| !b.contains_key(*k)) {
        diffs.push(format!("{}: missing from the copy", show_name(name)));
    }
    for name in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("{}: in the copy only", show_name(name)));
    }
    for (name, x) in &a {
        let Some(y) = b.get(name) else { continue };
        let shown = show_name(name);
        if x.dir != y.dir {
            diffs.push(format!("{shown}: directory {} in the copy {}", x.dir, y.dir));
            continue;
        }
        if x.mode != y.mode {
            diffs.push(format!("{shown}: mode {:04o}, in the copy {:04o}", x.mode, y.mode));
        }
        if (x.uid, x.gid) != (y.uid, y.gid) {
            diffs.push(format!(
                "{shown}: owner {}:{}, in the copy {}:{}",
                x.uid, x.gid, y.uid, y.gid
            ));
        }
        let same_time = match precision {
            Precision::Nanos => x.mtime == y.mtime,
            Precision::Seconds => x.mtime.0 == y.mtime.0,
        };
        if !same_time {
            diffs.push(format!(
                "{shown}: mtime {}, in the copy {} (compared to the {})",
                show_time(x.mtime),
                show_time(y.mtime),
                if precision == Precision::Nanos {
                    "nanosecond"
                } else {
                    "second"
                }
            ));
        }
        if !x.dir {
            if x.size != y.size {
                diffs.push(format!("{shown}: {} bytes, in the copy {}", x.size, y.size));
            } else if std::fs::read(src.join(name)).unwrap() != std::fs::read(copy.join(name)).unwrap() {
                diffs.push(format!("{shown}: the bytes differ"));
            }
        }
    }
    diffs.into_iter().map(|d| format!("{what}: {d}")).collect()
}

/// Fails with every difference listed, unless `diffs` is empty.
fn assert_no_diffs(diffs: &[String]) {
    assert!(
        diffs.is_empty(),
        "{} differences from the source:\n  {}",
        diffs.len(),
        diffs.join("\n  ")
    );
}

fn assert_same_copy(what: &str, src: &Path, copy: &Path, precision: Precision) {
    assert_no_diffs(&copy_diffs(what, src, copy, precision));
}

/// Sets `path`'s access and modification times to `sec.nsec`.
fn set_time(path: &Path, sec: i64, nsec: i64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(sec as u64, nsec as u32);
    set_times(path, t, t);
}

/// An HF-style model directory `tmp/src`: configs, tokenizer, a 24 MiB
/// safetensors file, a 9 MiB ONNX file, an executable script, hidden and
/// empty files, nested folders and an empty one;
/// modes 0644, 0600 and 0755 (0750, 0700 and a setgid 2755, as in shared
/// model stores, for directories); every entry with its own old
/// modification time with a nanosecond part. Run as root (the tools then
/// copy owners too), one file and one directory belong to another user.
fn make_source(tmp: &Path) -> PathBuf {
    let src = tmp.join("src");
    let files: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "config.json",
            br#"{"architectures":["TinyForCausalLM"],"hidden_size":64,"num_hidden_layers":2}"#.to_vec(),
            0o644,
        ),
        (
            "generation_config.json",
            br#"{"bos_token_id":1,"eos_token_id":2,"max_new_tokens":64}"#.to_vec(),
            0o644,
        ),
        ("tokenizer.json", pseudo_random(11, 1_500_000), 0o644),
        (
            "tokenizer_config.json",
            br#"{"model_max_length":2048,"tokenizer_class":"PreTrainedTokenizerFast"}"#.to_vec(),
            0o600,
        ),
        ("model.safetensors", safetensors_bytes(64, 24 << 20), 0o644),
        (
            "convert.sh",
            b"#!/bin/sh\nset -e\necho converting \"$@\"\n".to_vec(),
            0o755,
        ),
        (
            ".gitattributes",
            b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n".to_vec(),
            0o644,
        ),
        // Past the 8 MiB held in memory and not safetensors: written
        // through a staging file.
        ("onnx/model.onnx", pseudo_random(12, 9 << 20), 0o644),
        ("onnx/config.json", br#"{"opset":17}"#.to_vec(), 0o644),
        ("checkpoints/step-1/optimizer.pt", pseudo_random(13, 1 << 20), 0o600),
        (
            "checkpoints/step-1/trainer_state.json",
            br#"{"global_step":1}"#.to_vec(),
            0o644,
        ),
        ("checkpoints/step-1/run.sh", b"#!/bin/sh\nexit 0\n".to_vec(), 0o755),
        // An empty marker file.
        ("checkpoints/step-1/.complete", Vec::new(), 0o644),
    ];
    // Deepest first and the root last, so each directory's time is set
    // after everything in it.
    let dirs: [(&str, u32); 5] = [
        ("checkpoints/step-1", 0o700),
        // Empty, as a trainer leaves the next checkpoint's folder.
        ("checkpoints/step-2", 0o755),
        ("checkpoints", 0o750),
        ("onnx", 0o2755),
        ("", 0o755),
    ];
    for (name, _, _) in &files {
        std::fs::create_dir_all(src.join(name).parent().unwrap()).unwrap();
    }
    for (name, _) in &dirs {
        std::fs::create_dir_all(src.join(name)).unwrap();
    }
    // Distinct times between 2020 and 2021, each with its own nanoseconds
    // (one a whole second).
    let mut n = 0i64;
    let mut next_time = || {
        n += 1;
        (
            1_577_836_800 + n * 1_234_567,
            if n == 3 { 0 } else { (n * 123_456_789) % 1_000_000_000 },
        )
    };
    for (name, bytes, mode) in &files {
        let p = src.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        let (sec, nsec) = next_time();
        set_time(&p, sec, nsec);
    }
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } == 0 {
        for name in ["onnx", "checkpoints/step-1/optimizer.pt"] {
            std::os::unix::fs::chown(src.join(name), Some(1000), Some(1000)).unwrap();
        }
    }
    for (name, mode) in dirs {
        let p = src.join(name);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let (sec, nsec) = next_time();
        set_time(&p, sec, nsec);
    }
    src
}

/// Runs a tool (under `timeout`, so a hung filesystem fails the test instead
/// of hanging it) and returns its output.
fn tool(args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .args(["-k", "10", "120"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert_ne!(
        out.status.code(),
        Some(127),
        "{} is not installed (scripts/setup.sh installs it)",
        args[0]
    );
    assert_ne!(out.status.code(), Some(124), "{args:?} timed out");
    out
}

/// Runs a tool and requires exit status 0, showing its output and the
/// mount's log otherwise.
fn tool_ok(args: &[&str], mnt: &MountGuard) -> String {
    let out = tool(args);
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{}{}\nmount log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        mnt.log_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A registry holding one file (so it exists), for fresh mounts.
fn new_registry(tmp: &Path) -> String {
    let reg = registry_uri(tmp);
    std::fs::write(tmp.join("seed.txt"), b"seed").unwrap();
    modelfs_ok(&["import", s(&tmp.join("seed.txt")), &format!("{reg}/seed.txt")]);
    reg
}

/// Entries whose mtime or ctime differ between what the writing mount
/// showed and what a later mount reads, with no change in between.
fn unstable_times(shown: &BTreeMap<PathBuf, Entry>, stored: &BTreeMap<PathBuf, Entry>) -> Vec<String> {
    let mut diffs = Vec::new();
    for (name, a) in shown {
        let Some(b) = stored.get(name) else { continue };
        for (what, x, y) in [("mtime", a.mtime, b.mtime), ("ctime", a.ctime, b.ctime)] {
            if x != y {
                diffs.push(format!(
                    "{}: {what} {} in the writing mount, {} after a remount (no change in between)",
                    show_name(name),
                    show_time(x),
                    show_time(y)
                ));
            }
        }
    }
    diffs
}

/// Copies `src` into a fresh read-write mount with `copy` (given the mount)
/// and checks the copy at `name` there, then after an unmount in a fresh
/// mount of the same registry; returns the registry and that mount.
fn copy_in_and_remount(
    tmp: &Path,
    src: &Path,
    name: &str,
    precision: Precision,
    copy: impl FnOnce(&MountGuard),
) -> (String, MountGuard) {
    let reg = new_registry(tmp);
    let (mut diffs, shown);
    {
        // A long metadata TTL keeps every attribute the mount answered with
        // in the kernel's cache, so what `stat` shows here is what the
        // mount replied, to compare with what it stored (below): they must
        // agree (`tar cf` fails with "file changed as we read it" when a
        // file's ctime moves while it reads).
        let mnt = MountGuard::new(&reg, &tmp.join("mnt"), &["--metadata-ttl", "60"]);
        copy(&mnt);
        shown = scan(&mnt.dir.join(name));
        diffs = copy_diffs("in the writing mount", src, &mnt.dir.join(name), precision);
    }
    let mnt = MountGuard::new(&reg, &tmp.join("mnt-again"), &[]);
    diffs.extend(copy_diffs("after a remount", src, &mnt.dir.join(name), precision));
    diffs.extend(unstable_times(&shown, &scan(&mnt.dir.join(name))));
    assert_no_diffs(&diffs);
    (reg, mnt)
}

#[test]
fn cp_a_into_the_mount_and_back_out() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path());
    let (reg, mnt) = copy_in_and_remount(tmp.path(), &src, "a", Precision::Nanos, |mnt| {
        tool_ok(&["cp", "-a", s(&src), s(&mnt.dir.join("a"))], mnt);
    });
    // Again over part of the copy (the small files; the big ones would only
    // cost time on S3): each file is opened with O_TRUNC and its times,
    // mode and owner set again, and its directories' too.
    let part = "checkpoints";
    tool_ok(
        &[
            "cp",
            "-a",
            &format!("{}/.", s(&src.join(part))),
            s(&mnt.dir.join("a").join(part)),
        ],
        &mnt,
    );
    assert_same_copy("cp -a again", &src, &mnt.dir.join("a"), Precision::Nanos);
    // And out of the mount to the local disk.
    let out = tmp.path().join("out");
    tool_ok(&["cp", "-a", s(&mnt.dir.join("a")), s(&out)], &mnt);
    assert_same_copy("cp -a out of the mount", &src, &out, Precision::Nanos);

    // A later plain write (no times set) gives the file a new mtime, now,
    // and keeps its mode and owner; else `rsync` and `make` would take the
    // changed file for the old one.
    let name = "checkpoints/step-1/optimizer.pt";
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    std::fs::write(mnt.dir.join("a").join(name), b"step 2").unwrap();
    let old = &scan(&src)[Path::new(name)];
    let check = |mnt: &MountGuard, when: &str| {
        let now = &scan(&mnt.dir.join("a"))[Path::new(name)];
        assert!(
            now.mtime.0 >= before && now.mtime.0 <= before + 60,
            "{when}: {name} rewritten at {before} shows mtime {}",
            show_time(now.mtime)
        );
        assert_eq!(
            (now.mode, now.uid, now.gid, now.size),
            (old.mode, old.uid, old.gid, 6),
            "{when}: {name} rewritten: mode, owner or size"
        );
    };
    check(&mnt, "in the writing mount");
    drop(mnt);
    check(
        &MountGuard::new(&reg, &tmp.path().join("mnt-3"), &[]),
        "after a remount",
    );
}

#[test]
fn cp_rp_into_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path());
    copy_in_and_remount(tmp.path(), &src, "p", Precision::Nanos, |mnt| {
        tool_ok(&["cp", "-rp", s(&src), s(&mnt.dir.join("p"))], mnt);
    });
}

#[test]
fn rsync_a_into_the_mount_then_again_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path());
    let from = format!("{}/", s(&src));
    let (_, mnt) = copy_in_and_remount(tmp.path(), &src, "r", Precision::Nanos, |mnt| {
        tool_ok(&["rsync", "-a", &from, &format!("{}/", s(&mnt.dir.join("r")))], mnt);
    });
    let to = format!("{}/", s(&mnt.dir.join("r")));
    let itemized = tool_ok(&["rsync", "-a", "--itemize-changes", &from, &to], &mnt);
    assert_eq!(itemized, "", "the second rsync found changes");
    let stats = mnt.stats();
    assert_eq!(
        (&stats["commits"], &stats["bytes_written"]),
        (&0.into(), &0.into()),
        "the second rsync wrote: {stats}"
    );
    assert_same_copy("rsync -a, then again", &src, &mnt.dir.join("r"), Precision::Nanos);

    // The source changes: new bytes and time for one file (same size, so
    // only the time tells rsync), a new mode for another. rsync sends the
    // first through a temporary file renamed over the old one and chmods
    // the second in place; then the copy matches again and a further run
    // finds nothing.
    let changed = src.join("generation_config.json");
    let mut bytes = std::fs::read(&changed).unwrap();
    bytes[2] = b'B';
    std::fs::write(&changed, &bytes).unwrap();
    set_time(&changed, 1_700_000_000, 987_654_321);
    std::fs::set_permissions(src.join("convert.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let itemized = tool_ok(&["rsync", "-a", "--itemize-changes", &from, &to], &mnt);
    let names: Vec<&str> = itemized.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    assert_eq!(
        names,
        ["convert.sh", "generation_config.json"],
        "rsync after a change:\n{itemized}"
    );
    assert_same_copy("rsync -a after a change", &src, &mnt.dir.join("r"), Precision::Nanos);
    let itemized = tool_ok(&["rsync", "-a", "--itemize-changes", &from, &to], &mnt);
    assert_eq!(itemized, "", "rsync found changes again");
}

#[test]
fn tar_into_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path());
    let archive = tmp.path().join("src.tar");
    let out = tool(&["tar", "cf", s(&archive), "-C", s(&src), "."]);
    assert!(out.status.success(), "tar cf: {}", String::from_utf8_lossy(&out.stderr));
    let extract = |mnt: &MountGuard, members: &[&str]| {
        let dest = mnt.dir.join("t");
        let mut args = vec!["tar", "xpf", s(&archive), "-C", s(&dest)];
        args.extend(members);
        tool_ok(&args, mnt);
    };
    let (_, mnt) = copy_in_and_remount(tmp.path(), &src, "t", Precision::Seconds, |mnt| {
        std::fs::create_dir(mnt.dir.join("t")).unwrap();
        extract(mnt, &[]);
    });
    // Again over part of the copy (the small files): tar unlinks each
    // existing file and creates it anew.
    extract(&mnt, &["./checkpoints"]);
    assert_same_copy("tar xpf again", &src, &mnt.dir.join("t"), Precision::Seconds);
}

#[test]
fn rsync_a_out_of_the_mount_again_from_a_fresh_mount_changes_nothing() {
    // A tree written with no attributes set (`cp -r`: directories made by
    // mkdir, files stamped by their commits) is backed up out of the mount
    // with `rsync -a`, then again through a fresh mount: the mount must
    // show the times it stored, so the second run has nothing to do.
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path());
    let reg = new_registry(tmp.path());
    let backup = tmp.path().join("backup");
    let to = format!("{}/", s(&backup));
    {
        let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &[]);
        // The small files only: the directories are what this is about.
        tool_ok(&["cp", "-r", s(&src.join("checkpoints")), s(&mnt.dir.join("m"))], &mnt);
        tool_ok(&["rsync", "-a", &format!("{}/", s(&mnt.dir.join("m"))), &to], &mnt);
    }
    // rsync compares whole seconds: a time made up anew by each mount
    // would show in the next second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt-again"), &[]);
    let from = format!("{}/", s(&mnt.dir.join("m")));
    let itemized = tool_ok(&["rsync", "-a", "--itemize-changes", &from, &to], &mnt);
    let mut diffs = Vec::new();
    if !itemized.is_empty() {
        diffs.push(format!("the second rsync -a out of the mount changed:\n{itemized}"));
    }
    // To the second: rsync leaves a directory's time alone when it is
    // already right to the second (here: the backup's directories were
    // made within the second the mount's were changed).
    diffs.extend(copy_diffs(
        "rsync -a out of the mount",
        &mnt.dir.join("m"),
        &backup,
        Precision::Seconds,
    ));
    assert_no_diffs(&diffs);
}

#[test]
fn git_clone_into_the_mount_then_commit() {
    // `git clone` writes the pack it receives and reads it back through
    // other descriptors before closing it (index-pack); then lock files,
    // renames, and a work tree.
    let tmp = tempfile::tempdir().unwrap();
    let src = make_source(tmp.path());
    let git = |dir: &Path, args: &[&str]| -> Output {
        let mut all = vec!["git", "-C", s(dir), "-c", "user.name=t", "-c", "user.email=t@t"];
        all.extend(args);
        tool(&all)
    };
    for args in [&["init", "-q"][..], &["add", "-A"], &["commit", "-qm", "first"]] {
        let out = git(&src, args);
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reg = new_registry(tmp.path());
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &[]);
    let clone = mnt.dir.join("clone");
    tool_ok(&["git", "clone", "-q", "--no-local", s(&src), s(&clone)], &mnt);
    tool_ok(&["git", "-C", s(&clone), "fsck", "--strict"], &mnt);
    std::fs::write(clone.join("new.txt"), b"new").unwrap();
    for args in [&["add", "new.txt"][..], &["commit", "-qm", "second"]] {
        let out = git(&clone, args);
        assert!(
            out.status.success(),
            "git {args:?}: {}\nmount log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            mnt.log_text()
        );
    }
    let log = tool_ok(&["git", "-C", s(&clone), "log", "--format=%s"], &mnt);
    assert_eq!(log, "second\nfirst\n");
    drop(mnt);
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &[]);
    let clone = mnt.dir.join("clone");
    tool_ok(&["git", "-C", s(&clone), "fsck", "--strict"], &mnt);
    let status = tool_ok(&["git", "-C", s(&clone), "status", "--porcelain"], &mnt);
    assert_eq!(status, "", "a fresh mount shows the work tree changed");
}
