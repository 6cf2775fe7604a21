use super::*;

const GOOD: &str = r#"
[server]
workers = 2
trusted_proxies = ["10.0.0.0/8", "192.0.2.1"]

[[listeners]]
name = "public-http"
bind = "127.0.0.1:18080"

[metrics]
bind = "127.0.0.1:19090"

[[services]]
name = "payments"
targets = ["127.0.0.1:5000", "127.0.0.1:5001"]
lb = "least_conn"
connect_timeout = "2s"
read_timeout = "30s"

[[routes]]
name = "payments-api"
service = "payments"
hosts = ["api.example.com", "*.example.org"]
paths = ["/payments"]
methods = ["GET", "POST"]
strip_path = true

[auth]
default_policy = "none"
"#;

fn problems(text: &str) -> Vec<Problem> {
    match Config::load_str(text, "test.toml") {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn the_issue_example_loads() {
    let c = Config::load_str(GOOD, "test.toml").unwrap();
    assert_eq!(c.server.workers, 2);
    assert_eq!(c.server.trusted_proxies.len(), 2);
    assert_eq!(c.listeners[0].addr.port(), 18080);
    assert_eq!(c.services[0].lb, LbAlgorithm::LeastConn);
    assert_eq!(c.routes.routes().len(), 1);
    assert!(c.routes.routes()[0].strip_path);
}

#[test]
fn embedded_defaults_are_valid() {
    let c = Config::embedded().unwrap();
    assert!(c.demo.is_some());
    assert_eq!(c.listeners[0].addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.metrics.addr, "127.0.0.1:9090".parse().unwrap());
}

#[test]
fn unknown_keys_name_the_line() {
    let text = GOOD.replace("strip_path = true", "strip_path = true\nstrip_paht = false");
    let p = problems(&text);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].line, p[0].column), (27, 1), "{p:?}");
    assert_eq!(p[0].key, "strip_paht");
    assert!(p[0].reason.contains("strip_paht"), "{}", p[0].reason);
    assert!(p[0].to_string().starts_with("test.toml:27:1: strip_paht: unknown field"), "{}", p[0]);
}

#[test]
fn type_errors_name_the_line() {
    let p = problems(&GOOD.replace("workers = 2", "workers = \"lots\""));
    assert_eq!(p[0].line, 3, "{p:?}");
}

#[test]
fn semantic_errors_name_key_and_line() {
    let text =
        GOOD.replace("\"127.0.0.1:5001\"", "\"nonsense\"").replace("service = \"payments\"", "service = \"nope\"");
    let p = problems(&text);
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec!["services[0].targets[1]", "routes[0].service"], "{p:?}");
    assert_eq!(p[0].line, 15);
    assert_eq!(p[1].line, 22);
    assert!(p[1].reason.contains("unknown service"));
}

#[test]
fn route_header_conditions_with_underscores_need_underscores_in_headers() {
    let text = GOOD.replace("strip_path = true", "strip_path = true\nheaders = { \"x_version\" = [\"2\"] }");
    let p = problems(&text);
    assert_eq!((p.len(), p[0].key.as_str()), (1, "routes[0].headers.x_version"), "{p:?}");
    assert!(p[0].reason.contains("underscores_in_headers"), "{}", p[0].reason);
    let text = text.replace("workers = 2", "workers = 2\nunderscores_in_headers = true");
    assert!(Config::load_str(&text, "test.toml").is_ok());
    let p =
        problems(&GOOD.replace("default_policy = \"none\"", "default_policy = \"none\"\napi_key_header = \"x_key\""));
    assert_eq!((p.len(), p[0].key.as_str()), (1, "auth.api_key_header"), "{p:?}");
}

#[test]
fn duplicate_routes_are_refused_naming_both() {
    let dup = r#"
[[routes]]
name = "payments-copy"
service = "payments"
hosts = ["*.example.org", "api.example.com"]
paths = ["/payments"]
methods = ["POST", "GET"]
"#;
    let p = problems(&format!("{GOOD}{dup}"));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "routes[1]");
    assert!(p[0].reason.contains("\"payments-copy\"") && p[0].reason.contains("\"payments-api\""), "{}", p[0].reason);
}

#[test]
fn bad_values_are_each_reported() {
    let text = GOOD
        .replace("workers = 2", "workers = 0")
        .replace("\"10.0.0.0/8\"", "\"10.0.0.0/99\"")
        .replace("bind = \"127.0.0.1:18080\"", "bind = \"localhost\"")
        .replace("\"/payments\"", "\"payments\"")
        .replace("\"GET\"", "\"get\"")
        .replace("\"*.example.org\"", "\"a.*.org\"");
    let p = problems(&text);
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    for k in [
        "server.workers",
        "server.trusted_proxies[0]",
        "listeners[0].bind",
        "routes[0].hosts[1]",
        "routes[0].paths[0]",
        "routes[0].methods[0]",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
}

#[test]
fn no_listener_is_an_error() {
    let p = problems("[server]\nworkers = 1\n");
    assert_eq!(p[0].key, "listeners");
}

#[test]
fn sizes_and_durations_parse() {
    let text = GOOD.replace(
        "trusted_proxies",
        "limits = { max_request_body = \"1MiB\", max_header_bytes = 16384, idle_timeout = \"5s\" }\ntrusted_proxies",
    );
    let c = Config::load_str(&text, "t").unwrap();
    assert_eq!(c.server.limits.max_request_body, 1 << 20);
    assert_eq!(c.server.limits.max_header_bytes, 16384);
    assert_eq!(c.server.limits.idle_timeout, std::time::Duration::from_secs(5));
}

#[test]
fn packaged_example_config_is_valid() {
    let text = include_str!("../../../packaging/gatewayd.toml");
    let c = Config::load_str(text, "packaging/gatewayd.toml").unwrap();
    assert_eq!(c.routes.routes().len(), 1);
}

#[test]
fn connection_limits_are_checked() {
    let with = |limits: &str| GOOD.replace("trusted_proxies", &format!("limits = {{ {limits} }}\ntrusted_proxies"));
    let c = Config::load_str(&with("park_after = \"50ms\", h2_control_frames_per_second = 500"), "t").unwrap();
    assert_eq!(c.server.limits.park_after, std::time::Duration::from_millis(50));
    assert_eq!(c.server.limits.h2_control_frames_per_second, 500);
    let keys = |limits: &str| problems(&with(limits)).into_iter().map(|p| p.key).collect::<Vec<_>>();
    assert_eq!(keys("park_after = \"0s\""), ["server.limits"]);
    assert_eq!(keys("h2_control_frames_per_second = 5"), ["server.limits.h2_control_frames_per_second"]);
}

#[test]
fn body_settings_resolve_per_route() {
    let c = Config::load_str(GOOD, "t").unwrap();
    let body = &c.routes.routes()[0].body;
    assert_eq!(body.client_body_timeout, std::time::Duration::from_secs(60), "nginx's client_body_timeout");
    assert_eq!(body.request_buffer, 64 << 10, "request buffering is on by default");
    assert!(body.response_buffer.is_none(), "responses stream by default");

    let text = GOOD.replace(
        "strip_path = true",
        "strip_path = true\nrequest_buffering = false\nresponse_buffering = true\nclient_body_timeout = \"5s\"",
    );
    let c = Config::load_str(&text, "t").unwrap();
    let body = &c.routes.routes()[0].body;
    assert_eq!(body.client_body_timeout, std::time::Duration::from_secs(5));
    assert_eq!(body.request_buffer, 0);
    assert_eq!(body.response_buffer.as_ref().map(|s| s.memory), Some(32 << 10));
}

#[test]
fn bad_body_settings_are_located() {
    let text = GOOD
        .replace(
            "trusted_proxies",
            "limits = { client_body_timeout = \"0s\" }\nbuffering = { response_buffer_size = 100, temp_dir = \"/nonexistent/gatewayd\" }\ntrusted_proxies",
        )
        .replace("strip_path = true", "strip_path = true\nresponse_buffering = true");
    let p = problems(&text);
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    for k in ["server.limits.client_body_timeout", "server.buffering.response_buffer_size", "server.buffering.temp_dir"]
    {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
}

#[test]
fn mcp_listen_is_off_by_default_and_never_a_listener_address() {
    assert_eq!(Config::load_str(GOOD, "test.toml").unwrap().mcp_listen, None);
    let on = format!("{GOOD}\n[admin]\nmcp_listen = \"127.0.0.1:9181\"\n");
    assert_eq!(Config::load_str(&on, "test.toml").unwrap().mcp_listen, Some("127.0.0.1:9181".parse().unwrap()));
    let p = problems(&format!("{GOOD}\n[admin]\nmcp_listen = \"127.0.0.1:18080\"\n"));
    assert_eq!(p[0].key, "admin.mcp_listen", "{p:?}");
    assert!(p[0].reason.contains("listener"), "{p:?}");
    let p = problems(&format!("{GOOD}\n[admin]\nmcp_listen = \"nowhere\"\n"));
    assert_eq!(p[0].key, "admin.mcp_listen", "{p:?}");
}
