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
