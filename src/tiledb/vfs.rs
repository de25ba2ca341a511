//! TileDB's virtual filesystem: listing, probing and removing objects on any
//! backend (local, S3, Azure, GCS) by URI.

use std::ffi::{CStr, c_char, c_void};
use std::ptr;

use super::context::{Context, cstring};
use super::error::{Error, Result};
use super::ffi;

/// An owned `tiledb_vfs_t`.
pub struct Vfs {
    ctx: Context,
    raw: *mut ffi::tiledb_vfs_t,
}

// SAFETY: TileDB's VFS calls are safe from several threads (each call is
// independent; the handle only holds configuration and backend clients,
// which TileDB guards).
unsafe impl Send for Vfs {}
// SAFETY: as above.
unsafe impl Sync for Vfs {}

impl Vfs {
    pub fn new(ctx: &Context) -> Result<Self> {
        let mut raw = ptr::null_mut();
        // SAFETY: live context; null config means the context's.
        ctx.call("tiledb_vfs_alloc", |c| unsafe {
            ffi::tiledb_vfs_alloc(c, ptr::null_mut(), &mut raw)
        })?;
        Ok(Vfs { ctx: ctx.clone(), raw })
    }

    fn probe(
        &self,
        op: &'static str,
        uri: &str,
        f: unsafe extern "C" fn(*mut ffi::tiledb_ctx_t, *mut ffi::tiledb_vfs_t, *const c_char, *mut i32) -> i32,
    ) -> Result<bool> {
        let c_uri = cstring(op, uri)?;
        let mut yes = 0i32;
        self.ctx
            // SAFETY: live handles, valid URI and out-pointer.
            .call(op, |c| unsafe { f(c, self.raw, c_uri.as_ptr(), &mut yes) })
            .map_err(|e| in_uri(e, uri))?;
        Ok(yes != 0)
    }

    pub fn is_dir(&self, uri: &str) -> Result<bool> {
        self.probe("tiledb_vfs_is_dir", uri, ffi::tiledb_vfs_is_dir)
    }

    pub fn is_file(&self, uri: &str) -> Result<bool> {
        self.probe("tiledb_vfs_is_file", uri, ffi::tiledb_vfs_is_file)
    }

    pub fn file_size(&self, uri: &str) -> Result<u64> {
        let c_uri = cstring("tiledb_vfs_file_size", uri)?;
        let mut size = 0u64;
        self.ctx
            // SAFETY: live handles, valid URI and out-pointer.
            .call("tiledb_vfs_file_size", |c| unsafe {
                ffi::tiledb_vfs_file_size(c, self.raw, c_uri.as_ptr(), &mut size)
            })
            .map_err(|e| in_uri(e, uri))?;
        Ok(size)
    }

    /// The bytes of every file under directory `uri`, recursively.
    pub fn dir_size(&self, uri: &str) -> Result<u64> {
        let c_uri = cstring("tiledb_vfs_dir_size", uri)?;
        let mut size = 0u64;
        self.ctx
            // SAFETY: live handles, valid URI and out-pointer.
            .call("tiledb_vfs_dir_size", |c| unsafe {
                ffi::tiledb_vfs_dir_size(c, self.raw, c_uri.as_ptr(), &mut size)
            })
            .map_err(|e| in_uri(e, uri))?;
        Ok(size)
    }

    /// Creates a directory and its parents (a no-op on object stores).
    pub fn create_dir(&self, uri: &str) -> Result<()> {
        let c_uri = cstring("tiledb_vfs_create_dir", uri)?;
        // SAFETY: live handles, valid URI.
        self.ctx
            .call("tiledb_vfs_create_dir", |c| unsafe {
                ffi::tiledb_vfs_create_dir(c, self.raw, c_uri.as_ptr())
            })
            .map_err(|e| in_uri(e, uri))
    }

    /// Removes a directory and everything in it.
    pub fn remove_dir(&self, uri: &str) -> Result<()> {
        let c_uri = cstring("tiledb_vfs_remove_dir", uri)?;
        // SAFETY: live handles, valid URI.
        self.ctx
            .call("tiledb_vfs_remove_dir", |c| unsafe {
                ffi::tiledb_vfs_remove_dir(c, self.raw, c_uri.as_ptr())
            })
            .map_err(|e| in_uri(e, uri))
    }

    pub fn remove_file(&self, uri: &str) -> Result<()> {
        let c_uri = cstring("tiledb_vfs_remove_file", uri)?;
        // SAFETY: live handles, valid URI.
        self.ctx
            .call("tiledb_vfs_remove_file", |c| unsafe {
                ffi::tiledb_vfs_remove_file(c, self.raw, c_uri.as_ptr())
            })
            .map_err(|e| in_uri(e, uri))
    }

    /// Moves directory `from`, with everything in it, to `to` (a rename
    /// locally; on object stores a copy of every object, then a delete).
    pub fn move_dir(&self, from: &str, to: &str) -> Result<()> {
        let c_from = cstring("tiledb_vfs_move_dir", from)?;
        let c_to = cstring("tiledb_vfs_move_dir", to)?;
        // SAFETY: live handles, valid URIs.
        self.ctx
            .call("tiledb_vfs_move_dir", |c| unsafe {
                ffi::tiledb_vfs_move_dir(c, self.raw, c_from.as_ptr(), c_to.as_ptr())
            })
            .map_err(|e| in_uri(e, &format!("{from} -> {to}")))
    }

    /// Creates an empty file (an empty object on object stores).
    pub fn touch(&self, uri: &str) -> Result<()> {
        let c_uri = cstring("tiledb_vfs_touch", uri)?;
        // SAFETY: live handles, valid URI.
        self.ctx
            .call("tiledb_vfs_touch", |c| unsafe {
                ffi::tiledb_vfs_touch(c, self.raw, c_uri.as_ptr())
            })
            .map_err(|e| in_uri(e, uri))
    }

    /// The URIs of the immediate children of `uri` (files and directories),
    /// as TileDB spells them (`file:///...` for local paths). A listing
    /// that meets a file deleted while it runs is taken again.
    pub fn ls(&self, uri: &str) -> Result<Vec<String>> {
        super::error::retry_vanished(|| self.ls_once(uri))
    }

    fn ls_once(&self, uri: &str) -> Result<Vec<String>> {
        unsafe extern "C" fn collect(path: *const c_char, data: *mut c_void) -> i32 {
            // SAFETY: `data` is the `Vec<String>` passed below, alive for the
            // whole `tiledb_vfs_ls` call; `path` is a NUL-terminated string.
            unsafe {
                let out = &mut *(data as *mut Vec<String>);
                if !path.is_null() {
                    out.push(CStr::from_ptr(path).to_string_lossy().into_owned());
                }
            }
            1
        }
        let c_uri = cstring("tiledb_vfs_ls", uri)?;
        let mut out: Vec<String> = Vec::new();
        self.ctx
            // SAFETY: live handles; the callback only touches `out`.
            .call("tiledb_vfs_ls", |c| unsafe {
                ffi::tiledb_vfs_ls(
                    c,
                    self.raw,
                    c_uri.as_ptr(),
                    Some(collect),
                    &mut out as *mut Vec<String> as *mut c_void,
                )
            })
            .map_err(|e| in_uri(e, uri))?;
        Ok(out)
    }
}

impl Vfs {
    /// Calls `each` with every file under `uri`, at any depth (as TileDB
    /// spells its URI, and its size), in the order the store lists them
    /// (by key on object stores: one request per page, whatever the
    /// depth), until it returns false. Returns whether the listing ran to
    /// its end.
    pub fn ls_recursive(&self, uri: &str, each: &mut dyn FnMut(&str, u64) -> bool) -> Result<bool> {
        struct Walk<'a> {
            each: &'a mut dyn FnMut(&str, u64) -> bool,
            stopped: bool,
            panic: Option<Box<dyn std::any::Any + Send>>,
        }
        unsafe extern "C" fn visit(path: *const c_char, len: usize, size: u64, is_dir: u8, data: *mut c_void) -> i32 {
            // SAFETY: `data` is the `Walk` passed below; TileDB calls this
            // on the calling thread, one call at a time, within that call.
            let walk = unsafe { &mut *(data as *mut Walk) };
            if is_dir != 0 || path.is_null() || len == 0 {
                return 1;
            }
            // SAFETY: `path` points at `len` bytes for this call.
            let bytes = unsafe { std::slice::from_raw_parts(path as *const u8, len) };
            let path = String::from_utf8_lossy(bytes);
            // A panic must not unwind into libtiledb: it stops the walk and
            // goes on once TileDB has returned.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (walk.each)(&path, size))) {
                Ok(true) => 1,
                Ok(false) => {
                    walk.stopped = true;
                    0
                }
                Err(payload) => {
                    walk.panic = Some(payload);
                    0
                }
            }
        }
        let c_uri = cstring("tiledb_vfs_ls_recursive_v2", uri)?;
        let mut walk = Walk {
            each,
            stopped: false,
            panic: None,
        };
        let listed = self
            .ctx
            // SAFETY: live handles; the callback only touches `walk`.
            .call("tiledb_vfs_ls_recursive_v2", |c| unsafe {
                ffi::tiledb_vfs_ls_recursive_v2(
                    c,
                    self.raw,
                    c_uri.as_ptr(),
                    Some(visit),
                    &mut walk as *mut Walk as *mut c_void,
                )
            })
            .map_err(|e| in_uri(e, uri));
        if let Some(payload) = walk.panic {
            std::panic::resume_unwind(payload);
        }
        listed?;
        Ok(!walk.stopped)
    }
}

/// An open VFS file, closed (and freed) once.
struct FileHandle<'a> {
    vfs: &'a Vfs,
    raw: *mut ffi::tiledb_vfs_fh_t,
    uri: &'a str,
}

impl<'a> FileHandle<'a> {
    fn open(vfs: &'a Vfs, uri: &'a str, mode: u32) -> Result<Self> {
        let c_uri = cstring("tiledb_vfs_open", uri)?;
        let mut raw = ptr::null_mut();
        vfs.ctx
            // SAFETY: live handles, valid URI and out-pointer.
            .call("tiledb_vfs_open", |c| unsafe {
                ffi::tiledb_vfs_open(c, vfs.raw, c_uri.as_ptr(), mode, &mut raw)
            })
            .map_err(|e| in_uri(e, uri))?;
        Ok(FileHandle { vfs, raw, uri })
    }

    /// Closes the file: for a write, the moment its bytes take effect (an
    /// object store uploads them here), so its error must be seen.
    fn close(mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.raw, ptr::null_mut());
        let r = self
            .vfs
            .ctx
            // SAFETY: live, open handle.
            .call("tiledb_vfs_close", |c| unsafe { ffi::tiledb_vfs_close(c, raw) })
            .map_err(|e| in_uri(e, self.uri));
        let mut raw = raw;
        // SAFETY: owned handle, freed once (`Drop` now sees null).
        unsafe { ffi::tiledb_vfs_fh_free(&mut raw) };
        r
    }
}

impl Drop for FileHandle<'_> {
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        // SAFETY: owned handle; a close error is ignored on this path (the
        // caller already failed); freed once.
        unsafe {
            ffi::tiledb_vfs_close(self.vfs.ctx.raw(), self.raw);
            ffi::tiledb_vfs_fh_free(&mut self.raw);
        }
    }
}

impl Vfs {
    /// The whole content of the (small) file at `uri`.
    pub fn read_file(&self, uri: &str) -> Result<Vec<u8>> {
        let size = self.file_size(uri)?;
        let len = usize::try_from(size).map_err(|_| Error::new("tiledb_vfs_read", format!("{uri}: too large")))?;
        let mut buf = vec![0u8; len];
        let fh = FileHandle::open(self, uri, ffi::TILEDB_VFS_READ)?;
        if len > 0 {
            self.ctx
                // SAFETY: open handle; `buf` holds `size` bytes.
                .call("tiledb_vfs_read", |c| unsafe {
                    ffi::tiledb_vfs_read(c, fh.raw, 0, buf.as_mut_ptr() as *mut c_void, size)
                })
                .map_err(|e| in_uri(e, uri))?;
        }
        fh.close()?;
        Ok(buf)
    }

    /// Writes `data` as the whole file at `uri` (replacing one there).
    pub fn write_file(&self, uri: &str, data: &[u8]) -> Result<()> {
        let fh = FileHandle::open(self, uri, ffi::TILEDB_VFS_WRITE)?;
        self.ctx
            // SAFETY: open handle; `data` is valid for its length.
            .call("tiledb_vfs_write", |c| unsafe {
                ffi::tiledb_vfs_write(c, fh.raw, data.as_ptr() as *const c_void, data.len() as u64)
            })
            .map_err(|e| in_uri(e, uri))?;
        fh.close()
    }
}

/// A file opened once for many ranged reads from any thread (on an object
/// store an open checks the object; each read is one ranged request).
pub struct ReadFile {
    vfs: Vfs,
    raw: *mut ffi::tiledb_vfs_fh_t,
    uri: String,
}

// SAFETY: a read-mode handle holds the file's URI and its VFS only; each
// read forwards to the VFS's read of that URI at an offset, keeping no
// state between reads, and the VFS serves concurrent reads (see `Vfs`).
unsafe impl Send for ReadFile {}
// SAFETY: as above.
unsafe impl Sync for ReadFile {}

impl Vfs {
    /// Opens `uri` for reads through this VFS, which the handle keeps.
    pub fn open_read(self, uri: &str) -> Result<ReadFile> {
        let c_uri = cstring("tiledb_vfs_open", uri)?;
        let mut raw = ptr::null_mut();
        self.ctx
            // SAFETY: live handles, valid URI and out-pointer.
            .call("tiledb_vfs_open", |c| unsafe {
                ffi::tiledb_vfs_open(c, self.raw, c_uri.as_ptr(), ffi::TILEDB_VFS_READ, &mut raw)
            })
            .map_err(|e| in_uri(e, uri))?;
        Ok(ReadFile {
            vfs: self,
            raw,
            uri: uri.to_string(),
        })
    }
}

impl ReadFile {
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Appends the `len` bytes at `offset` to `out` (all of them, or an
    /// error and `out` as it was), without zeroing them first.
    pub fn read_append(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        out.reserve(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        self.vfs
            .ctx
            // SAFETY: open handle; `spare` is valid for writes of `len` bytes
            // for the whole call, and TileDB reads exactly `len` or fails.
            .call("tiledb_vfs_read", |c| unsafe {
                ffi::tiledb_vfs_read(c, self.raw, offset, spare.as_mut_ptr() as *mut c_void, len as u64)
            })
            .map_err(|e| in_uri(e, &self.uri))?;
        // SAFETY: the read above initialized all `len` bytes.
        unsafe { out.set_len(out.len() + len) };
        Ok(())
    }
}

impl Drop for ReadFile {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once; closing a read handle has
        // nothing to flush, so its status is not needed.
        unsafe {
            ffi::tiledb_vfs_close(self.vfs.ctx.raw(), self.raw);
            ffi::tiledb_vfs_fh_free(&mut self.raw);
        }
    }
}

impl Drop for Vfs {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { ffi::tiledb_vfs_free(&mut self.raw) };
    }
}

fn in_uri(e: Error, uri: &str) -> Error {
    Error::new(e.op, format!("{uri}: {}", e.message))
}
