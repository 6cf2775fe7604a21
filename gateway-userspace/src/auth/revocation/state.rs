//! The revocation state file: the local denylist, and which of its entries this node has not yet
//! published to the shared store. Written whole on every change (revocations are rare) to a
//! temporary file, synced, then renamed over the old one, so a crash leaves the old or the new
//! list, never half of one. Read once when the list is built (start, or a reload that changed
//! `[auth.revocation]`).

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

const VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a revocation state file: {source}")]
    Format { path: PathBuf, source: serde_json::Error },
}

/// One revoked jti.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub jti: String,
    /// Unix seconds (the token's expiry).
    pub until: u64,
    /// Revoked on this node while the shared store could not take it: still to publish.
    #[serde(default)]
    pub pending: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    revoked: Vec<Entry>,
}

/// The entries in `path`; none when it does not exist yet.
pub fn load(path: &Path) -> Result<Vec<Entry>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StateError::Io { path: path.to_owned(), source }),
    };
    let file: File =
        serde_json::from_slice(&bytes).map_err(|source| StateError::Format { path: path.to_owned(), source })?;
    Ok(file.revoked)
}

/// Replaces `path` with `entries` (creating its directory, mode 0700; the file is 0600).
pub fn save(path: &Path, entries: Vec<Entry>) -> Result<(), StateError> {
    let io = |source| StateError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    }
    let body = serde_json::to_vec(&File { version: VERSION, revoked: entries })
        .map_err(|source| StateError::Format { path: path.to_owned(), source })?;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(&body).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/revocations.json");
        assert_eq!(load(&path).unwrap(), Vec::new(), "no file yet: nothing revoked");
        let entries = vec![
            Entry { jti: "a".into(), until: 10, pending: false },
            Entry { jti: "b".into(), until: 20, pending: true },
        ];
        save(&path, entries.clone()).unwrap();
        assert_eq!(load(&path).unwrap(), entries);
        std::fs::write(&path, b"{\"version\":1,\"revoked\":[{\"jti\":1}]}").unwrap();
        assert!(matches!(load(&path), Err(StateError::Format { .. })));
    }
}
