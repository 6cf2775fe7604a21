"""The MCP e2e test's client: the official MCP Python SDK (PyPI `mcp`, pinned by xtask deps)
against `gatewayd mcp`. Each step prints one JSON object on stdout for the Rust test to check;
anything unexpected here raises (non-zero exit, traceback on stderr).

usage: mcp_client.py SERVER STEP [ARGS…]
  SERVER: `stdio:GATEWAYD:ADMIN_SOCKET` (the client starts `gatewayd mcp`) or an http:// URL
  STEP:
    explore CIDR        list tools, call every read-only tool, request an XDP block of CIDR and a
                        reload, try the block with a wrong approval token
    status ID…          each change's state
    unblock CIDR        request an XDP unblock
    approve ID TOKEN    approve with a token
"""

import asyncio
import json
import sys

from mcp import Client, StdioServerParameters

READ_ONLY = {
    "status": {},
    "routes": {},
    "recent_refusals": {"status": "4xx", "limit": 5},
    "top_offenders": {"count": 5},
    "certificate_expiry": {},
    "issuer_health": {},
    "limit_usage": {"consumer": "nobody"},
    "metrics_query": {"name": "gateway_http_requests", "labels": {"route": "demo"}},
    "list_changes": {},
}


def server(spec):
    if spec.startswith("stdio:"):
        _, binary, socket = spec.split(":", 2)
        return StdioServerParameters(command=binary, args=["mcp", "--admin-socket", socket])
    return spec


def text(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def call(client, name, args):
    result = await client.call_tool(name, args)
    body = text(result)
    return {"is_error": bool(result.is_error), "text": body}


def answer(res):
    if res["is_error"]:
        raise SystemExit(f"tool failed: {res['text']}")
    return json.loads(res["text"])


async def main(argv):
    spec, step, args = argv[1], argv[2], argv[3:]
    out = {}
    async with Client(server(spec)) as client:
        if step == "explore":
            tools = await client.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            out["read_only"] = {}
            for name, params in READ_ONLY.items():
                res = await call(client, name, params)
                # XDP top answers an error when the guard is off; everything else must succeed.
                out["read_only"][name] = res
            block = answer(await call(client, "xdp_block", {"cidr": args[0], "for_secs": 600}))
            reload = answer(await call(client, "reload", {}))
            out["block"], out["reload"] = block, reload
            out["wrong_token"] = await call(client, "approve_change", {"id": block["id"], "token": "0" * 32})
            out["block_after_wrong_token"] = answer(await call(client, "change_status", {"id": block["id"]}))
        elif step == "status":
            out["changes"] = {i: answer(await call(client, "change_status", {"id": i})) for i in args}
        elif step == "unblock":
            out["unblock"] = answer(await call(client, "xdp_unblock", {"cidr": args[0]}))
        elif step == "approve":
            out["approve"] = await call(client, "approve_change", {"id": args[0], "token": args[1]})
        else:
            raise SystemExit(f"unknown step {step}")
    print(json.dumps(out))


asyncio.run(main(sys.argv))
