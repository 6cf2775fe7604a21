//! One capability on the request path is a [`Phase`]; the [`Pipeline`] is their order.

use std::{future::Future, pin::Pin};

use http::{request, response};

use super::RequestCtx;
use crate::error::GatewayError;

/// What a phase decided about a request.
pub enum Step<'a> {
    Continue,
    Refuse(GatewayError),
    /// The phase needs I/O (Redis, an IdP); the future resolves to the decision.
    Wait(Pin<Box<dyn Future<Output = Result<(), GatewayError>> + 'a>>),
}

impl Step<'_> {
    /// Refuses with a feature's error (anything that maps to a response, see `error.rs`).
    pub fn refuse(error: impl Into<GatewayError>) -> Self {
        Step::Refuse(error.into())
    }
}

/// One capability on the request path. All hooks have do-nothing defaults.
pub trait Phase: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Before routing, for refusals that do not depend on the route (the connection itself is
    /// refused): the client learns nothing about routes first.
    fn before_route(&self, _ctx: &mut RequestCtx) -> Result<(), GatewayError> {
        Ok(())
    }

    /// After routing, before the request is forwarded. Phases run in pipeline order and the
    /// first refusal wins.
    fn on_request<'a>(&'a self, _ctx: &'a mut RequestCtx, _head: &'a mut request::Parts) -> Step<'a> {
        Step::Continue
    }

    /// On the response head (proxied or refusal) before it is sent to the client.
    fn on_response(&self, _ctx: &mut RequestCtx, _head: &mut response::Parts) {}

    /// Once the response is finished, or the client went away. Must not block.
    fn on_log(&self, _ctx: &RequestCtx) {}
}

/// The ordered phases of a snapshot.
pub struct Pipeline {
    phases: Vec<Box<dyn Phase>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.phases.iter().map(|p| p.name())).finish()
    }
}

impl Pipeline {
    pub fn new(phases: Vec<Box<dyn Phase>>) -> Self {
        Pipeline { phases }
    }

    pub fn phases(&self) -> &[Box<dyn Phase>] {
        &self.phases
    }
}
