//! A small built-in upstream so that a fresh `gatewayd` (embedded defaults) answers through the
//! proxy: `/hello`, `/echo`, `/status/<code>`, `/delay/<ms>`, `/bytes/<n>`; anything else echoes.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Binds now (a clash is a startup error) and serves on the current runtime.
pub async fn start(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = service_fn(|req| async move { Ok::<_, Infallible>(handle(req).await) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn handle(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    match (segments.next().unwrap_or(""), segments.next()) {
        ("hello", None) => reply(StatusCode::OK, "text/plain", "Hello from the gatewayd demo upstream!\n".into()),
        ("status", Some(code)) => {
            let status =
                code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::BAD_REQUEST);
            reply(status, "text/plain", format!("{status}\n"))
        }
        ("delay", Some(ms)) => {
            let ms = ms.parse::<u64>().unwrap_or(0).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(StatusCode::OK, "text/plain", format!("slept {ms} ms\n"))
        }
        ("bytes", Some(n)) => {
            let n = n.parse::<usize>().unwrap_or(0).min(64 << 20);
            reply(StatusCode::OK, "application/octet-stream", "x".repeat(n))
        }
        _ => echo(&req),
    }
}

fn echo(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> =
        req.headers().iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())).collect();
    let body = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    reply(StatusCode::OK, "application/json", format!("{body:#}\n"))
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}
