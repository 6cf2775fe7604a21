//! Arbitrary bytes as an `application/json` response body of a budgeted route, read for its
//! token usage, model and tool calls (see `gateway_fuzz::usage_target` for what is checked).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway_fuzz::usage_target(b"application/json", data));
