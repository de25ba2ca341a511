//! Where chunk bytes come from: one version of one file, read by byte range.
//! A trait so the cache and the planner are tested on an in-memory source
//! (and a failing one) as well as on real file arrays.

use std::sync::{Arc, PoisonError, RwLock};

use crate::fs::error::{CoreError, Result};
use crate::fs::store::{QueryBuf, StoredVersion};
use crate::registry::FileMeta;

/// One immutable version of a file, readable by byte range from any thread.
pub trait ChunkSource: Send + Sync {
    /// Unique for this file version within the mount; the cache key.
    fn id(&self) -> u64;
    /// The file's size in bytes.
    fn size(&self) -> u64;
    /// The cache's unit for this file, in bytes: whole storage tiles.
    fn chunk_bytes(&self) -> u64;
    /// The `len` bytes at `offset`; the range lies within the file.
    fn read_exact(&self, offset: u64, len: usize) -> Result<QueryBuf>;
    /// Names the file in log lines.
    fn describe(&self) -> &str;
    /// Whether the bytes come from a local file (a complete disk cache
    /// entry): read directly, neither cached in memory nor read ahead.
    fn is_local(&self) -> bool {
        false
    }
}

/// Smallest cache chunk: arrays with small tiles (TileDB's filestore uses
/// 1 KiB) are read a few hundred KiB at a time, not a tile at a time.
pub const MIN_CHUNK_BYTES: u64 = 256 * 1024;

/// The chunk size for tiles of `tile_bytes`: the smallest multiple of the
/// tile at least [`MIN_CHUNK_BYTES`], so every chunk covers whole tiles.
pub fn chunk_bytes_for_tile(tile_bytes: u64) -> u64 {
    let tile = tile_bytes.max(1);
    MIN_CHUNK_BYTES.div_ceil(tile) * tile
}

/// A file array version as a chunk source.
pub struct FileVersion {
    id: u64,
    /// Where the bytes are read from: replaced when a rename moves the
    /// storage (in a plain directory a name is where the array is), so
    /// descriptors open on it read on.
    file: RwLock<Arc<dyn StoredVersion>>,
    meta: FileMeta,
    chunk_bytes: u64,
    uri: String,
}

impl FileVersion {
    pub fn new(id: u64, file: Box<dyn StoredVersion>, tile_bytes: u64) -> Arc<Self> {
        let uri = file.uri().to_string();
        Arc::new(FileVersion {
            id,
            meta: file.meta().clone(),
            file: RwLock::new(Arc::from(file)),
            chunk_bytes: chunk_bytes_for_tile(tile_bytes),
            uri,
        })
    }

    /// The version's size, kind and timestamp.
    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }

    /// The complete disk cache file holding the version, if any.
    pub fn local_file(&self) -> Option<Arc<std::fs::File>> {
        self.reader().local_file()
    }

    /// Reads from `open()` from now on: the same version, opened where its
    /// storage was moved to (unless it is read from a complete disk cache
    /// file, which did not move).
    pub fn relocate(&self, open: impl FnOnce() -> Result<Box<dyn StoredVersion>>) -> Result<()> {
        if self.local_file().is_none() {
            let file = open()?;
            *self.file.write().unwrap_or_else(PoisonError::into_inner) = Arc::from(file);
        }
        Ok(())
    }

    fn reader(&self) -> Arc<dyn StoredVersion> {
        self.file.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl ChunkSource for FileVersion {
    fn id(&self) -> u64 {
        self.id
    }

    fn size(&self) -> u64 {
        self.meta.size
    }

    fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    fn read_exact(&self, offset: u64, len: usize) -> Result<QueryBuf> {
        let read = self.reader().read_query(offset, len)?;
        let n = read.len;
        if n != len {
            return Err(CoreError::ShortRead {
                uri: self.uri.clone(),
                got: n,
                wanted: len,
                offset,
            }
            .into());
        }
        Ok(read)
    }

    fn describe(&self) -> &str {
        &self.uri
    }

    fn is_local(&self) -> bool {
        self.local_file().is_some()
    }
}

#[cfg(test)]
pub mod testing {
    //! In-memory sources for the cache and planner tests.

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A file held in memory, counting the reads it serves.
    pub struct MemSource {
        pub id: u64,
        pub data: Vec<u8>,
        pub chunk: u64,
        pub reads: AtomicU64,
        /// Byte ranges whose reads fail with EIO.
        pub failing: Mutex<Vec<std::ops::Range<u64>>>,
    }

    impl MemSource {
        pub fn new(id: u64, data: Vec<u8>, chunk: u64) -> Arc<Self> {
            Arc::new(MemSource {
                id,
                data,
                chunk,
                reads: AtomicU64::new(0),
                failing: Mutex::new(Vec::new()),
            })
        }
    }

    impl ChunkSource for MemSource {
        fn id(&self) -> u64 {
            self.id
        }
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn chunk_bytes(&self) -> u64 {
            self.chunk
        }
        fn read_exact(&self, offset: u64, len: usize) -> Result<QueryBuf> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let end = offset + len as u64;
            if self
                .failing
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.start < end && offset < r.end)
            {
                // Any EIO will do: the tests check the errno.
                return Err(CoreError::ShortRead {
                    uri: "injected failure".to_string(),
                    got: 0,
                    wanted: len,
                    offset,
                }
                .into());
            }
            // Placed as a query's bytes are: after some padding.
            let (mut buf, start) = crate::fs::store::page_aligned(len);
            buf.extend_from_slice(&self.data[offset as usize..end as usize]);
            Ok(QueryBuf {
                buf: Arc::new(buf),
                start,
                len,
            })
        }
        fn describe(&self) -> &str {
            "memory"
        }
    }
}
