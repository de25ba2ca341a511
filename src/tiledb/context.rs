//! `Config` and `Context`: the root handles. Every C call that takes a context
//! goes through [`Context::call`], which checks the return code and turns a
//! failure into an [`Error`] carrying TileDB's own message.

use std::ffi::{CStr, CString};
use std::ptr;
use std::sync::Arc;

use super::error::{Error, Result};
use super::ffi;

/// Converts a Rust string into a C string, refusing interior NUL bytes.
pub(crate) fn cstring(op: &'static str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::new(op, format!("argument contains a NUL byte: {s:?}")))
}

/// Takes the message out of a `tiledb_error_t` and frees it.
fn take_error(op: &'static str, mut err: *mut ffi::tiledb_error_t) -> Error {
    if err.is_null() {
        return Error::new(op, "failed without an error message");
    }
    let mut msg: *const std::ffi::c_char = ptr::null();
    // SAFETY: `err` is a live error handle; the message it returns is owned
    // by it and copied before the handle is freed.
    let text = unsafe {
        let text = if ffi::tiledb_error_message(err, &mut msg) == ffi::TILEDB_OK && !msg.is_null() {
            CStr::from_ptr(msg).to_string_lossy().into_owned()
        } else {
            "failed without an error message".to_string()
        };
        ffi::tiledb_error_free(&mut err);
        text
    };
    Error::new(op, text)
}

/// A TileDB configuration: string keys to string values.
pub struct Config {
    raw: *mut ffi::tiledb_config_t,
}

// SAFETY: a config handle is plain heap data owned by this value; it may be
// moved to another thread. It is not `Sync`: TileDB treats mutation as
// single-threaded.
unsafe impl Send for Config {}

impl Config {
    pub fn new() -> Result<Self> {
        let mut raw = ptr::null_mut();
        let mut err = ptr::null_mut();
        // SAFETY: out-pointers are valid for writes.
        let rc = unsafe { ffi::tiledb_config_alloc(&mut raw, &mut err) };
        if rc != ffi::TILEDB_OK {
            return Err(take_error("tiledb_config_alloc", err));
        }
        Ok(Config { raw })
    }

    /// TileDB's defaults with the settings modelfs relies on:
    ///
    /// - `sm.mem.malloc_trim = false`: by default TileDB hands freed memory
    ///   back to the OS after every query, and the next query faults it all
    ///   in again. Measured on a 1 GiB file array read in 8 MiB queries: 4.1 s
    ///   and 4.9 s of CPU with trimming, 1.2 s and 1.4 s without.
    /// - `sm.compute_concurrency_level = 1`: a group open (every
    ///   directory's stat) hands three listings to the compute pool and
    ///   waits for them by yielding in a loop; with one pool thread the
    ///   caller runs most of them itself. Measured: `ls -l` of 10,000
    ///   directories 2.9 s before, 1.8-2.3 s after; a cold 512 MiB read
    ///   unchanged (0.57-0.63 s before, 0.51-0.59 s after).
    pub fn tuned() -> Result<Self> {
        let mut c = Config::new()?;
        c.set("sm.mem.malloc_trim", "false")?;
        c.set("sm.compute_concurrency_level", "1")?;
        Ok(c)
    }

    /// Applies the usual AWS environment variables TileDB's S3 client does
    /// not read itself: `AWS_REGION` (or `AWS_DEFAULT_REGION`) and
    /// `AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`). Credentials
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_PROFILE`) TileDB's S3 client reads on its own. A `TILEDB_VFS_S3_*`
    /// variable for the same setting wins, and so does anything set later.
    pub fn apply_aws_environment(&mut self) -> Result<()> {
        for (key, value) in aws_settings(|k| std::env::var(k).ok().filter(|v| !v.is_empty())) {
            self.set(key, &value)?;
        }
        Ok(())
    }

    /// Sets `key` to `value`; TileDB rejects unknown-format values here.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let k = cstring("tiledb_config_set", key)?;
        let v = cstring("tiledb_config_set", value)?;
        let mut err = ptr::null_mut();
        // SAFETY: `self.raw` is live; the strings outlive the call.
        let rc = unsafe { ffi::tiledb_config_set(self.raw, k.as_ptr(), v.as_ptr(), &mut err) };
        if rc != ffi::TILEDB_OK {
            let mut e = take_error("tiledb_config_set", err);
            e.message = format!("{key}: {}", e.message);
            return Err(e);
        }
        Ok(())
    }

    pub(super) fn raw(&self) -> *mut ffi::tiledb_config_t {
        self.raw
    }

    /// The value of `key`, or `None` when TileDB does not know it.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let k = cstring("tiledb_config_get", key)?;
        let mut value: *const std::ffi::c_char = ptr::null();
        let mut err = ptr::null_mut();
        // SAFETY: `self.raw` is live; `value` is owned by the config and
        // copied at once.
        unsafe {
            if ffi::tiledb_config_get(self.raw, k.as_ptr(), &mut value, &mut err) != ffi::TILEDB_OK {
                return Err(take_error("tiledb_config_get", err));
            }
            if value.is_null() {
                return Ok(None);
            }
            Ok(Some(CStr::from_ptr(value).to_string_lossy().into_owned()))
        }
    }
}

/// The TileDB settings the AWS variables in `env` stand for (see
/// [`Config::apply_aws_environment`]).
fn aws_settings(env: impl Fn(&str) -> Option<String>) -> Vec<(&'static str, String)> {
    // TileDB itself reads `TILEDB_` + the key in capitals, dots as `_`.
    let set_for_tiledb = |key: &str| env(&format!("TILEDB_{}", key.replace('.', "_").to_uppercase())).is_some();
    let mut out = Vec::new();
    if let Some(region) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION"))
        && !set_for_tiledb("vfs.s3.region")
    {
        out.push(("vfs.s3.region", region));
    }
    if let Some(url) = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")) {
        let (scheme, host) = match url.split_once("://") {
            Some((scheme, host)) => (Some(scheme.to_string()), host),
            None => (None, url.as_str()),
        };
        if !set_for_tiledb("vfs.s3.endpoint_override") {
            out.push(("vfs.s3.endpoint_override", host.trim_end_matches('/').to_string()));
        }
        if let Some(scheme) = scheme
            && !set_for_tiledb("vfs.s3.scheme")
        {
            out.push(("vfs.s3.scheme", scheme));
        }
    }
    out
}

#[cfg(test)]
mod aws_tests {
    use super::aws_settings;

    fn settings(vars: &[(&str, &str)]) -> Vec<(&'static str, String)> {
        aws_settings(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn region_and_endpoint_come_from_aws_variables() {
        assert_eq!(settings(&[]), vec![]);
        assert_eq!(
            settings(&[
                ("AWS_DEFAULT_REGION", "eu-west-1"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:3900/")
            ]),
            vec![
                ("vfs.s3.region", "eu-west-1".to_string()),
                ("vfs.s3.endpoint_override", "127.0.0.1:3900".to_string()),
                ("vfs.s3.scheme", "http".to_string()),
            ]
        );
        // The S3-specific variables win over the general ones.
        assert_eq!(
            settings(&[
                ("AWS_REGION", "a"),
                ("AWS_DEFAULT_REGION", "b"),
                ("AWS_ENDPOINT_URL", "https://general"),
                ("AWS_ENDPOINT_URL_S3", "s3.example.com"),
            ]),
            vec![
                ("vfs.s3.region", "a".to_string()),
                ("vfs.s3.endpoint_override", "s3.example.com".to_string()),
            ]
        );
    }

    #[test]
    fn tiledb_variables_win_over_aws_ones() {
        assert_eq!(
            settings(&[
                ("AWS_REGION", "a"),
                ("TILEDB_VFS_S3_REGION", "b"),
                ("AWS_ENDPOINT_URL", "http://x:1"),
                ("TILEDB_VFS_S3_SCHEME", "https"),
            ]),
            vec![("vfs.s3.endpoint_override", "x:1".to_string())]
        );
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: `raw` was allocated by `tiledb_config_alloc` and is freed once.
        unsafe { ffi::tiledb_config_free(&mut self.raw) };
    }
}

struct RawContext(*mut ffi::tiledb_ctx_t);

// SAFETY: TileDB documents a context as shareable across threads (it owns
// thread pools and guards its state); the only shared mutable piece, the last
// error, is read right after a failed call and may at worst name another
// thread's failure.
unsafe impl Send for RawContext {}
// SAFETY: as above.
unsafe impl Sync for RawContext {}

impl Drop for RawContext {
    fn drop(&mut self) {
        // SAFETY: allocated by `tiledb_ctx_alloc`, freed once when the last
        // `Context` clone goes away.
        unsafe { ffi::tiledb_ctx_free(&mut self.0) };
    }
}

/// A TileDB context, cheap to clone and shared by every handle made from it.
#[derive(Clone)]
pub struct Context {
    inner: Arc<RawContext>,
}

impl Context {
    /// A context with TileDB's default configuration.
    pub fn new() -> Result<Self> {
        Self::alloc(ptr::null_mut())
    }

    /// A context with the given configuration (copied by TileDB).
    pub fn with_config(config: &Config) -> Result<Self> {
        Self::alloc(config.raw)
    }

    fn alloc(config: *mut ffi::tiledb_config_t) -> Result<Self> {
        let mut raw = ptr::null_mut();
        // SAFETY: `config` is null or a live config; TileDB copies it.
        let rc = unsafe { ffi::tiledb_ctx_alloc(config, &mut raw) };
        if rc != ffi::TILEDB_OK || raw.is_null() {
            return Err(Error::new(
                "tiledb_ctx_alloc",
                format!("could not create a context (status {rc})"),
            ));
        }
        Ok(Context {
            inner: Arc::new(RawContext(raw)),
        })
    }

    pub(crate) fn raw(&self) -> *mut ffi::tiledb_ctx_t {
        self.inner.0
    }

    /// Runs one C call with this context and checks its status.
    pub(crate) fn call(&self, op: &'static str, f: impl FnOnce(*mut ffi::tiledb_ctx_t) -> i32) -> Result<()> {
        let rc = f(self.raw());
        if rc == ffi::TILEDB_OK {
            Ok(())
        } else {
            Err(self.last_error(op, rc))
        }
    }

    fn last_error(&self, op: &'static str, rc: i32) -> Error {
        let mut err = ptr::null_mut();
        // SAFETY: the context is live; a returned error handle is freed by
        // `take_error`.
        let rc2 = unsafe { ffi::tiledb_ctx_get_last_error(self.raw(), &mut err) };
        if rc2 != ffi::TILEDB_OK || err.is_null() {
            let what = match rc {
                -2 => "out of memory",
                -5 => "memory budget unavailable",
                _ => "failed without an error message",
            };
            return Error::new(op, what);
        }
        take_error(op, err)
    }
}

/// The linked library's version, e.g. `(2, 30, 0)`.
pub fn version() -> (i32, i32, i32) {
    let (mut a, mut b, mut c) = (0, 0, 0);
    // SAFETY: plain out-pointers.
    unsafe { ffi::tiledb_version(&mut a, &mut b, &mut c) };
    (a, b, c)
}

/// TileDB's clock: milliseconds since the Unix epoch, as fragment names use.
pub fn now_ms() -> u64 {
    // SAFETY: no arguments, no state.
    unsafe { ffi::tiledb_timestamp_now_ms() }
}
