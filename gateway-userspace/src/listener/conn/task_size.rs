//! What an idle connection costs is mostly what its task keeps for its whole life: the size of
//! `serve_tcp`'s future, the same for every connection of a worker (plain, rustls or kTLS).

use tokio::net::TcpStream;

use super::serve_tcp;

/// The size of what `f` returns (an async fn's future), without calling it.
fn output_size<A, B, C, D, E, R>(_: impl FnOnce(A, B, C, D, E) -> R) -> usize {
    std::mem::size_of::<R>()
}

/// Both paths (plain and TLS) are boxed: the task holds a pointer to whichever one serves the
/// connection, not room for the larger of them (inline, the plain path made it 2,672 bytes in a
/// debug build, carried by every TLS connection, parked kTLS ones included; boxed: 552).
#[test]
fn a_connection_task_holds_neither_path_inline() {
    let size = output_size(serve_tcp);
    assert!(size <= 1024, "serve_tcp's future is {size} bytes");
}

/// The plain path's box: `serve_connection` is one async fn (nested async fns each kept their
/// own copy of the arguments for the connection's life). 1,104 bytes in a debug build (1,072 in
/// release) when this was written; 2,288 with the serving loop nested four deep.
#[test]
fn a_plain_connection_is_served_by_one_frame() {
    fn output_size6<A, B, C, D, E, F, R>(_: impl FnOnce(A, B, C, D, E, F) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    let size = output_size6(super::serve_connection::<TcpStream>);
    assert!(size <= 1280, "serve_connection's future is {size} bytes");
}

/// A TLS connection's task keeps, for the connection's life, two pointers and the serving box:
/// neither the handshake's state nor `serve_tls`'s arguments (awaiting the serving inside
/// `serve_tls` kept a 912-byte future per connection, a third of an idle kTLS connection).
#[test]
fn a_tls_connection_keeps_neither_its_handshake_nor_its_arguments() {
    let size = std::mem::size_of_val(&super::tls_task(Box::pin(async { None })));
    assert!(size <= 64, "tls_task's future is {size} bytes");
}

/// Every connection keeps its `ConnInfo` (in an `Rc`: 16 more bytes) for its whole life; the
/// rare parts of a TLS session (a client certificate, a refusal) are boxed so that it fits
/// mimalloc's 384-byte size class (608 bytes with them inline: the 640-byte class).
#[test]
fn a_connections_info_fits_the_384_byte_class() {
    let size = std::mem::size_of::<crate::request::ConnInfo>();
    assert!(size + 16 <= 384, "ConnInfo is {size} bytes");
}
