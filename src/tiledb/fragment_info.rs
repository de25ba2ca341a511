//! The committed fragments (versions) of an array.

use std::ffi::CStr;
use std::ptr;

use super::context::{Context, cstring};
use super::error::{Error, Result};
use super::ffi;

/// One committed fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub uri: String,
    /// `[start, end]` in ms since the Unix epoch.
    pub timestamp_range: (u64, u64),
    pub cell_num: u64,
}

/// The committed fragments of the array at `uri`, oldest first.
pub fn fragments(ctx: &Context, uri: &str) -> Result<Vec<Fragment>> {
    let c_uri = cstring("tiledb_fragment_info_alloc", uri)?;
    let mut raw = ptr::null_mut();
    // SAFETY: valid URI and out-pointer.
    ctx.call("tiledb_fragment_info_alloc", |c| unsafe {
        ffi::tiledb_fragment_info_alloc(c, c_uri.as_ptr(), &mut raw)
    })?;
    let info = Info(raw);
    let in_uri = |e: Error| Error::new(e.op, format!("{uri}: {}", e.message));
    // SAFETY: live handle.
    ctx.call("tiledb_fragment_info_load", |c| unsafe {
        ffi::tiledb_fragment_info_load(c, info.0)
    })
    .map_err(in_uri)?;
    let mut n = 0u32;
    // SAFETY: live, loaded handle.
    ctx.call("tiledb_fragment_info_get_fragment_num", |c| unsafe {
        ffi::tiledb_fragment_info_get_fragment_num(c, info.0, &mut n)
    })?;
    let mut out = Vec::with_capacity(n as usize);
    for fid in 0..n {
        let mut u: *const std::ffi::c_char = ptr::null();
        let (mut t0, mut t1, mut cells) = (0u64, 0u64, 0u64);
        // SAFETY: fid < n; the URI is owned by `info` and copied at once.
        unsafe {
            ctx.call("tiledb_fragment_info_get_fragment_uri", |c| {
                ffi::tiledb_fragment_info_get_fragment_uri(c, info.0, fid, &mut u)
            })?;
            ctx.call("tiledb_fragment_info_get_timestamp_range", |c| {
                ffi::tiledb_fragment_info_get_timestamp_range(c, info.0, fid, &mut t0, &mut t1)
            })?;
            ctx.call("tiledb_fragment_info_get_cell_num", |c| {
                ffi::tiledb_fragment_info_get_cell_num(c, info.0, fid, &mut cells)
            })?;
            out.push(Fragment {
                uri: if u.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(u).to_string_lossy().into_owned()
                },
                timestamp_range: (t0, t1),
                cell_num: cells,
            });
        }
    }
    Ok(out)
}

/// Deletes the committed fragments `fragment_uris` (as [`fragments`] names
/// them) of the array at `uri`, with their commit files: readers opening
/// the array afterwards no longer see them. Nothing else is touched.
pub fn delete_fragments(ctx: &Context, uri: &str, fragment_uris: &[String]) -> Result<()> {
    if fragment_uris.is_empty() {
        return Ok(());
    }
    let c_uri = cstring("tiledb_array_delete_fragments_list", uri)?;
    let owned = fragment_uris
        .iter()
        .map(|f| cstring("tiledb_array_delete_fragments_list", f))
        .collect::<Result<Vec<_>>>()?;
    let ptrs: Vec<*const std::ffi::c_char> = owned.iter().map(|c| c.as_ptr()).collect();
    // SAFETY: valid URI; `ptrs` holds `ptrs.len()` NUL-terminated strings
    // that `owned` keeps alive for the call.
    ctx.call("tiledb_array_delete_fragments_list", |c| unsafe {
        ffi::tiledb_array_delete_fragments_list(c, c_uri.as_ptr(), ptrs.as_ptr(), ptrs.len())
    })
    .map_err(|e| Error::new(e.op, format!("{uri}: {}", e.message)))
}

struct Info(*mut ffi::tiledb_fragment_info_t);

impl Drop for Info {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { ffi::tiledb_fragment_info_free(&mut self.0) };
    }
}
