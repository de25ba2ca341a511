//! Open arrays: opening at a timestamp, metadata, non-empty domain, and the
//! dense reads and writes over a 1-D UINT64 dimension that file arrays use.

use std::ffi::{CString, c_void};
use std::ptr;

use super::context::{Context, cstring};
use super::datatype::Datatype;
use super::error::{Error, Result};
use super::ffi;
use super::schema::Schema;

/// The mode an array is opened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Read,
    Write,
}

impl Mode {
    fn raw(self) -> ffi::tiledb_query_type_t {
        match self {
            Mode::Read => ffi::TILEDB_READ,
            Mode::Write => ffi::TILEDB_WRITE,
        }
    }
}

use super::metadata;
pub use super::metadata::MetaValue;

impl MetaValue {
    pub fn u64(v: u64) -> Self {
        MetaValue {
            datatype: Datatype::UINT64,
            num: 1,
            bytes: v.to_le_bytes().to_vec(),
        }
    }

    /// Several UINT64 values (at least one element is stored: an empty
    /// list is written as `[0]`, which no caller uses as a value).
    pub fn u64s(values: &[u64]) -> Self {
        let values = if values.is_empty() { &[0][..] } else { values };
        MetaValue {
            datatype: Datatype::UINT64,
            num: u32::try_from(values.len()).unwrap_or(u32::MAX),
            bytes: values
                .iter()
                .take(u32::MAX as usize)
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        }
    }

    /// The values of a UINT64 list (`None` for another type).
    pub fn as_u64s(&self) -> Option<Vec<u64>> {
        if self.datatype != Datatype::UINT64 {
            return None;
        }
        Some(
            self.bytes
                .chunks_exact(8)
                .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
                .collect(),
        )
    }

    pub fn i64(v: i64) -> Self {
        MetaValue {
            datatype: Datatype::INT64,
            num: 1,
            bytes: v.to_le_bytes().to_vec(),
        }
    }

    /// UTF-8 text. TileDB cannot store an empty value, so "" is kept as one
    /// NUL-free empty string read back as `num = 1` with no bytes.
    pub fn text(s: &str) -> Self {
        MetaValue {
            datatype: Datatype::STRING_UTF8,
            num: s.len() as u32,
            bytes: s.as_bytes().to_vec(),
        }
    }

    /// The value as an unsigned integer, for any single integer type
    /// (TileDB-Py writes Python ints as INT64).
    pub fn as_u64(&self) -> Option<u64> {
        if self.num != 1 {
            return None;
        }
        let b = &self.bytes;
        let signed = |v: i64| u64::try_from(v).ok();
        match self.datatype {
            Datatype::UINT64 => Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)),
            Datatype::INT64 => signed(i64::from_le_bytes(b.get(..8)?.try_into().ok()?)),
            Datatype::UINT32 => Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as u64),
            Datatype::INT32 => signed(i32::from_le_bytes(b.get(..4)?.try_into().ok()?) as i64),
            Datatype::UINT16 => Some(u16::from_le_bytes(b.get(..2)?.try_into().ok()?) as u64),
            Datatype::INT16 => signed(i16::from_le_bytes(b.get(..2)?.try_into().ok()?) as i64),
            Datatype::UINT8 => Some(*b.first()? as u64),
            Datatype::INT8 => signed(*b.first()? as i8 as i64),
            _ => None,
        }
    }

    /// The value as text, for string types (and BLOB/UINT8 holding UTF-8).
    pub fn as_str(&self) -> Option<&str> {
        match self.datatype {
            d if d.is_string() => std::str::from_utf8(&self.bytes).ok(),
            Datatype::BLOB | Datatype::UINT8 | Datatype::INT8 => std::str::from_utf8(&self.bytes).ok(),
            _ => None,
        }
    }
}

/// An open TileDB array.
pub struct Array {
    ctx: Context,
    raw: *mut ffi::tiledb_array_t,
    uri: String,
    mode: Mode,
}

// SAFETY: TileDB documents that one open array may serve concurrent queries
// from several threads (one query per thread), which is all `&self` methods
// do; opening, closing and metadata access take `&mut self` or `self`.
unsafe impl Send for Array {}
// SAFETY: as above.
unsafe impl Sync for Array {}

impl Array {
    /// Opens the array at `uri` as of now.
    pub fn open(ctx: &Context, uri: &str, mode: Mode) -> Result<Self> {
        Self::open_at(ctx, uri, mode, None)
    }

    /// Opens for reading with every write there is, including writes
    /// stamped later than this machine's clock (a plain open stops at
    /// "now", so a version from a writer whose clock runs ahead would stay
    /// invisible, and so would every version stamped after it).
    pub fn open_latest(ctx: &Context, uri: &str) -> Result<Self> {
        // `UINT64_MAX` means "now" to TileDB; one less means "everything".
        Self::open_at(ctx, uri, Mode::Read, Some(u64::MAX - 1))
    }

    /// Opens the array at `uri`. For reads, `end_ms` (inclusive) hides every
    /// fragment and metadata write after it; for writes, every fragment and
    /// metadata write through this handle gets the timestamp `end_ms`.
    pub fn open_at(ctx: &Context, uri: &str, mode: Mode, end_ms: Option<u64>) -> Result<Self> {
        Self::open_range(ctx, uri, mode, None, end_ms)
    }

    /// Opens the array at `uri` for reading with only the fragments and
    /// metadata writes stamped in `[start_ms, end_ms]` (inclusive): one
    /// version's own writes when both are its timestamp.
    pub fn open_between(ctx: &Context, uri: &str, start_ms: u64, end_ms: u64) -> Result<Self> {
        Self::open_range(ctx, uri, Mode::Read, Some(start_ms), Some(end_ms))
    }

    /// An open lists the array's fragments and metadata files, then reads
    /// them: one deleted in between (a prune, a vacuum) fails it, and a new
    /// attempt lists again.
    fn open_range(ctx: &Context, uri: &str, mode: Mode, start_ms: Option<u64>, end_ms: Option<u64>) -> Result<Self> {
        super::error::retry_vanished(|| Self::open_range_once(ctx, uri, mode, start_ms, end_ms))
    }

    fn open_range_once(
        ctx: &Context,
        uri: &str,
        mode: Mode,
        start_ms: Option<u64>,
        end_ms: Option<u64>,
    ) -> Result<Self> {
        let c_uri = cstring("tiledb_array_alloc", uri)?;
        let mut raw = ptr::null_mut();
        // SAFETY: valid URI and out-pointer.
        ctx.call("tiledb_array_alloc", |c| unsafe {
            ffi::tiledb_array_alloc(c, c_uri.as_ptr(), &mut raw)
        })?;
        // From here on `Drop` frees the handle (closing a closed array is a no-op).
        let array = Array {
            ctx: ctx.clone(),
            raw,
            uri: uri.to_string(),
            mode,
        };
        if let Some(start) = start_ms {
            // SAFETY: live, not yet open.
            ctx.call("tiledb_array_set_open_timestamp_start", |c| unsafe {
                ffi::tiledb_array_set_open_timestamp_start(c, array.raw, start)
            })?;
        }
        if let Some(end) = end_ms {
            // SAFETY: live, not yet open.
            ctx.call("tiledb_array_set_open_timestamp_end", |c| unsafe {
                ffi::tiledb_array_set_open_timestamp_end(c, array.raw, end)
            })?;
        }
        // SAFETY: live, not yet open.
        ctx.call("tiledb_array_open", |c| unsafe {
            ffi::tiledb_array_open(c, array.raw, mode.raw())
        })
        .map_err(|e| Error::new(e.op, format!("{uri}: {}", e.message)))?;
        Ok(array)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The schema the array was opened with.
    pub fn schema(&self) -> Result<Schema> {
        let mut raw = ptr::null_mut();
        // SAFETY: open array; the schema handle is owned by the wrapper.
        self.ctx.call("tiledb_array_get_schema", |c| unsafe {
            ffi::tiledb_array_get_schema(c, self.raw, &mut raw)
        })?;
        Ok(Schema::from_raw(&self.ctx, raw))
    }

    /// The end of the opened time range, in ms (for reads opened "now", the
    /// time of the open).
    pub fn open_timestamp_end(&self) -> Result<u64> {
        let mut t = 0u64;
        // SAFETY: open array, valid out-pointer.
        self.ctx.call("tiledb_array_get_open_timestamp_end", |c| unsafe {
            ffi::tiledb_array_get_open_timestamp_end(c, self.raw, &mut t)
        })?;
        Ok(t)
    }

    /// The non-empty domain `[lo, hi]` of UINT64 dimension `index`, or `None`
    /// when nothing was written.
    pub fn non_empty_domain_u64(&self, index: u32) -> Result<Option<(u64, u64)>> {
        let mut dom = [0u64; 2];
        let mut empty = 0i32;
        self.ctx
            // SAFETY: the caller names a UINT64 dimension, so two u64 are written.
            .call("tiledb_array_get_non_empty_domain_from_index", |c| unsafe {
                ffi::tiledb_array_get_non_empty_domain_from_index(
                    c,
                    self.raw,
                    index,
                    dom.as_mut_ptr() as *mut c_void,
                    &mut empty,
                )
            })?;
        Ok(if empty != 0 { None } else { Some((dom[0], dom[1])) })
    }

    /// Every metadata key and value (array opened for reading), sorted by key.
    pub fn metadata(&mut self) -> Result<Vec<(String, MetaValue)>> {
        metadata::ARRAY.read_all(&self.ctx, self.raw)
    }

    /// Stages `key = value` (array opened for writing); written at close.
    pub fn put_metadata(&mut self, key: &str, value: &MetaValue) -> Result<()> {
        metadata::ARRAY.put(&self.ctx, self.raw, key, value)
    }

    /// Stages the removal of `key` (array opened for writing); a missing key
    /// is not an error.
    pub fn delete_metadata(&mut self, key: &str) -> Result<()> {
        metadata::ARRAY.delete(&self.ctx, self.raw, key)
    }

    /// Closes the array, reporting errors (a write-open array persists its
    /// metadata here). Dropping also closes, but ignores errors.
    pub fn close(self) -> Result<()> {
        // SAFETY: live handle; `Drop` then only frees it.
        self.ctx
            .call("tiledb_array_close", |c| unsafe {
                ffi::tiledb_array_close(c, self.raw)
            })
            .map_err(|e| Error::new(e.op, format!("{}: {}", self.uri, e.message)))
    }

    /// Reads cells `[lo, hi]` of attribute `attr` of a 1-D array into `buf`,
    /// which must hold exactly those cells (`(hi - lo + 1) * cell size`).
    pub fn read_cells(&self, attr: &str, lo: u64, hi: u64, buf: &mut [u8]) -> Result<()> {
        // SAFETY: `buf` is valid for writes of its length for the whole call.
        unsafe { self.read_cells_raw(attr, lo, hi, buf.as_mut_ptr(), buf.len()) }
    }

    /// Appends cells `[lo, hi]` of attribute `attr` of a 1-D array, `len`
    /// bytes (`(hi - lo + 1) * cell size`), to `out`. TileDB writes them
    /// straight into `out`'s spare room: nothing is zeroed first (for a
    /// cold read, zeroing its buffers was 6% of the daemon's CPU). On an
    /// error `out` is left as it was.
    pub fn read_cells_append(&self, attr: &str, lo: u64, hi: u64, len: usize, out: &mut Vec<u8>) -> Result<()> {
        out.reserve(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        // SAFETY: `spare` is valid for writes of `len` bytes for the whole
        // call; on success TileDB wrote every one of them, so they are
        // initialized when the length grows over them.
        unsafe {
            self.read_cells_raw(attr, lo, hi, spare.as_mut_ptr().cast::<u8>(), len)?;
            out.set_len(out.len() + len);
        }
        Ok(())
    }

    /// The read of [`Array::read_cells`] into `len` bytes at `dst`; on
    /// success all `len` were written.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes until this returns.
    unsafe fn read_cells_raw(&self, attr: &str, lo: u64, hi: u64, dst: *mut u8, len: usize) -> Result<()> {
        let op = "tiledb_query_submit";
        if len == 0 {
            return Ok(());
        }
        let query = self.query(ffi::TILEDB_READ, ffi::TILEDB_ROW_MAJOR, lo, hi)?;
        let name = cstring("tiledb_query_set_data_buffer", attr)?;
        // A read waits on storage: let its spins nap (see `wait.rs`).
        let _naps = super::wait::NapsWhileReading::start();
        let mut filled = 0usize;
        loop {
            let mut size = (len - filled) as u64;
            // SAFETY: `dst + filled` and its `size` bytes are within what the
            // caller gave, valid until we return; `size` stays unmoved until
            // the submit below returns; TileDB writes at most `size` bytes.
            unsafe {
                self.ctx.call("tiledb_query_set_data_buffer", |c| {
                    ffi::tiledb_query_set_data_buffer(
                        c,
                        query.0,
                        name.as_ptr(),
                        dst.add(filled) as *mut c_void,
                        &mut size,
                    )
                })?;
                self.ctx
                    .call(op, |c| ffi::tiledb_query_submit(c, query.0))
                    .map_err(|e| self.in_uri(e))?;
            }
            let status = self.query_status(&query)?;
            filled += size as usize;
            match status {
                ffi::TILEDB_COMPLETED => break,
                ffi::TILEDB_INCOMPLETE if size > 0 && filled < len => continue,
                _ => {
                    return Err(Error::new(
                        op,
                        format!(
                            "{}: read of [{lo}, {hi}] stopped after {filled} bytes (status {status})",
                            self.uri
                        ),
                    ));
                }
            }
        }
        if filled != len {
            return Err(Error::new(
                op,
                format!("{}: read of [{lo}, {hi}] gave {filled} of {len} bytes", self.uri),
            ));
        }
        Ok(())
    }

    /// Writes `data` to cells `[lo, hi]` of attribute `attr` in one row-major
    /// dense write (no tile alignment needed). `data` must hold exactly the
    /// cells.
    pub fn write_cells(&self, attr: &str, lo: u64, hi: u64, data: &[u8]) -> Result<()> {
        let query = self.query(ffi::TILEDB_WRITE, ffi::TILEDB_ROW_MAJOR, lo, hi)?;
        let name = cstring("tiledb_query_set_data_buffer", attr)?;
        self.submit_data(&query, &name, data)?;
        self.finalize_query(&query)
    }

    fn in_uri(&self, e: Error) -> Error {
        Error::new(e.op, format!("{}: {}", self.uri, e.message))
    }

    /// A query over cells `[lo, hi]` of dimension 0.
    fn query(&self, ty: ffi::tiledb_query_type_t, layout: ffi::tiledb_layout_t, lo: u64, hi: u64) -> Result<RawQuery> {
        let ctx = &self.ctx;
        let mut raw = ptr::null_mut();
        // SAFETY: open array of the matching mode; valid out-pointer.
        ctx.call("tiledb_query_alloc", |c| unsafe {
            ffi::tiledb_query_alloc(c, self.raw, ty, &mut raw)
        })
        .map_err(|e| self.in_uri(e))?;
        let query = RawQuery(raw);
        // SAFETY: live query.
        ctx.call("tiledb_query_set_layout", |c| unsafe {
            ffi::tiledb_query_set_layout(c, query.0, layout)
        })?;
        let mut sub = ptr::null_mut();
        // SAFETY: open array; the subarray is freed below after the query copied it.
        ctx.call("tiledb_subarray_alloc", |c| unsafe {
            ffi::tiledb_subarray_alloc(c, self.raw, &mut sub)
        })?;
        // SAFETY: live subarray; `lo`/`hi` are UINT64 values TileDB copies.
        let r = ctx
            .call("tiledb_subarray_add_range", |c| unsafe {
                ffi::tiledb_subarray_add_range(
                    c,
                    sub,
                    0,
                    &lo as *const u64 as *const c_void,
                    &hi as *const u64 as *const c_void,
                    ptr::null(),
                )
            })
            .and_then(|_| {
                // SAFETY: live query and subarray.
                ctx.call("tiledb_query_set_subarray_t", |c| unsafe {
                    ffi::tiledb_query_set_subarray_t(c, query.0, sub)
                })
            });
        // SAFETY: freed once; the query holds its own copy.
        unsafe { ffi::tiledb_subarray_free(&mut sub) };
        r.map_err(|e| self.in_uri(e))?;
        Ok(query)
    }

    fn query_status(&self, query: &RawQuery) -> Result<ffi::tiledb_query_status_t> {
        let mut s = 0u32;
        // SAFETY: live query.
        self.ctx.call("tiledb_query_get_status", |c| unsafe {
            ffi::tiledb_query_get_status(c, query.0, &mut s)
        })?;
        Ok(s)
    }

    /// Submits `data` as the next cells of `attr` (writes).
    fn submit_data(&self, query: &RawQuery, attr: &CString, data: &[u8]) -> Result<()> {
        let mut size = data.len() as u64;
        // SAFETY: `data` and `size` outlive the submit; a write only reads
        // the buffer, so casting away const is sound.
        unsafe {
            self.ctx.call("tiledb_query_set_data_buffer", |c| {
                ffi::tiledb_query_set_data_buffer(c, query.0, attr.as_ptr(), data.as_ptr() as *mut c_void, &mut size)
            })?;
            self.ctx
                .call("tiledb_query_submit", |c| ffi::tiledb_query_submit(c, query.0))
                .map_err(|e| self.in_uri(e))
        }
    }

    fn finalize_query(&self, query: &RawQuery) -> Result<()> {
        // SAFETY: live query.
        self.ctx
            .call("tiledb_query_finalize", |c| unsafe {
                ffi::tiledb_query_finalize(c, query.0)
            })
            .map_err(|e| self.in_uri(e))
    }
}

impl Drop for Array {
    fn drop(&mut self) {
        // SAFETY: live handle, closed (a no-op when already closed) and freed once.
        unsafe {
            ffi::tiledb_array_close(self.ctx.raw(), self.raw);
            ffi::tiledb_array_free(&mut self.raw);
        }
    }
}

/// An owned query handle; always dropped before the array it was made on.
struct RawQuery(*mut ffi::tiledb_query_t);

impl Drop for RawQuery {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { ffi::tiledb_query_free(&mut self.0) };
    }
}

/// A global-order dense write of cells `[lo, hi]` fed by several submits and
/// committed as one fragment by [`GlobalWrite::finalize`]. `[lo, hi]` must
/// coincide with tile bounds. Dropping it unfinalized commits nothing.
pub struct GlobalWrite {
    // Declared before `array` so the query is freed first.
    query: RawQuery,
    array: Array,
    attr: CString,
    expected: u64,
    written: u64,
}

// SAFETY: the query and its array are owned here and used by one thread at a
// time (`&mut self`); TileDB handles have no thread affinity.
unsafe impl Send for GlobalWrite {}

impl GlobalWrite {
    /// Starts the write on `array` (opened for writing), taking it over;
    /// [`GlobalWrite::finalize`] gives it back.
    pub fn new(array: Array, attr: &str, lo: u64, hi: u64) -> Result<Self> {
        let attr = cstring("tiledb_query_set_data_buffer", attr)?;
        let query = array.query(ffi::TILEDB_WRITE, ffi::TILEDB_GLOBAL_ORDER, lo, hi)?;
        Ok(GlobalWrite {
            query,
            array,
            attr,
            expected: hi - lo + 1,
            written: 0,
        })
    }

    /// Appends the next cells in order; TileDB carries partial tiles over.
    pub fn submit(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.array.submit_data(&self.query, &self.attr, data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Cells submitted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Commits the fragment; fails, committing nothing, unless exactly the
    /// range's cells were submitted. Returns the array for metadata writes.
    pub fn finalize(self) -> Result<Array> {
        let GlobalWrite {
            query,
            array,
            expected,
            written,
            ..
        } = self;
        let result = if written != expected {
            Err(Error::new(
                "tiledb_query_finalize",
                format!("{}: {written} cells written, {expected} expected", array.uri),
            ))
        } else {
            array.finalize_query(&query)
        };
        drop(query);
        result.map(|()| array)
    }
}
