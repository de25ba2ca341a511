//! Real FUSE mounts of registries made by `modelfs import`: listings, stat,
//! byte-exact reads (sequential, random, concurrent), end of file, the page
//! cache, bad entries, unmount and mount failures.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A registry holding one imported HF-style model; returns (source, registry).
fn registry_with_model(tmp: &Path, mib: usize) -> (PathBuf, String) {
    let model = make_hf_model(tmp, mib);
    std::fs::write(model.join("empty.bin"), b"").unwrap();
    std::fs::write(model.join("one-byte.bin"), b"z").unwrap();
    let reg = registry_uri(tmp);
    modelfs_ok(&["import", "--quiet", s(&model), &format!("{reg}/tiny-model")]);
    (model, reg)
}

#[test]
fn cp_r_stat_and_ls_match_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, reg) = registry_with_model(tmp.path(), 66);
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &["--read-only"]);

    let out = tmp.path().join("copy");
    let st = Command::new("cp")
        .args(["-r", s(&mnt.dir.join("tiny-model")), s(&out)])
        .status()
        .unwrap();
    assert!(st.success());
    assert_same_tree(&model, &out);

    let mut names: Vec<String> = std::fs::read_dir(mnt.dir.join("tiny-model"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    want.sort();
    assert_eq!(names, want);
    for (rel, bytes) in read_tree(&model) {
        let meta = std::fs::metadata(mnt.dir.join("tiny-model").join(&rel)).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.len(), bytes.len() as u64, "{}", rel.display());
        assert!(meta.permissions().readonly());
    }
    assert!(
        std::fs::metadata(mnt.dir.join("tiny-model/text_encoder"))
            .unwrap()
            .is_dir()
    );
    // The hidden counters file is not listed but readable.
    let root: Vec<_> = std::fs::read_dir(&mnt.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(root, ["tiny-model"]);
    assert!(mnt.stats()["bytes_served"].as_u64().unwrap() > 66 << 20);
    // Writes are refused on a read-only mount.
    let err = std::fs::write(mnt.dir.join("tiny-model/new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.dir.join("tiny-model/config.json"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

#[test]
fn random_reads_and_end_of_file_follow_posix() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, reg) = registry_with_model(tmp.path(), 64);
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &["--cache-size", "16M"]);
    let src = std::fs::read(model.join("model.safetensors")).unwrap();
    let f = std::fs::File::open(mnt.dir.join("tiny-model/model.safetensors")).unwrap();
    let size = src.len() as u64;
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..1000 {
        let off = next() % size;
        let len = (next() % (3 << 20)) as usize + 1;
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off).unwrap();
        let want = &src[off as usize..(off as usize + len).min(src.len())];
        assert_eq!(n, want.len(), "short read at {off}");
        assert!(&buf[..n] == want, "bytes differ at {off}+{len}");
    }
    let mut buf = vec![0u8; 100];
    assert_eq!(f.read_at(&mut buf, size - 10).unwrap(), 10);
    assert_eq!(&buf[..10], &src[src.len() - 10..]);
    assert_eq!(f.read_at(&mut buf, size).unwrap(), 0);
    assert_eq!(f.read_at(&mut buf, size + 12345).unwrap(), 0);
    let empty = std::fs::read(mnt.dir.join("tiny-model/empty.bin")).unwrap();
    assert!(empty.is_empty());
    assert_eq!(std::fs::read(mnt.dir.join("tiny-model/one-byte.bin")).unwrap(), b"z");
}

#[test]
fn eight_threads_read_several_files_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = tmp.path().join("src");
    std::fs::create_dir_all(&src_dir).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("part-{i}.bin"),
                pseudo_random(100 + i, (9 << 20) + i as usize * 77_777),
            )
        })
        .collect();
    for (name, data) in &files {
        std::fs::write(src_dir.join(name), data).unwrap();
    }
    let reg = registry_uri(tmp.path());
    modelfs_ok(&["import", "--quiet", s(&src_dir), &format!("{reg}/parts")]);
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &["--cache-size", "8M", "--threads", "4"]);
    let files = std::sync::Arc::new(files);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let files = files.clone();
            let dir = mnt.dir.join("parts");
            std::thread::spawn(move || {
                let mut x = t * 7919 + 1;
                for i in 0..150u64 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let (name, data) = &files[((t + i) % 3) as usize];
                    let f = std::fs::File::open(dir.join(name)).unwrap();
                    let off = (x >> 20) % data.len() as u64;
                    let len = ((x >> 7) % (512 << 10)) as usize + 1;
                    let mut buf = vec![0u8; len];
                    let n = f.read_at(&mut buf, off).unwrap();
                    let want = &data[off as usize..(off as usize + len).min(data.len())];
                    assert!(&buf[..n] == want, "thread {t}: {name} differs at {off}+{len}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn second_read_is_served_by_the_page_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, reg) = registry_with_model(tmp.path(), 8);
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &[]);
    let path = mnt.dir.join("tiny-model/model.safetensors");
    let want = std::fs::read(model.join("model.safetensors")).unwrap();
    assert!(std::fs::read(&path).unwrap() == want);
    let before = mnt.stats()["bytes_served"].as_u64().unwrap();
    assert!(std::fs::read(&path).unwrap() == want);
    let after = mnt.stats()["bytes_served"].as_u64().unwrap();
    // Only the stats file itself was read through FUSE in between.
    assert!(
        after - before < 4096,
        "second read went to the daemon: {before} -> {after}"
    );
}

#[test]
fn sequential_reads_are_prefetched_and_header_reads_stay_small() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, reg) = registry_with_model(tmp.path(), 64);
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &[]);
    let path = mnt.dir.join("tiny-model/model.safetensors");
    let f = std::fs::File::open(&path).unwrap();
    let mut head = [0u8; 8];
    f.read_exact_at(&mut head, 0).unwrap();
    let n = u64::from_le_bytes(head);
    let mut header = vec![0u8; n as usize];
    f.read_exact_at(&mut header, 8).unwrap();
    assert!(serde_json::from_slice::<serde_json::Value>(&header).is_ok());
    let asked = mnt.stats()["tiledb_bytes"].as_u64().unwrap();
    assert!(asked <= 2 << 20, "a header read asked TileDB for {asked} bytes");
    drop(f);
    std::fs::read(&path).unwrap();
    let stats = mnt.stats();
    assert!(stats["prefetch_chunks"].as_u64().unwrap() > 0, "{stats}");
}

#[test]
fn a_large_file_is_read_as_its_stored_tiles_through_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, reg) = registry_with_model(tmp.path(), 24);
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &[]);
    let path = mnt.dir.join("tiny-model/model.safetensors");
    let want = std::fs::read(model.join("model.safetensors")).unwrap();
    assert!(std::fs::read(&path).unwrap() == want);
    let stats = mnt.stats();
    let (stored, asked) = (
        stats["stored_tile_bytes"].as_u64().unwrap(),
        stats["tiledb_bytes"].as_u64().unwrap(),
    );
    // All but the header's reads and the last partial tile.
    assert!(stored >= 16 << 20 && stored * 4 >= asked * 3, "{stats}");
}

#[test]
fn a_reader_of_large_blocks_gets_the_whole_read_ahead_window_at_its_second_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, reg) = registry_with_model(tmp.path(), 64);
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &["--read-ahead", "32M"]);
    let f = std::fs::File::open(mnt.dir.join("tiny-model/model.safetensors")).unwrap();
    let mut block = vec![0u8; 1 << 20];
    f.read_exact_at(&mut block, 0).unwrap();
    f.read_exact_at(&mut block, 1 << 20).unwrap();
    // Doubling per read, two reads plan one chunk (256 KiB); the whole
    // window is about 30 MiB past the two reads.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let chunks = mnt.stats()["prefetch_chunks"].as_u64().unwrap();
        if chunks >= 100 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two 1 MiB reads read ahead {chunks} chunks"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn bad_entries_are_left_out_or_fail_with_eio_and_the_rest_serves() {
    let tmp = tempfile::tempdir().unwrap();
    // A plain directory as the registry root, as many TileDB-ML users have
    // (on an object store: a prefix holding objects), with a stray plain
    // file in it.
    let reg = registry_uri(tmp.path());
    let ctx = modelfs::tiledb::Context::new().unwrap();
    let vfs = modelfs::tiledb::Vfs::new(&ctx).unwrap();
    vfs.create_dir(&reg).unwrap();
    vfs.touch(&format!("{reg}/stray.txt")).unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("good.txt"), b"good bytes").unwrap();
    std::fs::write(src.join("broken.bin"), pseudo_random(5, 600_000)).unwrap();
    modelfs_ok(&["import", "--quiet", s(&src), &format!("{reg}/model")]);
    // An array that is not a file array beside it.
    let schema = modelfs::tiledb::Schema::dense(
        &ctx,
        &[modelfs::tiledb::DimensionSpec {
            name: "x".into(),
            lo: 0,
            hi: 99,
            extent: 10,
            filters: vec![],
        }],
        &[modelfs::tiledb::AttributeSpec {
            name: "v".into(),
            datatype: modelfs::tiledb::Datatype::FLOAT64,
            filters: vec![],
        }],
    )
    .unwrap();
    schema.create_array(&format!("{reg}/other-array")).unwrap();
    // The same kind of array as a member of the model's group.
    schema.create_array(&format!("{reg}/model/weird")).unwrap();
    let mut g = modelfs::tiledb::Group::open(&ctx, &format!("{reg}/model"), modelfs::tiledb::GroupMode::Write).unwrap();
    g.add_member("weird", true, "weird", modelfs::tiledb::ObjectType::Array)
        .unwrap();
    g.close().unwrap();
    // Corrupt broken.bin: delete its data files.
    for frag in vfs.ls(&format!("{reg}/model/broken.bin/__fragments")).unwrap() {
        vfs.remove_file(&format!("{}/a0.tdb", frag.trim_end_matches('/')))
            .unwrap();
    }
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &[]);
    let root: Vec<_> = std::fs::read_dir(&mnt.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(root, ["model"]);
    let err = std::fs::read(mnt.dir.join("model/broken.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(std::fs::read(mnt.dir.join("model/good.txt")).unwrap(), b"good bytes");
    let mut names: Vec<_> = std::fs::read_dir(mnt.dir.join("model"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["broken.bin", "good.txt"]);
    assert_eq!(
        std::fs::metadata(mnt.dir.join("model/weird"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    let log = mnt.log_text();
    assert!(log.contains("broken.bin"), "no log line names the broken file:\n{log}");
    assert!(log.contains("other-array"), "no log line names the other array:\n{log}");
    assert!(
        log.contains("model/weird"),
        "no log line names the member array:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn unmount_with_an_open_file_is_busy_unless_lazy() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, reg) = registry_with_model(tmp.path(), 2);
    let mut mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &[]);
    let f = std::fs::File::open(mnt.dir.join("tiny-model/config.json")).unwrap();
    let out = modelfs(&["unmount", s(&mnt.dir)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("busy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = std::time::Instant::now();
    modelfs_ok(&["unmount", "--lazy", s(&mnt.dir)]);
    assert!(start.elapsed().as_secs() < 5);
    // The open file keeps reading until it is closed; then the daemon exits.
    let mut buf = vec![0u8; 10];
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], &std::fs::read(model.join("config.json")).unwrap()[..n]);
    drop(f);
    assert!(mnt.wait_exit(10), "daemon still running after the last file closed");
}

#[test]
fn sigterm_unmounts_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, reg) = registry_with_model(tmp.path(), 1);
    let mut mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &[]);
    Command::new("kill")
        .args(["-TERM", &mnt.pid().to_string()])
        .status()
        .unwrap();
    assert!(mnt.wait_exit(10), "daemon did not exit on SIGTERM");
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounted.contains(s(&mnt.dir.canonicalize().unwrap())));
}

#[test]
fn background_mount_detaches_and_failures_exit_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, reg) = registry_with_model(tmp.path(), 1);
    let dir = tmp.path().join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    modelfs_ok(&["mount", &reg, s(&dir)]);
    let listing: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listing, ["tiny-model"]);
    modelfs_ok(&["unmount", s(&dir)]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);

    let missing = format!("{reg}-missing/no-registry");
    let out = modelfs(&["mount", &missing, s(&dir)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-registry") && err.contains("no such registry"), "{err}");

    std::fs::write(dir.join("file"), b"x").unwrap();
    let out = modelfs(&["mount", &reg, s(&dir)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    let out = modelfs(&["mount", &reg, s(&tmp.path().join("nowhere"))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
}

#[test]
fn a_read_ahead_over_half_the_chunk_cache_is_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let (_model, reg) = registry_with_model(tmp.path(), 1);
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    // 16M leaves an 8 MiB chunk cache beside the read-ahead queries (and
    // no disk cache, whose write buffers would take some).
    let out = modelfs(&[
        "mount",
        &reg,
        s(&dir),
        "--no-disk-cache",
        "--cache-size",
        "16M",
        "--read-ahead",
        "9M",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--read-ahead 9.0 MiB") && err.contains("--cache-size 16.0 MiB"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing mounted");
    // Within half of it, the same mount comes up and reads.
    let mnt = MountGuard::new(
        &reg,
        &dir,
        &[
            "--read-only",
            "--no-disk-cache",
            "--cache-size",
            "16M",
            "--read-ahead",
            "4M",
        ],
    );
    assert!(std::fs::read(mnt.dir.join("tiny-model/config.json")).is_ok());
}

/// TileDB's waits during reads sleep instead of spinning (`src/tiledb/wait.rs`)
/// only if the daemon's symbol lookups find the executable's `sched_yield`,
/// as libtiledb's calls do. Whether a given read naps depends on how long
/// its waits last (on a loaded machine a few real yields can outlast
/// them), so the naps are reported, not required.
#[test]
fn the_daemon_takes_sched_yield_from_its_own_executable() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, reg) = registry_with_model(tmp.path(), 32);
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &["--read-only"]);
    assert_eq!(mnt.stats()["yield_interposed"].as_u64(), Some(1));
    assert_eq!(mnt.stats()["yield_naps"].as_u64(), Some(0), "before any read");
    let name = "tiny-model/model.safetensors";
    let bytes = std::fs::read(mnt.dir.join(name)).unwrap();
    assert_eq!(bytes, std::fs::read(model.join("model.safetensors")).unwrap());
    eprintln!("naps in 32 MiB of reads: {}", mnt.stats()["yield_naps"]);
}

#[test]
fn listings_and_sizes_are_cached_for_the_metadata_ttl() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, reg) = registry_with_model(tmp.path(), 1);
    let mnt = MountGuard::new(&reg, &tmp.path().join("mnt"), &["--metadata-ttl", "3"]);
    let dir = mnt.dir.join("tiny-model");
    let ls_l = || {
        let out = Command::new("ls").args(["-l", s(&dir)]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let first = ls_l();
    let after_first = mnt.stats();
    assert!(
        after_first["registry_node_reads"].as_u64().unwrap() >= 5,
        "{after_first}"
    );
    // Within the TTL, listing and stat'ing again asks the registry nothing.
    assert_eq!(ls_l(), first);
    let after_second = mnt.stats();
    for key in ["registry_listings", "registry_node_reads"] {
        assert_eq!(
            after_second[key], after_first[key],
            "{key}: {after_first} -> {after_second}"
        );
    }
    // A file added by someone else shows once the TTL has passed.
    std::fs::write(tmp.path().join("late.txt"), b"late").unwrap();
    modelfs_ok(&[
        "import",
        s(&tmp.path().join("late.txt")),
        &format!("{reg}/tiny-model/late.txt"),
    ]);
    std::thread::sleep(std::time::Duration::from_millis(3200));
    assert!(ls_l().contains("late.txt"));
    assert_eq!(std::fs::read(dir.join("late.txt")).unwrap(), b"late");
}
