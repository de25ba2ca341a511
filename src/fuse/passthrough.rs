//! FUSE passthrough: which open files of which inode the kernel reads
//! itself from a disk cache file, and which go through the daemon.
//!
//! The kernel (fs/fuse/iomode.c, Linux 6.9+) keeps one I/O mode per
//! inode. While a file of it is open with passthrough, every other open of
//! it must be a passthrough open naming the same backing file (anything
//! else, direct I/O included, fails with EIO); while one is open in cached
//! mode (the FUSE inode's page cache), a passthrough open fails. A
//! passthrough open may carry no other flag than direct I/O (`KEEP_CACHE`
//! makes it fail). So per inode this keeps the backing file in use, with
//! how many handles use it, and how many handles use the page cache, and
//! answers each open so that none fails: passthrough when offered and
//! nothing conflicts, or when the inode is passed through already;
//! cached mode otherwise. The core makes sure a writer never opens an
//! inode passed through (it would write into the cache file).
//!
//! These counts only ever lag behind the kernel's (the kernel drops a
//! file's mode before the daemon sees its release), so the daemon errs
//! towards serving a read itself, never towards a failed open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use fuser::BackingId;

/// How one open is answered.
pub enum Mode {
    /// The kernel reads the backing file.
    Passthrough(Arc<BackingId>),
    /// Through the daemon and the page cache.
    Cached,
    /// Not at all: a writer of an inode passed through.
    Refused,
}

#[derive(Default)]
struct InodeIo {
    cached: u32,
    passthrough: Option<(u64, Arc<BackingId>, u32)>,
}

enum Held {
    Cached,
    Passthrough,
}

/// Modes of open handles, per inode and per handle.
pub struct IoModes {
    /// The kernel offered passthrough at init, and nothing has refused it since.
    available: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, InodeIo>,
    handles: HashMap<u64, (u64, Held)>,
}

impl Default for IoModes {
    fn default() -> Self {
        IoModes {
            available: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }
}

impl IoModes {
    pub fn set_available(&self, yes: bool) {
        self.available.store(yes, Ordering::Relaxed);
    }

    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Picks the mode of handle `fh` of inode `ino`, opened at `version`
    /// with a backing file on offer (`Some`) or not, and records it.
    /// `open_backing` registers the file with the kernel when the inode has
    /// none yet; its error turns passthrough off for the mount, and is
    /// returned beside the mode chosen instead.
    pub fn open(
        &self,
        ino: u64,
        fh: u64,
        offer: Option<u64>,
        writing: bool,
        open_backing: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> (Mode, Option<std::io::Error>) {
        let mut st = self.lock();
        let io = st.inodes.entry(ino).or_default();
        let mut refused = None;
        if writing && io.passthrough.is_some() {
            // The core refuses these first; were one to come, passing it
            // through would send its writes into the cache file.
            return (Mode::Refused, None);
        }
        let (mode, held) = match (&mut io.passthrough, offer) {
            // The kernel allows nothing else while the inode is passed
            // through (the core serves only that version to new opens).
            (Some((_, id, n)), _) => {
                *n += 1;
                (Mode::Passthrough(id.clone()), Held::Passthrough)
            }
            (None, Some(version)) if io.cached == 0 && self.available() => match open_backing() {
                Ok(id) => {
                    let id = Arc::new(id);
                    io.passthrough = Some((version, id.clone(), 1));
                    (Mode::Passthrough(id), Held::Passthrough)
                }
                Err(e) => {
                    self.set_available(false);
                    refused = Some(e);
                    io.cached += 1;
                    (Mode::Cached, Held::Cached)
                }
            },
            (None, _) => {
                io.cached += 1;
                (Mode::Cached, Held::Cached)
            }
        };
        st.handles.insert(fh, (ino, held));
        (mode, refused)
    }

    /// Forgets handle `fh`; the last passthrough handle of an inode lets its
    /// backing file go.
    pub fn release(&self, fh: u64) {
        let mut st = self.lock();
        let Some((ino, held)) = st.handles.remove(&fh) else {
            return;
        };
        let Some(io) = st.inodes.get_mut(&ino) else { return };
        match held {
            Held::Cached => io.cached = io.cached.saturating_sub(1),
            Held::Passthrough => {
                if let Some((_, _, n)) = &mut io.passthrough {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        io.passthrough = None;
                    }
                }
            }
        }
        if io.cached == 0 && io.passthrough.is_none() {
            st.inodes.remove(&ino);
        }
    }
}
