//! Validation of `.safetensors` files and the tensor index stored beside
//! them (`modelfs.tensors`).
//!
//! A file is valid when its 8-byte little-endian header length is within the
//! 100 MB limit and the file, the JSON header parses, every tensor's dtype
//! and shape need exactly the bytes its offsets cover, and the tensors tile
//! the data section from 0 to the end of the file with no gap or overlap.

use std::collections::BTreeMap;

use safetensors::tensor::TensorInfo;
use serde::{Deserialize, Serialize};

use super::error::SafetensorsProblem;

/// The largest header the safetensors format allows, in bytes.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor of a safetensors file, with absolute byte offsets in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// `[begin, end)` in the whole file (header included).
    pub range: [u64; 2],
}

/// The tensors of a validated file, in data order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorIndex {
    /// Length of the JSON header (the value of the first 8 bytes).
    pub header_len: u64,
    pub tensors: Vec<TensorEntry>,
    /// The `__metadata__` map, when present.
    pub metadata: Option<BTreeMap<String, String>>,
}

impl TensorIndex {
    /// Bytes before the first tensor: 8 plus the header.
    pub fn data_start(&self) -> u64 {
        8 + self.header_len
    }

    /// The size of the file the header describes: where the last tensor ends.
    pub fn file_size(&self) -> u64 {
        self.tensors.last().map_or(self.data_start(), |t| t.range[1])
    }
}

/// Reads the header length from the first 8 bytes of a file of `size` bytes
/// and checks it against the limit and the file size.
pub fn header_len(first8: &[u8], size: u64) -> Result<u64, SafetensorsProblem> {
    let Some(bytes) = first8.get(..8) else {
        return Err(SafetensorsProblem::TooShort { size });
    };
    let mut a = [0u8; 8];
    a.copy_from_slice(bytes);
    let len = u64::from_le_bytes(a);
    if len > MAX_HEADER_BYTES {
        return Err(SafetensorsProblem::HeaderTooLarge { len });
    }
    if 8 + len > size {
        return Err(SafetensorsProblem::HeaderPastEof { len, size });
    }
    Ok(len)
}

/// Validates the JSON `header` of a file of `size` bytes and builds its index.
pub fn validate(header: &[u8], size: u64) -> Result<TensorIndex, SafetensorsProblem> {
    let index = index_header(header)?;
    let data_end = index.file_size();
    if data_end != size {
        return Err(SafetensorsProblem::SizeMismatch { data_end, size });
    }
    Ok(index)
}

/// Validates the JSON `header` on its own and builds its index; the file it
/// describes is [`TensorIndex::file_size`] bytes (what a streaming writer
/// learns from the header before the data arrives).
pub fn index_header(header: &[u8]) -> Result<TensorIndex, SafetensorsProblem> {
    let header_len = header.len() as u64;
    let text = std::str::from_utf8(header).map_err(|e| SafetensorsProblem::BadJson(e.to_string()))?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| SafetensorsProblem::BadJson(e.to_string()))?;
    let mut metadata = None;
    let mut tensors = Vec::with_capacity(map.len());
    for (name, value) in map {
        if name == "__metadata__" {
            let m: BTreeMap<String, String> =
                serde_json::from_value(value).map_err(|e| SafetensorsProblem::BadTensor {
                    name: name.clone(),
                    problem: format!("must map strings to strings: {e}"),
                })?;
            metadata = Some(m);
            continue;
        }
        let info: TensorInfo = serde_json::from_value(value).map_err(|e| SafetensorsProblem::BadTensor {
            name: name.clone(),
            problem: e.to_string(),
        })?;
        let (begin, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        let bad = |problem: String| SafetensorsProblem::BadTensor {
            name: name.clone(),
            problem,
        };
        if end < begin {
            return Err(bad(format!("offsets [{begin}, {end}) run backwards")));
        }
        let elements = info
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad(format!("shape {:?} overflows", info.shape)))?;
        let bits = elements
            .checked_mul(info.dtype.bitsize() as u64)
            .ok_or_else(|| bad(format!("shape {:?} overflows", info.shape)))?;
        if bits % 8 != 0 || bits / 8 != end - begin {
            return Err(bad(format!(
                "shape {:?} of {} needs {} bits but its offsets [{begin}, {end}) hold {} bytes",
                info.shape,
                info.dtype,
                bits,
                end - begin
            )));
        }
        tensors.push(TensorEntry {
            name,
            dtype: info.dtype.to_string(),
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            range: [begin, end],
        });
    }
    tensors.sort_by_key(|t| t.range);
    let mut data_end = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        if t.range[0] != data_end {
            let (first, first_end) = match i.checked_sub(1).and_then(|p| tensors.get(p)) {
                Some(p) => (p.name.clone(), p.range[1]),
                None => ("(start of data)".to_string(), 0),
            };
            return Err(SafetensorsProblem::Overlap {
                first,
                first_end,
                second: t.name.clone(),
                second_begin: t.range[0],
            });
        }
        data_end = t.range[1];
    }
    let data_start = 8 + header_len;
    if data_start.checked_add(data_end).is_none() {
        return Err(SafetensorsProblem::BadTensor {
            name: tensors.last().map(|t| t.name.clone()).unwrap_or_default(),
            problem: format!("data offset {data_end} is past any file size"),
        });
    }
    for t in &mut tensors {
        t.range = [t.range[0] + data_start, t.range[1] + data_start];
    }
    Ok(TensorIndex {
        header_len,
        tensors,
        metadata,
    })
}

/// Validates a whole file held in memory.
pub fn validate_bytes(file: &[u8]) -> Result<TensorIndex, SafetensorsProblem> {
    let size = file.len() as u64;
    let len = header_len(file, size)?;
    validate(&file[8..8 + len as usize], size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend(std::iter::repeat_n(0u8, data_len));
        f
    }

    #[test]
    fn valid_file_is_indexed_in_data_order() {
        let h = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"__metadata__":{"format":"pt"}}"#;
        let idx = validate_bytes(&file(h, 12)).unwrap();
        assert_eq!(idx.tensors[0].name, "a");
        assert_eq!(idx.tensors[0].range, [8 + h.len() as u64, 12 + h.len() as u64]);
        assert_eq!(idx.tensors[1].dtype, "F32");
        assert_eq!(idx.metadata.unwrap()["format"], "pt");
    }

    #[test]
    fn every_corruption_is_named() {
        let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(matches!(
            validate_bytes(&[1, 2, 3]),
            Err(SafetensorsProblem::TooShort { .. })
        ));
        let mut huge = file(ok, 8);
        huge[..8].copy_from_slice(&(MAX_HEADER_BYTES + 1).to_le_bytes());
        assert!(matches!(
            validate_bytes(&huge),
            Err(SafetensorsProblem::HeaderTooLarge { .. })
        ));
        let mut past = file(ok, 8);
        past[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(matches!(
            validate_bytes(&past),
            Err(SafetensorsProblem::HeaderPastEof { .. })
        ));
        let truncated = &file(ok, 8)[..8 + ok.len() + 4];
        assert!(matches!(
            validate_bytes(truncated),
            Err(SafetensorsProblem::SizeMismatch { .. })
        ));
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let e = validate_bytes(&file(overlap, 8)).unwrap_err();
        assert!(matches!(e, SafetensorsProblem::Overlap { .. }), "{e}");
        assert!(
            e.to_string().contains("\"a\"") && e.to_string().contains("\"b\""),
            "{e}"
        );
        let shape = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let e = validate_bytes(&file(shape, 8)).unwrap_err();
        assert!(e.to_string().contains("needs 96 bits"), "{e}");
        assert!(matches!(
            validate_bytes(&file("{not json", 0)),
            Err(SafetensorsProblem::BadJson(_))
        ));
        let dtype = r#"{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(matches!(
            validate_bytes(&file(dtype, 8)),
            Err(SafetensorsProblem::BadTensor { .. })
        ));
    }

    #[test]
    fn empty_file_with_no_tensors_is_valid() {
        let idx = validate_bytes(&file("{}", 0)).unwrap();
        assert!(idx.tensors.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = validate_bytes(&bytes);
        }
    }
}
