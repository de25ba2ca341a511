//! A safetensors file laid out without building it: the header bytes plus
//! the tensors in file order, whose bytes stay where they are (borrowed from
//! the field pickle when possible). [`super::view_file::ViewFile`] serves
//! it by byte range.
//!
//! Layout (what Python's `safetensors` writes and reads): an 8-byte
//! little-endian header length N, N bytes of JSON padded with spaces to a
//! multiple of 8, then the tensors' bytes back to back. The JSON holds
//! `"__metadata__"` (string to string, omitted when empty) and, per tensor,
//! `{"dtype", "shape", "data_offsets": [begin, end]}` relative to the data
//! section. Tensors are placed like the Python writer places them: larger
//! dtypes first, then by name.
//!
//! Invariants: names are unique and never `__metadata__`; each tensor's
//! byte length equals `numel(shape) * dtype.size()`; offsets are contiguous
//! and computed with checked arithmetic.

use super::tensor::{Tensor, numel};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("tensor or metadata name {0:?} appears twice")]
    DuplicateName(String),
    #[error("tensor name {0:?} is reserved")]
    ReservedName(String),
    #[error("tensor {name:?} holds {got} bytes, its shape needs {want}")]
    BadLength { name: String, got: usize, want: usize },
    #[error("file size overflows")]
    Overflow,
}

/// Header plus tensor slices; see the module docs.
#[derive(Debug, Clone)]
pub struct SafetensorsFile<'a> {
    /// Length prefix, JSON and padding.
    header: Vec<u8>,
    /// Tensors in file order.
    tensors: Vec<(String, Tensor<'a>)>,
}

fn json_str(s: &str) -> String {
    // serde_json escapes exactly what JSON requires; a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

impl<'a> SafetensorsFile<'a> {
    /// Lays out `tensors` with `metadata` (written in the given order).
    pub fn new(mut tensors: Vec<(String, Tensor<'a>)>, metadata: Vec<(String, String)>) -> Result<Self, WriteError> {
        tensors.sort_by(|(ln, lt), (rn, rt)| rt.dtype.cmp(&lt.dtype).then_with(|| ln.cmp(rn)));
        for pair in tensors.windows(2) {
            if let [(a, _), (b, _)] = pair
                && a == b
            {
                return Err(WriteError::DuplicateName(a.clone()));
            }
        }
        // Same name with two dtypes sorts apart: check all names.
        let mut names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w.first() == w.get(1)) {
            return Err(WriteError::DuplicateName(w.first().copied().unwrap_or("").into()));
        }

        let mut keys: Vec<&str> = metadata.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        if let Some(w) = keys.windows(2).find(|w| w.first() == w.get(1)) {
            return Err(WriteError::DuplicateName(w.first().copied().unwrap_or("").into()));
        }

        let mut json = String::from("{");
        let mut first = true;
        if !metadata.is_empty() {
            json.push_str("\"__metadata__\":{");
            for (i, (k, v)) in metadata.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(&json_str(k));
                json.push(':');
                json.push_str(&json_str(v));
            }
            json.push('}');
            first = false;
        }
        let mut offset: u64 = 0;
        for (name, t) in &tensors {
            if name == "__metadata__" {
                return Err(WriteError::ReservedName(name.clone()));
            }
            let want = numel(&t.shape)
                .ok()
                .and_then(|n| n.checked_mul(t.dtype.size()))
                .ok_or(WriteError::Overflow)?;
            if t.data.len() != want {
                return Err(WriteError::BadLength {
                    name: name.clone(),
                    got: t.data.len(),
                    want,
                });
            }
            let end = offset.checked_add(want as u64).ok_or(WriteError::Overflow)?;
            if !first {
                json.push(',');
            }
            first = false;
            let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
            json.push_str(&format!(
                "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
                json_str(name),
                t.dtype.name(),
                shape.join(",")
            ));
            offset = end;
        }
        json.push('}');
        let mut body = json.into_bytes();
        body.resize(body.len().next_multiple_of(8), b' ');
        let mut header = Vec::with_capacity(8 + body.len());
        header.extend_from_slice(&(body.len() as u64).to_le_bytes());
        header.extend_from_slice(&body);
        (header.len() as u64).checked_add(offset).ok_or(WriteError::Overflow)?;
        Ok(SafetensorsFile { header, tensors })
    }

    /// Bytes of the length prefix, JSON and padding.
    pub fn header_len(&self) -> usize {
        self.header.len()
    }

    /// Tensors in file order.
    #[cfg(test)]
    pub fn tensors(&self) -> &[(String, Tensor<'a>)] {
        &self.tensors
    }

    /// The header bytes and the tensors in file order, for a caller that
    /// keeps them in its own form.
    pub fn into_parts(self) -> (Vec<u8>, Vec<(String, Tensor<'a>)>) {
        (self.header, self.tensors)
    }

    /// The whole file in one buffer.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = self.header.clone();
        for (_, t) in &self.tensors {
            out.extend_from_slice(&t.data);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tiledb_ml::tensor::DType;
    use std::borrow::Cow;

    fn t(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Tensor<'static> {
        Tensor {
            dtype,
            shape,
            data: Cow::Owned(data),
        }
    }

    fn sample() -> SafetensorsFile<'static> {
        SafetensorsFile::new(
            vec![
                ("b".into(), t(DType::F32, vec![2], vec![1, 2, 3, 4, 5, 6, 7, 8])),
                ("a".into(), t(DType::Bool, vec![3], vec![1, 0, 1])),
                ("c".into(), t(DType::I64, vec![], vec![9; 8])),
                ("e".into(), t(DType::F16, vec![0, 2], vec![])),
            ],
            vec![("format".into(), "pt".into())],
        )
        .unwrap()
    }

    #[test]
    fn layout_and_header() {
        let f = sample();
        let names: Vec<&str> = f.tensors().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["c", "b", "e", "a"]);
        let bytes = f.to_vec();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(header["__metadata__"]["format"], "pt");
        assert_eq!(header["c"]["data_offsets"], serde_json::json!([0, 8]));
        assert_eq!(header["a"]["data_offsets"], serde_json::json!([16, 19]));
        assert_eq!(header["e"]["shape"], serde_json::json!([0, 2]));
        assert_eq!(&bytes[8 + n..8 + n + 8], &[9; 8]);
    }

    #[test]
    fn rejects_bad_input() {
        let dup = SafetensorsFile::new(
            vec![
                ("x".into(), t(DType::U8, vec![1], vec![0])),
                ("x".into(), t(DType::F32, vec![1], vec![0; 4])),
            ],
            vec![],
        );
        assert!(matches!(dup, Err(WriteError::DuplicateName(_))));
        let bad = SafetensorsFile::new(vec![("x".into(), t(DType::F32, vec![2], vec![0; 4]))], vec![]);
        assert!(matches!(bad, Err(WriteError::BadLength { .. })));
        let reserved = SafetensorsFile::new(vec![("__metadata__".into(), t(DType::U8, vec![0], vec![]))], vec![]);
        assert!(matches!(reserved, Err(WriteError::ReservedName(_))));
        let meta = SafetensorsFile::new(vec![], vec![("k".into(), "1".into()), ("k".into(), "2".into())]);
        assert!(matches!(meta, Err(WriteError::DuplicateName(_))));
        let empty = SafetensorsFile::new(vec![], vec![]).unwrap();
        assert_eq!(empty.to_vec(), b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ");
    }

    #[test]
    fn loads_in_the_reference_crate() {
        let bytes = sample().to_vec();
        let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let c = st.tensor("c").unwrap();
        assert_eq!(c.shape(), &[] as &[usize]);
        assert_eq!(c.data(), &[9; 8]);
        assert_eq!(st.tensor("a").unwrap().data(), &[1, 0, 1]);
    }
}
