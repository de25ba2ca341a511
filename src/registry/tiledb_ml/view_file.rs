//! [`ViewFile`]: the bytes of one file a TileDB-ML model array shows, owned,
//! immutable and cheap to clone, served by byte range.
//!
//! A file is a list of segments, each a range of a shared buffer: the field
//! bytes read from TileDB (tensor data a pickle stores verbatim, a
//! scikit-learn pickle), or a buffer made while decoding (a safetensors
//! header, a materialised strided tensor, `metadata.json`). So a view costs
//! little more memory than the field it comes from, and a clone costs
//! nothing.
//!
//! Invariants: every segment is non-empty and lies inside its buffer;
//! `starts[i]` is the file offset of segment `i`, strictly increasing from 0;
//! `len` is the sum of the segment lengths.

use std::borrow::Cow;
use std::io::{self, Write};
use std::ops::Range;
use std::sync::Arc;

use super::budget::Reservation;
use super::safetensors_writer::SafetensorsFile;
use super::views::Content;

/// One tensor of a safetensors view, as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// The safetensors dtype (`F32`, `BF16`, `I64`, `BOOL`, ...).
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    /// `[begin, end)` byte range of the tensor's data, absolute in the file.
    pub range: [u64; 2],
}

#[derive(Debug, Clone)]
struct Segment {
    buf: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        self.buf.get(self.range.clone()).unwrap_or(&[])
    }
}

/// The bytes of one file of a model's directory; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct ViewFile {
    segments: Vec<Segment>,
    starts: Vec<u64>,
    len: u64,
    tensors: Option<Vec<TensorInfo>>,
    /// The budget the owned buffers are charged to, given back when the
    /// model and every clone of its files are gone.
    reservation: Option<Arc<Reservation>>,
}

/// Where `part` lies inside `base`, when it is a sub-slice of it.
fn range_in(base: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = part.as_ptr().addr().checked_sub(base.as_ptr().addr())?;
    let end = start.checked_add(part.len())?;
    (end <= base.len()).then_some(start..end)
}

impl ViewFile {
    /// A file holding exactly `bytes`.
    pub(crate) fn from_vec(bytes: Vec<u8>) -> Self {
        let mut f = ViewFile::default();
        f.push_owned(bytes);
        f
    }

    /// The owned form of a decoded view whose borrowed bytes come from
    /// `field` (the field's bytes as read from TileDB): borrowed slices
    /// become ranges of `field`, anything else is moved in.
    pub(crate) fn from_content(content: Content<'_>, field: &Arc<Vec<u8>>) -> Self {
        match content {
            Content::Bytes(b) => {
                let mut f = ViewFile::default();
                f.push_cow(b, field);
                f
            }
            Content::Safetensors(st) => Self::from_safetensors(st, field),
        }
    }

    fn from_safetensors(st: SafetensorsFile<'_>, field: &Arc<Vec<u8>>) -> Self {
        let (header, tensors) = st.into_parts();
        let mut f = ViewFile::default();
        f.push_owned(header);
        let mut infos = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            let begin = f.len;
            let end = begin.saturating_add(t.data.len() as u64);
            infos.push(TensorInfo {
                name,
                dtype: t.dtype.name(),
                shape: t.shape,
                range: [begin, end],
            });
            f.push_cow(t.data, field);
        }
        f.tensors = Some(infos);
        f
    }

    fn push_cow(&mut self, bytes: Cow<'_, [u8]>, field: &Arc<Vec<u8>>) {
        match bytes {
            Cow::Borrowed(b) => match range_in(field, b) {
                Some(range) => self.push(Arc::clone(field), range),
                None => self.push_owned(b.to_vec()),
            },
            Cow::Owned(v) => self.push_owned(v),
        }
    }

    fn push_owned(&mut self, bytes: Vec<u8>) {
        let range = 0..bytes.len();
        self.push(Arc::new(bytes), range);
    }

    fn push(&mut self, buf: Arc<Vec<u8>>, range: Range<usize>) {
        if range.is_empty() || range.end > buf.len() {
            return;
        }
        let n = range.len() as u64;
        self.starts.push(self.len);
        self.segments.push(Segment { buf, range });
        self.len = self.len.saturating_add(n);
    }

    /// Keeps `reservation` (the model's materialised bytes) charged while
    /// this file or a clone of it is alive.
    pub(crate) fn hold(&mut self, reservation: Arc<Reservation>) {
        self.reservation = Some(reservation);
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the file's bytes from byte `offset` on into `buf`, as many as
    /// fit; returns how many were copied: `buf.len()`, fewer at the end of
    /// the file, 0 at or past it. Never fails: the bytes are in memory.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        if offset >= self.len || buf.is_empty() {
            return 0;
        }
        // The segment holding `offset` is the last one starting at or before it.
        let first = self.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let mut done = 0usize;
        let mut pos = offset;
        for (seg, &start) in self.segments.iter().zip(&self.starts).skip(first) {
            let Some(within) = pos.checked_sub(start).and_then(|w| usize::try_from(w).ok()) else {
                break;
            };
            let (Some(src), Some(dst)) = (seg.bytes().get(within..), buf.get_mut(done..)) else {
                break;
            };
            let n = src.len().min(dst.len());
            if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
                d.copy_from_slice(s);
            }
            done += n;
            pos = pos.saturating_add(n as u64);
            if done == buf.len() {
                break;
            }
        }
        done
    }

    /// Writes the whole file into `w`.
    ///
    /// # Errors
    /// The first error `w` returns.
    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        for seg in &self.segments {
            w.write_all(seg.bytes())?;
        }
        Ok(())
    }

    /// The tensor table of a safetensors view, in file order; `None` for
    /// other files.
    pub fn tensors(&self) -> Option<&[TensorInfo]> {
        self.tensors.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tiledb_ml::tensor::{DType, Tensor};

    fn sample(field: &Arc<Vec<u8>>) -> ViewFile {
        let borrowed = field.get(3..11).unwrap();
        let st = SafetensorsFile::new(
            vec![
                (
                    "shared".into(),
                    Tensor {
                        dtype: DType::F32,
                        shape: vec![2],
                        data: Cow::Borrowed(borrowed),
                    },
                ),
                (
                    "own".into(),
                    Tensor {
                        dtype: DType::U8,
                        shape: vec![3],
                        data: Cow::Owned(vec![7, 8, 9]),
                    },
                ),
                (
                    "empty".into(),
                    Tensor {
                        dtype: DType::I64,
                        shape: vec![0],
                        data: Cow::Borrowed(&[]),
                    },
                ),
            ],
            vec![("format".into(), "pt".into())],
        )
        .unwrap();
        ViewFile::from_content(Content::Safetensors(st), field)
    }

    #[test]
    fn borrowed_tensors_share_the_field() {
        let field = Arc::new((0u8..32).collect::<Vec<u8>>());
        let f = sample(&field);
        assert!(
            Arc::strong_count(&field) >= 2,
            "the borrowed tensor keeps a range of the field"
        );
        let mut whole = Vec::new();
        f.write_to(&mut whole).unwrap();
        assert_eq!(whole.len() as u64, f.len());
        let st = safetensors::SafeTensors::deserialize(&whole).unwrap();
        assert_eq!(st.tensor("shared").unwrap().data(), &field[3..11]);
        assert_eq!(st.tensor("own").unwrap().data(), &[7, 8, 9]);
        let infos = f.tensors().unwrap();
        for t in infos {
            let [b, e] = t.range;
            let view = st.tensor(&t.name).unwrap();
            assert_eq!(&whole[b as usize..e as usize], view.data(), "{}", t.name);
            assert_eq!(t.shape, view.shape());
        }
    }

    #[test]
    fn read_at_matches_write_to() {
        let field = Arc::new((0u8..32).collect::<Vec<u8>>());
        let f = sample(&field);
        let mut whole = Vec::new();
        f.write_to(&mut whole).unwrap();
        for start in 0..=whole.len() + 2 {
            for len in [0, 1, 3, 8, 17, 1000] {
                let mut buf = vec![0xAA; len];
                let n = f.read_at(start as u64, &mut buf);
                let want = whole.get(start..).unwrap_or(&[]);
                let want = &want[..want.len().min(len)];
                assert_eq!(&buf[..n], want, "start {start} len {len}");
            }
        }
        assert_eq!(f.read_at(u64::MAX, &mut [0u8; 4]), 0);
    }

    #[test]
    fn plain_bytes_and_foreign_slices() {
        let field = Arc::new(b"abcdef".to_vec());
        let inside = ViewFile::from_content(Content::Bytes(Cow::Borrowed(&field[1..4])), &field);
        let mut buf = [0u8; 8];
        assert_eq!(inside.read_at(0, &mut buf), 3);
        assert_eq!(&buf[..3], b"bcd");
        // A slice of some other buffer is copied, never mistaken for a range.
        let other = b"xyz".to_vec();
        let outside = ViewFile::from_content(Content::Bytes(Cow::Borrowed(&other)), &field);
        assert_eq!(outside.read_at(1, &mut buf), 2);
        assert_eq!(&buf[..2], b"yz");
        assert!(ViewFile::from_vec(Vec::new()).is_empty());
        assert!(outside.tensors().is_none());
    }
}
