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


async def start_cli(
    node: str, target: Harness | int, command: str, *args: str, stdin: bool = False
) -> asyncio.subprocess.Process:
    """Start ``node clients/node/cli.js COMMAND --target <target> ARGS``, against a harness
    or a port on 127.0.0.1; ``stdin``: a pipe to write to it."""
    port = target if isinstance(target, int) else target.server.port
    return await asyncio.create_subprocess_exec(
        node,
        str(NODE_CLIENT / "cli.js"),
        command,
        "--target",
        f"127.0.0.1:{port}",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _output(process: asyncio.subprocess.Process) -> tuple[int, bytes]:
    """Wait (bounded) for a CLI run to end, having written nothing to stderr: (exit status,
    what it printed)."""
    out, err = await asyncio.wait_for(process.communicate(), timeout=PROCESS)
    assert process.returncode is not None
    assert err == b"", err.decode()
    return process.returncode, out


async def finished(process: asyncio.subprocess.Process) -> tuple[int, dict[str, Any]]:
    """Wait (bounded) for a CLI run to end: (exit status, the JSON it printed last)."""
    status, out = await _output(process)
    return status, json.loads(out.splitlines()[-1])


async def cli(
    node: str, target: Harness | int, command: str, *args: str
) -> tuple[int, dict[str, Any]]:
    """Run ``node clients/node/cli.js COMMAND --target <target> ARGS``: (exit status, its
    JSON, the one thing it printed)."""
    status, out = await _output(await start_cli(node, target, command, *args))
    return status, json.loads(out)


def expiry(h: Harness, ttl: float) -> str:
    assert h.clock is not None
    moment = datetime.fromtimestamp(h.clock.wall() + ttl, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def run_node(node: str, script: str) -> Any:
    """Run a script using the module (``admitd`` is bound); the JSON it prints last."""
    prelude = f"const admitd = require({json.dumps(str(NODE_CLIENT / 'admitd.js'))});\n"
    process = await asyncio.create_subprocess_exec(
        node, "-e", prelude + script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=PROCESS)
    assert process.returncode == 0, err.decode()
    return json.loads(out.splitlines()[-1])
