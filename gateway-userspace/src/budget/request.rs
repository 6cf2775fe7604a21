//! What a JSON request body says, read as it streams upstream: the `model` asked for, and the
//! tools an MCP client calls (JSON-RPC `tools/call`, single or batched).

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde_json::Value;

use super::usage::MAX_JSON_COPY;
use crate::request::RequestObserver;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: Option<String>,
    pub tools: Vec<String>,
}

impl RequestFacts {
    pub fn absorb(&mut self, v: &Value) {
        match v {
            Value::Array(batch) => batch.iter().for_each(|m| self.absorb(m)),
            Value::Object(obj) => {
                if self.model.is_none()
                    && let Some(m) = obj.get("model").and_then(Value::as_str)
                {
                    self.model = Some(m.to_owned());
                }
                let is_call = obj.get("method").and_then(Value::as_str) == Some("tools/call");
                let name = obj.get("params").and_then(|p| p.get("name")).and_then(Value::as_str);
                // An empty name names no tool (as in the response's tool calls).
                if let (true, Some(name)) = (is_call, name.filter(|n| !n.is_empty()))
                    && !self.tools.iter().any(|t| t == name)
                {
                    self.tools.push(name.to_owned());
                }
            }
            _ => {}
        }
    }
}

/// Copies a JSON request body (up to [`MAX_JSON_COPY`]) and parses it once it has been sent.
pub struct RequestUsage {
    copy: Vec<u8>,
    too_large: bool,
    facts: Arc<Mutex<RequestFacts>>,
}

impl RequestUsage {
    pub fn new(facts: Arc<Mutex<RequestFacts>>) -> Self {
        RequestUsage { copy: Vec::new(), too_large: false, facts }
    }
}

impl RequestObserver for RequestUsage {
    fn on_data(&mut self, data: &Bytes) {
        if self.too_large {
            return;
        }
        if self.copy.len() + data.len() > MAX_JSON_COPY {
            self.too_large = true;
            self.copy = Vec::new();
        } else {
            self.copy.extend_from_slice(data);
        }
    }

    fn on_end(&mut self) {
        if self.too_large {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&self.copy) {
            self.facts.lock().unwrap_or_else(PoisonError::into_inner).absorb(&v);
        }
        self.copy = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_tool_calls_single_and_batched() {
        let mut f = RequestFacts::default();
        f.absorb(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {}}}));
        f.absorb(&serde_json::json!([
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "calculator"}},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "search"}}
        ]));
        assert_eq!(f.tools, ["search", "calculator"]);
    }

    #[test]
    fn empty_tool_names_are_not_tools() {
        let mut f = RequestFacts::default();
        f.absorb(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": ""}}));
        assert!(f.tools.is_empty(), "{:?}", f.tools);
    }

    #[test]
    fn chat_requests_name_their_model() {
        let facts = Arc::new(Mutex::new(RequestFacts::default()));
        let mut o = RequestUsage::new(facts.clone());
        o.on_data(&Bytes::from_static(b"{\"model\": \"llama-3.3-8b-instruct\", \"mess"));
        o.on_data(&Bytes::from_static(b"ages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}"));
        o.on_end();
        assert_eq!(facts.lock().unwrap().model.as_deref(), Some("llama-3.3-8b-instruct"));
    }
}
