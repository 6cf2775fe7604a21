//! Observers that phases attach to the bodies of a request.

use bytes::Bytes;

use super::RequestCtx;

/// Something that watches a body go by without holding it (e.g. token accounting).
pub trait BodyObserver {
    fn on_data(&mut self, data: &Bytes);
    /// Called once when the body ended cleanly, before the log phases run.
    fn on_end(&mut self, ctx: &mut RequestCtx);
    /// Called once instead of `on_end` when the body did not end cleanly (client gone, upstream
    /// failed), before the log phases run: what was seen so far may still count.
    fn on_abort(&mut self, _ctx: &mut RequestCtx) {}
}

/// Something that watches the request body go upstream (e.g. MCP tool calls). It runs where
/// the body is polled (the upstream connection's task), so it cannot reach the request context:
/// share state with a phase through the observer itself.
pub trait RequestObserver {
    fn on_data(&mut self, data: &Bytes);
    /// Called once when the whole body was read.
    fn on_end(&mut self);
}
