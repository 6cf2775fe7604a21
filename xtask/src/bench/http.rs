//! A minimal blocking HTTP/1.1 client: readiness probes, sanity checks of a subject's answer,
//! and requests on the idle keep-alive connections of the memory measurement.

use std::{
    io::{BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// `GET path` on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    let mut stream = connect(addr)?;
    request(&mut stream, addr, path)
}

/// A loopback connection with read and write timeouts, so that a stuck subject fails the
/// benchmark instead of hanging it.
pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One keep-alive `GET path` on `stream`, reading exactly the response (Content-Length or
/// chunked), so that the connection can carry the next request or sit idle.
pub fn request(stream: &mut TcpStream, addr: SocketAddr, path: &str) -> Result<Response> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: xtask-bench\r\n\r\n")
        .with_context(|| format!("send a request to {addr}"))?;
    read_response(&mut BufReader::new(stream)).with_context(|| format!("read the response from {addr}"))
}

pub(super) fn read_response(reader: &mut impl std::io::BufRead) -> Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP/1 status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed inside the response head");
        }
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').with_context(|| format!("bad header line {header:?}"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut response = Response { status, headers, body: Vec::new() };
    if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().with_context(|| format!("bad Content-Length {len:?}"))?;
        response.body.resize(len, 0);
        reader.read_exact(&mut response.body)?;
    } else if response.header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        response.body = read_chunked(reader)?;
    } else {
        // Neither: the body runs to the end of the connection.
        reader.read_to_end(&mut response.body)?;
    }
    Ok(response)
}

fn read_chunked(reader: &mut impl std::io::BufRead) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size + 2, 0);
        reader.read_exact(&mut body[start..])?;
        body.truncate(start + size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_responses_are_read_exactly() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: x\r\n\r\nokNEXT";
        let mut reader = &raw[..];
        let response = read_response(&mut reader).ok();
        assert_eq!(response.as_ref().map(|r| (r.status, r.body.as_slice())), Some((200, &b"ok"[..])));
        assert_eq!(response.as_ref().and_then(|r| r.header("server")), Some("x"));
        assert_eq!(reader, b"NEXT");
    }

    #[test]
    fn chunked_responses_are_read_to_the_last_chunk() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3;x=y\r\n!!!\r\n0\r\n\r\nNEXT";
        let mut reader = &raw[..];
        let response = read_response(&mut reader).ok();
        assert_eq!(response.map(|r| (r.status, r.body)), Some((503, b"ok!!!".to_vec())));
        assert_eq!(reader, b"NEXT");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(read_response(&mut &b"SSH-2.0-OpenSSH\r\n"[..]).is_err());
        assert!(read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok"[..]).is_err());
    }
}
