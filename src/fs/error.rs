//! The filesystem core's error: the errno the caller gets, the log level
//! the failure deserves, and its cause. Errnos are chosen here and nowhere
//! else: in [`CoreError::errno_and_level`] for what the core refuses or
//! finds wrong itself, and in `From<registry::Error>` for what storage
//! reports. The adapter only reads `errno` and `level` off an [`Error`].

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use log::Level;

use crate::registry;

/// What went wrong, kept whole for the log.
#[derive(Debug)]
pub enum Cause {
    Registry(registry::Error),
    Core(CoreError),
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

/// A failure the core detects itself (storage's own are
/// [`registry::Error`]s), carrying the URI or name the log line needs.
/// Converts into [`Error`]; see [`CoreError::errno_and_level`] for the
/// errno each gets.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    // Names and lookups.
    /// `what` (a name, path or URI) is not there.
    #[error("{what}: not found")]
    NotFound { what: String },
    /// An inode number the core does not know (forgotten, or never given).
    #[error("inode {ino} unknown")]
    UnknownInode { ino: u64 },
    /// An entry that was shown is no longer (its storage is no longer a
    /// file or directory modelfs shows).
    #[error("{uri}: no longer shown")]
    NoLongerShown { uri: String },
    /// The storage a lookup had resolved a name to is gone, or holds
    /// another file (removed or replaced by another mount since). ESTALE
    /// makes the kernel look the name up again and retry a call by path
    /// once; a call on an open descriptor gets it as it is.
    #[error("{uri}: removed or replaced since it was looked up ({error})")]
    GoneSinceLookup { uri: String, error: Box<Error> },
    /// Another mount committed a version of the file since this mount
    /// looked it up: the kernel's size for it is out of date.
    #[error("{uri}: another version was committed since it was looked up")]
    NewVersionSinceLookup { uri: String },
    #[error("{what}: not a directory")]
    NotADirectory { what: String },
    #[error("{what}: is a directory")]
    IsADirectory { what: String },
    #[error("{what}: exists")]
    Exists { what: String },
    /// `create` of a name taken by something that is not a file.
    #[error("{uri}: exists and is not a file")]
    ExistsNotAFile { uri: String },
    #[error("{uri}: not empty")]
    NotEmpty { uri: String },
    /// A name that cannot be stored; ENAMETOOLONG when it is over
    /// [`registry::names::NAME_MAX_BYTES`], EINVAL otherwise.
    #[error("{name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot move a directory into itself")]
    MoveIntoItself,
    /// A rename of a file onto a directory.
    #[error("target is a directory")]
    TargetIsADirectory,
    /// A rename of a directory onto something else.
    #[error("target is not a directory")]
    TargetNotADirectory,
    /// A time before 1970, which the format cannot store.
    #[error("time {time:?} cannot be stored")]
    UnstorableTime { time: SystemTime },

    // Read-only places.
    /// A change on a read-only mount.
    #[error("{what}: the mount is read-only")]
    ReadOnlyMount { what: String },
    /// A change inside a TileDB-ML model's view; `change` says what and
    /// where ("create in", "rmdir of").
    #[error("{change} {uri}: TileDB-ML model arrays are shown read-only")]
    ReadOnlyView { change: String, uri: String },
    /// A change inside a `.versions` directory.
    #[error("{change} {uri}: versions are read-only (restore one by copying it over the file)")]
    ReadOnlyVersions { change: String, uri: String },

    // Handles and writers.
    #[error("no open handle {fh}")]
    BadHandle { fh: u64 },
    #[error("write to a handle not open for writing")]
    NotOpenForWriting,
    #[error("read of a directory")]
    ReadOfDirectory,
    /// A second writer of one file.
    #[error("{uri}: already open for writing")]
    AlreadyOpenForWriting { uri: String },
    /// A rename onto (or of another name onto) a file being written.
    #[error("{what}: being written")]
    BeingWritten { what: String },
    /// A rename of a committed file while it is open for writing.
    #[error("{uri}: open for writing; rename it after it is closed")]
    RenameWhileWritten { uri: String },
    /// The writer of a file went away while it was being renamed.
    #[error("file closed during rename; try again")]
    ClosedDuringRename,

    // Reads.
    /// A read of an open file failed; `what` names the file.
    #[error("read of {what} at {offset}: {error}")]
    Read {
        what: String,
        offset: u64,
        error: Box<Error>,
    },
    /// A TileDB-ML view's bytes could not be read back from its spill file.
    #[error("read of a TileDB-ML view at {offset} from its spill file: {error}")]
    ViewSpillRead { offset: u64, error: std::io::Error },
    /// Storage returned fewer bytes than a file's size promised.
    #[error("{uri}: read {got} of {wanted} bytes at {offset}")]
    ShortRead {
        uri: String,
        got: usize,
        wanted: usize,
        offset: u64,
    },
    /// The chunk cache could not assemble a read from its chunks.
    #[error("{what}: assembled {got} of {wanted} bytes at {offset}")]
    ShortAssembly {
        what: String,
        got: usize,
        wanted: u64,
        offset: u64,
    },

    // The write path.
    /// A file open for writing whose committed version is no longer a file.
    #[error("{uri}: not a file any more")]
    NotAFileAnyMore { uri: String },
    #[error("{name}: written past the {size} bytes its safetensors header declares")]
    PastDeclaredSize { name: String, size: u64 },
    #[error(
        "{name}: write at {offset} after {written} bytes: a .safetensors file is streamed to TileDB and must be written in order"
    )]
    StreamOutOfOrder { name: String, offset: u64, written: u64 },
    #[error("{name}: a .safetensors file being streamed cannot be read back before it is closed")]
    StreamReadBack { name: String },
    #[error("{name}: a streamed .safetensors file cannot be truncated while written")]
    StreamTruncate { name: String },
    #[error("{name}: write in an unexpected state")]
    UnexpectedWriterState { name: String },
    /// A writer that failed earlier returns that failure's errno and
    /// message to every later call.
    #[error("{message}")]
    FailedEarlier { errno: i32, message: String },
    /// Staging `name` would pass the staging limit of `limit` bytes.
    #[error(
        "{name}: staging it needs {extra} more bytes; the staging limit is {limit} bytes ({used} in use under {})",
        dir.display()
    )]
    StagingFull {
        name: String,
        extra: u64,
        limit: u64,
        used: u64,
        dir: PathBuf,
    },
    /// A staging file's I/O failed: its own errno, EIO without one.
    #[error("{name}: staging under {}: {error}", dir.display())]
    Staging {
        name: String,
        dir: PathBuf,
        error: std::io::Error,
    },

    // The mount.
    #[error("{uri}: no such registry")]
    NoRegistry { uri: String },
    #[error("{uri}: not a directory (a TileDB group or a directory)")]
    RegistryNotADirectory { uri: String },
    #[error("staging directory {}: {error}", dir.display())]
    StagingDir { dir: PathBuf, error: std::io::Error },
    /// A writer of a file the kernel reads from a disk cache file for open
    /// handles (FUSE passthrough).
    #[error("{uri}: open for reading through passthrough; close those first")]
    PassedThrough { uri: String },
    /// The disk cache directory cannot be made or locked.
    #[error("disk cache {}: {error}", dir.display())]
    DiskCacheDir { dir: PathBuf, error: std::io::Error },

    // Requests the adapter refuses before they reach the core.
    /// `mknod`, or `create` of a special file.
    #[error("{name:?}: only regular files and directories can be stored")]
    SpecialFile { name: OsString },
    /// Symbolic links, hard links, extended attributes.
    #[error("{name:?}: {what} are not supported")]
    Unsupported { what: &'static str, name: OsString },
    #[error("{op}: name {name:?} is not UTF-8")]
    NotUtf8 { op: &'static str, name: OsString },
    #[error("rename flags {flags} are not supported")]
    RenameFlags { flags: String },
    /// A request whose handler panicked (a bug).
    #[error("{op}: internal error, request failed (panic: {message}); the mount keeps serving")]
    Panicked { op: String, message: String },
}

impl CoreError {
    /// The errno the caller gets and the level the failure is logged at:
    /// debug for what callers routinely probe (misses, names taken), info
    /// for refusals, warn for failed I/O, error for a broken mount or a bug.
    pub fn errno_and_level(&self) -> (i32, Level) {
        use CoreError as E;
        match self {
            E::NotFound { .. } | E::UnknownInode { .. } | E::NoLongerShown { .. } => (libc::ENOENT, Level::Debug),
            E::NotUtf8 { .. } => (libc::ENOENT, Level::Debug),
            E::GoneSinceLookup { .. } | E::NewVersionSinceLookup { .. } => (libc::ESTALE, Level::Debug),
            E::NotADirectory { .. } | E::TargetNotADirectory => (libc::ENOTDIR, Level::Debug),
            E::IsADirectory { .. } | E::TargetIsADirectory | E::ReadOfDirectory => (libc::EISDIR, Level::Debug),
            E::Exists { .. } => (libc::EEXIST, Level::Debug),
            E::ExistsNotAFile { .. } => (libc::EEXIST, Level::Info),
            E::NotEmpty { .. } => (libc::ENOTEMPTY, Level::Debug),
            E::InvalidName { name, .. } if name.len() > registry::names::NAME_MAX_BYTES => {
                (libc::ENAMETOOLONG, Level::Debug)
            }
            E::InvalidName { .. } | E::MoveIntoItself | E::UnstorableTime { .. } | E::RenameFlags { .. } => {
                (libc::EINVAL, Level::Debug)
            }
            E::ReadOnlyMount { .. } | E::ReadOnlyView { .. } | E::ReadOnlyVersions { .. } => (libc::EROFS, Level::Info),
            E::BadHandle { .. } => (libc::EBADF, Level::Warn),
            E::NotOpenForWriting => (libc::EBADF, Level::Debug),
            E::AlreadyOpenForWriting { .. }
            | E::BeingWritten { .. }
            | E::RenameWhileWritten { .. }
            | E::ClosedDuringRename => (libc::EBUSY, Level::Info),
            E::Read { error, .. } => (error.errno, error.level),
            E::ShortRead { .. } | E::ShortAssembly { .. } | E::ViewSpillRead { .. } => (libc::EIO, Level::Warn),
            E::NotAFileAnyMore { .. }
            | E::StreamOutOfOrder { .. }
            | E::StreamReadBack { .. }
            | E::StreamTruncate { .. }
            | E::UnexpectedWriterState { .. } => (libc::EIO, Level::Warn),
            E::PastDeclaredSize { .. } => (libc::EINVAL, Level::Warn),
            E::FailedEarlier { errno, .. } => (*errno, Level::Warn),
            E::StagingFull { .. } => (libc::ENOSPC, Level::Warn),
            E::Staging { error, .. } => (error.raw_os_error().unwrap_or(libc::EIO), Level::Warn),
            E::NoRegistry { .. } => (libc::ENOENT, Level::Error),
            E::RegistryNotADirectory { .. } => (libc::ENOTDIR, Level::Error),
            E::PassedThrough { .. } => (libc::ETXTBSY, Level::Info),
            E::StagingDir { .. } | E::DiskCacheDir { .. } | E::Panicked { .. } => (libc::EIO, Level::Error),
            E::SpecialFile { .. } => (libc::EPERM, Level::Debug),
            E::Unsupported { .. } => (libc::ENOTSUP, Level::Debug),
        }
    }
}

impl Error {
    /// ENOENT for a name that is not there: routine, logged at debug.
    pub fn not_found(what: impl fmt::Display) -> Self {
        CoreError::NotFound { what: what.to_string() }.into()
    }

    /// EIO for a request whose handler panicked (a bug): logged at error,
    /// naming the operation and the panic's message.
    pub fn panicked(op: &str, message: &str) -> Self {
        CoreError::Panicked {
            op: op.to_string(),
            message: message.to_string(),
        }
        .into()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::Registry(e) => write!(f, "{e}"),
            Cause::Core(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Registry(e) => Some(e),
            // Its message is this error's whole text: not repeated in a
            // printed chain.
            Cause::Core(_) => None,
        }
    }
}

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        let (errno, level) = e.errno_and_level();
        Error {
            errno,
            level,
            cause: Cause::Core(e),
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
            // `mv` copies, then removes, on EXDEV.
            R::NamedFromOutside { .. } | R::PlainDirIntoGroup { .. } => (libc::EXDEV, Level::Info),
            R::PathTooLong { .. } => (libc::ENAMETOOLONG, Level::Info),
            R::SizeMismatch { .. } | R::VersionGone { .. } => (libc::EIO, Level::Warn),
            // A local path past the OS's limit (TileDB passes strerror on).
            R::TileDB(t) if t.message.contains("File name too long") => (libc::ENAMETOOLONG, Level::Info),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The errnos the adapter has always returned for the core's failures.
    #[test]
    fn errno_table() {
        let cases: Vec<(CoreError, i32, Level)> = vec![
            (CoreError::NotFound { what: "x".into() }, libc::ENOENT, Level::Debug),
            (
                CoreError::InvalidName {
                    name: "n".repeat(256),
                    reason: "longer than 255 bytes",
                },
                libc::ENAMETOOLONG,
                Level::Debug,
            ),
            (
                CoreError::InvalidName {
                    name: "a/b".into(),
                    reason: "contains '/'",
                },
                libc::EINVAL,
                Level::Debug,
            ),
            (CoreError::ReadOnlyMount { what: "x".into() }, libc::EROFS, Level::Info),
            (CoreError::BadHandle { fh: 7 }, libc::EBADF, Level::Warn),
            (CoreError::NotOpenForWriting, libc::EBADF, Level::Debug),
            (CoreError::ClosedDuringRename, libc::EBUSY, Level::Info),
            (
                CoreError::Staging {
                    name: "f".into(),
                    dir: PathBuf::from("/s"),
                    error: std::io::Error::from_raw_os_error(libc::ENOSPC),
                },
                libc::ENOSPC,
                Level::Warn,
            ),
            (
                CoreError::FailedEarlier {
                    errno: libc::EINVAL,
                    message: "m".into(),
                },
                libc::EINVAL,
                Level::Warn,
            ),
        ];
        for (e, errno, level) in cases {
            let text = e.to_string();
            let e = Error::from(e);
            assert_eq!((e.errno, e.level), (errno, level), "{text}");
        }
    }

    #[test]
    fn read_failure_keeps_the_errno_and_level_of_its_cause() {
        let inner = Error::from(CoreError::ShortRead {
            uri: "u".into(),
            got: 1,
            wanted: 2,
            offset: 0,
        });
        let e = Error::from(CoreError::Read {
            what: "f".into(),
            offset: 5,
            error: Box::new(inner),
        });
        assert_eq!((e.errno, e.level), (libc::EIO, Level::Warn));
        assert_eq!(e.to_string(), "read of f at 5: u: read 1 of 2 bytes at 0");
    }
}
