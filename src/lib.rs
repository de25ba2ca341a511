//! modelfs: a registry of machine-learning models stored in TileDB arrays,
//! shown as ordinary files.
//!
//! Layers, top to bottom: the CLI (`main.rs`), the FUSE adapter, the
//! filesystem core, the registry format ([`registry`]) and the TileDB binding
//! ([`tiledb`]). Dependencies point down only.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod fs;
pub mod fuse;
pub mod registry;
pub mod tiledb;
