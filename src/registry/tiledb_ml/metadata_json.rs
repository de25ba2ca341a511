//! `metadata.json`: every metadata key of a TileDB-ML array as one JSON
//! object, the way the reference files (`json.dump(meta, indent=1,
//! sort_keys=True)` in Python) hold it.
//!
//! Values: text as a JSON string; one number as a number, several as an
//! array (floats spelt as Python's `repr`, non-finite ones as Python's
//! `json` spells them); `BOOL` as `true`/`false`; a `BLOB` (or `UINT8` list)
//! holding JSON text as that JSON value, copied verbatim so no number is
//! re-rounded; other blobs as a string when they are UTF-8 and as an array
//! of byte values when not. Keys keep the order they come in (TileDB's,
//! sorted).

use crate::tiledb::{Datatype, MetaValue};

use super::pyjson::json_float;

/// The JSON text of `meta`, one key per line, with a trailing newline.
pub fn metadata_json(meta: &[(String, MetaValue)]) -> Vec<u8> {
    let mut out = String::from("{");
    for (i, (key, value)) in meta.iter().enumerate() {
        out.push_str(if i == 0 { "\n " } else { ",\n " });
        out.push_str(&json_string(key));
        out.push_str(": ");
        out.push_str(&value_json(value));
    }
    out.push_str(if meta.is_empty() { "}\n" } else { "\n}\n" });
    out.into_bytes()
}

fn json_string(s: &str) -> String {
    // serde_json escapes exactly what JSON requires; a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Whether `text` is one complete JSON value.
fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Numbers of `N`-byte little-endian values, each spelt by `f`.
fn numbers<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> String) -> Vec<String> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

fn value_json(v: &MetaValue) -> String {
    let b = v.bytes.as_slice();
    let items = match v.datatype {
        d if d.is_string() => return json_string(&String::from_utf8_lossy(b)),
        Datatype::BLOB => return blob_json(b),
        Datatype::INT8 => numbers::<1>(b, |a| i8::from_le_bytes(a).to_string()),
        Datatype::UINT8 => {
            // TileDB-Py keeps `bytes` as BLOB; a UINT8 list may still be text.
            if let Ok(text) = std::str::from_utf8(b)
                && v.num > 1
                && is_json(text.trim())
            {
                return text.trim().to_string();
            }
            numbers::<1>(b, |a| a[0].to_string())
        }
        Datatype::INT16 => numbers::<2>(b, |a| i16::from_le_bytes(a).to_string()),
        Datatype::UINT16 => numbers::<2>(b, |a| u16::from_le_bytes(a).to_string()),
        Datatype::INT32 => numbers::<4>(b, |a| i32::from_le_bytes(a).to_string()),
        Datatype::UINT32 => numbers::<4>(b, |a| u32::from_le_bytes(a).to_string()),
        Datatype::INT64 => numbers::<8>(b, |a| i64::from_le_bytes(a).to_string()),
        Datatype::UINT64 => numbers::<8>(b, |a| u64::from_le_bytes(a).to_string()),
        Datatype::FLOAT32 => numbers::<4>(b, |a| json_float(f64::from(f32::from_le_bytes(a)))),
        Datatype::FLOAT64 => numbers::<8>(b, |a| json_float(f64::from_le_bytes(a))),
        Datatype::BOOL => numbers::<1>(b, |a| (a[0] != 0).to_string()),
        // Types TileDB-ML never writes (dates, ...): their raw bytes.
        _ => return blob_json(b),
    };
    match items.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", items.join(", ")),
    }
}

fn blob_json(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(text) if is_json(text.trim()) => text.trim().to_string(),
        Ok(text) => json_string(text),
        Err(_) => {
            let items: Vec<String> = b.iter().map(u8::to_string).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(s: &str) -> MetaValue {
        MetaValue {
            datatype: Datatype::BLOB,
            num: s.len() as u32,
            bytes: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn values_as_json() {
        let meta = vec![
            ("a_text".to_string(), MetaValue::text("caf\u{e9} \"q\"\n")),
            ("b_int".to_string(), MetaValue::i64(-5)),
            (
                "c_json_blob".to_string(),
                blob(r#"{"lr": 0.0010000000474974513, "x": [1, null]}"#),
            ),
            ("d_text_blob".to_string(), blob("not json")),
            (
                "e_binary".to_string(),
                MetaValue {
                    datatype: Datatype::BLOB,
                    num: 2,
                    bytes: vec![0xff, 0],
                },
            ),
            (
                "f_floats".to_string(),
                MetaValue {
                    datatype: Datatype::FLOAT64,
                    num: 3,
                    bytes: [1.0f64, 0.1, f64::NAN].iter().flat_map(|f| f.to_le_bytes()).collect(),
                },
            ),
            ("g_empty".to_string(), MetaValue::text("")),
            ("h_u64".to_string(), MetaValue::u64(u64::MAX)),
        ];
        let text = String::from_utf8(metadata_json(&meta)).unwrap();
        assert!(
            text.contains(r#""c_json_blob": {"lr": 0.0010000000474974513, "x": [1, null]}"#),
            "{text}"
        );
        assert!(text.contains(r#""f_floats": [1.0, 0.1, NaN]"#), "{text}");
        // Apart from Python's NaN, it is standard JSON.
        let fixed = text.replace("NaN", "null");
        let v: serde_json::Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(v["a_text"], "caf\u{e9} \"q\"\n");
        assert_eq!(v["b_int"], -5);
        assert_eq!(v["c_json_blob"]["x"][0], 1);
        assert_eq!(v["d_text_blob"], "not json");
        assert_eq!(v["e_binary"], serde_json::json!([255, 0]));
        assert_eq!(v["g_empty"], "");
        assert_eq!(v["h_u64"], serde_json::json!(u64::MAX));
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), meta.len());
        assert_eq!(metadata_json(&[]), b"{}\n");
    }
}
