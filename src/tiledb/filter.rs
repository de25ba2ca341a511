//! Filters and filter lists (compression, shuffles, checksums) for schema
//! building and inspection.

use std::ffi::{CStr, c_void};
use std::ptr;

use super::context::Context;
use super::error::Result;
use super::ffi;

/// A `tiledb_filter_type_t` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterType(pub u32);

impl FilterType {
    pub const NONE: FilterType = FilterType(0);
    pub const GZIP: FilterType = FilterType(1);
    pub const ZSTD: FilterType = FilterType(2);
    pub const LZ4: FilterType = FilterType(3);
    pub const BYTESHUFFLE: FilterType = FilterType(9);
    pub const CHECKSUM_MD5: FilterType = FilterType(12);
    pub const CHECKSUM_SHA256: FilterType = FilterType(13);

    /// TileDB's name for it (`ZSTD`, `CHECKSUM_SHA256`, ...).
    pub fn name(self) -> String {
        let mut s: *const std::ffi::c_char = ptr::null();
        // SAFETY: the returned string is static inside libtiledb.
        unsafe {
            if ffi::tiledb_filter_type_to_str(self.0, &mut s) == ffi::TILEDB_OK && !s.is_null() {
                return CStr::from_ptr(s).to_string_lossy().into_owned();
            }
        }
        format!("filter#{}", self.0)
    }
}

const TILEDB_COMPRESSION_LEVEL: u32 = 0;

/// One filter to add to a [`FilterList`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// A compressor with a level (`None` keeps TileDB's default).
    Compress(FilterType, Option<i32>),
    /// Any other filter with default options.
    Plain(FilterType),
}

/// An owned `tiledb_filter_list_t`.
pub struct FilterList {
    ctx: Context,
    pub(crate) raw: *mut ffi::tiledb_filter_list_t,
}

impl FilterList {
    /// A list of the given filters, applied in order on write.
    pub fn new(ctx: &Context, filters: &[Filter]) -> Result<Self> {
        let mut raw = ptr::null_mut();
        // SAFETY: out-pointer valid; the context is live.
        ctx.call("tiledb_filter_list_alloc", |c| unsafe {
            ffi::tiledb_filter_list_alloc(c, &mut raw)
        })?;
        let list = FilterList { ctx: ctx.clone(), raw };
        for f in filters {
            let (ty, level) = match *f {
                Filter::Compress(t, l) => (t, l),
                Filter::Plain(t) => (t, None),
            };
            let mut filter = ptr::null_mut();
            // SAFETY: out-pointer valid.
            ctx.call("tiledb_filter_alloc", |c| unsafe {
                ffi::tiledb_filter_alloc(c, ty.0, &mut filter)
            })?;
            let result = (|| {
                if let Some(level) = level {
                    // SAFETY: `filter` is live; COMPRESSION_LEVEL takes an int32.
                    ctx.call("tiledb_filter_set_option", |c| unsafe {
                        ffi::tiledb_filter_set_option(
                            c,
                            filter,
                            TILEDB_COMPRESSION_LEVEL,
                            &level as *const i32 as *const c_void,
                        )
                    })?;
                }
                // SAFETY: both handles are live; the list copies the filter.
                ctx.call("tiledb_filter_list_add_filter", |c| unsafe {
                    ffi::tiledb_filter_list_add_filter(c, list.raw, filter)
                })
            })();
            // SAFETY: allocated above, freed once; the list holds its own copy.
            unsafe { ffi::tiledb_filter_free(&mut filter) };
            result?;
        }
        Ok(list)
    }

    /// Takes ownership of a list returned by a TileDB getter.
    pub(crate) fn from_raw(ctx: &Context, raw: *mut ffi::tiledb_filter_list_t) -> Self {
        FilterList { ctx: ctx.clone(), raw }
    }

    /// The types of the filters, in order.
    pub fn types(&self) -> Result<Vec<FilterType>> {
        let mut n = 0u32;
        // SAFETY: live handles, valid out-pointer.
        self.ctx.call("tiledb_filter_list_get_nfilters", |c| unsafe {
            ffi::tiledb_filter_list_get_nfilters(c, self.raw, &mut n)
        })?;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let mut filter = ptr::null_mut();
            // SAFETY: index within bounds; the returned filter is freed below.
            self.ctx.call("tiledb_filter_list_get_filter_from_index", |c| unsafe {
                ffi::tiledb_filter_list_get_filter_from_index(c, self.raw, i, &mut filter)
            })?;
            let mut ty = 0u32;
            // SAFETY: `filter` is live until freed right after.
            let r = self.ctx.call("tiledb_filter_get_type", |c| unsafe {
                ffi::tiledb_filter_get_type(c, filter, &mut ty)
            });
            // SAFETY: freed once.
            unsafe { ffi::tiledb_filter_free(&mut filter) };
            r?;
            out.push(FilterType(ty));
        }
        Ok(out)
    }
}

impl Drop for FilterList {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { ffi::tiledb_filter_list_free(&mut self.raw) };
    }
}
