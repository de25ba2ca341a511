//! The binding's one error type: the C function that failed and TileDB's own
//! message for it.

use std::fmt;

/// A failed TileDB call. `op` names the C function (or the binding's own
/// operation); `message` is TileDB's error text, read from the context right
/// after the call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub op: &'static str,
    pub message: String,
}

impl Error {
    pub(crate) fn new(op: &'static str, message: impl Into<String>) -> Self {
        Error {
            op,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the call failed because a file it had just listed was gone
    /// when read (a race with a deletion), or not written yet (on a local
    /// disk a file shows empty until its writer is done): a new attempt
    /// does not meet the same.
    pub fn is_vanished_file(&self) -> bool {
        let m = &self.message;
        m.contains("No such file or directory")
            || m.contains("NoSuchKey")
            || m.contains("404")
            || m.contains("Read exceeds file size")
    }
}

/// Runs `f` up to seven times while it fails on a vanished file (see
/// [`Error::is_vanished_file`]), waiting twice as long each time (0.63 s
/// in all): on a busy machine an open can take long enough for a file it
/// listed to be retired again and again.
pub(crate) fn retry_vanished<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 0u32;
    loop {
        match f() {
            Err(e) if e.is_vanished_file() && attempt < 6 => {
                std::thread::sleep(std::time::Duration::from_millis(10 << attempt));
                attempt += 1;
            }
            r => return r,
        }
    }
}
