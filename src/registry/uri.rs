//! Registry URIs: local paths made absolute, any other TileDB URI kept as
//! given, and the joins and parents the tree walks need. Nothing here
//! touches storage.

/// Turns what a user typed into a URI TileDB accepts everywhere: a URI with
/// a scheme is kept (trailing `/` dropped); a local path is made absolute
/// against the current directory (without resolving symlinks or requiring
/// it to exist), so a daemon that changes directory still finds it.
pub fn normalize(input: &str) -> String {
    let trimmed = trim_trailing_slashes(input);
    if has_scheme(trimmed) {
        return trimmed.to_string();
    }
    let path = std::path::Path::new(trimmed);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut parts: Vec<String> = Vec::new();
    for c in abs.components() {
        use std::path::Component::*;
        match c {
            Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            ParentDir => {
                parts.pop();
            }
            CurDir | RootDir | Prefix(_) => {}
        }
    }
    format!("/{}", parts.join("/"))
}

fn has_scheme(s: &str) -> bool {
    s.find("://")
        .is_some_and(|i| i > 0 && s[..i].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+'))
}

fn trim_trailing_slashes(s: &str) -> &str {
    let t = s.trim_end_matches('/');
    if t.is_empty() || t.ends_with(':') { s } else { t }
}

/// `base/name`.
pub fn join(base: &str, name: &str) -> String {
    format!("{}/{name}", base.trim_end_matches('/'))
}

/// The parent of `uri` and the last component, or `None` at a root (`/`,
/// `s3://bucket`).
pub fn split_parent(uri: &str) -> Option<(String, String)> {
    let t = uri.trim_end_matches('/');
    let prefix_len = t.find("://").map_or(0, |i| i + 3);
    let (prefix, rest) = t.split_at(prefix_len);
    let slash = rest.rfind('/')?;
    let name = &rest[slash + 1..];
    let parent = &rest[..slash];
    if name.is_empty() {
        return None;
    }
    let parent = match (prefix, parent) {
        ("", "") => "/".to_string(),
        ("file://", "") => "file:///".to_string(),
        // `s3://bucket` itself: the bucket has no parent directory.
        (_, "") => return None,
        _ => format!("{prefix}{parent}"),
    };
    Some((parent, name.to_string()))
}

/// Whether `uri` is on the local filesystem.
pub fn is_local(uri: &str) -> bool {
    !has_scheme(uri) || uri.starts_with("file://")
}

/// `uri` in one spelling for comparisons: local paths without the
/// `file://` scheme, no trailing `/`.
pub fn canonical(uri: &str) -> &str {
    uri.strip_prefix("file://").unwrap_or(uri).trim_end_matches('/')
}

/// Whether `a` and `b` name the same storage.
pub fn same(a: &str, b: &str) -> bool {
    canonical(a) == canonical(b)
}

/// Whether `uri` lies strictly inside `root` (no `.` or `..` component
/// may lead it out).
pub fn is_inside(uri: &str, root: &str) -> bool {
    let (uri, root) = (canonical(uri), canonical(root));
    let Some(rest) = uri.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    !rest.is_empty() && rest.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Where `uri` is once what is at `from` moved to `to`: `to` itself, or
/// the same place under it; `None` when `uri` is not `from` nor inside it.
pub fn rebase(uri: &str, from: &str, to: &str) -> Option<String> {
    if same(uri, from) {
        return Some(to.to_string());
    }
    if !is_inside(uri, from) {
        return None;
    }
    let rest = &canonical(uri)[canonical(from).len()..];
    Some(format!("{}{rest}", to.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_and_same() {
        assert!(is_inside("file:///r/reg/a/b", "/r/reg"));
        assert!(is_inside("s3://b/reg/x", "s3://b/reg/"));
        assert!(!is_inside("/r/reg", "/r/reg"));
        assert!(!is_inside("/r/registry2/x", "/r/reg"));
        assert!(!is_inside("/r/reg/../other", "/r/reg"));
        assert!(!is_inside("/elsewhere/x", "/r/reg"));
        assert!(same("file:///a/b/", "/a/b"));
        assert!(!same("/a/b", "/a/c"));
    }

    #[test]
    fn rebases() {
        assert_eq!(rebase("/r/a", "file:///r/a", "/r/b").as_deref(), Some("/r/b"));
        assert_eq!(rebase("file:///r/a/x/y", "/r/a", "/r/b/").as_deref(), Some("/r/b/x/y"));
        assert_eq!(rebase("/r/ab", "/r/a", "/r/b"), None);
        assert_eq!(rebase("/r/c", "/r/a", "/r/b"), None);
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize("s3://b/reg/"), "s3://b/reg");
        assert_eq!(normalize("/a/b/../c/"), "/a/c");
        assert!(normalize("rel/x").starts_with('/'));
        assert!(normalize("rel/x").ends_with("/rel/x"));
        assert_eq!(normalize("/"), "/");
    }

    #[test]
    fn parents() {
        assert_eq!(split_parent("/a/b"), Some(("/a".into(), "b".into())));
        assert_eq!(split_parent("/a"), Some(("/".into(), "a".into())));
        assert_eq!(split_parent("/"), None);
        assert_eq!(
            split_parent("s3://bucket/reg/m"),
            Some(("s3://bucket/reg".into(), "m".into()))
        );
        assert_eq!(
            split_parent("s3://bucket/reg"),
            Some(("s3://bucket".into(), "reg".into()))
        );
        assert_eq!(split_parent("s3://bucket"), None);
        assert_eq!(split_parent("file:///x/y"), Some(("file:///x".into(), "y".into())));
    }

    #[test]
    fn joins() {
        assert_eq!(join("s3://b/r/", "x"), "s3://b/r/x");
        assert_eq!(join("/", "x"), "/x");
    }
}
