//! Issue #13: huge or hostile arrays cannot take the mount down. Each
//! trigger is an array made here with the binding (as TileDB-Py could write
//! it), read through a real mount, which must answer `EIO` with one log
//! line naming the array and keep serving the good file beside it; the CLI
//! must print the cause and exit non-zero.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use modelfs::registry::TILEDB_ML_FRAMEWORK_KEY;
use modelfs::tiledb::{Array, Context, Datatype, MetaValue, Mode};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 1-D dense UINT8 array at `uri` (see [`dense_array_of`]).
fn dense_array(
    ctx: &Context,
    uri: &str,
    dim: &str,
    extent: u64,
    attrs: &[&str],
    cells: &[u8],
    meta: &[(&str, MetaValue)],
) {
    dense_array_of(ctx, uri, dim, extent, Datatype::UINT8, attrs, cells, meta);
}

/// A file array (`position` / `contents`) with `cells` and `file_size`.
fn file_array(ctx: &Context, uri: &str, extent: u64, cells: &[u8], file_size: u64) {
    dense_array(
        ctx,
        uri,
        "position",
        extent,
        &["contents"],
        cells,
        &[("file_size", MetaValue::u64(file_size))],
    );
}

/// A registry (plain directory) holding `good.txt`, imported by the binary.
fn registry_with_good_file(tmp: &Path) -> PathBuf {
    let reg = tmp.join("registry");
    std::fs::create_dir(&reg).unwrap();
    let src = tmp.join("good.txt");
    std::fs::write(&src, b"still serving").unwrap();
    modelfs_ok(&["import", "--quiet", s(&src), s(&reg.join("good.txt"))]);
    reg
}

/// Runs `f` on a thread; fails the test (instead of hanging) when a
/// request never gets an answer.
fn answered<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what}: no answer from the daemon within 30 s"))
}

/// The errno of opening `path` and reading its first 64 KiB, if any.
fn read_errno(path: PathBuf) -> Option<i32> {
    answered(&path.display().to_string(), move || {
        use std::io::Read;
        let mut buf = vec![0u8; 64 << 10];
        let result = std::fs::File::open(&path).and_then(|mut f| f.read(&mut buf));
        result.err().and_then(|e| e.raw_os_error())
    })
}

fn assert_serving(mnt: &MountGuard) {
    let good = mnt.dir.join("good.txt");
    let bytes = answered("good.txt", move || std::fs::read(good));
    assert_eq!(
        bytes.unwrap(),
        b"still serving",
        "the mount stopped serving:\n{}",
        mnt.log_text()
    );
}

#[test]
fn issue_13_huge_tiles_and_sizes_past_the_cells_are_eio() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_with_good_file(tmp.path());
    let ctx = Context::new().unwrap();
    // Tiles of 1 TiB and a 1 TiB size, nothing written: one read used to
    // allocate a 1 TiB chunk.
    file_array(&ctx, s(&reg.join("huge_tile")), 1 << 40, &[], 1 << 40);
    // A size key far past the 10 cells written: reads of fill.
    file_array(&ctx, s(&reg.join("past_cells")), 1024, &[7; 10], 4 << 30);
    // A size near u64::MAX over a normal array.
    file_array(&ctx, s(&reg.join("size_max")), 1024, &[7; 10], u64::MAX);

    let mnt = MountGuard::new(s(&reg), &tmp.path().join("mnt"), &[]);
    for (name, reason) in [
        ("huge_tile", "tile extent 1099511627776 is over the 67108864-byte limit"),
        (
            "past_cells",
            "`file_size` is 4294967296 bytes but the array holds cells [0, 9]",
        ),
        (
            "size_max",
            "`file_size` is 18446744073709551615 bytes, over the largest file size",
        ),
    ] {
        assert_eq!(
            read_errno(mnt.dir.join(name)),
            Some(libc::EIO),
            "{name}:\n{}",
            mnt.log_text()
        );
        let log = mnt.log_text();
        let uri = s(&reg.join(name)).to_string();
        assert!(
            log.lines().any(|l| l.contains(&uri) && l.contains(reason)),
            "{name}: no log line naming it and {reason:?}:\n{log}"
        );
        assert_serving(&mnt);

        // The CLI: the cause and a non-zero exit.
        let out = modelfs(&["export", "--quiet", s(&reg.join(name)), s(&tmp.path().join(name))]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: export succeeded");
        assert!(stderr.contains(reason), "{name}: {stderr}");
    }
}

#[test]
fn issue_13_a_model_field_size_past_its_cells_is_eio() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_with_good_file(tmp.path());
    let ctx = Context::new().unwrap();
    // The field claims 4 GiB; one cell is written.
    dense_array(
        &ctx,
        s(&reg.join("liar")),
        "offset",
        1024,
        &["model"],
        &[0x80],
        &[
            (TILEDB_ML_FRAMEWORK_KEY, MetaValue::text("PYTORCH")),
            ("model_size", MetaValue::i64(4 << 30)),
        ],
    );
    // A model array whose tiles are 1 TiB.
    dense_array(
        &ctx,
        s(&reg.join("huge_tile_model")),
        "offset",
        1 << 40,
        &["model"],
        &[],
        &[
            (TILEDB_ML_FRAMEWORK_KEY, MetaValue::text("PYTORCH")),
            ("model_size", MetaValue::i64(1 << 40)),
        ],
    );

    let mnt = MountGuard::new(s(&reg), &tmp.path().join("mnt"), &[]);
    let liar = mnt.dir.join("liar");
    assert!(std::fs::read(liar.join("metadata.json")).is_ok());
    assert_eq!(read_errno(liar.join("model.safetensors")), Some(libc::EIO));
    let log = mnt.log_text();
    assert!(
        log.contains("`model_size` is 4294967296 bytes but only 1 cells were written"),
        "{log}"
    );
    assert_eq!(
        read_errno(mnt.dir.join("huge_tile_model/metadata.json")),
        Some(libc::EIO)
    );
    let log = mnt.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("huge_tile_model") && l.contains("tile extent 1099511627776 is over")),
        "{log}"
    );
    assert_serving(&mnt);
    // The CLI: `export` fails naming the cause; `info` describes it.
    let out = modelfs(&[
        "export",
        "--quiet",
        s(&reg.join("huge_tile_model")),
        s(&tmp.path().join("out")),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tile extent 1099511627776 is over"));
    let info = modelfs_ok(&["info", s(&reg.join("huge_tile_model"))]);
    assert!(info.contains("tile extent 1099511627776 is over"), "{info}");
}

#[test]
fn issue_13_a_version_timestamped_u64_max_is_served_and_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_with_good_file(tmp.path());
    let src = tmp.path().join("late.txt");
    std::fs::write(&src, b"from the end of time").unwrap();
    let uri = reg.join("late.txt");
    modelfs_ok(&["import", "--quiet", s(&src), s(&uri)]);
    let ctx = Context::new().unwrap();
    let mut array = Array::open(&ctx, s(&uri), Mode::Write).unwrap();
    array
        .put_metadata("modelfs.timestamp", &MetaValue::u64(u64::MAX))
        .unwrap();
    array.close().unwrap();

    let mnt = MountGuard::new(s(&reg), &tmp.path().join("mnt"), &[]);
    let path = mnt.dir.join("late.txt");
    let p = path.clone();
    let read = answered("read late.txt", move || std::fs::read(p));
    assert_eq!(read.unwrap(), b"from the end of time");
    let p = path.clone();
    let meta = answered("stat late.txt", move || std::fs::metadata(p)).unwrap();
    assert_eq!(meta.len(), 20);
    // A new version would need a later timestamp: refused, not wrapped.
    let p = path.clone();
    let written = answered("write late.txt", move || {
        use std::io::Write;
        // fsync reports the commit's error (close's is dropped by std).
        let mut f = std::fs::File::create(p)?;
        f.write_all(b"new")?;
        f.sync_all()
    });
    assert_eq!(
        written.err().and_then(|e| e.raw_os_error()),
        Some(libc::EIO),
        "{}",
        mnt.log_text()
    );
    assert!(
        mnt.log_text().contains("timestamped 18446744073709551615 ms"),
        "{}",
        mnt.log_text()
    );
    assert_serving(&mnt);
}

#[test]
fn issue_13_attribute_names_that_are_not_file_names_are_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_with_good_file(tmp.path());
    let ctx = Context::new().unwrap();
    let long = "n".repeat(300);
    let attrs = ["..", ".", "a//b", "up/../x", long.as_str()];
    let keys: Vec<String> = attrs.iter().map(|a| format!("{a}_size")).collect();
    let mut meta: Vec<(&str, MetaValue)> = vec![(TILEDB_ML_FRAMEWORK_KEY, MetaValue::text("PYTORCH"))];
    for k in &keys {
        meta.push((k, MetaValue::i64(8)));
    }
    dense_array(&ctx, s(&reg.join("names")), "offset", 1024, &attrs, &[], &meta);

    let mnt = MountGuard::new(s(&reg), &tmp.path().join("mnt"), &[]);
    let dir = mnt.dir.join("names");
    let listed = answered("readdir", move || {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    });
    assert_eq!(listed, ["metadata.json"]);
    let log = mnt.log_text();
    for a in attrs {
        let lines = log
            .lines()
            .filter(|l| l.contains(&format!("field {a:?} not shown")))
            .count();
        assert_eq!(lines, 1, "{a:?}: one log line each:\n{log}");
    }
    assert_serving(&mnt);
}

/// The amplified pickles of `tests/data/tiledb_ml/amplified/` (see
/// `make_amplified.py`): (file, framework, field, what naive decoding
/// materialises).
fn amplified() -> Vec<(String, String, String, u64)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiledb_ml/amplified");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    manifest
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let text = |k: &str| m[k].as_str().unwrap().to_string();
            let total = m["references"].as_u64().unwrap() * m["bytes_each"].as_u64().unwrap();
            (text("file"), text("framework"), text("field"), total)
        })
        .collect()
}

/// A model array at `uri` whose `field` holds the amplified pickle `file`.
fn amplified_array(ctx: &Context, uri: &str, file: &str, framework: &str, field: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiledb_ml/amplified");
    let pickle = std::fs::read(dir.join(file)).unwrap();
    let key = format!("{field}_size");
    dense_array(
        ctx,
        uri,
        "offset",
        1024,
        &[field],
        &pickle,
        &[
            (TILEDB_ML_FRAMEWORK_KEY, MetaValue::text(framework)),
            (&key, MetaValue::i64(pickle.len() as i64)),
        ],
    );
}

#[test]
fn issue_13_budgets_count_every_reference_a_view_copies() {
    use modelfs::registry::tiledb_ml::{MemoryPool, ModelOptions, TileDbMlModel, ViewLimits};
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Context::new().unwrap();
    let limits = ViewLimits {
        view_bytes: 32 << 20,
        model_bytes: 48 << 20,
    };
    let pool = MemoryPool::new(64 << 20);
    for (file, framework, field, naive) in amplified() {
        assert!(
            naive >= 1000 << 20,
            "{file}: the fixture should amplify to 1,000 MiB or more"
        );
        let uri = tmp.path().join(&file);
        amplified_array(&ctx, s(&uri), &file, &framework, &field);
        let options = ModelOptions {
            pool: pool.clone(),
            limits,
            ..ModelOptions::default()
        };
        let model = TileDbMlModel::open_with(&ctx, s(&uri), None, &options).unwrap();
        let failure = model
            .failures()
            .next()
            .unwrap_or_else(|| panic!("{file}: decoded whole"));
        assert_eq!(failure.field, field);
        let text = failure.to_string();
        assert!(
            text.contains(s(&uri)) && text.contains("more than the per-view limit of 33554432 bytes"),
            "{file}: {text}"
        );
        // A failed view gives its bytes back.
        assert!(model.materialized_bytes() < 1 << 20, "{file}");
        assert!(pool.used() < 1 << 20, "{file}: {} bytes still charged", pool.used());
    }
}

/// Peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    proc_status_bytes(&pid.to_string(), "VmHWM").unwrap()
}

#[test]
fn issue_13_a_mount_caps_what_views_materialise() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_with_good_file(tmp.path());
    let ctx = Context::new().unwrap();
    let cases = amplified();
    for (file, framework, field, _) in &cases {
        amplified_array(
            &ctx,
            s(&reg.join(file.trim_end_matches(".pkl"))),
            file,
            framework,
            field,
        );
    }
    let mnt = MountGuard::new(s(&reg), &tmp.path().join("mnt"), &["--view-memory", "64M"]);
    for (file, _, field, _) in &cases {
        let name = file.trim_end_matches(".pkl");
        let view = mnt.dir.join(name).join(format!("{field}.safetensors"));
        assert_eq!(read_errno(view), Some(libc::EIO), "{name}:\n{}", mnt.log_text());
        let log = mnt.log_text();
        let uri = s(&reg.join(name)).to_string();
        assert!(
            log.lines().any(|l| l.contains(&uri)
                && l.contains(&format!("field `{field}`"))
                && l.contains("limit of 67108864 bytes")),
            "{name}: no log line naming the array, the field and the limit:\n{log}"
        );
        assert!(std::fs::read(mnt.dir.join(name).join("metadata.json")).is_ok());
        assert_serving(&mnt);
    }
    let peak = peak_rss(mnt.pid());
    eprintln!("daemon peak RSS {} MiB", peak >> 20);
    assert!(peak < 512 << 20, "daemon peak RSS {} MiB", peak >> 20);
}

/// Whole-array fuzzer, case 5 (`tests/fuzz_arrays.rs`): a model field of
/// 140 KB in 1-byte tiles was read in one query, whose per-tile state took
/// the reader to 486 MiB. Fields are now read at most 4,096 tiles a query.
#[test]
fn issue_13_fuzz_case_5_a_field_in_one_byte_tiles_reads_in_small_queries() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_with_good_file(tmp.path());
    let ctx = Context::new().unwrap();
    let mut pickle = common::pseudo_random(5, 140_000);
    pickle[0] = 0x80;
    dense_array(
        &ctx,
        s(&reg.join("tiny_tiles")),
        "offset",
        1,
        &["model"],
        &pickle,
        &[
            (TILEDB_ML_FRAMEWORK_KEY, MetaValue::text("SKLEARN")),
            ("model_size", MetaValue::i64(pickle.len() as i64)),
        ],
    );
    let mnt = MountGuard::new(s(&reg), &tmp.path().join("mnt"), &[]);
    let shown = std::fs::read(mnt.dir.join("tiny_tiles/model.pkl")).unwrap();
    assert!(shown == pickle, "model.pkl differs from the field");
    let peak = peak_rss(mnt.pid());
    eprintln!("daemon peak RSS {} MiB", peak >> 20);
    assert!(peak < 160 << 20, "daemon peak RSS {} MiB", peak >> 20);
    assert_serving(&mnt);
}

/// Whole-array fuzzer, case 85: a file array of 1 MB in 7-byte tiles read
/// through the core peaked at 491 MiB (a 4 MiB read-ahead query spans
/// 600,000 tiles). File reads are now split at 4,096 tiles a query.
#[test]
fn issue_13_fuzz_case_85_a_file_in_seven_byte_tiles_reads_in_small_queries() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_with_good_file(tmp.path());
    let ctx = Context::new().unwrap();
    let data = common::pseudo_random(85, 1 << 20);
    dense_array(
        &ctx,
        s(&reg.join("tiny.bin")),
        "position",
        7,
        &["contents"],
        &data,
        &[("file_size", MetaValue::u64(data.len() as u64))],
    );
    let mnt = MountGuard::new(s(&reg), &tmp.path().join("mnt"), &[]);
    let shown = std::fs::read(mnt.dir.join("tiny.bin")).unwrap();
    assert!(shown == data, "the file differs");
    let peak = peak_rss(mnt.pid());
    eprintln!("daemon peak RSS {} MiB", peak >> 20);
    assert!(peak < 160 << 20, "daemon peak RSS {} MiB", peak >> 20);
    assert_serving(&mnt);
}
