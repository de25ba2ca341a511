//! numpy arrays and scalars as numpy pickles them, decoded into
//! [`Tensor`]s without numpy.
//!
//! Forms understood:
//! - `_reconstruct(ndarray, (0,), b'b')` followed by `BUILD` with the
//!   `ndarray.__setstate__` tuple `([version,] shape, dtype, is_fortran,
//!   data)` (protocols 0-4), in `numpy.core.multiarray` or
//!   `numpy._core.multiarray`;
//! - `_frombuffer(buffer, dtype, shape, order)` (protocol 5, in-band);
//! - `scalar(dtype, data)` for numpy scalars (`np.float32(1.5)`).
//!
//! A dtype is `dtype(code, align, copy)` plus its `BUILD` state `(version,
//! byteorder, subarray, names, fields, elsize, alignment, flags)`; only plain
//! numeric and bool dtypes are accepted. Invariants: the data length must
//! equal `numel * itemsize` exactly (as numpy requires); Fortran-order data
//! is reordered to row-major; big-endian data is swapped to little-endian.

use std::borrow::Cow;

use super::budget::Budget;
use super::pickle::{Object, Value};
use super::tensor::{DType, DecodeError, Tensor, byteswap, materialize, numel};

const MODULES: [&str; 2] = ["numpy.core.multiarray", "numpy._core.multiarray"];
const NUMERIC: [&str; 2] = ["numpy.core.numeric", "numpy._core.numeric"];

fn is_call(o: &Object<'_>, modules: &[&str], name: &str) -> bool {
    o.class.name == name && modules.contains(&o.class.module.as_str())
}

/// Whether `v` is a pickled ndarray.
pub fn is_ndarray(v: &Value<'_>) -> bool {
    v.as_object()
        .is_some_and(|o| is_call(o, &MODULES, "_reconstruct") || is_call(o, &NUMERIC, "_frombuffer"))
}

/// Whether `v` is a pickled numpy scalar.
pub fn is_scalar(v: &Value<'_>) -> bool {
    v.as_object().is_some_and(|o| is_call(o, &MODULES, "scalar"))
}

/// Byte order of a dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Little,
    Big,
}

/// Reads a pickled `numpy.dtype`.
fn decode_dtype(v: &Value<'_>) -> Result<(DType, Order), DecodeError> {
    let o = v
        .as_object()
        .filter(|o| {
            o.class.name == "dtype" && (o.class.module == "numpy" || MODULES.contains(&o.class.module.as_str()))
        })
        .ok_or_else(|| DecodeError::shape("numpy dtype", "numpy.dtype(...)", v.type_name()))?;
    let code = o
        .args
        .first()
        .and_then(Value::as_str)
        .ok_or_else(|| DecodeError::shape("numpy dtype", "a type code", "no str argument"))?;
    let dtype = match code {
        "b1" => DType::Bool,
        "u1" => DType::U8,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "u2" => DType::U16,
        "f2" => DType::F16,
        "i4" => DType::I32,
        "u4" => DType::U32,
        "f4" => DType::F32,
        "f8" => DType::F64,
        "i8" => DType::I64,
        "u8" => DType::U64,
        other => {
            return Err(DecodeError::Unsupported {
                what: "numpy dtype",
                detail: other.to_string(),
            });
        }
    };
    let mut order = Order::Little;
    if let Some(state) = &o.state {
        let items = state
            .as_seq()
            .ok_or_else(|| DecodeError::shape("numpy dtype state", "a tuple", state.type_name()))?;
        match items.get(1).and_then(Value::as_str) {
            // '=' is the writer's native order; numpy writes '<' or '>' for
            // multi-byte types, so '=' only shows up from little-endian hosts.
            Some("<" | "|" | "=") => {}
            Some(">") => order = Order::Big,
            _ => {
                return Err(DecodeError::shape(
                    "numpy dtype state",
                    "a byte order",
                    format!("{:?}", items.get(1)),
                ));
            }
        }
        // subarray, names, fields: a structured dtype is not a plain tensor.
        if items.get(2..5).is_some_and(|s| s.iter().any(|v| *v != Value::None)) {
            return Err(DecodeError::Unsupported {
                what: "numpy dtype",
                detail: "structured or sub-array dtype".into(),
            });
        }
    }
    Ok((dtype, order))
}

fn shape_of(v: &Value<'_>) -> Result<Vec<usize>, DecodeError> {
    let items = v
        .as_seq()
        .ok_or_else(|| DecodeError::shape("numpy shape", "a tuple", v.type_name()))?;
    items
        .iter()
        .map(|i| {
            i.as_i64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| DecodeError::shape("numpy shape", "non-negative ints", format!("{i:?}")))
        })
        .collect()
}

/// Fortran-order strides (in elements) of `shape`.
fn fortran_strides(shape: &[usize]) -> Result<Vec<usize>, DecodeError> {
    let mut acc = 1usize;
    let mut out = Vec::with_capacity(shape.len());
    for &d in shape {
        out.push(acc);
        acc = acc.checked_mul(d).ok_or(DecodeError::Overflow("fortran strides"))?;
    }
    Ok(out)
}

/// Builds the tensor from raw array bytes in C or Fortran order.
fn from_raw<'a>(
    data: &Cow<'a, [u8]>,
    dtype: DType,
    order: Order,
    shape: Vec<usize>,
    fortran: bool,
    budget: &Budget<'_>,
) -> Result<Tensor<'a>, DecodeError> {
    let len = numel(&shape)?
        .checked_mul(dtype.size())
        .ok_or(DecodeError::Overflow("array bytes"))?;
    if data.len() != len {
        return Err(DecodeError::shape(
            "numpy array data",
            "numel * itemsize bytes",
            format!("{} bytes for {len}", data.len()),
        ));
    }
    let mut bytes: Cow<'a, [u8]> = if fortran && shape.len() > 1 {
        let strides = fortran_strides(&shape)?;
        let view = materialize(data, dtype.size(), 0, &shape, &strides, len, budget)?;
        if matches!(view, Cow::Borrowed(_)) {
            budget.charge(len)?;
        }
        Cow::Owned(view.into_owned())
    } else {
        // An owned buffer (bytes the pickle reader had to copy) is copied
        // again for every reference to it.
        if matches!(data, Cow::Owned(_)) {
            budget.charge(len)?;
        }
        data.clone()
    };
    if order == Order::Big {
        if matches!(bytes, Cow::Borrowed(_)) {
            budget.charge(len)?;
        }
        byteswap(bytes.to_mut(), dtype.size());
    }
    Ok(Tensor {
        dtype,
        shape,
        data: bytes,
    })
}

/// Decodes a pickled ndarray.
pub fn decode_array<'a>(v: &Value<'a>, budget: &Budget<'_>) -> Result<Tensor<'a>, DecodeError> {
    let o = v
        .as_object()
        .ok_or_else(|| DecodeError::shape("numpy array", "an ndarray", v.type_name()))?;
    if is_call(o, &NUMERIC, "_frombuffer") {
        let [buf, dtype, shape, order] = o.args.as_slice() else {
            return Err(DecodeError::shape(
                "_frombuffer",
                "(buffer, dtype, shape, order)",
                format!("{} arguments", o.args.len()),
            ));
        };
        let data = match buf {
            Value::Bytes(b) | Value::ByteArray(b) => b,
            other => {
                return Err(DecodeError::shape("_frombuffer", "a buffer", other.type_name()));
            }
        };
        let (dtype, byte_order) = decode_dtype(dtype)?;
        let fortran = match order.as_str() {
            Some("C") => false,
            Some("F") => true,
            _ => {
                return Err(DecodeError::shape(
                    "_frombuffer",
                    "order 'C' or 'F'",
                    format!("{order:?}"),
                ));
            }
        };
        return from_raw(data, dtype, byte_order, shape_of(shape)?, fortran, budget);
    }
    if !is_call(o, &MODULES, "_reconstruct") {
        return Err(DecodeError::shape("numpy array", "_reconstruct", o.class.to_string()));
    }
    match o.args.first() {
        Some(Value::Global(g))
            if g.name == "ndarray" && (g.module == "numpy" || MODULES.contains(&g.module.as_str())) => {}
        _ => {
            return Err(DecodeError::Unsupported {
                what: "ndarray subclass",
                detail: format!("{:?}", o.args.first()),
            });
        }
    }
    let state = o
        .state
        .as_ref()
        .ok_or_else(|| DecodeError::shape("numpy array", "a __setstate__ tuple", "no state"))?;
    let items = state
        .as_seq()
        .ok_or_else(|| DecodeError::shape("numpy array state", "a tuple", state.type_name()))?;
    let (shape, dtype, fortran, data) = match items {
        [_, shape, dtype, fortran, data] | [shape, dtype, fortran, data] => (shape, dtype, fortran, data),
        _ => {
            return Err(DecodeError::shape(
                "numpy array state",
                "(version, shape, dtype, is_fortran, data)",
                format!("{} items", items.len()),
            ));
        }
    };
    let (dtype, order) = decode_dtype(dtype)?;
    let fortran = fortran
        .as_bool()
        .or_else(|| fortran.as_i64().map(|i| i != 0))
        .ok_or_else(|| DecodeError::shape("numpy array state", "a bool is_fortran", fortran.type_name()))?;
    let data = match data {
        Value::Bytes(b) | Value::ByteArray(b) => b,
        other => {
            return Err(DecodeError::Unsupported {
                what: "numpy array data",
                detail: format!("{} (object arrays are not tensors)", other.type_name()),
            });
        }
    };
    from_raw(data, dtype, order, shape_of(shape)?, fortran, budget)
}

/// Decodes a pickled numpy scalar as a 0-d tensor.
pub fn decode_scalar<'a>(v: &Value<'a>, budget: &Budget<'_>) -> Result<Tensor<'a>, DecodeError> {
    let o = v
        .as_object()
        .filter(|o| is_call(o, &MODULES, "scalar"))
        .ok_or_else(|| DecodeError::shape("numpy scalar", "scalar(dtype, data)", v.type_name()))?;
    let [dtype, data] = o.args.as_slice() else {
        return Err(DecodeError::shape(
            "numpy scalar",
            "(dtype, data)",
            format!("{} arguments", o.args.len()),
        ));
    };
    let (dtype, order) = decode_dtype(dtype)?;
    let data = match data {
        Value::Bytes(b) | Value::ByteArray(b) => b,
        other => {
            return Err(DecodeError::shape("numpy scalar", "bytes", other.type_name()));
        }
    };
    from_raw(data, dtype, order, Vec::new(), false, budget)
}

/// Decodes an ndarray or a numpy scalar.
/// Bytes it has to own (Fortran order, big-endian, a copy of an owned
/// buffer) are charged to `budget` first.
pub fn decode_any<'a>(v: &Value<'a>, budget: &Budget<'_>) -> Result<Tensor<'a>, DecodeError> {
    if is_scalar(v) {
        decode_scalar(v, budget)
    } else {
        decode_array(v, budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tiledb_ml::pickle;

    #[test]
    fn protocol2_f4_array() {
        // np.arange(24, dtype='f4').reshape(4, 6) / 7 at protocol 2: the
        // data travels as _codecs.encode(latin-1 text).
        let p = include_bytes!("../../../tests/data/tiledb_ml/handmade/np_f4_2d_p2.pkl");
        let v = pickle::load(p).unwrap();
        assert!(is_ndarray(&v));
        let t = decode_array(&v, &Budget::standalone(u64::MAX)).unwrap();
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(t.shape, vec![4, 6]);
        let want: Vec<u8> = (0..24).flat_map(|i| (i as f32 / 7.0).to_le_bytes()).collect();
        assert_eq!(t.data.as_ref(), want.as_slice());
    }

    #[test]
    fn scalar_and_bad_lengths() {
        // np.int64(-7) at protocol 4, and the same with one data byte cut.
        let good = b"\x80\x04\x95j\x00\x00\x00\x00\x00\x00\x00\x8c\x16numpy._core.multiarray\x94\x8c\x06scalar\x94\x93\x94\x8c\x05numpy\x94\x8c\x05dtype\x94\x93\x94\x8c\x02i8\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01<\x94NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94bC\x08\xf9\xff\xff\xff\xff\xff\xff\xff\x94\x86\x94R\x94.";
        let v = pickle::load(good).unwrap();
        let t = decode_any(&v, &Budget::standalone(u64::MAX)).unwrap();
        assert_eq!((t.dtype, t.shape.len()), (DType::I64, 0));
        assert_eq!(t.data.as_ref(), (-7i64).to_le_bytes().as_slice());
        let mut short = good.to_vec();
        let at = short.iter().position(|&b| b == b'C').unwrap();
        short[at + 1] = 7;
        short.remove(at + 2);
        short[3] -= 1; // the FRAME length
        let v = pickle::load(&short).unwrap();
        assert!(decode_any(&v, &Budget::standalone(u64::MAX)).is_err());
    }
}
