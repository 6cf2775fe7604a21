//! What an idle connection costs is mostly what its task keeps for its whole life: the size of
//! `serve_tcp`'s future, the same for every connection of a worker (plain, rustls or kTLS).

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
