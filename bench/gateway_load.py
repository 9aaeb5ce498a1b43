"""Callers of a fleet of LiteLLM proxies (load mode ``gateway``), in a load process.

Each tenant's ``workers`` loop, backlogged: a chat completion to the next proxy (round robin,
with the tenant's key, so the proxy knows its team), input of ``input`` words and
``max_tokens`` from ``max_output``. A 429 is waited out as an SDK would, by its
``retry-after`` (else a capped exponential backoff), and the call asked again, until the
run ends. The process prints ``ready``, waits for the run's zero time (wall clock) on stdin,
and starts no call ``duration`` after it. One record per successful call
(:mod:`bench.metrics`): granted = when its successful attempt started.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
import time
from typing import Any

import openai

BACKOFF_BASE, BACKOFF_CAP = 0.25, 4.0
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while")


async def gateway_load(spec: dict[str, Any]) -> dict[str, Any]:
    urls: list[str] = spec["urls"]
    print("ready", flush=True)
    line = await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), 600)
    epoch = float(line)
    end = epoch + float(spec["duration"])
    records: list[list[Any]] = []
    counts = {"ok": 0, "refused": 0, "errors": 0, "gave_up": 0}
    clients: dict[tuple[str, str], openai.AsyncOpenAI] = {}
    turn = itertools.count()

    def client(url: str, key: str) -> openai.AsyncOpenAI:
        if (url, key) not in clients:
            clients[url, key] = openai.AsyncOpenAI(
                base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300
            )
        return clients[url, key]

    async def worker(tenant: dict[str, Any], n: int) -> None:
        rng = random.Random(f"{spec.get('seed', 1)}-{tenant['name']}-{n}")
        while time.time() < end:
            words = rng.randint(*tenant["input"])
            messages: Any = [{"role": "user", "content": " ".join(rng.choices(WORDS, k=words))}]
            max_tokens = rng.randint(*tenant["max_output"])
            for attempt in itertools.count():
                caller = client(urls[next(turn) % len(urls)], tenant["key"])
                started = time.time()
                try:
                    reply = await caller.chat.completions.create(
                        model=spec["model"], messages=messages, max_tokens=max_tokens
                    )
                except openai.RateLimitError as refused:
                    counts["refused"] += 1
                    delay = _retry_after(refused) or rng.uniform(
                        0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
                    )
                    if time.time() + delay >= end:
                        counts["gave_up"] += 1
                        return
                    await asyncio.sleep(delay)
                    continue
                except openai.APIError:
                    counts["errors"] += 1
                    await asyncio.sleep(BACKOFF_BASE)
                    break
                counts["ok"] += 1
                used = reply.usage
                assert used is not None
                records.append(
                    [
                        tenant["name"],
                        3,
                        started - epoch,
                        time.time() - epoch,
                        0.0,
                        time.time() - started,
                        used.prompt_tokens,
                        max_tokens,
                        used.completion_tokens,
                    ]
                )
                break

    await asyncio.gather(*(worker(t, n) for t in spec["tenants"] for n in range(int(t["workers"]))))
    for each in clients.values():
        await each.close()
    return {"records": records, "counts": counts}


def _retry_after(error: openai.APIStatusError) -> float | None:
    value = error.response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
