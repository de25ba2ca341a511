//! POSIX attributes that tools set (`chmod`, `chown`, `utimensat`), kept in
//! the metadata of a file array or a directory's group, one key each, so
//! setting one is a small metadata write and never a new data version.
//!
//! Keys (all UINT64, additive to format version 1):
//! - `modelfs.mode`: permission bits (`0o7777`), absent = the default;
//! - `modelfs.uid`, `modelfs.gid`: owner, absent = the mounting user;
//! - `modelfs.mtime_ns`, `modelfs.atime_ns`: times set by a tool, in ns
//!   since the epoch; a file's commit deletes both unless its writer set
//!   them, so a new version's mtime is its commit time;
//! - `modelfs.ctime_ns`: when an attribute last changed (ctime is the later
//!   of it and the data's commit time).
//!
//! The latest metadata write of a key wins, so each write of these keys is
//! stamped later than every version of the file ([`Attrs::written_ms`]).

use crate::tiledb::MetaValue;

pub const KEY_MODE: &str = "modelfs.mode";
pub const KEY_UID: &str = "modelfs.uid";
pub const KEY_GID: &str = "modelfs.gid";
pub const KEY_MTIME_NS: &str = "modelfs.mtime_ns";
pub const KEY_ATIME_NS: &str = "modelfs.atime_ns";
pub const KEY_CTIME_NS: &str = "modelfs.ctime_ns";

/// Permission bits a mode may hold (with setuid, setgid and sticky).
pub const MODE_BITS: u32 = 0o7777;

/// The stored attributes of one file or directory; `None` where nothing
/// was stored (the mount's default applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime_ns: Option<u64>,
    pub atime_ns: Option<u64>,
    pub ctime_ns: Option<u64>,
}

impl Attrs {
    /// Reads the keys above from a metadata list; values of the wrong type
    /// are ignored (the default shows).
    pub fn parse(meta: &[(String, MetaValue)]) -> Self {
        let get = |k: &str| meta.iter().find(|(key, _)| key == k).and_then(|(_, v)| v.as_u64());
        let id = |k: &str| get(k).and_then(|v| u32::try_from(v).ok());
        Attrs {
            mode: get(KEY_MODE).map(|m| m as u32 & MODE_BITS),
            uid: id(KEY_UID),
            gid: id(KEY_GID),
            mtime_ns: get(KEY_MTIME_NS),
            atime_ns: get(KEY_ATIME_NS),
            ctime_ns: get(KEY_CTIME_NS),
        }
    }

    /// `self` with every value `change` sets replaced.
    pub fn with(mut self, change: &Attrs) -> Self {
        self.mode = change.mode.or(self.mode);
        self.uid = change.uid.or(self.uid);
        self.gid = change.gid.or(self.gid);
        self.mtime_ns = change.mtime_ns.or(self.mtime_ns);
        self.atime_ns = change.atime_ns.or(self.atime_ns);
        self.ctime_ns = change.ctime_ns.or(self.ctime_ns);
        self
    }

    pub fn is_empty(&self) -> bool {
        *self == Attrs::default()
    }

    /// The keys and values `self` sets, to stage on an open array or group.
    pub fn entries(&self) -> Vec<(&'static str, MetaValue)> {
        [
            (KEY_MODE, self.mode.map(u64::from)),
            (KEY_UID, self.uid.map(u64::from)),
            (KEY_GID, self.gid.map(u64::from)),
            (KEY_MTIME_NS, self.mtime_ns),
            (KEY_ATIME_NS, self.atime_ns),
            (KEY_CTIME_NS, self.ctime_ns),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, MetaValue::u64(v))))
        .collect()
    }

    /// The millisecond of the latest attribute write, from its ctime: a new
    /// version of the file is stamped after it.
    pub fn written_ms(&self) -> u64 {
        self.ctime_ns.map_or(0, |ns| ns / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_back_to_the_same_attrs() {
        let a = Attrs {
            mode: Some(0o4755),
            uid: Some(1000),
            gid: None,
            mtime_ns: Some(1_700_000_000_123_456_789),
            atime_ns: Some(5),
            ctime_ns: Some(1_700_000_001_000_000_000),
        };
        let meta: Vec<(String, MetaValue)> = a.entries().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(Attrs::parse(&meta), a);
        assert_eq!(a.written_ms(), 1_700_000_001_000);
    }

    #[test]
    fn with_overrides_only_what_is_set() {
        let base = Attrs {
            mode: Some(0o644),
            uid: Some(1),
            ..Attrs::default()
        };
        let changed = base.with(&Attrs {
            mode: Some(0o600),
            ..Attrs::default()
        });
        assert_eq!(changed.mode, Some(0o600));
        assert_eq!(changed.uid, Some(1));
    }

    #[test]
    fn wrong_types_and_huge_ids_are_ignored() {
        let meta = vec![
            (KEY_MODE.to_string(), MetaValue::text("0755")),
            (KEY_UID.to_string(), MetaValue::u64(u64::MAX)),
        ];
        assert_eq!(Attrs::parse(&meta), Attrs::default());
    }
}
