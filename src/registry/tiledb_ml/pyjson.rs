//! JSON text of pickled values, byte-for-byte as Python's `json.dumps(v)`
//! writes it with default arguments: `", "` and `": "` separators,
//! `ensure_ascii` escapes (`\uXXXX`, lowercase hex, surrogate pairs),
//! floats as `float.__repr__` (`1e-08`, `0.001`, `1e+16`, `2.0`), `NaN` /
//! `Infinity` / `-Infinity`, tuples as arrays, dict keys converted the way
//! `json` converts them (`true`, `null`, `1`, `0.5`).
//!
//! The optimizer view stores such text in safetensors metadata, where the
//! reference files were written by Python, so the exact spelling matters.
//! Invariant: only values `json.dumps` accepts are written; anything else
//! (bytes, sets, objects, tensors) is an error naming its type.

use super::pickle::{Value, bigint_to_decimal};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonError {
    #[error("a {0} is not JSON serializable")]
    NotSerializable(&'static str),
    #[error("dict keys must be str, int, float, bool or None, not {0}")]
    BadKey(&'static str),
    #[error("integer too large to write as decimal text")]
    IntTooLarge,
    #[error("text longer than {0} bytes")]
    TooLong(usize),
}

/// `json.dumps(v)`, unbounded (tests).
#[cfg(test)]
pub fn dumps(v: &Value<'_>) -> Result<String, JsonError> {
    dumps_within(v, usize::MAX)
}

/// `json.dumps(v)`, or [`JsonError::TooLong`] as soon as the text passes
/// `max_len` bytes (a value referenced many times is written each time, so
/// the text can be far larger than the pickle; it grows past `max_len` by
/// at most one string or number before it stops).
pub fn dumps_within(v: &Value<'_>, max_len: usize) -> Result<String, JsonError> {
    let mut out = String::new();
    write_value(&mut out, v, max_len)?;
    Ok(out)
}

/// `repr(f)` for a Python float: the shortest text that reads back as `f`,
/// in fixed notation when the decimal exponent is in `-4 ..= 15`, else in
/// exponent notation with a sign and at least two exponent digits.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits, like Python's repr.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let ndigits = digits.len() as i64;
    // Position of the decimal point relative to the digit string.
    let decpt = exp + 1;
    let body = if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            format!("0.{}{digits}", "0".repeat(decpt.unsigned_abs() as usize))
        } else if decpt >= ndigits {
            format!("{digits}{}.0", "0".repeat((decpt - ndigits) as usize))
        } else {
            let (int, frac) = digits.split_at(decpt as usize);
            format!("{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let e = decpt - 1;
        let esign = if e < 0 { '-' } else { '+' };
        format!("{first}{frac}e{esign}{:02}", e.unsigned_abs())
    };
    format!("{sign}{body}")
}

/// A float as `json` writes it (repr, or the JavaScript names for
/// non-finite values).
pub fn json_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else {
        float_repr(f)
    }
}

fn int_text(v: &Value<'_>) -> Result<Option<String>, JsonError> {
    Ok(match v {
        Value::Int(i) => Some(i.to_string()),
        // Python's json.dumps refuses ints past 4300 digits as well.
        Value::BigInt(b) => Some(bigint_to_decimal(b).ok_or(JsonError::IntTooLarge)?),
        _ => None,
    })
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

fn write_value(out: &mut String, v: &Value<'_>, max: usize) -> Result<(), JsonError> {
    if out.len() > max {
        return Err(JsonError::TooLong(max));
    }
    if let Some(text) = int_text(v)? {
        out.push_str(&text);
        return Ok(());
    }
    match v {
        Value::None => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Float(f) => out.push_str(&json_float(*f)),
        Value::Str(s) => write_str(out, s),
        Value::List(items) | Value::Tuple(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item, max)?;
            }
            out.push(']');
        }
        _ => {
            // dict and OrderedDict (a dict subclass) are JSON objects.
            let Some(items) = v.dict_items() else {
                return Err(JsonError::NotSerializable(describe(v)));
            };
            out.push('{');
            for (i, (k, val)) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let key = match k {
                    Value::Str(s) => s.to_string(),
                    Value::Float(f) => json_float(*f),
                    Value::Bool(true) => "true".into(),
                    Value::Bool(false) => "false".into(),
                    Value::None => "null".into(),
                    other => int_text(other)?.ok_or(JsonError::BadKey(describe(other)))?,
                };
                write_str(out, &key);
                out.push_str(": ");
                write_value(out, val, max)?;
            }
            out.push('}');
        }
    }
    if out.len() > max {
        return Err(JsonError::TooLong(max));
    }
    Ok(())
}

fn describe(v: &Value<'_>) -> &'static str {
    if super::torch_legacy::is_tensor(v) {
        "torch tensor"
    } else if super::numpy::is_ndarray(v) || super::numpy::is_scalar(v) {
        "numpy value"
    } else {
        v.type_name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn floats_like_python_repr() {
        let cases = [
            (0.001, "0.001"),
            (1e-08, "1e-08"),
            (0.9, "0.9"),
            (0.999, "0.999"),
            (1e-05, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (2.0, "2.0"),
            (-0.0, "-0.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5e300, "1.5e+300"),
            (5e-324, "5e-324"),
            (0.0010000000474974513, "0.0010000000474974513"),
            (1e22, "1e+22"),
            (12345.678, "12345.678"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f:e}");
        }
    }

    #[test]
    fn dumps_like_python() {
        let v = Value::List(vec![Value::Dict(vec![
            (Value::Str(Cow::Borrowed("lr")), Value::Float(0.001)),
            (
                Value::Str(Cow::Borrowed("betas")),
                Value::Tuple(vec![Value::Float(0.9), Value::Float(0.999)]),
            ),
            (Value::Str(Cow::Borrowed("n\u{e9}\"\n\u{1f600}")), Value::None),
            (Value::Int(3), Value::Bool(true)),
            (Value::Float(0.5), Value::Float(f64::NAN)),
            (Value::None, Value::Float(f64::NEG_INFINITY)),
            (Value::Bool(false), Value::Dict(vec![])),
        ])]);
        assert_eq!(
            dumps(&v).unwrap(),
            r#"[{"lr": 0.001, "betas": [0.9, 0.999], "n\u00e9\"\n\ud83d\ude00": null, "3": true, "0.5": NaN, "null": -Infinity, "false": {}}]"#
        );
        assert!(matches!(
            dumps(&Value::Bytes(Cow::Borrowed(b"x"))),
            Err(JsonError::NotSerializable("bytes"))
        ));
        assert!(matches!(
            dumps(&Value::Dict(vec![(Value::Tuple(vec![]), Value::None)])),
            Err(JsonError::BadKey("tuple"))
        ));
        assert_eq!(
            dumps(&Value::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0, 1])).unwrap(),
            "18446744073709551616"
        );
    }
}
