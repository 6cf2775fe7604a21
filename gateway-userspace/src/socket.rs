//! Listening sockets: one per worker per listener, joined in a SO_REUSEPORT group so the kernel
//! (or the steering program) spreads connections across workers.

use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a non-blocking SO_REUSEPORT listening socket.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]:port` means IPv6 only; a separate listener covers IPv4.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Checks that `addr` can be bound, without keeping a socket that would receive connections
/// nobody accepts.
pub fn probe_bind(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sockets_share_a_port() {
        let a = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_reuseport(addr, 16).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        probe_bind(addr).unwrap();
    }
}
