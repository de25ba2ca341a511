//! TileDB-ML model arrays end to end: the fixture arrays written by the real
//! `tiledb-ml` (copied to a temp dir, opened by TileDB), the library's
//! `TileDbMlModel`, and the real binary's `export` and `info`; plus arrays
//! made here with the binding for what the fixtures lack: a pickle naming
//! `os.system`, and size keys that lie.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use common::*;
use modelfs::registry::tiledb_ml::{FieldProblem, MAX_FIELD_BYTES, TileDbMlModel, ViewEntry};
use modelfs::registry::{self, TILEDB_ML_FRAMEWORK_KEY};
use modelfs::tiledb::{self, Array, AttributeSpec, Context, Datatype, DimensionSpec, MetaValue, Mode, Schema};
use serde_json::Value as Json;

const FIXTURES: [&str; 4] = ["keras_mlp", "pytorch_mixed", "pytorch_mlp", "sklearn_linreg"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `tests/data/tiledb_ml/fixtures`: real TileDB-ML arrays and the files a
/// mount shows for them (copied before a mount opens them).
fn fixtures_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiledb_ml/fixtures");
    assert!(dir.is_dir(), "{} missing", dir.display());
    dir
}

/// Copies a tree, leaving the copies writable (the fixtures are read-only).
fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

/// A plain directory holding a copy of every fixture array.
fn fixture_registry(tmp: &Path) -> PathBuf {
    let reg = tmp.join("registry");
    for name in FIXTURES {
        copy_tree(&fixtures_dir().join(name), &reg.join(name));
    }
    reg
}

fn expected_files(name: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = fixtures_dir().join("expected").join(name);
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// name -> (dtype, shape, bytes), and `__metadata__`, via the safetensors crate.
type Parsed = (BTreeMap<String, (String, Vec<usize>, Vec<u8>)>, HashMap<String, String>);

fn parse_safetensors(bytes: &[u8]) -> Parsed {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("loads in the safetensors crate");
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).expect("metadata");
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                (format!("{:?}", v.dtype()), v.shape().to_vec(), v.data().to_vec()),
            )
        })
        .collect();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

/// Asserts `got` holds what `expected/<name>/` holds: safetensors tensor by
/// tensor with `__metadata__`, `metadata.json` as JSON values, anything else
/// byte for byte.
fn assert_matches_expected(name: &str, got: &BTreeMap<String, Vec<u8>>) {
    let want = expected_files(name);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{name}: files"
    );
    for (file, want) in &want {
        let got = &got[file];
        if file.ends_with(".safetensors") {
            let (gt, gm) = parse_safetensors(got);
            let (wt, wm) = parse_safetensors(want);
            assert_eq!(
                gt.keys().collect::<Vec<_>>(),
                wt.keys().collect::<Vec<_>>(),
                "{name}/{file}"
            );
            for (tensor, w) in &wt {
                let g = &gt[tensor];
                assert_eq!((&g.0, &g.1), (&w.0, &w.1), "{name}/{file}/{tensor}");
                assert!(g.2 == w.2, "{name}/{file}/{tensor}: bytes differ");
            }
            assert_eq!(gm, wm, "{name}/{file}: __metadata__");
        } else if file.ends_with(".json") {
            let g: Json = serde_json::from_slice(got).unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
            let w: Json = serde_json::from_slice(want).unwrap();
            assert_eq!(g, w, "{name}/{file}");
        } else {
            assert!(got == want, "{name}/{file}: bytes differ");
        }
    }
}

#[test]
fn models_show_the_expected_files() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = fixture_registry(tmp.path());
    let ctx = Context::new().unwrap();
    for name in FIXTURES {
        let uri = s(&reg.join(name)).to_string();
        let model = TileDbMlModel::open(&ctx, &uri).unwrap();
        assert_eq!(model.uri(), uri);
        assert!(model.failures().next().is_none(), "{name}");
        let meta = Array::open(&ctx, &uri, Mode::Read).unwrap().metadata().unwrap();
        let framework = meta
            .iter()
            .find(|(k, _)| k == TILEDB_ML_FRAMEWORK_KEY)
            .unwrap()
            .1
            .as_str()
            .unwrap();
        assert_eq!(model.framework().to_string(), framework);
        for f in model.fields() {
            let key = meta.iter().find(|(k, _)| *k == format!("{}_size", f.name));
            assert_eq!(f.size, key.map_or(0, |(_, v)| v.as_u64().unwrap()), "{name}/{}", f.name);
            assert!(!f.stale);
        }
        let mut got = BTreeMap::new();
        for (path, entry) in model.entries() {
            let ViewEntry::Ready(file) = entry else {
                panic!("{name}/{path} failed")
            };
            let mut whole = Vec::new();
            file.write_to(&mut whole).unwrap();
            assert_eq!(whole.len() as u64, file.len());
            // Range reads of odd sizes agree with the whole file.
            let mut ranged = vec![0u8; whole.len()];
            let mut at = 0;
            while at < whole.len() {
                let end = (at + 97).min(whole.len());
                let n = file.read_at(at as u64, &mut ranged[at..end]).unwrap();
                assert!(n > 0);
                at += n;
            }
            assert_eq!(ranged, whole, "{name}/{path}");
            assert_eq!(file.read_at(file.len(), &mut [0u8; 8]).unwrap(), 0);
            if let Some(tensors) = file.tensors() {
                let (parsed, _) = parse_safetensors(&whole);
                assert_eq!(tensors.len(), parsed.len());
                for t in tensors {
                    let [b, e] = t.range;
                    assert_eq!(&whole[b as usize..e as usize], parsed[&t.name].2.as_slice());
                    assert_eq!((t.dtype, &t.shape), (parsed[&t.name].0.as_str(), &parsed[&t.name].1));
                }
            }
            assert!(model.entry(path).is_some());
            got.insert(path.clone(), whole);
        }
        assert!(model.entry("nothing.here").is_none());
        assert_matches_expected(name, &got);

        // The same version again, by its timestamp.
        let again = TileDbMlModel::open_at(&ctx, &uri, Some(model.version())).unwrap();
        assert_eq!(again.version(), model.version());
        assert_eq!(again.entries().len(), model.entries().len());
    }
}

#[test]
fn export_writes_the_expected_files() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = fixture_registry(tmp.path());
    // The whole directory of arrays, then one array on its own.
    let out = tmp.path().join("out");
    modelfs_ok(&["export", "--quiet", s(&reg), s(&out)]);
    for name in FIXTURES {
        let got = read_tree(&out.join(name))
            .into_iter()
            .map(|(p, b)| (p.to_str().unwrap().to_string(), b))
            .collect();
        assert_matches_expected(name, &got);
    }
    let one = tmp.path().join("one");
    modelfs_ok(&["export", "--quiet", s(&reg.join("pytorch_mlp")), s(&one)]);
    assert_same_tree(&out.join("pytorch_mlp"), &one);
    // An existing destination is refused unless --force.
    let again = modelfs(&["export", "--quiet", s(&reg.join("pytorch_mlp")), s(&one)]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    modelfs_ok(&["export", "--quiet", "--force", s(&reg.join("pytorch_mlp")), s(&one)]);
    assert_same_tree(&out.join("pytorch_mlp"), &one);
}

#[test]
fn info_shows_framework_fields_files_and_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = fixture_registry(tmp.path());
    let info = modelfs_ok(&["info", s(&reg.join("pytorch_mlp"))]);
    assert!(info.contains("kind:       TileDB-ML model array (PYTORCH)"), "{info}");
    let line = |prefix: &str| -> Vec<String> {
        let l = info
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}: {info}"));
        l.split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(line("model "), ["model", "2232", "bytes"]);
    assert_eq!(line("optimizer "), ["optimizer", "5541", "bytes"]);
    assert_eq!(line("tensorboard "), ["tensorboard", "empty"]);
    let expected = expected_files("pytorch_mlp");
    let size = |f: &str| expected[f].len().to_string();
    assert_eq!(
        line("model.safetensors"),
        ["model.safetensors", &size("model.safetensors"), "bytes"]
    );
    assert_eq!(line("optimizer.safetensors")[1], size("optimizer.safetensors"));
    assert_eq!(line("0.weight"), ["0.weight", "F32", "[16,", "8]"]);
    assert_eq!(line("state.0.exp_avg_sq"), ["state.0.exp_avg_sq", "F32", "[16,", "8]"]);
    assert!(line("metadata.json")[1].parse::<u64>().unwrap() > 100);
    // Schema and metadata still follow.
    assert!(info.contains("dimension offset UINT64"), "{info}");
    assert!(info.contains("model_size (INT64) = 2232"), "{info}");

    let mixed = modelfs_ok(&["info", s(&reg.join("pytorch_mixed"))]);
    for row in [
        "bf.weight  BF16",
        "half.weight  F16",
        "mask  BOOL",
        "norm.num_batches_tracked  I64",
    ] {
        let (name, dtype) = row.split_once("  ").unwrap();
        assert!(
            mixed.lines().any(|l| l.split_whitespace().take(2).eq([name, dtype])),
            "{row} missing:\n{mixed}"
        );
    }
    let sk = modelfs_ok(&["info", s(&reg.join("sklearn_linreg"))]);
    assert!(
        sk.contains("TileDB-ML model array (SKLEARN)") && sk.contains("model.pkl"),
        "{sk}"
    );
}

/// A TileDB-ML-shaped array with one field, `model`, as tiledb-ml lays it
/// out, holding `pickle` and the size key `size`.
fn one_field_array(ctx: &Context, uri: &str, framework: &str, pickle: &[u8], size: MetaValue) {
    let zstd = vec![tiledb::Filter::Compress(tiledb::FilterType::ZSTD, Some(-1))];
    let schema = Schema::dense(
        ctx,
        &[DimensionSpec {
            name: "offset".into(),
            lo: 0,
            hi: u64::MAX - 1025,
            extent: 1024,
            filters: zstd.clone(),
        }],
        &[AttributeSpec {
            name: "model".into(),
            datatype: Datatype::UINT8,
            filters: zstd,
        }],
    )
    .unwrap();
    schema.create_array(uri).unwrap();
    let mut array = Array::open(ctx, uri, Mode::Write).unwrap();
    array.write_cells("model", 0, pickle.len() as u64 - 1, pickle).unwrap();
    array.put_metadata("model_size", &size).unwrap();
    array
        .put_metadata(TILEDB_ML_FRAMEWORK_KEY, &MetaValue::text(framework))
        .unwrap();
    array
        .put_metadata("TILEDB_ML_MODEL_STAGE", &MetaValue::text("STAGING"))
        .unwrap();
    array.close().unwrap();
}

/// A state_dict pickle that, if Python's `pickle.loads` ran it, would call
/// `os.system("touch <marker>")` inside its OrderedDict.
fn os_system_pickle(marker: &Path) -> Vec<u8> {
    let command = format!("touch {}", marker.display());
    let mut evil =
        b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x06\x00\x00\x00weightq\x02cos\nsystem\nq\x03X".to_vec();
    evil.extend_from_slice(&(command.len() as u32).to_le_bytes());
    evil.extend_from_slice(command.as_bytes());
    evil.extend_from_slice(b"q\x04\x85q\x05Rq\x06s.");
    evil
}

#[test]
fn a_pickle_calling_os_system_is_refused_and_never_run() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("pwned");
    let evil = os_system_pickle(&marker);
    let reg = tmp.path().join("registry");
    std::fs::create_dir(&reg).unwrap();
    let uri = reg.join("evil");
    let ctx = Context::new().unwrap();
    one_field_array(&ctx, s(&uri), "PYTORCH", &evil, MetaValue::i64(evil.len() as i64));

    // The library: metadata.json is there, the model is a failure naming the global.
    let model = TileDbMlModel::open(&ctx, s(&uri)).unwrap();
    let paths: Vec<&str> = model.entries().iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["metadata.json", "model.safetensors"]);
    let failure = model.failures().next().unwrap();
    assert_eq!(failure.forbidden_global(), Some(("os", "system")));
    assert_eq!(failure.field, "model");
    let err: registry::Error = failure.clone().into();
    assert!(err.to_string().contains("forbidden global os.system"), "{err}");

    // The binary: exports what it can, names the array and the global, fails.
    let out = tmp.path().join("out");
    let run = modelfs(&["export", "--quiet", s(&reg), s(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains("forbidden global os.system"), "{stderr}");
    assert!(stderr.contains(s(&uri)), "{stderr}");
    let meta: Json = serde_json::from_slice(&std::fs::read(out.join("evil/metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["model_size"], evil.len());
    assert_eq!(meta[TILEDB_ML_FRAMEWORK_KEY], "PYTORCH");
    assert!(!out.join("evil/model.safetensors").exists());
    let info = modelfs_ok(&["info", s(&uri)]);
    assert!(
        info.contains("not shown: pickle calls forbidden global os.system"),
        "{info}"
    );
    assert!(!marker.exists(), "the pickle ran");
}

#[test]
fn size_keys_that_lie_are_field_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Context::new().unwrap();
    let pickle = b"\x80\x04]\x94.".as_slice();
    let cases = [
        ("huge", MetaValue::i64(5 << 30)),
        ("past", MetaValue::i64(4096)),
        ("negative", MetaValue::i64(-1)),
    ];
    for (name, size) in cases {
        let uri = tmp.path().join(name);
        one_field_array(&ctx, s(&uri), "TENSORFLOW KERAS", pickle, size);
        let model = TileDbMlModel::open(&ctx, s(&uri)).unwrap();
        assert!(matches!(model.entry("metadata.json"), Some(ViewEntry::Ready(_))));
        let f = model.failures().next().unwrap_or_else(|| panic!("{name}: no failure"));
        match (name, &f.problem) {
            ("huge", FieldProblem::TooLarge { size, limit, .. }) => {
                assert_eq!((*size, *limit), (5 << 30, MAX_FIELD_BYTES))
            }
            ("past", FieldProblem::PastWritten { written, .. }) => assert_eq!(*written, pickle.len() as u64),
            ("negative", FieldProblem::BadSize { key }) => assert_eq!(key, "model_size"),
            _ => panic!("{name}: {f}"),
        }
        assert!(model.entry("model.safetensors").is_some());
    }
    // The right size: an empty weight list is an empty safetensors file.
    let uri = tmp.path().join("right");
    one_field_array(
        &ctx,
        s(&uri),
        "TENSORFLOW KERAS",
        pickle,
        MetaValue::i64(pickle.len() as i64),
    );
    let model = TileDbMlModel::open(&ctx, s(&uri)).unwrap();
    match model.entry("model.safetensors") {
        Some(ViewEntry::Ready(f)) => assert_eq!(f.tensors().map(<[_]>::len), Some(0)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_arrays_are_not_tiledb_ml_models() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("a.bin");
    std::fs::write(&src, b"abc").unwrap();
    let uri = tmp.path().join("reg/a.bin");
    modelfs_ok(&["import", "--quiet", s(&src), s(&uri)]);
    let ctx = Context::new().unwrap();
    match TileDbMlModel::open(&ctx, s(&uri)) {
        Err(registry::Error::NotATileDbMlModel { reason, .. }) => {
            assert!(reason.contains("TILEDB_ML_MODEL"), "{reason}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a file array opened as a model"),
    }
    let uri = tmp.path().join("jax");
    one_field_array(&ctx, s(&uri), "JAX", b"\x80\x04].", MetaValue::i64(4));
    match TileDbMlModel::open(&ctx, s(&uri)) {
        Err(e) => assert!(e.to_string().contains("unknown framework \"JAX\""), "{e}"),
        Ok(_) => panic!("JAX opened"),
    }
}

#[test]
fn mounted_models_show_the_expected_files_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = fixture_registry(tmp.path());
    let mnt = MountGuard::new(s(&reg), &tmp.path().join("mnt"), &[]);
    let mut names: Vec<String> = std::fs::read_dir(&mnt.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, FIXTURES);
    for name in FIXTURES {
        let dir = mnt.dir.join(name);
        assert!(std::fs::metadata(&dir).unwrap().is_dir());
        let got: BTreeMap<String, Vec<u8>> = read_tree(&dir)
            .into_iter()
            .map(|(p, b)| (p.to_string_lossy().into_owned(), b))
            .collect();
        assert_matches_expected(name, &got);
        for (file, bytes) in &got {
            let meta = std::fs::metadata(dir.join(file)).unwrap();
            assert_eq!(meta.len(), bytes.len() as u64, "{name}/{file}: stat size");
            assert!(meta.permissions().readonly());
        }
        // Read-only, with a log line.
        let err = std::fs::write(dir.join("new.txt"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{name}");
        let err = std::fs::remove_file(dir.join("metadata.json")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{name}");
    }
    assert!(mnt.log_text().contains("shown read-only"), "{}", mnt.log_text());
}

#[test]
fn a_mounted_pickle_naming_os_system_shows_metadata_and_eio() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("pwned");
    let evil = os_system_pickle(&marker);
    let reg = tmp.path().join("registry");
    std::fs::create_dir(&reg).unwrap();
    let ctx = Context::new().unwrap();
    one_field_array(
        &ctx,
        s(&reg.join("evil")),
        "PYTORCH",
        &evil,
        MetaValue::i64(evil.len() as i64),
    );
    let mnt = MountGuard::new(s(&reg), &tmp.path().join("mnt"), &[]);
    let meta: Json = serde_json::from_slice(&std::fs::read(mnt.dir.join("evil/metadata.json")).unwrap()).unwrap();
    assert_eq!(meta[TILEDB_ML_FRAMEWORK_KEY], "PYTORCH");
    let err = std::fs::read(mnt.dir.join("evil/model.safetensors")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let log = mnt.log_text();
    assert!(
        log.contains("forbidden global os.system"),
        "no log line names the global:\n{log}"
    );
    assert!(!marker.exists(), "the pickle ran");
}
