//! The cache directory on its own: entries, verification, eviction, parts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;

fn cache(dir: &Path, limit_bytes: u64) -> Arc<DiskCache> {
    let config = DiskCacheConfig {
        dir: dir.to_path_buf(),
        limit_bytes,
    };
    DiskCache::open(&config, "test-registry", Arc::new(Counters::default())).unwrap()
}

/// Writes `bytes` as the entry of `key` through a fill, in two pieces.
fn put(c: &DiskCache, key: &VersionKey, bytes: &[u8]) -> Option<Arc<File>> {
    let fill = c.begin_fill(&key.file_name(), bytes.len() as u64).ok()?;
    let half = bytes.len() / 2;
    fill.record(half as u64, &bytes[half..]).unwrap();
    fill.record(0, &bytes[..half]).unwrap();
    Some(c.commit(&fill, key).unwrap())
}

fn read_all(f: &File) -> Vec<u8> {
    let mut out = vec![0u8; f.metadata().unwrap().len() as usize];
    f.read_exact_at(&mut out, 0).unwrap();
    out
}

#[test]
fn an_entry_is_found_by_its_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 20);
    let key = c.key("file:///r/a", 10, 5);
    assert!(c.lookup(&key).is_none());
    put(&c, &key, b"hello").unwrap();
    assert_eq!(read_all(&c.lookup(&key).unwrap()), b"hello");
    // Another version, size or registry of the same array is another entry.
    assert!(c.lookup(&c.key("file:///r/a", 11, 5)).is_none());
    assert!(c.lookup(&c.key("file:///r/a", 10, 6)).is_none());
    let other = DiskCache::open(
        &DiskCacheConfig {
            dir: dir.path().to_path_buf(),
            limit_bytes: 1 << 20,
        },
        "another-registry",
        Arc::new(Counters::default()),
    )
    .unwrap();
    assert!(other.lookup(&other.key("file:///r/a", 10, 5)).is_none());
    // A second cache object on the directory (another mount) finds it.
    let again = cache(dir.path(), 1 << 20);
    assert_eq!(read_all(&again.lookup(&key).unwrap()), b"hello");
}

#[test]
fn a_damaged_entry_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 20);
    let key = c.key("file:///r/a", 1, 4096);
    put(&c, &key, &[7u8; 4096]).unwrap();
    let path = c.data_path(&key.file_name());
    // One byte changed in place: same size, new mtime and ctime.
    std::thread::sleep(Duration::from_millis(10));
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[8], 100)
        .unwrap();
    assert!(c.lookup(&key).is_none());
    assert!(!path.exists());
    assert_eq!(c.counters.disk_cache_damaged.load(Ordering::Relaxed), 1);
    // Truncated.
    put(&c, &key, &[7u8; 4096]).unwrap();
    File::options().write(true).open(&path).unwrap().set_len(10).unwrap();
    assert!(c.lookup(&key).is_none());
    assert_eq!(c.counters.disk_cache_damaged.load(Ordering::Relaxed), 2);
    // Copied back unchanged (a restore): verified again, then served.
    put(&c, &key, &[7u8; 4096]).unwrap();
    let bytes = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    fs::write(&path, &bytes).unwrap();
    assert_eq!(read_all(&c.lookup(&key).unwrap()), bytes);
    assert_eq!(c.counters.disk_cache_damaged.load(Ordering::Relaxed), 2);
}

#[test]
fn an_incomplete_fill_is_never_committed_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 20);
    let key = c.key("file:///r/a", 1, 100);
    let fill = c.begin_fill(&key.file_name(), 100).unwrap();
    fill.record(0, &[1; 50]).unwrap();
    assert!(c.commit(&fill, &key).is_err());
    drop(fill);
    assert!(c.lookup(&key).is_none());
    assert_eq!(c.usage_bytes().unwrap(), 0);
    assert_eq!(fs::read_dir(c.dir()).unwrap().count(), 1, "only the lock file is left");
}

#[test]
fn a_version_being_filled_by_another_mount_is_not_filled_twice() {
    let dir = tempfile::tempdir().unwrap();
    let a = cache(dir.path(), 1 << 20);
    let b = cache(dir.path(), 1 << 20);
    let key = a.key("file:///r/a", 1, 100);
    let fill = a.begin_fill(&key.file_name(), 100).unwrap();
    assert_eq!(b.begin_fill(&key.file_name(), 100).err(), Some(NoFill::NotNow));
    drop(fill);
    assert!(b.begin_fill(&key.file_name(), 100).is_ok());
}

#[test]
fn parts_left_by_a_dead_writer_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1000);
    // As a crashed process leaves it: no one holds its lock.
    fs::write(c.dir().join("abc.999999.0.900.part"), b"x").unwrap();
    assert!(c.begin_fill("def", 500).is_ok());
    assert!(!c.dir().join("abc.999999.0.900.part").exists());
}

#[test]
fn too_big_for_the_cache_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 100);
    assert_eq!(c.begin_fill("a", 101).err(), Some(NoFill::Never));
    assert_eq!(c.begin_fill("empty", 0).err(), Some(NoFill::Never));
    let held = c.begin_fill("b", 60).unwrap();
    // Parts in flight count: no room for another 60 bytes, for now.
    assert_eq!(c.begin_fill("c", 60).err(), Some(NoFill::NotNow));
    drop(held);
    assert!(c.begin_fill("c", 60).is_ok());
}

#[test]
fn the_least_recently_used_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 300);
    let keys: Vec<VersionKey> = (0..3).map(|i| c.key(&format!("file:///r/{i}"), 1, 100)).collect();
    for k in &keys {
        put(&c, k, &[1; 100]).unwrap();
    }
    // Uses: 0 most recently, then 2; 1 is the oldest.
    let now = SystemTime::now();
    for (k, age) in [(&keys[1], 30), (&keys[2], 20), (&keys[0], 10)] {
        let meta = File::options().write(true).open(c.meta_path(&k.file_name())).unwrap();
        meta.set_modified(now - Duration::from_secs(age)).unwrap();
    }
    let new = c.key("file:///r/new", 1, 150);
    put(&c, &new, &[2; 150]).unwrap();
    assert!(c.lookup(&keys[1]).is_none());
    assert!(c.lookup(&keys[2]).is_none());
    assert!(c.lookup(&keys[0]).is_some());
    assert!(c.lookup(&new).is_some());
    assert_eq!(c.usage_bytes().unwrap(), 250);
}

#[test]
fn an_open_entry_stays_readable_after_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 100);
    let old = c.key("file:///r/a", 1, 100);
    let file = put(&c, &old, &[3; 100]).unwrap();
    put(&c, &c.key("file:///r/a", 2, 100), &[4; 100]).unwrap();
    assert!(c.lookup(&old).is_none());
    assert_eq!(read_all(&file), vec![3; 100]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Whatever is put, in whatever sizes, the data kept never exceeds the
    /// limit and every entry found holds its own bytes.
    #[test]
    fn the_limit_holds_and_entries_hold_their_bytes(sizes in proptest::collection::vec(1u64..400, 1..24)) {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 1000);
        let mut kept = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let key = c.key("file:///r/x", i as u64, *size);
            let bytes: Vec<u8> = (0..*size).map(|b| (b as u8).wrapping_add(i as u8)).collect();
            if put(&c, &key, &bytes).is_some() {
                kept.push((key, bytes));
            }
            prop_assert!(c.usage_bytes().unwrap() <= 1000);
        }
        for (key, bytes) in &kept {
            if let Some(f) = c.lookup(key) {
                prop_assert_eq!(&read_all(&f), bytes);
            }
        }
        // The most recent one always fits (each is under the limit).
        let (last, _) = kept.last().unwrap();
        prop_assert!(c.lookup(last).is_some());
    }
}

#[test]
fn writes_behind_wait_in_a_bounded_queue_and_the_rest_come_back_to_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 20);
    let (started_tx, started) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    // The writer thread takes this one and blocks in it.
    let blocking: WriteJob = Box::new(move || {
        started_tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    assert!(c.write_behind(blocking).is_ok());
    started.recv_timeout(Duration::from_secs(30)).unwrap();
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let job = |ran: &Arc<std::sync::atomic::AtomicUsize>| -> WriteJob {
        let ran = ran.clone();
        Box::new(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        })
    };
    for _ in 0..WRITES_BEHIND {
        assert!(c.write_behind(job(&ran)).is_ok());
    }
    // The queue is full: the job comes back, for the reader to run.
    let Err(back) = c.write_behind(job(&ran)) else {
        panic!("a job beyond the queue was taken")
    };
    back();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    go.send(()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ran.load(Ordering::SeqCst) < 1 + WRITES_BEHIND {
        assert!(std::time::Instant::now() < deadline, "queued jobs never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn settle_waits_for_queued_ranges_and_a_range_dropped_unwritten_counts_out() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 20);
    let fill = c.begin_fill("queued", 100).unwrap();
    let queued = fill.queue();
    let settled = {
        let fill = fill.clone();
        std::thread::spawn(move || {
            fill.settle();
            fill.covered()
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    fill.record(0, &[7; 100]).unwrap();
    drop(queued);
    // settle returned only once the queued range was recorded.
    assert_eq!(settled.join().unwrap(), 100);
    // A queued range whose job never ran (dropped) does not hold it up.
    drop(fill.queue());
    let t = std::time::Instant::now();
    fill.settle();
    assert!(t.elapsed() < Duration::from_secs(30));
}
