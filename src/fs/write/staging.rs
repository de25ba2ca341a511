//! Staging files: local files holding a file being written out of order,
//! under one directory with a byte limit shared by all writers.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fs::counters::Counters;
use crate::fs::error::{CoreError, Error, Result};

/// The staging directory and its limit.
pub struct StagingArea {
    dir: PathBuf,
    limit_bytes: u64,
    used: AtomicU64,
    counters: Arc<Counters>,
}

impl StagingArea {
    /// Stages under `dir` (created if missing), at most `limit_bytes` in all.
    pub fn new(dir: &Path, limit_bytes: u64, counters: Arc<Counters>) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        Ok(Arc::new(StagingArea {
            dir: dir.to_path_buf(),
            limit_bytes,
            used: AtomicU64::new(0),
            counters,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes staged now, over all writers.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// A new, empty staging file for the file `name` (for messages). The
    /// file is unlinked at once, so nothing is left behind by a crash.
    pub fn create(self: &Arc<Self>, name: &str) -> Result<StagingFile> {
        let file = tempfile::tempfile_in(&self.dir).map_err(|e| io_error(&self.dir, name, e))?;
        Counters::add(&self.counters.staged_files, 1);
        Ok(StagingFile {
            file,
            size: 0,
            area: self.clone(),
            name: name.to_string(),
        })
    }

    fn reserve(&self, name: &str, from: u64, to: u64) -> Result<()> {
        if to <= from {
            self.used.fetch_sub(from - to, Ordering::Relaxed);
            return Ok(());
        }
        let extra = to - from;
        let before = self.used.fetch_add(extra, Ordering::Relaxed);
        if before + extra > self.limit_bytes {
            self.used.fetch_sub(extra, Ordering::Relaxed);
            return Err(CoreError::StagingFull {
                name: name.to_string(),
                extra,
                limit: self.limit_bytes,
                used: before,
                dir: self.dir.clone(),
            }
            .into());
        }
        Ok(())
    }
}

fn io_error(dir: &Path, name: &str, error: std::io::Error) -> Error {
    CoreError::Staging {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        error,
    }
    .into()
}

/// One staged file; its bytes are released from the limit when dropped.
pub struct StagingFile {
    file: File,
    size: u64,
    area: Arc<StagingArea>,
    name: String,
}

impl StagingFile {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        if end > self.size {
            self.area.reserve(&self.name, self.size, end)?;
        }
        if let Err(e) = self.file.write_all_at(data, offset) {
            if end > self.size {
                self.area.reserve(&self.name, end, self.size)?;
            }
            return Err(io_error(&self.area.dir, &self.name, e));
        }
        self.size = self.size.max(end);
        Ok(())
    }

    pub fn set_size(&mut self, size: u64) -> Result<()> {
        self.area.reserve(&self.name, self.size, size)?;
        self.file
            .set_len(size)
            .map_err(|e| io_error(&self.area.dir, &self.name, e))?;
        self.size = size;
        Ok(())
    }

    /// Up to `len` bytes at `offset` (fewer at the end).
    pub fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(self.size);
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| io_error(&self.area.dir, &self.name, e))?;
        Ok(buf)
    }
}

impl Drop for StagingFile {
    fn drop(&mut self) {
        self.area.used.fetch_sub(self.size, Ordering::Relaxed);
    }
}
