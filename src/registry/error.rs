//! The registry layer's error type: every variant names the URI or path it
//! is about, and keeps its cause as a source.

use std::path::PathBuf;

use crate::tiledb;

use super::tiledb_ml::FieldError;

/// Why a `.safetensors` file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafetensorsProblem {
    #[error("file is {size} bytes, too short for the 8-byte header length")]
    TooShort { size: u64 },
    #[error("header length {len} is over the 100000000-byte limit")]
    HeaderTooLarge { len: u64 },
    #[error("header length {len} runs past the end of the {size}-byte file")]
    HeaderPastEof { len: u64, size: u64 },
    #[error("header is not valid JSON: {0}")]
    BadJson(String),
    #[error("tensor {name:?}: {problem}")]
    BadTensor { name: String, problem: String },
    #[error("tensors {first:?} and {second:?} overlap or leave a gap (offsets {first_end} and {second_begin})")]
    Overlap {
        first: String,
        first_end: u64,
        second: String,
        second_begin: u64,
    },
    #[error("tensor data ends at byte {data_end} but the file holds {size} bytes")]
    SizeMismatch { data_end: u64, size: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    TileDB(#[from] tiledb::Error),
    #[error("{uri}: no such file or directory")]
    NotFound { uri: String },
    #[error("{uri}: already exists (use --force to write a new version)")]
    AlreadyExists { uri: String },
    #[error("{uri}: not a directory")]
    NotADirectory { uri: String },
    #[error("{uri}: is a directory")]
    IsADirectory { uri: String },
    #[error("{uri}: not a modelfs file array: {reason}")]
    NotAFileArray { uri: String, reason: String },
    #[error("{name:?}: not a valid file name: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{name}: invalid safetensors file: {problem}")]
    InvalidSafetensors { name: String, problem: SafetensorsProblem },
    #[error("{uri}: {reason}")]
    Corrupt { uri: String, reason: String },
    #[error("{uri}: version {version} is no longer stored (pruned)")]
    VersionGone { uri: String, version: String },
    #[error("{uri}: written {written} bytes but {expected} were declared")]
    SizeMismatch { uri: String, written: u64, expected: u64 },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{uri}: the storage path would be longer than local paths may be ({max} bytes)")]
    PathTooLong { uri: String, max: usize },
    #[error("{uri}: {what} cannot be stored")]
    Unsupported { uri: String, what: &'static str },
    #[error(
        "{uri}: its storage cannot move: {inside}, inside it, is an entry moved to another directory that names it there (copy instead)"
    )]
    NamedFromOutside { uri: String, inside: String },
    #[error("{uri}: a plain directory (not a TileDB group) cannot move into group {group} (copy instead)")]
    PlainDirIntoGroup { uri: String, group: String },
    #[error("{uri}: not a TileDB-ML model array: {reason}")]
    NotATileDbMlModel { uri: String, reason: String },
    /// A field of a TileDB-ML model array that shows no files (boxed: it
    /// carries the decoder's whole error).
    #[error(transparent)]
    TileDbMlField(Box<FieldError>),
    /// An export wrote every file it could, but these TileDB-ML fields show
    /// no files.
    #[error("{}", incomplete(failures))]
    ExportIncomplete { failures: Vec<FieldError> },
}

fn incomplete(failures: &[FieldError]) -> String {
    let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
    format!(
        "{} TileDB-ML field(s) not exported (every other file was written): {}",
        failures.len(),
        list.join("; ")
    )
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<FieldError> for Error {
    fn from(e: FieldError) -> Self {
        Error::TileDbMlField(Box::new(e))
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
