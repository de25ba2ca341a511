//! The filesystem core's error: the errno the caller gets, the log level
//! the failure deserves, and its cause. Errnos are chosen here and nowhere
//! else.

use std::fmt;

use log::Level;

use crate::registry;

/// What went wrong, kept whole for the log.
#[derive(Debug)]
pub enum Cause {
    Registry(registry::Error),
    Message(String),
}

/// A failed filesystem operation.
#[derive(Debug)]
pub struct Error {
    /// A positive `libc` errno.
    pub errno: i32,
    pub level: Level,
    pub cause: Cause,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(errno: i32, level: Level, message: impl Into<String>) -> Self {
        Error {
            errno,
            level,
            cause: Cause::Message(message.into()),
        }
    }

    /// ENOENT for a name that is not there: routine, logged at debug.
    pub fn not_found(what: impl fmt::Display) -> Self {
        Error::new(libc::ENOENT, Level::Debug, format!("{what}: not found"))
    }

    pub fn bad_handle(fh: u64) -> Self {
        Error::new(libc::EBADF, Level::Warn, format!("no open handle {fh}"))
    }

    /// EIO for a request whose handler panicked (a bug): logged at error,
    /// naming the operation and the panic's message.
    pub fn panicked(op: &str, message: &str) -> Self {
        Error::new(
            libc::EIO,
            Level::Error,
            format!("{op}: internal error, request failed (panic: {message}); the mount keeps serving"),
        )
    }

    pub fn read_only(what: impl fmt::Display) -> Self {
        Error::new(libc::EROFS, Level::Info, format!("{what}: the mount is read-only"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Registry(e) => write!(f, "{e}"),
            Cause::Message(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Registry(e) => Some(e),
            Cause::Message(_) => None,
        }
    }
}

impl From<registry::Error> for Error {
    fn from(e: registry::Error) -> Self {
        use registry::Error as R;
        let (errno, level) = match &e {
            R::NotFound { .. } => (libc::ENOENT, Level::Debug),
            R::AlreadyExists { .. } => (libc::EEXIST, Level::Debug),
            R::NotADirectory { .. } => (libc::ENOTDIR, Level::Debug),
            R::IsADirectory { .. } => (libc::EISDIR, Level::Debug),
            R::InvalidName { name, .. } if name.len() > registry::names::NAME_MAX_BYTES => {
                (libc::ENAMETOOLONG, Level::Debug)
            }
            R::InvalidName { .. } => (libc::EINVAL, Level::Debug),
            R::InvalidSafetensors { .. } => (libc::EINVAL, Level::Warn),
            R::Unsupported { .. } => (libc::EPERM, Level::Info),
            R::SizeMismatch { .. } => (libc::EIO, Level::Warn),
            R::TileDB(_) | R::NotAFileArray { .. } | R::Corrupt { .. } | R::Io { .. } => (libc::EIO, Level::Warn),
            R::NotATileDbMlModel { .. } | R::TileDbMlField(_) | R::ExportIncomplete { .. } => (libc::EIO, Level::Warn),
        };
        Error {
            errno,
            level,
            cause: Cause::Registry(e),
        }
    }
}
