//! The request path's futures are moved whole: `serve`'s into the box a connection keeps per
//! request (an allocation and a copy of its full size, every request), and each async layer's
//! into its caller's. What they hold across their waits is what every request copies.

use std::mem::size_of;

/// The size of what `f` returns (an async fn's future), without calling it.
fn output_size<A, B, C, D, E, R>(_: impl FnOnce(A, B, C, D, E) -> R) -> usize {
    size_of::<R>()
}

fn output_size3<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
    size_of::<R>()
}

/// The request head and body are lent down the layers (`run`, `proxy::forward`, the send and
/// the stall watch), not moved into each: 4,272 bytes in a debug build when each layer held
/// its own copy of what it was given, 2,448 after (`proxy::forward`'s: 2,816, then 1,424).
#[test]
fn the_request_path_future_holds_each_part_once() {
    let serve = output_size(super::serve);
    assert!(serve <= 2560, "pipeline::serve's future is {serve} bytes");
    let forward = output_size3(crate::proxy::forward);
    assert!(forward <= 1536, "proxy::forward's future is {forward} bytes");
}
