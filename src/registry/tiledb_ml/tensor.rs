//! Dense tensors as the safetensors format stores them, and the one routine
//! that turns a strided view of a storage into row-major bytes.
//!
//! Invariants: a [`Tensor`] always holds exactly `numel(shape) * dtype.size()`
//! bytes, little-endian, row-major (C order). Every size derived from input
//! (shape, strides, offsets) goes through checked arithmetic, and a view is
//! checked to lie inside its storage before a byte is copied. A contiguous
//! view is borrowed, not copied.

use std::borrow::Cow;

use super::budget::Budget;

/// Element types, named as safetensors names them.
///
/// The declaration order follows safetensors' own `Dtype` enum, whose order
/// its writer uses to place tensors (larger alignment first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    Bool,
    U8,
    I8,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// The safetensors header spelling (`"F32"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U64 => "U64",
        }
    }
}

/// A dense, row-major, little-endian tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor<'a> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

/// Why a value inside a pickle could not be read as a tensor (or as the
/// structure a view expects).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// A pickle inside a torch storage stream was refused (offsets are
    /// relative to that stream).
    #[error("torch storage stream: {0}")]
    StoragePickle(#[from] super::pickle::Error),
    #[error("{context}: expected {expected}, found {found}")]
    Shape {
        context: String,
        expected: &'static str,
        found: String,
    },
    #[error("unsupported {what}: {detail}")]
    Unsupported { what: &'static str, detail: String },
    #[error("size overflow computing {0}")]
    Overflow(&'static str),
    #[error("view needs element {needed} of a storage of {available} elements")]
    OutOfBounds { needed: usize, available: usize },
    #[error("tensor of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
    #[error("malformed torch storage stream: {0}")]
    Storage(String),
    #[error(transparent)]
    OverBudget(#[from] super::budget::OverBudget),
}

impl DecodeError {
    /// Helper for "expected X, found Y" errors.
    pub fn shape(context: impl Into<String>, expected: &'static str, found: impl Into<String>) -> Self {
        DecodeError::Shape {
            context: context.into(),
            expected,
            found: found.into(),
        }
    }
}

/// Bounds for turning pickled values into tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Bounds for every pickle read (the field pickle and the pickles inside
    /// each torch storage stream).
    pub pickle: super::pickle::Limits,
    /// A view normally materialises to at most its storage's size; one that
    /// repeats elements (stride 0, overlapping strides) may grow up to this
    /// many bytes, so a tiny storage cannot expand into a huge allocation.
    pub max_expanded_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            pickle: super::pickle::Limits::default(),
            max_expanded_bytes: 256 << 20,
        }
    }
}

impl DecodeLimits {
    /// Most bytes a view of a `storage_len`-byte storage may materialise to.
    pub fn max_view_bytes(&self, storage_len: usize) -> usize {
        storage_len.max(self.max_expanded_bytes)
    }
}

/// Product of the dimensions, checked.
pub fn numel(shape: &[usize]) -> Result<usize, DecodeError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or(DecodeError::Overflow("element count"))
}

/// Row-major strides (in elements) of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Result<Vec<usize>, DecodeError> {
    let mut strides = vec![0usize; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.checked_mul(d).ok_or(DecodeError::Overflow("contiguous strides"))?;
    }
    Ok(strides)
}

/// Materialises the view `(offset, shape, stride)` (all in elements) of
/// `storage` (raw little-endian elements of `elem_size` bytes) as row-major
/// bytes. The result may not exceed `max_bytes`; a contiguous view is
/// returned borrowed, any other is charged to `budget` before it is made.
pub fn materialize<'a>(
    storage: &'a [u8],
    elem_size: usize,
    offset: usize,
    shape: &[usize],
    stride: &[usize],
    max_bytes: usize,
    budget: &Budget<'_>,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    if shape.len() != stride.len() {
        return Err(DecodeError::shape(
            "tensor stride",
            "one stride per dimension",
            format!("{} dims and {} strides", shape.len(), stride.len()),
        ));
    }
    if elem_size == 0 {
        return Err(DecodeError::Overflow("element size"));
    }
    let count = numel(shape)?;
    let out_len = count
        .checked_mul(elem_size)
        .ok_or(DecodeError::Overflow("tensor bytes"))?;
    if out_len > max_bytes {
        return Err(DecodeError::TooLarge {
            bytes: out_len,
            limit: max_bytes,
        });
    }
    if count == 0 {
        return Ok(Cow::Borrowed(&[]));
    }
    // Highest element index the view touches; it must lie in the storage.
    let mut last = offset;
    for (&d, &s) in shape.iter().zip(stride) {
        let span = (d - 1).checked_mul(s).ok_or(DecodeError::Overflow("view extent"))?;
        last = last.checked_add(span).ok_or(DecodeError::Overflow("view extent"))?;
    }
    let available = storage.len() / elem_size;
    if last >= available {
        return Err(DecodeError::OutOfBounds {
            needed: last,
            available,
        });
    }
    // Dimensions of size 1 never move the index: ignore their strides.
    let contiguous = {
        let want = contiguous_strides(shape)?;
        shape
            .iter()
            .zip(stride.iter().zip(&want))
            .all(|(&d, (&s, &w))| d == 1 || s == w)
    };
    let start = offset
        .checked_mul(elem_size)
        .ok_or(DecodeError::Overflow("view offset"))?;
    if contiguous {
        let end = start.checked_add(out_len).ok_or(DecodeError::Overflow("view end"))?;
        return storage
            .get(start..end)
            .map(Cow::Borrowed)
            .ok_or(DecodeError::OutOfBounds {
                needed: last,
                available,
            });
    }
    // General case: walk the index odometer-style, copying the innermost
    // dimension as one run when it is unit-strided. Size-1 dimensions get
    // stride 0 so an arbitrary stride there cannot move the index.
    let stride: Vec<usize> = shape
        .iter()
        .zip(stride)
        .map(|(&d, &s)| if d == 1 { 0 } else { s })
        .collect();
    let oob = |needed: usize| DecodeError::OutOfBounds { needed, available };
    let element = |index: usize, len: usize| -> Result<&'a [u8], DecodeError> {
        let from = index.checked_mul(elem_size).ok_or(oob(index))?;
        let to = len
            .checked_mul(elem_size)
            .and_then(|n| n.checked_add(from))
            .ok_or(oob(index))?;
        storage.get(from..to).ok_or(oob(index))
    };
    let (inner_len, inner_stride) = match (shape.last(), stride.last()) {
        (Some(&d), Some(&s)) => (d, s),
        _ => (1, 1),
    };
    budget.charge(out_len)?;
    let outer = shape.len().saturating_sub(1);
    let outer_shape = shape.get(..outer).unwrap_or(&[]);
    let outer_stride = stride.get(..outer).unwrap_or(&[]);
    let mut out = Vec::with_capacity(out_len);
    let mut index = vec![0usize; outer];
    // Element index of the current row's first element; never above `last`
    // while a row is copied.
    let mut base = offset;
    loop {
        if inner_stride == 1 || inner_len == 1 {
            out.extend_from_slice(element(base, inner_len)?);
        } else {
            let mut at = base;
            for i in 0..inner_len {
                if i > 0 {
                    at = at.checked_add(inner_stride).ok_or(oob(at))?;
                }
                out.extend_from_slice(element(at, 1)?);
            }
        }
        // Advance the outer index; stop after the last row.
        let mut dim = outer;
        loop {
            if dim == 0 {
                return Ok(Cow::Owned(out));
            }
            dim -= 1;
            let (Some(i), Some(&d), Some(&s)) = (index.get_mut(dim), outer_shape.get(dim), outer_stride.get(dim))
            else {
                return Ok(Cow::Owned(out));
            };
            *i += 1;
            if *i < d {
                base = base.checked_add(s).ok_or(oob(base))?;
                break;
            }
            // Rewind this dimension: back by (d - 1) steps.
            let back = (d - 1).checked_mul(s).ok_or(oob(base))?;
            base = base.checked_sub(back).ok_or(oob(base))?;
            *i = 0;
        }
    }
}

/// Swaps the byte order of every `elem_size`-byte element in place.
pub fn byteswap(data: &mut [u8], elem_size: usize) {
    if elem_size > 1 {
        for chunk in data.chunks_exact_mut(elem_size) {
            chunk.reverse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlimited() -> Budget<'static> {
        Budget::standalone(u64::MAX)
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn contiguous_is_borrowed() {
        let storage = f32s(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let out = materialize(&storage, 4, 2, &[2, 2], &[2, 1], 1 << 20, &unlimited()).unwrap();
        assert!(matches!(out, Cow::Borrowed(_)));
        assert_eq!(out.as_ref(), f32s(&[2.0, 3.0, 4.0, 5.0]).as_slice());
    }

    #[test]
    fn transpose_and_expand() {
        let storage = f32s(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        // 2x3 transposed into 3x2.
        let t = materialize(&storage, 4, 0, &[3, 2], &[1, 3], 1 << 20, &unlimited()).unwrap();
        assert_eq!(t.as_ref(), f32s(&[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]).as_slice());
        // Broadcast a row.
        let e = materialize(&storage, 4, 1, &[2, 3], &[0, 1], 1 << 20, &unlimited()).unwrap();
        assert_eq!(e.as_ref(), f32s(&[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]).as_slice());
        // 0-d.
        let z = materialize(&storage, 4, 5, &[], &[], 1 << 20, &unlimited()).unwrap();
        assert_eq!(z.as_ref(), f32s(&[5.0]).as_slice());
    }

    #[test]
    fn bounds_are_checked() {
        let storage = f32s(&[0.0, 1.0]);
        assert!(matches!(
            materialize(&storage, 4, 1, &[2], &[1], 1 << 20, &unlimited()),
            Err(DecodeError::OutOfBounds { .. })
        ));
        assert!(matches!(
            materialize(&storage, 4, 0, &[usize::MAX, 2], &[0, 0], usize::MAX, &unlimited()),
            Err(DecodeError::Overflow(_))
        ));
        assert!(matches!(
            materialize(&storage, 4, 0, &[1 << 20], &[0], 1 << 10, &unlimited()),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            materialize(&storage, 4, usize::MAX, &[1], &[1], 1 << 10, &unlimited()),
            Err(DecodeError::OutOfBounds { .. }) | Err(DecodeError::Overflow(_))
        ));
        assert_eq!(
            materialize(&storage, 4, 99, &[0, 3], &[3, 1], 1 << 10, &unlimited())
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn dtype_order_matches_safetensors() {
        let mut v = vec![DType::Bool, DType::F64, DType::I64, DType::F16, DType::BF16];
        v.sort_by(|a, b| b.cmp(a));
        assert_eq!(v, vec![DType::I64, DType::F64, DType::BF16, DType::F16, DType::Bool]);
    }
}
