//! Import and export through the real binary and real TileDB arrays:
//! byte-identical round trips, versions, and refusal of bad input.

mod common;

use common::*;
use modelfs::registry::file_array::TILE_BYTES;
use modelfs::tiledb::{self, Array, Context, Mode, ObjectType};

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn hf_model_and_edge_sizes_round_trip_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let model = make_hf_model(tmp.path(), 66);
    let tile = TILE_BYTES as usize;
    std::fs::write(model.join("empty.bin"), b"").unwrap();
    std::fs::write(model.join("one-byte.bin"), b"x").unwrap();
    std::fs::write(model.join("one-tile.bin"), pseudo_random(1, tile)).unwrap();
    std::fs::write(model.join("tile-plus-one.bin"), pseudo_random(2, tile + 1)).unwrap();
    let st_size = std::fs::metadata(model.join("model.safetensors")).unwrap().len();
    assert!(st_size >= 64 << 20, "model.safetensors is {st_size} bytes");

    let reg = registry_uri(tmp.path());
    modelfs_ok(&["import", "--quiet", s(&model), &format!("{reg}/tiny")]);
    let out = tmp.path().join("out");
    modelfs_ok(&["export", "--quiet", &format!("{reg}/tiny"), s(&out)]);
    assert_same_tree(&model, &out);

    let listing = modelfs_ok(&["ls", &format!("{reg}/tiny")]);
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(
        names,
        [
            "config.json",
            "empty.bin",
            "model.safetensors",
            "one-byte.bin",
            "one-tile.bin",
            "text_encoder/",
            "tile-plus-one.bin",
            "tokenizer.json"
        ]
    );
    let long = modelfs_ok(&["ls", "-l", &format!("{reg}/tiny")]);
    let line = long
        .lines()
        .find(|l| l.ends_with(" model.safetensors"))
        .expect("listed");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[..2], &["safetensors", &st_size.to_string()], "{long}");

    let info = modelfs_ok(&["info", &format!("{reg}/tiny/model.safetensors")]);
    assert!(info.contains("kind:       safetensors"), "{info}");
    assert!(info.contains("tensors:    320"), "{info}");
    assert!(info.contains("model.layers.0.weight_0"), "{info}");
    for dtype in ["F32", "F16", "BF16", "I64", "BOOL"] {
        assert!(info.contains(&format!(" {dtype} ")), "{dtype} missing from\n{info}");
    }
}

fn corrupt_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = safetensors_bytes(5, 4000);
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 3);
    let mut past_eof = good.clone();
    past_eof[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&100_000_001u64.to_le_bytes());
    let header = |h: &str, data: usize| {
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(h.as_bytes());
        f.extend(std::iter::repeat_n(0u8, data));
        f
    };
    let overlap = header(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        12,
    );
    let shape = header(r#"{"a":{"dtype":"F16","shape":[2,3],"data_offsets":[0,8]}}"#, 8);
    vec![
        ("truncated", truncated, "tensor data ends at byte"),
        ("past-eof", past_eof, "runs past the end"),
        ("huge-header", huge, "over the 100000000-byte limit"),
        ("overlap", overlap, "overlap"),
        ("shape", shape, "needs 96 bits"),
        ("short", vec![1, 2, 3], "too short"),
    ]
}

#[test]
fn corrupt_safetensors_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_uri(tmp.path());
    // The registry exists and holds one good file.
    std::fs::write(tmp.path().join("ok.json"), b"{}").unwrap();
    modelfs_ok(&["import", s(&tmp.path().join("ok.json")), &format!("{reg}/ok.json")]);
    let ctx = Context::new().unwrap();
    for (name, bytes, problem) in corrupt_cases() {
        let file = tmp.path().join(format!("{name}.safetensors"));
        std::fs::write(&file, &bytes).unwrap();
        let dest = format!("{reg}/{name}.safetensors");
        let out = modelfs(&["import", s(&file), &dest]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: import succeeded");
        assert!(
            stderr.contains(&format!("{name}.safetensors")),
            "{name}: message does not name the file: {stderr}"
        );
        assert!(
            stderr.contains(problem),
            "{name}: message does not say {problem:?}: {stderr}"
        );
        assert_eq!(
            tiledb::object_type(&ctx, &dest).unwrap(),
            ObjectType::Invalid,
            "{name}: array left behind"
        );
    }
    let listing = modelfs_ok(&["ls", &reg]);
    assert_eq!(listing.trim(), "ok.json");
}

#[test]
fn import_over_existing_needs_force_and_keeps_old_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_uri(tmp.path());
    let dest = format!("{reg}/notes.txt");
    let v1 = tmp.path().join("v1.txt");
    let v2 = tmp.path().join("v2.txt");
    std::fs::write(&v1, pseudo_random(1, 300_000)).unwrap();
    std::fs::write(&v2, b"the second version is short").unwrap();
    modelfs_ok(&["import", s(&v1), &dest]);
    let out = modelfs(&["import", s(&v2), &dest]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    let ctx = Context::new().unwrap();
    let reg_api = modelfs::registry::Registry::new(ctx.clone()).unwrap();
    let entry = reg_api.resolve(&dest).unwrap().unwrap();
    let old = modelfs::registry::file_array::read_meta(&ctx, &entry.uri).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    modelfs_ok(&["import", "--force", s(&v2), &dest]);

    // A device is written in place, never replaced.
    modelfs_ok(&["export", &dest, "/dev/null"]);
    assert!(!std::fs::metadata("/dev/null").unwrap().is_file());

    let exported = tmp.path().join("now.txt");
    modelfs_ok(&["export", &dest, s(&exported)]);
    assert_eq!(std::fs::read(&exported).unwrap(), std::fs::read(&v2).unwrap());
    // The first version is still in TileDB, readable at its timestamp.
    let old_file = modelfs::registry::FileArray::open_version(&ctx, &entry.uri, old.clone()).unwrap();
    let mut buf = vec![0u8; old.size as usize];
    assert_eq!(old_file.read_at(0, &mut buf).unwrap(), buf.len());
    assert_eq!(buf, std::fs::read(&v1).unwrap());
    let at_old = Array::open_at(&ctx, &entry.uri, Mode::Read, old.timestamp).unwrap();
    drop(at_old);
}

#[test]
fn missing_paths_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = format!("{}/nothing", registry_uri(tmp.path()));
    for args in [
        vec!["export", missing.as_str(), "/tmp/never-written"],
        vec!["ls", missing.as_str()],
        vec!["info", missing.as_str()],
    ] {
        let out = modelfs(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.starts_with("modelfs: "), "{stderr}");
        assert!(stderr.contains("nothing: no such file or directory"), "{stderr}");
    }
    let out = modelfs(&["import", "/no/such/source", &format!("{}/x", registry_uri(tmp.path()))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/source"));
}

#[test]
fn several_sources_go_into_one_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.json");
    let b = tmp.path().join("b.bin");
    std::fs::write(&a, b"{}").unwrap();
    std::fs::write(&b, pseudo_random(3, 1000)).unwrap();
    let dir = format!("{}/run-1", registry_uri(tmp.path()));
    modelfs_ok(&["import", s(&a), s(&b), &dir]);
    assert_eq!(modelfs_ok(&["ls", &dir]), "a.json\nb.bin\n");
}

#[test]
fn names_needing_escapes_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("__pycache__")).unwrap();
    for name in [
        "_private.txt",
        ".hidden",
        "with space.json",
        "ünïcode.txt",
        "__meta",
        "a~b",
    ] {
        std::fs::write(src.join(name), name.as_bytes()).unwrap();
    }
    std::fs::write(src.join("__pycache__/x.pyc"), b"pyc").unwrap();
    let reg = format!("{}/m", registry_uri(tmp.path()));
    modelfs_ok(&["import", s(&src), &reg]);
    let out = tmp.path().join("out");
    modelfs_ok(&["export", &reg, s(&out)]);
    assert_same_tree(&src, &out);
}

#[test]
fn tiledb_config_flags_and_file_reach_tiledb() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_uri(tmp.path());
    std::fs::write(tmp.path().join("a.txt"), b"a").unwrap();
    let cfg = tmp.path().join("tiledb.cfg");
    std::fs::write(
        &cfg,
        "# settings\nsm.memory_budget 1073741824\nsm.io_concurrency_level=2\n",
    )
    .unwrap();
    modelfs_ok(&[
        "--tiledb-config-file",
        s(&cfg),
        "import",
        s(&tmp.path().join("a.txt")),
        &format!("{reg}/a.txt"),
    ]);
    // TileDB itself refuses a bad value, and the message names the key.
    let out = modelfs(&["--tiledb-config", "sm.memory_budget=lots", "ls", &reg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sm.memory_budget"));
    std::fs::write(&cfg, "just-a-key\n").unwrap();
    let out = modelfs(&["--tiledb-config-file", s(&cfg), "ls", &reg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tiledb.cfg:1"));
}

#[test]
fn secrets_from_the_environment_are_never_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = "do-not-print-this-secret-0123456789";
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    for args in [
        vec!["ls", "s3://bucket/registry"],
        vec!["mount", "--foreground", "s3://bucket/registry", s(&mnt)],
    ] {
        // Nothing listens on port 1: every command fails, at debug level.
        let out = std::process::Command::new(bin())
            .args(["--tiledb-config", "vfs.s3.connect_max_tries=1"])
            .args(&args)
            .env("RUST_LOG", "debug")
            .env("AWS_ACCESS_KEY_ID", "GK0000000000000000000000")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
            .env_remove("TILEDB_VFS_S3_ENDPOINT_OVERRIDE")
            .env_remove("TILEDB_VFS_S3_SCHEME")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?}: {text}");
        // The endpoint came from AWS_ENDPOINT_URL, and the error says so.
        assert!(text.contains("127.0.0.1 port 1"), "{args:?}: {text}");
        assert!(text.contains("s3://bucket/registry"), "{args:?}: {text}");
        assert!(!text.contains(secret), "{args:?} printed the secret: {text}");
    }
}

#[test]
fn a_group_that_is_not_a_member_can_still_be_named() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_uri(tmp.path());
    std::fs::write(tmp.path().join("a.txt"), b"a").unwrap();
    modelfs_ok(&["import", s(&tmp.path().join("a.txt")), &format!("{reg}/a.txt")]);
    // Another tool makes a group inside the registry group without linking it.
    let ctx = Context::new().unwrap();
    let other = format!("{reg}/made-elsewhere");
    tiledb::Group::create(&ctx, &other).unwrap();
    assert_eq!(modelfs_ok(&["ls", &reg]), "a.txt\n");
    modelfs_ok(&["import", s(&tmp.path().join("a.txt")), &format!("{other}/b.txt")]);
    assert_eq!(modelfs_ok(&["ls", &other]), "b.txt\n");
}

#[test]
fn a_plain_folder_inside_a_registry_group_can_be_named_and_mounted() {
    // A folder of arrays made by another tool (TileDB-ML saves arrays at
    // any URI) under a bucket whose root became a registry group: the
    // group does not list it, but naming it lists, exports and mounts it.
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_uri(tmp.path());
    std::fs::write(tmp.path().join("a.txt"), b"a").unwrap();
    modelfs_ok(&["import", s(&tmp.path().join("a.txt")), &format!("{reg}/a.txt")]);
    let elsewhere = format!("{reg}-elsewhere");
    std::fs::write(tmp.path().join("b.txt"), b"bytes of b").unwrap();
    modelfs_ok(&["import", s(&tmp.path().join("b.txt")), &format!("{elsewhere}/b.txt")]);
    let ctx = Context::new().unwrap();
    let reg_api = modelfs::registry::Registry::new(ctx.clone()).unwrap();
    let stored = reg_api.resolve(&format!("{elsewhere}/b.txt")).unwrap().unwrap();
    let plain = format!("{reg}/from-another-tool");
    tiledb::Vfs::new(&ctx).unwrap().create_dir(&plain).unwrap();
    tiledb::object_move(&ctx, &stored.uri, &format!("{plain}/b.txt")).unwrap();

    assert_eq!(modelfs_ok(&["ls", &reg]), "a.txt\n", "the group lists its members only");
    assert_eq!(modelfs_ok(&["ls", &plain]), "b.txt\n");
    let out = tmp.path().join("b.out");
    modelfs_ok(&["export", &format!("{plain}/b.txt"), s(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), b"bytes of b");
    let mnt = MountGuard::new(&plain, &tmp.path().join("mnt"), &[]);
    assert_eq!(std::fs::read(mnt.dir.join("b.txt")).unwrap(), b"bytes of b");
    drop(mnt);
    // The folders TileDB and modelfs keep their own files in are not
    // directories of the registry, named or not.
    let out = modelfs(&["ls", &format!("{reg}/__group")]);
    assert!(!out.status.success(), "ls of a group's own folder: {out:?}");
    // What is imported there goes into a new member of that name, stored
    // beside the folder, which is left alone.
    std::fs::write(tmp.path().join("c.txt"), b"c").unwrap();
    modelfs_ok(&["import", s(&tmp.path().join("c.txt")), &format!("{plain}/c.txt")]);
    assert_eq!(modelfs_ok(&["ls", &reg]), "a.txt\nfrom-another-tool/\n");
    assert_eq!(modelfs_ok(&["ls", &plain]), "c.txt\n");
    assert!(
        tiledb::Vfs::new(&ctx)
            .unwrap()
            .is_dir(&format!("{plain}/b.txt"))
            .unwrap()
    );
}

/// Runs `modelfs ARGS` and returns the minor page faults it took: with
/// glibc's malloc defaults when `defaults`, otherwise with modelfs's own
/// settings.
#[expect(clippy::zombie_processes, reason = "waited for with wait4, for its rusage")]
fn page_faults_of(args: &[&str], defaults: bool) -> i64 {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args)
        .env_remove("GLIBC_TUNABLES")
        .env_remove("MALLOC_MMAP_THRESHOLD_")
        .env_remove("MALLOC_TRIM_THRESHOLD_")
        .env_remove("MALLOC_ARENA_MAX")
        .stdout(std::process::Stdio::null());
    if defaults {
        // glibc's own value; naming a malloc tunable makes modelfs leave
        // the allocator alone.
        cmd.env("GLIBC_TUNABLES", "glibc.malloc.tcache_count=7");
    }
    let child = cmd.spawn().expect("run modelfs");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, once, with valid pointers; `child`
    // is not waited for again.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "modelfs {args:?}: {status}"
    );
    usage.ru_minflt
}

/// Import and export allocate and free each tile in turn: with glibc's
/// defaults most of them landed on fresh pages (for this 256 MiB file,
/// 74,000 faults importing and 134,000 exporting, against about 6,000 and
/// 8,000 with modelfs's settings). Compared with a run on the defaults, so
/// the bound holds whatever the machine's core count.
#[test]
fn import_and_export_reuse_freed_tile_memory() {
    if on_s3() {
        return; // The S3 client's buffers are another matter.
    }
    if std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").is_ok_and(|t| t.contains("[always]")) {
        eprintln!("skipped: with transparent huge pages always on, the heap faults 2 MiB at a time");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("weights.bin");
    std::fs::write(&src, pseudo_random(7, 256 << 20)).unwrap();
    let mut faults = Vec::new();
    for defaults in [true, false] {
        let uri = tmp.path().join(format!("registry-{defaults}/weights.bin"));
        let import = page_faults_of(&["import", "--quiet", s(&src), s(&uri)], defaults);
        let out = tmp.path().join(format!("out-{defaults}.bin"));
        let export = page_faults_of(&["export", "--quiet", s(&uri), s(&out)], defaults);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap());
        faults.push((import, export));
    }
    let [(import_default, export_default), (import, export)] = faults[..] else {
        unreachable!()
    };
    assert!(
        import * 3 < import_default,
        "import of 256 MiB: {import} page faults, {import_default} with glibc's defaults"
    );
    assert!(
        export * 3 < export_default,
        "export of 256 MiB: {export} page faults, {export_default} with glibc's defaults"
    );
}
