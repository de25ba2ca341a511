//! PyTorch tensors as plain `pickle.dumps` writes them: decoding
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
//! (optionally wrapped in `_rebuild_parameter`) whose storage is
//! `torch.storage._load_from_bytes(b)`, `b` being the legacy (non-zip)
//! `torch.save` stream of that one storage.
//!
//! The legacy stream is: a magic-number pickle, a protocol-version pickle,
//! a sys-info pickle, the object pickle (a bare persistent id
//! `('storage', torch.<Type>Storage, key, location, numel, view_metadata)`),
//! a pickled list of storage keys, then per key an int64 LE element count
//! and the raw little-endian elements.
//!
//! Invariants: every pickle inside the stream goes through the restricted
//! reader (a forbidden global in there is reported like anywhere else);
//! element counts are checked against the bytes present before slicing; the
//! view is materialised by [`super::tensor::materialize`], which checks it
//! against the storage and bounds its size. Storage bytes stay borrowed from
//! the field pickle when it stores them verbatim.

use std::borrow::Cow;

use super::budget::Budget;
use super::pickle::{self, Global, Value};
use super::tensor::{DType, DecodeError, DecodeLimits, Tensor, materialize};

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c) as the
/// minimal two's-complement little-endian bytes `LONG1` stores.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// `torch.serialization.PROTOCOL_VERSION`.
const PROTOCOL_VERSION: i64 = 1001;

/// The safetensors dtype of a legacy storage class (`torch.FloatStorage`...).
pub fn storage_dtype(class: &Global) -> Option<DType> {
    if class.module != "torch" {
        return None;
    }
    Some(match class.name.as_str() {
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "DoubleStorage" => DType::F64,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" | "UntypedStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        _ => return None,
    })
}

/// Whether `v` is a pickled tensor this module decodes.
pub fn is_tensor(v: &Value<'_>) -> bool {
    v.as_object().is_some_and(|o| {
        o.class.is("torch._utils", "_rebuild_tensor_v2") || o.class.is("torch._utils", "_rebuild_parameter")
    })
}

/// One storage read from a legacy `torch.save` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage<'s> {
    pub dtype: DType,
    /// Element count.
    pub numel: usize,
    /// `numel * dtype.size()` raw little-endian bytes.
    pub data: &'s [u8],
}

/// Parses the legacy `torch.save` stream of a single storage.
pub fn parse_storage_stream<'s>(stream: &'s [u8], limits: &pickle::Limits) -> Result<Storage<'s>, DecodeError> {
    let bad = |msg: &str| DecodeError::Storage(msg.to_string());
    let mut pos = 0usize;
    let next = |pos: &mut usize| -> Result<Value<'s>, DecodeError> {
        let rest = stream.get(*pos..).unwrap_or(&[]);
        let (v, used) = pickle::load_prefix(rest, limits)?;
        *pos = pos.checked_add(used).ok_or(DecodeError::Overflow("stream offset"))?;
        Ok(v)
    };

    match next(&mut pos)? {
        Value::BigInt(b) if b == MAGIC => {}
        _ => return Err(bad("bad magic number")),
    }
    if next(&mut pos)?.as_i64() != Some(PROTOCOL_VERSION) {
        return Err(bad("unknown protocol version"));
    }
    let sys_info = next(&mut pos)?;
    if sys_info.get("little_endian").and_then(Value::as_bool) == Some(false) {
        return Err(DecodeError::Unsupported {
            what: "storage byte order",
            detail: "big-endian torch.save stream".into(),
        });
    }

    // The object pickle: the storage itself, i.e. a bare persistent id.
    let object = next(&mut pos)?;
    let Value::PersistentId(pid) = &object else {
        return Err(bad("object pickle is not a storage reference"));
    };
    let fields = pid.as_seq().ok_or_else(|| bad("persistent id is not a tuple"))?;
    let (class, key, declared) = match fields {
        [tag, Value::Global(class), key, _location, numel, rest @ ..]
            if tag.as_str() == Some("storage") && rest.len() <= 1 =>
        {
            if rest.first().is_some_and(|v| *v != Value::None) {
                return Err(DecodeError::Unsupported {
                    what: "storage view",
                    detail: "legacy view_metadata".into(),
                });
            }
            let key = key.as_str().ok_or_else(|| bad("storage key is not a str"))?;
            (class, key, numel.as_i64())
        }
        _ => {
            return Err(bad("persistent id is not ('storage', type, key, location, numel)"));
        }
    };
    let dtype = storage_dtype(class).ok_or_else(|| DecodeError::Unsupported {
        what: "storage type",
        detail: class.to_string(),
    })?;

    let keys = next(&mut pos)?;
    match keys.as_seq() {
        Some([only]) if only.as_str() == Some(key) => {}
        _ => return Err(bad("storage key list does not name exactly this storage")),
    }

    let count_bytes = stream
        .get(pos..pos.saturating_add(8))
        .ok_or_else(|| bad("missing element count"))?;
    let mut buf = [0u8; 8];
    buf.copy_from_slice(count_bytes);
    let count = i64::from_le_bytes(buf);
    pos += 8;
    let numel = usize::try_from(count).map_err(|_| bad("negative element count"))?;
    if declared.is_some_and(|d| d != count) {
        return Err(bad("element count differs from the persistent id"));
    }
    let len = numel
        .checked_mul(dtype.size())
        .ok_or(DecodeError::Overflow("storage bytes"))?;
    let end = pos.checked_add(len).ok_or(DecodeError::Overflow("storage bytes"))?;
    let data = stream
        .get(pos..end)
        .ok_or_else(|| bad("storage bytes run past the stream"))?;
    if end != stream.len() {
        return Err(bad("bytes after the storage data"));
    }
    Ok(Storage { dtype, numel, data })
}

fn int_list(v: &Value<'_>, what: &'static str) -> Result<Vec<usize>, DecodeError> {
    let items = v
        .as_seq()
        .ok_or_else(|| DecodeError::shape(what, "a tuple of ints", v.type_name()))?;
    items
        .iter()
        .map(|i| {
            i.as_i64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| DecodeError::shape(what, "non-negative ints", format!("{i:?}")))
        })
        .collect()
}

/// Decodes a pickled tensor into dtype, shape and row-major bytes.
/// Bytes it has to own (a strided view, a copy out of an owned stream) are
/// charged to `budget` first.
pub fn decode_tensor<'a>(v: &Value<'a>, limits: &DecodeLimits, budget: &Budget<'_>) -> Result<Tensor<'a>, DecodeError> {
    let obj = v
        .as_object()
        .ok_or_else(|| DecodeError::shape("tensor", "a torch tensor", v.type_name()))?;
    if obj.class.is("torch._utils", "_rebuild_parameter") {
        let data = obj
            .args
            .first()
            .ok_or_else(|| DecodeError::shape("parameter", "a tensor argument", "nothing"))?;
        // A Parameter wraps exactly one tensor; it is never nested deeper.
        if data
            .as_object()
            .is_some_and(|o| o.class.is("torch._utils", "_rebuild_parameter"))
        {
            return Err(DecodeError::shape("parameter", "a tensor", "a parameter"));
        }
        return decode_tensor(data, limits, budget);
    }
    if !obj.class.is("torch._utils", "_rebuild_tensor_v2") {
        return Err(DecodeError::shape(
            "tensor",
            "_rebuild_tensor_v2",
            obj.class.to_string(),
        ));
    }
    let [storage, offset, size, stride, ..] = obj.args.as_slice() else {
        return Err(DecodeError::shape(
            "_rebuild_tensor_v2",
            "(storage, offset, size, stride, ...)",
            format!("{} arguments", obj.args.len()),
        ));
    };
    let offset = offset
        .as_i64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| DecodeError::shape("storage offset", "a non-negative int", format!("{offset:?}")))?;
    let shape = int_list(size, "tensor size")?;
    let stride = int_list(stride, "tensor stride")?;

    let loader = storage
        .as_object()
        .filter(|o| o.class.is("torch.storage", "_load_from_bytes"))
        .ok_or_else(|| DecodeError::Unsupported {
            what: "tensor storage",
            detail: format!("{} (only torch.storage._load_from_bytes)", storage.type_name()),
        })?;
    let stream = match loader.args.as_slice() {
        [Value::Bytes(b) | Value::ByteArray(b)] => b,
        _ => {
            return Err(DecodeError::shape(
                "_load_from_bytes",
                "one bytes argument",
                format!("{} arguments", loader.args.len()),
            ));
        }
    };
    // Keep the result borrowed from the field pickle when the stream is.
    match stream {
        Cow::Borrowed(b) => view(b, offset, &shape, &stride, limits, budget),
        Cow::Owned(o) => {
            let t = view(o, offset, &shape, &stride, limits, budget)?;
            if let Cow::Borrowed(b) = &t.data {
                budget.charge(b.len())?;
            }
            Ok(Tensor {
                dtype: t.dtype,
                shape: t.shape,
                data: Cow::Owned(t.data.into_owned()),
            })
        }
    }
}

fn view<'s>(
    stream: &'s [u8],
    offset: usize,
    shape: &[usize],
    stride: &[usize],
    limits: &DecodeLimits,
    budget: &Budget<'_>,
) -> Result<Tensor<'s>, DecodeError> {
    let storage = parse_storage_stream(stream, &limits.pickle)?;
    let data = materialize(
        storage.data,
        storage.dtype.size(),
        offset,
        shape,
        stride,
        limits.max_view_bytes(storage.data.len()),
        budget,
    )?;
    Ok(Tensor {
        dtype: storage.dtype,
        shape: shape.to_vec(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A legacy stream built the way torch writes it (protocol 2 pickles).
    fn stream(class: &str, key: &str, numel: i64, data: &[u8], declared: i64) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.");
        s.extend_from_slice(b"\x80\x02M\xe9\x03.");
        s.extend_from_slice(b"\x80\x02}q\x00X\x0d\x00\x00\x00little_endianq\x01\x88s.");
        s.extend_from_slice(b"\x80\x02(X\x07\x00\x00\x00storageq\x00ctorch\n");
        s.extend_from_slice(class.as_bytes());
        s.extend_from_slice(b"\nq\x01X");
        s.extend_from_slice(&(key.len() as u32).to_le_bytes());
        s.extend_from_slice(key.as_bytes());
        s.extend_from_slice(b"X\x03\x00\x00\x00cpuJ");
        s.extend_from_slice(&(declared as i32).to_le_bytes());
        s.extend_from_slice(b"NtQ.");
        s.extend_from_slice(b"\x80\x02]X");
        s.extend_from_slice(&(key.len() as u32).to_le_bytes());
        s.extend_from_slice(key.as_bytes());
        s.extend_from_slice(b"a.");
        s.extend_from_slice(&numel.to_le_bytes());
        s.extend_from_slice(data);
        s
    }

    #[test]
    fn parses_a_storage() {
        let data: Vec<u8> = (0..6u16).flat_map(|v| v.to_le_bytes()).collect();
        let s = stream("ShortStorage", "k1", 6, &data, 6);
        let st = parse_storage_stream(&s, &pickle::Limits::default()).unwrap();
        assert_eq!(st.dtype, DType::I16);
        assert_eq!(st.numel, 6);
        assert_eq!(st.data, data.as_slice());
    }

    #[test]
    fn rejects_bad_streams() {
        let data = [0u8; 8];
        let lim = pickle::Limits::default();
        // Count larger than the bytes present.
        let s = stream("FloatStorage", "k", 3, &data, 3);
        assert!(parse_storage_stream(&s, &lim).is_err());
        // Declared numel disagrees.
        let s = stream("FloatStorage", "k", 2, &data, 5);
        assert!(parse_storage_stream(&s, &lim).is_err());
        // Negative count.
        let s = stream("FloatStorage", "k", -1, &data, -1);
        assert!(parse_storage_stream(&s, &lim).is_err());
        // Huge count: no overflow, no allocation.
        let s = stream("DoubleStorage", "k", i64::MAX, &data, -1);
        assert!(parse_storage_stream(&s, &lim).is_err());
        // Unknown storage type.
        let s = stream("ComplexFloatStorage", "k", 1, &data, 1);
        assert!(matches!(
            parse_storage_stream(&s, &lim),
            Err(DecodeError::Unsupported { .. })
        ));
        // Trailing bytes.
        let mut s = stream("FloatStorage", "k", 2, &data, 2);
        s.push(0);
        assert!(parse_storage_stream(&s, &lim).is_err());
        // Truncations never panic.
        let s = stream("FloatStorage", "k", 2, &data, 2);
        for cut in 0..s.len() {
            assert!(parse_storage_stream(&s[..cut], &lim).is_err());
        }
    }

    #[test]
    fn storage_types_map_to_dtypes() {
        let g = |n: &str| Global {
            module: "torch".into(),
            name: n.into(),
        };
        assert_eq!(storage_dtype(&g("BFloat16Storage")), Some(DType::BF16));
        assert_eq!(storage_dtype(&g("BoolStorage")), Some(DType::Bool));
        assert_eq!(storage_dtype(&g("CharStorage")), Some(DType::I8));
        assert_eq!(storage_dtype(&g("QInt8Storage")), None);
        assert_eq!(
            storage_dtype(&Global {
                module: "os".into(),
                name: "FloatStorage".into()
            }),
            None
        );
    }
}
