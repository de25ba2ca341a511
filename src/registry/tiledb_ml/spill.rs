//! [`SpillFile`]: bytes of a decoded model kept on local disk instead of in
//! memory. A model's large fields (the tensor bytes its safetensors views
//! slice) and its large materialised tensors are appended once, after the
//! decode, and read back by byte range whenever a view is read; the page
//! cache, which the kernel can reclaim, holds them instead of the daemon.
//!
//! Invariants: the file is unlinked from the moment it is made (nothing is
//! left behind by a crash; its space is freed when the last holder drops
//! it); bytes are only ever appended, so a range handed out stays valid and
//! unchanged for the file's life.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

/// An unlinked, append-only file of spilled view bytes; see the module docs.
#[derive(Debug)]
pub struct SpillFile {
    file: File,
    /// Bytes appended so far; appends take this lock.
    len: Mutex<u64>,
}

impl SpillFile {
    /// Makes an empty spill file in `dir` (created when missing).
    ///
    /// # Errors
    /// The directory cannot be made or written in.
    pub fn create(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(SpillFile {
            file: tempfile::tempfile_in(dir)?,
            len: Mutex::new(0),
        })
    }

    /// Appends `bytes`; returns the offset they start at.
    ///
    /// # Errors
    /// The write fails (a full disk): the file may then hold part of them,
    /// past every range handed out, and its length is unchanged.
    pub fn append(&self, bytes: &[u8]) -> io::Result<u64> {
        let mut len = self.len.lock().unwrap_or_else(PoisonError::into_inner);
        let at = *len;
        let end = at
            .checked_add(bytes.len() as u64)
            .ok_or_else(|| io::Error::other("spill file size overflows"))?;
        self.file.write_all_at(bytes, at)?;
        *len = end;
        Ok(at)
    }

    /// Fills `buf` with the bytes at `offset`.
    ///
    /// # Errors
    /// The read fails, or the range was never appended (`UnexpectedEof`).
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Bytes appended so far.
    pub(crate) fn len(&self) -> u64 {
        *self.len.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_read_back_and_leave_nothing_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("spill");
        let f = SpillFile::create(&sub).unwrap();
        assert_eq!(f.len(), 0);
        assert_eq!(f.append(b"hello").unwrap(), 0);
        assert_eq!(f.append(b"").unwrap(), 5);
        assert_eq!(f.append(b" world").unwrap(), 5);
        assert_eq!(f.len(), 11);
        let mut buf = [0u8; 5];
        f.read_exact_at(6, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        assert!(f.read_exact_at(8, &mut buf).is_err(), "past the end");
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0, "the file is unlinked");
    }
}
