//! Validated rate-limit layers (`[[rate_limits]]`), as the config hands them over.

use std::{collections::HashMap, sync::Arc};

use crate::limits::{Backend, Key, KeySource};

/// The window lengths a limit can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    Second,
    Minute,
    Hour,
    Day,
}

impl Window {
    pub const ALL: [Window; 4] = [Window::Second, Window::Minute, Window::Hour, Window::Day];

    pub fn parse(s: &str) -> Option<Window> {
        Some(match s {
            "second" => Window::Second,
            "minute" => Window::Minute,
            "hour" => Window::Hour,
            "day" => Window::Day,
            _ => return None,
        })
    }

    pub fn seconds(self) -> u64 {
        match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3600,
            Window::Day => 86_400,
        }
    }

    pub fn millis(self) -> u64 {
        self.seconds() * 1000
    }

    /// `second`, `minute`, … (messages).
    pub fn noun(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.noun())
    }
}

/// One layer: a key, a limit per window, a backend. Layers run in file order; the first
/// refusal wins.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// Unique among limits and budgets: the `layer` label, the policy name in `RateLimit` headers.
    pub name: Arc<str>,
    /// Route indices it applies to; `None` means every route.
    pub routes: Option<Vec<usize>>,
    /// Sources tried in order; a request with none of them skips the layer.
    pub key: Vec<KeySource>,
    pub ipv6_prefix: u8,
    pub limit: u64,
    pub window: Window,
    pub backend: Backend,
    /// Limits for particular key values (a partner's consumer name, a workspace id, an address).
    pub overrides: HashMap<String, u64>,
}

impl LayerSpec {
    pub fn applies_to(&self, route: usize) -> bool {
        self.routes.as_ref().is_none_or(|r| r.contains(&route))
    }

    /// The limit for `key`: its override, else the layer's.
    pub fn limit_for(&self, key: &Key<'_>) -> u64 {
        key.override_in(&self.overrides).unwrap_or(self.limit)
    }
}
