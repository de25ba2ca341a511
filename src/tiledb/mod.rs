//! A small, safe binding over the libtiledb 2.30 C API: only what modelfs
//! needs. Every handle owns its pointer and frees it once in `Drop`; every
//! call's status is checked and a failure carries TileDB's own message.
//! No other module calls TileDB or uses `unsafe`.

pub mod allocator;
mod array;
mod context;
mod datatype;
mod error;
mod ffi;
mod filter;
mod fragment_info;
mod group;
mod group_history;
mod metadata;
mod object;
mod schema;
mod stored_tiles;
mod vfs;
mod wait;

pub use array::{Array, GlobalWrite, MetaValue, Mode};
pub use context::{Config, Context, now_ms, version};
pub use datatype::{Datatype, format_values};
pub use error::{Error, Result};
pub use filter::{Filter, FilterType};
pub use fragment_info::{Fragment, delete_fragments, fragments};
pub use group::{Group, GroupFile, GroupMode, Member};
pub use group_history::{
    Compaction, HISTORY_KEPT, ListFiles, MembersChange, RETIRE_GRACE, Retired, Vacuumed, compact_members, list_files,
    live_list_files, metadata_fingerprint, own_bytes, vacuum_members,
};
pub use object::{ObjectType, object_move, object_remove, object_type};
pub use schema::{ArrayType, AttributeInfo, AttributeSpec, DimensionInfo, DimensionSpec, Schema};
pub use stored_tiles::{StoredTiles, stored_tile_bytes};
pub use vfs::Vfs;
pub use wait::{interposed as yield_interposed, naps as yield_naps};

#[cfg(test)]
mod tests;
