//! Reading what an AI upstream reports (tokens, model, tool calls) from a response as it streams
//! by, never holding it back:
//!
//! - `application/json` (OpenAI-compatible, Anthropic): a bounded copy (at most
//!   [`MAX_JSON_COPY`]) parsed when the body ends; `usage.total_tokens`, else input + output.
//! - `text/event-stream`: lines are split as they pass and only events that can matter (usage,
//!   tool calls, the first model) are parsed; the usage is the last one seen (OpenAI's final
//!   `include_usage` chunk, Anthropic's `message_delta`). At most one event is held at a time.
//! - An upstream response header (`usage_header`) wins over the body when configured and present.
//!
//! Tool names come from `tool_calls[].function.name` (OpenAI, also streamed deltas),
//! `tool_use` content blocks (Anthropic) and `function_call` output items (Responses API).

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use memchr::memmem;
use serde_json::Value;

use super::request::RequestFacts;
use crate::{
    limits::LimitMetrics,
    request::{BodyObserver, RequestCtx},
};

/// Largest JSON body (request or response) copied for parsing; larger ones are not read.
pub const MAX_JSON_COPY: usize = 1 << 20;
/// Largest single SSE event considered.
const MAX_EVENT: usize = 1 << 20;

/// What the upstream said about the exchange.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    pub model: Option<String>,
    pub tools: Vec<String>,
    pub total: Option<u64>,
    pub input: Option<u64>,
    pub output: Option<u64>,
}

impl Facts {
    pub fn tokens(&self) -> Option<u64> {
        self.total.or_else(|| match (self.input, self.output) {
            (None, None) => None,
            (i, o) => Some(i.unwrap_or(0).saturating_add(o.unwrap_or(0))),
        })
    }

    fn tool(&mut self, name: &str) {
        if !name.is_empty() && !self.tools.iter().any(|t| t == name) {
            self.tools.push(name.to_owned());
        }
    }

    /// Takes what a JSON document (a response, or one streamed event) says.
    pub fn absorb(&mut self, v: &Value) {
        let Some(obj) = v.as_object() else { return };
        if self.model.is_none()
            && let Some(m) = obj.get("model").and_then(Value::as_str)
        {
            self.model = Some(m.to_owned());
        }
        // Wrappers of streamed events: Anthropic's message_start, the Responses API's
        // response.completed.
        for inner in ["message", "response"] {
            if let Some(o) = obj.get(inner).filter(|o| o.is_object()) {
                self.absorb(o);
            }
        }
        if let Some(u) = obj.get("usage").and_then(Value::as_object) {
            let n = |k: &str| u.get(k).and_then(Value::as_u64);
            if let Some(t) = n("total_tokens") {
                self.total = Some(t);
            }
            if let Some(i) = n("prompt_tokens").or_else(|| n("input_tokens")) {
                self.input = Some(i);
            }
            if let Some(o) = n("completion_tokens").or_else(|| n("output_tokens")) {
                self.output = Some(o);
            }
        }
        for choice in array(obj.get("choices")) {
            for part in ["message", "delta"] {
                for call in array(choice.get(part).and_then(|m| m.get("tool_calls"))) {
                    if let Some(name) = call.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                        self.tool(name);
                    }
                }
            }
        }
        let blocks = array(obj.get("content")).chain(obj.get("content_block")).chain(array(obj.get("output")));
        for block in blocks {
            let kind = block.get("type").and_then(Value::as_str);
            if matches!(kind, Some("tool_use" | "function_call"))
                && let Some(name) = block.get("name").and_then(Value::as_str)
            {
                self.tool(name);
            }
        }
    }
}

fn array(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

/// How the body is read.
enum Reader {
    Json {
        copy: Vec<u8>,
        too_large: bool,
    },
    Sse(Sse),
    /// Neither JSON nor SSE: only the header (if any) can say.
    Opaque,
}

/// Reads a response body's usage as it goes by, for one content type: what [`ResponseUsage`]
/// feeds, apart from the request context (public so the fuzz targets drive this same code).
pub struct UsageReader {
    reader: Reader,
    facts: Facts,
}

impl UsageReader {
    /// `content_type` picks the reader: SSE, JSON (`application/json`, `+json`) or none.
    pub fn new(content_type: Option<&[u8]>) -> Self {
        let ct = content_type.map(|c| c.to_ascii_lowercase()).unwrap_or_default();
        let reader = if ct.starts_with(b"text/event-stream") {
            Reader::Sse(Sse::default())
        } else if ct.starts_with(b"application/json") || memmem::find(&ct, b"+json").is_some() {
            Reader::Json { copy: Vec::new(), too_large: false }
        } else {
            Reader::Opaque
        };
        UsageReader { reader, facts: Facts::default() }
    }

    pub fn feed(&mut self, data: &[u8]) {
        match &mut self.reader {
            Reader::Json { copy, too_large } => {
                if !*too_large {
                    if copy.len() + data.len() > MAX_JSON_COPY {
                        *too_large = true;
                        *copy = Vec::new();
                    } else {
                        copy.extend_from_slice(data);
                    }
                }
            }
            Reader::Sse(sse) => sse.feed(data, &mut self.facts),
            Reader::Opaque => {}
        }
    }

    /// The body ended cleanly: reads what is still held (the JSON copy, a last SSE event).
    pub fn end(&mut self) {
        match &mut self.reader {
            Reader::Json { copy, too_large: false } => {
                if let Ok(v) = serde_json::from_slice::<Value>(copy) {
                    self.facts.absorb(&v);
                }
                *copy = Vec::new();
            }
            Reader::Sse(sse) => sse.finish(&mut self.facts),
            _ => {}
        }
    }

    /// What was read so far.
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    fn too_large(&self) -> bool {
        matches!(self.reader, Reader::Json { too_large: true, .. })
    }
}

/// The response observer of a budgeted route.
pub struct ResponseUsage {
    body: UsageReader,
    header_tokens: Option<u64>,
    request: Option<Arc<Mutex<RequestFacts>>>,
    /// For `gateway_token_budget_uncounted_total`; `None` when the status says there is
    /// nothing to count (errors).
    uncounted: Option<(Arc<LimitMetrics>, Arc<str>)>,
}

impl ResponseUsage {
    /// `content_type` picks the reader; `header_tokens` is the configured usage header's value.
    pub fn new(
        content_type: Option<&[u8]>,
        header_tokens: Option<u64>,
        request: Option<Arc<Mutex<RequestFacts>>>,
        uncounted: Option<(Arc<LimitMetrics>, Arc<str>)>,
    ) -> Self {
        ResponseUsage { body: UsageReader::new(content_type), header_tokens, request, uncounted }
    }

    /// Fills `ctx.usage`; counts a response whose tokens stay unknown.
    fn conclude(&mut self, ctx: &mut RequestCtx, complete: bool) {
        let mut facts = std::mem::take(&mut self.body.facts);
        if let Some(req) = &self.request {
            let req = req.lock().unwrap_or_else(PoisonError::into_inner);
            if facts.model.is_none() {
                facts.model.clone_from(&req.model);
            }
            let mut tools = req.tools.clone();
            for t in facts.tools.drain(..) {
                if !tools.contains(&t) {
                    tools.push(t);
                }
            }
            facts.tools = tools;
        }
        let tokens = self.header_tokens.or_else(|| facts.tokens());
        if tokens.is_none()
            && let Some((metrics, route)) = &self.uncounted
        {
            let reason = if self.body.too_large() {
                "too_large"
            } else if !complete {
                "aborted"
            } else {
                "no_usage"
            };
            metrics.uncounted(route, reason);
        }
        ctx.usage.tokens_used = tokens;
        ctx.usage.model_name = facts.model;
        ctx.usage.tools_used = facts.tools;
    }
}

impl BodyObserver for ResponseUsage {
    fn on_data(&mut self, data: &Bytes) {
        self.body.feed(data);
    }

    fn on_end(&mut self, ctx: &mut RequestCtx) {
        self.body.end();
        self.conclude(ctx, true);
    }

    fn on_abort(&mut self, ctx: &mut RequestCtx) {
        self.conclude(ctx, false);
    }
}

/// A server-sent events splitter that parses only the events that can carry what we need.
#[derive(Default)]
pub struct Sse {
    line: Vec<u8>,
    data: Vec<u8>,
    /// The current line grew past the limit: drop it (and its event) when it ends.
    line_too_long: bool,
    /// The current event is dropped: ignore its lines until the blank line that ends it.
    skipping: bool,
}

impl Sse {
    pub fn feed(&mut self, mut chunk: &[u8], facts: &mut Facts) {
        while !chunk.is_empty() {
            let (part, rest, eol) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            if self.line_too_long || self.line.len() + part.len() > MAX_EVENT {
                self.line_too_long = true;
                self.line.clear();
            } else {
                self.line.extend_from_slice(part);
            }
            if eol {
                if std::mem::take(&mut self.line_too_long) {
                    self.skipping = true;
                    self.data.clear();
                } else {
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, facts);
                    self.line = line;
                }
                self.line.clear();
            }
            chunk = rest;
        }
    }

    pub fn finish(&mut self, facts: &mut Facts) {
        if !self.line.is_empty() && !self.line_too_long {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, facts);
        }
        self.line_done(b"", facts);
    }

    fn line_done(&mut self, line: &[u8], facts: &mut Facts) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if !self.skipping && !self.data.is_empty() {
                dispatch(&self.data, facts);
            }
            self.data.clear();
            self.skipping = false;
            return;
        }
        let Some(value) = line.strip_prefix(b"data:") else { return };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if self.data.len() + value.len() + 1 > MAX_EVENT {
            self.skipping = true;
            self.data.clear();
        } else if !self.skipping {
            if !self.data.is_empty() {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
        }
    }
}

/// Parses one event's data if it can matter.
fn dispatch(data: &[u8], facts: &mut Facts) {
    if data == b"[DONE]" {
        return;
    }
    let wanted = [&b"\"usage\""[..], b"\"tool_calls\"", b"\"tool_use\"", b"\"function_call\""]
        .iter()
        .any(|n| memmem::find(data, n).is_some())
        || (facts.model.is_none() && memmem::find(data, b"\"model\"").is_some());
    if wanted && let Ok(v) = serde_json::from_slice::<Value>(data) {
        facts.absorb(&v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_json() {
        let mut f = Facts::default();
        f.absorb(&serde_json::json!({
            "model": "llama-3.3-8b-instruct",
            "choices": [{"message": {"tool_calls": [
                {"function": {"name": "search"}}, {"function": {"name": "calculator"}}, {"function": {"name": "search"}}
            ]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
        }));
        assert_eq!(f.tokens(), Some(150));
        assert_eq!(f.model.as_deref(), Some("llama-3.3-8b-instruct"));
        assert_eq!(f.tools, ["search", "calculator"]);
    }

    /// The upstream's numbers are not ours: a sum past u64 saturates instead of overflowing
    /// (a panic in the response observer in debug builds, a wrapped tiny charge in release).
    #[test]
    fn huge_input_and_output_counts_saturate() {
        let mut f = Facts::default();
        f.absorb(&serde_json::json!({"usage": {"input_tokens": u64::MAX, "output_tokens": 2}}));
        assert_eq!(f.tokens(), Some(u64::MAX));
    }

    #[test]
    fn anthropic_json_sums_input_and_output() {
        let mut f = Facts::default();
        f.absorb(&serde_json::json!({
            "model": "claude", "content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "name": "get_weather"}],
            "usage": {"input_tokens": 12, "output_tokens": 30}
        }));
        assert_eq!(f.tokens(), Some(42));
        assert_eq!(f.tools, ["get_weather"]);
    }

    /// Feeds `stream` in chunks of every size from 1 to 7 bytes: events split anywhere.
    fn sse(stream: &str) -> Facts {
        let mut last = None;
        for size in 1..8 {
            let mut f = Facts::default();
            let mut s = Sse::default();
            for chunk in stream.as_bytes().chunks(size) {
                s.feed(chunk, &mut f);
            }
            s.finish(&mut f);
            if let Some(prev) = &last {
                assert_eq!(prev, &f, "chunking changed the result");
            }
            last = Some(f);
        }
        last.unwrap()
    }

    #[test]
    fn openai_stream_with_final_usage() {
        let f = sse(concat!(
            "data: {\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"search\",\"arguments\":\"\"}}]}}]}\r\n\r\n",
            ": keep-alive comment\n\n",
            "data: {\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21}}\n\n",
            "data: [DONE]\n\n",
        ));
        assert_eq!(f.tokens(), Some(21));
        assert_eq!(f.model.as_deref(), Some("gpt-x"));
        assert_eq!(f.tools, ["search"]);
    }

    #[test]
    fn anthropic_stream() {
        let f = sse(concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"lookup\",\"input\":{}}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ));
        assert_eq!(f.tokens(), Some(40));
        assert_eq!(f.model.as_deref(), Some("claude"));
        assert_eq!(f.tools, ["lookup"]);
    }

    #[test]
    fn a_stream_without_a_final_blank_line_still_counts() {
        let f = sse("data: {\"usage\":{\"total_tokens\":7}}");
        assert_eq!(f.tokens(), Some(7));
    }

    #[test]
    fn oversized_events_are_skipped_not_buffered() {
        let mut f = Facts::default();
        let mut s = Sse::default();
        let big = format!("data: {{\"usage\":{{\"total_tokens\":1}},\"pad\":\"{}\"}}\n", "x".repeat(MAX_EVENT));
        s.feed(big.as_bytes(), &mut f);
        assert!(s.line.is_empty() && s.data.is_empty());
        s.feed(b"\ndata: {\"usage\":{\"total_tokens\":3}}\n\n", &mut f);
        assert_eq!(f.tokens(), Some(3));
    }
}
