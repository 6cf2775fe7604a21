use http::{HeaderMap, HeaderValue, Method};

use super::*;

fn route(index: usize, hosts: &[&str], paths: &[&str], methods: &[&str]) -> Route {
    Route {
        index,
        name: format!("r{index}").into(),
        service: 0,
        hosts: hosts.iter().map(|h| HostPattern::parse(h).unwrap()).collect(),
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
        headers: Vec::new(),
        strip_path: false,
        preserve_host: false,
        body: Default::default(),
        client_cert: Default::default(),
    }
}

fn find(t: &RouteTable, host: &str, path: &str, method: Method) -> Option<usize> {
    t.find(Some(host), path, &method, &HeaderMap::new()).map(|m| m.route.index)
}

#[test]
fn exact_host_beats_wildcard_beats_any() {
    let t = RouteTable::build(vec![
        route(0, &[], &["/"], &[]),
        route(1, &["*.example.org"], &["/"], &[]),
        route(2, &["api.example.org"], &["/"], &[]),
    ])
    .unwrap();
    assert_eq!(find(&t, "api.example.org", "/x", Method::GET), Some(2));
    assert_eq!(find(&t, "www.example.org", "/x", Method::GET), Some(1));
    assert_eq!(find(&t, "a.b.example.org", "/x", Method::GET), Some(1));
    assert_eq!(find(&t, "example.org", "/x", Method::GET), Some(0));
    assert_eq!(find(&t, "other.net", "/x", Method::GET), Some(0));
}

#[test]
fn longer_wildcard_wins() {
    let t = RouteTable::build(vec![route(0, &["*.org"], &[], &[]), route(1, &["*.example.org"], &[], &[])]).unwrap();
    assert_eq!(find(&t, "a.example.org", "/", Method::GET), Some(1));
    assert_eq!(find(&t, "a.other.org", "/", Method::GET), Some(0));
}

#[test]
fn falls_back_to_less_specific_host_when_path_misses() {
    let t = RouteTable::build(vec![route(0, &[], &["/b"], &[]), route(1, &["api.example.com"], &["/a"], &[])]).unwrap();
    assert_eq!(find(&t, "api.example.com", "/b/1", Method::GET), Some(0));
    assert_eq!(find(&t, "api.example.com", "/c", Method::GET), None);
}

#[test]
fn longest_prefix_then_headers_then_methods_then_order() {
    let mut with_header = route(3, &[], &["/api"], &[]);
    with_header.headers = vec![(HeaderName::from_static("x-version"), vec!["v2".into()])];
    let t = RouteTable::build(vec![
        route(0, &[], &["/api"], &[]),
        route(1, &[], &["/api/v1"], &[]),
        route(2, &[], &["/api"], &["POST"]),
        with_header,
    ])
    .unwrap();
    assert_eq!(find(&t, "h", "/api/v1/x", Method::GET), Some(1));
    assert_eq!(find(&t, "h", "/api/x", Method::GET), Some(0));
    assert_eq!(find(&t, "h", "/api/x", Method::POST), Some(2));
    let mut headers = HeaderMap::new();
    headers.insert("x-version", HeaderValue::from_static("V2"));
    let m = t.find(Some("h"), "/api/x", &Method::POST, &headers).unwrap();
    assert_eq!(m.route.index, 3);
}

#[test]
fn method_condition_filters() {
    let t = RouteTable::build(vec![route(0, &[], &["/p"], &["GET", "POST"])]).unwrap();
    assert_eq!(find(&t, "h", "/p", Method::DELETE), None);
    assert_eq!(find(&t, "h", "/p", Method::POST), Some(0));
}

#[test]
fn duplicates_are_refused_naming_both() {
    let err = RouteTable::build(vec![
        route(0, &["b.com", "a.com"], &["/x"], &["GET"]),
        route(1, &[], &["/y"], &[]),
        route(2, &["a.com", "b.com"], &["/x"], &["GET"]),
    ])
    .unwrap_err();
    assert_eq!(err, vec![DuplicateRoutes { first: 0, second: 2 }]);
}

#[test]
fn strip_path_keeps_a_leading_slash() {
    let mut r = route(0, &[], &["/demo"], &[]);
    r.strip_path = true;
    let m = RouteMatch { route: &r, prefix_len: 5 };
    assert_eq!(m.upstream_path("/demo/hello"), "/hello");
    assert_eq!(m.upstream_path("/demo"), "/");
    let mut r2 = route(0, &[], &["/demo/"], &[]);
    r2.strip_path = true;
    let m2 = RouteMatch { route: &r2, prefix_len: 6 };
    assert_eq!(m2.upstream_path("/demo/hello"), "/hello");
}

#[test]
fn host_patterns_are_validated() {
    assert!(HostPattern::parse("api.example.com").is_ok());
    assert!(HostPattern::parse("*.example.org").is_ok());
    assert!(HostPattern::parse("a.*.org").is_err());
    assert!(HostPattern::parse("bad host").is_err());
    assert!(HostPattern::parse("*.").is_err());
}
