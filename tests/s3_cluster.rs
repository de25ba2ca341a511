//! Two daemons on one registry on a 3-node Garage cluster (started by
//! `scripts/test_s3.sh`, which runs these with `--ignored`): what one writes
//! the other shows after the metadata TTL, never partially, and both keep
//! reading and writing with a Garage node killed.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The PIDs of the Garage nodes (`GARAGE_PIDS`, set with the cluster).
fn garage_pids() -> Vec<u32> {
    let pids = std::env::var("GARAGE_PIDS").expect("GARAGE_PIDS: run through scripts/test_s3.sh");
    pids.split(',').map(|p| p.parse().unwrap()).collect()
}

fn require_cluster() {
    assert!(on_s3(), "MODELFS_TEST_S3 is not set: run through scripts/test_s3.sh");
    assert_eq!(garage_pids().len(), 3, "these tests need the 3-node cluster");
}

/// Waits until `check` holds, up to `secs`.
fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed().as_secs() < secs, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs a 3-node Garage cluster: scripts/test_s3.sh"]
fn two_daemons_share_a_registry_and_survive_a_killed_node() {
    require_cluster();
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry_uri(tmp.path());
    std::fs::write(tmp.path().join("seed.txt"), b"seed").unwrap();
    modelfs_ok(&["import", s(&tmp.path().join("seed.txt")), &format!("{reg}/seed.txt")]);
    let ttl = ["--metadata-ttl", "1"];
    let a = MountGuard::new(&reg, &tmp.path().join("a"), &ttl);
    let b = MountGuard::new(&reg, &tmp.path().join("b"), &ttl);

    // A model directory copied in through A reads back identical through B.
    let model = make_hf_model(tmp.path(), 24);
    let st = Command::new("cp")
        .args(["-r", s(&model), s(&a.dir.join("tiny"))])
        .status()
        .unwrap();
    assert!(st.success());
    eventually(10, "B shows A's model", || {
        b.dir.join("tiny/model.safetensors").exists()
    });
    assert_same_tree(&model, &b.dir.join("tiny"));

    // An overwrite through A: every whole read through B is the old bytes
    // or the new ones, never a mix or a cut.
    let v1 = std::fs::read(model.join("model.safetensors")).unwrap();
    let v2 = safetensors_bytes(200, 30 << 20);
    let src2 = tmp.path().join("v2.safetensors");
    std::fs::write(&src2, &v2).unwrap();
    let target = a.dir.join("tiny/model.safetensors");
    let writer = std::thread::spawn(move || {
        assert!(
            Command::new("cp")
                .args([s(&src2), s(&target)])
                .status()
                .unwrap()
                .success()
        );
    });
    let seen_b = b.dir.join("tiny/model.safetensors");
    let (mut old, mut new) = (0, 0);
    let start = Instant::now();
    loop {
        let now = std::fs::read(&seen_b).unwrap();
        if now == v1 {
            old += 1;
        } else if now == v2 {
            new += 1;
        } else {
            panic!("B read {} bytes that are neither version", now.len());
        }
        if new >= 2 {
            break;
        }
        assert!(start.elapsed().as_secs() < 60, "B never showed the new version");
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().unwrap();
    eprintln!("B read the old version {old} times, then the new one");

    // One Garage node down: both daemons keep reading and writing.
    let victim = garage_pids()[2];
    assert!(
        Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    for mnt in [&a, &b] {
        assert_same_tree(&model.join("text_encoder"), &mnt.dir.join("tiny/text_encoder"));
        assert!(std::fs::read(mnt.dir.join("tiny/model.safetensors")).unwrap() == v2);
    }
    std::fs::write(a.dir.join("from-a.txt"), b"written by A with a node down").unwrap();
    std::fs::create_dir(b.dir.join("from-b")).unwrap();
    std::fs::write(b.dir.join("from-b/notes.json"), b"{\"by\": \"B\"}").unwrap();
    eventually(10, "each daemon shows the other's write", || {
        a.dir.join("from-b/notes.json").exists() && b.dir.join("from-a.txt").exists()
    });
    assert_eq!(
        std::fs::read(b.dir.join("from-a.txt")).unwrap(),
        b"written by A with a node down"
    );
    assert_eq!(
        std::fs::read(a.dir.join("from-b/notes.json")).unwrap(),
        b"{\"by\": \"B\"}"
    );
    for log in [a.log_text(), b.log_text()] {
        assert!(!log.contains("panicked"), "{log}");
    }
}
