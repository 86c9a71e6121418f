"""How the tests find real servers, and how each test stays isolated.

Servers: ``DATABASE_URL`` / ``REDIS_URL`` from the environment; else throwaway servers from
local binaries; else containers when a Docker engine answers; else the run stops with a message
naming what to install. There is no SQLite or fake Redis on any path.

Isolation: each xdist worker of each run gets its own database, created and migrated once
(migrations are the only schema source) and dropped at the end, so two runs on one server never
meet. Each test runs inside a transaction that is rolled back afterwards; the app's own commits
become savepoint releases.

Alone: a proof marked ``alone`` reads latency (an SLO alert, a health check's timeout), which a
load proof on the other xdist worker would turn into noise; it runs while no other test does.

Committed data: proofs under concurrency need many connections and real commits, which one
rolled-back transaction cannot give. ``live_server`` runs the real app under uvicorn in its own
process on 127.0.0.1, on a second per-worker database; ``committed_engine`` reaches that
database from the test and empties every table (TRUNCATE) when the test ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio.to_thread
import asyncpg
import pytest
from httpx import ASGITransport, AsyncClient
from kombu import Connection
from pydantic import SecretStr
from redis import Redis as SyncRedis
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.ext.asyncio import async_sessionmaker as make_sessionmaker

from devstack.api_process import uvicorn_command, wait_until_healthy
from devstack.servers import (
    RunningServer,
    ServerUnavailable,
    free_port,
    provide_services,
    stop_process,
)

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.auth.security import create_access_token
from {{ cookiecutter.project_slug }}.config import DEFAULT_BROKER_URL, Settings
from {{ cookiecutter.project_slug }}.migrate import upgrade_to_head
from {{ cookiecutter.project_slug }}.models import Base
from tests.lifespan import running
from tests.s3_server import S3Server, run_seaweedfs
from tests.worker_harness import JobStack, broker_url, requested_brokers, require_broker

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
    # Names this run's databases, so concurrent runs against one server stay apart.
    os.environ.setdefault("TEST_RUN_ID", secrets.token_hex(3))
    # The rest of the suite signs up hundreds of users from one address: rate limits are off
    # for every app, server and stack it starts (they read the variable), and the rate-limit
    # proofs switch them on for their own (tests/auth/test_rate_limits.py and its kin).
    os.environ.setdefault("RATE_LIMIT_ENABLED", "false")


_UNGROUPED = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Notice when xdist stops honouring ``xdist_group`` (see :func:`pytest_runtest_setup`).

    xdist marks a grouped test by suffixing its node id; pytest 9.2 with xdist 3.8 silently
    did not, and the topology proofs then ran on both workers, each starting its own stacks.
    """
    if getattr(config.option, "loadgroup", False):
        for item in items:
            item.stash[_UNGROUPED] = bool(item.get_closest_marker("xdist_group")) and (
                "@" not in item.nodeid
            )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture: an ungrouped topology proof fails at once, not after its stack.
    if item.stash.get(_UNGROUPED, False):
        pytest.fail(
            "pytest-xdist ignored this test's xdist_group, so the proofs that share one stack "
            "would run on every worker: this pytest/pytest-xdist pair cannot run the suite "
            "(see the pytest pin in pyproject.toml)",
            pytrace=False,
        )


def _run_lock_path() -> Path:
    return Path(tempfile.gettempdir()) / f"{{ cookiecutter.project_slug }}-tests-{os.environ['TEST_RUN_ID']}.lock"


@pytest.fixture(autouse=True)
def _alone_or_beside_others(request: pytest.FixtureRequest) -> Iterator[None]:
    """``alone`` tests take this run's lock exclusively, every other test takes it shared (one
    file for all xdist workers of a run). Module and session fixtures (a stack starting) are
    set up before it, outside the lock."""
    exclusive = request.node.get_closest_marker("alone") is not None
    with _run_lock_path().open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def unconsumed_jobs_namespace() -> dict[str, str]:
    """Where apps under test publish jobs that no worker consumes (the job proofs start
    their own workers on queues of their own): one queue and key prefix per run, removed
    when the run ends, so nothing piles up in a shared Redis."""
    run = os.environ["TEST_RUN_ID"]
    return {"celery_queue": f"test-{run}", "celery_broker_key_prefix": f"test-{run}:"}


def _forget_unconsumed_jobs() -> None:
    namespace = unconsumed_jobs_namespace()
    with SyncRedis.from_url(os.environ["REDIS_URL"]) as client:
        for key in client.scan_iter(match=f"{namespace['celery_broker_key_prefix']}*", count=500):
            client.delete(key)
    broker = os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL
    if broker.startswith("amqp"):  # RabbitMQ keeps durable queues: delete ours
        with Connection(broker, connect_timeout=3) as connection:
            channel: Any = connection.default_channel
            channel.queue_delete(namespace["celery_queue"])
            channel.exchange_delete(namespace["celery_queue"])


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and "REDIS_URL" in os.environ:
        with contextlib.suppress(Exception):  # never hide the run's own result
            _forget_unconsumed_jobs()
    if not hasattr(config, "workerinput") and "TEST_RUN_ID" in os.environ:
        _run_lock_path().unlink(missing_ok=True)
    for server in reversed(_started):
        server.stop()
    if _throwaway_dir is not None:
        _throwaway_dir.cleanup()


def database_url_for(name: str) -> str:
    return (
        make_url(os.environ["DATABASE_URL"])
        .set(database=name)
        .render_as_string(hide_password=False)
    )


def run_database_name(purpose: str, worker_id: str) -> str:
    return f"{{ cookiecutter.project_slug }}_{purpose}_{os.environ['TEST_RUN_ID']}_{worker_id}"


async def _admin_execute(*statements: str) -> None:
    admin = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql")
    connection = await asyncpg.connect(admin.render_as_string(hide_password=False))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def recreate_database(name: str) -> str:
    """Drop and create ``name`` on the configured server; return its SQLAlchemy URL."""
    await _admin_execute(
        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
    )
    return database_url_for(name)


async def drop_database(name: str) -> None:
    await _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    workerinput: dict[str, Any] | None = getattr(request.config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "master"


@pytest.fixture(scope="session")
async def database_url(worker_id: str) -> AsyncIterator[str]:
    name = run_database_name("test", worker_id)
    url = await recreate_database(name)
    # Alembic's env.py runs its own event loop; give it a thread of its own.
    await anyio.to_thread.run_sync(upgrade_to_head, url)
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ["REDIS_URL"]


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, worker_id: str) -> Settings:
    return Settings(
        _env_file=None,
        environment="test",
        database_url=database_url,
        redis_url=redis_url,
        # Runs and workers share one Redis but not one database: their caches must not meet.
        cache_key_prefix=run_database_name("cache", worker_id),
        celery_queue=unconsumed_jobs_namespace()["celery_queue"],
        celery_broker_key_prefix=unconsumed_jobs_namespace()["celery_broker_key_prefix"],
        # Presigning is local HMAC: routes that sign URLs (GET /jobs/{id}) need keys, not a
        # server. Proofs that send bytes to S3 use the `s3` fixture's server and keys.
        s3_endpoint_url="http://127.0.0.1:9",
        s3_access_key_id="test-access-key",
        s3_secret_access_key=SecretStr("test-secret-key"),
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
async def app_client(
    settings: Settings, sessionmaker: make_sessionmaker[AsyncSession]
) -> AsyncIterator[AsyncClient]:
    """The real app (real lifespan, real Postgres and Redis) with its sessions kept inside the
    test's transaction."""
    # A cache namespace per test: rows written straight into the test's transaction (and
    # rolled back after it) never meet values another test cached.
    prefix = f"{settings.cache_key_prefix}:{secrets.token_hex(4)}"
    app = create_app(settings.model_copy(update={"cache_key_prefix": prefix}))
    async with running(app):
        app.state.sessionmaker = sessionmaker
        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


# --- committed data and a live server, for proofs under real concurrency -------------------

# The live server's pool: enough connections for real contention on one row, few enough that
# two xdist workers and a developer's own server fit under Postgres's default of 100.
LIVE_POOL_SIZE = 16


@pytest.fixture(scope="session")
async def committed_database_url(worker_id: str) -> AsyncIterator[str]:
    name = run_database_name("committed", worker_id)
    url = await recreate_database(name)
    await anyio.to_thread.run_sync(upgrade_to_head, url)
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
def committed_settings(committed_database_url: str, redis_url: str, worker_id: str) -> Settings:
    return Settings(
        _env_file=None,
        environment="test",
        database_url=committed_database_url,
        redis_url=redis_url,
        db_pool_size=LIVE_POOL_SIZE,
        db_max_overflow=0,
        # Hundreds of requests queue for the pool during a proof; they must wait, not fail.
        db_pool_timeout=60.0,
        secret_key=secrets.token_urlsafe(48),
        log_level="WARNING",
        cache_key_prefix=run_database_name("committed-cache", worker_id),
        celery_queue=unconsumed_jobs_namespace()["celery_queue"],
        celery_broker_key_prefix=unconsumed_jobs_namespace()["celery_broker_key_prefix"],
    )


@pytest.fixture(scope="session")
async def _committed_engine(committed_settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(committed_settings.database_url, pool_size=4, max_overflow=0)
    yield engine
    await engine.dispose()


@pytest.fixture
async def committed_engine(_committed_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """An engine on the committed database; every table is emptied when the test ends."""
    yield _committed_engine
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    async with _committed_engine.begin() as connection:
        # A failed proof can leave the server mid-transaction; end those sessions so TRUNCATE
        # neither waits for them nor deadlocks with them. Idle pooled connections stay.
        await connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state <> 'idle'"
            )
        )
        await connection.execute(text(f"TRUNCATE {tables} CASCADE"))


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    settings: Settings
    pid: int

    def auth(self, user_id: UUID) -> dict[str, str]:
        """Headers for ``user_id``, signed with the server's key (no password hashing: the
        proofs create hundreds of users)."""
        token, _ = create_access_token(user_id, self.settings)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def live_server(
    committed_settings: Settings,
    committed_database_url: str,
    s3: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    """The real app under uvicorn (uvloop, httptools) in its own process on 127.0.0.1, on the
    committed database: requests travel over real TCP connections and real commits."""
    settings = committed_settings
    port = free_port()
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "DB_POOL_SIZE": str(settings.db_pool_size),
        "DB_MAX_OVERFLOW": str(settings.db_max_overflow),
        "DB_POOL_TIMEOUT": str(settings.db_pool_timeout),
        "SECRET_KEY": settings.secret_key.get_secret_value(),
        "LOG_LEVEL": settings.log_level,
        "CACHE_KEY_PREFIX": settings.cache_key_prefix,
        "CELERY_QUEUE": settings.celery_queue,
        "CELERY_BROKER_KEY_PREFIX": settings.celery_broker_key_prefix,
        # The session's real S3: uploads, report files and images work as in production.
        "S3_ENDPOINT_URL": s3.endpoint,
        "S3_BUCKET": s3.bucket,
        "S3_ACCESS_KEY_ID": s3.access_key,
        "S3_SECRET_ACCESS_KEY": s3.secret_key,
    }
    log_path = tmp_path_factory.mktemp("live-server") / "server.log"
    # The proofs open every connection first, then race; on a busy machine that can take
    # longer than uvicorn's default 5 s keep-alive.
    command = uvicorn_command(port, backlog=4096, keep_alive_seconds=120)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, base_url, log_path=log_path)
        yield LiveServer(base_url=base_url, settings=settings, pid=process.pid)
    finally:
        stop_process(process, timeout=15)


# --- Background jobs: real brokers, worker and beat processes (see tests/worker_harness.py) ---


@pytest.fixture(scope="session")
async def jobs_database_url(worker_id: str) -> AsyncIterator[str]:
    """A database the test shares with worker processes: data is committed, not rolled back,
    so a worker (another process) can see it. Tests keep apart by using their own keys."""
    name = run_database_name("jobs", worker_id)
    url = await recreate_database(name)
    await anyio.to_thread.run_sync(upgrade_to_head, url)
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
async def jobs_engine(jobs_database_url: str) -> AsyncIterator[AsyncEngine]:
    # The tests read one thing at a time; Postgres connections are a budget shared with
    # every server these tests start.
    engine = create_async_engine(jobs_database_url, pool_size=2, max_overflow=2)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module", params=requested_brokers())
def job_stack(
    request: pytest.FixtureRequest,
    jobs_database_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[JobStack]:
    """An isolated queue on one broker (each module runs once per broker in TEST_BROKERS)."""
    kind: str = request.param
    require_broker(kind, broker_url(kind))
    stack = JobStack(kind, jobs_database_url, redis_url, tmp_path_factory.mktemp(f"jobs-{kind}"))
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
async def live_client(job_stack: JobStack) -> AsyncIterator[AsyncClient]:
    """The real app on the jobs database, publishing to the stack's queue: its commits are
    real commits, so the stack's workers see what its requests wrote."""
    app = create_app(job_stack.settings())
    async with running(app):
        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


VARNISH_HINT = (
    "varnishd is not installed: the edge proofs need it (Debian/Ubuntu: "
    "`apt-get install varnish`, macOS: `brew install varnish`)"
)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real SeaweedFS with credentials: SigV4, POST policies and checksums are enforced."""
    with run_seaweedfs() as server:
        yield server


@pytest.fixture(scope="session")
def varnish_installed() -> None:
    """Fail, never skip, where Varnish is missing: a skipped edge proof proves nothing."""
    if not (shutil.which("varnishd") or shutil.which("varnishd", path="/usr/sbin:/usr/local/sbin")):
        pytest.fail(VARNISH_HINT, pytrace=False)
