//! `admin.mcp_listen`: the address `gatewayd mcp --http` serves MCP on.

use std::net::SocketAddr;

use super::{Validator, root};
use crate::config::{ListenerSpec, schema::AdminSection};

impl Validator<'_> {
    pub(super) fn mcp_listen(&mut self, admin: &AdminSection, listeners: &[ListenerSpec]) -> Option<SocketAddr> {
        let raw = admin.mcp_listen.as_deref()?;
        let addr = self.socket_addr(root("admin").key("mcp_listen"), raw)?;
        // Agents' tools belong on the admin side: never share the proxy's address.
        if listeners.iter().any(|l| l.addr == addr) {
            self.problem(root("admin").key("mcp_listen"), format!("{addr} is also a listener address"));
        }
        Some(addr)
    }
}
