"""After-commit callbacks: run after the outermost commit, discarded by rollbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from {{ cookiecutter.project_slug }}.patterns.on_commit import Callback, on_commit, run_after_commit
from {{ cookiecutter.project_slug }}.postgres import DbSession


def recorder(calls: list[str], name: str) -> Callback:
    async def callback() -> None:
        calls.append(name)

    return callback


async def test_callbacks_wait_for_the_commit_and_run_in_order(session: AsyncSession) -> None:
    calls: list[str] = []
    on_commit(session, recorder(calls, "first"))
    on_commit(session, recorder(calls, "second"))

    assert await run_after_commit(session) == 0  # nothing committed yet
    await session.execute(text("SELECT 1"))
    await session.commit()
    assert calls == []  # the commit releases them; the owner of the commit runs them

    assert await run_after_commit(session) == 2
    assert calls == ["first", "second"]
    assert await run_after_commit(session) == 0  # each runs once


async def test_a_rollback_discards_every_pending_callback(session: AsyncSession) -> None:
    calls: list[str] = []
    await session.execute(text("SELECT 1"))
    on_commit(session, recorder(calls, "doomed"))
    await session.rollback()
    await session.commit()
    await run_after_commit(session)
    assert calls == []


async def test_a_savepoint_rollback_discards_only_what_it_registered(
    session: AsyncSession,
) -> None:
    calls: list[str] = []
    await session.execute(text("SELECT 1"))
    on_commit(session, recorder(calls, "outer"))

    async def failing_step() -> None:
        async with session.begin_nested():
            on_commit(session, recorder(calls, "inner, rolled back"))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await failing_step()
    async with session.begin_nested():
        on_commit(session, recorder(calls, "inner, released"))
    await session.commit()
    await run_after_commit(session)
    assert calls == ["outer", "inner, released"]


async def test_releasing_a_savepoint_is_not_the_commit(session: AsyncSession) -> None:
    calls: list[str] = []
    await session.execute(text("SELECT 1"))
    async with session.begin_nested():
        on_commit(session, recorder(calls, "after the real commit"))
    await run_after_commit(session)
    assert calls == []
    await session.commit()
    await run_after_commit(session)
    assert calls == ["after the real commit"]


async def test_one_key_runs_once_per_transaction(session: AsyncSession) -> None:
    calls: list[str] = []
    for _ in range(10):
        on_commit(session, recorder(calls, "purge product 1"), key=("purge", 1))
    on_commit(session, recorder(calls, "purge product 2"), key=("purge", 2))
    await session.commit()
    await run_after_commit(session)
    assert calls == ["purge product 1", "purge product 2"]


async def test_a_failing_callback_does_not_stop_the_others(session: AsyncSession) -> None:
    calls: list[str] = []

    async def broken() -> None:
        raise ConnectionError("edge unreachable")

    on_commit(session, broken)
    on_commit(session, recorder(calls, "still runs"))
    await session.commit()
    assert await run_after_commit(session) == 1
    assert calls == ["still runs"]


@pytest.fixture
async def request_client(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[tuple[AsyncClient, list[str]]]:
    calls: list[str] = []
    app = FastAPI()
    app.state.sessionmaker = sessionmaker

    @app.post("/ok")
    async def ok(session: DbSession) -> dict[str, str]:
        await session.execute(text("SELECT 1"))
        on_commit(session, recorder(calls, "ok"))
        return {}

    @app.post("/fails")
    async def fails(session: DbSession) -> dict[str, str]:
        await session.execute(text("SELECT 1"))
        on_commit(session, recorder(calls, "fails"))
        raise RuntimeError("boom")

    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, calls


async def test_the_request_session_runs_them_after_its_commit_and_before_the_response(
    request_client: tuple[AsyncClient, list[str]],
) -> None:
    client, calls = request_client
    assert (await client.post("/ok")).status_code == 200
    assert calls == ["ok"]
    assert (await client.post("/fails")).status_code == 500
    assert calls == ["ok"]  # the failed request rolled back: its callback never ran
