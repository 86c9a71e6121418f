"""Proofs under real concurrency: hundreds of buyers over real TCP connections to the real app
(uvicorn, its own process) on a database whose writes really commit.

Assertions are counts, never times: exactly the stock is sold, nothing goes negative, no order
lacks its lines, no request dies of a deadlock.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer
from tests.factories import insert_products, insert_users

pytestmark = pytest.mark.load

BUYERS = 200
STOCK = 50  # ≤ BUYERS / 4: three of every four buyers must lose


async def post_all(
    server: LiveServer, requests: Sequence[tuple[dict[str, str], dict[str, Any]]]
) -> list[httpx.Response]:
    """Send every request at once, each on its own connection, and collect the responses."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(
        base_url=server.base_url, limits=limits, timeout=httpx.Timeout(120.0)
    ) as client:
        # Open the connections first, so the race is between orders, not TCP handshakes.
        await asyncio.gather(*(client.get("/healthz") for _ in requests))
        start = asyncio.Event()

        async def send(headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
            await start.wait()
            return await client.post("/orders", json=body, headers=headers)

        tasks = [asyncio.create_task(send(headers, body)) for headers, body in requests]
        await asyncio.sleep(0)
        start.set()
        return await asyncio.gather(*tasks)


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar_one()


def line(product_id: UUID, quantity: int) -> dict[str, Any]:
    return {"product_id": str(product_id), "quantity": quantity}


async def test_concurrent_buyers_get_exactly_the_stock_and_no_more(
    live_server: LiveServer, committed_engine: AsyncEngine
) -> None:
    async with committed_engine.begin() as connection:
        buyers = await insert_users(connection, BUYERS)
        [product] = await insert_products(connection, [STOCK])

    responses = await post_all(
        live_server, [(live_server.auth(buyer), {"items": [line(product, 1)]}) for buyer in buyers]
    )

    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: STOCK, 409: BUYERS - STOCK}
    losers = [r for r in responses if r.status_code == 409]
    assert all(r.headers["content-type"] == "application/problem+json" for r in losers)
    assert {r.json()["title"] for r in losers} == {"Insufficient Stock"}

    assert await scalar(committed_engine, "SELECT stock FROM inventory") == 0
    assert await scalar(committed_engine, "SELECT count(*) FROM orders") == STOCK
    assert await scalar(committed_engine, "SELECT sum(quantity) FROM order_items") == STOCK
    orphans = (
        "SELECT count(*) FROM orders o"
        " WHERE NOT EXISTS (SELECT FROM order_items i WHERE i.order_id = o.id)"
    )
    assert await scalar(committed_engine, orphans) == 0
    winners = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(winners) == STOCK
    assert await scalar(committed_engine, "SELECT count(DISTINCT user_id) FROM orders") == STOCK


async def test_overlapping_multi_item_orders_finish_without_deadlocks(
    live_server: LiveServer, committed_engine: AsyncEngine
) -> None:
    rng = random.Random(7)
    initial = [150, 150, 150, 150, 150]
    async with committed_engine.begin() as connection:
        buyers = await insert_users(connection, BUYERS)
        products = await insert_products(connection, initial)
    requests = []
    for buyer in buyers:
        # Several products each, listed in a random order: without a global lock order,
        # two of these transactions lock rows A-then-B and B-then-A and one dies of deadlock.
        chosen = rng.sample(products, k=rng.randint(2, len(products)))
        requests.append(
            (live_server.auth(buyer), {"items": [line(p, rng.randint(1, 3)) for p in chosen]})
        )

    responses = await post_all(live_server, requests)

    statuses = Counter(response.status_code for response in responses)
    # Stock is deliberately too short for everyone: some orders win, some get 409, and none
    # fails any other way (a deadlock would surface as a 500).
    assert set(statuses) <= {201, 409}, statuses
    assert statuses[201] > 0
    assert statuses[409] > 0
    async with committed_engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT i.product_id, i.stock,"
                " (SELECT coalesce(sum(quantity), 0) FROM order_items o"
                "  WHERE o.product_id = i.product_id)"
                " FROM inventory i WHERE i.product_id = ANY(:ids)"
            ),
            {"ids": products},
        )
        for product_id, stock, sold in rows:
            assert stock >= 0
            assert stock + sold == initial[products.index(product_id)]
    placed = [r.json() for r in responses if r.status_code == 201]
    lines = await scalar(committed_engine, "SELECT count(*) FROM order_items")
    assert lines == sum(len(order["items"]) for order in placed)


async def test_concurrent_retries_with_one_idempotency_key_place_one_order(
    live_server: LiveServer, committed_engine: AsyncEngine
) -> None:
    async with committed_engine.begin() as connection:
        [buyer] = await insert_users(connection, 1)
        [product] = await insert_products(connection, [100])
    headers = {**live_server.auth(buyer), "Idempotency-Key": "checkout-42"}
    retries = 50

    responses = await post_all(live_server, [(headers, {"items": [line(product, 3)]})] * retries)

    assert Counter(r.status_code for r in responses) == {201: retries}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == retries - 1
    assert await scalar(committed_engine, "SELECT count(*) FROM orders") == 1
    assert await scalar(committed_engine, "SELECT stock FROM inventory") == 97


async def test_concurrent_different_bodies_under_one_key_let_exactly_one_win(
    live_server: LiveServer, committed_engine: AsyncEngine
) -> None:
    async with committed_engine.begin() as connection:
        [buyer] = await insert_users(connection, 1)
        [product] = await insert_products(connection, [100])
    headers = {**live_server.auth(buyer), "Idempotency-Key": "checkout-43"}
    bodies = [{"items": [line(product, 1 + n % 2)]} for n in range(40)]

    responses = await post_all(live_server, [(headers, body) for body in bodies])

    won = [(b, r) for b, r in zip(bodies, responses, strict=True) if r.status_code == 201]
    lost = [(b, r) for b, r in zip(bodies, responses, strict=True) if r.status_code != 201]
    winning_body = won[0][0]
    # Every 201 is the winner's body and order; every other response is a 422 for the other body.
    assert all(body == winning_body for body, _ in won)
    assert len({r.json()["id"] for _, r in won}) == 1
    assert all(r.status_code == 422 and body != winning_body for body, r in lost)
    assert len(won) == len(lost) == 20
    assert await scalar(committed_engine, "SELECT count(*) FROM orders") == 1
    taken = winning_body["items"][0]["quantity"]
    assert await scalar(committed_engine, "SELECT stock FROM inventory") == 100 - taken
