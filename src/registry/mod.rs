//! The registry format, version 1: directories are TileDB groups (or plain
//! directories holding TileDB objects), files are file arrays with
//! filestore-compatible metadata, and `.safetensors` files carry a validated
//! tensor index. TileDB-ML model arrays are shown as read-only directories
//! of pickle-free files ([`tiledb_ml`]). See the README's "Registry format"
//! section.

pub mod attrs;
mod compaction;
pub mod dir_stats;
mod error;
pub mod file_array;
mod journal;
mod members;
pub mod names;
pub mod safetensors_index;
pub mod tiledb_ml;
pub mod transfer;
mod tree;
pub mod uri;
pub mod version_time;
pub mod versions;

pub use attrs::Attrs;
pub use compaction::DirCompaction;
pub use dir_stats::{DirStat, StatLabel, Summaries};
pub use error::{Error, Result, SafetensorsProblem};
pub use file_array::{Committed, FileArray, FileKind, FileMeta, FileWriter};
pub use members::DEFAULT_LISTING_CACHE_ENTRIES;
pub use safetensors_index::{TensorEntry, TensorIndex};
pub use tree::{Entry, NameSlot, Node, Registry, Storage, TILEDB_ML_FRAMEWORK_KEY};
pub use versions::{History, Version};

/// Calls of `sched_yield` in a spin during a read query (the storage
/// library waiting for its own tasks) that slept instead, over the life of
/// the process.
pub fn yield_naps() -> u64 {
    crate::tiledb::yield_naps()
}

/// Bytes of files read as their stored tiles, without a query (see
/// `file_array::STORED_MIN_TILES`), over the life of the process.
pub fn stored_tile_bytes() -> u64 {
    crate::tiledb::stored_tile_bytes()
}

/// Whether the storage library's `sched_yield` calls reach the process's
/// own, which naps.
pub fn yield_interposed() -> bool {
    crate::tiledb::yield_interposed()
}
