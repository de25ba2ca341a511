//! Issue #13: a panic while serving one request is that request's `EIO`
//! and one log line; the mount keeps serving. The panic is injected into
//! `statfs` through `MODELFS_INJECT_PANIC` (debug builds only), so this test
//! binary holds this one test: the variable is set for the daemon alone.

mod common;

use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

#[test]
fn issue_13_a_panicking_request_is_eio_and_the_mount_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("registry");
    std::fs::create_dir(&reg).unwrap();
    let src = tmp.path().join("good.txt");
    std::fs::write(&src, b"still serving").unwrap();
    modelfs_ok(&[
        "import",
        "--quiet",
        src.to_str().unwrap(),
        reg.join("good.txt").to_str().unwrap(),
    ]);
    // SAFETY: this test binary runs this one test, so no other thread reads
    // the environment while it changes; the daemon inherits the variable.
    unsafe { std::env::set_var("MODELFS_INJECT_PANIC", "statfs") };
    let mnt = MountGuard::new(reg.to_str().unwrap(), &tmp.path().join("mnt"), &[]);
    unsafe { std::env::remove_var("MODELFS_INJECT_PANIC") };

    for _ in 0..3 {
        let dir = mnt.dir.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(nix::sys::statvfs::statvfs(&dir));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("statfs got no answer: the panic escaped to fuser");
        assert_eq!(got.unwrap_err(), nix::errno::Errno::EIO);
        assert_eq!(std::fs::read(mnt.dir.join("good.txt")).unwrap(), b"still serving");
    }
    let log = mnt.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("statfs: internal error"))
        .count();
    assert_eq!(lines, 3, "one error line per failed request:\n{log}");
    assert!(log.contains("injected panic in statfs"), "{log}");
    // Still a working mount: a listing and a clean unmount.
    let names: Vec<_> = std::fs::read_dir(&mnt.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["good.txt"]);
    let out = Command::new(bin())
        .args(["unmount", mnt.dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
