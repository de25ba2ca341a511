//! Bytes a read returns: a window into a buffer the chunk cache already
//! holds when the range lies within one buffer read in one query (the
//! usual case for a sequential reader), else a copy assembled from several.
//! Sharing saves the daemon a copy of every byte it serves.

use std::ops::Deref;
use std::sync::Arc;

use crate::fs::store::QueryBuf;

/// The bytes of one read.
#[derive(Debug, Clone)]
pub struct Data(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Owned(Vec<u8>),
    Shared {
        buf: Arc<Vec<u8>>,
        start: usize,
        len: usize,
    },
}

impl Data {
    /// `len` bytes of `buf` from `start`; the range must lie within it.
    pub(crate) fn shared(buf: Arc<Vec<u8>>, start: usize, len: usize) -> Self {
        debug_assert!(start + len <= buf.len());
        Data(Repr::Shared { buf, start, len })
    }
}

impl From<Vec<u8>> for Data {
    fn from(v: Vec<u8>) -> Self {
        Data(Repr::Owned(v))
    }
}

impl From<QueryBuf> for Data {
    fn from(q: QueryBuf) -> Self {
        Data::shared(q.buf, q.start, q.len)
    }
}

impl Deref for Data {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Shared { buf, start, len } => &buf[*start..*start + *len],
        }
    }
}

impl AsRef<[u8]> for Data {
    fn as_ref(&self) -> &[u8] {
        self
    }
}
