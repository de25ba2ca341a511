//! Open file and directory handles. A handle holds what its reads need
//! (the file version, the read-ahead planner, a directory snapshot), so a
//! file keeps reading the version it opened even after a newer one lands.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::attr::{DirItem, Fh, Ino};
use super::read::{ChunkSource, Prefetcher};
use super::write::Writer;
use crate::registry::tiledb_ml::ViewFile;

pub struct FileHandle {
    pub ino: Ino,
    /// The id of the version `source` reads.
    pub version: u64,
    pub source: Arc<dyn ChunkSource>,
    pub prefetch: Mutex<Prefetcher>,
    /// Offered for passthrough and not declined: counted in the inode's
    /// `pinned`.
    pub pinned: std::sync::atomic::AtomicBool,
}

/// A file opened for reading while this mount had it open for writing:
/// its reads see the bytes written so far, as another descriptor of a
/// local file does (`git index-pack` reads back the pack it is writing
/// through descriptors of its own): those of the file's writer while it
/// has one, else the latest committed version; a new file unlinked before
/// its first commit, which has no other copy, reads on from the writer
/// it was opened beside. While the writer streams into storage and keeps
/// nothing to read back, they see the latest committed version.
pub struct FollowHandle {
    pub ino: Ino,
    pub writer: Arc<Mutex<Writer>>,
}

/// A file open for writing; the inode refers to the same writer.
pub struct WriteHandle {
    pub ino: Ino,
    pub writer: Arc<Mutex<Writer>>,
    /// The process that opened it: only its `close()` commits. A forked
    /// child closing its inherited copy (at `exec`, or on exit) must not
    /// commit half a file.
    pub opener: Option<u32>,
    /// Changed the file through this handle since its last commit (or
    /// opened it with `O_TRUNC`): its close commits. Handles sharing the
    /// writer commit only their own changes' time, so one closing while
    /// another writes does not commit that one's half-written bytes.
    pub wrote: AtomicBool,
}

pub enum Handle {
    File(FileHandle),
    Write(WriteHandle),
    /// A file opened for reading while this mount writes it.
    Follow(FollowHandle),
    /// A listing taken at `opendir`, so offsets stay stable while it is read.
    Dir {
        items: Vec<DirItem>,
    },
    /// A generated file's contents, fixed at open.
    Generated(Vec<u8>),
    /// A file of a TileDB-ML model's view.
    View(ViewFile),
}

#[derive(Default)]
pub struct HandleTable {
    map: RwLock<HashMap<Fh, Arc<Handle>>>,
    next: AtomicU64,
}

impl HandleTable {
    pub fn insert(&self, handle: Handle) -> Fh {
        let fh = Fh(self.next.fetch_add(1, Ordering::Relaxed) + 1);
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(fh, Arc::new(handle));
        fh
    }

    pub fn get(&self, fh: Fh) -> Option<Arc<Handle>> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&fh)
            .cloned()
    }

    pub fn remove(&self, fh: Fh) -> Option<Arc<Handle>> {
        self.map.write().unwrap_or_else(PoisonError::into_inner).remove(&fh)
    }

    /// Open handles of any kind.
    pub fn count(&self) -> usize {
        self.map.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}
