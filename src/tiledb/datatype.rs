//! TileDB datatypes as a newtype over the C enum, with their names and sizes
//! as TileDB itself reports them.

use std::ffi::CStr;
use std::fmt;

use super::ffi;

/// A `tiledb_datatype_t` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Datatype(pub u32);

impl Datatype {
    pub const INT32: Datatype = Datatype(ffi::TILEDB_INT32);
    pub const INT64: Datatype = Datatype(ffi::TILEDB_INT64);
    pub const FLOAT32: Datatype = Datatype(ffi::TILEDB_FLOAT32);
    pub const FLOAT64: Datatype = Datatype(ffi::TILEDB_FLOAT64);
    pub const CHAR: Datatype = Datatype(ffi::TILEDB_CHAR);
    pub const INT8: Datatype = Datatype(ffi::TILEDB_INT8);
    pub const UINT8: Datatype = Datatype(ffi::TILEDB_UINT8);
    pub const INT16: Datatype = Datatype(ffi::TILEDB_INT16);
    pub const UINT16: Datatype = Datatype(ffi::TILEDB_UINT16);
    pub const UINT32: Datatype = Datatype(ffi::TILEDB_UINT32);
    pub const UINT64: Datatype = Datatype(ffi::TILEDB_UINT64);
    pub const STRING_ASCII: Datatype = Datatype(ffi::TILEDB_STRING_ASCII);
    pub const STRING_UTF8: Datatype = Datatype(ffi::TILEDB_STRING_UTF8);
    pub const BLOB: Datatype = Datatype(ffi::TILEDB_BLOB);
    pub const BOOL: Datatype = Datatype(ffi::TILEDB_BOOL);

    /// Bytes per value (0 for a value TileDB does not know).
    pub fn size(self) -> u64 {
        // SAFETY: a pure lookup on an integer.
        unsafe { ffi::tiledb_datatype_size(self.0) }
    }

    /// TileDB's name for it (`UINT8`, `STRING_UTF8`, ...).
    pub fn name(self) -> String {
        let mut s: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: the returned string is static inside libtiledb.
        unsafe {
            if ffi::tiledb_datatype_to_str(self.0, &mut s) == ffi::TILEDB_OK && !s.is_null() {
                return CStr::from_ptr(s).to_string_lossy().into_owned();
            }
        }
        format!("datatype#{}", self.0)
    }

    /// Whether values of this type are text.
    pub fn is_string(self) -> bool {
        matches!(self, Datatype::CHAR | Datatype::STRING_ASCII | Datatype::STRING_UTF8)
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Renders `bytes` holding values of `datatype` for people: numbers as
/// numbers, text as text, anything else as hex.
pub fn format_values(datatype: Datatype, bytes: &[u8]) -> String {
    macro_rules! nums {
        ($t:ty) => {{
            let n = std::mem::size_of::<$t>();
            let parts: Vec<String> = bytes
                .chunks_exact(n)
                .map(|c| {
                    let mut a = [0u8; std::mem::size_of::<$t>()];
                    a.copy_from_slice(c);
                    <$t>::from_le_bytes(a).to_string()
                })
                .collect();
            if parts.len() == 1 {
                parts[0].clone()
            } else {
                format!("[{}]", parts.join(", "))
            }
        }};
    }
    match datatype {
        Datatype::INT8 => nums!(i8),
        Datatype::UINT8 => nums!(u8),
        Datatype::INT16 => nums!(i16),
        Datatype::UINT16 => nums!(u16),
        Datatype::INT32 => nums!(i32),
        Datatype::UINT32 => nums!(u32),
        Datatype::INT64 => nums!(i64),
        Datatype::UINT64 => nums!(u64),
        Datatype::FLOAT32 => nums!(f32),
        Datatype::FLOAT64 => nums!(f64),
        d if d.is_string() => format!("{:?}", String::from_utf8_lossy(bytes)),
        _ => match std::str::from_utf8(bytes) {
            Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => format!("{s:?}"),
            _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        },
    }
}
