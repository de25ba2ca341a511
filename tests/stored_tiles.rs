//! Whole tiles read straight from a fragment's attribute file, without a
//! query, on real TileDB arrays (local, or S3 under `scripts/test_s3.sh`):
//! the same bytes as a query, used only where the tiles are stored as
//! modelfs writes them, and a tile that is not never read as data.

mod common;

use common::*;
use modelfs::registry::file_array::{self, ATTR_NAME, STORED_MIN_TILES, TILE_BYTES};
use modelfs::registry::{FileArray, FileKind, FileWriter, Registry};
use modelfs::tiledb::{self, Array, Context, Filter, FilterType, GlobalWrite, Mode, Vfs};

const TILE: usize = TILE_BYTES as usize;

fn commit(ctx: &Context, uri: &str, bytes: &[u8]) {
    let mut w = FileWriter::begin(ctx, uri, "f.bin", bytes.len() as u64).unwrap();
    w.write(bytes).unwrap();
    w.commit(&FileKind::Plain).unwrap();
}

/// A registry file holding `bytes` as its only version.
fn file_with(tmp: &std::path::Path, ctx: &Context, bytes: &[u8]) -> String {
    let reg = Registry::new(ctx.clone()).unwrap();
    let dir = reg.ensure_dir(&registry_uri(tmp)).unwrap();
    let uri = reg.create_file(&dir, "f.bin").unwrap().uri;
    commit(ctx, &uri, bytes);
    uri
}

/// `len` bytes at `offset` through [`FileArray::read_append`], behind a
/// prefix that must stay as it was.
fn read(file: &FileArray, offset: u64, len: usize) -> modelfs::registry::Result<Vec<u8>> {
    let mut out = b"prefix".to_vec();
    let n = file.read_append(offset, len, &mut out)?;
    assert_eq!(&out[..6], b"prefix");
    assert_eq!(out.len(), 6 + n);
    Ok(out.split_off(6))
}

#[test]
fn a_large_version_reads_its_stored_tiles_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Context::new().unwrap();
    let tiles = STORED_MIN_TILES as usize + 6;
    let data = pseudo_random(7, tiles * TILE + 1234);
    let uri = file_with(tmp.path(), &ctx, &data);
    let file = FileArray::open(&ctx, &uri).unwrap();

    // Small and unaligned reads go to queries and find nothing.
    assert_eq!(read(&file, 0, 4096).unwrap(), &data[..4096]);
    assert_eq!(read(&file, 100, 3 * TILE).unwrap(), &data[100..100 + 3 * TILE]);
    assert!(!file.reads_stored_tiles());

    let end = data.len();
    let ranges = [
        (0, 8 << 20),
        (TILE, 4 * TILE),
        (5 * TILE, 10 * TILE + 17),
        ((tiles - 4) * TILE, end),
        (2 * TILE, end + 999),
        (TILE + 1, 20 * TILE),
        (0, end),
    ];
    for (from, to) in ranges {
        let got = read(&file, from as u64, to - from).unwrap();
        assert!(got == data[from..to.min(end)], "bytes {from}..{to} differ");
    }
    assert!(file.reads_stored_tiles(), "whole tiles were read by queries");
    assert!(read(&file, end as u64, 10).unwrap().is_empty());
}

#[test]
fn checksummed_tiles_and_small_versions_are_read_by_queries() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Context::new().unwrap();
    let root = registry_uri(tmp.path());
    let uri = format!("{root}/md5.bin");
    Vfs::new(&ctx).unwrap().create_dir(&root).unwrap();
    file_array::create_filtered(&ctx, &uri, vec![Filter::Plain(FilterType::CHECKSUM_MD5)]).unwrap();
    let data = pseudo_random(3, (STORED_MIN_TILES as usize + 2) * TILE);
    commit(&ctx, &uri, &data);
    let file = FileArray::open(&ctx, &uri).unwrap();
    assert!(read(&file, 0, data.len()).unwrap() == data);
    assert!(!file.reads_stored_tiles(), "checksummed tiles were read as stored");

    let small = pseudo_random(4, (STORED_MIN_TILES as usize - 1) * TILE);
    let uri = file_with(&tmp.path().join("small"), &ctx, &small);
    let file = FileArray::open(&ctx, &uri).unwrap();
    assert!(read(&file, 0, small.len()).unwrap() == small);
    assert!(!file.reads_stored_tiles());
}

#[test]
fn a_damaged_tile_header_is_an_error_never_other_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Context::new().unwrap();
    let data = pseudo_random(9, STORED_MIN_TILES as usize * TILE);
    let uri = file_with(tmp.path(), &ctx, &data);
    let vfs = Vfs::new(&ctx).unwrap();
    let fragments = vfs.ls(&format!("{uri}/__fragments")).unwrap();
    let [fragment] = fragments.as_slice() else {
        panic!("one fragment expected: {fragments:?}")
    };
    let a0 = format!("{fragment}/a0.tdb");
    let mut stored = vfs.read_file(&a0).unwrap();
    let stride = stored.len() / STORED_MIN_TILES as usize;
    // Tile 10's first chunk now holds 16 bytes fewer by both its sizes, so
    // its last 16 bytes read as the next chunk's header.
    let sizes = 10 * stride + 8;
    for word in [sizes, sizes + 4] {
        let v = u32::from_le_bytes(stored[word..word + 4].try_into().unwrap()) - 16;
        stored[word..word + 4].copy_from_slice(&v.to_le_bytes());
    }
    vfs.write_file(&a0, &stored).unwrap();

    let file = FileArray::open(&ctx, &uri).unwrap();
    assert!(read(&file, 0, 8 * TILE).unwrap() == data[..8 * TILE]);
    assert!(file.reads_stored_tiles());
    match read(&file, 8 * TILE as u64, 8 * TILE) {
        Ok(got) => assert!(
            got == data[8 * TILE..16 * TILE],
            "a damaged tile was read as other bytes"
        ),
        Err(e) => assert!(e.to_string().contains(&uri), "{e}"),
    }
    assert!(!file.reads_stored_tiles(), "the damaged tile left stored reads on");
    // Tiles before the damage still read right, by queries now.
    assert!(read(&file, 0, 8 * TILE).unwrap() == data[..8 * TILE]);
}

#[test]
fn each_version_reads_its_own_stored_tiles() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Context::new().unwrap();
    let len = STORED_MIN_TILES as usize * TILE + 5;
    let old = pseudo_random(11, len);
    let uri = file_with(tmp.path(), &ctx, &old);
    let old_meta = file_array::read_meta(&ctx, &uri).unwrap();
    let new = pseudo_random(12, len);
    commit(&ctx, &uri, &new);

    let latest = FileArray::open(&ctx, &uri).unwrap();
    assert!(read(&latest, 0, len).unwrap() == new);
    assert!(latest.reads_stored_tiles());
    let past = FileArray::open_past(&ctx, &uri, old_meta).unwrap();
    assert!(read(&past, 0, len).unwrap() == old);
    assert!(past.reads_stored_tiles());
}

#[test]
fn a_fragment_that_holds_the_tiles_elsewhere_in_the_file_is_not_read_as_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Context::new().unwrap();
    let tiles = STORED_MIN_TILES as usize + 2;
    let data = pseudo_random(13, tiles * TILE + 5);
    let uri = file_with(tmp.path(), &ctx, &data);
    let t = file_array::read_meta(&ctx, &uri).unwrap().timestamp.unwrap();
    // Another writer's fragments at the version's timestamp: the first tile
    // alone, then all the others in one fragment of as many tiles as the
    // file has whole ones, which is what modelfs's own layout looks like.
    let own: Vec<String> = tiledb::fragments(&ctx, &uri)
        .unwrap()
        .into_iter()
        .map(|f| f.uri)
        .collect();
    tiledb::delete_fragments(&ctx, &uri, &own).unwrap();
    let write = |lo: usize, bytes: &[u8]| {
        let array = Array::open_at(&ctx, &uri, Mode::Write, Some(t)).unwrap();
        let hi = (lo + bytes.len() - 1) as u64;
        let mut w = GlobalWrite::new(array, ATTR_NAME, lo as u64, hi).unwrap();
        w.submit(bytes).unwrap();
        w.finalize().unwrap();
    };
    write(0, &data[..TILE]);
    let mut rest = data[TILE..].to_vec();
    rest.resize(tiles * TILE, 0);
    write(TILE, &rest);

    let file = FileArray::open(&ctx, &uri).unwrap();
    assert!(read(&file, 0, data.len()).unwrap() == data);
    assert!(!file.reads_stored_tiles(), "tiles shifted by one were read as stored");
}
