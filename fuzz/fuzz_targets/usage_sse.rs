//! Arbitrary bytes as a `text/event-stream` response body of a budgeted route, split into events
//! as it streams and read for its token usage, model and tool calls (see
//! `gateway_fuzz::usage_target` for what is checked).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway_fuzz::usage_target(b"text/event-stream", data));
