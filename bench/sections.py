"""The tables of BENCHMARKS.md, one function per scenario (each takes the scenario's
results and returns its markdown section); :mod:`bench.scenarios` registers them."""

from __future__ import annotations

from typing import Any


def f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def codes(counts: dict[str, int] | None) -> str:
    """Failed RPCs by gRPC code, largest first ("0" for none)."""
    if not counts:
        return "0"
    return ", ".join(f"{code} {n:,}" for code, n in sorted(counts.items(), key=lambda i: -i[1]))


def overhead(r: dict[str, Any]) -> str:
    rows = [
        [
            row["server"],
            str(row["concurrency"]),
            f(row["pairs_per_s"]),
            f"{f(row['ratio_to_echo'], 2)} ({f(row['ratio_min'], 2)}-{f(row['ratio_max'], 2)})",
            f"{f(row['acquire_p50_ms'], 2)} / {f(row['acquire_p99_ms'], 2)}",
            f(row["acquire_p99_ratio_to_echo"], 2),
            f(row["server_cpu_us_per_pair"]),
            f(row["redis_cpu_us_per_pair"]),
            f"{f(row['load_cpu_us_per_pair'])} ({f(row['load_cpu_cores'], 2)})",
            codes(row["errors_by_code"]),
        ]
        for row in r["rows"]
    ]
    echoes = [row for row in r["rows"] if row["server"] == "echo"]
    bound = [str(row["concurrency"]) for row in echoes if row["server_bound"]]
    verdict = (
        "The echo runs were server-bound at every concurrency"
        if len(bound) == len(echoes)
        else f"The echo runs were server-bound only at concurrency {', '.join(bound) or 'none'}"
    )
    return (
        f"### Overhead (median of {r['reps']} interleaved runs of {r['duration_s']:g} s)\n\n"
        "Load: the Go generator (grpc-go, closed loop, one core: `GOMAXPROCS=1`), "
        "Acquire+Release pairs. Ratio = admitd pairs/s / echo pairs/s measured moments apart "
        "in the same repetition (median, with min-max over repetitions); p99 / echo likewise "
        "for Acquire's p99. CPU columns: CPU time per pair of the server process, of "
        "redis-server and of the generator (with the share of a core it used) over the "
        f"measured window, from /proc. {verdict} (generator below "
        f"{r['server_bound_below']:.0%} of its core), so the echo's pace is the server's.\n\n"
        + table(
            [
                "server",
                "concurrency",
                "pairs/s",
                "ratio to echo",
                "Acquire p50 / p99 ms",
                "p99 / echo",
                "server CPU us/pair",
                "redis CPU us/pair",
                "generator CPU us/pair (cores)",
                "failed RPCs",
            ],
            rows,
        )
        + "\n\n![overhead](bench/results/overhead.png)"
    )


def overload(r: dict[str, Any]) -> str:
    factors = sorted({row["factor"] for row in r["rows"]})
    rows = [
        [
            row["server"],
            f"{row['factor']:g}x",
            f(row["capacity_pairs_per_s"]),
            f(row["offered_per_s"]),
            f(row["pairs_per_s"]),
            f"{row['served_share']:.0%}" if row["served_share"] is not None else "-",
            f"{f(row['pair_p50_ms'], 1)} / {f(row['pair_p99_ms'], 1)}",
            codes(row["errors_by_code"]),
            codes(row["refusals"]),
            f(row["unexplained_failures"]),
            f(row["leases_left"]),
        ]
        for row in r["rows"]
    ]
    return (
        f"### Overload ({r['duration_s']:g} s open loop past capacity)\n\n"
        "Capacity = pairs/s each server served in a closed-loop run just before (64 callers); "
        "the Go generator then starts pairs at the offered rate "
        f"({', then '.join(f'{x:g}x' for x in factors)} that server's own capacity) "
        "whatever the answers, each RPC "
        f"with a {r['deadline_s']:g} s deadline. The goal (every failure an explained "
        f"refusal) is judged at {r['goal_factor']:g}x: a refusal costs ~0.4 of a served pair "
        "(`bench.server_cost --refusals`), so at 2x refusing what a replica cannot serve "
        "takes ~0.8 of its core. Served = pairs completed / pairs started. "
        "Refusals = RESOURCE_EXHAUSTED by ErrorInfo reason; unexplained = failed RPCs that "
        "are not a refusal with a reason and a RetryInfo; leases left = leases still reserved "
        "once the run is over (granted to callers that had given up).\n\n"
        + table(
            [
                "server",
                "load",
                "capacity pairs/s",
                "offered pairs/s",
                "served pairs/s",
                "served",
                "pair p50 / p99 ms",
                "failed RPCs",
                "refusals",
                "unexplained",
                "leases left",
            ],
            rows,
        )
    )


def replicas(r: dict[str, Any]) -> str:
    rows = [
        [
            row["lineup"],
            f(row["pairs_per_s"]),
            f(row["ratio_to_one_echo"], 2),
            f"{f(row['pair_p50_ms'], 1)} / {f(row['pair_p99_ms'], 1)}",
            f(row["servers_cpu_us_per_pair"]),
            f(row["redis_cpu_us_per_pair"]),
            f(row["redis_cpu_cores"], 2),
            f(row["pairs_per_s_at_one_redis_core"]),
            f"{f(row['load_cpu_us_per_pair'])} ({f(row['load_cpu_cores'], 2)})",
            codes(row["errors_by_code"]),
        ]
        for row in r["rows"]
    ]
    return (
        f"### Replicas on one Redis (median of {r['reps']} interleaved runs of "
        f"{r['duration_s']:g} s, {r['concurrency']} callers spread over the processes)\n\n"
        "admitd replicas share one Redis (one key prefix); the echo lines are the same "
        "stack doing nothing, one and two processes. Servers CPU = all the lined-up "
        "processes together, per pair; one Redis core = 1,000,000 / redis-server us per "
        "pair, the most pairs/s any number of replicas can get from one Redis core at "
        "this cost.\n\n"
        + table(
            [
                "line-up",
                "pairs/s",
                "ratio to one echo",
                "pair p50 / p99 ms",
                "servers CPU us/pair",
                "redis-server CPU us/pair",
                "redis-server cores",
                "pairs/s at one Redis core",
                "generator CPU us/pair (cores)",
                "failed RPCs",
            ],
            rows,
        )
        + "\n\n![replicas](bench/results/replicas.png)"
    )


def fairness(r: dict[str, Any]) -> str:
    names = list(r["runs"][0]["measures"]) if r["runs"] else []  # how service is counted
    rows = []
    for run in r["runs"]:
        waits = "; ".join(
            f"{k} {f(v['p50_ms'])}/{f(v['p99_ms'])}" for k, v in run["wait_by_priority"].items()
        )
        shares = " ".join(f"{f(t['share_of_fair'], 2)}" for t in run["per_tenant"].values())
        rows.append(
            [
                run["case"],
                str(run["replicas"]),
                *(
                    f"{f(m['jain_median'], 3)} ({f(m['jain_min'], 3)})"
                    for m in run["measures"].values()
                ),
                *(
                    f"{f(m['max_diff'])} ({f(m['max_diff_in_calls'], 1)})"
                    for m in run["measures"].values()
                ),
                shares,
                waits,
                str(run["provider_429"]),
                f(run["served_share"], 2),
            ]
        )
    p = r["provider"]
    return (
        f"### Fairness ({r['duration_s']:g} s per run, Redis backend, first {r['ramp_s']:g} s "
        f"skipped; provider {p['tpm']:,} tokens/min, concurrency {p['concurrency']}, latency "
        f"{p['base_ms']:g} ms + {p['per_token_ms']:g} ms per output token)\n\n"
        f"Jain = weighted Jain's index of service / weight per {r['window_s']:g} s window "
        '(median, min in brackets), with service counted three ways: "used" = input + '
        "output tokens as Release reports them (what the fair queue equalizes: it charges "
        "the reservation at Acquire and credits the unused part back at Release, and the "
        'provider\'s tokens/min counts both alike), "VTC" = input + 2 x output tokens (the '
        'VTC paper\'s measure), "reservation" = input + max output tokens. Max diff = the '
        "largest difference in weighted service between two tenants over any interval "
        "(VTC's bound), in tokens and in units of the largest single call. Share "
        "= each tenant's used tokens / weight over its fair share (1.00 = exact), in tenant "
        "order (w1 w2 w4, or m0..m7). Queue wait p50/p99 in ms per priority class. Served = "
        "tokens used / what the provider's limit allowed.\n\n"
        + table(
            [
                "case",
                "replicas",
                *(f"Jain {name}" for name in names),
                *(f"max diff {name}" for name in names),
                "share / fair",
                "queue wait p50/p99 ms",
                "provider 429s",
                "served",
            ],
            rows,
        )
        + "\n\n![fairness](bench/results/fairness.png)"
    )


def limits(r: dict[str, Any]) -> str:
    rows = [
        [
            row["client"],
            str(row["concurrency"]),
            f(row["admitted_per_min"]),
            f(row["limit_per_min"]),
            f(row["overshoot_tokens"]) if row["replicas"] else "n/a",
            f(row["headroom_tokens"]),
            f"{row['provider_429']} ({row['provider_429_tpm']}/{row['provider_429_concurrency']})",
            str(row["gave_up"]),
            str(row["max_in_flight"]),
            f(row["goodput_share"], 2),
            f"{f(row['wait_p50_ms'], 1)} / {f(row['wait_p99_ms'], 1)}",
        ]
        for row in r["rows"]
    ]
    p = r["provider"]
    return (
        f"### Limits hold ({r['duration_s']:g} s per run; provider {p['tpm']:,} tokens/min, "
        f"concurrency {p['concurrency']})\n\n"
        "Tokens/min = tokens used by calls admitted in the run / its length. Overshoot = the "
        "most that tokens used by calls granted up to any moment exceeded what the limit "
        "allowed since admitd's bucket was emptied (0 = never); headroom = how close it came "
        "(tokens). 429s = provider refusals (tokens/concurrency). Goodput = tokens the "
        "provider served / what its limit allowed over the run. Wait = time from the first "
        "attempt to the start of the successful call (admitd queueing, or backoff).\n\n"
        + table(
            [
                "client",
                "concurrency",
                "tokens/min",
                "limit",
                "overshoot",
                "headroom",
                "429s (tpm/conc)",
                "gave up",
                "max in flight",
                "goodput",
                "wait p50 / p99 ms",
            ],
            rows,
        )
        + "\n\n![limits](bench/results/limits.png)"
    )


def adaptive(r: dict[str, Any]) -> str:
    p, c = r["provider"], r["configured"]
    rows = [
        [
            row["client"],
            f"{row['provider_429']} ({row['provider_429_tpm']}/{row['provider_429_concurrency']})",
            f"{row['provider_429_share']:.1%}" if row["provider_429_share"] is not None else "-",
            str(row["requests_ok"]),
            f(row["goodput_share"], 2),
            str(row["max_in_flight"]),
            f"{f(row['wait_p50_ms'], 1)} / {f(row['wait_p99_ms'], 1)}",
        ]
        for row in r["rows"]
    ]
    return (
        f"### Adaptive limits ({r['duration_s']:g} s per run, {r['workers']} backlogged "
        f"callers, 1 replica on Redis)\n\n"
        f"The provider really allows {p['tpm']:,} tokens/min and {p['concurrency']} calls at "
        f"once; admitd is configured for {c['tokens_per_minute']:,} and "
        f"{c['max_concurrency']}. Callers report a provider 429 at Release "
        "(`OUTCOME_PROVIDER_RATE_LIMITED`, with the provider's retry-after hint, which "
        "pauses the pool) and try again through admitd. 429 share = 429s / calls the "
        "provider answered; goodput = tokens served / what the provider's real limit "
        "allowed over the run.\n\n"
        + table(
            [
                "pool",
                "provider 429s (tpm/conc)",
                "429 share",
                "calls served",
                "goodput",
                "max in flight",
                "wait p50 / p99 ms",
            ],
            rows,
        )
    )


def scale(r: dict[str, Any]) -> str:
    rows = [
        [
            row["what"],
            f(row["n"]),
            row["backend"],
            f"{f(row['acquire_p50_ms'], 2)} / {f(row['acquire_p99_ms'], 2)}",
            f(row["p50_ratio_to_small"], 2),
            f(row["server_cpu_us_per_pair"]),
            f"{f(row.get('reject_p50_ms'), 2)} / {f(row.get('reject_p99_ms'), 2)}",
            str(row["errors"]),
            f(row.get("queued")),
            f(row.get("setup_s"), 0),
            f"{row['idle_cpu_share']:.0%}" if row.get("idle_cpu_share") is not None else "-",
            f(row.get("server_rss_mb"), 0),
            f(row.get("kb_per_waiter"), 1),
        ]
        for row in r["rows"]
    ]
    return (
        f"### Scale (concurrency 1, median of {r['reps']} runs of {r['duration_s']:g} s)\n\n"
        "Tenants: that many configured; each Acquire names a random one. Waiters: that many "
        "Acquires parked on a blocked pool (RPCs held open); tickets: the same queue filled "
        "with Enqueue tickets (no RPC held). Timed are Acquire+Release on another pool, and a "
        "fail-fast Acquire on the blocked pool, which takes its place in the long queue's "
        "fair order and is turned away. Ratio = p50 / p50 of the small case, measured "
        "alternately in the same run. Parked = waiters actually queued (of n); setup = time "
        f"to park them at up to {r['hold_rate']:,}/s; idle CPU = share of a core the server "
        "used while holding them with nothing else to do; KB/waiter = the server's resident "
        "memory once they were parked minus before, per waiter parked.\n\n"
        + table(
            [
                "what",
                "n",
                "backend",
                "Acquire p50 / p99 ms",
                "p50 ratio",
                "server CPU us/pair",
                "fail-fast on long queue p50 / p99 ms",
                "RPC errors",
                "parked",
                "setup s",
                "idle CPU",
                "server RSS MB",
                "KB/waiter",
            ],
            rows,
        )
        + _echo_waiters(r.get("echo_waiters"))
        + "\n\n![scale](bench/results/scale.png)"
    )


def _echo_waiters(echo: dict[str, Any] | None) -> str:
    """The floor under KB/waiter: the same Acquires held open by a no-op grpc.aio server."""
    if not echo or echo.get("kb_per_waiter") is None:
        return ""
    return (
        f"\n\nThe same {f(echo['queued'])} Acquires held open by a no-op grpc.aio server "
        "(`python -m bench.echo --park`: its handler awaits a future never set) cost "
        f"{f(echo['kb_per_waiter'], 1)} KB each: what gRPC core's call and grpc.aio's task "
        "and coroutines take before admitd does anything, the floor under its KB/waiter."
    )


def profile(r: dict[str, Any]) -> str:
    parts = []
    for kind in ("memory", "redis"):
        v = r[kind]
        main_us = (v["server_cpu_us_per_pair"] or 0) * v["thread_share"].get("main", 0)
        threads = ", ".join(f"{n} {s:.0%}" for n, s in v["thread_share"].items() if s >= 0.01)
        redis = (
            f"; redis-server {f(v['redis_cpu_us_per_pair'])} us, of which the scripts "
            f"(EVALSHA) took {f(v.get('script_us_per_call'))} us per call as Redis counts it, "
            f"and the {f(v.get('script_commands_per_call'), 1)} Redis commands each script "
            f"ran only {f(v.get('script_commands_us_per_call'))} us of that: the rest is Lua"
            if v.get("redis_cpu_us_per_pair")
            else ""
        )
        rows = [[c, f"{s:.0%}", f(s * main_us)] for c, s in v["categories"].items() if s >= 0.01]
        funcs = [[name, f"{s:.0%}", f(s * main_us)] for name, s in v["functions"].items()]
        parts.append(
            f"#### {kind} backend\n\n"
            f"Server CPU {f(v['server_cpu_us_per_pair'])} us per Acquire+Release pair"
            f"{redis} (threads: {threads}). Main-thread busy time by part "
            f"(us = share x main-thread CPU per pair); full tree in "
            f"`bench/results/{v['profile_text']}`:\n\n"
            + table(["part", "share", "us/pair"], rows)
            + "\n\nInclusive time of chosen functions:\n\n"
            + table(["function", "share", "us/pair"], funcs)
        )
    costs = r["telemetry"]["us_per_pair"]
    parts.append(
        "#### Telemetry\n\nThe spans, counters and histograms of one served Acquire+Release, "
        "timed alone (median of 5 runs): "
        + ", ".join(f"{f(us, 1)} us with {label}" for label, us in costs.items())
        + "."
    )
    return "### Profile (concurrency 16, pyinstrument, steady state)\n\n" + "\n\n".join(parts)
