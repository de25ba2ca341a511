//! Key-value metadata, shared by arrays and groups: TileDB has one set of
//! metadata calls per object kind with the same shape, so each kind names
//! its four functions in a [`MetaCalls`] and the reading, checking and
//! copying live here once.

use std::ffi::{c_char, c_void};
use std::ptr;

use super::context::{Context, cstring};
use super::datatype::Datatype;
use super::error::{Error, Result};
use super::ffi::{self, capi_return_t, tiledb_ctx_t, tiledb_datatype_t};

/// One metadata value: its type, element count and raw little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaValue {
    pub datatype: Datatype,
    pub num: u32,
    pub bytes: Vec<u8>,
}

type NumFn<T> = unsafe extern "C" fn(*mut tiledb_ctx_t, *mut T, *mut u64) -> capi_return_t;
type FromIndexFn<T> = unsafe extern "C" fn(
    *mut tiledb_ctx_t,
    *mut T,
    u64,
    *mut *const c_char,
    *mut u32,
    *mut tiledb_datatype_t,
    *mut u32,
    *mut *const c_void,
) -> capi_return_t;
type PutFn<T> = unsafe extern "C" fn(
    *mut tiledb_ctx_t,
    *mut T,
    *const c_char,
    tiledb_datatype_t,
    u32,
    *const c_void,
) -> capi_return_t;
type DeleteFn<T> = unsafe extern "C" fn(*mut tiledb_ctx_t, *mut T, *const c_char) -> capi_return_t;

/// The metadata calls of one kind of TileDB object.
pub(crate) struct MetaCalls<T> {
    pub kind: &'static str,
    pub num: NumFn<T>,
    pub from_index: FromIndexFn<T>,
    pub put: PutFn<T>,
    pub delete: DeleteFn<T>,
}

pub(crate) const ARRAY: MetaCalls<ffi::tiledb_array_t> = MetaCalls {
    kind: "array",
    num: ffi::tiledb_array_get_metadata_num,
    from_index: ffi::tiledb_array_get_metadata_from_index,
    put: ffi::tiledb_array_put_metadata,
    delete: ffi::tiledb_array_delete_metadata,
};

pub(crate) const GROUP: MetaCalls<ffi::tiledb_group_t> = MetaCalls {
    kind: "group",
    num: ffi::tiledb_group_get_metadata_num,
    from_index: ffi::tiledb_group_get_metadata_from_index,
    put: ffi::tiledb_group_put_metadata,
    delete: ffi::tiledb_group_delete_metadata,
};

impl<T> MetaCalls<T> {
    /// Every key and value of the object `raw`, open for reading.
    pub fn read_all(&self, ctx: &Context, raw: *mut T) -> Result<Vec<(String, MetaValue)>> {
        let mut n = 0u64;
        // SAFETY: `raw` is a live object open for reading; valid out-pointer.
        ctx.call("tiledb_*_get_metadata_num", |c| unsafe { (self.num)(c, raw, &mut n) })?;
        let mut out = Vec::new();
        for i in 0..n {
            let mut key: *const c_char = ptr::null();
            let mut key_len = 0u32;
            let mut datatype = 0u32;
            let mut num = 0u32;
            let mut value: *const c_void = ptr::null();
            // SAFETY: i < n; key and value are owned by the open object and
            // copied at once, with lengths from TileDB.
            unsafe {
                ctx.call("tiledb_*_get_metadata_from_index", |c| {
                    (self.from_index)(c, raw, i, &mut key, &mut key_len, &mut datatype, &mut num, &mut value)
                })?;
                let key = String::from_utf8_lossy(std::slice::from_raw_parts(key as *const u8, key_len as usize))
                    .into_owned();
                let datatype = Datatype(datatype);
                let bytes = if value.is_null() {
                    Vec::new()
                } else {
                    let len = (num as u64).saturating_mul(datatype.size()) as usize;
                    std::slice::from_raw_parts(value as *const u8, len).to_vec()
                };
                let num = if bytes.is_empty() { 0 } else { num };
                out.push((key, MetaValue { datatype, num, bytes }));
            }
        }
        Ok(out)
    }

    /// Stages `key = value` on the object `raw`, open for writing.
    pub fn put(&self, ctx: &Context, raw: *mut T, key: &str, value: &MetaValue) -> Result<()> {
        let op = "tiledb_*_put_metadata";
        let c_key = cstring(op, key)?;
        let size = value.datatype.size();
        if size == 0 || value.bytes.len() as u64 != (value.num as u64).saturating_mul(size) {
            return Err(Error::new(
                op,
                format!(
                    "{} metadata {key}: {} bytes do not hold {} values of {}",
                    self.kind,
                    value.bytes.len(),
                    value.num,
                    value.datatype
                ),
            ));
        }
        let ptr = if value.bytes.is_empty() {
            ptr::null()
        } else {
            value.bytes.as_ptr() as *const c_void
        };
        // SAFETY: `ptr` holds `num` values of `datatype` (checked above);
        // TileDB copies them.
        ctx.call(op, |c| unsafe {
            (self.put)(c, raw, c_key.as_ptr(), value.datatype.0, value.num, ptr)
        })
    }

    /// Stages the removal of `key` (a missing key is not an error).
    pub fn delete(&self, ctx: &Context, raw: *mut T, key: &str) -> Result<()> {
        let op = "tiledb_*_delete_metadata";
        let c_key = cstring(op, key)?;
        // SAFETY: live object open for writing; the key outlives the call.
        ctx.call(op, |c| unsafe { (self.delete)(c, raw, c_key.as_ptr()) })
    }
}
