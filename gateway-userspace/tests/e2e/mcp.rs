//! `gatewayd mcp` driven by the official MCP Python SDK (`tests/e2e/mcp_client.py`, in the venv
//! `cargo xtask deps` makes under target/), against gatewayd with its XDP guard in a network
//! namespace: the client lists the tools, calls every read-only one, asks for an XDP block and
//! sees it pending; the block is not applied until `gatewayd approve`, then the source is
//! dropped at the NIC. A wrong approval token is refused; a person's token approves an unblock
//! over the streamable HTTP transport; the host rejects the rest; every step is in the audit
//! log. Needs root.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{
    netns::VethPair,
    support::{BIN, ConfigBuilder, Ports, eventually},
    xdp::{HTTP_PORT, NsGateway, PinDir, SHORT, get_from, rate_limited_guard},
};

const MCP_HTTP: &str = "127.0.0.1:19181";

const TOOLS: &[&str] = &[
    "approve_change",
    "certificate_expiry",
    "change_status",
    "drain_target",
    "issuer_health",
    "limit_usage",
    "list_changes",
    "metrics_query",
    "recent_refusals",
    "reload",
    "revoke_jti",
    "routes",
    "status",
    "top_offenders",
    "xdp_block",
    "xdp_unblock",
];

/// The venv's Python with the pinned SDK; missing means `cargo xtask deps` was not run: fail.
fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mcp-venv/bin/python");
    assert!(python.exists(), "{} missing: run `cargo xtask deps` (it installs the MCP Python SDK)", python.display());
    python
}

/// One step of the Python client; its JSON answer.
fn client(server: &str, step: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/mcp_client.py");
    let out = Command::new(python()).arg(script).arg(server).args(step).output().expect("run the MCP client");
    assert!(
        out.status.success(),
        "MCP client {step:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("client output: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "gatewayd: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON answer")
}

/// `gatewayd mcp --http` (streamable HTTP on `admin.mcp_listen`), killed on drop.
struct McpHttp(Child);

impl McpHttp {
    fn start(dir: &Path, admin_socket: &Path) -> McpHttp {
        let config = dir.join("mcp.toml");
        // Only the [admin] part matters to `gatewayd mcp`; the rest makes the file valid.
        let (unused, metrics) = (SocketAddr::from(([127, 0, 0, 1], 1)), SocketAddr::from(([127, 0, 0, 1], 2)));
        let ports = Ports { listen: unused, metrics, dir: dir.to_owned() };
        let text = ConfigBuilder::new(&ports)
            .listener("unused", unused)
            .admin_socket(admin_socket)
            .admin(&format!("mcp_listen = \"{MCP_HTTP}\""))
            .build();
        std::fs::write(&config, text).expect("mcp config");
        let child = Command::new(BIN)
            .args(["mcp", "--http", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gatewayd mcp --http");
        let addr: SocketAddr = MCP_HTTP.parse().expect("address");
        eventually(Duration::from_secs(10), || TcpStream::connect(addr).ok()).expect("mcp --http listening");
        McpHttp(child)
    }
}

impl Drop for McpHttp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn audit_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_some())
        .collect()
}

fn has_event(events: &[serde_json::Value], event: &str, id: &str) -> bool {
    events.iter().any(|e| e["event"] == event && e["change"]["id"] == id)
}

#[test]
fn agent_changes_wait_for_a_person_and_read_only_tools_answer() {
    let net = VethPair::new("mcp", 41, 1);
    let target: Ipv4Addr = net.clients[0];
    let pins = PinDir::new("mcp");
    let logs = tempfile::tempdir().expect("tempdir");
    let audit = logs.path().join("audit.log");
    let extra = format!("{}\n[audit]\npath = \"{}\"\n", rate_limited_guard(&pins), audit.display());
    let gw = NsGateway::start(&net.gw, net.gw_addr, &extra);
    let socket = gw.dir().join("admin.sock");
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    assert_eq!(get_from(&net.peer, target, dst, "/demo/hello", SHORT), Ok(200));
    assert_eq!(get_from(&net.peer, target, dst, "/nowhere", SHORT), Ok(404));
    eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&audit).ok().filter(|t| t.contains("\"status_code\":404")).map(|_| ())
    })
    .expect("the refusal in the audit log");

    // stdio: the SDK starts `gatewayd mcp` itself.
    let stdio = format!("stdio:{BIN}:{}", socket.display());
    let cidr = format!("{target}/32");
    let explored = client(&stdio, &["explore", &cidr]);
    let tools: Vec<&str> = explored["tools"].as_array().expect("tools").iter().filter_map(|t| t.as_str()).collect();
    assert_eq!(tools, TOOLS, "{explored:#}");
    for (name, res) in explored["read_only"].as_object().expect("read-only results") {
        assert_eq!(res["is_error"], false, "{name}: {res}");
    }
    let read = |name: &str| explored["read_only"][name]["text"].as_str().unwrap_or_default().to_owned();
    assert!(read("status").contains("\"generation\""), "{}", read("status"));
    assert!(read("routes").contains("127.0.0.1:8081") && read("routes").contains("\"up\": true"), "{}", read("routes"));
    assert!(read("recent_refusals").contains("\"/nowhere\""), "{}", read("recent_refusals"));
    assert!(read("metrics_query").contains("gateway_http_requests_total"), "{}", read("metrics_query"));
    assert!(read("top_offenders").contains("tracked_sources"), "{}", read("top_offenders"));

    let block = &explored["block"];
    let block_id = block["id"].as_str().expect("change id").to_owned();
    assert_eq!(block["state"], "pending", "{block}");
    assert!(block["summary"].as_str().is_some_and(|s| s.contains(&cidr)), "{block}");
    let reload_id = explored["reload"]["id"].as_str().expect("reload id").to_owned();
    assert_eq!(explored["wrong_token"]["is_error"], true, "{explored:#}");
    assert!(explored["wrong_token"]["text"].as_str().is_some_and(|t| t.contains("wrong_token")), "{explored:#}");
    assert_eq!(explored["block_after_wrong_token"]["state"], "pending");

    // Pending is not applied: the source is still served, no admin deny entry.
    assert_eq!(get_from(&net.peer, target, dst, "/demo/hello", SHORT), Ok(200), "applied before approval");
    assert_eq!(gw.metric("gateway_xdp_deny_entries", &[("origin", "admin")]), 0.0);
    let listed = json_of(&gw.cli(&["changes"]));
    let pending: Vec<&str> = listed["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["state"] == "pending")
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert!(pending.contains(&block_id.as_str()) && pending.contains(&reload_id.as_str()), "{listed:#}");

    // A person on the host approves the block: the guard drops the source.
    let approved = json_of(&gw.cli(&["approve", &block_id]));
    assert_eq!(approved["state"], "applied", "{approved:#}");
    assert_eq!(approved["approved_by"], "host");
    assert_eq!(gw.metric("gateway_xdp_deny_entries", &[("origin", "admin")]), 1.0);
    assert!(get_from(&net.peer, target, dst, "/demo/hello", SHORT).is_err(), "blocked source still served");
    // Listed once it has dropped something (the request above).
    let top = String::from_utf8_lossy(&gw.cli(&["xdp", "top"]).stdout).into_owned();
    assert!(top.lines().any(|l| l.starts_with(&cidr) && l.contains("admin")), "{top}");
    let again = gw.cli(&["approve", &block_id]);
    assert!(!again.status.success(), "a change was approved twice");

    // Streamable HTTP: the block is applied, the reload still waits; an unblock is approved
    // with the token a person hands out (from `gatewayd changes` on the host).
    let http = McpHttp::start(logs.path(), &socket);
    let url = format!("http://{MCP_HTTP}/mcp");
    let states = client(&url, &["status", &block_id, &reload_id]);
    assert_eq!(states["changes"][&block_id]["state"], "applied", "{states:#}");
    assert_eq!(states["changes"][&reload_id]["state"], "pending", "{states:#}");
    let unblock = client(&url, &["unblock", &cidr]);
    let unblock_id = unblock["unblock"]["id"].as_str().expect("unblock id").to_owned();
    let listed = json_of(&gw.cli(&["changes"]));
    let token = listed["changes"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["id"] == unblock_id.as_str()))
        .and_then(|c| c["approval_token"].as_str())
        .expect("token of the pending unblock")
        .to_owned();
    let approved = client(&url, &["approve", &unblock_id, &token]);
    assert_eq!(approved["approve"]["is_error"], false, "{approved:#}");
    assert!(approved["approve"]["text"].as_str().is_some_and(|t| t.contains("\"applied\"")), "{approved:#}");
    assert_eq!(get_from(&net.peer, target, dst, "/demo/hello", SHORT), Ok(200), "unblocked source refused");
    drop(http);
    // The reload nobody approved is rejected on the host; it can no longer be approved.
    let rejected = json_of(&gw.cli(&["reject", &reload_id, "--reason", "not now"]));
    assert_eq!(rejected["state"], "rejected", "{rejected:#}");
    assert!(!gw.cli(&["approve", &reload_id]).status.success(), "a rejected change was approved");

    let events = eventually(Duration::from_secs(10), || {
        let events = audit_events(&audit);
        has_event(&events, "change_rejected", &reload_id).then_some(events)
    })
    .unwrap_or_else(|| panic!("audit events:\n{}", std::fs::read_to_string(&audit).unwrap_or_default()));
    for (event, id) in [
        ("change_requested", &block_id),
        ("change_approval_refused", &block_id),
        ("change_approved", &block_id),
        ("change_applied", &block_id),
        ("change_requested", &reload_id),
        ("change_requested", &unblock_id),
        ("change_approved", &unblock_id),
        ("change_rejected", &reload_id),
    ] {
        assert!(has_event(&events, event, id), "no {event} for {id}: {events:#?}");
    }
    assert!(!has_event(&events, "change_approved", &reload_id), "the reload was never approved");
    let approvals: Vec<_> =
        events.iter().filter(|e| e["event"] == "change_approved").map(|e| e["change"]["approved_by"].clone()).collect();
    assert_eq!(approvals, [serde_json::json!("host"), serde_json::json!("token")]);
    assert!(!std::fs::read_to_string(&audit).unwrap_or_default().contains(&token), "the approval token was logged");
    assert!(!gw.stderr().contains(&token), "the approval token was logged");
}
