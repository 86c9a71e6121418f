"""The hot path, measured as server CPU per request: five targets in one run, alternating.

- ``bare_asgi``: a hello-world ASGI app under uvicorn (uvloop, httptools): the floor;
- ``healthz``: the real app's ``/healthz`` (no I/O: routing and every middleware);
- ``catalog``: ``GET /products`` served from the app cache;
- ``orders_hit``: ``GET /orders`` with one user's token (served from the app cache);
- ``orders_cold``: ``GET /orders`` rotating over every seeded user's token, the cache emptied
  before each round (nearly every request a miss: the share is reported);
- ``catalog_traced``, ``orders_cold_traced``: the same two on a second API process with
  OpenTelemetry on (patterns/tracing.py), exporting every span to a local OTLP receiver
  (devstack/otlp.py): what tracing costs per request.

Each target gets ``--rounds`` turns of ``--duration`` seconds, in turn, so machine noise hits all
of them alike. For each: req/s, p50, p99 and **CPU ms per request** (process CPU time over
requests, from /proc) of the API process and of the Postgres backends serving it: a figure
that holds on a shared machine, where req/s does not. The seed is the issue's volume (1.2M
orders over 10,000 users) in a scratch database on DATABASE_URL's server (unset: a throwaway
server); ``--keep`` keeps it and ``--reuse`` reuses it.

    python -m bench.hot_path [--orders 1200000] [--users 10000] [--rounds 2] [--duration 5]

Results go to ``bench/results/hot_path.json``. One API process, one load client (the asyncio
client of ``bench.loadgen``, which can rotate tokens) sharing the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from redis import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.api_process import uvicorn_command, wait_until_healthy
from devstack.otlp import OtlpReceiver, otlp_receiver
from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.auth.security import create_access_token
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.migrate import upgrade_to_head
from {{ cookiecutter.project_slug }}.seed import Volume, seed_volume

from .loadgen import LoadResult, run_asyncio_load
from .read_path import HELLO, _wait_listening
from .scratch import admin, cpu_seconds, database_url
from .services import services

RESULTS = Path(__file__).parent / "results" / "hot_path.json"
DATABASE = "{{ cookiecutter.project_slug }}_bench_hot_path"
PAGE = 50


async def _seed(volume: Volume) -> None:
    engine = create_async_engine(database_url(DATABASE))
    try:
        async with engine.begin() as connection:
            await seed_volume(connection, volume)
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM ANALYZE"))
    finally:
        await engine.dispose()


def prepare(volume: Volume, reuse: bool) -> float | None:
    """Create, migrate and seed the scratch database; seconds spent (None: reused)."""
    # DATABASE is this module's constant, never input.
    exists = asyncio.run(admin(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"))  # noqa: S608
    if reuse and exists:
        print(f"reusing {DATABASE}")
        return None
    started = time.perf_counter()
    asyncio.run(
        admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', f'CREATE DATABASE "{DATABASE}"')
    )
    upgrade_to_head(database_url(DATABASE))
    print(f"seeding {volume.orders:,} orders over {volume.users:,} users ...", flush=True)
    asyncio.run(_seed(volume))
    return time.perf_counter() - started


async def _user_ids() -> tuple[list[UUID], UUID]:
    """Every user that has orders, and one with the median count (a full, typical page)."""
    connection = await asyncpg.connect(database_url(DATABASE, "postgresql"))
    try:
        rows = await connection.fetch(
            "SELECT user_id, count(*) AS n FROM orders GROUP BY user_id ORDER BY n"
        )
    finally:
        await connection.close()
    return [row["user_id"] for row in rows], rows[len(rows) // 2]["user_id"]


async def _backend_pids() -> list[int]:
    """The Postgres backends connected to the scratch database (the API's pool)."""
    connection = await asyncpg.connect(database_url("postgres", "postgresql"))
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = $1 AND backend_type = 'client backend'",
            DATABASE,
        )
    finally:
        await connection.close()
    return [row["pid"] for row in rows]


@dataclass
class Target:
    name: str
    pid: int
    port: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    rotate: list[dict[str, str]] = field(default_factory=list)
    postgres: bool = False
    before: Callable[[], None] | None = None
    results: list[LoadResult] = field(default_factory=list)
    api_cpu: float = 0.0
    postgres_cpu: float = 0.0
    misses: float = 0.0


def measure(target: Target, duration: float, connections: int) -> None:
    if target.before is not None:
        target.before()
    pids = asyncio.run(_backend_pids()) if target.postgres else []
    api_before = cpu_seconds(target.pid)
    pg_before = {pid: cpu_seconds(pid) for pid in pids}
    result = asyncio.run(
        run_asyncio_load(
            "127.0.0.1",
            target.port,
            target.path,
            connections=connections,
            duration=duration,
            headers=target.headers,
            rotate=target.rotate,
        )
    )
    target.api_cpu += cpu_seconds(target.pid) - api_before
    if target.postgres:
        after = asyncio.run(_backend_pids())
        target.postgres_cpu += sum(cpu_seconds(pid) - pg_before.get(pid, 0.0) for pid in after)
    target.results.append(result)
    print(
        f"  {target.name:<12} {result.rps:>8.0f} req/s  p50 {result.p50_ms:>7.2f} ms"
        f"  p99 {result.p99_ms:>7.2f} ms  errors {result.errors}",
        flush=True,
    )


def summary(target: Target) -> dict[str, Any]:
    requests = sum(r.requests for r in target.results)
    seconds = sum(r.seconds for r in target.results)
    figures: dict[str, Any] = {
        "requests": requests,
        "errors": sum(r.errors for r in target.results),
        "rps": round(requests / seconds, 1) if seconds else 0.0,
        "p50_ms": round(statistics.median(r.p50_ms for r in target.results), 2),
        "p99_ms": round(max(r.p99_ms for r in target.results), 2),
        "api_cpu_ms_per_request": round(target.api_cpu / requests * 1000, 3) if requests else None,
    }
    if target.postgres:
        figures["postgres_cpu_ms_per_request"] = (
            round(target.postgres_cpu / requests * 1000, 3) if requests else None
        )
    if target.name.startswith("orders_cold"):
        figures["cache_miss_share"] = round(target.misses / requests, 3) if requests else None
    return figures


def _metric(port: int, name: str, labels: str) -> float:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    pattern = re.escape(name) + r"\{([^}]*)\} ([0-9.e+]+)"
    return sum(float(value) for found, value in re.findall(pattern, body) if labels in found)


def _miss_counter(port: int) -> float:
    return _metric(port, "cache_requests_total", 'outcome="miss",region="order-summaries"')


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path")
    parser.add_argument("--orders", type=int, default=1_200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--products", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=2, help="turns per target")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per turn")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--reuse", action="store_true", help="reuse a kept scratch database")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    with services(), otlp_receiver(keep_spans=False) as receiver:
        # DATABASE_URL / REDIS_URL, or throwaway servers (as make dev does)
        return _run(args, receiver)


def _run(args: argparse.Namespace, receiver: OtlpReceiver) -> dict[str, Any]:
    volume = Volume(users=args.users, orders=args.orders, products=args.products)
    seed_seconds = prepare(volume, args.reuse)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        return _measure(args, seed_seconds, processes, receiver)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        if not args.keep:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))


def _measure(
    args: argparse.Namespace,
    seed_seconds: float | None,
    processes: list[subprocess.Popen[bytes]],
    receiver: OtlpReceiver,
) -> dict[str, Any]:
    users, typical = asyncio.run(_user_ids())
    secret = secrets.token_urlsafe(48)
    prefix = f"bench-{secrets.token_hex(4)}"  # this run's cache keys only
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    env = {
        **os.environ,
        "DATABASE_URL": database_url(DATABASE),
        "REDIS_URL": redis_url,
        "SECRET_KEY": secret,
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "WARNING",
        "CACHE_KEY_PREFIX": prefix,
    }
    settings = Settings(
        _env_file=None,
        database_url=env["DATABASE_URL"],
        redis_url=redis_url,
        secret_key=secret,
        environment="test",
    )

    def bearer(user_id: UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {create_access_token(user_id, settings)[0]}"}

    tokens = [bearer(user_id) for user_id in users]
    hello_port, api_port, traced_port = free_port(), free_port(), free_port()
    hello = subprocess.Popen([sys.executable, "-c", HELLO.replace("{port}", str(hello_port))])  # noqa: S603
    processes.append(hello)
    api = subprocess.Popen(uvicorn_command(api_port), env=env)  # noqa: S603
    processes.append(api)
    # Every span exported (the SDK's default sampler), in batches as in production.
    traced_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "bench"}
    traced_env["OTEL_BSP_SCHEDULE_DELAY"] = "500"  # ms: the last batch arrives soon after the load
    traced = subprocess.Popen(uvicorn_command(traced_port), env=traced_env)  # noqa: S603
    processes.append(traced)
    _wait_listening(hello_port)
    wait_until_healthy(api, f"http://127.0.0.1:{api_port}")
    wait_until_healthy(traced, f"http://127.0.0.1:{traced_port}")
    redis = Redis.from_url(redis_url)

    def empty_order_cache() -> None:
        keys = list(redis.scan_iter(f"{prefix}:order-summaries:*", count=1000))
        for start in range(0, len(keys), 1000):
            redis.delete(*keys[start : start + 1000])

    orders = f"/orders?limit={PAGE}"
    targets = [
        Target("bare_asgi", hello.pid, hello_port, "/"),
        Target("healthz", api.pid, api_port, "/healthz"),
        Target("catalog", api.pid, api_port, f"/products?limit={PAGE}", postgres=True),
        Target("orders_hit", api.pid, api_port, orders, bearer(typical), postgres=True),
        Target(
            "orders_cold",
            api.pid,
            api_port,
            orders,
            rotate=tokens,
            postgres=True,
            before=empty_order_cache,
        ),
        Target("catalog_traced", traced.pid, traced_port, f"/products?limit={PAGE}", postgres=True),
        Target(
            "orders_cold_traced",
            traced.pid,
            traced_port,
            orders,
            rotate=tokens,
            postgres=True,
            before=empty_order_cache,
        ),
    ]
    for target in targets:  # warm-up: connections, pools, prepared statements, the cache
        check = httpx.get(
            f"http://127.0.0.1:{target.port}{target.path}",
            headers=target.headers or (target.rotate[0] if target.rotate else {}),
            timeout=10,
        )
        assert check.status_code == 200, (target.name, check.status_code, check.text[:500])
        asyncio.run(
            run_asyncio_load(
                "127.0.0.1",
                target.port,
                target.path,
                connections=args.connections,
                duration=1.0,
                headers=target.headers,
                rotate=target.rotate,
            )
        )
    for turn in range(args.rounds):
        print(f"round {turn + 1}/{args.rounds}", flush=True)
        for target in targets:
            cold = target.name.startswith("orders_cold")
            misses = _miss_counter(target.port) if cold else 0.0
            measure(target, args.duration, args.connections)
            if cold:
                target.misses += _miss_counter(target.port) - misses
    redis.close()
    # At least one span (the server span) per traced request, once the last batch arrived.
    traced_requests = sum(
        r.requests for t in targets if t.name.endswith("_traced") for r in t.results
    )
    deadline = time.monotonic() + 10
    while receiver.span_count < traced_requests and time.monotonic() < deadline:
        time.sleep(0.1)

    results: dict[str, Any] = {
        "orders": args.orders,
        "users": args.users,
        "page": PAGE,
        "connections": args.connections,
        "rounds": args.rounds,
        "seconds_per_round": args.duration,
        "client": "asyncio",
        "targets": {target.name: summary(target) for target in targets},
        "spans_exported": receiver.span_count,
        "seed_seconds": round(seed_seconds, 1) if seed_seconds else None,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{args.orders:,} orders, {args.users:,} users, {args.connections} connections")
    print(f"{'':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'API CPU ms':>12}{'PG CPU ms':>11}")
    for name, figures in results["targets"].items():
        pg = figures.get("postgres_cpu_ms_per_request")
        print(
            f"{name:<14}{figures['rps']:>9.0f}{figures['p50_ms']:>9.2f}{figures['p99_ms']:>9.2f}"
            f"{figures['api_cpu_ms_per_request']:>12.3f}{'' if pg is None else f'{pg:.3f}':>11}"
        )
    print(f"-> {args.output}")
    return results


if __name__ == "__main__":
    main()
