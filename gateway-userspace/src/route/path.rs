//! Request paths: normalization before routing (so `/a/../admin` cannot dodge a route) and
//! segment-aware prefix matching (`/pay` does not match `/payments`).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    #[error("request path must start with '/'")]
    NotAbsolute,
    #[error("request path contains an encoded dot segment or slash")]
    EncodedSeparator,
    #[error("request path contains a NUL or control byte")]
    ControlByte,
}

/// Removes `.` and `..` segments (RFC 3986 5.2.4) and refuses paths that hide them behind
/// percent-encoding. Returns `None` when the path is already normal (the common case, no copy).
pub fn normalize_path(path: &str) -> Result<Option<String>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(PathError::ControlByte);
    }
    // Each check below needs a byte most paths do not have (`%`, `.`): one byte search each
    // first, where the three window scans and the segment split ran on every request.
    let lower_has = |needle: &str| path.as_bytes().windows(3).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()));
    if path.as_bytes().contains(&b'%') && (lower_has("%2e") || lower_has("%2f") || lower_has("%5c")) {
        return Err(PathError::EncodedSeparator);
    }
    let needs_work = path.as_bytes().contains(&b'.') && path.split('/').any(|seg| seg == "." || seg == "..");
    if !needs_work {
        return Ok(None);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Ok(Some(format!("/{}", out.join("/"))))
}

/// True when `prefix` matches `path` on a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_not_copied() {
        assert_eq!(normalize_path("/a/b/c"), Ok(None));
        assert_eq!(normalize_path("/"), Ok(None));
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(normalize_path("/a/../admin").unwrap().as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/a/./b").unwrap().as_deref(), Some("/a/b"));
        assert_eq!(normalize_path("/../../etc").unwrap().as_deref(), Some("/etc"));
        assert_eq!(normalize_path("/a/b/..").unwrap().as_deref(), Some("/a/"));
    }

    #[test]
    fn hidden_separators_are_refused() {
        assert_eq!(normalize_path("/a/%2e%2E/admin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("relative"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("/a\0b"), Err(PathError::ControlByte));
    }

    #[test]
    fn prefixes_match_on_segments() {
        assert!(prefix_matches("/pay", "/pay"));
        assert!(prefix_matches("/pay", "/pay/x"));
        assert!(!prefix_matches("/pay", "/payments"));
        assert!(prefix_matches("/pay/", "/pay/x"));
        assert!(prefix_matches("/", "/anything"));
    }
}
