"""The read path, measured: one catalog GET served four ways on this machine, in one run.

- ``hello``: a bare ASGI hello-world under uvicorn (uvloop, httptools), one process: the ceiling
  of a Python ASGI server here;
- ``cached``: ``GET /products/{id}`` through the gateway (Traefik) over the local stack's API
  instances, served from the Redis cache;
- ``uncached``: the same route and stack with ``CACHE_ENABLED=false`` (every request reads
  Postgres);
- ``edge``: the same route through the edge (Varnish), which answers from its own cache: the
  origin sees ``edge_origin_hits`` of ``edge_requests``.

Absolute figures depend on the machine (and on the load generator sharing it): compare the
ratios. Results go to ``bench/results/read_path.json``; run with ``python -m bench.read_path``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.servers import free_port
from devstack.settings import StackSettings
from devstack.topology import (
    GATEWAY_UNLIMITED,
    LocalStack,
    ports_in_use,
)

from .loadgen import LoadResult, client_name, run_load

PROJECT_DIR = Path(__file__).parents[1]
RESULTS = PROJECT_DIR / "bench" / "results" / "read_path.json"
INSTANCES = 2
CONNECTIONS = 64
ROUTE = "/products/{product_id}"

HELLO = """
import uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})

uvicorn.run(app, host="127.0.0.1", port={port}, loop="uvloop", http="httptools",
            access_log=False, log_level="warning")
"""


def _wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def measure_hello(duration: float) -> LoadResult:
    port = free_port()
    code = HELLO.replace("{port}", str(port))
    server = subprocess.Popen([sys.executable, "-c", code])  # noqa: S603
    try:
        _wait_listening(port)
        asyncio.run(run_load("127.0.0.1", port, "/", duration=1.0, connections=CONNECTIONS))
        return asyncio.run(
            run_load("127.0.0.1", port, "/", duration=duration, connections=CONNECTIONS)
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


def _stack_ports() -> dict[str, str]:
    for _ in range(200):
        base = random.randrange(20000, 30000, 50)  # ports, not secrets
        env = {
            "API_PORT": str(base),
            "GATEWAY_PORT": str(base + 20),
            "GATEWAY_OPS_PORT": str(base + 21),
            "EDGE_PORT": str(base + 22),
            "S3_PORT": str(base + 23),
            "S3_INTERNAL_PORTS_FROM": str(base + 30),
            "PROMETHEUS_PORT": str(base + 24),
            "METRICS_PORTS_FROM": str(base + 40),
        }
        settings = StackSettings.model_validate(
            {key.lower(): value for key, value in env.items()} | {"api_instances": INSTANCES}
        )
        if not ports_in_use(settings.named_ports(edge=True)):
            return env
    raise RuntimeError("no free block of ports for a stack")


async def _scratch_database(name: str) -> str | None:
    """A fresh database on DATABASE_URL's server, or None (the stack starts its own)."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        return None
    admin = make_url(url).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()
    return admin.set(database=name).render_as_string(hide_password=False)


async def _insert_product(database_url: str) -> UUID:
    engine = create_async_engine(database_url)
    async with engine.begin() as connection:
        product_id: UUID = (
            await connection.execute(
                text(
                    "INSERT INTO products (id, sku, name, price_cents, attributes)"
                    " VALUES (gen_random_uuid(), 'BENCH-1', 'Benchmark lamp', 4200,"
                    ' \'{"color": "red"}\') RETURNING id'
                )
            )
        ).scalar_one()
        await connection.execute(
            text("INSERT INTO inventory (product_id, stock) VALUES (:id, 100)"),
            {"id": product_id},
        )
    await engine.dispose()
    return product_id


def _metric(stack: LocalStack, name: str, *labels: str) -> float:
    """``name``'s samples that carry every one of ``labels``, summed over the instances."""
    total = 0.0
    for index in range(1, INSTANCES + 1):
        body = httpx.get(f"{stack.urls[f'api.{index}']}/metrics", timeout=5).text
        total += sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith(name + "{") and all(label in line for label in labels)
        )
    return total


def _cache_lookups(stack: LocalStack) -> tuple[float, float]:
    """(hits, lookups) of the app cache, summed over the instances, from one scrape each."""
    hits = lookups = 0.0
    for index in range(1, INSTANCES + 1):
        body = httpx.get(f"{stack.urls[f'api.{index}']}/metrics", timeout=5).text
        for line in body.splitlines():
            if line.startswith("cache_requests_total{"):
                value = float(line.rsplit(" ", 1)[1])
                lookups += value
                hits += value if 'outcome="hit"' in line else 0.0
    return hits, lookups


def _settled_cache_lookups(stack: LocalStack, within: float = 15.0) -> tuple[float, float]:
    """The cache lookups once requests still queued behind the gateway have finished: two
    scrapes in a row that agree (polled, with a deadline), not a fixed wait."""
    deadline = time.monotonic() + within
    previous = _cache_lookups(stack)
    while True:
        time.sleep(0.2)
        current = _cache_lookups(stack)
        if current == previous:
            return current
        if time.monotonic() > deadline:
            raise RuntimeError(f"cache lookups still moving after {within:.0f} s")
        previous = current


def _origin_requests(stack: LocalStack) -> float:
    return _metric(stack, "http_requests_total", f'route="{ROUTE}"')


def measure_stack(
    *, cache_enabled: bool, duration: float, directory: Path
) -> dict[str, LoadResult | float]:
    database_name = f"{{ cookiecutter.project_slug }}_bench_read_path_{int(cache_enabled)}"
    database_url = asyncio.run(_scratch_database(database_name))
    env = {
        **os.environ,
        **_stack_ports(),
        "DEVSTACK_DIR": str(directory / f"stack-{int(cache_enabled)}"),
        "CACHE_ENABLED": str(cache_enabled).lower(),
        "CACHE_KEY_PREFIX": f"bench-read-path-{os.getpid()}-{int(cache_enabled)}",
        "LOG_LEVEL": "WARNING",
        **GATEWAY_UNLIMITED,
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    stack = LocalStack.start(PROJECT_DIR, env, instances=INSTANCES)
    try:
        product_id = asyncio.run(_insert_product(stack.state["database_url"]))
        path = ROUTE.format(product_id=product_id)
        gateway = int(stack.urls["gateway"].rsplit(":", 1)[1])
        edge = int(stack.urls["edge"].rsplit(":", 1)[1])
        asyncio.run(run_load("127.0.0.1", gateway, path, duration=1.0, connections=CONNECTIONS))
        hits_before, lookups_before = _settled_cache_lookups(stack)
        figures: dict[str, LoadResult | float] = {
            "gateway": asyncio.run(
                run_load("127.0.0.1", gateway, path, duration=duration, connections=CONNECTIONS)
            )
        }
        hits_after, lookups_after = _settled_cache_lookups(stack)
        hits, lookups = hits_after - hits_before, lookups_after - lookups_before
        figures["hit_ratio"] = round(hits / lookups, 4) if lookups else 0.0
        figures["cache_errors"] = _metric(stack, "cache_errors_total")
        if cache_enabled:
            before = _origin_requests(stack)
            figures["edge"] = asyncio.run(
                run_load("127.0.0.1", edge, path, duration=duration, connections=CONNECTIONS)
            )
            figures["edge_origin_hits"] = _origin_requests(stack) - before
        return figures
    finally:
        stack.stop()


def main(duration: float = 5.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-read-path-") as directory:
        hello = measure_hello(duration)
        cached = measure_stack(cache_enabled=True, duration=duration, directory=Path(directory))
        uncached = measure_stack(cache_enabled=False, duration=duration, directory=Path(directory))
    cached_load, edge_load = cached["gateway"], cached["edge"]
    uncached_load = uncached["gateway"]
    assert isinstance(cached_load, LoadResult)
    assert isinstance(edge_load, LoadResult)
    assert isinstance(uncached_load, LoadResult)
    results: dict[str, Any] = {
        "hello_rps": round(hello.rps, 1),
        "cached_rps": round(cached_load.rps, 1),
        "uncached_rps": round(uncached_load.rps, 1),
        "edge_rps": round(edge_load.rps, 1),
        "edge_requests": edge_load.requests,
        "edge_origin_hits": int(cached["edge_origin_hits"]),  # type: ignore[arg-type]
        "cached_hit_ratio": cached["hit_ratio"],
        "cached_cache_errors": cached["cache_errors"],
        "cached_vs_uncached": round(cached_load.rps / uncached_load.rps, 2),
        "cached_vs_hello": round(cached_load.rps / hello.rps, 3),
        "edge_vs_cached": round(edge_load.rps / cached_load.rps, 2),
        "p99_ms": {
            "hello": hello.p99_ms,
            "cached": cached_load.p99_ms,
            "uncached": uncached_load.p99_ms,
            "edge": edge_load.p99_ms,
        },
        "errors": hello.errors + cached_load.errors + uncached_load.errors + edge_load.errors,
        "api_instances": INSTANCES,
        "connections": CONNECTIONS,
        "duration_s": duration,
        "client": client_name(),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'GET, served by':<44}{'req/s':>10}{'p99 ms':>10}")
    rows = [
        ("bare ASGI hello-world (1 process)", hello),
        (f"catalog, Redis cache, via gateway ({INSTANCES} inst.)", cached_load),
        (f"catalog, no cache, via gateway ({INSTANCES} inst.)", uncached_load),
        ("catalog, edge cache (Varnish)", edge_load),
    ]
    for name, load in rows:
        print(f"{name:<44}{load.rps:>10.0f}{load.p99_ms:>10.2f}")
    print(
        f"cached/uncached x{results['cached_vs_uncached']}, cached/hello "
        f"x{results['cached_vs_hello']}, edge/cached x{results['edge_vs_cached']}; "
        f"edge: {results['edge_origin_hits']} origin hits for {results['edge_requests']} "
        f"requests (client: {client_name()})  ->  {RESULTS}"
    )
    return results


if __name__ == "__main__":
    main()
