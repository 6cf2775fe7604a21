//! HAProxy 2.6 (Debian's) as the third reverse proxy in `bench proxy`, configured as its users
//! would for the same job: one thread on the subject CPU, `http-reuse always` (idle upstream
//! connections shared between clients, as gatewayd's and nginx's keep-alive pools are), the
//! forwarding headers, a request id both ways and the upstream's time in a response header.

use std::{net::SocketAddr, path::Path, process::Command};

use super::super::cpus::CpuList;

/// `haproxy -db -f CFG`: in the foreground (no master process), pinned to `cpus`.
pub fn command(cpus: &CpuList, cfg: &Path) -> Command {
    let mut cmd = cpus.taskset("haproxy");
    cmd.arg("-db").arg("-f").arg(cfg);
    cmd
}

/// `nofile`: the descriptor limit it inherits; it needs one per idle client connection.
pub fn conf(listen: SocketAddr, upstream: SocketAddr, cpus: &CpuList, nofile: u64) -> String {
    conf_with(listen, "", upstream, cpus, nofile)
}

/// With more frontend `bind` lines (`bench h2`: HTTP/2 listeners).
pub fn conf_with(listen: SocketAddr, binds: &str, upstream: SocketAddr, cpus: &CpuList, nofile: u64) -> String {
    let threads = cpus.len();
    // Room for the idle-connection measurement (one descriptor per idle client connection; the
    // upstream connections are few and reused). HAProxy sizes its descriptor limit for two per
    // connection and refuses to start when that is above the hard limit, unless told that
    // strict limits are not wanted (then it warns and runs with the limit it has).
    let maxconn = nofile.saturating_sub(200).max(1000);
    format!(
        "global
    nbthread {threads}
    maxconn {maxconn}
    no strict-limits
    log stderr format raw local0 warning

defaults
    mode http
    maxconn {maxconn}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    option forwardfor

frontend bench
    bind {listen}
{binds}    unique-id-format %{{+X}}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid
    http-request set-header X-Forwarded-Proto %[ssl_fc,iif(https,http)]
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header Forwarded \"for=%[src];proto=%[ssl_fc,iif(https,http)];host=%[req.hdr(host)]\"
    http-request set-header X-Request-Id %[unique-id]
    http-after-response set-header X-Request-Id %[unique-id]
    http-after-response set-header Server-Timing \"upstream;dur=%Tr\"
    default_backend upstream

backend upstream
    http-reuse always
    server upstream {upstream}
"
    )
}
