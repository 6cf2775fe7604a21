//! Raw bytes as what a client sends on an HTTP/1 connection: hyper parses them with the
//! listeners' settings, then every request head goes through the pipeline's checks before
//! routing (`pipeline::check_request_head`) and, when they pass, the route table. Never panics;
//! nothing over a limit gets through; the host routed by is lower-case.
#![no_main]

use std::sync::OnceLock;

use gateway_fuzz::{serve_http1, small_limits};
use gateway_userspace::{config::Config, pipeline::check_request_head, route::normalize_path};
use http::header;
use libfuzzer_sys::fuzz_target;

/// Routes by host, path prefix, method and header, so the route lookup sees every kind of match.
const ROUTES: &str = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:1"
[[services]]
name = "s"
targets = ["127.0.0.1:2"]
[[routes]]
name = "api"
service = "s"
auth = "none"
hosts = ["api.example.com", "*.example.org"]
paths = ["/v1/"]
methods = ["GET", "POST"]
strip_path = true
[[routes]]
name = "beta"
service = "s"
auth = "none"
headers = { "x-beta" = ["1", "yes"] }
[[routes]]
name = "rest"
service = "s"
auth = "none"
"#;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::load_str(ROUTES, "fuzz.toml").expect("fuzz route config is valid"))
}

fuzz_target!(|data: &[u8]| {
    let limits = small_limits();
    serve_http1(&limits, data, |req| {
        let (head, _body) = req.into_parts();
        if let Ok(host) = check_request_head(&head, &limits) {
            let target = head.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
            assert!(target <= limits.max_request_line, "a {target}-byte target passed");
            assert!(head.headers.len() <= limits.max_headers, "{} headers passed", head.headers.len());
            let declared = head.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            assert!(declared.is_none_or(|n| n <= limits.max_request_body), "declared body {declared:?} passed");
            if let Some(host) = &host {
                assert_eq!(host, &host.to_ascii_lowercase(), "host is not lower-cased");
            }
            if let Ok(normalized) = normalize_path(head.uri.path()) {
                let path = normalized.as_deref().unwrap_or(head.uri.path());
                if let Some(found) = config().routes.find(host.as_deref(), path, &head.method, &head.headers) {
                    let _ = found.upstream_path(path);
                }
            }
        }
        async {}
    });
});
