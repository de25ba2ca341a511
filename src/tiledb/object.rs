//! What a URI holds (array, group or nothing TileDB knows), and moving or
//! removing whole TileDB objects.

use super::context::{Context, cstring};
use super::error::{Error, Result};
use super::ffi;

/// The kind of TileDB object at a URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    Array,
    Group,
    /// Missing, a plain directory or file, or anything else.
    Invalid,
}

impl ObjectType {
    pub(crate) fn from_raw(t: ffi::tiledb_object_t) -> Self {
        match t {
            ffi::TILEDB_ARRAY => ObjectType::Array,
            ffi::TILEDB_GROUP => ObjectType::Group,
            _ => ObjectType::Invalid,
        }
    }

    pub(crate) fn raw(self) -> ffi::tiledb_object_t {
        match self {
            ObjectType::Array => ffi::TILEDB_ARRAY,
            ObjectType::Group => ffi::TILEDB_GROUP,
            ObjectType::Invalid => ffi::TILEDB_INVALID,
        }
    }
}

/// The kind of object at `uri` (`Invalid` when there is none).
pub fn object_type(ctx: &Context, uri: &str) -> Result<ObjectType> {
    let c_uri = cstring("tiledb_object_type", uri)?;
    let mut t = 0u32;
    // SAFETY: valid URI and out-pointer.
    ctx.call("tiledb_object_type", |c| unsafe {
        ffi::tiledb_object_type(c, c_uri.as_ptr(), &mut t)
    })
    .map_err(|e| Error::new(e.op, format!("{uri}: {}", e.message)))?;
    Ok(ObjectType::from_raw(t))
}

/// Removes the array or group at `uri` with everything in it.
pub fn object_remove(ctx: &Context, uri: &str) -> Result<()> {
    let c_uri = cstring("tiledb_object_remove", uri)?;
    // SAFETY: valid URI.
    ctx.call("tiledb_object_remove", |c| unsafe {
        ffi::tiledb_object_remove(c, c_uri.as_ptr())
    })
    .map_err(|e| Error::new(e.op, format!("{uri}: {}", e.message)))
}

/// Moves the array or group at `from` to `to`.
pub fn object_move(ctx: &Context, from: &str, to: &str) -> Result<()> {
    let a = cstring("tiledb_object_move", from)?;
    let b = cstring("tiledb_object_move", to)?;
    // SAFETY: valid URIs.
    ctx.call("tiledb_object_move", |c| unsafe {
        ffi::tiledb_object_move(c, a.as_ptr(), b.as_ptr())
    })
    .map_err(|e| Error::new(e.op, format!("{from} -> {to}: {}", e.message)))
}
