//! Tests of the binding itself, on real arrays in temporary directories.

use super::*;

fn ctx() -> Context {
    Context::new().expect("context")
}

fn byte_array(ctx: &Context, uri: &str, extent: u64) {
    let schema = Schema::dense(
        ctx,
        &[DimensionSpec {
            name: "position".into(),
            lo: 0,
            hi: (1 << 40) - 1,
            extent,
            filters: vec![],
        }],
        &[AttributeSpec {
            name: "contents".into(),
            datatype: Datatype::UINT8,
            filters: vec![Filter::Compress(FilterType::ZSTD, Some(1))],
        }],
    )
    .expect("schema");
    schema.create_array(uri).expect("create");
}

fn tmp_uri(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_str().unwrap().to_string()
}

#[test]
fn version_is_2_30() {
    assert_eq!(&[version().0, version().1], &[2, 30]);
}

#[test]
fn error_carries_tiledb_message() {
    let dir = tempfile::tempdir().unwrap();
    let uri = tmp_uri(&dir, "missing");
    let err = Array::open(&ctx(), &uri, Mode::Read).err().expect("must fail");
    assert_eq!(err.op, "tiledb_array_open");
    assert!(err.message.contains("does not exist"), "{err}");
    assert!(err.message.contains(&uri), "{err}");
}

#[test]
fn nul_in_uri_is_an_error() {
    let err = Array::open(&ctx(), "a\0b", Mode::Read).err().expect("must fail");
    assert!(err.message.contains("NUL"), "{err}");
}

#[test]
fn config_set_get_and_reject() {
    let mut c = Config::new().unwrap();
    c.set("sm.memory_budget", "1048576").unwrap();
    assert_eq!(c.get("sm.memory_budget").unwrap().as_deref(), Some("1048576"));
    assert_eq!(c.get("no.such.key").unwrap(), None);
    assert!(c.set("sm.memory_budget", "notanumber").is_err());
    Context::with_config(&c).unwrap();
}

#[test]
fn schema_round_trip() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let uri = tmp_uri(&dir, "a");
    byte_array(&ctx, &uri, 4096);
    let schema = Schema::load(&ctx, &uri).unwrap();
    assert_eq!(schema.array_type().unwrap(), ArrayType::Dense);
    let dims = schema.dimensions().unwrap();
    assert_eq!(dims.len(), 1);
    assert_eq!(dims[0].name, "position");
    assert_eq!(dims[0].as_u64(), Some((0, (1 << 40) - 1, 4096)));
    let attrs = schema.attributes().unwrap();
    assert_eq!(attrs.len(), 1);
    assert_eq!(attrs[0].name, "contents");
    assert_eq!(attrs[0].datatype, Datatype::UINT8);
    assert_eq!(attrs[0].cell_val_num, 1);
    assert_eq!(attrs[0].filters, vec![FilterType::ZSTD]);
    assert!(
        schema.create_array(&uri).is_err(),
        "create over an existing array fails"
    );
}

#[test]
fn global_write_over_several_submits_then_tail_and_read_back() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let uri = tmp_uri(&dir, "a");
    byte_array(&ctx, &uri, 100);
    let data: Vec<u8> = (0..1037u32).map(|i| (i * 7 % 251) as u8).collect();
    let array = Array::open_at(&ctx, &uri, Mode::Write, Some(42)).unwrap();
    let mut w = GlobalWrite::new(array, "contents", 0, 999).unwrap();
    w.submit(&data[..150]).unwrap();
    w.submit(&data[150..333]).unwrap();
    w.submit(&data[333..1000]).unwrap();
    let mut array = w.finalize().unwrap();
    array.write_cells("contents", 1000, 1036, &data[1000..]).unwrap();
    array.put_metadata("file_size", &MetaValue::u64(1037)).unwrap();
    array.put_metadata("name", &MetaValue::text("hello")).unwrap();
    array.close().unwrap();

    let mut array = Array::open(&ctx, &uri, Mode::Read).unwrap();
    let meta = array.metadata().unwrap();
    let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("file_size").as_u64(), Some(1037));
    assert_eq!(get("name").as_str(), Some("hello"));
    assert_eq!(array.non_empty_domain_u64(0).unwrap(), Some((0, 1036)));
    let mut buf = vec![0u8; 1037];
    array.read_cells("contents", 0, 1036, &mut buf).unwrap();
    assert_eq!(buf, data);
    let mut part = vec![0u8; 10];
    array.read_cells("contents", 995, 1004, &mut part).unwrap();
    assert_eq!(part, &data[995..1005]);
    // Appended after what the vector holds, across both fragments.
    let mut out = b"kept".to_vec();
    array.read_cells_append("contents", 990, 1010, 21, &mut out).unwrap();
    assert_eq!(&out[..4], b"kept");
    assert_eq!(&out[4..], &data[990..1011]);
    // A failed read (past the domain) leaves the vector as it was.
    assert!(
        array
            .read_cells_append("contents", (1 << 40) - 2, 1 << 40, 3, &mut out)
            .is_err()
    );
    assert_eq!(out.len(), 25);
    // So does one that wrote some bytes before it failed (fewer cells than
    // asked for).
    let before = out.clone();
    assert!(array.read_cells_append("contents", 0, 9, 12, &mut out).is_err());
    assert_eq!(out, before);

    let frags = fragments(&ctx, &uri).unwrap();
    assert_eq!(frags.len(), 2);
    assert!(frags.iter().all(|f| f.timestamp_range == (42, 42)));
}

#[test]
fn global_write_with_wrong_cell_count_commits_nothing() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let uri = tmp_uri(&dir, "a");
    byte_array(&ctx, &uri, 100);
    let array = Array::open(&ctx, &uri, Mode::Write).unwrap();
    let mut w = GlobalWrite::new(array, "contents", 0, 199).unwrap();
    w.submit(&[1u8; 150]).unwrap();
    assert!(w.finalize().is_err());
    assert!(fragments(&ctx, &uri).unwrap().is_empty());
    // Not tile-aligned: refused at the first submit.
    let array = Array::open(&ctx, &uri, Mode::Write).unwrap();
    let mut w = GlobalWrite::new(array, "contents", 0, 149).unwrap();
    assert!(w.submit(&[1u8; 150]).is_err());
    drop(w);
    assert!(fragments(&ctx, &uri).unwrap().is_empty());
}

#[test]
fn open_at_timestamp_sees_the_old_version() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let uri = tmp_uri(&dir, "a");
    byte_array(&ctx, &uri, 10);
    for (t, byte) in [(10u64, 1u8), (20, 2)] {
        let mut a = Array::open_at(&ctx, &uri, Mode::Write, Some(t)).unwrap();
        a.write_cells("contents", 0, 9, &[byte; 10]).unwrap();
        a.put_metadata("v", &MetaValue::u64(byte as u64)).unwrap();
        a.close().unwrap();
    }
    for (t, byte) in [(15u64, 1u8), (25, 2)] {
        let mut a = Array::open_at(&ctx, &uri, Mode::Read, Some(t)).unwrap();
        let mut buf = [0u8; 10];
        a.read_cells("contents", 0, 9, &mut buf).unwrap();
        assert_eq!(buf, [byte; 10]);
        assert_eq!(a.metadata().unwrap()[0].1.as_u64(), Some(byte as u64));
    }
    let a = Array::open_at(&ctx, &uri, Mode::Read, Some(5)).unwrap();
    assert_eq!(a.non_empty_domain_u64(0).unwrap(), None);
}

#[test]
fn unwritten_cells_read_as_fill_value() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let uri = tmp_uri(&dir, "a");
    byte_array(&ctx, &uri, 10);
    let a = Array::open(&ctx, &uri, Mode::Write).unwrap();
    a.write_cells("contents", 0, 4, &[7; 5]).unwrap();
    drop(a);
    let a = Array::open(&ctx, &uri, Mode::Read).unwrap();
    let mut buf = [0u8; 8];
    a.read_cells("contents", 0, 7, &mut buf).unwrap();
    assert_eq!(buf, [7, 7, 7, 7, 7, 255, 255, 255]);
}

#[test]
fn concurrent_reads_share_one_array() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let uri = tmp_uri(&dir, "a");
    byte_array(&ctx, &uri, 64);
    let data: Vec<u8> = (0..6400u32).map(|i| (i % 253) as u8).collect();
    let a = Array::open(&ctx, &uri, Mode::Write).unwrap();
    a.write_cells("contents", 0, 6399, &data).unwrap();
    drop(a);
    let a = std::sync::Arc::new(Array::open(&ctx, &uri, Mode::Read).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let a = a.clone();
            let data = data.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let lo = (t * 797 + i * 131) % 6000;
                    let mut buf = vec![0u8; 300];
                    a.read_cells("contents", lo, lo + 299, &mut buf).unwrap();
                    assert_eq!(buf, &data[lo as usize..lo as usize + 300]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn groups_members_and_object_types() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let g = tmp_uri(&dir, "g");
    Group::create(&ctx, &g).unwrap();
    assert!(Group::create(&ctx, &g).is_err());
    byte_array(&ctx, &format!("{g}/file"), 10);
    Group::create(&ctx, &format!("{g}/sub")).unwrap();
    let mut w = Group::open(&ctx, &g, GroupMode::Write).unwrap();
    w.add_member("file", true, "file.bin", ObjectType::Array).unwrap();
    w.add_member("sub", true, "sub dir", ObjectType::Group).unwrap();
    w.close().unwrap();
    let r = Group::open(&ctx, &g, GroupMode::Read).unwrap();
    let mut members = r.members().unwrap();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(members.len(), 2);
    assert_eq!(members[0].name.as_deref(), Some("file.bin"));
    assert_eq!(members[0].object_type, ObjectType::Array);
    assert!(members[0].uri.ends_with("/g/file"), "{}", members[0].uri);
    assert_eq!(members[1].name.as_deref(), Some("sub dir"));
    drop(r);

    assert_eq!(object_type(&ctx, &g).unwrap(), ObjectType::Group);
    assert_eq!(object_type(&ctx, &format!("{g}/file")).unwrap(), ObjectType::Array);
    assert_eq!(
        object_type(&ctx, &tmp_uri(&dir, "nothing")).unwrap(),
        ObjectType::Invalid
    );

    let mut w = Group::open(&ctx, &g, GroupMode::Write).unwrap();
    w.remove_member("file.bin").unwrap();
    w.close().unwrap();
    let r = Group::open(&ctx, &g, GroupMode::Read).unwrap();
    assert_eq!(r.members().unwrap().len(), 1);
    drop(r);
    object_move(&ctx, &format!("{g}/file"), &format!("{g}/moved")).unwrap();
    assert_eq!(object_type(&ctx, &format!("{g}/moved")).unwrap(), ObjectType::Array);
    object_remove(&ctx, &format!("{g}/moved")).unwrap();
    assert_eq!(object_type(&ctx, &format!("{g}/moved")).unwrap(), ObjectType::Invalid);
}

#[test]
fn vfs_probes_and_lists() {
    let ctx = ctx();
    let vfs = Vfs::new(&ctx).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = tmp_uri(&dir, "d");
    vfs.create_dir(&format!("{d}/inner")).unwrap();
    std::fs::write(dir.path().join("d/f.txt"), b"12345").unwrap();
    assert!(vfs.is_dir(&d).unwrap());
    assert!(vfs.is_file(&format!("{d}/f.txt")).unwrap());
    assert!(!vfs.is_file(&format!("{d}/nope")).unwrap());
    assert_eq!(vfs.file_size(&format!("{d}/f.txt")).unwrap(), 5);
    assert!(vfs.file_size(&format!("{d}/nope")).is_err());
    let mut names = vfs.ls(&d).unwrap();
    names.sort();
    assert_eq!(names.len(), 2);
    assert!(
        names[0].starts_with("file://") && names[0].ends_with("/d/f.txt"),
        "{names:?}"
    );
    assert!(names[1].ends_with("/d/inner"), "{names:?}");
    vfs.remove_file(&format!("{d}/f.txt")).unwrap();
    vfs.remove_dir(&d).unwrap();
    assert!(!vfs.is_dir(&d).unwrap());
}

#[test]
fn vfs_lists_a_tree_at_every_depth_up_to_a_limit() {
    let ctx = ctx();
    let vfs = Vfs::new(&ctx).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = tmp_uri(&dir, "d");
    for sub in ["a/x", "a/y/z", "b"] {
        std::fs::create_dir_all(dir.path().join("d").join(sub)).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("d/empty")).unwrap();
    for (f, len) in [("a/x/1", 1), ("a/y/z/2", 22), ("b/3", 333), ("4", 0)] {
        std::fs::write(dir.path().join("d").join(f), vec![7u8; len]).unwrap();
    }
    let mut seen = Vec::new();
    let whole = vfs.ls_recursive(&d, &mut |p, size| {
        seen.push((p.rsplit_once("/d/").unwrap().1.to_string(), size));
        true
    });
    assert!(whole.unwrap());
    seen.sort();
    let want: Vec<(String, u64)> = [("4", 0), ("a/x/1", 1), ("a/y/z/2", 22), ("b/3", 333)]
        .iter()
        .map(|(p, s)| (p.to_string(), *s))
        .collect();
    assert_eq!(seen, want);
    let mut count = 0;
    let whole = vfs.ls_recursive(&d, &mut |_, _| {
        count += 1;
        count < 2
    });
    assert_eq!((whole.unwrap(), count), (false, 2));
    let mut none = 0;
    let missing = vfs.ls_recursive(&tmp_uri(&dir, "nope"), &mut |_, _| {
        none += 1;
        true
    });
    assert!(missing.is_err() || none == 0);
}

#[test]
fn metadata_of_every_kind_round_trips() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let uri = tmp_uri(&dir, "a");
    byte_array(&ctx, &uri, 10);
    let mut a = Array::open(&ctx, &uri, Mode::Write).unwrap();
    a.put_metadata("i", &MetaValue::i64(-5)).unwrap();
    a.put_metadata("u", &MetaValue::u64(5)).unwrap();
    a.put_metadata("s", &MetaValue::text("héllo")).unwrap();
    let bad = MetaValue {
        datatype: Datatype::UINT64,
        num: 2,
        bytes: vec![0; 8],
    };
    assert!(a.put_metadata("bad", &bad).is_err());
    a.close().unwrap();
    let mut a = Array::open(&ctx, &uri, Mode::Read).unwrap();
    let meta = a.metadata().unwrap();
    let keys: Vec<_> = meta.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["i", "s", "u"]);
    assert_eq!(meta[0].1.as_u64(), None, "negative is not a size");
    assert_eq!(meta[1].1.as_str(), Some("héllo"));
    assert_eq!(meta[2].1.as_u64(), Some(5));
    assert_eq!(format_values(meta[0].1.datatype, &meta[0].1.bytes), "-5");
}

#[test]
fn group_metadata_read_while_a_metadata_file_is_written_waits_for_it() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let g = tmp_uri(&dir, "g");
    Group::create(&ctx, &g).unwrap();
    for key in ["a", "b"] {
        let mut w = Group::open(&ctx, &g, GroupMode::Write).unwrap();
        w.put_metadata(key, &MetaValue::u64(1)).unwrap();
        w.close().unwrap();
    }
    // The newest metadata file as a writer leaves it half-way: its name
    // listed, its bytes not all there.
    let meta_dir = dir.path().join("g/__meta");
    let newest = std::fs::read_dir(&meta_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let whole = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &whole[..whole.len() / 2]).unwrap();
    let short = Group::open(&ctx, &g, GroupMode::Read).unwrap().metadata().unwrap_err();
    assert!(short.is_vanished_file(), "{short}");

    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        use std::os::unix::fs::FileExt;
        let half = whole.len() / 2;
        let f = std::fs::OpenOptions::new().write(true).open(&newest).unwrap();
        f.write_all_at(&whole[half..], half as u64).unwrap();
    });
    let meta = Group::read_metadata(&ctx, &g).unwrap();
    writer.join().unwrap();
    let keys: Vec<_> = meta.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
}
