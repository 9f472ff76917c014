//! Key paths.

/// Cleans a key as etcd does (`path.Clean(path.Join("/", key))`): always absolute, no
/// empty, `.` or `..` segments, no trailing slash.
pub fn clean(key: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in key.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = String::with_capacity(key.len() + 1);
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The segments of a cleaned path (none for the root).
pub fn segments(clean_path: &str) -> impl Iterator<Item = &str> {
    clean_path.split('/').filter(|s| !s.is_empty())
}

/// Joins a cleaned parent path and a child name.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Hidden keys (last segment starts with `_`) are left out of listings.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_go_path_clean() {
        assert_eq!(clean(""), "/");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean("a//b/"), "/a/b");
        assert_eq!(clean("/a/./b/../c"), "/a/c");
        assert_eq!(clean("/../.."), "/");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a", "x"), "/a/x");
    }
}
