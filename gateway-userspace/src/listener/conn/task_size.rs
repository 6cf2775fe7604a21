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
