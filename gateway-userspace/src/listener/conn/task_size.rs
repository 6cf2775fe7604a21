//! What an idle plain connection costs is mostly its task: the future `serve_tcp` returns lives
//! as long as the connection, parked or not. Its size is checked here so that wrapping it again
//! (an async fn around `serve_connection`, an async block around the call) shows up as a test
//! failure instead of a few hundred bytes more per idle connection in `bench proxy`.

use super::*;

/// The size of the future `f` returns, without calling it.
fn output_size<F, Fut>(_: &F) -> usize
where
    F: FnOnce(TcpStream, SocketAddr, ListenerSpec, Rc<WorkerLocal>, watch::Receiver<bool>) -> Fut,
{
    std::mem::size_of::<Fut>()
}

/// 1,104 bytes in a debug build and 1,072 in a release build when this was written (tokio pads
/// the task cell to 128-byte steps: 1,280 bytes per connection). With `serve_tcp` an async fn
/// around `serve_tcp_stream`, around `serve_connection`, around the serving loop, it was 2,288
/// bytes (debug; 2,352 in release, a 2,560-byte cell): ~1.3 KiB more per idle connection.
const MAX_TASK_FUTURE: usize = 1280;

#[test]
fn a_plain_connections_task_is_one_frame() {
    let size = output_size(&serve_tcp);
    assert!(size <= MAX_TASK_FUTURE, "a plain connection's task future is {size} bytes (at most {MAX_TASK_FUTURE})");
}
