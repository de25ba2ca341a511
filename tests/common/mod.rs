//! Helpers shared by the integration tests: running the real `modelfs`
//! binary, making realistic model directories, comparing trees.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use modelfs::tiledb::{Array, AttributeSpec, Context, Datatype, DimensionSpec, MetaValue, Mode, Schema};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

pub mod torch_pickle;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_modelfs")
}

/// Runs `modelfs ARGS`, returning its output; fails the test on a panic.
pub fn modelfs(args: &[&str]) -> Output {
    let out = Command::new(bin()).args(args).output().expect("run modelfs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "modelfs {args:?} panicked:\n{stderr}");
    out
}

/// Runs `modelfs ARGS` and requires success; returns stdout.
pub fn modelfs_ok(args: &[&str]) -> String {
    let out = modelfs(args);
    assert!(
        out.status.success(),
        "modelfs {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where a test's registry lives: `tmp/registry`, or, when
/// `MODELFS_TEST_S3` names an S3 bucket URI (`scripts/test_s3.sh` sets it and
/// TileDB's S3 settings), a fresh prefix in that bucket, so the same tests
/// run on both.
pub fn registry_uri(tmp: &Path) -> String {
    match std::env::var("MODELFS_TEST_S3") {
        Ok(base) if !base.is_empty() => {
            let unique = tmp.file_name().unwrap().to_string_lossy();
            format!(
                "{}/{}/registry",
                base.trim_end_matches('/'),
                unique.trim_start_matches('.')
            )
        }
        _ => tmp.join("registry").to_str().unwrap().to_string(),
    }
}

/// A registry holding one file, `seed.txt` ("seed"), and a read-write
/// mount of it at `tmp/mnt` with `extra` flags.
pub fn mounted(tmp: &Path, extra: &[&str]) -> (String, MountGuard) {
    let reg = registry_uri(tmp);
    let seed = tmp.join("seed.txt");
    std::fs::write(&seed, b"seed").unwrap();
    modelfs_ok(&["import", seed.to_str().unwrap(), &format!("{reg}/seed.txt")]);
    let mnt = MountGuard::new(&reg, &tmp.join("mnt"), extra);
    (reg, mnt)
}

/// Sets the access and modification times of `path` to the nanosecond
/// (`utimensat`, not following a symbolic link at the end).
pub fn set_times(path: &Path, atime: std::time::SystemTime, mtime: std::time::SystemTime) {
    let ts = |t: std::time::SystemTime| {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
        libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        }
    };
    let times = [ts(atime), ts(mtime)];
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A `kB` line (`VmRSS`, `VmHWM`, ...) of `/proc/<pid>/status` in bytes, or
/// `None` once the process is gone; `pid` may be `"self"`.
pub fn proc_status_bytes(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// True when the tests run against object storage.
pub fn on_s3() -> bool {
    std::env::var("MODELFS_TEST_S3").is_ok_and(|v| !v.is_empty())
}

/// A deterministic byte stream (xorshift), so files are not all zeros.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A safetensors file of `count` tensors mixing F32, F16, BF16, I64 and
/// BOOL, about `total_bytes` in all, shaped like a transformer's weights.
pub fn safetensors_bytes(count: usize, total_bytes: usize) -> Vec<u8> {
    let dtypes = [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::I64, Dtype::BOOL];
    let per = total_bytes / count;
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for i in 0..count {
        let dtype = dtypes[i % dtypes.len()];
        let width = dtype.bitsize() / 8;
        // Sizes from a few bytes (biases, flags) to several MiB (matrices).
        let elems = match i % 7 {
            0 => 1,
            1 => 3 + i % 5,
            _ => (per * (i % 7)) * 2 / 5 / width.max(1) + 1,
        };
        let cols = if elems > 64 && elems % 64 == 0 { 64 } else { 1 };
        let shape = if i % 11 == 0 {
            vec![]
        } else if cols > 1 {
            vec![elems / cols, cols]
        } else {
            vec![elems]
        };
        let elems = shape.iter().product::<usize>();
        let mut bytes = pseudo_random(i as u64 + 1, elems * width);
        if dtype == Dtype::BOOL {
            bytes.iter_mut().for_each(|b| *b &= 1);
        }
        data.push((format!("model.layers.{}.weight_{i}", i / 10), dtype, shape, bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize(views, Some(meta)).expect("serialize")
}

/// An HF-style model directory: configs, tokenizer, a nested subfolder with
/// its own config, a large `model.safetensors`, and edge-size files.
pub fn make_hf_model(dir: &Path, safetensors_mib: usize) -> PathBuf {
    let m = dir.join("tiny-model");
    std::fs::create_dir_all(m.join("text_encoder")).unwrap();
    std::fs::write(
        m.join("config.json"),
        br#"{"architectures":["TinyForCausalLM"],"hidden_size":64}"#,
    )
    .unwrap();
    std::fs::write(m.join("tokenizer.json"), pseudo_random(7, 20_000)).unwrap();
    std::fs::write(m.join("text_encoder/config.json"), br#"{"model_type":"clip"}"#).unwrap();
    std::fs::write(
        m.join("model.safetensors"),
        safetensors_bytes(320, safetensors_mib << 20),
    )
    .unwrap();
    m
}

/// Every regular file under `root`, by relative path, with its bytes.
pub fn read_tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Asserts two trees hold the same files with the same bytes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (read_tree(a), read_tree(b));
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        tb.keys().collect::<Vec<_>>(),
        "file lists differ"
    );
    for (k, v) in &ta {
        assert!(
            v == &tb[k],
            "{} differs ({} vs {} bytes)",
            k.display(),
            v.len(),
            tb[k].len()
        );
    }
}

/// A real FUSE mount served by `modelfs mount --foreground`, unmounted and
/// stopped on drop, even when the test fails.
pub struct MountGuard {
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<std::process::Child>,
}

fn is_mounted(dir: &Path) -> bool {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap_or("")))
}

impl MountGuard {
    /// Mounts `registry` at `dir` (created if missing) with extra flags.
    pub fn new(registry: &str, dir: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .args(["mount", "--foreground", registry, dir.to_str().unwrap()])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("MODELFS_TEST_RUST_LOG").unwrap_or_else(|_| "info,fuser=error".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn modelfs mount");
        let mut guard = MountGuard {
            dir: dir.to_path_buf(),
            log,
            child: Some(child),
        };
        let start = std::time::Instant::now();
        while !is_mounted(dir) {
            if let Some(status) = guard.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("modelfs mount exited ({status}):\n{}", guard.log_text());
            }
            assert!(
                start.elapsed().as_secs() < 20,
                "mount did not come up:\n{}",
                guard.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        guard
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The mount's counters, from the root's hidden stats file.
    pub fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.join(".modelfs-stats")).expect("stats file");
        serde_json::from_str(&text).expect("stats JSON")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits up to `secs` for the daemon to exit; true if it did.
    pub fn wait_exit(&mut self, secs: u64) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed().as_secs() < secs {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) | None => {
                    self.child = None;
                    return true;
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        false
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new(bin())
                .args(["unmount", "--lazy", self.dir.to_str().unwrap_or("")])
                .output();
        }
        if !self.wait_exit(10)
            && let Some(mut c) = self.child.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until group `group_uri` names member `name` for TileDB tools: a
/// mount records new entries first and merges them into the member list
/// within 2 s (the README's "Registry format" section).
pub fn wait_member(group_uri: &str, name: &str) {
    let ctx = modelfs::tiledb::Context::new().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let g = modelfs::tiledb::Group::open(&ctx, group_uri, modelfs::tiledb::GroupMode::Read).unwrap();
        if g.members().unwrap().iter().any(|m| m.name.as_deref() == Some(name)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{group_uri}: {name} not merged in 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A 1-D dense array at `uri` (as TileDB-Py could write it): dimension
/// `dim` over `[0, 2^62 - 1]` with tiles of `extent`, attributes `attrs` of
/// `datatype` without filters, `cells` written from 0 into each, then
/// `meta`.
#[allow(clippy::too_many_arguments)]
pub fn dense_array_of(
    ctx: &Context,
    uri: &str,
    dim: &str,
    extent: u64,
    datatype: Datatype,
    attrs: &[&str],
    cells: &[u8],
    meta: &[(&str, MetaValue)],
) {
    let schema = Schema::dense(
        ctx,
        &[DimensionSpec {
            name: dim.into(),
            lo: 0,
            hi: (1 << 62) - 1,
            extent,
            filters: vec![],
        }],
        &attrs
            .iter()
            .map(|a| AttributeSpec {
                name: (*a).into(),
                datatype,
                filters: vec![],
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    schema.create_array(uri).unwrap();
    let mut array = Array::open(ctx, uri, Mode::Write).unwrap();
    if !cells.is_empty() {
        for a in attrs {
            array.write_cells(a, 0, cells.len() as u64 - 1, cells).unwrap();
        }
    }
    for (k, v) in meta {
        array.put_metadata(k, v).unwrap();
    }
    array.close().unwrap();
}
