"""What a rate-limit check costs: the moving window on the real Redis, shared and degraded.

1. ``--checks`` hits from ``--concurrency`` tasks against one key (the hot case: one user or
   one address), through :class:`RateLimiter` as the app uses it: checks/s, CPU ms per check in
   this process, p50/p99 latency, and how many were allowed (exactly the limit).
2. The same with Redis unreachable (a port nothing listens on): the per-instance fallback's
   cost, which is what login pays during an outage.

    python -m bench.rate_limit [--checks 5000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from {{ cookiecutter.project_slug }}.patterns.rate_limit import Policy, RateLimiter

RESULTS = Path(__file__).parent / "results" / "rate_limit.json"
DEAD_REDIS = "redis://127.0.0.1:1/0"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(redis_url: str, policy: Policy, checks: int, concurrency: int) -> dict[str, Any]:
    limiter = RateLimiter(
        redis_url,
        key_prefix=f"bench-ratelimit:{secrets.token_hex(4)}",
        timeout=0.25,
        registry=CollectorRegistry(),
    )
    key = "one-hot-key"
    latencies: list[float] = []
    allowed = 0
    queue = iter(range(checks))

    async def worker() -> None:
        nonlocal allowed
        for _ in queue:
            started = time.perf_counter()
            decision = await limiter.hit(policy, key)
            latencies.append((time.perf_counter() - started) * 1000)
            allowed += decision.allowed

    try:
        await limiter.hit(policy, "warm-up")
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await limiter.aclose()
    return {
        "checks": checks,
        "concurrency": concurrency,
        "limit": policy.limit,
        "allowed": allowed,
        "checks_per_s": round(checks / wall),
        "cpu_ms_per_check": round(cpu * 1000 / checks, 3),
        "p50_ms": round(_pct(latencies, 0.5), 3),
        "p99_ms": round(_pct(latencies, 0.99), 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.rate_limit")
    parser.add_argument("--checks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    # A limit of the size the app uses for its per-user quota: the window holds 600 entries.
    policy = Policy("bench", "600/minute", fallback="local")
    results = {
        "shared_redis": asyncio.run(_run(redis_url, policy, args.checks, args.concurrency)),
        "redis_down_local_fallback": asyncio.run(
            _run(DEAD_REDIS, policy, args.checks, args.concurrency)
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for name, figures in results.items():
        print(  # the benchmark's report
            f"rate limit ({name}): {figures['checks_per_s']} checks/s, "
            f"{figures['cpu_ms_per_check']} CPU ms/check, p50 {figures['p50_ms']} ms, "
            f"p99 {figures['p99_ms']} ms, {figures['allowed']} of {figures['checks']} allowed "
            f"(limit {figures['limit']})"
        )
    return results


if __name__ == "__main__":
    main()
