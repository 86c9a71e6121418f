"""kill -9 of the stack's Redis under load, through the real chain: edge (Varnish) -> gateway
(Traefik) -> three API instances, with the stack's worker, beat, relay and consumers on the
same Redis (cache, broker, rate limiter, event streams, RedBeat all at REDIS_URL).

Three kinds of clients run throughout: anonymous catalog reads (``GET /products/{id}``, served
from the app cache when Redis is up; sent to the gateway, since through the edge they would be
Varnish hits that never reach an instance), authenticated reads (``GET /orders``) and writes
(``POST /orders``) through the edge. Redis is SIGKILLed, stays down for ``OUTAGE`` seconds and
comes back on the same port with its AOF. Every request is classified by when it was sent:
before, during the outage, while recovering (Redis up, an instance not yet reporting it ok),
after. The proof: reads and writes answer 2xx throughout (the cache fails open, readiness says
"degraded" without leaving rotation), no process of the stack but the Celery worker stops (see
the assertion), every order placed is
confirmed once (jobs whose publish failed go through the ``order.placed`` outbox event), and
after recovery not one request fails.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.topology import LocalStack, gateway_servers_up, pid_alive

from tests.factories import insert_products
from tests.topology.conftest import (
    StackRedis,
    instance_urls,
    needs_edge,
    port_of,
    sign_up,
    unhandled_errors,
)

pytestmark = [
    pytest.mark.topology,
    pytest.mark.load,
    pytest.mark.xdist_group("topology"),
    needs_edge,
]

BEFORE = 1.5  # seconds of load before the kill
OUTAGE = 5.0  # seconds Redis stays down
AFTER = 3.0  # seconds of load once every instance reports Redis ok again
CLIENTS = {"catalog": 4, "orders_read": 3, "orders_write": 3}
PHASES = ("before", "outage", "recovering", "after")


async def readiness(stack: LocalStack) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as client:
        return [(await client.get(f"{url}/readyz")).json() for url in instance_urls(stack)]


async def test_a_redis_kill_under_load_fails_no_read_and_nothing_after_recovery(
    stack: LocalStack, stack_redis: StackRedis, results: dict[str, Any]
) -> None:
    engine = create_async_engine(stack.state["database_url"], pool_size=1, max_overflow=0)
    async with engine.begin() as connection:
        [product_id] = await insert_products(connection, [10_000_000])
    token = await sign_up(stack.urls["gateway"], f"outage-{uuid.uuid4().hex[:8]}@example.com")
    auth = {"Authorization": f"Bearer {token}"}
    order = {"items": [{"product_id": str(product_id), "quantity": 1}]}
    pids_before = dict(stack.refresh()["pids"])

    moments: dict[str, float] = {}
    sent: list[tuple[str, float, int | str]] = []  # (kind, sent at, status or error name)
    placed: list[str] = []  # ids of the orders the writers placed
    stop = asyncio.Event()

    def phase(at: float) -> str:
        if at < moments.get("killed", float("inf")):
            return "before"
        if at < moments.get("restarted", float("inf")):
            return "outage"
        if at < moments.get("recovered", float("inf")):
            return "recovering"
        return "after"

    async def client(
        kind: str, base_url: str, call: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
    ) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=15) as http:
            while not stop.is_set():
                at = time.monotonic()
                try:
                    response = await call(http)
                    outcome: int | str = response.status_code
                    if kind == "orders_write" and outcome == 201:
                        placed.append(response.json()["id"])
                except httpx.TransportError as error:
                    outcome = type(error).__name__
                sent.append((kind, at, outcome))

    gateway, edge = stack.urls["gateway"], stack.urls["edge"]
    clients = [
        *(
            client("catalog", gateway, lambda h: h.get(f"/products/{product_id}"))
            for _ in range(CLIENTS["catalog"])
        ),
        *(
            client("orders_read", edge, lambda h: h.get("/orders", headers=auth))
            for _ in range(CLIENTS["orders_read"])
        ),
        *(
            client("orders_write", edge, lambda h: h.post("/orders", json=order, headers=auth))
            for _ in range(CLIENTS["orders_write"])
        ),
    ]
    load = asyncio.gather(*clients)
    degraded_seen: list[dict[str, Any]] = []
    in_rotation: list[dict[str, bool]] = []
    try:
        await asyncio.sleep(BEFORE)
        stack_redis.kill()
        moments["killed"] = time.monotonic()
        outage_ends = moments["killed"] + OUTAGE
        while time.monotonic() < outage_ends:
            # What the load balancer sees while Redis is gone: every instance still up.
            in_rotation.append(gateway_servers_up(port_of(stack.urls["gateway_ops"])))
            degraded_seen.extend(await readiness(stack))
            await asyncio.sleep(0.5)
        stack_redis.restart()
        moments["restarted"] = time.monotonic()
        deadline = moments["restarted"] + 60
        while True:
            checks = [body["checks"]["redis"]["status"] for body in await readiness(stack)]
            if all(status == "ok" for status in checks):
                break
            assert time.monotonic() < deadline, f"Redis not ok again on every instance: {checks}"
            await asyncio.sleep(0.1)
        moments["recovered"] = time.monotonic()
        await asyncio.sleep(AFTER)
    finally:
        stop.set()
        await load

    table: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in CLIENTS:
        table[kind] = {}
        for name in PHASES:
            outcomes = Counter(str(o) for k, at, o in sent if k == kind and phase(at) == name)
            failed = sum(n for o, n in outcomes.items() if not o.startswith("2"))
            table[kind][name] = {"sent": sum(outcomes.values()), "non_2xx": failed}
            if failed:
                table[kind][name]["outcomes"] = dict(outcomes)

    # Every order the writers placed is confirmed once, those placed during the outage too.
    keys = [f"order-confirmation:{order_id}" for order_id in placed]
    confirmed = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        async with engine.connect() as connection:
            confirmed = int(
                await connection.scalar(
                    text(
                        "SELECT count(DISTINCT idempotency_key) FROM notifications"
                        " WHERE idempotency_key = ANY(:keys)"
                    ),
                    {"keys": keys},
                )
            )
        if confirmed >= len(placed):
            break
        await asyncio.sleep(0.5)
    async with engine.connect() as connection:
        duplicates = await connection.scalar(
            text(
                "SELECT count(*) FROM (SELECT idempotency_key FROM notifications"
                " WHERE idempotency_key = ANY(:keys)"
                " GROUP BY idempotency_key HAVING count(*) > 1) AS d"
            ),
            {"keys": keys},
        )
    await engine.dispose()
    # A process the launcher is restarting (1 s backoff) is counted once it runs again.
    deadline = time.monotonic() + 30
    pids_after = dict(stack.refresh()["pids"])
    while not all(pid_alive(pid) for pid in pids_after.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        pids_after = dict(stack.refresh()["pids"])

    results["redis_kill_http"] = {
        "outage_seconds": round(moments["restarted"] - moments["killed"], 1),
        "recovery_seconds": round(moments["recovered"] - moments["restarted"], 1),
        "table": table,
        "orders_placed": len(placed),
        "confirmed": confirmed,
        "restarted_processes": sorted(n for n, p in pids_before.items() if pids_after.get(n) != p),
    }
    print(f"\nredis kill through the stack: {results['redis_kill_http']}")  # noqa: T201

    for kind in CLIENTS:
        assert table[kind]["outage"]["sent"] > 0, kind  # the load really ran through the outage
    # Reads: 2xx before, during and after the outage.
    for kind in ("catalog", "orders_read"):
        for name in PHASES:
            assert table[kind][name]["non_2xx"] == 0, (
                kind,
                name,
                table[kind][name],
                unhandled_errors(stack),
            )
    # Writes commit with Redis gone (the job's publish fails, the outbox carries it).
    for name in PHASES:
        assert table["orders_write"][name]["non_2xx"] == 0, (
            name,
            table["orders_write"][name],
            unhandled_errors(stack),
        )
    # Readiness said "degraded", and no instance left rotation.
    assert any(body["status"] == "degraded" for body in degraded_seen), degraded_seen[:3]
    assert all(all(up.values()) and len(up) == len(instance_urls(stack)) for up in in_rotation)
    # Nothing else stopped by itself. The Celery worker (Redis broker) can: when the connection
    # drops while it holds unacknowledged messages, kombu's channel close restores them through
    # a connection that is already gone (AttributeError: 'NoneType' object has no attribute
    # 'hostname', "Unrecoverable error") and the worker exits; the launcher starts it again, as
    # compose or Kubernetes would. Whichever happened, a worker runs at the end.
    restarted = {n for n, p in pids_before.items() if pids_after.get(n) != p}
    assert restarted <= {n for n in pids_before if n.startswith("worker")}, restarted
    assert set(pids_after) == set(pids_before)
    assert all(pid_alive(pid) for pid in pids_after.values())
    # Every order was confirmed exactly once.
    assert confirmed == len(placed) > 0
    assert duplicates == 0
