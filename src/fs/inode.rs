//! The inode table: stable inode numbers for registry entries, found by
//! `(parent, name)`, with what each entry held when last looked at.
//!
//! Identity (`ino`, `parent`, `entry`) never changes after an inode
//! is made; the cached state (`Node` and when it was read, the open file
//! version) sits behind the inode's own mutex, which is never held across
//! TileDB I/O. Inodes live as long as the mount (a registry tree is small
//! next to the memory of its files).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use super::attr::Ino;
use super::read::FileVersion;
use crate::registry::{Entry, FileMeta};

/// What an inode was found to be.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeState {
    Dir,
    File(FileMeta),
}

/// Cached, refreshable state of an inode.
pub struct Cached {
    pub node: NodeState,
    pub read_at: Instant,
    /// The open array for `node`'s version, made at the first open.
    pub version: Option<Arc<FileVersion>>,
    /// The version whose bytes the kernel may hold in its page cache.
    pub page_cache_version: Option<u64>,
}

pub struct Inode {
    pub ino: Ino,
    pub parent: Ino,
    pub entry: Entry,
    pub cached: Mutex<Cached>,
}

impl Inode {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
pub struct InodeTable {
    by_ino: RwLock<HashMap<Ino, Arc<Inode>>>,
    by_name: RwLock<HashMap<(Ino, String), Ino>>,
    next: AtomicU64,
}

impl InodeTable {
    pub fn new(root: Entry) -> Self {
        let t = InodeTable {
            next: AtomicU64::new(Ino::FIRST_FREE),
            ..Default::default()
        };
        let root = Arc::new(Inode {
            ino: Ino::ROOT,
            parent: Ino::ROOT,
            entry: root,
            cached: Mutex::new(Cached {
                node: NodeState::Dir,
                read_at: Instant::now(),
                version: None,
                page_cache_version: None,
            }),
        });
        t.by_ino
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Ino::ROOT, root);
        t
    }

    pub fn get(&self, ino: Ino) -> Option<Arc<Inode>> {
        self.by_ino
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ino)
            .cloned()
    }

    /// The inode for `entry` named `name` in `parent`: the existing one when
    /// it still stands for the same storage, a new one otherwise.
    pub fn upsert(&self, parent: Ino, entry: Entry, node: NodeState) -> Arc<Inode> {
        let key = (parent, entry.name.clone());
        let mut by_name = self.by_name.write().unwrap_or_else(PoisonError::into_inner);
        let mut by_ino = self.by_ino.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(ino) = by_name.get(&key)
            && let Some(inode) = by_ino.get(ino)
            && inode.entry == entry
        {
            let inode = inode.clone();
            drop((by_name, by_ino));
            let mut c = inode.lock();
            if c.node != node {
                c.version = None;
            }
            c.node = node;
            c.read_at = Instant::now();
            drop(c);
            return inode;
        }
        let ino = Ino(self.next.fetch_add(1, Ordering::Relaxed));
        let inode = Arc::new(Inode {
            ino,
            parent,
            entry,
            cached: Mutex::new(Cached {
                node,
                read_at: Instant::now(),
                version: None,
                page_cache_version: None,
            }),
        });
        by_name.insert(key, ino);
        by_ino.insert(ino, inode.clone());
        inode
    }

    /// Number of inodes known.
    pub fn count(&self) -> usize {
        self.by_ino.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}
