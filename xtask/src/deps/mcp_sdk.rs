//! The official MCP Python SDK (PyPI `mcp`, pinned) in a venv under target/: the e2e test
//! `tests/e2e/mcp.rs` drives `gatewayd mcp` with it as the client.

use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd::{exec, succeeds, workspace_root};

/// Pinned: the test relies on its `Client` API (mcp 2.x).
const MCP_SDK: &str = "mcp==2.3.0";

pub fn ensure() -> Result<()> {
    let venv = workspace_root().join("target/mcp-venv");
    let python = venv.join("bin/python");
    let wanted = MCP_SDK.replace("==", " ");
    let has_it = || {
        Command::new(&python)
            .args(["-c", "import importlib.metadata as m; print('mcp', m.version('mcp'))"])
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == wanted)
    };
    if has_it() {
        return Ok(());
    }
    eprintln!("xtask: installing the MCP Python SDK ({MCP_SDK}) in {}", venv.display());
    if !python.exists() {
        exec(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    exec(Command::new(&python).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", MCP_SDK]))?;
    if !has_it() || !succeeds(Command::new(&python).args(["-c", "from mcp import Client, StdioServerParameters"])) {
        bail!("{MCP_SDK} was installed in {} but does not import", venv.display());
    }
    Ok(())
}
