//! Groups: creating them, listing their members, adding and removing members.

use std::ptr;

use super::context::{Config, Context, cstring};
use super::error::{Error, Result};
use super::ffi;
use super::metadata::{self, MetaValue};
use super::object::ObjectType;
use super::vfs::Vfs;

/// The file that marks a folder as a group, and the group's own folders.
const GROUP_MARKER: &str = "__tiledb_group.tdb";
const GROUP_DIRS: [&str; 2] = ["__group", "__meta"];

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's name, when it was added with one.
    pub name: Option<String>,
    /// Its absolute URI.
    pub uri: String,
    pub object_type: ObjectType,
}

/// How a group is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupMode {
    Read,
    Write,
    /// Needed to delete members' data with the group.
    ModifyExclusive,
}

/// What a file under a group's folder is to the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupFile {
    /// The file that makes the folder a group.
    Marker,
    /// One of its member lists or metadata files: TileDB reads a group's
    /// members and metadata from these alone, and never changes one (a
    /// change adds a file).
    State,
    /// Anything else (its members' files, other tools' folders).
    Other,
}

/// An open TileDB group.
pub struct Group {
    ctx: Context,
    raw: *mut ffi::tiledb_group_t,
    uri: String,
}

// SAFETY: the handle is owned and used through `&self`/`&mut self` by one
// thread at a time; it may move between threads. Not `Sync`: TileDB treats
// group mutation as single-threaded.
unsafe impl Send for Group {}

impl Group {
    /// Creates an empty group at `uri`; fails if something is there.
    pub fn create(ctx: &Context, uri: &str) -> Result<()> {
        let c_uri = cstring("tiledb_group_create", uri)?;
        // SAFETY: valid URI.
        ctx.call("tiledb_group_create", |c| unsafe {
            ffi::tiledb_group_create(c, c_uri.as_ptr())
        })
        .map_err(|e| Error::new(e.op, format!("{uri}: {}", e.message)))
    }

    /// Merges the metadata writes of the group at `uri` into one file, so
    /// an open reads one file instead of one per write (the merged ones
    /// stay until vacuumed). Safe beside readers: it only adds a file.
    pub fn consolidate_metadata(ctx: &Context, uri: &str) -> Result<()> {
        let c_uri = cstring("tiledb_group_consolidate_metadata", uri)?;
        super::error::retry_vanished(|| {
            // SAFETY: valid URI; a null config means the context's.
            ctx.call("tiledb_group_consolidate_metadata", |c| unsafe {
                ffi::tiledb_group_consolidate_metadata(c, c_uri.as_ptr(), std::ptr::null_mut())
            })
            .map_err(|e| Error::new(e.op, format!("{uri}: {}", e.message)))
        })
    }

    /// Removes the group's own files at `uri` (its member list, metadata and
    /// marker), leaving whatever else is stored in its folder, which is
    /// removed only when nothing else is there. Afterwards `uri` is no
    /// longer a group. Returns whether the folder itself went.
    pub fn remove_own_files(ctx: &Context, uri: &str) -> Result<bool> {
        let vfs = Vfs::new(ctx)?;
        let base = uri.trim_end_matches('/');
        // The marker first: from then on the folder is not a group, so a
        // crash part-way leaves a plain folder, never a broken group.
        let marker = format!("{base}/{GROUP_MARKER}");
        if vfs.is_file(&marker)? {
            vfs.remove_file(&marker)?;
        }
        for dir in GROUP_DIRS {
            let d = format!("{base}/{dir}");
            if vfs.is_dir(&d)? {
                vfs.remove_dir(&d)?;
            }
        }
        if vfs.ls(base)?.is_empty() {
            vfs.remove_dir(base)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether `uri` is one of a group's own files (not something stored
    /// in its folder).
    pub fn is_own_file(uri: &str) -> bool {
        let name = uri.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        name == GROUP_MARKER || GROUP_DIRS.contains(&name)
    }

    /// What a file under a group's folder is to the group, by its path
    /// relative to that folder.
    pub fn file_kind(relative: &str) -> GroupFile {
        if relative == GROUP_MARKER {
            return GroupFile::Marker;
        }
        match relative.split_once('/') {
            Some((dir, file)) if GROUP_DIRS.contains(&dir) && !file.is_empty() && !file.contains('/') => {
                GroupFile::State
            }
            _ => GroupFile::Other,
        }
    }

    pub fn open(ctx: &Context, uri: &str, mode: GroupMode) -> Result<Self> {
        Self::open_at(ctx, uri, mode, None)
    }

    /// Opens the group as of `timestamp_end` (ms): reads see the member
    /// lists written up to then, and a write is stamped with it. An open
    /// lists the group's files and then reads them; one deleted in between
    /// (retired by a compaction, merged by a consolidation) makes it fail,
    /// and a new attempt lists again.
    pub fn open_at(ctx: &Context, uri: &str, mode: GroupMode, timestamp_end: Option<u64>) -> Result<Self> {
        super::error::retry_vanished(|| Self::open_at_once(ctx, uri, mode, timestamp_end))
    }

    fn open_at_once(ctx: &Context, uri: &str, mode: GroupMode, timestamp_end: Option<u64>) -> Result<Self> {
        let c_uri = cstring("tiledb_group_alloc", uri)?;
        let mut raw = ptr::null_mut();
        // SAFETY: valid URI and out-pointer.
        ctx.call("tiledb_group_alloc", |c| unsafe {
            ffi::tiledb_group_alloc(c, c_uri.as_ptr(), &mut raw)
        })?;
        let group = Group {
            ctx: ctx.clone(),
            raw,
            uri: uri.to_string(),
        };
        if let Some(t) = timestamp_end {
            let mut config = Config::new()?;
            config.set("sm.group.timestamp_end", &t.to_string())?;
            // SAFETY: live, closed group; TileDB copies the config.
            ctx.call("tiledb_group_set_config", |c| unsafe {
                ffi::tiledb_group_set_config(c, group.raw, config.raw())
            })
            .map_err(|e| group.in_uri(e))?;
        }
        let m = match mode {
            GroupMode::Read => ffi::TILEDB_READ,
            GroupMode::Write => ffi::TILEDB_WRITE,
            GroupMode::ModifyExclusive => ffi::TILEDB_MODIFY_EXCLUSIVE,
        };
        // SAFETY: live, closed group.
        ctx.call("tiledb_group_open", |c| unsafe {
            ffi::tiledb_group_open(c, group.raw, m)
        })
        .map_err(|e| group.in_uri(e))?;
        Ok(group)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Every metadata key and value of group `uri`, sorted by key, from a
    /// fresh open. TileDB reads a group's metadata files when first asked,
    /// after the open listed them: one still being written there (a
    /// consolidation by this process or another, on a local disk) reads
    /// short, and a new attempt lists again.
    pub fn read_metadata(ctx: &Context, uri: &str) -> Result<Vec<(String, MetaValue)>> {
        super::error::retry_vanished(|| Self::open_at_once(ctx, uri, GroupMode::Read, None)?.metadata())
    }

    /// Every metadata key and value (group opened for reading), sorted by key.
    pub fn metadata(&self) -> Result<Vec<(String, MetaValue)>> {
        metadata::GROUP
            .read_all(&self.ctx, self.raw)
            .map_err(|e| self.in_uri(e))
    }

    /// Stages `key = value` (group opened for writing); written at close.
    pub fn put_metadata(&mut self, key: &str, value: &MetaValue) -> Result<()> {
        metadata::GROUP
            .put(&self.ctx, self.raw, key, value)
            .map_err(|e| self.in_uri(e))
    }

    /// Stages the removal of `key` (group opened for writing).
    pub fn delete_metadata(&mut self, key: &str) -> Result<()> {
        metadata::GROUP
            .delete(&self.ctx, self.raw, key)
            .map_err(|e| self.in_uri(e))
    }

    fn in_uri(&self, e: Error) -> Error {
        Error::new(e.op, format!("{}: {}", self.uri, e.message))
    }

    /// Every member (group opened for reading).
    pub fn members(&self) -> Result<Vec<Member>> {
        let mut n = 0u64;
        self.ctx
            // SAFETY: open group.
            .call("tiledb_group_get_member_count", |c| unsafe {
                ffi::tiledb_group_get_member_count(c, self.raw, &mut n)
            })
            .map_err(|e| self.in_uri(e))?;
        let mut out = Vec::new();
        for i in 0..n {
            let mut uri = ptr::null_mut();
            let mut name = ptr::null_mut();
            let mut ty = 0u32;
            self.ctx
                // SAFETY: i < n; both strings are owned by `TdbString` and freed.
                .call("tiledb_group_get_member_by_index_v2", |c| unsafe {
                    ffi::tiledb_group_get_member_by_index_v2(c, self.raw, i, &mut uri, &mut ty, &mut name)
                })
                .map_err(|e| self.in_uri(e))?;
            let uri = TdbString(uri).take();
            let name = if name.is_null() {
                None
            } else {
                Some(TdbString(name).take())
            };
            out.push(Member {
                name,
                uri,
                object_type: ObjectType::from_raw(ty),
            });
        }
        Ok(out)
    }

    /// Adds a member (group opened for writing); persisted at close.
    /// A relative `uri` is resolved against the group's own URI.
    pub fn add_member(&mut self, uri: &str, relative: bool, name: &str, object_type: ObjectType) -> Result<()> {
        let c_uri = cstring("tiledb_group_add_member_with_type", uri)?;
        let c_name = cstring("tiledb_group_add_member_with_type", name)?;
        // SAFETY: open group; strings valid for the call.
        self.ctx
            .call("tiledb_group_add_member_with_type", |c| unsafe {
                ffi::tiledb_group_add_member_with_type(
                    c,
                    self.raw,
                    c_uri.as_ptr(),
                    relative as u8,
                    c_name.as_ptr(),
                    object_type.raw(),
                )
            })
            .map_err(|e| self.in_uri(e))
    }

    /// Removes the member named `name` (the object itself stays); persisted
    /// at close.
    pub fn remove_member(&mut self, name: &str) -> Result<()> {
        let c_name = cstring("tiledb_group_remove_member", name)?;
        // SAFETY: open group; string valid for the call.
        self.ctx
            .call("tiledb_group_remove_member", |c| unsafe {
                ffi::tiledb_group_remove_member(c, self.raw, c_name.as_ptr())
            })
            .map_err(|e| self.in_uri(e))
    }

    /// Closes the group, persisting member changes; reports errors that
    /// dropping would ignore.
    pub fn close(self) -> Result<()> {
        // SAFETY: live group; `Drop` then finds it closed.
        self.ctx
            .call("tiledb_group_close", |c| unsafe {
                ffi::tiledb_group_close(c, self.raw)
            })
            .map_err(|e| self.in_uri(e))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: owned handle; closing a closed group only returns an error
        // status, which is ignored here; freed once.
        unsafe {
            ffi::tiledb_group_close(self.ctx.raw(), self.raw);
            ffi::tiledb_group_free(&mut self.raw);
        }
    }
}

/// An owned `tiledb_string_t`.
struct TdbString(*mut ffi::tiledb_string_t);

impl TdbString {
    fn take(self) -> String {
        let mut data: *const std::ffi::c_char = ptr::null();
        let mut len = 0usize;
        // SAFETY: live string handle; the view is copied before it is freed.
        unsafe {
            if self.0.is_null()
                || ffi::tiledb_string_view(self.0, &mut data, &mut len) != ffi::TILEDB_OK
                || data.is_null()
            {
                return String::new();
            }
            String::from_utf8_lossy(std::slice::from_raw_parts(data as *const u8, len)).into_owned()
        }
    }
}

impl Drop for TdbString {
    fn drop(&mut self) {
        // SAFETY: owned handle (or null), freed once.
        unsafe {
            ffi::tiledb_string_free(&mut self.0);
        }
    }
}
