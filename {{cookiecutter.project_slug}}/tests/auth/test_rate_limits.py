"""The inner ring in one app: per-user, per-address and per-account limits, the IETF fields,
the 429 problem, and what happens with the limiter's Redis gone.

Over real Redis (the shared moving window) and the real app; clients are told apart by the
address the ASGI transport reports, as uvicorn reports the address it established. The proofs
over real servers, three instances and the gateway are in tests/topology/test_rate_limits.py.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from uuid import uuid4

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.asyncio import async_sessionmaker as make_sessionmaker

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.rate_limit import QUOTA_EXCEEDED
from tests.factories import make_user
from tests.lifespan import running

PASSWORD = "correct horse battery"
LIMITS = {
    "rate_limit_enabled": True,
    "rate_limit_user": "10/minute",
    "rate_limit_login_ip": "5/minute",
    "rate_limit_login_account": "3/minute",
    "rate_limit_register_ip": "4/minute",
    "rate_limit_register_account": "2/minute",
    "rate_limit_orders": "2/minute",
    "rate_limit_uploads": "2/minute",
}
# A port nothing listens on: the limiter's Redis "stopped".
DEAD_REDIS = "redis://127.0.0.1:1/0"

ClientFrom = Callable[[str], AsyncClient]


async def limited(
    settings: Settings, sessionmaker: make_sessionmaker[AsyncSession], **overrides: object
) -> AsyncIterator[tuple[FastAPI, ClientFrom]]:
    prefix = f"test-ratelimit:{secrets.token_hex(6)}"
    update = {**LIMITS, "rate_limit_key_prefix": prefix, **overrides}
    app = create_app(settings.model_copy(update=update))
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(app))
        app.state.sessionmaker = sessionmaker

        def client_from(address: str) -> AsyncClient:
            transport = ASGITransport(app=app, raise_app_exceptions=False, client=(address, 40000))
            return AsyncClient(transport=transport, base_url="http://testserver")

        yield app, client_from


@pytest.fixture
async def limited_app(
    settings: Settings, sessionmaker: make_sessionmaker[AsyncSession]
) -> AsyncIterator[tuple[FastAPI, ClientFrom]]:
    async for pair in limited(settings, sessionmaker):
        yield pair


@pytest.fixture
async def redis_down_app(
    settings: Settings, sessionmaker: make_sessionmaker[AsyncSession]
) -> AsyncIterator[tuple[FastAPI, ClientFrom]]:
    async for pair in limited(settings, sessionmaker, rate_limit_redis_url=DEAD_REDIS):
        yield pair


async def login(client: AsyncClient, email: str) -> int:
    response = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
    return response.status_code


def assert_quota_exceeded(response: object, policy: str) -> int:
    from httpx import Response

    assert isinstance(response, Response)
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == QUOTA_EXCEEDED
    assert body["violated-policies"] == [policy]
    assert "Traceback" not in response.text
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


async def test_one_address_against_many_accounts_is_stopped_per_address(
    limited_app: tuple[FastAPI, ClientFrom],
) -> None:
    _, client_from = limited_app
    async with client_from("192.0.2.10") as attacker, client_from("192.0.2.11") as other:
        started = time.time()
        codes = [await login(attacker, f"victim-{i}@example.com") for i in range(8)]
        response = await attacker.post(
            "/auth/login", json={"email": "one-more@example.com", "password": PASSWORD}
        )
        # A second address is not affected.
        other_code = await login(other, "someone@example.com")
    assert codes == [401] * 5 + [429] * 3
    retry_after = assert_quota_exceeded(response, "login-ip")
    # Never earlier than the moment the oldest counted attempt leaves the 60 s window.
    assert retry_after >= 60 - (time.time() - started) - 1
    assert retry_after <= 60
    assert other_code == 401


async def test_many_addresses_against_one_account_are_stopped_per_account(
    limited_app: tuple[FastAPI, ClientFrom],
) -> None:
    _, client_from = limited_app
    codes = []
    for i in range(6):
        async with client_from(f"198.51.100.{i + 1}") as client:
            codes.append(await login(client, "Target@Example.com"))
    assert codes == [401] * 3 + [429] * 3
    async with client_from("198.51.100.99") as client:
        response = await client.post(
            "/auth/login", json={"email": "target@example.com", "password": PASSWORD}
        )
    assert_quota_exceeded(response, "login-account")  # the email is normalised


async def test_register_is_limited_per_address_and_per_account(
    limited_app: tuple[FastAPI, ClientFrom],
) -> None:
    _, client_from = limited_app
    async with client_from("192.0.2.20") as client:
        codes = [
            (
                await client.post(
                    "/auth/register", json={"email": f"new-{i}@example.com", "password": PASSWORD}
                )
            ).status_code
            for i in range(5)
        ]
    assert codes == [202] * 4 + [429]
    same_account = []
    for i in range(3):
        async with client_from(f"192.0.2.{30 + i}") as client:
            response = await client.post(
                "/auth/register", json={"email": "taken@example.com", "password": PASSWORD}
            )
            same_account.append(response.status_code)
    assert same_account[2] == 429
    assert_quota_exceeded(response, "register-account")


async def test_authenticated_routes_carry_the_ietf_fields_and_stop_at_the_user_quota(
    limited_app: tuple[FastAPI, ClientFrom], session: AsyncSession, settings: Settings
) -> None:
    app, client_from = limited_app
    caller = await make_user(session, app.state.settings)
    other = await make_user(session, app.state.settings)
    async with client_from("192.0.2.40") as client:
        responses = [await client.get("/users/me", headers=caller.headers) for _ in range(12)]
        bystander = await client.get("/users/me", headers=other.headers)
    first = responses[0]
    assert first.status_code == 200
    assert first.headers["RateLimit-Policy"] == '"user";q=10;w=60'
    remaining, reset = first.headers["RateLimit"].removeprefix('"user";').split(";")
    assert remaining == "r=9"
    assert 0 < int(reset.removeprefix("t=")) <= 60
    assert [r.status_code for r in responses] == [200] * 10 + [429] * 2
    assert responses[9].headers["RateLimit"].startswith('"user";r=0;')
    limited_response = responses[10]
    assert_quota_exceeded(limited_response, "user")
    assert limited_response.headers["RateLimit-Policy"] == '"user";q=10;w=60'
    # The same address, another user: per user, not per address.
    assert bystander.status_code == 200


async def test_order_placement_has_a_quota_of_its_own(
    limited_app: tuple[FastAPI, ClientFrom], session: AsyncSession
) -> None:
    app, client_from = limited_app
    caller = await make_user(session, app.state.settings)
    async with client_from("192.0.2.50") as client:
        codes = [
            (
                await client.post(
                    "/orders",
                    json={"items": [{"product_id": str(uuid4()), "quantity": 1}]},
                    headers=caller.headers,
                )
            ).status_code
            for _ in range(3)
        ]
        response = await client.post(
            "/orders",
            json={"items": [{"product_id": str(uuid4()), "quantity": 1}]},
            headers=caller.headers,
        )
    # Unknown products (422) still count: the quota is on attempts, not on successes.
    assert codes == [422, 422, 429]
    assert_quota_exceeded(response, "orders")
    assert '"orders";q=2;w=60' in response.headers["RateLimit-Policy"]


async def test_upload_creation_has_a_quota_of_its_own(
    limited_app: tuple[FastAPI, ClientFrom], session: AsyncSession
) -> None:
    app, client_from = limited_app
    caller = await make_user(session, app.state.settings)
    other = await make_user(session, app.state.settings)
    # An empty body is refused (422) after the quota has counted it: attempts, not successes.
    async with client_from("192.0.2.55") as client:
        codes = [
            (await client.post("/uploads", json={}, headers=caller.headers)).status_code
            for _ in range(2)
        ]
        response = await client.post("/uploads", json={}, headers=caller.headers)
        bystander = await client.post("/uploads", json={}, headers=other.headers)
    assert codes == [422, 422]
    assert_quota_exceeded(response, "uploads")
    assert '"uploads";q=2;w=60' in response.headers["RateLimit-Policy"]
    # Per user: another account from the same address still has its own quota.
    assert bystander.status_code == 422


async def test_with_the_limiters_redis_down_reads_pass_and_login_falls_back_to_a_local_limit(
    redis_down_app: tuple[FastAPI, ClientFrom], session: AsyncSession
) -> None:
    app, client_from = redis_down_app
    caller = await make_user(session, app.state.settings)
    async with client_from("192.0.2.60") as client:
        reads = Counter(
            [(await client.get("/users/me", headers=caller.headers)).status_code for _ in range(15)]
        )
        logins = [await login(client, f"guess-{i}@example.com") for i in range(7)]
    # Fail open: past the user quota of 10, and no 5xx.
    assert reads == Counter({200: 15})
    # Fail to a per-instance count: the brute force is still bounded.
    assert logins == [401] * 5 + [429] * 2
    registry = app.state.metrics.registry
    errors_open = registry.get_sample_value(
        "rate_limit_backend_errors_total", {"policy": "user", "fallback": "open"}
    )
    errors_local = registry.get_sample_value(
        "rate_limit_backend_errors_total", {"policy": "login-ip", "fallback": "local"}
    )
    assert errors_open == 15
    assert errors_local == 7
