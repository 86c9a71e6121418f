"""How the tests find real servers, and how each test stays isolated.

Servers: ``DATABASE_URL`` / ``REDIS_URL`` from the environment; else throwaway servers from
local binaries; else containers when a Docker engine answers; else the run stops with a message
naming what to install. There is no SQLite or fake Redis on any path.

Isolation: each xdist worker gets its own database, created and migrated once (migrations
are the only schema source), and its own Redis logical database. Each test runs inside a
transaction that is rolled back afterwards; the app's own commits become savepoint releases.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.ext.asyncio import async_sessionmaker as make_sessionmaker

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.devstack.servers import (
    RunningServer,
    ServerUnavailable,
    provide_services,
)
from {{ cookiecutter.project_slug }}.migrate import upgrade_to_head

_started: list[RunningServer] = []
_throwaway_dir: tempfile.TemporaryDirectory[str] | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _throwaway_dir
    # The xdist controller (or a plain run) finds the servers once; workers inherit the URLs
    # through the environment.
    if hasattr(config, "workerinput"):
        return
    _throwaway_dir = tempfile.TemporaryDirectory(prefix="{{ cookiecutter.project_slug }}-tests-")
    try:
        urls, started = provide_services(Path(_throwaway_dir.name), os.environ)
    except ServerUnavailable as exc:
        pytest.exit(f"No Postgres/Redis for the tests: {exc}", returncode=4)
    _started.extend(started)
    os.environ.update(urls)


def pytest_unconfigure(config: pytest.Config) -> None:
    for server in reversed(_started):
        server.stop()
    if _throwaway_dir is not None:
        _throwaway_dir.cleanup()


def worker_number(worker_id: str) -> int:
    return 0 if worker_id == "master" else int(worker_id.removeprefix("gw"))


def database_url_for(name: str) -> str:
    return (
        make_url(os.environ["DATABASE_URL"])
        .set(database=name)
        .render_as_string(hide_password=False)
    )


async def recreate_database(name: str) -> str:
    """Drop and create ``name`` on the configured server; return its SQLAlchemy URL."""
    admin = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql")
    connection = await asyncpg.connect(admin.render_as_string(hide_password=False))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return database_url_for(name)


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    workerinput: dict[str, Any] | None = getattr(request.config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "master"


@pytest.fixture(scope="session")
async def database_url(worker_id: str) -> str:
    url = await recreate_database(f"{{ cookiecutter.project_slug }}_test_{worker_id}")
    # Alembic's env.py runs its own event loop; give it a thread of its own.
    import anyio.to_thread

    await anyio.to_thread.run_sync(upgrade_to_head, url)
    return url


@pytest.fixture(scope="session")
def redis_url(worker_id: str) -> str:
    # One logical Redis database per worker (1-15), so workers never see each other's keys.
    base = make_url(os.environ["REDIS_URL"].replace("redis://", "postgresql://", 1))
    number = worker_number(worker_id) % 15 + 1
    return f"redis://{base.host}:{base.port}/{number}"


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        _env_file=None,
        environment="test",
        database_url=database_url,
        redis_url=redis_url,
    )


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(settings.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction that is rolled back when the test ends."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            yield connection
        finally:
            await transaction.rollback()


@pytest.fixture
def sessionmaker(connection: AsyncConnection) -> make_sessionmaker[AsyncSession]:
    # create_savepoint: session.commit() releases a savepoint inside the test's transaction,
    # so code that commits behaves as in production and still leaves nothing behind.
    return make_sessionmaker(
        bind=connection,
        expire_on_commit=False,
        autoflush=False,
        join_transaction_mode="create_savepoint",
    )


@pytest.fixture
async def session(sessionmaker: make_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session:
        yield session


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def app_client(
    settings: Settings, sessionmaker: make_sessionmaker[AsyncSession]
) -> AsyncIterator[AsyncClient]:
    """The real app (real lifespan, real Postgres and Redis) with its sessions kept inside the
    test's transaction."""
    app = create_app(settings)
    async with LifespanManager(app):
        app.state.sessionmaker = sessionmaker
        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
