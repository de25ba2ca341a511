//! Issue #13 (6): whole-array fuzzing. Each case builds, from one seed, a
//! registry of random and mutated TileDB arrays with the binding (as
//! TileDB-Py could write them):
//! - schemas: dimension name, domain and tile extent, attribute names
//!   (including names no file system can show) and datatypes, filters;
//! - metadata: `<field>_size` keys right, off by a little, negative, huge or
//!   of the wrong type; the framework key; a file array's `file_size`,
//!   kind, timestamp, header size and tensor index;
//! - cells: mutated real pickles (`tests/data/tiledb_ml`: the fixtures'
//!   fields, hand-made, hostile and amplifying pickles), PyTorch state
//!   dicts with random shapes, strides and offsets, mutated safetensors
//!   files, random bytes;
//!
//! then lists, stats, opens and reads all of it through the filesystem core
//! (`ModelFs`, what a mount serves) and opens each array as `modelfs info`
//! does. Any error is fine; a panic, an abort, a hang or resident memory
//! over the limit is a failure.
//!
//! The cases run in a child process (this test binary again) watched by
//! the parent, which samples its resident memory every 10 ms and kills it
//! over the limit or when one case takes too long, then names the seed of
//! the case that failed.
//!
//! `scripts/test.sh` (`cargo test`) runs the default: 80 cases from seed 1,
//! about a minute in a debug build. Long runs:
//!
//! ```sh
//! MODELFS_FUZZ_SEED=$RANDOM MODELFS_FUZZ_CASES=1000000 MODELFS_FUZZ_SECONDS=3600 \
//!     nice -n 19 cargo test --release --test fuzz_arrays -- --nocapture
//! ```
//!
//! `MODELFS_FUZZ_RSS_MIB` sets the limit (default 512: the core runs with a
//! 16 MiB chunk cache and 256 MiB of view memory). A failure prints the
//! command that replays its case alone.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::torch_pickle::{TorchTensor, state_dict_pickle};
use modelfs::fs::{Config, Ino, Kind, ModelFs};
use modelfs::registry::{Registry, TILEDB_ML_FRAMEWORK_KEY};
use modelfs::tiledb::{
    Array, AttributeSpec, Context, Datatype, DimensionSpec, Filter, FilterType, MetaValue, Mode, Schema,
};

const CHILD_ENV: &str = "MODELFS_FUZZ_CHILD";
/// One case may take this long before it counts as a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// Cases per child process (a fresh process bounds what a leak could add).
const CASES_PER_CHILD: u64 = 500;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn fuzz_whole_arrays() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let first = env_u64("MODELFS_FUZZ_SEED", 1);
    let cases = env_u64("MODELFS_FUZZ_CASES", 80);
    let seconds = env_u64("MODELFS_FUZZ_SECONDS", 0);
    let limit = env_u64("MODELFS_FUZZ_RSS_MIB", 512) << 20;
    let start = Instant::now();
    let mut next = first;
    let mut peak = (0u64, first);
    while next < first.saturating_add(cases) {
        if seconds > 0 && start.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
        let count = CASES_PER_CHILD.min(first.saturating_add(cases) - next);
        let (done, child_peak) = run_child(next, count, limit);
        peak = peak.max(child_peak);
        next = done;
    }
    eprintln!(
        "fuzz: {} cases (seeds {first}..{next}) in {:.0} s, no failure; peak RSS {} MiB in case {} (limit {} MiB)",
        next - first,
        start.elapsed().as_secs_f64(),
        peak.0 >> 20,
        peak.1,
        limit >> 20
    );
}

/// Runs cases `first..first + count` in a child; returns the seed after
/// the last one done and the child's peak RSS with the case it was seen
/// in. Panics naming the failing seed on a crash, a hang or memory over
/// `limit`.
fn run_child(first: u64, count: u64, limit: u64) -> (u64, (u64, u64)) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fuzz_whole_arrays", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{first}:{count}"))
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the fuzz child");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let err_text = std::thread::spawn(move || {
        let mut tail = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
        tail.join("\n")
    });
    let mut current: Option<u64> = None;
    let mut done = first;
    let mut case_started = Instant::now();
    let mut peak = (0u64, first);
    let replay = |seed: u64| {
        format!("replay: MODELFS_FUZZ_SEED={seed} MODELFS_FUZZ_CASES=1 cargo test --test fuzz_arrays -- --nocapture")
    };
    loop {
        while let Ok(line) = rx.try_recv() {
            if let Some(seed) = line.strip_prefix("case ").and_then(|s| s.parse().ok()) {
                current = Some(seed);
                case_started = Instant::now();
            } else if let Some(seed) = line.strip_prefix("done ").and_then(|s| s.parse::<u64>().ok()) {
                done = seed + 1;
                current = None;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            // Lines sent before the exit.
            std::thread::sleep(Duration::from_millis(50));
            while let Ok(line) = rx.try_recv() {
                if let Some(seed) = line.strip_prefix("done ").and_then(|s| s.parse::<u64>().ok()) {
                    done = seed + 1;
                    current = None;
                }
            }
            let tail = err_text.join().unwrap_or_default();
            match (status.success(), current) {
                (true, None) => return (done, peak),
                (_, Some(seed)) => panic!("fuzz case {seed} crashed ({status}):\n{tail}\n{}", replay(seed)),
                (false, None) => panic!("fuzz child failed ({status}) between cases:\n{tail}"),
            }
        }
        let rss = rss_bytes(pid);
        if rss > peak.0 {
            peak = (rss, current.unwrap_or(done));
        }
        let over = rss > limit;
        let hung = current.is_some() && case_started.elapsed() > CASE_TIMEOUT;
        if over || hung {
            let _ = child.kill();
            let _ = child.wait();
            let seed = current.unwrap_or(done);
            let what = if over {
                format!("resident memory {} MiB over the {} MiB limit", rss >> 20, limit >> 20)
            } else {
                format!("no answer within {} s", CASE_TIMEOUT.as_secs())
            };
            panic!("fuzz case {seed}: {what}\n{}", replay(seed));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resident memory of `pid` now, in bytes (0 once it is gone).
fn rss_bytes(pid: u32) -> u64 {
    common::proc_status_bytes(&pid.to_string(), "VmRSS").unwrap_or(0)
}

fn child() {
    let spec = std::env::var(CHILD_ENV).unwrap();
    let (first, count) = spec.split_once(':').unwrap();
    let first: u64 = first.parse().unwrap();
    let count: u64 = count.parse().unwrap();
    let seeds = seed_pickles();
    for seed in first..first.saturating_add(count) {
        println!("case {seed}");
        run_case(seed, &seeds);
        println!("done {seed}");
    }
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The pickles under `tests/data/tiledb_ml`, real and made up.
fn seed_pickles() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiledb_ml");
    let mut out = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "pkl") {
                out.push(std::fs::read(&p).unwrap());
            }
        }
    }
    assert!(out.len() > 20, "seed pickles missing");
    out
}

/// `data` changed a few times in the ways that break parsers: bit flips,
/// overwritten bytes, boundary integers, inserted, deleted, duplicated and
/// cut ranges.
fn mutate(rng: &mut Rng, mut data: Vec<u8>) -> Vec<u8> {
    let rounds = 1 + rng.below(6);
    for _ in 0..rounds {
        let len = data.len() as u64;
        let at = rng.below(len.max(1)) as usize;
        match rng.below(8) {
            0 if !data.is_empty() => data[at] ^= 1 << rng.below(8),
            1 if !data.is_empty() => data[at] = rng.next() as u8,
            2 => {
                let v = *rng.pick(&[
                    0u64,
                    1,
                    0x7f,
                    0x80,
                    0xff,
                    0x7fff_ffff,
                    0xffff_ffff,
                    u64::MAX,
                    1 << 40,
                    1 << 62,
                ]);
                let bytes = v.to_le_bytes();
                let n = *rng.pick(&[1usize, 2, 4, 8]);
                for (i, b) in bytes.iter().take(n).enumerate() {
                    if let Some(d) = data.get_mut(at + i) {
                        *d = *b;
                    }
                }
            }
            3 => {
                let n = 1 + rng.below(16) as usize;
                let extra = rng.bytes(n);
                let at = at.min(data.len());
                data.splice(at..at, extra);
            }
            4 if !data.is_empty() => {
                let end = (at + 1 + rng.below(64) as usize).min(data.len());
                data.drain(at..end);
            }
            5 if !data.is_empty() => {
                let end = (at + 1 + rng.below(256) as usize).min(data.len());
                let piece = data[at..end].to_vec();
                let to = rng.below(len) as usize;
                let times = 1 + rng.below(4) as usize;
                for _ in 0..times {
                    let to = to.min(data.len());
                    data.splice(to..to, piece.iter().copied());
                }
            }
            6 => data.truncate(at),
            _ => {}
        }
    }
    data
}

/// A PyTorch state dict with random dtypes, shapes, strides and offsets,
/// valid or not.
fn random_state_dict(rng: &mut Rng) -> Vec<u8> {
    const CLASSES: [(&str, usize); 6] = [
        ("FloatStorage", 4),
        ("HalfStorage", 2),
        ("BFloat16Storage", 2),
        ("LongStorage", 8),
        ("BoolStorage", 1),
        ("DoubleStorage", 8),
    ];
    let n = 1 + rng.below(4) as usize;
    let mut storages = Vec::new();
    let mut specs = Vec::new();
    for i in 0..n {
        let (class, elem) = *rng.pick(&CLASSES);
        let numel = *rng.pick(&[0usize, 1, 7, 64, 1000, 1 << 16, 1 << 20]);
        storages.push((class, elem, rng.bytes(numel * elem)));
        let dims = rng.below(4) as usize;
        let mut shape: Vec<i32> = (0..dims)
            .map(|_| *rng.pick(&[0, 1, 2, 3, 8, 64, 1024, 65536, i32::MAX]))
            .collect();
        let mut stride = Vec::new();
        let mut acc = 1i64;
        for d in shape.iter().rev() {
            stride.push(acc.min(i32::MAX as i64) as i32);
            acc = acc.saturating_mul(*d as i64);
        }
        stride.reverse();
        if rng.chance(30) {
            stride.reverse();
        }
        if rng.chance(15) {
            for s in &mut stride {
                *s = *rng.pick(&[0, 1, -1, 3, i32::MAX]);
            }
        }
        if rng.chance(10) {
            shape.push(-1);
        }
        if numel > 0 && rng.chance(70) {
            // Usually a shape that fits the storage.
            shape = vec![numel as i32];
            stride = vec![1];
            if numel.is_multiple_of(8) && rng.chance(50) {
                shape = vec![8, numel as i32 / 8];
                stride = if rng.chance(50) {
                    vec![numel as i32 / 8, 1]
                } else {
                    vec![1, 8]
                };
            }
        }
        let offset = *rng.pick(&[0, 0, 0, 1, 7, -1, i32::MAX]);
        specs.push((format!("layer{i}.weight"), shape, stride, offset));
    }
    let tensors: Vec<TorchTensor<'_>> = specs
        .iter()
        .zip(&storages)
        .map(|((name, shape, stride, offset), (class, elem, data))| TorchTensor {
            name,
            storage_class: class,
            elem: *elem,
            storage: data,
            offset: *offset,
            shape,
            stride,
        })
        .collect();
    state_dict_pickle(&tensors)
}

/// Bytes for a field: a seed pickle, a generated state dict or random
/// bytes, usually mutated.
fn field_bytes(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let base = match rng.below(10) {
        0..=5 => rng.pick(seeds).clone(),
        6..=8 => random_state_dict(rng),
        _ => {
            let n = rng.below(4096) as usize;
            rng.bytes(n)
        }
    };
    if rng.chance(75) { mutate(rng, base) } else { base }
}

/// A metadata value: usually `value` as INT64, else something wrong.
fn size_value(rng: &mut Rng, len: u64) -> MetaValue {
    match rng.below(12) {
        0..=6 => MetaValue::i64(len as i64),
        7 => MetaValue::i64(*rng.pick(&[-1i64, 0, i64::MAX, 1 << 32, 4 << 30, (4 << 30) + 1])),
        8 => MetaValue::u64(len.saturating_add(rng.below(3)).saturating_sub(1)),
        9 => MetaValue::u64(*rng.pick(&[u64::MAX, 1 << 62, 1 << 40])),
        10 => MetaValue::text(&len.to_string()),
        _ => MetaValue {
            datatype: Datatype::FLOAT64,
            num: 1,
            bytes: (len as f64).to_le_bytes().to_vec(),
        },
    }
}

fn attribute_name(rng: &mut Rng) -> String {
    let long = "n".repeat(300);
    (*rng.pick(&[
        "model",
        "model",
        "optimizer",
        "tensorboard",
        "contents",
        "weights",
        "..",
        ".",
        "a/b",
        "a//b",
        "x\u{1}y",
        long.as_str(),
    ]))
    .to_string()
}

/// Writes `data` into cells `[0, len)` of `attr`, at most
/// [`WRITE_TILES`] tiles per query (a TileDB write holds state per tile:
/// 1.2 M one-byte tiles in one query took this process to 977 MiB, which
/// is the harness's cost, not the reader's), and at most 64 queries.
fn write_cells(array: &Array, attr: &str, extent: u64, data: &[u8]) {
    let per = usize::try_from(extent.max(1).saturating_mul(WRITE_TILES)).unwrap_or(usize::MAX);
    for (i, piece) in data.chunks(per).take(64).enumerate() {
        let lo = (i * per) as u64;
        if array.write_cells(attr, lo, lo + piece.len() as u64 - 1, piece).is_err() {
            return;
        }
    }
}

const WRITE_TILES: u64 = 4096;

fn schema(rng: &mut Rng, ctx: &Context, dim_name: &str, attrs: &[String], len: u64) -> Option<(Schema, u64)> {
    let near = len.saturating_add(rng.below(4096));
    let hi = *rng.pick(&[u64::MAX - 1025, (1 << 62) - 1, (1 << 40) - 1, near]);
    let extent = match rng.below(10) {
        0 => 1,
        1 => 7,
        2..=4 => 1024,
        5 => 64 << 10,
        6 => 1 << 20,
        7 => (64 << 20) + 1,
        8 => 1 << 40,
        _ => 1 + rng.below(1 << 20),
    };
    let filters = |rng: &mut Rng| match rng.below(4) {
        0 => vec![Filter::Compress(FilterType::ZSTD, None)],
        1 => vec![Filter::Compress(FilterType::GZIP, None)],
        _ => vec![],
    };
    let dim = DimensionSpec {
        name: dim_name.into(),
        lo: 0,
        hi,
        extent,
        filters: vec![],
    };
    let specs: Vec<AttributeSpec> = attrs
        .iter()
        .map(|name| AttributeSpec {
            name: name.clone(),
            datatype: if rng.chance(85) {
                Datatype::UINT8
            } else {
                *rng.pick(&[
                    Datatype::INT32,
                    Datatype::FLOAT64,
                    Datatype::CHAR,
                    Datatype::UINT64,
                    Datatype::INT8,
                ])
            },
            filters: filters(rng),
        })
        .collect();
    if std::env::var_os("MODELFS_FUZZ_VERBOSE").is_some() {
        eprintln!("schema: {dim:?} {specs:?} (cells {len})");
    }
    Schema::dense(ctx, &[dim], &specs).ok().map(|s| (s, extent))
}

/// A TileDB-ML model array (or something close to one) at `uri`.
fn model_array(rng: &mut Rng, ctx: &Context, uri: &str, seeds: &[Vec<u8>]) {
    let mut attrs = vec![attribute_name(rng)];
    if rng.chance(25) {
        attrs.push(attribute_name(rng));
    }
    attrs.dedup();
    let data = field_bytes(rng, seeds);
    let dim = if rng.chance(90) { "offset" } else { "position" };
    let Some((schema, extent)) = schema(rng, ctx, dim, &attrs, data.len() as u64) else {
        return;
    };
    if schema.create_array(uri).is_err() {
        return;
    }
    let Ok(mut array) = Array::open(ctx, uri, Mode::Write) else {
        return;
    };
    // A dense write needs every attribute: one attribute gets its cells.
    if let [only] = attrs.as_slice()
        && !data.is_empty()
        && rng.chance(90)
    {
        write_cells(&array, only, extent, &data);
    }
    let framework = match rng.below(10) {
        0..=4 => MetaValue::text("PYTORCH"),
        5..=6 => MetaValue::text("TENSORFLOW KERAS"),
        7 => MetaValue::text("SKLEARN"),
        8 => MetaValue::text("JAX"),
        _ => MetaValue::i64(1),
    };
    let _ = array.put_metadata(TILEDB_ML_FRAMEWORK_KEY, &framework);
    for a in &attrs {
        if rng.chance(90) {
            let v = size_value(rng, data.len() as u64);
            let _ = array.put_metadata(&format!("{a}_size"), &v);
        }
    }
    if rng.chance(30) {
        let blob = MetaValue {
            datatype: Datatype::BLOB,
            num: 0,
            bytes: mutate(
                rng,
                br#"{"class_name": "Sequential", "config": {"layers": []}}"#.to_vec(),
            ),
        };
        let blob = MetaValue {
            num: blob.bytes.len() as u32,
            ..blob
        };
        if blob.num > 0 {
            let _ = array.put_metadata("model_config", &blob);
        }
    }
    let _ = array.close();
}

/// A safetensors file, valid or mutated.
fn safetensors_file(rng: &mut Rng) -> Vec<u8> {
    let count = 1 + rng.below(12) as usize;
    let total = *rng.pick(&[64usize, 4096, 1 << 20]);
    let bytes = common::safetensors_bytes(count, total.max(count * 16));
    if rng.chance(60) { mutate(rng, bytes) } else { bytes }
}

const KINDS: [&str; 5] = ["safetensors", "safetensors", "file", "pickle", ""];

/// A modelfs file array (or something close to one) at `uri`.
fn file_array(rng: &mut Rng, ctx: &Context, uri: &str) {
    let data = if rng.chance(70) {
        safetensors_file(rng)
    } else {
        let n = rng.below(1 << 16) as usize;
        rng.bytes(n)
    };
    let attr = if rng.chance(90) {
        "contents".to_string()
    } else {
        attribute_name(rng)
    };
    let Some((schema, extent)) = schema(rng, ctx, "position", std::slice::from_ref(&attr), data.len() as u64) else {
        return;
    };
    if schema.create_array(uri).is_err() {
        return;
    }
    let Ok(mut array) = Array::open(ctx, uri, Mode::Write) else {
        return;
    };
    if !data.is_empty() && rng.chance(95) {
        write_cells(&array, &attr, extent, &data);
    }
    let len = data.len() as u64;
    let header = data
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0);
    let tensors = serde_json::json!({
        "header_len": header,
        "metadata": {},
        "tensors": [{"name": "w", "dtype": "F32", "shape": [2], "range": [8 + header, 16 + header]}],
    })
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let keys: Vec<(&str, MetaValue)> = vec![
        ("file_size", size_value(rng, len)),
        ("modelfs.format", MetaValue::u64(*rng.pick(&[1, 1, 1, 2, 0]))),
        (
            "modelfs.kind",
            MetaValue::text(KINDS[rng.below(KINDS.len() as u64) as usize]),
        ),
        (
            "modelfs.timestamp",
            MetaValue::u64(*rng.pick(&[now + 1000, now + 1000, 0, 1, u64::MAX, u64::MAX - 1])),
        ),
        ("modelfs.header_size", size_value(rng, header)),
        (
            "modelfs.tensors",
            MetaValue::text(&String::from_utf8_lossy(&mutate(rng, tensors.into_bytes()))),
        ),
    ];
    for (k, v) in keys {
        if rng.chance(92) {
            let _ = array.put_metadata(k, &v);
        }
    }
    let _ = array.close();
}

fn run_case(seed: u64, seeds: &[Vec<u8>]) {
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("registry");
    std::fs::create_dir(&reg).unwrap();
    let ctx = Context::new().unwrap();
    let n = 1 + rng.below(3);
    for i in 0..n {
        let dir = if rng.chance(20) { reg.join("sub") } else { reg.clone() };
        std::fs::create_dir_all(&dir).unwrap();
        let uri = dir.join(format!("a{i}"));
        let uri = uri.to_str().unwrap();
        if rng.chance(65) {
            model_array(&mut rng, &ctx, uri, seeds);
        } else {
            file_array(&mut rng, &ctx, uri);
        }
        // What `modelfs info` and `export` open.
        let _ = modelfs::registry::tiledb_ml::TileDbMlModel::open(&ctx, uri);
        if std::env::var_os("MODELFS_FUZZ_VERBOSE").is_some() {
            eprintln!("array {i} made and opened: peak RSS {} MiB", hwm_bytes() >> 20);
        }
    }
    let verbose = std::env::var_os("MODELFS_FUZZ_VERBOSE").is_some();
    if verbose {
        eprintln!("arrays made: peak RSS {} MiB", hwm_bytes() >> 20);
    }
    let registry = Registry::new(Context::new().unwrap()).unwrap();
    let config = Config {
        cache_bytes: 16 << 20,
        staging_dir: tmp.path().join("staging"),
        view_memory_bytes: 256 << 20,
        ..Config::default()
    };
    let Ok(fs) = ModelFs::new(std::sync::Arc::new(registry), reg.to_str().unwrap(), config) else {
        return;
    };
    walk(&fs, &mut rng, Ino::ROOT, 0);
    if verbose {
        eprintln!("read through the core: peak RSS {} MiB", hwm_bytes() >> 20);
    }
}

/// Lists `dir`, stats every entry, reads every file, recurses.
fn walk(fs: &ModelFs, rng: &mut Rng, dir: Ino, depth: u32) {
    let Ok(fh) = fs.opendir(dir) else { return };
    let items = fs.readdir(fh, 0).unwrap_or_default();
    fs.releasedir(fh);
    for item in items {
        if item.name == "." || item.name == ".." {
            continue;
        }
        let Ok(attr) = fs.lookup(dir, &item.name) else { continue };
        let _ = fs.getattr(attr.ino);
        match attr.kind {
            Kind::Dir if depth < 4 => walk(fs, rng, attr.ino, depth + 1),
            Kind::File => read_file(fs, rng, attr.ino, attr.size),
            _ => {}
        }
        fs.forget(attr.ino, 1);
    }
}

/// Reads the start of a file in order (at most 8 MiB), then at offsets
/// around its end and past it.
fn read_file(fs: &ModelFs, rng: &mut Rng, ino: Ino, size: u64) {
    let Ok(opened) = fs.open(ino, false, false, None) else {
        return;
    };
    let fh = opened.fh;
    let mut at = 0u64;
    while at < size.min(8 << 20) {
        match fs.read(fh, at, 1 << 20) {
            Ok(b) if !b.is_empty() => {
                assert!(b.len() <= 1 << 20, "read longer than asked");
                at += b.len() as u64;
            }
            _ => break,
        }
    }
    for off in [
        size.saturating_sub(1),
        size,
        size.saturating_add(1),
        u64::MAX - 1,
        rng.below(size.max(1)),
    ] {
        if let Ok(b) = fs.read(fh, off, 4096) {
            assert!(off < size || b.is_empty(), "bytes read past the end ({off} >= {size})");
        }
    }
    fs.release(fh);
}

/// Peak resident memory of this process so far, in bytes (verbose runs).
fn hwm_bytes() -> u64 {
    common::proc_status_bytes("self", "VmHWM").unwrap_or(0)
}
