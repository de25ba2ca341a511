//! The read path: chunk sources, the shared chunk cache, and read-ahead.

pub mod chunk_cache;
pub mod data;
pub mod prefetch;
pub mod source;

pub use chunk_cache::ChunkCache;
pub use data::Data;
pub use prefetch::{PrefetchPool, Prefetcher};
pub use source::{ChunkSource, FileVersion};
