"""Fault injection through the real chain: one client's poison never fails another's request.

A request that 500s used to make uvicorn close its keep-alive connection right after the
answer; the gateway reused that connection for the next request (often another user's POST,
which it must not retry) and answered 502. patterns/problem.py's UnhandledErrorMiddleware keeps
the connection; this proof sends the poison through the gateway and through the edge.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.topology import LocalStack

from tests.factories import insert_products
from tests.topology.conftest import HAVE_VARNISH, sign_up

pytestmark = [pytest.mark.topology, pytest.mark.load, pytest.mark.xdist_group("topology")]

POISON_REQUESTS = 25  # one every 0.2 s: about 5 s of poison among the orders
ORDER_CLIENTS = 6


async def poison_and_orders(front: str, token: str, product_id: uuid.UUID) -> dict[str, Any]:
    poisoning = asyncio.Event()
    poison: Counter[int] = Counter()
    orders: Counter[int | str] = Counter()
    body = {"items": [{"product_id": str(product_id), "quantity": 1}]}
    headers = {"Authorization": f"Bearer {token}"}

    async def poisoner() -> None:
        async with httpx.AsyncClient(base_url=front, timeout=10) as client:
            for _ in range(POISON_REQUESTS):
                poison[(await client.post("/_faults/unhandled", json={})).status_code] += 1
                await asyncio.sleep(0.2)
        poisoning.set()

    async def buyer() -> None:
        async with httpx.AsyncClient(base_url=front, timeout=10, headers=headers) as client:
            while not poisoning.is_set():
                try:
                    orders[(await client.post("/orders", json=body)).status_code] += 1
                except httpx.TransportError as error:
                    orders[type(error).__name__] += 1

    await asyncio.gather(poisoner(), *(buyer() for _ in range(ORDER_CLIENTS)))
    return {"poison": dict(poison), "orders": dict(orders)}


async def test_poison_requests_fail_no_valid_order(
    stack: LocalStack, results: dict[str, Any]
) -> None:
    engine = create_async_engine(stack.state["database_url"], pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as connection:
            [product_id] = await insert_products(connection, [10_000_000])
    finally:
        await engine.dispose()
    token = await sign_up(stack.urls["gateway"], f"buyer-{uuid.uuid4().hex[:8]}@example.com")
    fronts = {"gateway": stack.urls["gateway"]}
    if HAVE_VARNISH:
        fronts["edge"] = stack.urls["edge"]

    measured = {
        name: await poison_and_orders(url, token, product_id) for name, url in fronts.items()
    }

    results["poison"] = measured
    for name, figures in measured.items():
        poison, orders = figures["poison"], figures["orders"]
        assert set(poison) == {500}, (name, poison)  # the poison really was served, as a 500
        assert poison[500] == POISON_REQUESTS, (name, poison)
        assert set(orders) == {201}, (name, orders)  # not one valid order failed
        assert orders[201] >= 20, (name, orders)
