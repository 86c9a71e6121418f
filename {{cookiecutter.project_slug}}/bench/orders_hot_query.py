"""The seed's hot query at production size: a user's newest 50 orders among 1.2M.

1. Creates a scratch database on DATABASE_URL's server (unset: a throwaway server, as
   ``make dev`` starts), migrates it and seeds 1,200,000 orders
   over 10,000 users with set-based SQL (``seed.seed_volume``), then VACUUM ANALYZE.
2. Times the statement the API runs (``orders.repository.newest_for_user``, first page) for
   random users: EXPLAIN ANALYZE execution times, and p50/p99 of client-side wall time over many
   runs.
3. Copies the database (``CREATE DATABASE ... TEMPLATE``), drops the composite index
   ``ix_orders_user_id_created_at_id`` in the copy, ANALYZEs and times the same statement there.
4. Serves the indexed database with the real app (uvicorn, uvloop, httptools, one process) and
   drives ``GET /orders`` with keep-alive connections (``bench.loadgen``): req/s, p50/p99.
5. Writes ``bench/results/orders_hot_query.json``, prints a table, drops the scratch databases
   (``--keep`` keeps them; ``--reuse`` skips step 1 when they exist).

    python -m bench.orders_hot_query [--rows 1200000] [--users 10000] [--runs 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from devstack.api_process import uvicorn_command, wait_until_healthy
from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.auth.security import create_access_token
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.migrate import upgrade_to_head
from {{ cookiecutter.project_slug }}.orders.repository import newest_for_user
from {{ cookiecutter.project_slug }}.patterns.plan_guard import explain_analyze, walk
from {{ cookiecutter.project_slug }}.seed import Volume, seed_volume

from .loadgen import LoadResult, run_load
from .scratch import admin, cpu_seconds, database_exists, database_url
from .services import services

RESULTS = Path(__file__).parent / "results" / "orders_hot_query.json"
INDEXED = "{{ cookiecutter.project_slug }}_bench_orders"
UNINDEXED = "{{ cookiecutter.project_slug }}_bench_orders_noindex"
HOT_INDEX = "ix_orders_user_id_created_at_id"
PAGE = 50
SEED_REPORTED_MS = 2480.0  # the seed's figure: this query, filesort, 1.2M rows


async def _seed(volume: Volume) -> None:
    engine = create_async_engine(database_url(INDEXED))
    try:
        async with engine.begin() as connection:
            await seed_volume(connection, volume)
        # VACUUM cannot run in a transaction; it sets the visibility map as production's
        # autovacuum would have.
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM ANALYZE"))
    finally:
        await engine.dispose()


def prepare(volume: Volume, reuse: bool) -> float | None:
    """Create, migrate and seed the indexed database and its unindexed copy; seconds spent
    (None when kept databases were reused)."""
    if reuse and asyncio.run(database_exists(INDEXED)) and asyncio.run(database_exists(UNINDEXED)):
        print("reusing the scratch databases")
        return None
    started = time.perf_counter()
    asyncio.run(
        admin(
            f'DROP DATABASE IF EXISTS "{UNINDEXED}" WITH (FORCE)',
            f'DROP DATABASE IF EXISTS "{INDEXED}" WITH (FORCE)',
            f'CREATE DATABASE "{INDEXED}"',
        )
    )
    upgrade_to_head(database_url(INDEXED))
    print(f"seeding {volume.orders:,} orders over {volume.users:,} users ...", flush=True)
    asyncio.run(_seed(volume))
    seconds = time.perf_counter() - started
    print(f"seeded in {seconds:.1f} s; copying without {HOT_INDEX} ...", flush=True)
    asyncio.run(admin(f'CREATE DATABASE "{UNINDEXED}" TEMPLATE "{INDEXED}"'))
    asyncio.run(_drop_hot_index())
    return seconds


async def _drop_hot_index() -> None:
    engine = create_async_engine(database_url(UNINDEXED))
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP INDEX {HOT_INDEX}"))
            await connection.execute(text("ANALYZE orders"))
    finally:
        await engine.dispose()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _outline(plan: dict[str, Any]) -> str:
    parts = []
    for node in walk(plan):
        label = str(node["Node Type"])
        if node.get("Scan Direction") == "Backward":
            label += " Backward"
        if "Index Name" in node:
            label += f" using {node['Index Name']}"
        parts.append(label)
    return " -> ".join(parts)


async def _users(connection: AsyncConnection, count: int) -> list[UUID]:
    result = await connection.execute(
        text("SELECT id FROM users ORDER BY random() LIMIT :count"), {"count": count}
    )
    return list(result.scalars())


async def measure_query(database: str, runs: int, explains: int, seed: int) -> dict[str, Any]:
    """Wall time of the hot statement over ``runs`` random users, and EXPLAIN ANALYZE times."""
    engine = create_async_engine(database_url(database), pool_size=1)
    rng = random.Random(seed)
    try:
        async with engine.connect() as connection:
            users = await _users(connection, 500)
            documents = [
                await explain_analyze(connection, newest_for_user(user, None, PAGE))
                for user in rng.sample(users, min(explains, len(users)))
            ]
            for user in users[:5]:  # warm-up: connection, prepared statement, caches
                await connection.execute(newest_for_user(user, None, PAGE))
            timings = []
            for _ in range(runs):
                statement = newest_for_user(rng.choice(users), None, PAGE)
                started = time.perf_counter()
                rows = (await connection.execute(statement)).all()
                timings.append((time.perf_counter() - started) * 1000)
                assert rows, "every seeded user has orders"
    finally:
        await engine.dispose()
    executions = [document["Execution Time"] for document in documents]
    return {
        "p50_ms": round(percentile(timings, 0.50), 3),
        "p99_ms": round(percentile(timings, 0.99), 3),
        "explain_p50_ms": round(statistics.median(executions), 3),
        "explain_max_ms": round(max(executions), 3),
        "plan": _outline(documents[0]["Plan"]),
        "runs": runs,
    }


async def _typical_user() -> UUID:
    """A user with the median number of orders: the page is full, the user not an outlier."""
    engine = create_async_engine(database_url(INDEXED))
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text(
                    "SELECT user_id FROM (SELECT user_id, count(*) AS n FROM orders GROUP BY 1) c"
                    " ORDER BY abs(n - (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY n)"
                    " FROM (SELECT count(*) AS n FROM orders GROUP BY user_id) m)) LIMIT 1"
                )
            )
            user_id: UUID = result.scalar_one()
            return user_id
    finally:
        await engine.dispose()


def measure_endpoint(duration: float, connections: int) -> tuple[LoadResult, float | None]:
    """Load on GET /orders; also the API process's CPU ms per request, a figure that holds
    on a machine shared with other work, where req/s does not."""
    port = free_port()
    secret = secrets.token_urlsafe(48)
    env = {
        **os.environ,
        "DATABASE_URL": database_url(INDEXED),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "SECRET_KEY": secret,
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "WARNING",
    }
    settings = Settings(
        _env_file=None,
        database_url=env["DATABASE_URL"],
        redis_url=env["REDIS_URL"],
        secret_key=secret,
        environment="test",
    )
    token, _ = create_access_token(asyncio.run(_typical_user()), settings)
    headers = {"Authorization": f"Bearer {token}"}
    server = subprocess.Popen(uvicorn_command(port), env=env)  # noqa: S603
    base_url = f"http://127.0.0.1:{port}"
    path = f"/orders?limit={PAGE}"
    try:
        wait_until_healthy(server, base_url)
        check = httpx.get(base_url + path, headers=headers, timeout=10)
        assert check.status_code == 200, check.text
        assert len(check.json()["items"]) == PAGE
        asyncio.run(run_load("127.0.0.1", port, path, duration=2.0, headers=headers))  # warm-up
        cpu_before = cpu_seconds(server.pid)
        result = asyncio.run(
            run_load(
                "127.0.0.1",
                port,
                path,
                connections=connections,
                duration=duration,
                headers=headers,
            )
        )
        cpu_after = cpu_seconds(server.pid)
        cpu_ms = None
        if result.requests:
            cpu_ms = round((cpu_after - cpu_before) / result.requests * 1000, 3)
        return result, cpu_ms
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.orders_hot_query")
    parser.add_argument("--rows", type=int, default=1_200_000, help="orders to seed")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2000, help="timed runs with the index")
    parser.add_argument("--unindexed-runs", type=int, default=40)
    parser.add_argument("--duration", type=float, default=10.0, help="endpoint load, seconds")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases")
    parser.add_argument("--reuse", action="store_true", help="reuse kept scratch databases")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    with services():  # DATABASE_URL / REDIS_URL, or throwaway servers (as make dev does)
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    volume = Volume(users=args.users, orders=args.rows, products=args.products)
    seed_seconds = prepare(volume, args.reuse)
    try:
        print("timing the hot query with the index ...", flush=True)
        indexed = asyncio.run(measure_query(INDEXED, args.runs, explains=50, seed=1))
        print("timing the hot query without it ...", flush=True)
        unindexed = asyncio.run(measure_query(UNINDEXED, args.unindexed_runs, explains=5, seed=1))
        print("load on GET /orders ...", flush=True)
        endpoint, cpu_ms = measure_endpoint(args.duration, args.connections)
    finally:
        if not args.keep:
            asyncio.run(
                admin(
                    f'DROP DATABASE IF EXISTS "{UNINDEXED}" WITH (FORCE)',
                    f'DROP DATABASE IF EXISTS "{INDEXED}" WITH (FORCE)',
                )
            )

    results: dict[str, Any] = {
        "rows": args.rows,
        "users": args.users,
        "page": PAGE,
        "indexed_p50_ms": indexed["p50_ms"],
        "indexed_p99_ms": indexed["p99_ms"],
        "indexed_explain_p50_ms": indexed["explain_p50_ms"],
        "indexed_plan": indexed["plan"],
        "indexed_runs": indexed["runs"],
        "unindexed_p50_ms": unindexed["p50_ms"],
        "unindexed_p99_ms": unindexed["p99_ms"],
        "unindexed_explain_p50_ms": unindexed["explain_p50_ms"],
        "unindexed_plan": unindexed["plan"],
        "unindexed_runs": unindexed["runs"],
        "ratio_p50": round(unindexed["p50_ms"] / indexed["p50_ms"], 1),
        "ratio_p99": round(unindexed["p99_ms"] / indexed["p99_ms"], 1),
        "seed_reported_ms": SEED_REPORTED_MS,
        "endpoint_rps": round(endpoint.rps, 1),
        "endpoint_p50_ms": endpoint.p50_ms,
        "endpoint_p99_ms": endpoint.p99_ms,
        "endpoint_errors": endpoint.errors,
        "endpoint_server_cpu_ms_per_request": cpu_ms,
        "endpoint_connections": args.connections,
        "endpoint_seconds": args.duration,
        "seed_seconds": round(seed_seconds, 1) if seed_seconds else None,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{args.rows:,} orders, {args.users:,} users, newest {PAGE} of one user")
    print(f"{'':<26}{'p50 ms':>10}{'p99 ms':>10}{'EXPLAIN ms':>12}")
    for label, figures in (("with the index", indexed), ("without (seq scan+sort)", unindexed)):
        print(
            f"{label:<26}{figures['p50_ms']:>10.3f}{figures['p99_ms']:>10.3f}"
            f"{figures['explain_p50_ms']:>12.3f}"
        )
    print(f"{'the seed (filesort)':<26}{SEED_REPORTED_MS:>10.0f}")
    print(f"ratio p50 x{results['ratio_p50']}, p99 x{results['ratio_p99']}")
    print(
        f"GET /orders: {endpoint.rps:.0f} req/s, p50 {endpoint.p50_ms:.2f} ms, "
        f"p99 {endpoint.p99_ms:.2f} ms, {endpoint.errors} errors "
        f"({args.connections} connections, {args.duration:g} s); "
        f"API CPU {cpu_ms} ms/request"
    )
    print(f"-> {args.output}")
    return results


if __name__ == "__main__":
    main()
