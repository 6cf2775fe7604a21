//! Arbitrary bytes as a JSON request body of a budgeted route, read as it streams upstream for
//! the model asked for and the MCP `tools/call` names (single or batched JSON-RPC), through
//! `RequestUsage`, the request observer the budget phase attaches. Never panics; the chunking
//! changes nothing; each tool is named once, never by an empty name.
#![no_main]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gateway_fuzz::{chunk_size_and_body, distinct_names, same_in_chunks};
use gateway_userspace::{
    budget::{RequestFacts, RequestUsage},
    request::RequestObserver as _,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((chunk, body)) = chunk_size_and_body(data) else { return };
    let facts = same_in_chunks(body, chunk, |chunks| {
        let facts = Arc::new(Mutex::new(RequestFacts::default()));
        let mut observer = RequestUsage::new(facts.clone());
        chunks.for_each(|c| observer.on_data(&Bytes::copy_from_slice(c)));
        observer.on_end();
        let read = facts.lock().expect("not poisoned").clone();
        read
    });
    distinct_names(&facts.tools);
});
