"""The Node.js example client (``clients/node``) run as a subprocess: its CLI against an
admitd, and scripts that use the module. Every run is bounded (``PROCESS``) and must write
nothing to stderr."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from support import ROOT
from support.harness import Harness

NODE_CLIENT = ROOT / "clients" / "node"
PROCESS = 60  # seconds a Node CLI run may take, its start-up included, on a loaded machine


async def start_cli(node: str, h: Harness, command: str, *args: str) -> asyncio.subprocess.Process:
    """Start ``node clients/node/cli.js COMMAND --target <h> ARGS``."""
    return await asyncio.create_subprocess_exec(
        node,
        str(NODE_CLIENT / "cli.js"),
        command,
        "--target",
        f"127.0.0.1:{h.server.port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(process: asyncio.subprocess.Process) -> tuple[int, dict[str, Any]]:
    """Wait (bounded) for a CLI run to end: (exit status, the JSON it printed last)."""
    out, err = await asyncio.wait_for(process.communicate(), timeout=PROCESS)
    assert process.returncode is not None
    assert err == b"", err.decode()
    return process.returncode, json.loads(out.splitlines()[-1])


async def cli(node: str, h: Harness, command: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``node clients/node/cli.js COMMAND --target <h> ARGS``: (exit status, its JSON)."""
    process = await start_cli(node, h, command, *args)
    out, err = await asyncio.wait_for(process.communicate(), timeout=PROCESS)
    assert process.returncode is not None
    assert err == b"", err.decode()
    return process.returncode, json.loads(out)


def expiry(h: Harness, ttl: float) -> str:
    assert h.clock is not None
    moment = datetime.fromtimestamp(h.clock.wall() + ttl, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def cli_at(node: str, port: int, command: str, *args: str) -> tuple[int, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_CLIENT / "cli.js"), command, "--target", f"127.0.0.1:{port}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return await finished(process)


async def run_node(node: str, script: str) -> Any:
    """Run a script using the module (``admitd`` is bound); the JSON it prints last."""
    prelude = f"const admitd = require({json.dumps(str(NODE_CLIENT / 'admitd.js'))});\n"
    process = await asyncio.create_subprocess_exec(
        node, "-e", prelude + script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=PROCESS)
    assert process.returncode == 0, err.decode()
    return json.loads(out.splitlines()[-1])
