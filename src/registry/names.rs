//! Entry names and the storage names they are kept under.
//!
//! A group member carries the entry's real name; the array or group itself
//! lives at `<parent>/<storage name>`. The storage name is the entry name
//! when that is safe on every TileDB backend, and an escaped form otherwise,
//! so no entry can collide with TileDB's own `__*` files or need quoting in
//! an object-store key.

/// Bytes an entry name may have at most (the common `NAME_MAX`).
pub const NAME_MAX_BYTES: usize = 255;

/// Why `name` cannot name a file or directory, or `None` when it can.
pub fn invalid_name_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if name.len() > NAME_MAX_BYTES {
        Some("longer than 255 bytes")
    } else {
        None
    }
}

/// Names TileDB gives its own files and folders inside an array or group
/// folder (and, before format 12, fragment folders `__<time>_...`).
const TILEDB_RESERVED: [&str; 12] = [
    "__schema",
    "__group",
    "__meta",
    "__fragments",
    "__commits",
    "__fragment_meta",
    "__labels",
    "__enumerations",
    "__tiledb_group.tdb",
    "__array_schema.tdb",
    "__lock.tdb",
    "__consolidated_fragment_meta",
];

/// Whether TileDB could take `name`, stored as is, for one of its own
/// files: a folder holding it could then read as an array or a group.
pub fn is_tiledb_reserved(name: &str) -> bool {
    TILEDB_RESERVED.contains(&name)
        || name
            .strip_prefix("__")
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'=' | b',')
}

/// Longest storage name kept whole: escaping can make a name three times
/// longer, and local file systems take 255 bytes a component. Longer ones
/// are cut and end in a hash of the whole name (the group member keeps the
/// real name; a clash takes the next `~N`).
pub const STORAGE_NAME_MAX_BYTES: usize = 200;

/// The storage name for entry `name`: bytes outside `[A-Za-z0-9._+=,-]`, a
/// leading `_` or `.` and every `~` become `~XX` (hex); at most
/// [`STORAGE_NAME_MAX_BYTES`].
pub fn storage_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, &b) in name.as_bytes().iter().enumerate() {
        let leading = i == 0 && (b == b'_' || b == b'.');
        if is_plain(b) && !leading {
            out.push(b as char);
        } else if b == b'_' && !leading {
            out.push('_');
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    if out.len() > STORAGE_NAME_MAX_BYTES {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        let tail = format!("~h{:016x}", h.finish());
        // `out` is ASCII: any byte is a character boundary.
        out.truncate(STORAGE_NAME_MAX_BYTES - tail.len());
        out.push_str(&tail);
    }
    out
}

/// The last path component of a URI (`file:///a/b/` -> `b`).
pub fn last_component(uri: &str) -> &str {
    uri.trim_end_matches('/').rsplit('/').next().unwrap_or(uri)
}

/// `name` split into the filestore's `original_file_name` and
/// `file_extension` (without the dot; empty when there is none).
pub fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_are_kept() {
        assert_eq!(storage_name("model.safetensors"), "model.safetensors");
        assert_eq!(storage_name("config_v2.json"), "config_v2.json");
    }

    #[test]
    fn risky_names_are_escaped() {
        assert_eq!(storage_name("__meta"), "~5F_meta");
        assert_eq!(storage_name(".hidden"), "~2Ehidden");
        assert_eq!(storage_name("a b~"), "a~20b~7E");
        assert_eq!(storage_name("é"), "~C3~A9");
    }

    #[test]
    fn invalid_names() {
        for n in ["", ".", "..", "a/b", "a\0b"] {
            assert!(invalid_name_reason(n).is_some(), "{n:?}");
        }
        assert!(invalid_name_reason(&"x".repeat(256)).is_some());
        assert!(invalid_name_reason("ok name").is_none());
    }

    #[test]
    fn extension_split() {
        assert_eq!(split_extension("model.safetensors"), ("model", "safetensors"));
        assert_eq!(split_extension("a.tar.gz"), ("a.tar", "gz"));
        assert_eq!(split_extension("README"), ("README", ""));
        assert_eq!(split_extension(".bashrc"), (".bashrc", ""));
    }

    #[test]
    fn long_escaped_names_are_cut_with_a_hash() {
        let long = "é".repeat(120);
        let a = storage_name(&long);
        assert_eq!(a.len(), STORAGE_NAME_MAX_BYTES);
        assert_ne!(a, storage_name(&"é".repeat(121)));
        assert_eq!(a, storage_name(&long));
    }

    proptest! {
        #[test]
        fn storage_names_are_safe_and_distinct(a in "\\PC{1,20}", b in "\\PC{1,20}") {
            let sa = storage_name(&a);
            prop_assert!(sa.bytes().all(|c| is_plain(c) || c == b'~' || c == b'_'));
            prop_assert!(!sa.starts_with('_') && !sa.starts_with('.'));
            if a != b {
                prop_assert_ne!(sa, storage_name(&b));
            }
        }
    }
}
