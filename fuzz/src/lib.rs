//! What several fuzz targets share: hyper's HTTP/1 server, configured as a listener configures
//! it, serving raw bytes from an in-memory stream; gateway limits small enough for fuzz inputs to
//! cross; and a way to feed a body in the chunk sizes an input picks.

use std::{convert::Infallible, future::Future, sync::OnceLock};

use bytes::Bytes;
use gateway_userspace::{budget::UsageReader, config::Limits, listener::h1_builder};
use http_body_util::Empty;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    runtime::Runtime,
};

/// The gateway's limits, made small enough that inputs of a few KiB cross every one of them.
pub fn small_limits() -> Limits {
    static LIMITS: OnceLock<Limits> = OnceLock::new();
    *LIMITS.get_or_init(|| {
        let mut limits = gateway_userspace::config::Config::embedded().expect("embedded config is valid").server.limits;
        limits.max_request_body = 1024;
        limits.max_header_bytes = 2048;
        limits.max_headers = 24;
        limits.max_request_line = 512;
        limits
    })
}

/// Serves `input` (what a client sent, then end of stream) with the listeners' HTTP/1 settings,
/// calling `handle` on every request hyper parsed; each gets an empty 200.
pub fn serve_http1<F, Fut>(limits: &Limits, input: &[u8], handle: F)
where
    F: Fn(Request<Incoming>) -> Fut,
    Fut: Future<Output = ()>,
{
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    let runtime = RUNTIME
        .get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime"));
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let service = service_fn(|req| {
            let handled = handle(req);
            async move {
                handled.await;
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
        let connection = h1_builder(limits).serve_connection(TokioIo::new(server), service);
        let peer = async {
            // Errors only mean the server closed first (a refused request): that is allowed.
            let _ = client.write_all(input).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
        };
        // A parse error ends the connection with an error: what a listener logs and moves past.
        let (_served, ()) = tokio::join!(connection, peer);
    });
}

/// Splits a fuzz input into a chunk size (its first byte: 1 to 16) and the body that follows.
pub fn chunk_size_and_body(data: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, body) = data.split_first()?;
    Some((usize::from(first % 16) + 1, body))
}

/// Feeds `body` to `feed` whole and in `chunk`-byte pieces and checks both readings agree: a
/// reader must not depend on where the network split the stream.
pub fn same_in_chunks<T: PartialEq + std::fmt::Debug>(
    body: &[u8],
    chunk: usize,
    read: impl Fn(&mut dyn Iterator<Item = &[u8]>) -> T,
) -> T {
    let whole = read(&mut std::iter::once(body));
    let split = read(&mut body.chunks(chunk));
    assert_eq!(whole, split, "{chunk}-byte chunks read differently");
    whole
}

/// The token-usage targets: `data` (a chunk size, then a response body of `content_type`)
/// through the response usage reader of budgeted routes (`UsageReader`, what `ResponseUsage`
/// feeds). Never panics; the chunking changes nothing; tool names are distinct and non-empty;
/// the token count is defined for any numbers.
pub fn usage_target(content_type: &[u8], data: &[u8]) {
    let Some((chunk, body)) = chunk_size_and_body(data) else { return };
    let facts = same_in_chunks(body, chunk, |chunks| {
        let mut reader = UsageReader::new(Some(content_type));
        chunks.for_each(|c| reader.feed(c));
        reader.end();
        reader.facts().clone()
    });
    let _ = facts.tokens();
    distinct_names(&facts.tools);
}

/// Tool lists name each tool once, and never by an empty name.
pub fn distinct_names(tools: &[String]) {
    for (i, tool) in tools.iter().enumerate() {
        assert!(!tool.is_empty(), "empty tool name");
        assert!(!tools[..i].contains(tool), "{tool} listed twice");
    }
}
