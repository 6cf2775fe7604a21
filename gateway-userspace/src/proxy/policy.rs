//! What a route does with bodies: how long a client may pause while sending one, and what the
//! gateway holds so that a slow client never holds an upstream connection (nginx's
//! `client_body_timeout`, `proxy_request_buffering` and `proxy_buffering`).

use std::{path::PathBuf, sync::Arc, time::Duration};

/// A route's body handling, resolved from `[server.limits]`, `[server.buffering]` and the
/// route's overrides.
#[derive(Debug, Clone)]
pub struct BodyPolicy {
    /// Longest pause between two reads of the request body; past it: 408.
    pub client_body_timeout: Duration,
    /// Request bodies up to this many bytes are read completely before an upstream connection
    /// is taken; larger ones stream. 0: every body streams.
    pub request_buffer: u64,
    /// Read the response into memory, then a temp file, releasing the upstream early.
    pub response_buffer: Option<Arc<SpoolSpec>>,
}

impl Default for BodyPolicy {
    fn default() -> Self {
        BodyPolicy { client_body_timeout: Duration::from_secs(60), request_buffer: 0, response_buffer: None }
    }
}

/// How a buffered response is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSpec {
    /// Bytes held in memory before the temp file is used.
    pub memory: u64,
    /// Most bytes in the temp file at once; past it the upstream is read only as fast as the
    /// client reads. 0: no temp file.
    pub max_file: u64,
    /// Where temp files are created (and unlinked at once).
    pub dir: PathBuf,
}
