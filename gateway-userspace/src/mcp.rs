//! `gatewayd mcp`: a Model Context Protocol server for agents, built on the official Rust SDK
//! (`rmcp`: it follows the current spec and its protocol-version negotiation, so we write tools,
//! not JSON-RPC). It runs as its own process and talks to the daemon only through the admin
//! socket, like every other `gatewayd` subcommand: the daemon gains no agent-facing listener.
//!
//! Transports: stdio (the default; the agent's client starts the process), or MCP's streamable
//! HTTP on `admin.mcp_listen` with `--http` (off unless configured; loopback Host names only,
//! rmcp's DNS-rebinding guard). Read-only tools answer from the daemon's state; tools that
//! change something only create a pending change in the daemon (`admin/changes.rs`), which a
//! person approves.

mod tools;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use hyper_util::rt::{TokioExecutor, TokioIo};
use rmcp::{
    ServiceExt,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use thiserror::Error;

pub use tools::GatewayTools;

#[derive(Debug, Error)]
pub enum McpError {
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("mcp over stdio: {0}")]
    Stdio(String),
    #[error("mcp over http: cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

pub enum Transport {
    Stdio,
    /// Streamable HTTP on this address (path `/mcp`).
    Http(SocketAddr),
}

pub struct McpOptions {
    pub socket: PathBuf,
    pub transport: Transport,
}

/// Serves until the client goes away (stdio) or the process is stopped (HTTP).
pub fn run(options: McpOptions) -> Result<(), McpError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(McpError::Runtime)?;
    rt.block_on(async move {
        match options.transport {
            Transport::Stdio => serve_stdio(options.socket).await,
            Transport::Http(addr) => serve_http(options.socket, addr).await,
        }
    })
}

async fn serve_stdio(socket: PathBuf) -> Result<(), McpError> {
    let server =
        GatewayTools::new(socket).serve(rmcp::transport::stdio()).await.map_err(|e| McpError::Stdio(e.to_string()))?;
    server.waiting().await.map_err(|e| McpError::Stdio(e.to_string()))?;
    Ok(())
}

async fn serve_http(socket: PathBuf, addr: SocketAddr) -> Result<(), McpError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| McpError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    // Host names a local client uses for this address; anything else is refused (DNS rebinding).
    let hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "[::1]".to_owned(), local.ip().to_string()];
    let config = StreamableHttpServerConfig::default().with_allowed_hosts(hosts);
    let service: StreamableHttpService<GatewayTools, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(GatewayTools::new(socket.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    tracing::info!(%local, "mcp streamable HTTP listening on /mcp");
    eprintln!("gatewayd mcp: streamable HTTP on http://{local}/mcp");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let service = service.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let service = service.clone();
                async move {
                    if req.uri().path() != "/mcp" {
                        let mut not_found = http::Response::new(rmcp_body("not found\n"));
                        *not_found.status_mut() = http::StatusCode::NOT_FOUND;
                        return Ok::<_, std::convert::Infallible>(not_found);
                    }
                    Ok(service.handle(req).await)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A body of rmcp's response type, for the answers we write ourselves.
fn rmcp_body(text: &'static str) -> http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible> {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes::Bytes::from_static(text.as_bytes())).boxed()
}
