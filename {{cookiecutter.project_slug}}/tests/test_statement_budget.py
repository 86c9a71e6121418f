"""The statement budget: what each route costs in SQL statements and Redis round trips.

Like the plan guard, a table in one place: every read route and the shop's write routes, each
with the most SQL statements and Redis round trips one request may issue. The app runs as in
production (its own engine and pool on a committed database, its own Redis clients); the
counts come from the real clients: SQLAlchemy's ``before_cursor_execute`` on the app's engine,
and every command batch redis-py writes to a socket (one ``send_packed_command`` is one round
trip: a pipeline or a script is one, a ``NOSCRIPT`` reload is a second). Only work done for the
request under test is counted (a context variable): the app's background readers are not.

A change that adds a query or a round trip fails the test named after its route. The caller's
user row is cached per process (``USER_CACHE_TTL_SECONDS``): the budgets are for a caller seen
before, as nearly every request is; a user's first request costs one more statement
(``GET /users/me, first``). Connections are opened and scripts loaded before counting.
"""

from __future__ import annotations

import contextvars
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import pytest
from httpx import ASGITransport, AsyncClient, Response
from redis.asyncio.connection import AbstractConnection
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from tests.factories import auth_headers, insert_products, insert_users
from tests.lifespan import running


@dataclass(frozen=True)
class Budget:
    sql: int
    redis: int


# Route -> the most one request may cost. The goals of issue 16: a cached GET /orders issues
# no SQL and one Redis round trip; a miss one SQL statement and two round trips.
BUDGETS: dict[str, Budget] = {
    "GET /healthz": Budget(sql=0, redis=0),
    # A probe: one SELECT 1 when no statement succeeded lately, one PING.
    "GET /readyz": Budget(sql=1, redis=1),
    "GET /users/me": Budget(sql=0, redis=0),
    "GET /users/me, first": Budget(sql=1, redis=0),
    "GET /products, cache hit": Budget(sql=0, redis=1),
    "GET /products, cache miss": Budget(sql=1, redis=2),
    "GET /products/{product_id}, cache hit": Budget(sql=0, redis=1),
    "GET /products/{product_id}, cache miss": Budget(sql=1, redis=2),
    "GET /orders, cache hit": Budget(sql=0, redis=1),
    "GET /orders, cache miss": Budget(sql=1, redis=2),
    # The order, then its items (selectinload: never lazily, never a join's row fan-out).
    "GET /orders/{order_id}": Budget(sql=2, redis=0),
    # Prices, the order, its items, the stock it takes, the outbox row; the rate-limit script
    # and the cache invalidations the commit triggers.
    "POST /orders": Budget(sql=5, redis=3),
    # The insert meets the idempotency key, then the original order and its items are read.
    "POST /orders, replayed": Budget(sql=4, redis=0),
}


@dataclass
class Spent:
    sql: list[str] = field(default_factory=list)
    redis: int = 0


_spending: contextvars.ContextVar[Spent | None] = contextvars.ContextVar("spending", default=None)


@pytest.fixture
async def counted(
    committed_settings: Settings, committed_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AsyncClient]:
    sent = AbstractConnection.send_packed_command

    async def counting_send(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        spent = _spending.get()
        if spent is not None:
            spent.redis += 1
        await sent(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting_send)

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        spent = _spending.get()
        if spent is not None:
            spent.sql.append(statement)

    # A cache namespace of its own: the first request of each listing is a miss.
    prefix = f"{committed_settings.cache_key_prefix}:budget-{secrets.token_hex(4)}"
    app = create_app(committed_settings.model_copy(update={"cache_key_prefix": prefix}))
    async with running(app):
        event.listen(app.state.engine.sync_engine, "before_cursor_execute", on_statement)
        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def spend(request: Callable[[], Awaitable[Response]]) -> tuple[Response, Spent]:
    """Run one request with counting on (the ASGI app runs in this task's context)."""
    spent = Spent()
    token = _spending.set(spent)
    try:
        response = await request()
    finally:
        _spending.reset(token)
    return response, spent


@dataclass
class Shop:
    client: AsyncClient
    headers: dict[str, str]
    other: dict[str, str]
    product_id: UUID
    spent: dict[str, Spent] = field(default_factory=dict)

    async def drive(self, route: str, method: str, url: str, **kwargs: Any) -> Response:
        response, spent = await spend(lambda: self.client.request(method, url, **kwargs))
        assert response.status_code < 400, (route, response.status_code, response.text)
        self.spent[route] = spent
        return response


async def drive_every_route(shop: Shop) -> None:
    me, product = shop.headers, shop.product_id
    # Warm-up, uncounted: the pools' connections open (their handshakes are not per request)
    # and the cache's scripts are loaded, as on a process that has served a while.
    # A second user's order warms the write path's clients (rate limits, events).
    for url in ("/readyz", "/products?limit=3", "/products?limit=3"):
        await shop.client.get(url)
    warm_up = {"items": [{"product_id": str(product), "quantity": 1}]}
    await shop.client.post("/orders", json=warm_up, headers=shop.other)
    await shop.drive("GET /healthz", "GET", "/healthz")
    await shop.drive("GET /readyz", "GET", "/readyz")
    await shop.drive("GET /users/me, first", "GET", "/users/me", headers=me)
    await shop.drive("GET /users/me", "GET", "/users/me", headers=me)
    for suffix in ("cache miss", "cache hit"):
        await shop.drive(f"GET /products, {suffix}", "GET", "/products?limit=7")
        route = "GET /products/{product_id}, " + suffix
        await shop.drive(route, "GET", f"/products/{product}")
    order = {"items": [{"product_id": str(product), "quantity": 1}]}
    key = {**me, "Idempotency-Key": "budget-1"}
    placed = await shop.drive("POST /orders", "POST", "/orders", json=order, headers=key)
    await shop.drive("POST /orders, replayed", "POST", "/orders", json=order, headers=key)
    for suffix in ("cache miss", "cache hit"):
        await shop.drive(f"GET /orders, {suffix}", "GET", "/orders?limit=7", headers=me)
    order_id = placed.json()["id"]
    await shop.drive("GET /orders/{order_id}", "GET", f"/orders/{order_id}", headers=me)


@pytest.fixture
async def shop(
    counted: AsyncClient, committed_settings: Settings, committed_engine: AsyncEngine
) -> Shop:
    async with committed_engine.begin() as connection:
        user_id, other_id = await insert_users(connection, 2)
        (product_id,) = await insert_products(connection, [100])
    me, other = (auth_headers(u, committed_settings) for u in (user_id, other_id))
    shop = Shop(counted, me, other, product_id)
    await drive_every_route(shop)
    return shop


@pytest.mark.parametrize("route", list(BUDGETS))
async def test_the_route_stays_within_its_budget(shop: Shop, route: str) -> None:
    spent, budget = shop.spent[route], BUDGETS[route]
    assert len(spent.sql) <= budget.sql, (route, spent.sql)
    assert spent.redis <= budget.redis, (route, spent.redis)


async def test_every_route_driven_has_a_budget(shop: Shop) -> None:
    assert set(shop.spent) == set(BUDGETS)


async def test_the_counts_are_real_a_cache_miss_is_seen_to_query(shop: Shop) -> None:
    # The counters see the real clients: a miss goes to Postgres, a hit does not.
    assert shop.spent["GET /orders, cache miss"].sql
    assert not shop.spent["GET /orders, cache hit"].sql
    assert shop.spent["GET /orders, cache hit"].redis == 1
