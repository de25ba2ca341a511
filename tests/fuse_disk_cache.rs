//! The disk cache and FUSE passthrough through real mounts of real TileDB
//! registries (issue 14): versions kept across remounts and shared by
//! mounts, never a stale one, damaged files fetched again, the size limit
//! held, passthrough used when it can be and the daemon serving otherwise.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{MountGuard, modelfs_ok, pseudo_random, registry_uri};

/// A registry holding `files` (name, bytes), imported with the CLI.
fn registry(tmp: &Path, files: &[(&str, &[u8])]) -> String {
    let reg = registry_uri(tmp);
    for (name, bytes) in files {
        let src = tmp.join(format!("src-{name}"));
        std::fs::write(&src, bytes).unwrap();
        modelfs_ok(&["import", src.to_str().unwrap(), &format!("{reg}/{name}")]);
    }
    reg
}

fn mount(reg: &str, at: &Path, cache: &Path, extra: &[&str]) -> MountGuard {
    let mut args = vec!["--disk-cache", cache.to_str().unwrap(), "--metadata-ttl", "0.2"];
    args.extend_from_slice(extra);
    MountGuard::new(reg, at, &args)
}

fn counter(m: &MountGuard, name: &str) -> u64 {
    m.stats()[name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
}

/// Waits until counter `name` reaches `at_least` (entries are committed on
/// a thread of their own, after the read that completed them).
fn wait_counter(m: &MountGuard, name: &str, at_least: u64) {
    let start = Instant::now();
    while counter(m, name) < at_least {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} stayed below {at_least}: {}\n{}",
            m.stats(),
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The cache's files named `*.{ext}`.
fn cache_files(cache: &Path, ext: &str) -> Vec<PathBuf> {
    let Ok(items) = std::fs::read_dir(cache.join("v1")) else {
        return Vec::new();
    };
    items
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect()
}

/// Waits until no entry is being written in the cache (no `*.part`).
fn wait_parts_done(cache: &Path) {
    let start = Instant::now();
    loop {
        let parts = cache_files(cache, "part");
        if parts.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still being written: {parts:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The cache's entry files (`*.data`) with their sizes.
fn entries(cache: &Path) -> Vec<(PathBuf, u64)> {
    cache_files(cache, "data")
        .into_iter()
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}

/// Bytes the cache holds or has reserved: entries plus parts being written
/// (a part's declared size is the last field of its name).
fn cache_bytes(cache: &Path) -> u64 {
    let Ok(items) = std::fs::read_dir(cache.join("v1")) else {
        return 0;
    };
    let mut total = 0;
    for item in items {
        let p = item.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(stem) = name.strip_suffix(".part") {
            total += stem.rsplit('.').next().unwrap().parse::<u64>().unwrap();
        } else if name.ends_with(".data") {
            total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

#[test]
fn a_second_mount_reads_a_cached_version_from_disk_through_passthrough() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pseudo_random(1, 5 << 20);
    let reg = registry(tmp.path(), &[("model.bin", &data)]);
    let cache = tmp.path().join("cache");
    {
        let a = mount(&reg, &tmp.path().join("a"), &cache, &[]);
        assert_eq!(std::fs::read(a.dir.join("model.bin")).unwrap(), data);
        wait_counter(&a, "disk_cache_fills", 1);
        assert_eq!(counter(&a, "disk_cache_fill_bytes"), data.len() as u64);
        // The same mount now passes the file through.
        assert_eq!(std::fs::read(a.dir.join("model.bin")).unwrap(), data);
        assert_eq!(counter(&a, "passthrough_opens"), 1, "{}", a.stats());
    }
    let b = mount(&reg, &tmp.path().join("b"), &cache, &[]);
    let before = b.stats();
    assert_eq!(std::fs::read(b.dir.join("model.bin")).unwrap(), data);
    let after = b.stats();
    assert_eq!(after["disk_cache_hits"], 1, "{after}");
    assert_eq!(after["passthrough_opens"], 1, "{after}");
    // Not a byte from storage, nor through the daemon.
    assert_eq!(after["tiledb_bytes"], 0, "{after}");
    // (only the stats file itself was read through the daemon)
    let served = after["bytes_served"].as_u64().unwrap() - before["bytes_served"].as_u64().unwrap();
    assert!(served < 4096, "{after}");
    // mmap goes to the cache file as well.
    let sum = mmap_sum(&b.dir.join("model.bin"));
    assert_eq!(sum, data.iter().map(|b| *b as u64).sum::<u64>());
    assert_eq!(counter(&b, "passthrough_opens"), 2);
}

/// The sum of a file's bytes read through a shared read-only mapping
/// (Python's mmap, which keeps the test free of unsafe code).
fn mmap_sum(path: &Path) -> u64 {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let out = std::process::Command::new(py)
        .args([
            "-c",
            "import mmap,sys\nf=open(sys.argv[1],'rb')\nm=mmap.mmap(f.fileno(),0,access=mmap.ACCESS_READ)\nprint(sum(m[:]))",
        ])
        .arg(path)
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    text.parse()
        .unwrap_or_else(|_| panic!("mmap sum: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_version_written_through_the_mount_is_kept_at_its_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry(tmp.path(), &[("seed.txt", b"seed")]);
    let cache = tmp.path().join("cache");
    let data = pseudo_random(2, 3 << 20);
    {
        let a = mount(&reg, &tmp.path().join("a"), &cache, &[]);
        std::fs::write(a.dir.join("written.bin"), &data).unwrap();
        wait_counter(&a, "disk_cache_fills", 1);
    }
    let b = mount(&reg, &tmp.path().join("b"), &cache, &[]);
    assert_eq!(std::fs::read(b.dir.join("written.bin")).unwrap(), data);
    let s = b.stats();
    assert_eq!(s["tiledb_bytes"], 0, "{s}");
    assert_eq!(s["disk_cache_hits"], 1, "{s}");
}

#[test]
fn a_stale_version_is_never_served_after_an_overwrite_from_another_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = pseudo_random(3, 2 << 20);
    // Same size: only the version's timestamp tells them apart.
    let v2 = pseudo_random(4, 2 << 20);
    let reg = registry(tmp.path(), &[("model.bin", &v1)]);
    let cache = tmp.path().join("cache");
    let a = mount(&reg, &tmp.path().join("a"), &cache, &[]);
    assert_eq!(std::fs::read(a.dir.join("model.bin")).unwrap(), v1);
    wait_counter(&a, "disk_cache_fills", 1);
    // A reader keeps v1 open, passed through to its cache file.
    let mut old = std::fs::File::open(a.dir.join("model.bin")).unwrap();
    assert_eq!(counter(&a, "passthrough_opens"), 1);
    // Another mount, sharing the cache, writes v2; a third (no cache)
    // writes v3 of yet another size, so v2 must not linger either.
    let b = mount(&reg, &tmp.path().join("b"), &cache, &[]);
    std::fs::write(b.dir.join("model.bin"), &v2).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        std::fs::read(a.dir.join("model.bin")).unwrap(),
        v2,
        "mount a after b's overwrite"
    );
    let v3 = pseudo_random(5, (2 << 20) + 3);
    {
        let c = MountGuard::new(
            &reg,
            &tmp.path().join("c"),
            &["--no-disk-cache", "--metadata-ttl", "0.2"],
        );
        std::fs::write(c.dir.join("model.bin"), &v3).unwrap();
    }
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        std::fs::read(a.dir.join("model.bin")).unwrap(),
        v3,
        "mount a after c's overwrite"
    );
    assert_eq!(
        std::fs::read(b.dir.join("model.bin")).unwrap(),
        v3,
        "mount b after c's overwrite"
    );
    // The handle opened on v1 still reads v1, all of it.
    let mut buf = Vec::new();
    old.seek(SeekFrom::Start(0)).unwrap();
    old.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, v1, "the handle opened on v1");
    drop(old);
    // A fresh mount on the shared cache reads the newest version.
    let d = mount(&reg, &tmp.path().join("d"), &cache, &[]);
    assert_eq!(std::fs::read(d.dir.join("model.bin")).unwrap(), v3);
}

#[test]
fn a_damaged_cache_file_is_detected_and_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pseudo_random(6, 3 << 20);
    let reg = registry(tmp.path(), &[("model.bin", &data)]);
    let cache = tmp.path().join("cache");
    {
        let a = mount(&reg, &tmp.path().join("a"), &cache, &[]);
        assert_eq!(std::fs::read(a.dir.join("model.bin")).unwrap(), data);
        wait_counter(&a, "disk_cache_fills", 1);
    }
    let found = entries(&cache);
    assert_eq!(found.len(), 1);
    // One byte flipped in place (same size).
    std::thread::sleep(Duration::from_millis(20));
    let f = std::fs::OpenOptions::new().write(true).open(&found[0].0).unwrap();
    f.write_all_at(&[data[12345] ^ 0xff], 12345).unwrap();
    drop(f);
    {
        let b = mount(&reg, &tmp.path().join("b"), &cache, &[]);
        assert_eq!(std::fs::read(b.dir.join("model.bin")).unwrap(), data);
        let s = b.stats();
        assert_eq!(s["disk_cache_damaged"], 1, "{s}");
        assert_eq!(s["disk_cache_hits"], 0, "{s}");
        assert_eq!(s["tiledb_bytes"], data.len() as u64, "{s}");
        assert!(b.log_text().contains("damaged"), "{}", b.log_text());
        // Kept again, whole.
        wait_counter(&b, "disk_cache_fills", 1);
    }
    // Cut short.
    let found = entries(&cache);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&found[0].0)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let c = mount(&reg, &tmp.path().join("c"), &cache, &[]);
    assert_eq!(std::fs::read(c.dir.join("model.bin")).unwrap(), data);
    assert_eq!(counter(&c, "disk_cache_damaged"), 1);
}

#[test]
fn the_size_limit_holds_under_a_workload_larger_than_it() {
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            (
                format!("f{i}.bin"),
                pseudo_random(100 + i, (1 << 20) + i as usize * 1000),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let reg = registry(tmp.path(), &refs);
    let cache = tmp.path().join("cache");
    let limit: u64 = 3 << 20;
    let a = mount(&reg, &tmp.path().join("a"), &cache, &["--disk-cache-size", "3M"]);
    for round in 0..2 {
        for (name, bytes) in &files {
            assert_eq!(
                &std::fs::read(a.dir.join(name)).unwrap(),
                bytes,
                "{name}, round {round}"
            );
            let held = cache_bytes(&cache);
            assert!(held <= limit, "the cache holds {held} bytes, over its {limit}");
            // Each file's entry is committed (synced: seconds on a disk
            // busy writing back a build) before the next read asks for
            // room: beside parts still being written there is none, and
            // that file would go uncached.
            wait_parts_done(&cache);
        }
    }
    wait_counter(&a, "disk_cache_evictions", 1);
    assert!(entries(&cache).len() <= 2, "{:?}", entries(&cache));
    // A file larger than the whole cache is read, and not kept.
    drop(a);
    let big = pseudo_random(7, (3 << 20) + 1);
    let src = tmp.path().join("src-big.bin");
    std::fs::write(&src, &big).unwrap();
    modelfs_ok(&["import", src.to_str().unwrap(), &format!("{reg}/big.bin")]);
    let b = mount(&reg, &tmp.path().join("b"), &cache, &["--disk-cache-size", "3M"]);
    assert_eq!(std::fs::read(b.dir.join("big.bin")).unwrap(), big);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(&b, "disk_cache_fills"), 0);
    assert!(cache_bytes(&cache) <= limit);
}

#[test]
fn a_version_another_mount_was_filling_is_read_from_its_entry_once_that_is_done() {
    let tmp = tempfile::tempdir().unwrap();
    // Larger than what an entry leaves to be completed at the end, so b's
    // entry stays unfinished until b reads nearly all of it.
    let gap = modelfs::fs::disk_cache::FILL_GAP_BYTES as usize;
    let start = modelfs::fs::disk_cache::FILL_START_BYTES as usize;
    let data = pseudo_random(9, gap + (32 << 20));
    let reg = registry(tmp.path(), &[("model.bin", &data)]);
    let cache = tmp.path().join("cache");
    // Without passthrough, so reads reach the daemons.
    let a = mount(&reg, &tmp.path().join("a"), &cache, &["--no-passthrough"]);
    let b = mount(&reg, &tmp.path().join("b"), &cache, &["--no-passthrough"]);
    // Small reads, far apart: no read-ahead, each one a read of its own.
    let read = |f: &std::fs::File, at: usize| {
        let mut block = vec![0u8; 4096];
        f.read_exact_at(&mut block, at as u64).unwrap();
        assert!(block == data[at..at + 4096], "bytes at {at}");
    };
    // b starts the version's entry (reading past where entries start)
    // and leaves it unfinished.
    let fb = std::fs::File::open(b.dir.join("model.bin")).unwrap();
    read(&fb, start + 4096);
    // a finds it being filled: no entry of its own.
    let fa = std::fs::File::open(a.dir.join("model.bin")).unwrap();
    read(&fa, start + (1 << 20));
    // b reads the rest, and commits the entry.
    let mut all = vec![0u8; data.len()];
    fb.read_exact_at(&mut all, 0).unwrap();
    assert!(all == data);
    wait_counter(&b, "disk_cache_fills", 1);
    assert_eq!(counter(&a, "disk_cache_read_bytes"), 0);
    // Past the retry delay, a's next read finds the entry, and the one
    // after reads from it (before: a never looked again).
    std::thread::sleep(Duration::from_millis(1100));
    read(&fa, start + (8 << 20));
    read(&fa, data.len() - 4096);
    assert!(counter(&a, "disk_cache_read_bytes") >= 4096, "{}", a.stats());
    assert_eq!(counter(&a, "disk_cache_fills"), 0, "{}", a.stats());
}

#[test]
fn without_passthrough_the_daemon_serves_the_cache_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pseudo_random(8, 3 << 20);
    let reg = registry(tmp.path(), &[("model.bin", &data)]);
    let cache = tmp.path().join("cache");
    {
        let a = mount(&reg, &tmp.path().join("a"), &cache, &["--no-passthrough"]);
        assert_eq!(std::fs::read(a.dir.join("model.bin")).unwrap(), data);
        wait_counter(&a, "disk_cache_fills", 1);
        assert_eq!(counter(&a, "passthrough_opens"), 0);
    }
    let b = mount(&reg, &tmp.path().join("b"), &cache, &["--no-passthrough"]);
    assert_eq!(std::fs::read(b.dir.join("model.bin")).unwrap(), data);
    let s = b.stats();
    assert_eq!(s["passthrough_opens"], 0, "{s}");
    assert_eq!(s["passthrough_fallbacks"], 1, "{s}");
    assert_eq!(s["tiledb_bytes"], 0, "{s}");
    assert!(s["disk_cache_read_bytes"].as_u64().unwrap() >= data.len() as u64, "{s}");
}

#[test]
fn with_the_cache_off_nothing_is_kept_or_passed_through() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pseudo_random(9, 2 << 20);
    let reg = registry(tmp.path(), &[("model.bin", &data)]);
    let a = MountGuard::new(&reg, &tmp.path().join("a"), &["--no-disk-cache"]);
    for _ in 0..2 {
        assert_eq!(std::fs::read(a.dir.join("model.bin")).unwrap(), data);
    }
    let s = a.stats();
    for k in [
        "disk_cache_fills",
        "disk_cache_hits",
        "passthrough_opens",
        "passthrough_fallbacks",
    ] {
        assert_eq!(s[k], 0, "{k}: {s}");
    }
}

#[test]
fn a_writer_waits_for_passthrough_readers_then_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pseudo_random(10, 1 << 20);
    let reg = registry(tmp.path(), &[("model.bin", &data)]);
    let cache = tmp.path().join("cache");
    let a = mount(&reg, &tmp.path().join("a"), &cache, &[]);
    assert_eq!(std::fs::read(a.dir.join("model.bin")).unwrap(), data);
    wait_counter(&a, "disk_cache_fills", 1);
    let reader = std::fs::File::open(a.dir.join("model.bin")).unwrap();
    assert_eq!(counter(&a, "passthrough_opens"), 1);
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(a.dir.join("model.bin"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY), "{err}");
    drop(reader);
    // Once the reader is closed the file is written as usual, and the
    // cache file it read from is untouched.
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(a.dir.join("model.bin"))
        .unwrap();
    w.write_all(b"new").unwrap();
    drop(w);
    assert_eq!(std::fs::read(a.dir.join("model.bin")).unwrap(), b"new");
    let kept: Vec<Vec<u8>> = entries(&cache).iter().map(|(p, _)| std::fs::read(p).unwrap()).collect();
    assert!(kept.contains(&data), "the first version's cache file changed");
}
