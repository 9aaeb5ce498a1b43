"""The Prometheus endpoint of a test server, scraped over HTTP like Prometheus would."""

from __future__ import annotations

import asyncio
import re
import urllib.request

from support.harness import Harness


async def scrape(h: Harness) -> str:
    url = f"http://127.0.0.1:{h.server.telemetry.metrics_port}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(get)


def value(text: str, name: str, **labels: str) -> float:
    """The sample of ``name`` whose labels include ``labels`` (exactly one must match)."""
    found = []
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            found.append(float(match.group(2)))
    assert len(found) == 1, (name, labels, found)
    return found[0]
