"""The caller comes from a short-lived per-process cache, and a deactivated user is still
locked out: at once when the change went through this process, within USER_CACHE_TTL_SECONDS
when it came from elsewhere (auth/user_cache.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import event, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.ext.asyncio import async_sessionmaker as make_sessionmaker

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.auth.user_cache import UserCache
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.models import User
from {{ cookiecutter.project_slug }}.postgres import DbSession
from tests.auth.test_router import bearer, login, register
from tests.lifespan import running

TTL = 10.0


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    client: AsyncClient
    app: FastAPI
    clock: Clock
    statements: list[str]


@pytest.fixture
async def harness(
    settings: Settings,
    connection: AsyncConnection,
    sessionmaker: make_sessionmaker[AsyncSession],
) -> AsyncIterator[Harness]:
    app = create_app(settings)

    # What an admin action would do: an ORM write to the user, or a bulk UPDATE, through the
    # request's own session.
    @app.post("/test/users/{user_id}/deactivate")
    async def deactivate(user_id: UUID, session: DbSession) -> None:
        user = await session.get(User, user_id)
        assert user is not None
        user.is_active = False
        await session.flush()

    @app.post("/test/users/deactivate-all")
    async def deactivate_all(session: DbSession) -> None:
        await session.execute(update(User).values(is_active=False))

    clock = Clock()
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(connection.sync_connection, "before_cursor_execute", count)
    try:
        async with running(app):
            app.state.sessionmaker = sessionmaker
            app.state.user_cache = UserCache(TTL, 100, clock=clock)
            transport = ASGITransport(app=app, raise_app_exceptions=False)
            async with AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield Harness(client, app, clock, statements)
    finally:
        event.remove(connection.sync_connection, "before_cursor_execute", count)


async def signed_in(h: Harness) -> tuple[str, str]:
    user = await register(h.client)
    token = await login(h.client)
    assert (await h.client.get("/users/me", headers=bearer(token))).status_code == 200
    return str(user["id"]), token


async def test_a_cached_caller_costs_no_statement(harness: Harness) -> None:
    _, token = await signed_in(harness)
    harness.statements.clear()
    for _ in range(3):
        response = await harness.client.get("/users/me", headers=bearer(token))
        assert response.status_code == 200
        assert response.json()["email"] == "ada@example.com"
    assert harness.statements == []


async def test_deactivated_elsewhere_is_locked_out_once_the_ttl_has_passed(
    harness: Harness, session: AsyncSession
) -> None:
    _, token = await signed_in(harness)
    # Another instance, a worker or SQL by hand: this process is not told.
    await session.execute(update(User).values(is_active=False))
    await session.commit()
    harness.clock.now += TTL - 0.01
    # The documented window: still served from the cache until the TTL is up ...
    assert (await harness.client.get("/users/me", headers=bearer(token))).status_code == 200
    harness.clock.now += 0.02
    # ... and locked out from then on, with the row read again.
    response = await harness.client.get("/users/me", headers=bearer(token))
    assert response.status_code == 401
    assert (await harness.client.get("/users/me", headers=bearer(token))).status_code == 401


async def test_deactivated_through_this_process_is_locked_out_at_once(harness: Harness) -> None:
    user_id, token = await signed_in(harness)
    response = await harness.client.post(f"/test/users/{user_id}/deactivate")
    assert response.status_code == 200
    assert (await harness.client.get("/users/me", headers=bearer(token))).status_code == 401


async def test_a_bulk_update_of_users_forgets_every_cached_user(harness: Harness) -> None:
    _, token = await signed_in(harness)
    response = await harness.client.post("/test/users/deactivate-all")
    assert response.status_code == 200
    assert (await harness.client.get("/users/me", headers=bearer(token))).status_code == 401


async def test_a_rolled_back_write_keeps_the_cached_user(harness: Harness) -> None:
    user_id, token = await signed_in(harness)

    @harness.app.post("/test/users/{user_id}/deactivate-then-fail")
    async def deactivate_then_fail(user_id: UUID, session: DbSession) -> None:
        user = await session.get(User, user_id)
        assert user is not None
        user.is_active = False
        await session.flush()
        raise RuntimeError("the request fails after the write")

    response = await harness.client.post(f"/test/users/{user_id}/deactivate-then-fail")
    assert response.status_code == 500
    assert len(harness.app.state.user_cache) == 1
    assert (await harness.client.get("/users/me", headers=bearer(token))).status_code == 200


def test_the_cache_is_bounded_and_off_at_ttl_zero() -> None:
    clock = Clock()
    cache = UserCache(TTL, 2, clock=clock)
    users = [User(id=UUID(int=n), email=f"{n}@x", is_active=True, is_staff=False) for n in range(3)]
    for user in users:
        cache.put(user)
    assert len(cache) == 2
    assert cache.get(users[0].id) is None  # the least recently used went first
    off = UserCache(0, 2, clock=clock)
    off.put(users[0])
    assert len(off) == 0
    inactive = User(id=UUID(int=9), email="9@x", is_active=False, is_staff=False)
    cache.put(inactive)
    assert cache.get(inactive.id) is None
