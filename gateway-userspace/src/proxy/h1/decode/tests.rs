//! A corpus of response heads and chunk lines, with what RFC 9112 (as hyper applies it) says.

use super::*;

fn head(raw: &str) -> Result<Option<(Head, usize)>, H1Error> {
    head_for(raw, &Method::GET)
}

/// The head and how many bytes it took off the buffer (none when it is partial).
fn head_for(raw: &str, method: &Method) -> Result<Option<(Head, usize)>, H1Error> {
    let mut buf = BytesMut::from(raw.as_bytes());
    let parsed = response_head(&mut buf, method, &mut NameCache::default())?;
    let taken = raw.len() - buf.len();
    assert!(parsed.is_some() || taken == 0, "a partial head takes nothing");
    Ok(parsed.map(|h| (h, taken)))
}

fn framing_of(raw: &str) -> Result<(Framing, bool), String> {
    match head(raw) {
        Ok(Some((h, _))) => Ok((h.framing, h.keep_alive)),
        Ok(None) => Err("partial".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn framing_corpus() {
    use Framing::*;
    let ok: &[(&str, Framing, bool)] = &[
        ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", Length(2), true),
        ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Empty, true),
        ("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n", Length(5), true),
        ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n", Length(5), true),
        ("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", Chunked, true),
        ("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", Chunked, true),
        ("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n", Close, false),
        ("HTTP/1.1 200 OK\r\n\r\n", Close, false),
        ("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n", Empty, true),
        ("HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n", Empty, true),
        ("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n", Length(1), false),
        ("HTTP/1.1 200 OK\r\nconnection: Keep-Alive, Close\r\ncontent-length: 1\r\n\r\n", Length(1), false),
        ("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", Length(1), false),
        ("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n", Length(1), true),
        // Bare LF line endings: httparse (and so hyper) accepts them in a response head.
        ("HTTP/1.1 200 OK\ncontent-length: 2\n\n", Length(2), true),
    ];
    for (raw, framing, keep_alive) in ok {
        assert_eq!(framing_of(raw), Ok((*framing, *keep_alive)), "{raw:?}");
    }
    let bad = [
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 0x10\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length:\r\n\r\n",
        // obs-fold
        "HTTP/1.1 200 OK\r\nx-a: 1\r\n  folded\r\ncontent-length: 0\r\n\r\n",
        // whitespace between name and colon
        "HTTP/1.1 200 OK\r\ncontent-length : 0\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad\0name: x\r\n\r\n",
    ];
    for raw in bad {
        assert!(framing_of(raw).is_err(), "{raw:?} must be refused, got {:?}", framing_of(raw));
    }
}

#[test]
fn partial_heads_ask_for_more() {
    assert!(matches!(head("HTTP/1.1 200 OK\r\ncontent-le"), Ok(None)));
    assert!(matches!(head(""), Ok(None)));
}

#[test]
fn head_keeps_status_headers_and_length_and_responses_to_head_have_no_body() {
    let raw = "HTTP/1.1 404 Not Found\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 3\r\n\r\nabc";
    let (h, len) = head(raw).unwrap().unwrap();
    assert_eq!(len, raw.len() - 3);
    assert_eq!(h.parts.status, StatusCode::NOT_FOUND);
    assert_eq!(h.parts.headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
    let (h, _) = head_for(raw, &Method::HEAD).unwrap().unwrap();
    assert_eq!(h.framing, Framing::Empty);
}

#[test]
fn hop_by_hop_fields_are_read_but_left_out_of_the_head() {
    let raw = "HTTP/1.1 200 OK\r\nx-secret: 1\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n\
               Transfer-Encoding: chunked\r\nTrailer: x-sum\r\nUpgrade: h2c\r\nProxy-Authenticate: Basic\r\n\
               Proxy-Connection: keep-alive\r\nTE: trailers\r\nx-keep: 1\r\n\r\n";
    let (h, _) = head(raw).unwrap().unwrap();
    assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
    assert_eq!(h.parts.headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
    // `close` is a connection option, and a field named so goes too.
    let raw = "HTTP/1.1 200 OK\r\nclose: 1\r\nconnection: close\r\ncontent-length: 1\r\n\r\n";
    let (h, _) = head(raw).unwrap().unwrap();
    assert_eq!((h.framing, h.keep_alive), (Framing::Length(1), false));
    assert_eq!(h.parts.headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["content-length"]);
    // A response without a body is not framed by its Content-Length, valid or not.
    let raw = "HTTP/1.1 304 Not Modified\r\ncontent-length: x\r\n\r\n";
    assert_eq!(head(raw).unwrap().unwrap().0.framing, Framing::Empty);
}

#[test]
fn too_many_headers_are_refused() {
    let mut raw = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..=MAX_HEADERS {
        raw.push_str(&format!("x-{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    assert!(head(&raw).is_err());
}

#[test]
fn chunk_size_lines() {
    let ok: &[(&str, u64, usize)] = &[
        ("0\r\n", 0, 3),
        ("a\r\nxxxx", 10, 3),
        ("FF\r\n", 255, 4),
        ("10;name=value\r\n", 16, 15),
        ("10 ;ext\r\n", 16, 9),
        ("10\t\r\n", 16, 5),
        ("ffffffffffffffff\r\n", u64::MAX, 18),
        ("00000000000000001\r\n", 1, 19),
    ];
    for (line, size, len) in ok {
        assert_eq!(chunk_size_line(line.as_bytes()).unwrap(), Some((*size, *len)), "{line:?}");
    }
    for partial in ["", "1", "1\r", "10;ext"] {
        assert_eq!(chunk_size_line(partial.as_bytes()).unwrap(), None, "{partial:?}");
    }
    let bad = [
        "1\n",                   // bare LF
        "1\rx",                  // CR without LF
        "\r\n",                  // no size
        ";ext\r\n",              // no size
        "-1\r\n",                // sign
        "0x10\r\n",              // prefix
        "1 2\r\n",               // junk after the size
        "1g\r\n",                // not hex
        "10000000000000000\r\n", // 17 digits: overflows 64 bits
    ];
    for line in bad {
        assert!(chunk_size_line(line.as_bytes()).is_err(), "{line:?} must be refused");
    }
    let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
    assert!(chunk_size_line(long.as_bytes()).is_err());
}

#[test]
fn trailer_sections() {
    let (t, len) = trailers(b"x-sum: 1\r\n\r\nnext").unwrap().unwrap();
    assert_eq!((t["x-sum"].as_bytes(), len), (&b"1"[..], 12));
    let (t, len) = trailers(b"\r\n").unwrap().unwrap();
    assert_eq!((t.len(), len), (0, 2));
    assert!(trailers(b"x-sum: 1\r\n").unwrap().is_none());
    assert!(trailers(b"x-sum: 1\r\n folded\r\n\r\n").is_err());
}
