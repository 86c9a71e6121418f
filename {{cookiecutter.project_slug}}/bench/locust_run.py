"""A Locust crowd on a local API process: the users it sustained, req/s, error rate and p95.

Seeds a scratch database on DATABASE_URL's server (unset: throwaway servers, as ``make dev``),
mints a token per seeded account into the fixture ``bench/locustfile.py`` reads, starts one API
process and runs Locust headless against it, in its own process:

    python -m bench.locust_run [--users 200] [--spawn-rate 50] [--duration 30]

Results go to ``bench/results/locust.json``, with the API's CPU ms per request (process CPU
time over requests, the figure that holds on a shared machine). The report jobs it requests
queue on a queue of this run's own, deleted at the end: the worker is measured elsewhere
(tests/worker, bench.pubsub). The same locustfile drives a distributed run, unchanged
(docs/observability.md, "Load").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from uuid import UUID

from locust.stats import RequestStats, StatsEntry
from redis import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.api_process import uvicorn_command, wait_until_healthy
from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.auth.security import create_access_token
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.migrate import upgrade_to_head
from {{ cookiecutter.project_slug }}.seed import Volume, seed_volume

from .scratch import admin, cpu_seconds, database_url
from .services import services

RESULTS = Path(__file__).parent / "results" / "locust.json"
LOCUSTFILE = Path(__file__).parent / "locustfile.py"
DATABASE = "{{ cookiecutter.project_slug }}_bench_locust"


async def _seed(volume: Volume) -> dict[str, list[str]]:
    """Seed ``volume``; make the first account staff; the accounts' and products' ids."""
    engine = create_async_engine(database_url(DATABASE))
    try:
        async with engine.begin() as connection:
            await seed_volume(connection, volume)
            users = (await connection.execute(text("SELECT id FROM users ORDER BY id"))).scalars()
            user_ids = [str(user_id) for user_id in users]
            await connection.execute(
                text("UPDATE users SET is_staff = true WHERE id = :id"), {"id": user_ids[0]}
            )
            products = await connection.execute(text("SELECT id FROM products"))
            product_ids = [str(product_id) for product_id in products.scalars()]
    finally:
        await engine.dispose()
    return {"users": user_ids, "products": product_ids}


def _prepare(volume: Volume) -> dict[str, list[str]]:
    asyncio.run(
        admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', f'CREATE DATABASE "{DATABASE}"')
    )
    upgrade_to_head(database_url(DATABASE))
    return asyncio.run(_seed(volume))


def _figures(entry: StatsEntry) -> dict[str, Any]:
    elapsed = (entry.last_request_timestamp or entry.start_time) - entry.start_time
    return {
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "error_rate": round(entry.fail_ratio, 4),
        "rps": round(entry.num_requests / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": entry.get_response_time_percentile(0.50),
        "p95_ms": entry.get_response_time_percentile(0.95),
        "p99_ms": entry.get_response_time_percentile(0.99),
    }


def _int_keys(data: dict[str, Any]) -> Any:
    """JSON made the integer keys of the per-millisecond and per-second counters strings; the
    percentiles sort those keys, so they must be integers again."""
    for counter in ("response_times", "num_reqs_per_sec", "num_fail_per_sec"):
        data[counter] = {int(key): count for key, count in data[counter].items()}
    return data


def _final_stats(json_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole run's figures and each request's, from Locust's ``--json-file``: its stats at
    shutdown. Its ``--csv`` files are the last periodic snapshot, up to a second short (146
    requests there against 161 in the printed table, on an 8 s run)."""
    stats = RequestStats()
    saved = json.loads(json_file.read_text())
    entries = [StatsEntry.unserialize(_int_keys(data), stats) for data in saved]
    total = StatsEntry(stats, "Aggregated", "")  # extend() keeps the earliest start
    for entry in entries:
        total.extend(entry)
    per_request = {f"{entry.method} {entry.name}": _figures(entry) for entry in entries}
    return _figures(total), per_request


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.locust_run")
    parser.add_argument("--users", type=int, default=200, help="simulated users")
    parser.add_argument("--spawn-rate", type=float, default=50, help="users started per second")
    parser.add_argument("--duration", type=int, default=30, help="seconds of load")
    parser.add_argument("--accounts", type=int, default=1_000, help="seeded accounts")
    parser.add_argument("--orders", type=int, default=20_000, help="seeded orders")
    parser.add_argument("--products", type=int, default=500, help="seeded products")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    with services():  # DATABASE_URL / REDIS_URL, or throwaway servers (as make dev does)
        try:
            return _run(args)
        finally:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))


def _run(args: argparse.Namespace) -> dict[str, Any]:
    print(f"seeding {args.orders:,} orders over {args.accounts:,} accounts ...", flush=True)
    seeded = _prepare(Volume(users=args.accounts, orders=args.orders, products=args.products))
    secret = secrets.token_urlsafe(48)
    tag = secrets.token_hex(4)
    redis_url = os.environ["REDIS_URL"]
    env = {
        **os.environ,
        "DATABASE_URL": database_url(DATABASE),
        "REDIS_URL": redis_url,
        "SECRET_KEY": secret,
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "WARNING",
        # This run's keys only: its cache, its rate-limit windows, its queue.
        "CACHE_KEY_PREFIX": f"bench-locust-{tag}",
        "RATE_LIMIT_KEY_PREFIX": f"bench-locust-{tag}:ratelimit",
        "CELERY_QUEUE": f"bench-locust-{tag}",
    }
    settings = Settings(
        _env_file=None,
        database_url=env["DATABASE_URL"],
        redis_url=redis_url,
        secret_key=secret,
        environment="test",
    )
    tokens = [create_access_token(UUID(u), settings)[0] for u in seeded["users"]]
    port = free_port()
    api = subprocess.Popen(uvicorn_command(port), env=env)  # noqa: S603
    with tempfile.TemporaryDirectory(prefix="bench-locust-") as directory:
        fixture = Path(directory) / "fixture.json"
        fixture.write_text(
            json.dumps(
                {"staff": tokens[:1], "shoppers": tokens[1:], "products": seeded["products"]}
            )
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until_healthy(api, base_url)
            cpu_before = cpu_seconds(api.pid)
            command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
            command += ["--host", base_url, "--users", str(args.users)]
            command += ["--spawn-rate", str(args.spawn_rate), "--run-time", f"{args.duration}s"]
            command += ["--json-file", str(Path(directory) / "run"), "--only-summary"]
            command += ["--loglevel", "WARNING"]
            locust_env = {**os.environ, "BENCH_LOCUST_FIXTURE": str(fixture)}
            finished = subprocess.run(command, env=locust_env, check=False)  # noqa: S603
            api_cpu = cpu_seconds(api.pid) - cpu_before
            total, per_request = _final_stats(Path(directory) / "run.json")
        finally:
            api.terminate()
            api.wait(timeout=30)
            with Redis.from_url(redis_url) as redis:
                keys = list(redis.scan_iter(f"*bench-locust-{tag}*", count=1000))
                if keys:
                    redis.delete(*keys)

    results: dict[str, Any] = {
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "seconds": args.duration,
        "locust_exit_code": finished.returncode,
        **total,
        "api_cpu_ms_per_request": (
            round(api_cpu / total["requests"] * 1000, 3) if total["requests"] else None
        ),
        "requests_by_name": per_request,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\n{args.users} users for {args.duration} s: {total['rps']:.0f} req/s, "
        f"error rate {total['error_rate']:.2%}, p95 {total['p95_ms']:.0f} ms, "
        f"API CPU {results['api_cpu_ms_per_request']} ms per request"
    )
    print(f"-> {args.output}")
    return results


if __name__ == "__main__":
    main()
