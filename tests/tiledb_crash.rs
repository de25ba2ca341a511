//! Crash points on real TileDB (issue #11): every multi-step operation of
//! the core (create, overwrite, rename over a file, moves of a file and of
//! a directory across directories, unlink, rmdir) runs with the store
//! failing from its k-th change on, for k = 0, 1, ... until the operation
//! gets through; after each, a fresh core (a restarted daemon) over the
//! same registry must show every name in its state before or after the
//! operation, whole, and every listed name must read. Local, and on S3
//! when `MODELFS_TEST_S3` is set.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::*;
use modelfs::fs::{Config, FailingStore, Ino, Kind, ModelFs, Owner, Store};
use modelfs::registry::Registry;
use modelfs::tiledb::Context;

type Tree = BTreeMap<String, Option<Vec<u8>>>;
type Step = fn(&Core) -> modelfs::fs::Result<()>;

struct Core {
    fs: ModelFs,
}

fn registry() -> Registry {
    Registry::new(Context::new().unwrap()).unwrap()
}

impl Core {
    fn new(store: Arc<dyn Store>, root: &str, staging: &Path) -> Core {
        let config = Config {
            read_only: false,
            metadata_ttl: std::time::Duration::ZERO,
            prefetch_threads: 1,
            staging_dir: staging.to_path_buf(),
            ..Config::default()
        };
        Core {
            fs: ModelFs::new(store, root, config).unwrap(),
        }
    }

    fn ino(&self, path: &str) -> modelfs::fs::Result<Ino> {
        let mut ino = Ino::ROOT;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            ino = self.fs.lookup(ino, name)?.ino;
        }
        Ok(ino)
    }

    fn parent(&self, path: &str) -> modelfs::fs::Result<(Ino, String)> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        Ok((self.ino(dir)?, name.to_string()))
    }

    fn write(&self, path: &str, bytes: &[u8]) -> modelfs::fs::Result<()> {
        let (dir, name) = self.parent(path)?;
        let fh = match self.fs.lookup(dir, &name) {
            Ok(a) => {
                let o = self.fs.open(a.ino, true, true, None)?;
                let change = modelfs::fs::SetAttr {
                    size: Some(0),
                    fh: Some(o.fh),
                    ..Default::default()
                };
                self.fs.setattr(a.ino, change)?;
                o.fh
            }
            Err(_) => {
                let who = Owner { uid: 0, gid: 0 };
                self.fs
                    .create(
                        dir,
                        &name,
                        modelfs::fs::CreateFlags {
                            exclusive: true,
                            truncate: true,
                        },
                        None,
                        0o644,
                        who,
                    )?
                    .1
                    .fh
            }
        };
        let written = self.fs.write(fh, 0, bytes).map(|_| ());
        let flushed = written.and_then(|()| self.fs.flush(fh, None));
        self.fs.release(fh);
        flushed
    }

    fn rename(&self, from: &str, to: &str) -> modelfs::fs::Result<()> {
        let (a, an) = self.parent(from)?;
        let (b, bn) = self.parent(to)?;
        self.fs.rename(a, &an, b, &bn)
    }

    fn mkdir(&self, path: &str) -> modelfs::fs::Result<()> {
        let (dir, name) = self.parent(path)?;
        self.fs.mkdir(dir, &name, 0o755, Owner { uid: 0, gid: 0 }).map(|_| ())
    }

    /// Every name with its bytes (`None` for directories); a listed name
    /// that cannot be read fails the test: it would be a broken name.
    fn tree(&self) -> Tree {
        let mut out = Tree::new();
        self.walk(Ino::ROOT, "", &mut out);
        out
    }

    fn walk(&self, ino: Ino, prefix: &str, out: &mut Tree) {
        let fh = self.fs.opendir(ino).unwrap();
        let items = self.fs.readdir(fh, 0).unwrap();
        self.fs.releasedir(fh);
        for item in items.into_iter().filter(|i| i.name != "." && i.name != "..") {
            let path = format!("{prefix}/{}", item.name);
            let attr = self
                .fs
                .lookup(ino, &item.name)
                .unwrap_or_else(|e| panic!("{path}: listed, but lookup fails: {e}"));
            if item.kind == Kind::Dir {
                out.insert(path.clone(), None);
                self.walk(attr.ino, &path, out);
                continue;
            }
            let o = self
                .fs
                .open(attr.ino, false, false, None)
                .unwrap_or_else(|e| panic!("{path}: listed, but open fails: {e}"));
            let mut bytes = Vec::new();
            loop {
                let chunk = self
                    .fs
                    .read(o.fh, bytes.len() as u64, 1 << 20)
                    .unwrap_or_else(|e| panic!("{path}: listed, but read fails: {e}"));
                if chunk.is_empty() {
                    break;
                }
                bytes.extend_from_slice(&chunk);
            }
            self.fs.release(o.fh);
            out.insert(path, Some(bytes));
        }
    }
}

/// The base every scenario starts from.
fn setup(c: &Core) -> modelfs::fs::Result<()> {
    c.mkdir("d")?;
    c.mkdir("e")?;
    c.mkdir("d/sub")?;
    c.write("d/sub/inner", &pseudo_random(1, 5000))?;
    c.write("d/f", &pseudo_random(2, 300_000))?;
    c.write("e/g", b"the old g")?;
    c.write("top", b"top file")?;
    c.mkdir("empty")
}

/// Runs `op` after `setup` with the store failing from change `k` on, for
/// every k until it gets through, and checks each restart.
fn crash_at_every_step(tmp: &Path, what: &str, op: Step) {
    let staging = tmp.join("staging");
    // The state after the operation, from a run without failures.
    let reg_ok = format!("{}/{what}-ok", registry_uri(tmp));
    let (before, after) = {
        let reg = registry();
        reg.ensure_dir(&reg_ok).unwrap();
        let c = Core::new(Arc::new(reg), &reg_ok, &staging);
        setup(&c).unwrap();
        let before = c.tree();
        op(&c).unwrap_or_else(|e| panic!("{what}: {e}"));
        (before, c.tree())
    };
    assert_ne!(before, after, "{what} changes nothing");
    for k in 0.. {
        let uri = format!("{}/{what}-{k}", registry_uri(tmp));
        let reg = registry();
        reg.ensure_dir(&uri).unwrap();
        let store = Arc::new(FailingStore::new(reg));
        let c = Core::new(store.clone(), &uri, &staging);
        setup(&c).unwrap();
        store.crash_at(Some(k));
        let result = op(&c);
        let crashed = store.crashed();
        drop(c);
        let seen = Core::new(Arc::new(registry()), &uri, &staging).tree();
        let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).chain(seen.keys()).collect();
        for name in names {
            let v = seen.get(name);
            assert!(
                v == before.get(name) || v == after.get(name),
                "{what}, crash at step {k}: {name} is {}, neither its state before ({}) nor after ({})",
                show(v),
                show(before.get(name)),
                show(after.get(name)),
            );
        }
        if !crashed {
            result.unwrap_or_else(|e| panic!("{what}: failed without a crash: {e}"));
            assert_eq!(seen, after, "{what}: done, but a restart shows another state");
            assert!(k > 0, "{what}: no storage change to fail");
            return;
        }
        if result.is_ok() {
            // The crash hit a clean-up after the commit point (deleting
            // replaced storage): the operation is done, storage is left.
            assert_eq!(seen, after, "{what}, crash at step {k}: reported success");
        }
    }
}

fn show(v: Option<&Option<Vec<u8>>>) -> String {
    match v {
        None => "absent".into(),
        Some(None) => "a directory".into(),
        Some(Some(b)) => format!("a file of {} bytes", b.len()),
    }
}

#[test]
fn create_survives_a_crash_at_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    crash_at_every_step(tmp.path(), "create", |c| c.write("d/new", &pseudo_random(3, 70_000)));
}

#[test]
fn overwrite_survives_a_crash_at_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    crash_at_every_step(tmp.path(), "overwrite", |c| c.write("d/f", &pseudo_random(4, 123_456)));
}

#[test]
fn rename_over_a_file_survives_a_crash_at_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    crash_at_every_step(tmp.path(), "rename-over", |c| c.rename("top", "e/g"));
}

#[test]
fn moves_across_directories_survive_a_crash_at_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    crash_at_every_step(tmp.path(), "move-file", |c| c.rename("d/f", "e/moved"));
    crash_at_every_step(tmp.path(), "move-dir", |c| c.rename("d", "e/d2"));
}

#[test]
fn unlink_and_rmdir_survive_a_crash_at_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    crash_at_every_step(tmp.path(), "unlink", |c| {
        let (dir, name) = c.parent("d/f")?;
        c.fs.unlink(dir, &name)
    });
    crash_at_every_step(tmp.path(), "rmdir", |c| {
        let (dir, name) = c.parent("empty")?;
        c.fs.rmdir(dir, &name)
    });
}
