"""The read path through the real stack: edge (Varnish) -> gateway (Traefik) -> 3 API instances
-> Redis (the app cache) and Postgres.

The stack gets a Postgres of its own with ``pg_stat_statements`` loaded, so "database loads"
below are what Postgres itself counted, across every instance; and a cache Redis of its own
(CACHE_REDIS_URL), so one proof can stop it under load.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack.servers import RunningServer, start_postgres, start_redis
from devstack.topology import (
    GATEWAY_UNLIMITED,
    S3_ACCESS_KEY_ID,
    S3_REGION,
    S3_SECRET_ACCESS_KEY,
    LocalStack,
)

from {{ cookiecutter.project_slug }}.patterns.storage import ObjectStorage
from tests.edge import fetch_many
from tests.factories import insert_products
from tests.topology.conftest import (
    INSTANCES,
    PROJECT_DIR,
    assert_nothing_left_running,
    instance_urls,
    needs_edge,
    new_slot,
    port_of,
    requests_served,
    sign_up,
)
from tests.topology.loadgen import LoadResult, run_load

pytestmark = [
    pytest.mark.topology,
    pytest.mark.load,
    pytest.mark.xdist_group("topology"),
    needs_edge,
]

PRODUCT_ROUTE = "/products/{product_id}"
# The one statement that loads a product (products/repository.py: product_with_stock).
PRODUCT_LOAD = (
    "%FROM products JOIN inventory ON products.id = inventory.product_id WHERE products.id = $1%"
)


@dataclass
class ReadStack:
    stack: LocalStack
    database: AsyncEngine
    cache_redis: RunningServer

    @property
    def gateway_port(self) -> int:
        return port_of(self.stack.urls["gateway"])

    @property
    def edge_port(self) -> int:
        return port_of(self.stack.urls["edge"])

    async def new_product(self, *, price_cents: int = 500) -> UUID:
        async with self.database.begin() as connection:
            [product_id] = await insert_products(connection, [100], price_cents=price_cents)
        return product_id

    async def product_loads(self) -> int:
        """Executions of the product SELECT, as Postgres counted them, on every connection."""
        async with self.database.connect() as connection:
            calls = await connection.scalar(
                text(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                    " WHERE regexp_replace(query, '\\s+', ' ', 'g') LIKE :q"
                ),
                {"q": PRODUCT_LOAD},
            )
        return int(calls)

    async def reset_statement_counts(self) -> None:
        async with self.database.connect() as connection:
            await connection.execute(text("SELECT pg_stat_statements_reset()"))

    async def staff_token(self) -> str:
        email = f"staff-{uuid.uuid4().hex[:8]}@example.com"
        token = await sign_up(self.stack.urls["gateway"], email)
        async with self.database.begin() as connection:
            await connection.execute(
                text("UPDATE users SET is_staff = true WHERE email = :email"), {"email": email}
            )
        return token

    async def served(self, route: str) -> list[float]:
        return [await requests_served(url, route) for url in instance_urls(self.stack)]

    async def cache_outcomes(self, region: str = "product") -> Counter[str]:
        totals: Counter[str] = Counter()
        async with httpx.AsyncClient() as client:
            for url in instance_urls(self.stack):
                for line in (await client.get(f"{url}/metrics")).text.splitlines():
                    if line.startswith("cache_requests_total{") and f'region="{region}"' in line:
                        outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                        totals[outcome] += int(float(line.rsplit(" ", 1)[1]))
        return totals


@pytest.fixture(scope="module")
async def read_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReadStack]:
    base = tmp_path_factory.mktemp("read-path")
    postgres = start_postgres(
        base / "postgres", parameters={"shared_preload_libraries": "pg_stat_statements"}
    )
    cache_redis = start_redis()
    env = {
        **os.environ,
        **new_slot(base),
        "DATABASE_URL": postgres.url,
        "CACHE_REDIS_URL": cache_redis.url,
        "CACHE_KEY_PREFIX": f"read-path-{secrets.token_hex(4)}",
        # Production's 250 ms budget per Redis call is for a healthy instance. Here 500
        # concurrent requests share two cores with the whole stack and the test: event-loop
        # lag alone could pass it, and fail-open would then (correctly) read the database.
        # These proofs count loads, so they give Redis time; the Redis-stopped proof below
        # and tests/patterns/test_cache.py prove the timeout and the breaker.
        "CACHE_TIMEOUT": "2",
        "CACHE_BREAKER_RESET_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
        **GATEWAY_UNLIMITED,
    }
    stack = LocalStack.start(PROJECT_DIR, env, instances=INSTANCES)
    database = create_async_engine(postgres.url, pool_size=2, max_overflow=0)
    async with database.begin() as connection:
        await connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
    read = ReadStack(stack, database, cache_redis)
    try:
        yield read
    finally:
        await database.dispose()
        assert_nothing_left_running(stack)
        read.cache_redis.stop()  # the one running now (a proof restarts it)
        postgres.stop()


@pytest.fixture
def results() -> Any:
    """Figures a proof measured, merged into bench/results/read_path_proofs.json for the docs."""
    figures: dict[str, Any] = {}
    yield figures
    if figures:
        path = PROJECT_DIR / "bench" / "results" / "read_path_proofs.json"
        path.parent.mkdir(exist_ok=True)
        existing = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(existing | figures, indent=2) + "\n")


def body_of(reply_body: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(reply_body)
    return parsed


async def test_a_cold_product_under_500_concurrent_requests_is_loaded_once(
    read_stack: ReadStack, results: dict[str, Any]
) -> None:
    product_id = await read_stack.new_product()
    path = f"/products/{product_id}"
    await read_stack.reset_statement_counts()
    before = await read_stack.served(PRODUCT_ROUTE)

    # 500 connections at once, through the gateway: every request reaches an instance.
    replies = await fetch_many(read_stack.gateway_port, [(path, {})] * 500, connections=500)

    served = [
        after - b for after, b in zip(await read_stack.served(PRODUCT_ROUTE), before, strict=True)
    ]
    loads = await read_stack.product_loads()
    results["stampede"] = {"requests": len(replies), "per_instance": served, "db_loads": loads}
    assert len(replies) == 500
    assert all(reply.status == 200 for reply in replies)
    assert {body_of(reply.body)["id"] for reply in replies} == {str(product_id)}
    assert sum(served) == 500
    assert sum(1 for n in served if n > 0) >= 2  # the load really spanned instances
    assert loads == 1


async def test_a_hot_product_is_served_from_redis_at_least_99_percent_of_the_time(
    read_stack: ReadStack, results: dict[str, Any]
) -> None:
    product_id = await read_stack.new_product()
    path = f"/products/{product_id}"
    await fetch_many(read_stack.gateway_port, [(path, {})])  # warm
    before = await read_stack.cache_outcomes()
    await read_stack.reset_statement_counts()

    # At least 300 reads, however slow the machine: rounds of 3 s until there are enough.
    loads: list[LoadResult] = []
    while sum(load.ok for load in loads) < 300 and len(loads) < 20:
        loads.append(await run_load(read_stack.gateway_port, path, seconds=3, connections=30))
    ok = sum(load.ok for load in loads)

    outcomes = await read_stack.cache_outcomes() - before
    lookups = sum(outcomes.values())
    ratio = outcomes["hit"] / lookups
    results["hot_key"] = {
        "requests": sum(load.requests for load in loads),
        "lookups": lookups,
        "hit_ratio": round(ratio, 5),
        "db_loads": await read_stack.product_loads(),
    }
    assert sum(load.failed for load in loads) == 0
    assert lookups >= ok >= 300
    assert ratio >= 0.99
    assert await read_stack.product_loads() == 0  # every one of them came from Redis


async def test_after_an_update_no_later_read_returns_the_old_value(
    read_stack: ReadStack, results: dict[str, Any]
) -> None:
    """Readers hammer the product through the gateway (Redis) and through the edge (Varnish)
    while staff change its price 15 times. A read that starts after an update's 2xx (the commit,
    the Redis invalidation and the edge purge are all done by then) must see that price or a
    newer one."""
    product_id = await read_stack.new_product(price_cents=0)
    path = f"/products/{product_id}"
    token = await read_stack.staff_token()
    acknowledged = 0  # the price of the last update whose response arrived
    stale: list[tuple[str, int, int]] = []
    reads: Counter[str] = Counter()
    writing = True

    async def reader(front: str, url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            while writing:
                floor = acknowledged
                response = await client.get(path)
                assert response.status_code == 200
                reads[front] += 1
                if (price := response.json()["price_cents"]) < floor:
                    stale.append((front, floor, price))

    async def writer() -> None:
        nonlocal acknowledged, writing
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=read_stack.stack.urls["gateway"]) as client:
            await asyncio.sleep(0.5)
            for price in range(1, 16):
                response = await client.patch(path, json={"price_cents": price}, headers=headers)
                assert response.status_code == 200, response.text
                acknowledged = price
                await asyncio.sleep(0.1)
        writing = False

    fronts = [
        ("gateway", read_stack.stack.urls["gateway"]),
        ("edge", read_stack.stack.urls["edge"]),
    ]
    await asyncio.gather(writer(), *(reader(name, url) for name, url in fronts * 8))

    results["write_then_read"] = {"updates": 15, "reads": dict(reads), "stale_reads": len(stale)}
    assert stale == []
    assert reads["gateway"] > 100
    assert reads["edge"] > 100


async def test_through_the_edge_thousands_of_requests_cost_the_origin_at_most_two(
    read_stack: ReadStack, results: dict[str, Any]
) -> None:
    product_id = await read_stack.new_product(price_cents=700)
    path = f"/products/{product_id}"
    before = sum(await read_stack.served(PRODUCT_ROUTE))

    replies = await fetch_many(read_stack.edge_port, [(path, {})] * 2000, connections=100)

    origin_hits = sum(await read_stack.served(PRODUCT_ROUTE)) - before
    results["edge"] = {"requests": len(replies), "origin_hits": origin_hits}
    assert len(replies) == 2000
    assert all(reply.status == 200 for reply in replies)
    assert all(body_of(reply.body)["price_cents"] == 700 for reply in replies)
    assert origin_hits <= 2

    # A conditional request is answered by the edge with a 304 and no body.
    etag = replies[0].headers["etag"]
    [revalidated] = await fetch_many(read_stack.edge_port, [(path, {"If-None-Match": etag})])
    assert revalidated.status == 304
    assert revalidated.body == b""

    # An update purges the product's key: the next request is a miss with the new content,
    # and so is the listing that showed the product (cached at the edge before the update).
    listing_path = "/products?limit=100"
    await fetch_many(read_stack.edge_port, [(listing_path, {})])
    [listed] = await fetch_many(read_stack.edge_port, [(listing_path, {})])
    assert listed.headers["x-cache"] == "HIT"
    token = await read_stack.staff_token()
    async with httpx.AsyncClient(base_url=read_stack.stack.urls["gateway"]) as client:
        update = await client.patch(
            path, json={"price_cents": 800}, headers={"Authorization": f"Bearer {token}"}
        )
    assert update.status_code == 200
    [after] = await fetch_many(read_stack.edge_port, [(path, {})])
    assert after.headers["x-cache"] == "MISS"
    assert body_of(after.body)["price_cents"] == 800
    # Then it is cached again. The update purged before answering; the product event's
    # consumer (pubsub/handlers.py, there for writers other than this API) purges once more
    # when it gets there, so one more read may miss before reads hit again.
    misses_after_update = 0
    deadline = time.monotonic() + 30
    while True:
        [again] = await fetch_many(read_stack.edge_port, [(path, {})])
        assert body_of(again.body)["price_cents"] == 800
        if again.headers["x-cache"] == "HIT":
            break
        misses_after_update += 1
        assert time.monotonic() < deadline, "the updated product never became an edge hit"
        await asyncio.sleep(0.1)
    assert misses_after_update <= 1
    [listing] = await fetch_many(read_stack.edge_port, [(listing_path, {})])
    assert listing.headers["x-cache"] == "MISS"
    prices = {item["id"]: item["price_cents"] for item in body_of(listing.body)["items"]}
    assert prices[str(product_id)] == 800


MEDIA_ROUTE = "/media/images/{digest}/{size}.webp"


async def test_a_product_image_through_the_edge_is_read_from_the_origin_once(
    read_stack: ReadStack, results: dict[str, Any]
) -> None:
    # A rendition as the thumbnail job leaves it (tests/products/test_images.py proves the
    # job): written under its content-addressed key in the stack's own S3.
    data = b"RIFF\x1a\x00\x00\x00WEBPVP8 " + secrets.token_bytes(4000)
    digest = hashlib.sha256(data).hexdigest()
    storage = ObjectStorage(
        bucket=read_stack.stack.state["s3_bucket"],
        endpoint_url=read_stack.stack.urls["s3"],
        region=S3_REGION,
        access_key_id=S3_ACCESS_KEY_ID,
        secret_access_key=S3_SECRET_ACCESS_KEY,
    )
    try:
        await storage.put_bytes(f"images/{digest}/256.webp", data, content_type="image/webp")
    finally:
        storage.close()
    path = f"/media/images/{digest}/256.webp"
    before = sum(await read_stack.served(MEDIA_ROUTE))

    replies = await fetch_many(read_stack.edge_port, [(path, {})] * 1000, connections=100)

    origin_hits = sum(await read_stack.served(MEDIA_ROUTE)) - before
    results["edge_image"] = {"requests": len(replies), "origin_hits": origin_hits}
    assert [reply.status for reply in replies] == [200] * 1000
    assert all(reply.body == data for reply in replies)
    assert "immutable" in replies[-1].headers["cache-control"]
    # The edge coalesces the concurrent misses on its waiting list: one fetch for them all.
    assert origin_hits == 1


async def test_a_users_own_answers_are_never_served_to_anyone_else(
    read_stack: ReadStack, results: dict[str, Any]
) -> None:
    gateway = read_stack.stack.urls["gateway"]
    product_id = await read_stack.new_product()
    callers: dict[str, str] = {}
    for name in ("a", "b"):
        email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
        token = await sign_up(gateway, email)
        callers[f"Bearer {token}"] = email
        async with httpx.AsyncClient(base_url=gateway) as client:
            placed = await client.post(
                "/orders",
                json={"items": [{"product_id": str(product_id), "quantity": 1}]},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert placed.status_code == 201
    tokens = list(callers)
    mix: list[str | None] = [tokens[0], tokens[1], None] * 300
    requests = [
        (route, {"Authorization": token} if token else {})
        for route in ("/users/me", "/orders")
        for token in mix
    ]
    expected_orders = {}
    for token in tokens:
        [mine] = await fetch_many(read_stack.edge_port, [("/orders", {"Authorization": token})])
        expected_orders[token] = body_of(mine.body)["items"]
    assert expected_orders[tokens[0]] != expected_orders[tokens[1]]

    replies = await fetch_many(read_stack.edge_port, requests, connections=60)

    leaks = []
    for (route, headers), reply in zip(requests, replies, strict=True):
        caller = headers.get("Authorization")
        if caller is None:
            if reply.status != 401:
                leaks.append((route, "anonymous", reply.status))
            continue
        assert reply.status == 200
        body = body_of(reply.body)
        mine = (
            body["email"] == callers[caller]
            if route == "/users/me"
            else (body["items"] == expected_orders[caller])
        )
        if not mine:
            leaks.append((route, caller[-6:], reply.status))
    results["private"] = {"requests": len(replies), "leaks": len(leaks)}
    assert len(replies) == 1800
    assert leaks == []


async def test_the_cache_redis_stopped_under_load_fails_no_request_and_recovers(
    read_stack: ReadStack, results: dict[str, Any]
) -> None:
    product_id = await read_stack.new_product()
    path = f"/products/{product_id}"
    await fetch_many(read_stack.gateway_port, [(path, {})])  # cached
    port = int(read_stack.cache_redis.url.rsplit(":", 1)[1].split("/")[0])
    before = await read_stack.cache_outcomes()

    load = asyncio.create_task(run_load(read_stack.gateway_port, path, seconds=9, connections=20))
    await asyncio.sleep(1.5)
    read_stack.cache_redis.stop()  # the cache dies under load
    await asyncio.sleep(2.5)
    down = await read_stack.cache_outcomes() - before
    read_stack.cache_redis = start_redis(port=port)  # and comes back, empty, where it was
    at_restart = await read_stack.cache_outcomes()
    result = await load
    after = await read_stack.cache_outcomes()

    results["redis_stopped"] = {
        "requests": result.requests,
        "failed": result.failed,
        "served_from_db_while_down": down["bypass"],
        "hits_after_restart": after["hit"] - at_restart["hit"],
    }
    assert result.failed == 0, (result.statuses, result.errors)
    assert result.ok == result.requests
    assert down["bypass"] > 0  # Redis really was out of the picture
    assert after["hit"] > at_restart["hit"]  # and caching resumed by itself
