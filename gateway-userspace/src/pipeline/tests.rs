use http::Request;

use super::*;
use crate::config::Config;

fn head(req: Request<()>) -> request::Parts {
    req.into_parts().0
}

fn limits() -> crate::config::Limits {
    Config::embedded().unwrap().server.limits
}

#[test]
fn long_targets_get_414() {
    let long = format!("/{}", "a".repeat(9000));
    let err = check_head(&head(Request::get(long).body(()).unwrap()), &limits()).unwrap_err();
    assert!(matches!(err, RequestError::UriTooLong { .. }));
}

#[test]
fn declared_oversized_bodies_get_413_before_reading() {
    let h = head(Request::post("/").header("content-length", "999999999").body(()).unwrap());
    assert!(matches!(check_head(&h, &limits()), Err(RequestError::BodyTooLarge { .. })));
}

#[test]
fn too_many_headers_get_431() {
    let mut b = Request::get("/");
    for i in 0..101 {
        b = b.header(format!("x-h{i}"), "v");
    }
    assert!(matches!(check_head(&head(b.body(()).unwrap()), &limits()), Err(RequestError::HeadersTooLarge)));
}

#[test]
fn hosts_come_from_authority_or_header() {
    let h = head(Request::get("http://API.Example.com:8443/x").body(()).unwrap());
    assert_eq!(request_host(&h).unwrap().as_deref(), Some("api.example.com"));
    let h = head(Request::get("/x").header("host", "Example.org:80").body(()).unwrap());
    assert_eq!(request_host(&h).unwrap().as_deref(), Some("example.org"));
    let h = head(Request::get("/x").header("host", "bad host").body(()).unwrap());
    assert!(request_host(&h).is_err());
    let h = head(Request::get("/x").body(()).unwrap());
    assert_eq!(request_host(&h).unwrap(), None);
}
