//! A file's history on real TileDB arrays, without a mount: what counts as
//! a version (commits, including 0-byte ones) and what does not (attribute
//! and tag writes, a write that died before its metadata), tagging by
//! time, and a pruned version refused rather than read from other
//! fragments.

mod common;

use common::*;
use modelfs::registry::version_time::format_ms;
use modelfs::registry::versions::{self, PrunePolicy};
use modelfs::registry::{Attrs, Error, FileArray, FileKind, FileWriter, Registry};
use modelfs::tiledb::{self, Array, Context, Mode, Vfs};

fn commit(ctx: &Context, uri: &str, bytes: &[u8]) -> u64 {
    let mut w = FileWriter::begin(ctx, uri, "f.bin", bytes.len() as u64).unwrap();
    w.write(bytes).unwrap();
    w.commit(&FileKind::Plain).unwrap().timestamp
}

#[test]
fn history_lists_commits_only_and_prune_refuses_to_read_around_a_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let root = registry_uri(tmp.path());
    let ctx = Context::new().unwrap();
    let reg = Registry::new(ctx.clone()).unwrap();
    let dir = reg.ensure_dir(&root).unwrap();
    let entry = reg.create_file(&dir, "f.bin").unwrap();
    let uri = entry.uri.clone();
    let vfs = Vfs::new(&ctx).unwrap();

    let base = pseudo_random(0, 600_000);
    let t0 = commit(&ctx, &uri, &base);
    let big = pseudo_random(1, 600_000);
    let t1 = commit(&ctx, &uri, &big);
    let t2 = commit(&ctx, &uri, b"");
    let t3 = commit(&ctx, &uri, b"small");
    // An attribute write and a tag: metadata only, not versions.
    modelfs::registry::file_array::set_attrs(
        &ctx,
        &uri,
        &Attrs {
            mode: Some(0o600),
            ..Attrs::default()
        },
    )
    .unwrap();
    versions::set_tag(&ctx, &uri, "first", Some(t1)).unwrap();
    versions::set_tag(&ctx, &uri, "base", Some(t0)).unwrap();
    // A write that died before its metadata: fragments, no commit.
    let orphan_at = tiledb::now_ms() + 5;
    let array = Array::open_at(&ctx, &uri, Mode::Write, Some(orphan_at)).unwrap();
    array.write_cells("contents", 0, 3, b"dead").unwrap();
    array.close().unwrap();

    let history = reg.history(&uri).unwrap();
    let times: Vec<u64> = history.versions.iter().map(|v| v.timestamp).collect();
    assert_eq!(times, vec![t0, t1, t2, t3], "{history:?}");
    let sizes: Vec<u64> = history.versions.iter().map(|v| v.meta.size).collect();
    assert_eq!(sizes, vec![600_000, 600_000, 0, 5]);
    assert_eq!(history.tags, vec![("base".to_string(), t0), ("first".to_string(), t1)]);
    assert_eq!(history.find("first").map(|v| v.timestamp), Some(t1));
    assert_eq!(history.find(&format_ms(t3)).map(|v| v.timestamp), Some(t3));
    assert_eq!(history.as_of(t3 - 1).map(|v| v.timestamp), Some(t2));

    // Each version reads its own bytes.
    let v1 = FileArray::open_past(&ctx, &uri, history.versions[1].meta.clone()).unwrap();
    let mut buf = vec![0u8; 600_000];
    assert_eq!(v1.read_at(0, &mut buf).unwrap(), 600_000);
    assert_eq!(buf, big);
    // TileDB refuses to delete fragments of an array this process holds open.
    drop(v1);

    // Prune t1 (untagging it; t0 stays, tagged): reading "as of t1" would
    // now find t0's cells, as large; the version must be refused instead.
    let report = versions::prune(
        &ctx,
        &vfs,
        &uri,
        &PrunePolicy {
            keep: Some(2),
            newer_than: None,
            untag: vec!["first".into()],
        },
    )
    .unwrap();
    assert_eq!(report.pruned, vec![t1]);
    assert!(report.freed() >= 600_000, "{report:?}");
    let as_of = Array::open_at(&ctx, &uri, Mode::Read, Some(t1)).unwrap();
    let mut other = vec![0u8; 600_000];
    as_of.read_cells("contents", 0, 599_999, &mut other).unwrap();
    assert_eq!(other, base, "as of t1, TileDB shows t0's bytes");
    drop(as_of);
    match FileArray::open_past(&ctx, &uri, history.versions[1].meta.clone()) {
        Err(Error::VersionGone { version, .. }) => assert_eq!(version, format_ms(t1)),
        other => panic!("a pruned version opened: {:?}", other.map(|_| ())),
    }
    // So is it as a file's version in a snapshot mount of a time when it
    // was current.
    match FileArray::open_version(&ctx, &uri, history.versions[1].meta.clone()) {
        Err(Error::VersionGone { .. }) => {}
        other => panic!("a pruned version opened as current: {:?}", other.map(|_| ())),
    }
    let after = reg.history(&uri).unwrap();
    let times: Vec<u64> = after.versions.iter().map(|v| v.timestamp).collect();
    assert_eq!(times, vec![t0, t2, t3]);
    assert_eq!(after.tags, vec![("base".to_string(), t0)]);
    // The current version still reads.
    let current = FileArray::open(&ctx, &uri).unwrap();
    let mut small = [0u8; 5];
    current.read_at(0, &mut small).unwrap();
    assert_eq!(&small, b"small");
}

/// A first version's commit reports the file's metadata without reading
/// it (a mount shows a new file from it); it must be what a read gives:
/// a plain file with some attributes set, a safetensors file with its
/// tensor index, sizes below, at and above one tile. A later version's
/// metadata also holds what earlier writes left, so its commit tells none.
#[test]
fn first_versions_report_the_metadata_a_read_gives() {
    use modelfs::registry::file_array::{TILE_BYTES, read_meta};
    use modelfs::registry::safetensors_index::validate_bytes;
    let tmp = tempfile::tempdir().unwrap();
    let root = registry_uri(tmp.path());
    let ctx = Context::new().unwrap();
    let reg = Registry::new(ctx.clone()).unwrap();
    let dir = reg.ensure_dir(&root).unwrap();
    let attrs = Attrs {
        mode: Some(0o100640),
        uid: Some(1234),
        mtime_ns: Some(1_700_000_000_123_456_789),
        ..Attrs::default()
    };
    let tensors = safetensors_bytes(3, 300_000);
    let index = validate_bytes(&tensors).unwrap();
    let tile = TILE_BYTES as usize;
    let cases: Vec<(&str, Vec<u8>, FileKind, Attrs)> = vec![
        ("empty.bin", Vec::new(), FileKind::Plain, Attrs::default()),
        ("small.txt", b"hi\n".to_vec(), FileKind::Plain, attrs),
        ("one-tile.bin", pseudo_random(2, tile), FileKind::Plain, attrs),
        (
            "tiles-and-tail.bin",
            pseudo_random(3, 2 * tile + 7),
            FileKind::Plain,
            Attrs::default(),
        ),
        ("m.safetensors", tensors, FileKind::Safetensors(index), attrs),
    ];
    for (name, bytes, kind, attrs) in cases {
        let entry = reg.create_file(&dir, name).unwrap();
        let mut w = FileWriter::begin_first(&ctx, &entry.uri, name, bytes.len() as u64).unwrap();
        w.set_attrs(attrs);
        w.write(&bytes).unwrap();
        let committed = w.commit(&kind).unwrap();
        let read = read_meta(&ctx, &entry.uri).unwrap();
        assert_eq!(committed.meta.as_ref(), Some(&read), "{name}");
        assert_eq!(read.timestamp, Some(committed.timestamp), "{name}");
        let mut back = vec![0u8; bytes.len()];
        let n = FileArray::open(&ctx, &entry.uri)
            .unwrap()
            .read_at(0, &mut back)
            .unwrap();
        assert_eq!((n, back), (bytes.len(), bytes), "{name}");

        let mut w = FileWriter::begin(&ctx, &entry.uri, name, 2).unwrap();
        w.write(b"ok").unwrap();
        let later = w.commit(&FileKind::Plain).unwrap();
        assert!(later.meta.is_none(), "{name}");
        assert!(later.timestamp > committed.timestamp, "{name}");
        let now = read_meta(&ctx, &entry.uri).unwrap();
        assert_eq!(
            (now.size, now.attrs.mode, now.attrs.uid),
            (2, read.attrs.mode, read.attrs.uid),
            "{name}"
        );
    }
}
