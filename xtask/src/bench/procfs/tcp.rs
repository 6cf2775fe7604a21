//! Which TCP connections a process holds, from `/proc/net/tcp{,6}` (every socket of this network
//! namespace, with its inode) and `/proc/PID/fd` (which inodes a process has open).
//!
//! A subject's descriptor count also moves with things the measurement did not do (the upstream
//! nginx of `bench proxy` closing the proxies' idle pool connections on their own timers), so
//! "accepted" is counted as pairs: a socket of the subject whose two ends are exactly those of
//! one of the client's connections.

use std::{
    collections::HashSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{Context as _, Result, bail};

use super::Tree;

/// One end of a TCP connection: the addresses as that end sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ends {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Ends {
    /// The same connection seen from the other end.
    pub fn peer(self) -> Ends {
        Ends { local: self.remote, remote: self.local }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Socket {
    ends: Ends,
    inode: u64,
}

/// This process's connections to `server` (their ends as this process sees them).
pub fn own_connections_to(server: SocketAddr) -> Result<HashSet<Ends>> {
    let own = socket_inodes(["/proc/self/fd".to_owned()])?;
    Ok(sockets()?.into_iter().filter(|s| s.ends.remote == server && own.contains(&s.inode)).map(|s| s.ends).collect())
}

/// How many of `clients` (connections as the client sees them) the process tree `tree` holds the
/// other end of: accepted and not yet closed by it.
pub fn held_by(tree: Tree, clients: &HashSet<Ends>) -> Result<usize> {
    let paths = tree.pids()?.into_iter().map(|pid| format!("/proc/{pid}/fd"));
    let held = socket_inodes(paths)?;
    Ok(sockets()?.iter().filter(|s| held.contains(&s.inode) && clients.contains(&s.ends.peer())).count())
}

/// The kernel's count of connections a full accept queue turned away (`TcpExt: ListenOverflows`
/// plus `ListenDrops`, namespace-wide): the reason a subject never saw a connection the client
/// believes open.
pub fn listen_drops() -> Result<u64> {
    let text = fs::read_to_string("/proc/net/netstat").context("cannot read /proc/net/netstat")?;
    parse_listen_drops(&text)
}

fn parse_listen_drops(text: &str) -> Result<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { bail!("no TcpExt lines") };
    let mut total = 0;
    for (name, value) in names.split_whitespace().zip(values.split_whitespace()).skip(1) {
        if matches!(name, "ListenOverflows" | "ListenDrops") {
            total += value.parse::<u64>().with_context(|| format!("TcpExt {name} = {value:?}"))?;
        }
    }
    Ok(total)
}

/// The socket inodes open in the fd directories `dirs` (processes that exited meanwhile count
/// for nothing).
fn socket_inodes(dirs: impl IntoIterator<Item = String>) -> Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(target) = fs::read_link(entry.path()) else { continue };
            let inode: Option<u64> =
                target.to_str().and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok());
            inodes.extend(inode);
        }
    }
    Ok(inodes)
}

fn sockets() -> Result<Vec<Socket>> {
    let mut all = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        // tcp6 is missing where IPv6 is off.
        let Ok(text) = fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            all.push(parse_line(line).with_context(|| format!("{table}: {line:?}"))?);
        }
    }
    Ok(all)
}

/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`
fn parse_line(line: &str) -> Result<Socket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 {
        bail!("short line");
    }
    let ends = Ends { local: parse_addr(fields[1])?, remote: parse_addr(fields[2])? };
    Ok(Socket { ends, inode: fields[9].parse().context("inode")? })
}

/// `0100007F:1F90`: the address as the kernel's 32-bit words in this machine's byte order, the
/// port in hex.
fn parse_addr(text: &str) -> Result<SocketAddr> {
    let (addr, port) = text.split_once(':').context("no `:`")?;
    let port = u16::from_str_radix(port, 16).context("port")?;
    let word = |i: usize| -> Result<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8).context("short address")?;
        Ok(u32::from_str_radix(hex, 16).context("address")?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        n => bail!("an address of {n} hex digits"),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_give_both_ends_and_the_inode() -> Result<()> {
        let v4 = "   3: 0100007F:A1C6 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 77123 1 \
                  0000000000000000 20 4 30 10 -1";
        let s = parse_line(v4)?;
        assert_eq!(s.ends.local, "127.0.0.1:41414".parse()?);
        assert_eq!(s.ends.remote, "127.0.0.1:8080".parse()?);
        assert_eq!(s.inode, 77123);
        let v6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 \
                  00:00000000 00000000     0        0 991 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_line(v6)?.ends.local, "[::1]:80".parse()?);
        assert!(parse_line("   0: 0100007F:1F90").is_err());
        Ok(())
    }

    #[test]
    fn listen_drops_add_overflows_and_drops() -> Result<()> {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeouts\nTcpExt: 4 7 9 100\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_listen_drops(text)?, 16);
        assert!(parse_listen_drops("IpExt: a\nIpExt: 1\n").is_err());
        Ok(())
    }

    #[test]
    fn a_connection_of_this_process_is_found_at_both_ends() -> Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let server = listener.local_addr()?;
        let client = std::net::TcpStream::connect(server)?;
        let (_accepted, _) = listener.accept()?;
        let mine = own_connections_to(server)?;
        let ends = Ends { local: client.local_addr()?, remote: server };
        assert_eq!(mine, HashSet::from([ends]));
        // This process holds the accepted end too.
        assert_eq!(held_by(Tree(std::process::id()), &mine)?, 1);
        drop(_accepted);
        assert_eq!(held_by(Tree(std::process::id()), &mine)?, 0);
        Ok(())
    }
}
