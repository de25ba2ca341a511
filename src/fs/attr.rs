//! The core's own file attributes and identifiers; the FUSE adapter turns
//! them into fuser's types.

use std::time::SystemTime;

/// An inode number. 1 is the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    pub const ROOT: Ino = Ino(1);
    /// The root's hidden counters file.
    pub const STATS: Ino = Ino(2);
    pub const FIRST_FREE: u64 = 3;
}

/// An open file or directory handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// What `stat` shows for an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    /// The last change of the bytes or of an attribute.
    pub ctime: SystemTime,
    /// Permission bits (no file type).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Open for writing: size and times change until the commit, so the
    /// kernel must not keep these.
    pub changing: bool,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirItem {
    pub ino: Ino,
    pub kind: Kind,
    pub name: String,
    /// The offset of the entry after this one.
    pub next_offset: u64,
}

/// Appends an entry to a listing, numbering it after those before it.
pub fn push_dir_item(items: &mut Vec<DirItem>, ino: Ino, kind: Kind, name: String) {
    let next_offset = items.len() as u64 + 1;
    items.push(DirItem {
        ino,
        kind,
        name,
        next_offset,
    });
}

/// What an open returned.
#[derive(Debug, Clone)]
pub struct Opened {
    pub fh: Fh,
    /// The file is unchanged since it was last cached: keep the page cache.
    pub keep_cache: bool,
    /// Bypass the page cache: generated files whose size is not known, and
    /// opens of a file another handle reads an older version of.
    pub direct_io: bool,
    /// A local file holding exactly the version opened, which the kernel
    /// may read itself (FUSE passthrough); reads through the handle serve
    /// the same bytes when it does not.
    pub passthrough: Option<Backing>,
}

/// A local file holding one version's bytes, for passthrough.
#[derive(Debug, Clone)]
pub struct Backing {
    pub file: std::sync::Arc<std::fs::File>,
    /// Tells versions apart within the mount: every passthrough open of an
    /// inode at the same time must share one backing file.
    pub version: u64,
}

/// How `create` opens a name another process made meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreateFlags {
    /// `O_EXCL`: EEXIST.
    pub exclusive: bool,
    /// `O_TRUNC`: truncated; otherwise opened as it is.
    pub truncate: bool,
}

/// What `statfs` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Size, free and available space, in `block_size` units.
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub block_size: u32,
    pub name_max: u32,
}
