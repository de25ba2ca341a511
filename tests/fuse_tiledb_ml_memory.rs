//! Issue #13 (1): one memory budget for decoded TileDB-ML models, through a
//! real mount. A model whose field is tens of MiB: its field is charged to
//! `--view-memory` while it is decoded, then the field and the tensors the
//! view had to materialise are spilled to disk and read back by range (the
//! daemon keeps almost nothing); the model is dropped when the kernel
//! forgets its directory and decoded again on the next lookup; a field that
//! does not fit in the budget is EIO with a log line naming the array, the
//! field and the limit.

mod common;

use std::path::Path;

use common::torch_pickle::{TorchTensor, state_dict_pickle};
use common::*;
use modelfs::registry::TILEDB_ML_FRAMEWORK_KEY;
use modelfs::tiledb::{Array, AttributeSpec, Context, Datatype, DimensionSpec, MetaValue, Mode, Schema};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A PyTorch model array at `uri` laid out as tiledb-ml lays it out, its
/// `model` field holding `pickle` (one field, 64 KiB tiles, so the test
/// writes it fast).
fn pytorch_array(ctx: &Context, uri: &str, pickle: &[u8]) {
    let attrs = [AttributeSpec {
        name: "model".into(),
        datatype: Datatype::UINT8,
        filters: vec![],
    }];
    let dim = DimensionSpec {
        name: "offset".into(),
        lo: 0,
        hi: u64::MAX - 1025,
        extent: 64 << 10,
        filters: vec![],
    };
    Schema::dense(ctx, &[dim], &attrs).unwrap().create_array(uri).unwrap();
    let mut array = Array::open(ctx, uri, Mode::Write).unwrap();
    array.write_cells("model", 0, pickle.len() as u64 - 1, pickle).unwrap();
    array
        .put_metadata(TILEDB_ML_FRAMEWORK_KEY, &MetaValue::text("PYTORCH"))
        .unwrap();
    array
        .put_metadata("model_size", &MetaValue::i64(pickle.len() as i64))
        .unwrap();
    array.close().unwrap();
}

/// The storages of the test model: a 16 MiB F32 weight read as it is, an
/// 8 MiB one read transposed (the view materialises it), and a bias.
struct Weights {
    big: Vec<u8>,
    square: Vec<u8>,
    bias: Vec<u8>,
}

const BIG: [i32; 2] = [1024, 4096];
const SQUARE: i32 = 1448;

fn weights() -> Weights {
    Weights {
        big: pseudo_random(1, 16 << 20),
        square: pseudo_random(2, (SQUARE * SQUARE * 4) as usize),
        bias: pseudo_random(3, 4096 * 4),
    }
}

fn model_pickle(w: &Weights) -> Vec<u8> {
    state_dict_pickle(&[
        TorchTensor {
            name: "big.weight",
            storage_class: "FloatStorage",
            elem: 4,
            storage: &w.big,
            offset: 0,
            shape: &BIG,
            stride: &[BIG[1], 1],
        },
        TorchTensor {
            name: "square.weight_t",
            storage_class: "FloatStorage",
            elem: 4,
            storage: &w.square,
            offset: 0,
            shape: &[SQUARE, SQUARE],
            stride: &[1, SQUARE],
        },
        TorchTensor {
            name: "big.bias",
            storage_class: "FloatStorage",
            elem: 4,
            storage: &w.bias,
            offset: 0,
            shape: &[4096],
            stride: &[1],
        },
    ])
}

/// The square storage read transposed, row-major.
fn transposed(square: &[u8]) -> Vec<u8> {
    let n = SQUARE as usize;
    let mut out = Vec::with_capacity(square.len());
    for i in 0..n {
        for j in 0..n {
            let at = (j * n + i) * 4;
            out.extend_from_slice(&square[at..at + 4]);
        }
    }
    out
}

fn check_view(bytes: &[u8], w: &Weights) {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("a valid safetensors file");
    assert_eq!(st.tensor("big.weight").unwrap().data(), &w.big[..]);
    assert_eq!(st.tensor("big.bias").unwrap().data(), &w.bias[..]);
    let t = st.tensor("square.weight_t").unwrap();
    assert_eq!(t.shape(), &[SQUARE as usize, SQUARE as usize]);
    assert!(
        t.data() == transposed(&w.square).as_slice(),
        "transposed tensor differs"
    );
}

fn stat(mnt: &MountGuard, key: &str) -> u64 {
    mnt.stats()[key].as_u64().unwrap_or_else(|| panic!("no counter {key}"))
}

/// Peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    proc_status_bytes(&pid.to_string(), "VmHWM").unwrap()
}

#[test]
fn issue_13_views_spill_to_disk_and_models_go_when_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("registry");
    std::fs::create_dir(&reg).unwrap();
    let ctx = Context::new().unwrap();
    let w = weights();
    let pickle = model_pickle(&w);
    pytorch_array(&ctx, s(&reg.join("mlp")), &pickle);
    let staging = tmp.path().join("staging");
    let mnt = MountGuard::new(
        s(&reg),
        &tmp.path().join("mnt"),
        &["--view-memory", "40M", "--staging-dir", s(&staging)],
    );
    let view = mnt.dir.join("mlp/model.safetensors");
    let bytes = std::fs::read(&view).unwrap();
    check_view(&bytes, &w);
    // The field (24 MiB) and the transposed copy (8 MiB) went to disk;
    // what stays charged is the header and metadata.json.
    let spilled = stat(&mnt, "view_bytes_spilled");
    let copy = (SQUARE * SQUARE * 4) as u64;
    assert_eq!(spilled, pickle.len() as u64 + copy, "the field once, and the copy");
    let used = stat(&mnt, "view_memory_used");
    assert!(used < 64 << 10, "{used} bytes still charged:\n{}", mnt.log_text());
    assert_eq!(stat(&mnt, "ml_models_decoded"), 1);
    // The spill file is unlinked: nothing left in the staging directory.
    let left: Vec<_> = std::fs::read_dir(&staging).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // Within the default 64 MiB chunk cache + --view-memory (40M) + 128
    // MiB: stricter than the --cache-size (112M) + ... the README promises.
    let peak = peak_rss(mnt.pid());
    eprintln!("daemon peak RSS {} MiB", peak >> 20);
    assert!(peak < (64 + 40 + 128) << 20, "daemon peak RSS {} MiB", peak >> 20);

    // An open file keeps reading once the kernel forgot the directory.
    let open = std::fs::File::open(&view).unwrap();
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let mut alive = stat(&mnt, "ml_models_alive");
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 8];
    open.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head[..], &bytes[..8]);
    drop(open);
    // Forgotten and closed (the kernel's release comes after close
    // returns): the model is gone, and its memory with it.
    let mut used = u64::MAX;
    for _ in 0..50 {
        std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        alive = stat(&mnt, "ml_models_alive");
        used = stat(&mnt, "view_memory_used");
        if alive == 0 && used == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        (alive, used),
        (0, 0),
        "the forgotten model is still alive:\n{}",
        mnt.log_text()
    );
    assert!(stat(&mnt, "ml_models_dropped") >= 1);
    // Looked up again: decoded again, same bytes.
    check_view(&std::fs::read(&view).unwrap(), &w);
    assert_eq!(stat(&mnt, "ml_models_decoded"), 2);
}

#[test]
fn issue_13_a_field_larger_than_the_view_memory_is_eio() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("registry");
    std::fs::create_dir(&reg).unwrap();
    let ctx = Context::new().unwrap();
    let w = weights();
    let uri = reg.join("mlp");
    pytorch_array(&ctx, s(&uri), &model_pickle(&w));
    let mnt = MountGuard::new(s(&reg), &tmp.path().join("mnt"), &["--view-memory", "16M"]);
    let err = std::fs::read(mnt.dir.join("mlp/model.safetensors")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let log = mnt.log_text();
    assert!(
        log.lines().any(|l| l.contains(s(&uri))
            && l.contains("field `model`")
            && l.contains("do not fit in memory")
            && l.contains("limit of 16777216 bytes")),
        "no log line naming the array, the field and the limit:\n{log}"
    );
    assert!(std::fs::read(mnt.dir.join("mlp/metadata.json")).is_ok());
    let used = stat(&mnt, "view_memory_used");
    assert!(
        used < 64 << 10,
        "the failed field gave its bytes back: {used} bytes still charged"
    );
}
