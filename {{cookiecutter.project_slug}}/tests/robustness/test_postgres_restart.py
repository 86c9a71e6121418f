"""A Postgres restart under load: once the server is back, no read fails.

No ``pool_pre_ping`` (it cost a round trip per checkout): after a restart every pooled
connection is dead. The first read on one fails with a disconnect, SQLAlchemy invalidates
the whole pool, and the read is retried once on a fresh connection
(patterns/lazy_transaction.py), so the client never sees it.

A throwaway Postgres of its own (the shared one is never restarted), the real app in this
process on a pool of 4, and 8 clients reading ``GET /orders`` (app cache off: every read is a
query) while the server restarts with a fast shutdown (every connection cut). Requests in
flight during the restart may fail (503, counted and allowed); every request that started
after the server accepted connections again must succeed. Under load the cut connections are
found (and the pool invalidated) during the restart itself; so a second restart happens while
the pool sits idle with 4 open connections, and the reads after it must meet dead connections
(else the proof proved nothing) and still all succeed: that is the retry's work.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.servers import RunningServer, start_postgres

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.migrate import upgrade_to_head
from tests.factories import auth_headers, insert_users
from tests.lifespan import running

pytestmark = pytest.mark.load

CLIENTS = 8
AFTER_RECOVERY = 200  # reads that must all succeed once the server is back


@pytest.fixture(scope="module")
def throwaway_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_postgres(Path(tmp_path_factory.mktemp("restart")) / "postgres")
    try:
        yield server
    finally:
        server.stop()


async def test_reads_survive_a_postgres_restart_under_load(
    throwaway_postgres: RunningServer, settings: Settings
) -> None:
    url = throwaway_postgres.url
    await anyio.to_thread.run_sync(upgrade_to_head, url)
    seed = create_async_engine(url, pool_size=1, max_overflow=0)
    async with seed.begin() as connection:
        [user_id] = await insert_users(connection, 1)
    await seed.dispose()

    app = create_app(
        settings.model_copy(
            update={
                "database_url": url,
                "db_pool_size": 4,
                "db_max_overflow": 0,
                "db_pool_timeout": 10.0,
                "cache_enabled": False,
            }
        )
    )
    headers = auth_headers(user_id, settings)
    disconnects: list[float] = []
    recovered_at: float | None = None
    after: Counter[int] = Counter()
    during: Counter[int] = Counter()
    stop = asyncio.Event()

    async with running(app):

        def saw(context: ExceptionContext) -> None:
            if context.is_disconnect:
                disconnects.append(time.monotonic())

        event.listen(app.state.engine.sync_engine, "handle_error", saw)
        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:

            async def reader() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    response = await client.get("/orders", headers=headers)
                    if recovered_at is not None and started > recovered_at:
                        after[response.status_code] += 1
                        if sum(after.values()) >= AFTER_RECOVERY:
                            stop.set()
                    else:
                        during[response.status_code] += 1

            readers = [asyncio.create_task(reader()) for _ in range(CLIENTS)]
            # Warm: every pooled connection is open and in use before the restart.
            deadline = time.monotonic() + 60
            pool = app.state.engine.pool
            while during[200] < 50 or pool.checkedout() + pool.checkedin() < 4:
                assert time.monotonic() < deadline, during
                await asyncio.sleep(0.05)
            await anyio.to_thread.run_sync(throwaway_postgres.restart)
            recovered_at = time.monotonic()
            await asyncio.wait_for(stop.wait(), timeout=120)
            await asyncio.gather(*readers)

        failed_after_recovery = sum(n for status, n in after.items() if status != 200)
        assert failed_after_recovery == 0, {"after": after, "during": during}
        assert sum(after.values()) >= AFTER_RECOVERY

        # A quiet restart: the pool holds 4 open, idle connections the server then cuts.
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            warm = await asyncio.gather(
                *(client.get("/orders", headers=headers) for _ in range(CLIENTS))
            )
            assert [r.status_code for r in warm] == [200] * CLIENTS
            assert app.state.engine.pool.checkedin() >= 1
            await anyio.to_thread.run_sync(throwaway_postgres.restart)
            quiet_restart = time.monotonic()
            statuses: Counter[int] = Counter()

            async def reads(count: int) -> None:
                for _ in range(count):
                    statuses[(await client.get("/orders", headers=headers)).status_code] += 1

            await asyncio.gather(*(reads(AFTER_RECOVERY // CLIENTS) for _ in range(CLIENTS)))
    assert statuses == Counter({200: AFTER_RECOVERY}), statuses
    met_dead = [at for at in disconnects if at > quiet_restart]
    assert met_dead, (disconnects, quiet_restart)
