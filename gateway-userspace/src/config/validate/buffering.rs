//! Validation of `[server.buffering]`, `server.limits.client_body_timeout` and the routes' body
//! overrides, resolved into each route's [`BodyPolicy`].

use std::{path::PathBuf, sync::Arc, time::Duration};

use super::{Validator, root};
use crate::{
    config::schema::{FileConfig, RouteSection},
    proxy::{BodyPolicy, SpoolSpec},
};

/// Largest `request_buffer_size` / `response_buffer_size`: memory per request adds up.
const MAX_BUFFER: u64 = 64 << 20;
/// Smallest `response_buffer_size`: one read from the upstream must fit.
const MIN_RESPONSE_BUFFER: u64 = 4 << 10;

/// The server-wide body settings routes start from.
pub(super) struct BodyDefaults {
    request_buffering: bool,
    response_buffering: bool,
    policy: BodyPolicy,
    spool: Arc<SpoolSpec>,
    temp_dir_set: bool,
}

impl Validator<'_> {
    pub(super) fn body_defaults(&mut self, f: &FileConfig) -> BodyDefaults {
        let b = &f.server.buffering;
        let at = || root("server").key("buffering");
        let timeout = f.server.limits.client_body_timeout;
        if timeout.is_zero() {
            self.problem(root("server").key("limits").key("client_body_timeout"), "must be greater than zero");
        }
        if b.request_buffer_size.0 > MAX_BUFFER {
            self.problem(at().key("request_buffer_size"), "must be at most 64MiB");
        }
        if b.response_buffer_size.0 < MIN_RESPONSE_BUFFER || b.response_buffer_size.0 > MAX_BUFFER {
            self.problem(at().key("response_buffer_size"), "must be between 4KiB and 64MiB");
        }
        let dir = b.temp_dir.as_ref().map_or_else(std::env::temp_dir, PathBuf::from);
        let spool = Arc::new(SpoolSpec { memory: b.response_buffer_size.0, max_file: b.max_temp_file_size.0, dir });
        BodyDefaults {
            request_buffering: b.request_buffering,
            response_buffering: b.response_buffering,
            policy: BodyPolicy {
                client_body_timeout: timeout,
                request_buffer: b.request_buffer_size.0,
                response_buffer: None,
            },
            spool,
            temp_dir_set: b.temp_dir.is_some(),
        }
    }

    pub(super) fn route_body(&mut self, r: &RouteSection, i: usize, d: &BodyDefaults) -> BodyPolicy {
        let timeout = r.client_body_timeout.unwrap_or(d.policy.client_body_timeout);
        if r.client_body_timeout.is_some_and(|t| t == Duration::ZERO) {
            self.problem(root("routes").index(i).key("client_body_timeout"), "must be greater than zero");
        }
        BodyPolicy {
            client_body_timeout: timeout,
            request_buffer: if r.request_buffering.unwrap_or(d.request_buffering) {
                d.policy.request_buffer
            } else {
                0
            },
            response_buffer: r.response_buffering.unwrap_or(d.response_buffering).then(|| d.spool.clone()),
        }
    }

    /// The temp directory must be usable when some route may spool to it: a temp file is
    /// created (and vanishes) here, so a reload cannot bring a directory that fails later.
    pub(super) fn check_temp_dir(&mut self, d: &BodyDefaults, policies: impl Iterator<Item = bool>) {
        let used = d.spool.max_file > 0 && (d.response_buffering || policies.into_iter().any(|on| on));
        if !used {
            return;
        }
        if let Err(e) = tempfile::tempfile_in(&d.spool.dir) {
            let at = if d.temp_dir_set { root("server").key("buffering").key("temp_dir") } else { root("server") };
            self.problem(at, format!("cannot create temp files in {}: {e}", d.spool.dir.display()));
        }
    }
}
