//! [`ViewFile`]: the bytes of one file a TileDB-ML model array shows, owned,
//! immutable and cheap to clone, served by byte range.
//!
//! A file is a list of segments, each a range of a shared buffer: the field
//! bytes read from TileDB (tensor data a pickle stores verbatim, a
//! scikit-learn pickle), or a buffer made while decoding (a safetensors
//! header, a materialised strided tensor, `metadata.json`). So a view costs
//! little more memory than the field it comes from, and a clone costs
//! nothing. [`ViewFile::spill`] moves the large buffers to a
//! [`SpillFile`]: a tensor's bytes are then read from disk, by range, when
//! the file is read, and nothing of them stays in memory.
//!
//! Invariants: every segment is non-empty and lies inside its buffer (or
//! its spill file's appended bytes); `starts[i]` is the file offset of
//! segment `i`, strictly increasing from 0; `len` is the sum of the segment
//! lengths.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::{self, Write};
use std::ops::Range;
use std::sync::Arc;

use super::budget::Reservation;
use super::safetensors_writer::SafetensorsFile;
use super::spill::SpillFile;
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
enum Segment {
    /// A range of a buffer in memory.
    Memory { buf: Arc<Vec<u8>>, range: Range<usize> },
    /// `len` bytes of a spill file from `start`.
    Spilled { file: Arc<SpillFile>, start: u64, len: u64 },
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::Memory { range, .. } => range.len() as u64,
            Segment::Spilled { len, .. } => *len,
        }
    }

    /// Fills `dst` with the segment's bytes from `within` on; `dst` must fit
    /// inside the segment.
    fn read(&self, within: u64, dst: &mut [u8]) -> io::Result<()> {
        match self {
            Segment::Memory { buf, range } => {
                let src = usize::try_from(within)
                    .ok()
                    .and_then(|w| range.start.checked_add(w))
                    .and_then(|from| Some(from..from.checked_add(dst.len())?))
                    .filter(|r| r.end <= range.end)
                    .and_then(|r| buf.get(r))
                    .ok_or_else(|| io::Error::other("view segment read out of range"))?;
                dst.copy_from_slice(src);
                Ok(())
            }
            Segment::Spilled { file, start, len } => {
                let end = within.checked_add(dst.len() as u64).filter(|e| e <= len);
                let at = start.checked_add(within).filter(|_| end.is_some());
                let at = at.ok_or_else(|| io::Error::other("view segment read out of range"))?;
                file.read_exact_at(at, dst)
            }
        }
    }
}

/// Where a model's spilled bytes go, and what spills.
#[derive(Debug)]
pub(crate) struct Spill<'s> {
    pub file: &'s Arc<SpillFile>,
    /// Buffers of at least this many bytes are spilled; smaller ones stay.
    pub min_bytes: usize,
    /// Where the field the files borrow from was appended, once it was.
    pub field_at: Option<u64>,
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
        self.push_segment(Segment::Memory { buf, range });
    }

    fn push_segment(&mut self, segment: Segment) {
        let n = segment.len();
        if n == 0 {
            return;
        }
        self.starts.push(self.len);
        self.segments.push(segment);
        self.len = self.len.saturating_add(n);
    }

    /// The same file with its bytes from `field` (the field's buffer this
    /// file was made from) and its own buffers of at least
    /// `spill.min_bytes` moved to `spill.file`: the field is appended once
    /// (the first time a file needs it, its offset kept in
    /// `spill.field_at`), each other buffer when met.
    ///
    /// # Errors
    /// A write to the spill file failed; nothing is lost, the file as it
    /// was stays usable.
    pub(crate) fn spill(&self, field: &Arc<Vec<u8>>, spill: &mut Spill<'_>) -> io::Result<ViewFile> {
        let mut out = ViewFile {
            tensors: self.tensors.clone(),
            reservation: self.reservation.clone(),
            ..ViewFile::default()
        };
        for seg in &self.segments {
            let Segment::Memory { buf, range } = seg else {
                out.push_segment(seg.clone());
                continue;
            };
            let base = if Arc::ptr_eq(buf, field) {
                match spill.field_at {
                    Some(at) => at,
                    None if field.len() >= spill.min_bytes => {
                        let at = spill.file.append(field)?;
                        spill.field_at = Some(at);
                        at
                    }
                    None => {
                        out.push_segment(seg.clone());
                        continue;
                    }
                }
            } else if buf.len() >= spill.min_bytes {
                spill.file.append(buf)?
            } else {
                out.push_segment(seg.clone());
                continue;
            };
            out.push_segment(Segment::Spilled {
                file: Arc::clone(spill.file),
                start: base.saturating_add(range.start as u64),
                len: range.len() as u64,
            });
        }
        Ok(out)
    }

    /// Adds to `seen` the buffers this file keeps in memory that are not in
    /// it yet; returns their bytes.
    pub(crate) fn resident_bytes(&self, seen: &mut HashSet<usize>) -> u64 {
        let mut total = 0u64;
        for seg in &self.segments {
            if let Segment::Memory { buf, .. } = seg
                && seen.insert(Arc::as_ptr(buf).addr())
            {
                total = total.saturating_add(buf.capacity() as u64);
            }
        }
        total
    }

    /// Whether some of the file's bytes are read from a spill file.
    pub fn is_spilled(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Spilled { .. }))
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
    /// the file, 0 at or past it.
    ///
    /// # Errors
    /// Reading a spilled segment back from its file failed.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        // The segment holding `offset` is the last one starting at or before it.
        let first = self.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let mut done = 0usize;
        let mut pos = offset;
        for (seg, &start) in self.segments.iter().zip(&self.starts).skip(first) {
            let Some(within) = pos.checked_sub(start) else {
                break;
            };
            let left = seg.len().saturating_sub(within);
            let Some(dst) = buf.get_mut(done..) else {
                break;
            };
            let n = usize::try_from(left).map_or(dst.len(), |l| l.min(dst.len()));
            if let Some(d) = dst.get_mut(..n) {
                seg.read(within, d)?;
            }
            done += n;
            pos = pos.saturating_add(n as u64);
            if done == buf.len() {
                break;
            }
        }
        Ok(done)
    }

    /// Writes the whole file into `w`.
    ///
    /// # Errors
    /// The first error `w` returns, or a failed read of a spilled segment.
    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        const PIECE_BYTES: u64 = 8 << 20;
        let mut piece = Vec::new();
        for seg in &self.segments {
            if let Segment::Memory { buf, range } = seg {
                w.write_all(buf.get(range.clone()).unwrap_or(&[]))?;
                continue;
            }
            let mut at = 0u64;
            while at < seg.len() {
                let n = (seg.len() - at).min(PIECE_BYTES) as usize;
                piece.resize(n, 0);
                seg.read(at, &mut piece)?;
                w.write_all(&piece)?;
                at += n as u64;
            }
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
                let n = f.read_at(start as u64, &mut buf).unwrap();
                let want = whole.get(start..).unwrap_or(&[]);
                let want = &want[..want.len().min(len)];
                assert_eq!(&buf[..n], want, "start {start} len {len}");
            }
        }
        assert_eq!(f.read_at(u64::MAX, &mut [0u8; 4]).unwrap(), 0);
    }

    #[test]
    fn spilled_files_read_the_same_bytes() {
        let field = Arc::new((0u8..32).collect::<Vec<u8>>());
        let f = sample(&field);
        let mut whole = Vec::new();
        f.write_to(&mut whole).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for min_bytes in [1, 3, 16, 1000] {
            let file = Arc::new(SpillFile::create(dir.path()).unwrap());
            let mut spill = Spill {
                file: &file,
                min_bytes,
                field_at: None,
            };
            let s = f.spill(&field, &mut spill).unwrap();
            assert_eq!(s.is_spilled(), min_bytes <= 32, "min {min_bytes}");
            // Spilling twice appends the field once.
            let again = f.spill(&field, &mut spill).unwrap();
            let mut seen = HashSet::new();
            let resident = s.resident_bytes(&mut seen);
            assert!(resident <= f.resident_bytes(&mut HashSet::new()));
            assert_eq!(again.resident_bytes(&mut seen), 0, "same buffers");
            for g in [&s, &again] {
                let mut out = Vec::new();
                g.write_to(&mut out).unwrap();
                assert_eq!(out, whole, "min {min_bytes}");
                for start in 0..whole.len() {
                    let mut buf = vec![0u8; 7];
                    let n = g.read_at(start as u64, &mut buf).unwrap();
                    assert_eq!(&buf[..n], &whole[start..(start + 7).min(whole.len())]);
                }
            }
        }
    }

    #[test]
    fn plain_bytes_and_foreign_slices() {
        let field = Arc::new(b"abcdef".to_vec());
        let inside = ViewFile::from_content(Content::Bytes(Cow::Borrowed(&field[1..4])), &field);
        let mut buf = [0u8; 8];
        assert_eq!(inside.read_at(0, &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"bcd");
        // A slice of some other buffer is copied, never mistaken for a range.
        let other = b"xyz".to_vec();
        let outside = ViewFile::from_content(Content::Bytes(Cow::Borrowed(&other)), &field);
        assert_eq!(outside.read_at(1, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"yz");
        assert!(ViewFile::from_vec(Vec::new()).is_empty());
        assert!(outside.tensors().is_none());
    }
}
